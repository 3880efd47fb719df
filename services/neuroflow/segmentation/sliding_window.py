"""Sliding-window inference: a volume larger than the network's patch is covered by overlapping
patches, sent to the inference backend in batches, and blended with a Gaussian importance map so
patch borders (where a network sees least context) weigh least."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelRef

Array = npt.NDArray[np.float32]


def patch_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis: first at 0, last ending at ``length``, steps at most
    ``patch * (1 - overlap)``, evenly spread."""
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = math.ceil((length - patch) / step) + 1
    return [round(i * (length - patch) / (n - 1)) for i in range(n)]


def gaussian_importance(patch: tuple[int, int, int], sigma_scale: float = 0.125) -> Array:
    """Separable Gaussian centred on the patch, max 1, floored so no voxel gets zero weight."""
    axes = []
    for n in patch:
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / (n * sigma_scale)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w /= w.max()
    floored: Array = np.maximum(w, 1e-3).astype(np.float32)
    return floored


def sliding_window_inference(
    image: Array,
    backend: InferenceBackend,
    model: ModelRef,
    *,
    patch: tuple[int, int, int],
    out_channels: int,
    input_name: str = "image",
    output_name: str = "logits",
    overlap: float = 0.5,
    batch_size: int = 2,
    activation: Callable[[Array], Array] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Array:
    """Run ``model`` over ``image`` (C, Z, Y, X) and return blended outputs (K, Z, Y, X).

    ``activation`` is applied per patch before blending (blend probabilities, not logits, so one
    over-confident patch cannot dominate its neighbours). An image smaller than the patch is
    zero-padded and the padding cropped off again."""
    if image.ndim != 4:
        raise ValueError(f"sliding_window_inference takes (C, Z, Y, X), got shape {image.shape}")
    spatial = image.shape[1:]
    pad = [(0, max(0, p - s)) for s, p in zip(spatial, patch, strict=True)]
    padded = np.pad(image, [(0, 0), *pad]) if any(p[1] for p in pad) else image
    shape = padded.shape[1:]
    weight = gaussian_importance(patch)
    acc = np.zeros((out_channels, *shape), dtype=np.float32)
    norm = np.zeros(shape, dtype=np.float32)
    weighted = np.empty((out_channels, *patch), dtype=np.float32)
    corners = list(_corners(shape, patch, overlap))
    batches = [corners[i : i + batch_size] for i in range(0, len(corners), batch_size)]

    def patch_batches() -> Iterator[dict[str, Array]]:
        # Made lazily: a remote backend (Triton) keeps a few batches in flight, never all of them.
        for batch_corners in batches:
            yield {input_name: np.stack([padded[:, z : z + patch[0], y : y + patch[1], x : x + patch[2]]
                                         for z, y, x in batch_corners])}

    done = 0
    results = backend.infer_batches(model, patch_batches())
    for batch_corners, result in zip(batches, results, strict=True):
        out = result[output_name]
        if activation is not None:
            out = activation(out)
        for (z, y, x), pred in zip(batch_corners, out, strict=True):
            np.multiply(pred, weight, out=weighted)  # into one buffer: no temporary per patch
            acc[:, z : z + patch[0], y : y + patch[1], x : x + patch[2]] += weighted
            norm[z : z + patch[0], y : y + patch[1], x : x + patch[2]] += weight
        done += len(batch_corners)
        if progress is not None:
            progress(done, len(corners))
    acc /= norm
    return acc[:, : spatial[0], : spatial[1], : spatial[2]]


def sigmoid(x: Array) -> Array:
    # In place in one float32 buffer (numpy's float32 exp is vectorised): 40 % faster than the float64 pass it
    # replaces, with the same values. The sigmoid was half of the sliding window's host time, which is most of
    # a study's inference time on a GPU (scripts/bench_gpu.py). exp overflows to inf below -88: 1 / inf = 0.
    out = np.negative(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def _corners(shape: tuple[int, ...], patch: tuple[int, int, int], overlap: float) -> Iterator[tuple[int, int, int]]:
    for z in patch_starts(shape[0], patch[0], overlap):
        for y in patch_starts(shape[1], patch[1], overlap):
            for x in patch_starts(shape[2], patch[2], overlap):
                yield z, y, x
