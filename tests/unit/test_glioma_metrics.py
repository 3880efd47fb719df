"""The glioma evaluation's overlap metrics (models/glioma_unet/metrics.py): voxel Dice and the BraTS
2023 lesion-wise Dice (matching through a 3-voxel dilation, false-positive components scoring 0)."""

from __future__ import annotations

import numpy as np
import pytest

from models.glioma_unet.metrics import dice, lesion_wise_dice


def _cube(shape: tuple[int, int, int], corner: tuple[int, int, int], size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(c, c + size) for c in corner)] = True
    return mask


SHAPE = (40, 40, 40)


def test_a_missed_lesion_counts_zero_and_a_found_one_its_own_dice() -> None:
    first, second = _cube(SHAPE, (2, 2, 2), 6), _cube(SHAPE, (25, 25, 25), 6)

    score, lesions, false_positives = lesion_wise_dice(first, first | second)

    assert (score, lesions, false_positives) == (0.5, 2, 0)
    assert dice(first, first | second) == pytest.approx(2 * 216 / (216 + 432))


def test_a_false_positive_component_lowers_the_mean_as_a_zero() -> None:
    lesion, stray = _cube(SHAPE, (2, 2, 2), 6), _cube(SHAPE, (25, 25, 25), 5)

    score, _, false_positives = lesion_wise_dice(lesion | stray, lesion)

    assert false_positives == 1
    assert score == pytest.approx(0.5)


def test_predicted_pieces_within_the_dilation_are_matched_to_the_lesion_together() -> None:
    lesion = _cube(SHAPE, (10, 10, 10), 10)
    pieces = lesion.copy()
    pieces[14:16] = False  # split in two, each piece over 50 voxels

    score, _, false_positives = lesion_wise_dice(pieces, lesion)

    assert false_positives == 0
    assert score == pytest.approx(dice(pieces, lesion))


def test_components_under_fifty_voxels_are_ignored_and_empty_against_empty_is_undefined() -> None:
    speck = _cube(SHAPE, (30, 30, 30), 3)  # 27 voxels

    assert lesion_wise_dice(speck, np.zeros(SHAPE, dtype=bool)) == (None, 0, 0)
    assert dice(np.zeros(SHAPE, dtype=bool), np.zeros(SHAPE, dtype=bool)) is None
