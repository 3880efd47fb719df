"""Sliding-window inference covers every voxel, blends overlaps, and hands patches to the backend in
batches. The backend here is a small in-test implementation of our own interface (this tests our
windowing logic, not a server)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import pytest

from neuroflow.core.inference import Array, InferenceBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.segmentation.sliding_window import gaussian_importance, patch_starts, sigmoid, sliding_window_inference

MODEL = ModelRef(name="doubler", version=1)


class DoublingBackend(InferenceBackend):
    """Returns 2x the first input channel for each output channel; records batch sizes."""

    def __init__(self, out_channels: int) -> None:
        self.out_channels = out_channels
        self.batches: list[int] = []

    def ready(self, model: ModelRef) -> bool:
        return True

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = inputs["image"]
        self.batches.append(x.shape[0])
        return {"logits": np.repeat(2.0 * x[:, :1], self.out_channels, axis=1).astype(np.float32)}


@pytest.mark.parametrize(("length", "patch", "overlap"), [(100, 32, 0.5), (33, 32, 0.25), (32, 32, 0.5), (97, 16, 0.0)])
def test_patch_starts_cover_the_axis_from_edge_to_edge(length: int, patch: int, overlap: float) -> None:
    starts = patch_starts(length, patch, overlap)
    assert starts[0] == 0
    assert starts[-1] + patch == max(length, patch)
    assert all(b - a <= int(patch * (1 - overlap)) for a, b in itertools.pairwise(starts))


def test_blended_output_equals_a_pointwise_model_everywhere() -> None:
    # A model that acts voxel by voxel must give the same answer however patches overlap.
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 40, 37, 29)).astype(np.float32)
    backend = DoublingBackend(out_channels=3)
    out = sliding_window_inference(image, backend, MODEL, patch=(16, 16, 16), out_channels=3,
                                   overlap=0.5, batch_size=4)
    assert out.shape == (3, 40, 37, 29)
    np.testing.assert_allclose(out[1], 2.0 * image[0], rtol=1e-5, atol=1e-5)
    assert max(backend.batches) == 4


def test_image_smaller_than_patch_is_padded_and_cropped_back() -> None:
    image = np.ones((1, 10, 12, 9), dtype=np.float32)
    out = sliding_window_inference(image, DoublingBackend(1), MODEL, patch=(16, 16, 16), out_channels=1)
    assert out.shape == (1, 10, 12, 9)
    np.testing.assert_allclose(out, 2.0, rtol=1e-6)


def test_importance_map_weighs_the_centre_most_and_never_zero() -> None:
    w = gaussian_importance((16, 16, 16))
    assert w.max() == pytest.approx(1.0)
    assert w.min() > 0
    assert w[8, 8, 8] > w[4, 8, 8] > w[2, 8, 8] >= w[0, 0, 0]


def test_progress_reports_every_patch() -> None:
    seen: list[tuple[int, int]] = []
    image = np.zeros((1, 24, 24, 24), dtype=np.float32)
    sliding_window_inference(image, DoublingBackend(1), MODEL, patch=(16, 16, 16), out_channels=1,
                             overlap=0.5, batch_size=3, progress=lambda d, n: seen.append((d, n)))
    assert seen[-1][0] == seen[-1][1] == 8


def test_sigmoid_is_the_logistic_function_in_float32_for_any_logit() -> None:
    logits = np.concatenate([np.linspace(-120, 120, 2401), [-3e38, -1e30, 1e30, 3e38]]).astype(np.float32)
    expected = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -700, 700)))
    probabilities = sigmoid(logits)
    assert probabilities.dtype == np.float32 and np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-7)
    assert probabilities[0] == 0.0 and probabilities[-1] == 1.0 and sigmoid(np.zeros(1, np.float32))[0] == 0.5
