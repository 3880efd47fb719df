"""The chaos suite's own bookkeeping (no servers): how a phase's studies are counted as lost or
duplicated, when a run passes, added latency against the baseline, and the BENCHMARKS.md section."""

from __future__ import annotations

from pathlib import Path

from neuroflow.devtools.chaos import (
    BASELINE,
    CANARY,
    SECTION_HEADING,
    ChaosReport,
    ChaosStudy,
    PhaseOutcome,
    full_plan,
    markdown_section,
    short_plan,
    write_benchmarks,
)


def _study(n: int, results: int, latency_s: float | None = 30.0) -> ChaosStudy:
    sent = 100.0
    return ChaosStudy(f"1.2.826.0.1.{n}", Path(f"/nowhere/{n}"), "phase", sent_at=sent,
                      result_at=None if latency_s is None else sent + latency_s, results=results)


def _report(*phases: PhaseOutcome) -> ChaosReport:
    return ChaosReport(list(phases), wall_s=600.0, lost_details={})


def test_a_study_without_a_result_is_lost_and_one_with_two_is_a_duplicate() -> None:
    phase = PhaseOutcome("SIGKILL preprocess", "t", [_study(1, 1), _study(2, 0, None), _study(3, 2)], injected=True)
    assert (phase.results, phase.lost, phase.duplicates) == (2, 1, 1)
    assert not _report(phase).ok


def test_a_run_passes_only_when_every_fault_went_in_and_every_study_has_one_result() -> None:
    baseline = PhaseOutcome(BASELINE, "-", [_study(1, 1)])
    clean = PhaseOutcome("restart: kafka", "t", [_study(2, 1)], injected=True)
    assert _report(baseline, clean).ok
    missed = PhaseOutcome("SIGKILL results", "t", [_study(3, 1)], injected=False, note="trigger not met")
    report = _report(baseline, clean, missed)
    assert not report.ok
    assert "NOT INJECTED (trigger not met)" in "\n".join(report.table())


def test_the_last_fault_free_phase_fails_the_run_when_its_study_is_lost() -> None:
    wedged = PhaseOutcome(CANARY, "-", [_study(1, 0, None)])
    report = _report(PhaseOutcome("restart: postgresql", "t", [_study(2, 1)], injected=True), wedged)
    assert not report.ok
    assert f"| {CANARY} | - | 1 | 0 | 1 | 0 |" in "\n".join(report.table())


def test_added_latency_is_against_the_baseline_median_and_worst() -> None:
    baseline = PhaseOutcome(BASELINE, "-", [_study(1, 1, 30.0), _study(2, 1, 50.0)])
    slow = PhaseOutcome("stop for 60 s: triton", "t", [_study(3, 1, 100.0), _study(4, 1, 140.0)], injected=True)
    report = _report(baseline, slow)
    assert report.added_latency(slow) == "+80 / +90"  # medians 40 -> 120, worst 50 -> 140
    assert report.added_latency(baseline) == "+0 / +0"
    assert _report(slow).added_latency(slow) == "n/a"  # no baseline (the CI variant)


def test_the_section_replaces_its_own_part_of_benchmarks_md(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    report = _report(PhaseOutcome(BASELINE, "-", [_study(1, 1)]),
                     PhaseOutcome("restart: postgresql", "t", [_study(2, 0, None)], injected=True))
    plan = full_plan()
    write_benchmarks(path, plan, report, command="make chaos")
    write_benchmarks(path, plan, report, command="make chaos")
    text = path.read_text()
    assert text.count(SECTION_HEADING) == 1 and "## Other\n\nkept" in text
    assert "| restart: postgresql | t | 1 | 0 | 1 | 0 | n/a | n/a |" in text and "**FAIL**" in text
    assert "| **all** | | 2 | 1 | 1 | 0 | | | |" in text


def test_the_plans_cover_the_issue() -> None:
    full, short = full_plan(), short_plan()
    labels = " ".join(f.label for f in full.faults)
    for needed in ("SIGKILL ingest", "SIGKILL preprocess", "SIGKILL segmentation", "SIGKILL results",
                   "SIGKILL longitudinal", "SIGKILL orchestrator", "restart: kafka", "restart: postgresql",
                   "restart: orthanc-site", "stop for 60 s: triton", "stop for 5 min: orthanc-pacs"):
        assert needed in labels
    assert full.studies >= 12 and full.baseline and full.canary
    assert short.studies == 3 and not short.baseline
    assert markdown_section(short, _report(), command="x").startswith(SECTION_HEADING)
