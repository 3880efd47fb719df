"""The lesion-wise checks of the MS subtraction (issue 18), on constructed candidates: a bright spot ringed by
CSF at baseline is CSF that reads bright at follow-up (cisternal inflow on a real pair), not a new lesion; a
candidate whose own contrast is below the faintest lesion's is a partial-volume change, not a lesion."""

from __future__ import annotations

import numpy as np

from neuroflow.core.volume import Geometry
from neuroflow.longitudinal.ms_lesions import CSF_LEVEL, MIN_LESION_DIFFERENCE, SubtractionMaps, _candidates

SHAPE = (30, 30, 30)
GRID = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), SHAPE)
SPOT = (slice(13, 17), slice(13, 17), slice(13, 17))  # 64 mm³


def _judge(base_level: float, baseline_spot: float, follow_spot: float) -> str:
    """The verdict on one 4x4x4 spot: baseline ``baseline_spot`` at the spot and ``base_level`` in the 10 mm
    block around it (white matter elsewhere), ``follow_spot`` at follow-up."""
    base = np.full(SHAPE, -0.5, np.float32)
    base[10:20, 10:20, 10:20] = base_level
    base[SPOT] = baseline_spot
    follow = base.copy()
    follow[SPOT] = follow_spot
    seeds = np.zeros(SHAPE, bool)
    seeds[SPOT] = True
    found = _candidates(SubtractionMaps(follow, base, follow - base, seeds, seeds.copy(), 0.0), GRID)
    assert len(found) == 1
    return found[0].reason


def test_a_spot_ringed_by_csf_at_baseline_is_not_a_new_lesion() -> None:
    assert _judge(CSF_LEVEL - 2.0, CSF_LEVEL - 2.0, 3.0) == "surrounded by CSF at baseline"
    assert _judge(-0.5, -0.5, 3.0) == ""  # the same spot in white matter: a new lesion


def test_a_change_fainter_than_the_faintest_lesion_is_not_a_lesion() -> None:
    assert _judge(-0.5, 0.4, 0.4 + 0.8 * MIN_LESION_DIFFERENCE) == "too faint a change"
    assert _judge(-0.5, 0.4, 0.4 + 1.5 * MIN_LESION_DIFFERENCE) == ""
