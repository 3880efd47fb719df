"""The longitudinal phantoms put the truth where they say: inserted lesions and haematomas are found at
their stated patient coordinates with their stated sizes, and the follow-up really moved."""

from __future__ import annotations

import numpy as np
import pytest

from neuroflow.core.volume import Volume
from neuroflow.devtools import longitudinal_phantoms as lp
from neuroflow.longitudinal.haematoma import is_expansion


@pytest.fixture(scope="module")
def brain() -> lp.Brain:
    return lp.colin27()


def _index_of(volume: Volume, point: tuple[float, float, float]) -> tuple[int, int, int]:
    i, j, k, _ = np.linalg.inv(volume.geometry.index_to_patient()) @ np.array([*point, 1.0])
    return round(k), round(j), round(i)


def test_ms_pair_puts_new_lesions_where_the_truth_says_on_the_moved_follow_up(brain: lp.Brain) -> None:
    pair = lp.make_ms_pair(brain, new_volumes_mm3=(12.0, 100.0, 400.0), seed=3)
    assert pair.baseline.geometry.is_close(pair.followup.geometry)
    assert max(abs(a) for a in pair.motion.rotation_deg) > 0.1
    white = float(np.median(pair.followup.array[lp.tissues_from_t1(brain.t1, brain.brain_mask.array > 0).white]))
    new = [t for t in pair.truth if t.kind == "new"]
    # Nominal volumes, less what would have lain in CSF (a lesion pushes into no ventricle or sulcus).
    assert [round(v) for v in sorted(t.volume_mm3 for t in new)] == [12, 100, 400]
    for lesion in pair.detectable:
        k, j, i = _index_of(pair.followup, lesion.centroid_mm)
        # The lesion's centre is clearly brighter than white matter on the follow-up (after drift and noise;
        # the 12 mm³ ones are 3 voxels across, so their peak is looked for around the centre).
        assert pair.followup.array[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2].max() > 1.3 * white
    for lesion in new:
        # ... and it was not there at baseline (the centre is ordinary tissue there, before the motion).
        assert lesion.baseline_volume_mm3 == 0.0
    stable = [t for t in pair.truth if t.kind == "stable"]
    assert stable and all(t.volume_mm3 == t.baseline_volume_mm3 for t in stable)


def test_ms_lesions_are_painted_into_parenchyma_only(brain: lp.Brain) -> None:
    """Large periventricular lesions reached into the ventricles; real ones leave the CSF dark beside them."""
    mask = brain.brain_mask.array > 0
    csf = lp.tissues_from_t1(brain.t1, mask).csf
    pair = lp.make_ms_pair(brain, new_volumes_mm3=(500.0,), enlarging=((150.0, 400.0),), stable_volumes_mm3=(300.0,),
                           seed=2)
    # The baseline is painted before the motion, on the brain's own grid: its CSF is the brain's, voxel for voxel,
    # while its lesions (stable, and the enlarging one's first state) are there.
    assert float(np.abs(pair.baseline.array - brain.flair.array)[~csf].max()) > 0.0
    assert np.array_equal(pair.baseline.array[csf], brain.flair.array.astype(np.float32)[csf])
    truth = {t.kind: t for t in pair.truth}
    assert truth["new"].volume_mm3 <= 500.0 and truth["stable"].volume_mm3 == truth["stable"].baseline_volume_mm3


def test_haematoma_pair_has_clots_of_the_stated_volume_in_hounsfield_units(brain: lp.Brain) -> None:
    ct = lp.ct_from_anatomy(brain, seed=1)
    brain_hu = ct.array[brain.brain_mask.array > 0]
    assert 20.0 < float(np.median(brain_hu)) < 40.0
    assert float(ct.array.max()) > 700.0 and float(ct.array.min()) < -900.0  # bone and air
    pair = lp.make_haematoma_pair(brain, baseline_ml=15.0, followup_ml=24.0, seed=4, ct=ct)
    assert pair.truth.baseline_ml == pytest.approx(15.0, abs=0.01)
    assert pair.truth.followup_ml == pytest.approx(24.0, abs=0.01)
    assert pair.truth.expansion  # +9 mL
    voxel_ml = pair.baseline.voxel_volume_mm3 / 1000.0
    assert pair.baseline_mask.array.sum() * voxel_ml == pytest.approx(15.0, abs=0.01)
    clot = pair.baseline.array[pair.baseline_mask.array > 0]
    assert 50.0 < float(np.median(clot)) < 85.0
    k, j, i = _index_of(pair.followup, pair.truth.followup_centroid_mm)
    assert pair.followup_mask.array[k, j, i] == 1 and pair.followup.array[k, j, i] > 50.0


@pytest.mark.parametrize(("baseline", "followup", "expansion"), [
    (10.0, 12.0, False), (10.0, 13.4, True), (30.0, 36.0, True), (30.0, 35.0, False), (20.0, 15.0, False),
])
def test_expansion_is_six_millilitres_or_a_third(baseline: float, followup: float, expansion: bool) -> None:
    assert is_expansion(baseline, followup) is expansion
