"""The capacity model (scripts/capacity_model.py): its inputs are the figures BENCHMARKS.md holds, its
simulation queues when a pool is too small, and its plans meet the target they were searched for."""

from __future__ import annotations

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
                          results_s=3.0)


def scenario(**changes: object) -> Any:
    base = dict(sites=2, studies_per_site_day=200.0, peak_hour_share=0.25, working_hours=(7, 19), peak_hour=10,
                wait_window_s=120.0, target_s=400.0, gpu_speedup=10.0)
    return cm.Scenario(**{**base, **changes})


def test_the_inputs_are_the_figures_benchmarks_md_holds() -> None:
    timings = cm.read_timings((ROOT / "BENCHMARKS.md").read_text())
    text = (ROOT / "BENCHMARKS.md").read_text()
    for figure in (timings.preprocess_s, timings.segmentation_s, timings.results_s, timings.inference_s,
                   timings.trigger_latency_s):
        assert figure > 0 and (f"{figure:.2f}" in text or f"{figure:.1f}" in text)


def test_a_benchmarks_file_without_worker_timings_is_refused_with_the_figure_named() -> None:
    with pytest.raises(cm.BenchmarksError, match="preprocess worker time"):
        cm.read_timings("| trigger latency (x) | 3.00 | 1, 2 |\n| segment | 7.03 | 29% |\n")


def test_with_idle_pools_a_study_takes_the_wait_window_plus_its_stages() -> None:
    quiet = scenario(sites=1, studies_per_site_day=3.0, peak_hour_share=1.0)
    outcome = cm.simulate(quiet, TIMINGS, cm.Plan(5, 5, 5, 5))
    floor = 120.0 + 3.0 + 26.0 + 9.0 + 0.7 + 3.0
    assert outcome.studies >= 1
    assert 0.6 * floor < outcome.median_s < 1.6 * floor
    assert outcome.waits_s == {"preprocess": 0.0, "segmentation": 0.0, "results": 0.0, "gpu": 0.0}


def test_an_undersized_pool_queues_and_one_more_worker_shortens_the_wait() -> None:
    busy = scenario()  # 50 studies in the peak hour per site, 26 s each: one preprocess worker is saturated
    one = cm.simulate(busy, TIMINGS, cm.Plan(1, 2, 1, 1))
    two = cm.simulate(busy, TIMINGS, cm.Plan(2, 2, 1, 1))
    assert one.waits_s["preprocess"] > 10 * max(two.waits_s["preprocess"], 1.0)
    assert two.p95_s < one.p95_s


def test_the_plan_found_meets_its_target_and_one_fewer_preprocess_worker_would_not() -> None:
    tight = scenario(target_s=200.0)
    outcome = cm.smallest_plan(tight, TIMINGS)
    assert outcome.p95_s <= 200.0
    plan = outcome.plan
    if plan.preprocess > 1:
        fewer = cm.simulate(tight, TIMINGS, cm.Plan(plan.preprocess - 1, plan.segmentation, plan.results, plan.gpus))
        assert fewer.p95_s > 200.0


def test_the_section_replaces_only_its_own_part_of_benchmarks(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Embedded\n\nkeep me\n")
    cm.write_section(path, f"{cm.SECTION}\n\nfirst\n")
    cm.write_section(path, f"{cm.SECTION}\n\nsecond\n")
    text = path.read_text()
    assert text.count(cm.SECTION) == 1 and "second" in text and "first" not in text and "keep me" in text


def test_the_gpu_load_of_the_peak_hour_is_its_studies_times_the_inference_time() -> None:
    busy = scenario()  # 2 sites x 200 studies x 25 %: about 100 studies in the peak hour, 0.7 s of GPU each
    outcome = cm.simulate(busy, TIMINGS, cm.Plan(4, 4, 2, 1))
    expected = outcome.studies * TIMINGS.inference_s / busy.gpu_speedup / 3600.0
    assert 0.7 * expected < outcome.gpu_busy_peak < 1.3 * expected
    assert cm.simulate(busy, TIMINGS, cm.Plan(4, 4, 2, 2)).gpu_busy_peak == pytest.approx(
        outcome.gpu_busy_peak / 2, rel=0.2)
