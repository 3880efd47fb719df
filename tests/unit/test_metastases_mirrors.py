"""The metastases pipeline's test-time mirrors (segmentation/metastases.py) with a 'network' of our own that is
not mirror-symmetric: it answers one voxel to the left of where the input is bright, as a network with a
directional bias would. The plain prediction is off centre; averaged with its left-right mirror, the bias
cancels and the answer is centred on the input, on the plain prediction's grid."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from neuroflow.core.inference import Array, InferenceBackend
from neuroflow.core.model_card import ModelCard, ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume
from neuroflow.segmentation.metastases import METASTASIS_LABEL, predict_metastases

MODEL = ModelRef(name="shifted", version=1)
SHAPE = (24, 28, 32)  # (z, y, x)
PATCH = 16


class _ShiftedBackend(InferenceBackend):
    """Logits: the T1CE channel moved one voxel towards array x = 0 within each window."""

    def ready(self, model: ModelRef) -> bool:
        return True

    def card(self, model: ModelRef) -> ModelCard:
        return ModelCard.model_validate({
            "name": model.name, "version": model.version, "task": "t", "input_roles": ["T1CE", "FLAIR"],
            "min_roles_any": ["T1CE"], "spacing_mm": [1, 1, 1], "patch_size": [PATCH] * 3,
            "inputs": [{"name": "image", "shape": [-1, 2, PATCH, PATCH, PATCH], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": [-1, 1, PATCH, PATCH, PATCH], "dtype": "float32"}],
            "labels": [METASTASIS_LABEL], "output_activation": "none", "training_data": "", "license": "",
            "intended_use": "", "normalisation": "zscore_in_brain"})

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        t1ce = inputs["image"][:, :1]
        shifted = np.zeros_like(t1ce)
        shifted[..., :-1] = t1ce[..., 1:]
        return {"logits": shifted.astype(np.float32)}


def _volume(array: np.ndarray) -> Volume:
    return Volume(array, Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                                  direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), size=array.shape[::-1]))


def _centre_x(probability: Volume) -> float:
    weights = probability.array.sum(axis=(0, 1))
    return float((weights * np.arange(weights.size)).sum() / weights.sum())


def _inputs() -> tuple[dict[SeriesRole, Volume], Volume]:
    t1ce = np.zeros(SHAPE, np.float32)
    t1ce[10:14, 12:16, 14:18] = 1.0  # centred on x = 15.5
    return {SeriesRole.T1CE: _volume(t1ce)}, _volume(np.ones(SHAPE, np.uint8))


def test_the_left_right_mirror_cancels_a_directional_bias_on_the_plain_grid() -> None:
    normalised, mask = _inputs()
    plain = predict_metastases(normalised, mask, _ShiftedBackend(), MODEL, overlap=0.5, batch_size=2,
                               study_key="k")
    mean = predict_metastases(normalised, mask, _ShiftedBackend(), MODEL, overlap=0.5, batch_size=2,
                              study_key="k", mirrors=("left_right",))
    assert abs(_centre_x(plain) - 14.5) < 0.05  # one voxel off (window edges blur it by a few hundredths)
    assert abs(_centre_x(mean) - 15.5) < 0.05
    assert mean.geometry == mask.geometry and mean.array.dtype == np.float32
    assert float(mean.array.max()) < float(plain.array.max())  # the two passes disagree at the edges: halved


def test_a_mirror_along_another_axis_leaves_the_left_right_bias() -> None:
    normalised, mask = _inputs()
    mean = predict_metastases(normalised, mask, _ShiftedBackend(), MODEL, overlap=0.5, batch_size=2,
                              study_key="k", mirrors=("superior_inferior",))
    assert abs(_centre_x(mean) - 14.5) < 0.05


def test_progress_counts_the_windows_of_every_pass_as_one_job() -> None:
    normalised, mask = _inputs()
    seen: list[tuple[int, int]] = []
    predict_metastases(normalised, mask, _ShiftedBackend(), MODEL, overlap=0.5, batch_size=2, study_key="k",
                       mirrors=("left_right", "anterior_posterior"), progress=lambda done, of: seen.append((done, of)))
    done = [d for d, _ in seen]
    assert done == sorted(done) and len({of for _, of in seen}) == 1
    assert seen[-1][0] == seen[-1][1] and seen[-1][1] % 3 == 0
