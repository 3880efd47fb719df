"""The CI variant of the chaos suite (`make chaos` is the full one): on a fresh local stack, one real
study per fault while a preprocessing worker is SIGKILLed, the orchestrator is SIGKILLed and restarted,
and the destination PACS is down for 30 s; each study must end with exactly one SEG in the PACS.
The run happens once (it takes minutes); each fault is its own test case on its row of the report."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from neuroflow.devtools.chaos import ChaosReport, PhaseOutcome, markdown_section, run_chaos, short_plan

PLAN = short_plan()
# The run takes 5 min on an idle 2-core machine, more on a busy one: past the suite's default 900 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def report() -> Iterator[ChaosReport]:
    yield run_chaos(PLAN, progress=lambda line: None)


def _phase(report: ChaosReport, label: str) -> PhaseOutcome:
    (phase,) = [p for p in report.phases if p.label == label]
    return phase


def _check(report: ChaosReport, label: str) -> None:
    phase = _phase(report, label)
    table = markdown_section(PLAN, report, command="tests/e2e/test_chaos.py")
    assert phase.injected, f"the fault was never injected: {phase.note}\n{table}"
    assert (phase.lost, phase.duplicates) == (0, 0), table


def test_the_run_covers_every_planned_fault_with_its_studies(report: ChaosReport) -> None:
    assert [p.label for p in report.phases] == [f.label for f in PLAN.faults]
    assert all(len(p.studies) == PLAN.studies_per_phase for p in report.phases)
    assert len({s.uid for p in report.phases for s in p.studies}) == PLAN.studies


def test_a_killed_preprocessing_worker_loses_nothing(report: ChaosReport) -> None:
    _check(report, PLAN.faults[0].label)


def test_a_killed_and_restarted_orchestrator_loses_nothing(report: ChaosReport) -> None:
    _check(report, PLAN.faults[1].label)


def test_a_pacs_down_for_30_s_still_gets_the_result_once(report: ChaosReport) -> None:
    _check(report, PLAN.faults[2].label)
