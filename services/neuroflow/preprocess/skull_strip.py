"""Skull stripping with the pretrained deepbet networks (deepbet 1.0.2, MIT, Fisch et al. 2024).

A re-implementation of deepbet's ``BrainExtraction.run_model`` and ``postprocess`` in numpy and scipy,
so the pipeline runs the exported ONNX networks through the inference backend without torch:

1. The voxel array is viewed in the orientation deepbet was trained on (nibabel's closest canonical
   RAS: array axes running from the patient's left to right, posterior to anterior, inferior to
   superior). This is a transpose and reversal of array axes only, undone on the way out: the mask
   comes back on the input's own grid and its geometry is never touched.
2. The whole head is resampled to the bbox network's working size (128^3) with torch's
   ``nearest-exact`` index mapping, normalised (below), and the bbox network's brain probability is
   thresholded at 0.5; its largest 26-connected component gives a bounding box, widened by 10 % of its
   size on each side.
3. The box is cut from the full-resolution array, resampled to the brain network's working size and
   normalised with the head's quantiles; the brain probability is mapped back onto the box's voxels
   (``nearest-exact`` again) and thresholded at 0.5.
4. Inside the box only the largest 26-connected component is kept and its enclosed holes are filled.

Normalisation (model-card name ``deepbet_quantile_zscore``): clip to the 0.5 % and 99.5 % quantiles of
the 128^3 head, scale to [0, 1], z-score over the network input, then ``0.226 * z + 0.449``.
Working sizes are read from the model cards (``patch_size``: deepbet runs one patch, the whole input
resampled to that size). The arithmetic that decides indices (resampling, quantiles, bounding box) is
done in float32 exactly as torch does it, so the same voxels are chosen as in deepbet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from neuroflow.core.errors import StudyError
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelCard, ModelRef
from neuroflow.core.volume import Geometry, Volume

# Model-card name of the normalisation implemented by ``deepbet_normalise``.
DEEPBET_NORMALISATION = "deepbet_quantile_zscore"
# Output channel (model-card label) holding the probability of brain.
BRAIN_LABEL = "brain"
# deepbet's defaults: probability threshold, intensity quantiles, bounding-box margin per side, and the
# fraction of a slice the low-resolution mask must cover for that slice to count towards the box.
THRESHOLD = 0.5
LOW_QUANTILE, HIGH_QUANTILE = 0.005, 0.995
BBOX_MARGIN = 0.1
BBOX_SLICE_FRACTION = 0.02
# LinkNet3d halves the grid five times: working sizes must be multiples of this.
SIZE_MULTIPLE = 32
_STAGE = "skull_strip"

Float32Array = npt.NDArray[np.float32]
Scalar = TypeVar("Scalar", bound=np.generic)
BoolArray = npt.NDArray[np.bool_]
Box = tuple[slice, slice, slice]


def skull_strip(
    volume: Volume,
    backend: InferenceBackend,
    models: tuple[ModelRef, ModelRef],
    *,
    study_key: str,
    series_uid: str | None = None,
    working_size: tuple[int, int, int] | None = None,
) -> Volume:
    """The brain mask of a T1-weighted head volume.

    Takes a 3D ``volume`` (any orientation, spacing and field of view), the ``backend`` serving the
    ``models`` (bounding-box network, brain network) and the study's pseudonymous ``study_key`` and
    ``series_uid`` for error messages (pass the key: without it errors say "unknown"; the series
    defaults to the volume's ``series_instance_uid`` meta entry). ``working_size`` overrides the brain
    network's model-card ``patch_size`` (for benchmarks; leave it None in the pipeline).

    Returns a uint8 Volume (1 = brain, 0 = elsewhere) with exactly the input's geometry: one connected
    component without enclosed holes.

    Refuses with StudyError a volume without contrast (blank or constant), and one in which the
    networks find no brain. Raises ValueError when a model card does not describe a deepbet network
    (other normalisation, no brain channel, working size not a multiple of 32), and
    InferenceUnavailable (from the backend) when a model cannot be served."""
    bbox_model, brain_model = models
    bbox_card, brain_card = backend.card(bbox_model), backend.card(brain_model)
    bbox_size = _working_size(bbox_card, None)
    brain_size = _working_size(brain_card, working_size)

    series = series_uid or volume.meta.get("series_instance_uid") or None

    def refuse(reason: str) -> StudyError:
        return StudyError(study_key, reason, stage=_STAGE, series_uid=series)

    orientation = RasView.of(volume.geometry)
    head = np.nan_to_num(orientation.to_ras(np.asarray(volume.array, dtype=np.float32)))

    small = resize_nearest_exact(head, bbox_size)
    low = torch_quantile(small, LOW_QUANTILE)
    high = torch_quantile(small, HIGH_QUANTILE)
    if not high > low:
        raise refuse(f"the series has no contrast (0.5 % and 99.5 % intensity quantiles both {low:g}): "
                     "it is blank or constant, so no brain can be found; check the series' pixel data")
    coarse = _brain_probability(backend, bbox_model, bbox_card, deepbet_normalise(small, low, high)) > THRESHOLD
    if not coarse.any():
        raise refuse("the skull-strip network found no brain in the series (is it a T1-weighted head MRI?)")
    box = bbox_with_margin(largest_component(coarse), head.shape)
    if box is None:
        raise refuse("the skull-strip network found too little brain to place a bounding box "
                     "(is the series a T1-weighted MRI covering the whole head?)")

    crop = head[box]
    resized = resize_nearest_exact(crop, brain_size)
    probability = _brain_probability(backend, brain_model, brain_card, deepbet_normalise(resized, low, high))
    brain = resize_nearest_exact(probability, crop.shape) > THRESHOLD
    if not brain.any():
        raise refuse("the skull-strip network found no brain inside the head's bounding box")
    brain = ndimage.binary_fill_holes(largest_component(brain))

    mask = np.zeros(head.shape, dtype=np.uint8)
    mask[box] = brain
    return volume.with_array(np.ascontiguousarray(orientation.from_ras(mask)))


@dataclass(frozen=True)
class RasView:
    """How to view a (k, j, i) array in nibabel's closest canonical RAS order and back.

    ``axes[c]`` is the array axis that becomes canonical axis c (0: towards right, 1: anterior,
    2: superior); ``flips[c]`` says whether it runs the other way and is reversed. Only array axes are
    permuted and reversed, so ``from_ras(to_ras(a))`` is ``a`` voxel for voxel."""

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def of(cls, geometry: Geometry) -> RasView:
        """The view nibabel's ``as_closest_canonical`` gives for the same image: for the voxel axes
        i, j, k in turn, the RAS axis it is closest to among those not yet taken."""
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        remaining = lps_to_ras @ geometry.direction_matrix()  # columns: i, j, k in RAS
        axes = [0, 0, 0]
        flips = [False, False, False]
        for voxel_axis in range(3):
            column = remaining[:, voxel_axis]
            target = int(np.argmax(np.abs(column)))
            axes[target] = 2 - voxel_axis  # i is the last array axis, k the first
            flips[target] = bool(column[target] < 0)
            remaining[target, :] = 0.0
        return cls((axes[0], axes[1], axes[2]), (flips[0], flips[1], flips[2]))

    def to_ras(self, array: npt.NDArray[Scalar]) -> npt.NDArray[Scalar]:
        return np.transpose(array, self.axes)[self._reversal()]

    def from_ras(self, array: npt.NDArray[Scalar]) -> npt.NDArray[Scalar]:
        inverse = tuple(int(a) for a in np.argsort(self.axes))
        return np.transpose(array[self._reversal()], inverse)

    def _reversal(self) -> tuple[slice, ...]:
        return tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)


def nearest_exact_indices(n_in: int, n_out: int) -> npt.NDArray[np.intp]:
    """Source index of each of ``n_out`` samples, as torch's ``interpolate(mode='nearest-exact')``:
    floor((d + 0.5) * n_in / n_out), computed in float32 (float64 picks other voxels for some sizes)."""
    scale = np.float32(n_in) / np.float32(n_out)
    centres = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale
    index: npt.NDArray[np.intp] = np.minimum(np.floor(centres).astype(np.intp), n_in - 1)
    return index


def resize_nearest_exact(array: npt.NDArray[Scalar], shape: tuple[int, ...]) -> npt.NDArray[Scalar]:
    """``array`` (3D) resampled to ``shape`` by nearest-exact index mapping along each axis."""
    index = [nearest_exact_indices(n_in, n_out) for n_in, n_out in zip(array.shape, shape, strict=True)]
    return array[np.ix_(*index)]


def torch_quantile(values: Float32Array, q: float) -> float:
    """The ``q`` quantile with linear interpolation, in float32 arithmetic as ``torch.quantile``."""
    flat = values.ravel()
    rank = np.float32(q) * np.float32(flat.size - 1)
    below = int(rank)
    above = min(below + 1, flat.size - 1)
    ordered = np.partition(flat, (below, above))
    lo, hi = np.float32(ordered[below]), np.float32(ordered[above])
    weight = rank - np.float32(below)
    # torch.lerp's two-sided formula, which is exact at both ends.
    value = lo + weight * (hi - lo) if weight < 0.5 else hi - (hi - lo) * (np.float32(1.0) - weight)
    return float(value)


def deepbet_normalise(array: Float32Array, low: float, high: float) -> Float32Array:
    """deepbet's ``normalize``: scale [low, high] to [0, 1] and clip, z-score over the array (standard
    deviation with Bessel's correction, as torch's ``std``), then ``0.226 * z + 0.449``."""
    scaled = np.clip((array - np.float32(low)) / np.float32(high - low), 0.0, 1.0).astype(np.float32)
    mean = scaled.mean(dtype=np.float64)
    std = scaled.std(dtype=np.float64, ddof=1)
    if not std > 0:
        std = 1.0  # a constant input (only possible inside a degenerate box): leave it centred at 0
    z = ((scaled - np.float32(mean)) / np.float32(std)).astype(np.float32)
    return np.asarray(np.float32(0.226) * z + np.float32(0.449), dtype=np.float32)


def largest_component(mask: BoolArray) -> BoolArray:
    """The largest 26-connected component of a non-empty ``mask`` (deepbet uses cc3d's default)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def bbox_with_margin(mask_small: BoolArray, shape: tuple[int, ...]) -> Box | None:
    """deepbet's ``get_bbox_with_margin``: the box of the slices of ``mask_small`` whose brain fraction
    exceeds 2 %, scaled to ``shape`` and widened by ``BBOX_MARGIN`` of its size on each side, in
    torch's float32 arithmetic. None when some axis has no such slice."""
    slices: list[slice] = []
    one_plus_margins = np.float32(1.0) + np.float32(2.0) * np.float32(BBOX_MARGIN)
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        counts = mask_small.sum(axis=others).astype(np.float32)
        per_slice = np.float32(np.prod([mask_small.shape[a] for a in others]))
        present = np.flatnonzero(counts / per_slice > np.float32(BBOX_SLICE_FRACTION))
        if present.size == 0:
            return None
        first, last = int(present.min()), int(present.max()) + 1
        scale = np.float32(shape[axis]) / np.float32(mask_small.shape[axis])
        centre = np.round(np.float32(first + last) / np.float32(2.0) * scale)
        size = np.round(one_plus_margins * (np.float32(last - first) * scale))
        half = size / np.float32(2.0)
        # int() truncates towards zero as deepbet's int(tensor) does; then clamp into the array.
        slices.append(slice(max(0, int(centre - half)), min(shape[axis], int(centre + half))))
    return slices[0], slices[1], slices[2]


def _working_size(card: ModelCard, override: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if card.normalisation != DEEPBET_NORMALISATION:
        raise ValueError(f"model {card.name}:{card.version} expects normalisation {card.normalisation!r}; "
                         f"skull_strip implements {DEEPBET_NORMALISATION!r}")
    if BRAIN_LABEL not in card.labels:
        raise ValueError(f"model {card.name}:{card.version} has no {BRAIN_LABEL!r} output channel")
    size = tuple(override) if override is not None else tuple(card.patch_size)
    if len(size) != 3 or any(n <= 0 or n % SIZE_MULTIPLE for n in size):
        raise ValueError(f"model {card.name}:{card.version}: working size {list(size)} is not three "
                         f"positive multiples of {SIZE_MULTIPLE}")
    return int(size[0]), int(size[1]), int(size[2])


def _brain_probability(backend: InferenceBackend, model: ModelRef, card: ModelCard,
                       image: Float32Array) -> Float32Array:
    """The brain channel of ``model``'s output for one normalised 3D ``image``."""
    outputs = backend.infer(model, {card.inputs[0].name: image[None, None]})
    return np.asarray(outputs[card.outputs[0].name][0, card.labels.index(BRAIN_LABEL)], dtype=np.float32)


def with_signal(mask: Volume, reference: Volume) -> Volume:
    """``mask`` less the reference series' empty background: the voxels holding the value all eight corners
    hold (0, or whatever a rescaled export made of it) and connected to the volume's edge through it.

    That background is not tissue: a series skull-stripped before it reached us (research PACS, BraTS-style
    exports), zero padding, or outside the reference's field of view. The skull-stripping network draws a
    smooth outline over it; counted as brain, it was z-scored into a dark rim around a pre-stripped brain and
    shifted every channel's mean and spread, and the glioma network (trained on true brain masks) called most
    of TCGA-DU-7294's tumour core oedema. The reference is the series the others were moved onto: their
    interpolation smears a stripped edge outward, so only its background says where the data ends. An
    unstripped head's corners are noise, not one value, so nothing changes there; a dark voxel inside the
    brain that happens to hold the background's value is not connected to the edge and stays."""
    image = np.asarray(reference.array)
    corners = image[np.ix_(*[[0, n - 1] for n in image.shape])]
    if not np.all(corners == corners.flat[0]):
        return mask
    fill, edge = image == corners.flat[0], _edge_voxels(image.shape)
    components, _ = ndimage.label(fill)
    background = np.isin(components, np.unique(components[edge & fill]))
    kept = (np.asarray(mask.array) > 0) & ~background
    if not kept.any():  # a blank reference: left to the checks that refuse it with the study's name
        return mask
    return mask.with_array(kept.astype(np.asarray(mask.array).dtype))


def _edge_voxels(shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    edge = np.ones(shape, dtype=bool)
    edge[tuple(slice(1, n - 1) for n in shape)] = False
    return edge
