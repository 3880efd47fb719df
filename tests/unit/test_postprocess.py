"""Post-processing as the published pipeline: holes < 3 mm³ filled, islands < 1/10 of the largest
removed, WT ⊇ TC ⊇ ET kept."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuroflow.core.labels import BratsLabel
from neuroflow.segmentation.postprocess import (
    RegionMasks,
    bounding_box,
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


def _holes_filled_on_the_whole_volume(mask: np.ndarray, voxel_mm3: float) -> np.ndarray:
    """The definition, computed the slow way over the whole array: scipy fills every background pocket not
    reaching the border; those under 3 mm³ are kept filled."""
    holes = ndimage.binary_fill_holes(mask, structure=ndimage.generate_binary_structure(3, 1)) & ~mask
    labels, n = ndimage.label(holes, structure=ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes * voxel_mm3 < 3.0
    small[0] = False
    return np.asarray(mask | small[labels])


def _islands_removed_on_the_whole_volume(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes >= 0.1 * sizes.max()
    keep[0] = False
    return np.asarray(keep[labels])


@pytest.mark.parametrize("seed", range(12))
def test_box_cropped_holes_and_islands_equal_the_whole_volume_definition(seed: int) -> None:
    """Post-processing works inside the mask's bounding box; on random speckled blobs, some touching the
    array's faces (a hole there is open to the outside, not filled) and at several voxel sizes, it must give
    exactly what the whole-volume definition gives."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(12, 40)), int(rng.integers(12, 40)), int(rng.integers(12, 40)))
    smooth = ndimage.gaussian_filter(rng.random(shape), sigma=float(rng.uniform(0.6, 2.0)))
    mask = smooth > np.quantile(smooth, float(rng.uniform(0.4, 0.9)))
    if seed % 3 == 0:  # a blob well inside, with a margin of empty voxels
        mask[:3] = mask[-3:] = False
        mask[:, :2] = False
    for voxel_mm3 in (0.5, 1.0, 2.0):
        assert np.array_equal(fill_small_holes(mask, voxel_mm3), _holes_filled_on_the_whole_volume(mask, voxel_mm3))
    assert np.array_equal(remove_small_islands(mask), _islands_removed_on_the_whole_volume(mask))


def test_a_pocket_open_to_the_array_face_is_not_a_hole() -> None:
    mask = _cube((10, 10, 10), 0, 6)
    mask[0, 2, 2] = False  # on the face of the array: reaches the outside
    mask[3, 3, 3] = False  # enclosed
    out = fill_small_holes(mask, voxel_mm3=1.0)
    assert not out[0, 2, 2] and out[3, 3, 3]


def test_empty_masks_pass_through_and_the_box_is_clipped_to_the_array() -> None:
    empty = np.zeros((5, 6, 7), dtype=bool)
    assert bounding_box(empty) is None
    assert not fill_small_holes(empty, 1.0).any() and not remove_small_islands(empty).any()
    one = empty.copy()
    one[0, 3, 6] = True
    assert bounding_box(one, margin=2) == (slice(0, 3), slice(1, 6), slice(4, 7))


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
