"""Where the metastases trainer centres its patches (models/metastases_unet/patch_sampling): the lesion of a
lesion-centred patch, and the bright non-lesion voxels a hard-negative patch is centred on."""

from __future__ import annotations

import numpy as np
import pytest

from models.metastases_unet.patch_sampling import bright_negatives, lesion_chances


def test_without_bias_every_lesion_is_as_likely() -> None:
    assert np.allclose(lesion_chances([5, 400, 30_000], 0.0), 1 / 3)


def test_with_bias_a_small_lesion_is_picked_more_often_by_the_square_root_of_the_size_ratio() -> None:
    chances = lesion_chances([25, 10_000], 0.5)
    assert chances.sum() == pytest.approx(1.0)
    assert chances[0] / chances[1] == pytest.approx(20.0)


@pytest.mark.parametrize("sizes", [[], [0, 10], [[3, 4]]])
def test_sizes_that_are_not_positive_counts_are_refused(sizes: list[object]) -> None:
    with pytest.raises(ValueError, match="positive voxel counts"):
        lesion_chances(sizes, 0.5)


def test_bright_negatives_are_bright_voxels_clear_of_every_lesion() -> None:
    t1ce = np.zeros((20, 20, 20), np.float32)
    labels = np.zeros((20, 20, 20), np.uint16)
    t1ce[5, 5, 5:8] = 3.0  # a vein: bright, no label
    t1ce[14, 14, 14] = labels[14, 14, 14] = 1  # a lesion's voxel (z 1: not bright) ...
    t1ce[14, 14, 16] = 3.0  # ... and a bright voxel two voxels from it
    t1ce[2, 17, 2] = 1.9  # just under the threshold
    found = bright_negatives(t1ce, labels, min_z=2.0, margin=3, at_most=100, rng=np.random.default_rng(0))
    assert sorted(map(tuple, found.tolist())) == [(5, 5, 5), (5, 5, 6), (5, 5, 7)]
    kept = bright_negatives(t1ce, labels, min_z=2.0, margin=1, at_most=100, rng=np.random.default_rng(0))
    assert (14, 14, 16) in set(map(tuple, kept.tolist()))  # outside a 1-voxel margin


def test_bright_negatives_are_capped_at_random_and_may_be_none() -> None:
    t1ce = np.full((10, 10, 10), 5.0, np.float32)
    labels = np.zeros((10, 10, 10), np.uint16)
    first = bright_negatives(t1ce, labels, min_z=2.0, margin=3, at_most=50, rng=np.random.default_rng(1))
    second = bright_negatives(t1ce, labels, min_z=2.0, margin=3, at_most=50, rng=np.random.default_rng(2))
    assert len(first) == len(second) == 50 and len(set(map(tuple, first.tolist()))) == 50
    assert set(map(tuple, first.tolist())) != set(map(tuple, second.tolist()))
    dark = bright_negatives(np.zeros_like(t1ce), labels, min_z=2.0, margin=3, at_most=50, rng=np.random.default_rng(1))
    assert dark.shape == (0, 3)
