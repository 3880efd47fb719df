"""Post-processing of the tumour regions, as the published clinical pipeline did it: fill holes
smaller than 3 mm³, remove islands smaller than a tenth of the largest component, and keep the
regions nested (WT ⊇ TC ⊇ ET)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from neuroflow.core.labels import TUMOUR_REGIONS, BratsLabel, TumourRegion

Mask = npt.NDArray[np.bool_]

MIN_HOLE_MM3 = 3.0
MIN_ISLAND_FRACTION = 0.1
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connected: a diagonal touch is one lesion
_HOLE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)  # 6-connected background, dual of 26


@dataclass(frozen=True)
class RegionMasks:
    wt: Mask
    tc: Mask
    et: Mask

    def by_region(self) -> dict[TumourRegion, Mask]:
        return {TumourRegion.WT: self.wt, TumourRegion.TC: self.tc, TumourRegion.ET: self.et}


def threshold_regions(probabilities: npt.NDArray[np.float32], threshold: float = 0.5) -> RegionMasks:
    """Binary masks from per-region probabilities (channels in ``TUMOUR_REGIONS`` order)."""
    masks = {r: probabilities[i] >= threshold for i, r in enumerate(TUMOUR_REGIONS)}
    return RegionMasks(masks[TumourRegion.WT], masks[TumourRegion.TC], masks[TumourRegion.ET])


def enforce_nesting(masks: RegionMasks) -> RegionMasks:
    """WT ⊇ TC ⊇ ET by union upwards: a voxel the network calls enhancing is tumour core and tumour,
    whatever the coarser channels said (the BraTS convention when regions become labels)."""
    tc = masks.tc | masks.et
    return RegionMasks(masks.wt | tc, tc, masks.et)


def bounding_box(mask: Mask, margin: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every voxel of ``mask``, widened by ``margin`` voxels on each side within the
    array (None when the mask is empty)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(max(0, int(hit[0]) - margin), min(mask.shape[axis], int(hit[-1]) + 1 + margin)))
    return tuple(box)


def fill_small_holes(mask: Mask, voxel_mm3: float, max_hole_mm3: float = MIN_HOLE_MM3) -> Mask:
    """Fill enclosed background pockets smaller than ``max_hole_mm3`` (keep larger ones: a necrotic
    cavity inside enhancing tumour is anatomy, not noise).

    A hole is a background component that does not reach the volume's border. It is found by labelling the
    background of the mask's bounding box with a one-voxel margin: the margin is one component (a box's shell),
    every background voxel outside the box reaches the border, so the components not in the margin's are
    exactly the holes. One labelling gives the holes and their sizes; scipy's ``binary_fill_holes`` dilates
    the whole volume until nothing changes, which took most of post-processing (and of the review's)."""
    box = bounding_box(mask)
    if box is None:
        return mask
    inside = np.pad(mask[box], 1)
    labels, n = ndimage.label(~inside, structure=_HOLE_CONNECTIVITY)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes * voxel_mm3 < max_hole_mm3
    small[0] = False
    small[labels[0, 0, 0]] = False  # the margin's component: outside, not a hole
    if not small.any():
        return mask
    filled: Mask = mask.copy()
    filled[box] |= small[labels[1:-1, 1:-1, 1:-1]]
    return filled


def remove_small_islands(mask: Mask, fraction: float = MIN_ISLAND_FRACTION) -> Mask:
    """Drop connected components smaller than ``fraction`` of the largest one (labelled inside the mask's
    bounding box: the same components, a fraction of the volume)."""
    box = bounding_box(mask)
    if box is None:
        return mask
    labels, n = ndimage.label(mask[box], structure=_CONNECTIVITY)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes >= fraction * sizes.max()
    keep[0] = False
    kept: Mask = np.zeros_like(mask)
    kept[box] = keep[labels]
    return kept


def postprocess(masks: RegionMasks, voxel_mm3: float) -> RegionMasks:
    """Nesting, then per region: small holes filled and small islands removed, then nesting again
    top-down (an ET island that lost its surrounding WT goes too), so the result stays nested."""
    nested = enforce_nesting(masks)
    cleaned = {
        region: remove_small_islands(fill_small_holes(mask, voxel_mm3))
        for region, mask in nested.by_region().items()
    }
    wt = cleaned[TumourRegion.WT]
    tc = cleaned[TumourRegion.TC] & wt
    et = cleaned[TumourRegion.ET] & tc
    return RegionMasks(wt, tc, et)


def to_label_map(masks: RegionMasks) -> npt.NDArray[np.uint8]:
    """Disjoint BraTS labels: ET -> enhancing, TC without ET -> necrotic core, WT without TC -> oedema."""
    labels = np.zeros(masks.wt.shape, dtype=np.uint8)
    labels[masks.wt] = BratsLabel.OEDEMA
    labels[masks.tc] = BratsLabel.NECROTIC_CORE
    labels[masks.et] = BratsLabel.ENHANCING
    return labels


def from_label_map(labels: npt.NDArray[np.integer]) -> RegionMasks:
    """Regions from a BraTS label map (legacy enhancing label 4 accepted)."""
    et = (labels == BratsLabel.ENHANCING) | (labels == 4)
    tc = et | (labels == BratsLabel.NECROTIC_CORE)
    wt = tc | (labels == BratsLabel.OEDEMA)
    return RegionMasks(wt, tc, et)
