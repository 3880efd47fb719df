"""Lesion-wise scoring of metastasis detection (issue 15): found by overlap or by a centroid within 2 mm,
false positives by the detection's own size, sensitivity per RANO-BM size bin, and an FROC that rises as
the confidence threshold falls."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from neuroflow.core.lesions import label_lesions
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.lesion_eval import froc, match_case, score, sensitivity_at, size_bin

GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (64, 64, 40))
SHAPE = (40, 64, 64)


def _ball(centre: tuple[int, int, int], radius: float) -> npt.NDArray[np.bool_]:
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return np.asarray((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius**2)


def _case() -> tuple[Volume, Volume, Volume]:
    """Reference: a 1-voxel lesion (<3 mm), a ~8 mm lesion (6-10) and a ~25 mm one (>20). Detections: the
    8 mm one overlapped (confidence 0.9), a voxel 1 mm beside the tiny one (0.7), a false positive far from
    everything (0.3); the large lesion is missed."""
    reference = np.zeros(SHAPE, dtype=np.uint8)
    reference[5, 5, 5] = 1
    reference[_ball((10, 20, 40), 4.0)] = 1
    reference[_ball((25, 40, 25), 12.5)] = 1
    detected = np.zeros(SHAPE, dtype=np.uint8)
    probabilities = np.zeros(SHAPE, dtype=np.float32)
    detected[_ball((10, 21, 41), 3.0)] = 1
    probabilities[_ball((10, 21, 41), 3.0)] = 0.9
    detected[5, 5, 6] = 1
    probabilities[5, 5, 6] = 0.7
    detected[_ball((35, 8, 55), 2.0)] = 1
    probabilities[_ball((35, 8, 55), 2.0)] = 0.3
    return (Volume(reference, GEOMETRY), Volume(detected, GEOMETRY), Volume(probabilities, GEOMETRY))


def test_size_bins_follow_the_longest_axial_diameter() -> None:
    assert [size_bin(d) for d in (1.0, 3.0, 5.9, 6.0, 12.0, 20.0, 40.0)] == [
        "<3", "3-6", "3-6", "6-10", "10-20", ">20", ">20"]


def test_overlap_and_near_centroid_find_lesions_and_the_rest_are_false_positives() -> None:
    reference, detected, probabilities = _case()
    match = match_case(reference, label_lesions(detected, probabilities=probabilities))
    by_bin = {b.name: b for b in score([match, match], threshold=0.0)}  # two identical cases
    assert (by_bin["<3"].found, by_bin["<3"].total) == (2, 2)
    assert (by_bin["6-10"].found, by_bin["6-10"].total) == (2, 2)
    assert (by_bin[">20"].found, by_bin[">20"].total) == (0, 2)
    assert by_bin["all"].sensitivity == pytest.approx(4 / 6)
    assert by_bin["all"].false_positives_per_case == pytest.approx(1.0)
    assert by_bin["3-6"].false_positives == 2 and by_bin["3-6"].total == 0 and by_bin["3-6"].sensitivity is None


def test_the_threshold_drops_low_confidence_detections_and_the_froc_rises() -> None:
    reference, detected, probabilities = _case()
    match = match_case(reference, label_lesions(detected, probabilities=probabilities))
    overall = score([match], threshold=0.8)[-1]
    assert (overall.found, overall.false_positives) == (1, 0)
    points = froc([match])
    assert [p.threshold for p in points] == pytest.approx([0.9, 0.7, 0.3])
    assert [p.sensitivity for p in points] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert [p.false_positives_per_case for p in points] == [0.0, 0.0, 1.0]
    assert sensitivity_at(points, 0.39) == pytest.approx(2 / 3)


def test_a_detection_without_probabilities_counts_as_certain_and_no_reference_means_all_false() -> None:
    _, detected, _ = _case()
    empty = Volume(np.zeros(SHAPE, dtype=np.uint8), GEOMETRY)
    match = match_case(empty, label_lesions(detected))
    overall = score([match], threshold=1.0)[-1]
    assert (overall.total, overall.false_positives) == (0, 3)
