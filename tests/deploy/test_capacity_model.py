"""The capacity model (scripts/capacity_model.py): its inputs are the figures BENCHMARKS.md holds, its
simulation queues when a pool is too small, a study with a change job ends with its last result, and its plans
meet the target they were searched for."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capacity_model", ROOT / "scripts" / "capacity_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


cm = load_model()
TIMINGS = cm.StageTimings(trigger_latency_s=3.0, preprocess_s=26.0, segmentation_s=16.0, inference_s=7.0,
                          results_s=3.0, ms_pair_s=12.0, haematoma_pair_s=6.0)
# Idle pools, no service-time spread: ready (wait window + trigger latency) + preprocess + GPU + rest of
# segmentation + results.
READY_S = 120.0 + 3.0
GLIOMA_CHAIN_S = READY_S + 26.0 + 0.7 + 9.0 + 3.0


def scenario(**changes: object) -> Any:
    """Two sites, 50 studies per site in the peak hour; the glioma chain alone unless a test adds change jobs."""
    base = dict(sites=2, studies_per_site_day=200.0, peak_hour_share=0.25, working_hours=(7, 19), peak_hour=10,
                wait_window_s=120.0, target_s=400.0, gpu_speedup=10.0, change_share=0.0, haematoma_share=0.2)
    return cm.Scenario(**{**base, **changes})


def plan(preprocess: int = 1, segmentation: int = 1, results: int = 1, longitudinal: int = 1, gpus: int = 1) -> Any:
    return cm.Plan(preprocess=preprocess, segmentation=segmentation, results=results, longitudinal=longitudinal,
                   gpus=gpus)


def test_the_inputs_are_the_figures_benchmarks_md_holds() -> None:
    timings = cm.read_timings((ROOT / "BENCHMARKS.md").read_text())
    text = (ROOT / "BENCHMARKS.md").read_text()
    for figure in (timings.preprocess_s, timings.segmentation_s, timings.results_s, timings.inference_s,
                   timings.trigger_latency_s):
        assert figure > 0 and (f"{figure:.2f}" in text or f"{figure:.1f}" in text)


def test_the_change_pair_times_are_the_longitudinal_bench_medians_of_benchmarks_md() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text()
    timings = cm.read_timings(text)
    assert f"| time per pair, registration to result, median | {timings.ms_pair_s:.2f} s |" in text
    assert f"| time per pair, median | {timings.haematoma_pair_s:.2f} s |" in text
    assert timings.ms_pair_s > 0 and timings.haematoma_pair_s > 0


@pytest.mark.parametrize(("row", "figure"), [("| time per pair, registration to result, median |", "MS change"),
                                             ("| time per pair, median |", "haematoma change")])
def test_a_benchmarks_file_without_a_change_pair_time_is_refused_with_the_figure_named(row: str, figure: str) -> None:
    text = (ROOT / "BENCHMARKS.md").read_text()
    without = "\n".join(line for line in text.splitlines() if not line.startswith(row))
    assert without != text
    # Without the MS row, the haematoma row (also "| time per pair") must not stand in for it, and vice versa.
    with pytest.raises(cm.BenchmarksError, match=figure):
        cm.read_timings(without)


def test_the_gpu_time_is_the_measured_figure_when_the_gpu_bench_has_run_and_the_assumption_otherwise() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text()
    without = "\n".join(line for line in text.splitlines() if not line.startswith("GPU model inference per study"))
    assumed = cm.read_timings(without)
    assert assumed.gpu_inference_s is None
    assert cm.gpu_seconds(scenario(gpu_speedup=10.0), assumed) == pytest.approx(assumed.inference_s / 10.0)
    measured = cm.read_timings(without + "\n\nGPU model inference per study for the capacity model: 0.42 s (x).\n")
    assert measured.gpu_inference_s == pytest.approx(0.42)
    assert cm.gpu_seconds(scenario(gpu_speedup=10.0), measured) == pytest.approx(0.42)
    assert "MEASURED" in cm.report([scenario(sites=1)], measured, [1]) and "ASSUMPTION" in cm.report(
        [scenario(sites=1)], assumed, [1])


def test_a_benchmarks_file_without_worker_timings_is_refused_with_the_figure_named() -> None:
    with pytest.raises(cm.BenchmarksError, match="preprocess worker time"):
        cm.read_timings("| trigger latency (x) | 3.00 | 1, 2 |\n| segment | 7.03 | 29% |\n")


def test_with_idle_pools_a_study_takes_the_wait_window_plus_its_stages() -> None:
    quiet = scenario(sites=1, studies_per_site_day=3.0, peak_hour_share=1.0)
    outcome = cm.simulate(quiet, TIMINGS, plan(5, 5, 5, 5, 5))
    floor = GLIOMA_CHAIN_S
    assert outcome.studies >= 1
    assert 0.6 * floor < outcome.median_s < 1.6 * floor
    assert outcome.waits_s == {"preprocess": 0.0, "segmentation": 0.0, "results": 0.0, "longitudinal": 0.0,
                               "gpu": 0.0}


def test_an_undersized_pool_queues_and_one_more_worker_shortens_the_wait() -> None:
    busy = scenario()  # 50 studies in the peak hour per site, 26 s each: one preprocess worker is saturated
    one = cm.simulate(busy, TIMINGS, plan(preprocess=1, segmentation=2))
    two = cm.simulate(busy, TIMINGS, plan(preprocess=2, segmentation=2))
    assert one.waits_s["preprocess"] > 10 * max(two.waits_s["preprocess"], 1.0)
    assert two.p95_s < one.p95_s


def test_the_plan_found_meets_its_target_and_one_fewer_preprocess_worker_would_not() -> None:
    tight = scenario(target_s=200.0)
    outcome = cm.smallest_plan(tight, TIMINGS)
    assert outcome.p95_s <= 200.0
    found = outcome.plan
    if found.preprocess > 1:
        fewer = cm.simulate(tight, TIMINGS, dataclasses.replace(found, preprocess=found.preprocess - 1))
        assert fewer.p95_s > 200.0


def test_the_section_replaces_only_its_own_part_of_benchmarks(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Embedded\n\nkeep me\n")
    cm.write_section(path, f"{cm.SECTION}\n\nfirst\n")
    cm.write_section(path, f"{cm.SECTION}\n\nsecond\n")
    text = path.read_text()
    assert text.count(cm.SECTION) == 1 and "second" in text and "first" not in text and "keep me" in text


def test_the_section_rewritten_before_another_keeps_the_file_around_it(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    before = f"# Benchmarks\n\n{cm.SECTION}\n\nold\n\n## Later\n\nkeep me\n"
    path.write_text(before)
    cm.write_section(path, f"{cm.SECTION}\n\nnew\n")
    assert path.read_text() == before.replace("old", "new")


def test_the_gpu_load_of_the_peak_hour_is_its_studies_times_the_inference_time() -> None:
    busy = scenario()  # 2 sites x 200 studies x 25 %: about 100 studies in the peak hour, 0.7 s of GPU each
    outcome = cm.simulate(busy, TIMINGS, plan(4, 4, 2, 1, gpus=1))
    expected = outcome.studies * TIMINGS.inference_s / busy.gpu_speedup / 3600.0
    assert 0.7 * expected < outcome.gpu_busy_peak < 1.3 * expected
    assert cm.simulate(busy, TIMINGS, plan(4, 4, 2, 1, gpus=2)).gpu_busy_peak == pytest.approx(
        outcome.gpu_busy_peak / 2, rel=0.2)


def test_without_change_jobs_the_longitudinal_pool_and_pair_times_change_nothing() -> None:
    glioma_only = scenario(change_share=0.0)
    outcome = cm.simulate(glioma_only, TIMINGS, plan(preprocess=2, segmentation=2))
    # No longitudinal worker at all, other pair times and another haematoma share: the same day, to the
    # last figure (no random draw is spent on change jobs that cannot happen).
    slow_pairs = dataclasses.replace(TIMINGS, ms_pair_s=5000.0, haematoma_pair_s=5000.0)
    other = cm.simulate(scenario(change_share=0.0, haematoma_share=0.9), slow_pairs,
                        plan(preprocess=2, segmentation=2, longitudinal=0))
    assert outcome.waits_s["longitudinal"] == 0.0
    # The figures of the model before change jobs were added (same seed, same random stream).
    assert (outcome.studies, outcome.p95_s, outcome.median_s) == (97, pytest.approx(179.668254249),
                                                                  pytest.approx(164.959949886))
    assert outcome.waits_s["preprocess"] == pytest.approx(109.105069153)
    assert (other.p95_s, other.median_s, other.studies, other.gpu_busy_peak, other.waits_s) == (
        outcome.p95_s, outcome.median_s, outcome.studies, outcome.gpu_busy_peak, outcome.waits_s)
    # And change jobs do move it: the comparison above is not vacuous.
    with_change = cm.simulate(scenario(change_share=1.0), slow_pairs, plan(preprocess=2, segmentation=2))
    assert with_change.p95_s > outcome.p95_s + 1000.0


def test_an_undersized_longitudinal_pool_dominates_the_waits_and_one_more_worker_shortens_the_p95() -> None:
    # 50 studies per site in the peak hour, all with a change job of about 84 s on average: 4200 s of work an
    # hour, more than one longitudinal worker can do; the glioma pools are ample.
    timings = dataclasses.replace(TIMINGS, ms_pair_s=90.0, haematoma_pair_s=60.0)
    every = scenario(change_share=1.0, haematoma_share=0.2)
    one = cm.simulate(every, timings, plan(preprocess=3, segmentation=2, results=2, longitudinal=1, gpus=2))
    two = cm.simulate(every, timings, plan(preprocess=3, segmentation=2, results=2, longitudinal=2, gpus=2))
    others = sum(wait for kind, wait in one.waits_s.items() if kind != "longitudinal")
    assert one.waits_s["longitudinal"] > 10 * max(others, 1.0)
    assert two.waits_s["longitudinal"] < one.waits_s["longitudinal"] / 10
    assert two.p95_s < one.p95_s


@pytest.mark.parametrize(("pair_s", "ends_at"), [(400.0, READY_S + 400.0), (12.0, GLIOMA_CHAIN_S)])
def test_in_an_idle_system_a_study_with_a_change_job_ends_with_its_last_result(
        monkeypatch: pytest.MonkeyPatch, pair_s: float, ends_at: float) -> None:
    monkeypatch.setattr(cm, "SERVICE_SIGMA", 0.0)  # every service takes its median
    quiet = scenario(sites=1, studies_per_site_day=3.0, peak_hour_share=1.0, change_share=1.0, haematoma_share=0.0)
    timings = dataclasses.replace(TIMINGS, ms_pair_s=pair_s)
    outcome = cm.simulate(quiet, timings, plan(5, 5, 5, 5, 5))
    assert outcome.studies >= 1
    # Once per study, at its last result: as many as without change jobs.
    assert outcome.studies == cm.simulate(scenario(sites=1, studies_per_site_day=3.0, peak_hour_share=1.0),
                                          timings, plan(5, 5, 5, 5, 5)).studies
    # The change workflow starts at the same StudyReady as preprocess; the study ends at whichever is later.
    assert outcome.median_s == pytest.approx(ends_at) and outcome.p95_s == pytest.approx(ends_at)
    assert outcome.waits_s["longitudinal"] == 0.0


def test_the_plan_found_adds_longitudinal_workers_when_the_change_jobs_need_them() -> None:
    timings = dataclasses.replace(TIMINGS, ms_pair_s=90.0, haematoma_pair_s=60.0)
    every = scenario(change_share=1.0, target_s=320.0)
    outcome = cm.smallest_plan(every, timings)
    assert outcome.p95_s <= 320.0
    found = outcome.plan
    # The peak load alone asks for 2 (50 pairs of about 84 s an hour): the search had to add one.
    assert found.longitudinal >= 3
    fewer = cm.simulate(every, timings, dataclasses.replace(found, longitudinal=found.longitudinal - 1))
    assert fewer.p95_s > 320.0
