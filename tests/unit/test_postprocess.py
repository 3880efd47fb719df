"""Post-processing as the published pipeline: holes < 3 mm³ filled, islands < 1/10 of the largest
removed, WT ⊇ TC ⊇ ET kept."""

from __future__ import annotations

import numpy as np

from neuroflow.core.labels import BratsLabel
from neuroflow.segmentation.postprocess import (
    RegionMasks,
    enforce_nesting,
    fill_small_holes,
    from_label_map,
    postprocess,
    remove_small_islands,
    to_label_map,
)


def _cube(shape: tuple[int, int, int], lo: int, hi: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_holes_smaller_than_3_mm3_are_filled_and_larger_ones_kept() -> None:
    mask = _cube((30, 30, 30), 2, 28)
    mask[10, 10, 10] = False  # 1 voxel = 1 mm³ at 1 mm: filled
    mask[18:21, 18:21, 18:21] = False  # 27 mm³: a real cavity, kept
    out = fill_small_holes(mask, voxel_mm3=1.0)
    assert out[10, 10, 10]
    assert not out[19, 19, 19]


def test_hole_size_is_measured_in_mm3_not_voxels() -> None:
    mask = _cube((20, 20, 20), 2, 18)
    mask[10, 10, 10] = False
    # One voxel of 8 mm³ (2 mm grid) is not a small hole.
    assert not fill_small_holes(mask, voxel_mm3=8.0)[10, 10, 10]


def test_islands_smaller_than_a_tenth_of_the_largest_are_removed() -> None:
    mask = _cube((40, 40, 40), 5, 15)  # 1000 voxels
    mask[30:34, 30:34, 30:34] = True  # 64 voxels < 100: removed
    mask[20:25, 30:35, 30:35] = True  # 125 voxels >= 100: kept
    out = remove_small_islands(mask)
    assert out[10, 10, 10] and out[22, 32, 32]
    assert not out[31, 31, 31]


def test_nesting_puts_enhancing_voxels_inside_core_and_whole_tumour() -> None:
    shape = (10, 10, 10)
    et = _cube(shape, 4, 6)
    masks = enforce_nesting(RegionMasks(wt=np.zeros(shape, bool), tc=np.zeros(shape, bool), et=et))
    assert (masks.tc >= masks.et).all() and (masks.wt >= masks.tc).all()
    assert masks.wt.sum() == et.sum()


def test_postprocessed_regions_stay_nested_and_round_trip_through_labels() -> None:
    rng = np.random.default_rng(0)
    shape = (32, 32, 32)
    wt = _cube(shape, 4, 28) | (rng.random(shape) > 0.995)
    tc = _cube(shape, 8, 22)
    et = _cube(shape, 10, 20) & ~_cube(shape, 13, 17)
    out = postprocess(RegionMasks(wt, tc, et), voxel_mm3=1.0)
    assert (out.wt >= out.tc).all() and (out.tc >= out.et).all()
    labels = to_label_map(out)
    assert set(np.unique(labels)) <= {0, int(BratsLabel.NECROTIC_CORE), int(BratsLabel.OEDEMA),
                                      int(BratsLabel.ENHANCING)}
    back = from_label_map(labels)
    assert (back.wt == out.wt).all() and (back.tc == out.tc).all() and (back.et == out.et).all()
