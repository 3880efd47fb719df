"""The lesion-wise scoring rule of the real MS pairs (issue 18) on constructed masks: which change
components are reference lesions (size, direction from the two visits), and which reported lesions are
found, near misses or false positives."""

from __future__ import annotations

import numpy as np
import pytest

from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.lesion_change_scoring import Detection, reference_lesions, score_pair

# 1 x 1 x 2 mm voxels (i, j, k), origin 0: voxel (i, j, k) lies at (i, j, 2k) mm.
GRID = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (60, 60, 20))


def _volume(array: np.ndarray) -> Volume:
    return Volume(array, GRID)


@pytest.fixture
def pair() -> tuple[Volume, Volume, Volume]:
    """Four change components on white matter at 100: a new lesion (100 -> 160, 4x4x2 voxels = 64 mm³) at
    i, j 10-13, k 5-6; an enlarging one (a rim around an old lesion, 140 -> 170, 48 mm³) at i, j 40-43; a
    shrinking one (160 -> 100) at i 10-13, j 40-43; a new one of 8 mm³ (under 12) at i 30-31, j 30-31, k 10."""
    change = np.zeros((20, 60, 60), np.uint8)
    base = np.full(change.shape, 100.0, np.float32)
    follow = base.copy()
    change[5:7, 10:14, 10:14] = 1
    follow[5:7, 10:14, 10:14] = 160.0
    change[5:7, 40:44, 40:43] = 1  # rim of an old lesion at i 43-45, which is not change
    base[5:7, 40:44, 40:43] = 140.0
    follow[5:7, 40:44, 40:43] = 170.0
    base[5:7, 40:44, 43:46] = 170.0
    follow[5:7, 40:44, 43:46] = 170.0
    change[5:7, 40:44, 10:14] = 1
    base[5:7, 40:44, 10:14] = 160.0
    change[10, 30:32, 30:32] = 1
    follow[10, 30:32, 30:32] = 160.0
    return _volume(change), _volume(base), _volume(follow)


def test_reference_lesions_are_the_growing_components_of_at_least_12_mm3(
        pair: tuple[Volume, Volume, Volume]) -> None:
    growing, shrinking = reference_lesions(*pair)
    assert sorted(round(r.volume_mm3) for r in growing) == [48, 64]
    assert [round(r.volume_mm3) for r in shrinking] == [64]
    assert all(r.contrast_change > 0 for r in growing) and shrinking[0].contrast_change < 0


def test_found_near_and_false_by_distance_to_the_reference_voxels(pair: tuple[Volume, Volume, Volume]) -> None:
    growing, shrinking = reference_lesions(*pair)
    detections = [
        Detection((11.5, 11.5, 11.0), 60.0),  # the new lesion's centre: found
        Detection((15.9, 11.0, 10.0), 5.0),  # 2.9 mm beyond its edge voxel (13, 11, 5): still found
        Detection((11.5, 11.5, 16.0), 5.0),  # 4 mm above its top voxel (z = 12): near, neither found nor false
        Detection((11.5, 41.5, 11.0), 60.0),  # on the shrinking component: false (it is not a reference lesion)
        Detection((30.5, 30.5, 20.0), 8.0),  # on the 8 mm³ change: false (under 12 mm³)
        Detection((50.0, 10.0, 30.0), 30.0),  # nowhere: false
    ]
    score = score_pair(growing, shrinking, detections)
    assert score.hits == 1 and score.total == 2
    assert len(score.found[next(iter(score.found))]) == 2
    assert [d.centroid_mm for d in score.near_misses] == [(11.5, 11.5, 16.0)]
    assert len(score.false_positives) == 3
    assert score.sensitivity_in(12.0, 50.0) == (0, 1)  # the enlarging rim, missed
    assert score.sensitivity_in(50.0, 200.0) == (1, 1)
    # precision 2 / (2 + 3), recall 1 / 2
    assert score.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert score.found_volume_ratios() == [pytest.approx(65.0 / 64.0)]


def test_nothing_reported_finds_nothing_and_has_no_false_positives(pair: tuple[Volume, Volume, Volume]) -> None:
    growing, shrinking = reference_lesions(*pair)
    score = score_pair(growing, shrinking, [])
    assert (score.hits, score.total, len(score.false_positives), score.f1) == (0, 2, 0, 0.0)
