"""Haematoma expansion on CT: a small version of the validation bench on a CT made from a real brain (volume
error <= 5 %, every expansion flag right), the shape measures on objects of known shape, the refusal of
an image that is not a head CT in Hounsfield units, and a second blood region measured beside the haematoma."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuroflow.core.errors import StudyError
from neuroflow.core.timing import StageClock
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools import longitudinal_phantoms as lp
from neuroflow.longitudinal.compare import haematoma_section
from neuroflow.longitudinal.haematoma import HAEMATOMA_STAGES, measure, measure_haematoma_change


@pytest.fixture(scope="module")
def brain() -> lp.Brain:
    return lp.colin27()


@pytest.mark.parametrize(("before", "after"), [(8.0, 12.0), (25.0, 27.0)])
def test_small_bench_measures_volumes_within_5_percent_and_flags_expansion_right(
        brain: lp.Brain, before: float, after: float) -> None:
    pair = lp.make_haematoma_pair(brain, baseline_ml=before, followup_ml=after, seed=7)
    clock = StageClock(HAEMATOMA_STAGES)
    change = measure_haematoma_change(pair.baseline, pair.followup, study_key="bench-small", clock=clock)
    assert change.baseline is not None and change.followup is not None
    assert change.baseline.volume_ml == pytest.approx(pair.truth.baseline_ml, rel=0.05)
    assert change.followup.volume_ml == pytest.approx(pair.truth.followup_ml, rel=0.05)
    assert change.expansion is pair.truth.expansion
    assert change.change_pct is not None and change.change_ml == pytest.approx(after - before, abs=1.0)
    assert np.linalg.norm(np.subtract(change.followup.centroid_mm, pair.truth.followup_centroid_mm)) < 1.5
    assert change.centroid_shift_mm is not None
    assert change.centroid_shift_mm == pytest.approx(pair.truth.centroid_shift_mm, abs=1.0)
    assert change.baseline_mask.geometry.is_close(pair.baseline.geometry)
    assert set(clock.timings) == set(HAEMATOMA_STAGES)


def _grid(shape: tuple[int, int, int], spacing: float = 1.0) -> Geometry:
    return Geometry((spacing, spacing, spacing), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                    (shape[2], shape[1], shape[0]))


def test_a_sphere_is_regular_and_an_elongated_clot_is_less_so_along_its_main_axis() -> None:
    k, j, i = np.mgrid[0:60, 0:60, 0:60].astype(np.float64) - 30.0
    sphere = Volume((i ** 2 + j ** 2 + k ** 2 <= 15.0 ** 2).astype(np.uint8), _grid((60, 60, 60)))
    round_ = measure(sphere)
    assert round_.volume_ml == pytest.approx(4.0 / 3.0 * math.pi * 15.0 ** 3 / 1000.0, rel=0.02)
    assert round_.regularity == pytest.approx(1.0, abs=0.05)
    assert round_.diameters.ap_mm == pytest.approx(31.0, abs=1.0)
    # An ellipsoid three times longer along y (anteroposterior in LPS) than across.
    ellipsoid = Volume(((i / 8.0) ** 2 + (j / 24.0) ** 2 + (k / 8.0) ** 2 <= 1.0).astype(np.uint8), _grid((60, 60, 60)))
    long_ = measure(ellipsoid)
    assert long_.regularity < round_.regularity - 0.1
    assert abs(long_.main_axis[1]) == pytest.approx(1.0, abs=0.01)
    assert long_.diameters.ap_mm == pytest.approx(49.0, abs=1.0)
    assert long_.diameters.lr_mm == pytest.approx(17.0, abs=1.0)
    assert long_.diameters.cc_mm == pytest.approx(17.0, abs=1.0)


def test_an_image_that_is_not_a_head_ct_in_hounsfield_units_is_refused(brain: lp.Brain) -> None:
    mr = brain.t1  # 0-255, no air at -1000
    with pytest.raises(StudyError, match="baseline CT does not look like a head CT") as raised:
        measure_haematoma_change(mr, mr, study_key="mr-key")
    assert raised.value.study_key == "mr-key"


def _with_second_clot(ct: Volume, clot_centroid_mm: tuple[float, float, float], volume_ml: float) -> Volume:
    """``ct`` with a sphere of ``volume_ml`` at 65 HU painted at the mirror image of the clot across the
    brain's midline (deep in the other hemisphere)."""
    hu = ct.array.astype(np.float32)
    inside = (hu > 0.0) & (hu < 100.0)
    affine = ct.geometry.index_to_patient()
    k, j, i = (float(c) for c in np.argwhere(inside).mean(axis=0))
    midline_x = float((affine @ np.array([i, j, k, 1.0]))[0])
    mirrored = np.array([2.0 * midline_x - clot_centroid_mm[0], clot_centroid_mm[1], clot_centroid_mm[2], 1.0])
    ci, cj, ck, _ = np.linalg.inv(affine) @ mirrored
    kk, jj, ii = np.indices(hu.shape, dtype=np.float64)
    spacing = ct.geometry.spacing
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    ball = ((ii - ci) * spacing[0]) ** 2 + ((jj - cj) * spacing[1]) ** 2 + ((kk - ck) * spacing[2]) ** 2 <= radius ** 2
    hu[ball] = 65.0 + np.random.default_rng(1).normal(0.0, 3.0, int(ball.sum()))
    return ct.with_array(hu)


def test_a_second_blood_region_is_measured_and_reported_without_changing_the_haematoma_or_its_verdict(
        brain: lp.Brain) -> None:
    pair = lp.make_haematoma_pair(brain, baseline_ml=8.0, followup_ml=12.0, seed=7)
    baseline = _with_second_clot(pair.baseline, pair.truth.baseline_centroid_mm, 4.0)
    followup = _with_second_clot(pair.followup, pair.truth.followup_centroid_mm, 4.0)
    change = measure_haematoma_change(baseline, followup, study_key="two-clots")
    assert change.baseline is not None and change.followup is not None
    assert change.baseline.volume_ml == pytest.approx(8.0, rel=0.05)  # still the largest, alone
    assert change.followup.volume_ml == pytest.approx(12.0, rel=0.05)
    assert change.expansion is pair.truth.expansion
    assert len(change.baseline_others_ml) == 1 and change.baseline_others_ml[0] == pytest.approx(4.0, rel=0.1)
    assert len(change.followup_others_ml) == 1 and change.followup_others_ml[0] == pytest.approx(4.0, rel=0.1)
    assert any("1 more blood-density region" in w for w in change.warnings)
    # The label map behind the SEG: the haematoma as segment 1, the other region as segment 2.
    labels, voxel_ml = change.followup_mask.array, followup.voxel_volume_mm3 / 1000.0
    assert (labels == 1).sum() * voxel_ml == pytest.approx(change.followup.volume_ml, rel=0.01)
    assert (labels == 2).sum() * voxel_ml == pytest.approx(change.followup_others_ml[0], rel=0.01)
    section = haematoma_section(change)
    assert section.baseline_others_ml == change.baseline_others_ml and section.others_ml == change.followup_others_ml
