"""`make bench`: the validation bench of the change pipelines on real anatomy with known truth.

Every real brain of the checkout (Colin27, the two glioma cases of tests/data, the AURORA case when the
shared data folder is there) is the baseline; the follow-up is the same anatomy after a known rigid
motion, intensity drift and noise with inserted lesions (devtools/longitudinal_phantoms.py):

* MS: per brain and seed, 7 new lesions of 12-500 mm³, 1 enlarging and 2 stable ones (the stable ones must
  not be reported), and per brain one pair with stable lesions only (no new activity). Lesion-wise
  sensitivity (all, and 12-50 mm³), false positives per case, volume and centroid errors.
* Haematoma: per brain, a CT in HU from the anatomy with clots growing or not across the 6 mL / 33 %
  thresholds (each case clear of them by more than the 5 % volume goal). Volume error, centroid error,
  expansion flag.

Each pair is timed from registration to result, per stage. The section between the markers below is
written into BENCHMARKS.md (replaced on each run; other scripts own the other sections)."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.roles import SeriesRole
from neuroflow.core.timing import StageClock
from neuroflow.devtools import longitudinal_phantoms as lp
from neuroflow.devtools.benchmarks_md import write_section
from neuroflow.longitudinal.haematoma import HAEMATOMA_STAGES, measure_haematoma_change
from neuroflow.longitudinal.ms_lesions import MIN_LESION_MM3, MS_STAGES, detect_new_ms_lesions

ROOT = Path(__file__).resolve().parents[1]
# (baseline mL, follow-up mL): stable, small growth, expansion by 33 %, by 6 mL, shrinkage.
HAEMATOMA_CASES: tuple[tuple[float, float], ...] = (
    (8.0, 9.0), (8.0, 12.0), (25.0, 27.0), (25.0, 35.0), (45.0, 48.0), (3.0, 6.0), (30.0, 24.0),
)
SMALL_MM3 = 50.0
PUBLISHED_PAIR_S = (5.5 * 60.0, 6.0 * 60.0)


@dataclass
class MsTotals:
    scores: list[lp.LesionScore] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    quiet_cases: int = 0  # pairs without new lesions ...
    quiet_flagged: int = 0  # ... that were said to have new activity
    kind_right: int = 0  # lesions found and called what they are: new, or enlarging
    enlarging_errors_pct: list[float] = field(default_factory=list)  # against the tissue gained

    def add(self, score: lp.LesionScore, seconds: float, timings: dict[str, float],
            kinds: dict[tuple[float, float, float], str]) -> None:
        self.scores.append(score)
        self.kind_right += sum(1 for h in score.hits if kinds[h.detection.centroid_mm] == h.truth.kind)
        self.enlarging_errors_pct += [h.volume_error_pct for h in score.hits if h.truth.kind == "enlarging"]
        self.seconds.append(seconds)
        for name, value in timings.items():
            self.stages.setdefault(name, []).append(value)

    def sensitivity(self, small_only: bool = False) -> tuple[int, int]:
        def keep(t: lp.LesionTruth) -> bool:
            return not small_only or t.volume_mm3 - t.baseline_volume_mm3 <= SMALL_MM3
        hits = sum(1 for s in self.scores for h in s.hits if keep(h.truth))
        total = hits + sum(1 for s in self.scores for t in s.missed if keep(t))
        return hits, total

    @property
    def fp_per_case(self) -> float:
        return sum(len(s.false_positives) for s in self.scores) / max(1, len(self.scores))


@dataclass
class HaematomaTotals:
    volume_errors_pct: list[float] = field(default_factory=list)
    centroid_errors_mm: list[float] = field(default_factory=list)
    shift_errors_mm: list[float] = field(default_factory=list)
    flags_right: int = 0
    cases: int = 0
    seconds: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)


def run_ms_case(pair: lp.MsPair, backend: OnnxRuntimeBackend, settings: NeuroflowSettings,
                ) -> tuple[lp.LesionScore, float, dict[str, float], dict[tuple[float, float, float], str]]:
    """Detect on one pair; the score, the seconds from registration to result, the stage timings and what
    each detection was called (new or enlarging), by centroid."""
    clock = StageClock(MS_STAGES)
    t0 = time.perf_counter()
    change = detect_new_ms_lesions({SeriesRole.FLAIR: pair.baseline}, {SeriesRole.FLAIR: pair.followup}, backend,
                                   settings.models, study_key=f"bench-{pair.brain}", clock=clock)
    seconds = time.perf_counter() - t0
    detections = [lp.Detection(lesion.centroid_mm, lesion.volume_mm3) for lesion in change.new_lesions]
    kinds = {lesion.centroid_mm: str(lesion.kind) for lesion in change.new_lesions}
    return lp.score_lesions(pair.truth, detections), seconds, dict(clock.timings), kinds


def run_haematoma_case(pair: lp.HaematomaPair, totals: HaematomaTotals) -> None:
    clock = StageClock(HAEMATOMA_STAGES)
    t0 = time.perf_counter()
    change = measure_haematoma_change(pair.baseline, pair.followup, study_key=f"bench-{pair.brain}", clock=clock)
    totals.seconds.append(time.perf_counter() - t0)
    for name, value in clock.timings.items():
        totals.stages.setdefault(name, []).append(value)
    totals.cases += 1
    totals.flags_right += int(change.expansion == pair.truth.expansion)
    for measure, ml, centroid in ((change.baseline, pair.truth.baseline_ml, pair.truth.baseline_centroid_mm),
                                  (change.followup, pair.truth.followup_ml, pair.truth.followup_centroid_mm)):
        if measure is None:
            totals.volume_errors_pct.append(100.0)
            continue
        totals.volume_errors_pct.append(100.0 * abs(measure.volume_ml - ml) / ml)
        totals.centroid_errors_mm.append(float(np.linalg.norm(np.subtract(measure.centroid_mm, centroid))))
    if change.centroid_shift_mm is not None:
        totals.shift_errors_mm.append(abs(change.centroid_shift_mm - pair.truth.centroid_shift_mm))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--seeds", type=int, default=3, help="MS cases per brain")
    parser.add_argument("--brains", type=int, default=0, help="use only the first N brains (0: all)")
    args = parser.parse_args()

    settings = NeuroflowSettings()
    backend = OnnxRuntimeBackend(settings.model_repository, settings.inference_threads)
    brains = lp.real_brains()
    if args.brains:
        brains = brains[:args.brains]
    ms = MsTotals()
    haem = HaematomaTotals()
    for brain in brains:
        for seed in range(1, args.seeds + 1):
            pair = lp.make_ms_pair(brain, seed=seed)
            score, seconds, timings, kinds = run_ms_case(pair, backend, settings)
            ms.add(score, seconds, timings, kinds)
            print(f"MS {brain.name} seed {seed}: {len(score.hits)}/{len(score.hits) + len(score.missed)} found, "
                  f"{len(score.false_positives)} FP, {seconds:.1f} s", flush=True)
        # A pair without new activity (stable lesions, motion, drift, noise only): any detection is false.
        quiet = lp.make_ms_pair(brain, new_volumes_mm3=(), enlarging=(), seed=100)
        score, seconds, timings, kinds = run_ms_case(quiet, backend, settings)
        ms.add(score, seconds, timings, kinds)
        ms.quiet_cases += 1
        ms.quiet_flagged += int(bool(score.false_positives))
        print(f"MS {brain.name} without new lesions: {len(score.false_positives)} FP", flush=True)
        ct = lp.ct_from_anatomy(brain, seed=1)
        for n, (before, after) in enumerate(HAEMATOMA_CASES):
            pair_h = lp.make_haematoma_pair(brain, baseline_ml=before, followup_ml=after, seed=n, ct=ct)
            run_haematoma_case(pair_h, haem)
            print(f"haematoma {brain.name} {before:g}->{after:g} mL: {haem.volume_errors_pct[-2]:.1f} % / "
                  f"{haem.volume_errors_pct[-1]:.1f} %", flush=True)
    write_section(args.out, render(ms, haem, [b.name for b in brains]))


def render(ms: MsTotals, haem: HaematomaTotals, brains: list[str]) -> str:
    hits, total = ms.sensitivity()
    small_hits, small_total = ms.sensitivity(small_only=True)
    all_hits = [h for s in ms.scores for h in s.hits]
    new_hits = [h for h in all_hits if h.truth.kind == "new"]
    volume_err = [abs(h.volume_error_pct) for h in new_hits]
    signed_err = [h.volume_error_pct for h in new_hits]
    centroid_err = [h.centroid_error_mm for h in all_hits]
    tp = len(all_hits)
    fp = sum(len(s.false_positives) for s in ms.scores)
    f1 = 2 * tp / max(1, 2 * tp + fp + (total - hits))

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}" if values else "n/a"

    def stage_line(stages: dict[str, list[float]]) -> str:
        return ", ".join(f"{name} {statistics.median(v):.1f} s" for name, v in stages.items())

    lines = [
        "## Longitudinal change: validation bench on real anatomy with known truth (`scripts/bench_longitudinal.py`)",
        "",
        f"Brains: {', '.join(brains)}. Follow-up = baseline after a random rigid motion (up to 4°, 5 mm), intensity "
        "drift (x1.1, +2 %, smooth bias field ±8 %) and Rician noise (3 % of white matter), with inserted lesions. "
        f"Machine: {platform.processor() or platform.machine()}, 2 cores shared with other work (timings are "
        "pessimistic).",
        "",
        f"**MS new lesions** ({len(ms.scores)} cases: {len(ms.scores) - ms.quiet_cases} with 7 new lesions of "
        f"12-500 mm³, 1 enlarging and 2 stable ones that must not be reported; {ms.quiet_cases} with stable lesions "
        "only):",
        "",
        "| measure | value | goal |",
        "| --- | --- | --- |",
        f"| lesion-wise sensitivity, >= {MIN_LESION_MM3:g} mm³ | {hits}/{total} = {hits / max(1, total):.3f} "
        "| >= 0.95 |",
        f"| sensitivity, 12-{SMALL_MM3:g} mm³ | {small_hits}/{small_total} = "
        f"{small_hits / max(1, small_total):.3f} | |",
        f"| false positives per case | {ms.fp_per_case:.2f} | <= 0.1 |",
        f"| \"new activity\" said of a pair without new lesions | {ms.quiet_flagged}/{ms.quiet_cases} | 0 |",
        f"| lesion-wise F1 | {f1:.3f} | (MSSEG-2 best, real data: ~0.55) |",
        f"| volume error of new lesions, median abs (median signed) | {med(volume_err)} % ({med(signed_err)} %) | |",
        f"| found lesions called right (new or enlarging) | {ms.kind_right}/{tp} | |",
        f"| volume error of enlarging lesions (tissue gained), median signed | {med(ms.enlarging_errors_pct)} % | |",
        f"| centroid error, median (max) | {med(centroid_err)} mm "
        f"({max(centroid_err) if centroid_err else 0:.2f} mm) | |",
        f"| time per pair, registration to result, median | {med(ms.seconds)} s | < 60 s (published: 5.5-6 min) |",
        f"| per stage, median | {stage_line(ms.stages)} | |",
        "",
        f"**Haematoma expansion** ({haem.cases} pairs, CT in HU made from each brain; clots of 3-48 mL):",
        "",
        "| measure | value | goal |",
        "| --- | --- | --- |",
        f"| volume error, median (max) | {med(haem.volume_errors_pct)} % "
        f"({max(haem.volume_errors_pct) if haem.volume_errors_pct else 0:.2f} %) | <= 5 % |",
        f"| expansion flag right | {haem.flags_right}/{haem.cases} | every case |",
        f"| centroid error, median | {med(haem.centroid_errors_mm)} mm | |",
        f"| centroid-shift error, median | {med(haem.shift_errors_mm)} mm | |",
        f"| time per pair, median | {med(haem.seconds)} s | < 60 s |",
        f"| per stage, median | {stage_line(haem.stages)} | |",
        "",
        "Reproduce: `.venv/bin/python scripts/bench_longitudinal.py --out BENCHMARKS.md` (part of `make bench`).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
