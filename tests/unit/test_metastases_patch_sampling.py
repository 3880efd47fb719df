"""The metastases trainer's choice of lesion for a lesion-centred patch (models/metastases_unet/patch_sampling)."""

from __future__ import annotations

import numpy as np
import pytest

from models.metastases_unet.patch_sampling import lesion_chances


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
