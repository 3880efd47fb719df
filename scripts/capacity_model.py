"""Capacity model: how many stage workers per site and GPUs in the shared tier keep the end-to-end time under
the target, for N sites with a given daily volume and peak hour. A small discrete-event simulation of one day,
fed by the stage timings measured in BENCHMARKS.md (`make bench`), so the plan moves when the code gets faster.

    .venv/bin/python scripts/capacity_model.py                      # the table for 1, 5, 20 and 50 sites
    .venv/bin/python scripts/capacity_model.py --out BENCHMARKS.md  # ... and write it there (own section)

What one study does (distributed runtime, one site): the last instance arrives; the wait window passes; ingest
triggers (measured trigger latency); a preprocess worker prepares the volumes; a segmentation worker runs the
model on a GPU of the shared tier (it holds its worker slot while it waits for the GPU) and post-processes;
a results worker writes and stores the objects. A study whose patient has a prior (a share of them) also
qualifies for a change pipeline (ms_change, haematoma_change, tumour_growth): its own workflow, triggered by the
same StudyReady and run in parallel, with a single longitudinal stage in the site's longitudinal worker, which
does the whole pair (registration, bias correction, skull strip, comparison) on CPU and stores its result.
Every pool is first come, first served. Service times vary around the measured median (log-normal). End to end
is last instance to the study's last result stored (glioma results or change result, whichever is later): at
least as long as what neuroflow_end_to_end_seconds (the NeuroflowEndToEndLatencyHigh alert) measures per
pipeline. The target is the p95 of the studies arriving in the peak hour.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import re
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from neuroflow.core.config import IngestSettings, MonitorSettings
from neuroflow.devtools.benchmarks_md import write_section

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "## Capacity model: workers and GPUs for N sites"
SITE_COUNTS = (1, 5, 20, 50)
# Service times vary around their median: log-normal with this sigma (a 4-sequence brain MR study; a study
# with more or larger series takes longer).
SERVICE_SIGMA = 0.3
# The second scenario of the table: this many times the daily volume, a sharper peak, a tighter target.
BUSY_FACTOR = 5.0
BUSY_PEAK_SHARE = 0.25
BUSY_TARGET_S = 240.0
# Studies whose patient has a prior, so that a change pipeline runs too; of those change jobs, the CT
# haematoma pairs (the rest are MR pairs: MS, or tumour growth, counted at the MS pair time).
CHANGE_SHARE = 0.3
HAEMATOMA_SHARE = 0.2


class BenchmarksError(ValueError):
    """BENCHMARKS.md lacks a figure the model needs; the message names it and how to produce it."""


@dataclass(frozen=True)
class StageTimings:
    """Median seconds per study, as measured by `make bench`."""

    trigger_latency_s: float  # last instance stored -> StudyReady, beyond the wait window
    preprocess_s: float  # inside the preprocess worker
    segmentation_s: float  # inside the segmentation worker, model inference included
    inference_s: float  # the model's share of segmentation (embedded "segment" step, CPU)
    results_s: float  # inside the results worker
    ms_pair_s: float  # one MS change pair in the longitudinal worker, registration to result (CPU)
    haematoma_pair_s: float  # one CT haematoma pair in the longitudinal worker (CPU)
    gpu_inference_s: float | None = None  # the model's share on a GPU, when scripts/bench_gpu.py has run


GPU_FIGURE = r"GPU model inference per study for the capacity model: ([\d.]+) s"


def _figure(text: str, pattern: str, what: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise BenchmarksError(f"BENCHMARKS.md has no {what} (pattern {pattern!r}): run `make bench` first")
    return float(match.group(1))


def read_timings(text: str) -> StageTimings:
    """The stage timings of the distributed and embedded sections of BENCHMARKS.md."""
    workers = r"Median stage time inside the workers[^:]*:\s*"
    return StageTimings(
        trigger_latency_s=_figure(text, r"\| trigger latency [^|]*\|\s*([\d.]+)\s*\|", "trigger latency median"),
        preprocess_s=_figure(text, workers + r".*?preprocess (\d+(?:\.\d+)?)", "preprocess worker time"),
        segmentation_s=_figure(text, workers + r".*?segmentation (\d+(?:\.\d+)?)", "segmentation worker time"),
        inference_s=_figure(text, r"\| segment \|\s*([\d.]+)\s*\|", "embedded 'segment' step time"),
        results_s=_figure(text, workers + r".*?results (\d+(?:\.\d+)?)", "results worker time"),
        # Both longitudinal tables have a "| time per pair" row: the MS one says "registration to result".
        ms_pair_s=_figure(text, r"\| time per pair, registration to result, median \|\s*([\d.]+) s\s*\|",
                          "MS change time per pair (longitudinal bench)"),
        haematoma_pair_s=_figure(text, r"\| time per pair, median \|\s*([\d.]+) s\s*\|",
                                 "haematoma change time per pair (longitudinal bench)"),
        gpu_inference_s=_figure(text, GPU_FIGURE, "GPU inference time") if re.search(GPU_FIGURE, text) else None,
    )


@dataclass(frozen=True)
class Scenario:
    sites: int
    studies_per_site_day: float
    peak_hour_share: float  # fraction of a day's studies that arrive in its busiest hour
    working_hours: tuple[int, int]  # the rest of the day's studies arrive evenly in these hours
    peak_hour: int
    wait_window_s: float
    target_s: float
    gpu_speedup: float  # without a GPU measurement: GPU inference time = the measured CPU inference time / this
    change_share: float = CHANGE_SHARE  # fraction of studies that also run a change pipeline (a prior exists)
    haematoma_share: float = HAEMATOMA_SHARE  # fraction of those change jobs that are CT haematoma pairs


def gpu_seconds(scenario: Scenario, timings: StageTimings) -> float:
    """One study's model inference on a GPU: measured when BENCHMARKS.md has the GPU section, else assumed."""
    if timings.gpu_inference_s is not None:
        return timings.gpu_inference_s
    return timings.inference_s / scenario.gpu_speedup


@dataclass
class Pool:
    """Identical servers taking jobs first come, first served."""

    servers: int
    free: int = 0
    waiting: deque[tuple[float, Callable[[float], None]]] = field(default_factory=deque)
    busy_s: float = 0.0  # the GPU pool's: inference seconds inside the peak hour
    waited_s: float = 0.0

    def __post_init__(self) -> None:
        self.free = self.servers

    def request(self, now: float, start: Callable[[float], None]) -> None:
        if self.free > 0:
            self.free -= 1
            start(now)
        else:
            self.waiting.append((now, start))

    def release(self, now: float) -> None:
        if self.waiting:
            since, start = self.waiting.popleft()
            self.waited_s += now - since
            start(now)
        else:
            self.free += 1


@dataclass(frozen=True)
class Plan:
    preprocess: int  # workers per site
    segmentation: int
    results: int
    longitudinal: int  # per site, the change pipelines' single stage
    gpus: int  # in the shared tier


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    p95_s: float
    median_s: float
    studies: int
    gpu_busy_peak: float  # share of the GPUs' time in the peak hour spent on inference
    waits_s: dict[str, float]  # total queueing per pool kind, peak-hour studies


def arrival_times(scenario: Scenario, rng: random.Random) -> list[float]:
    """One site's day: Poisson arrivals, the peak hour at its share, the rest evenly over working hours."""
    start, end = scenario.working_hours
    other_hours = [h for h in range(start, end) if h != scenario.peak_hour]
    per_hour = {h: scenario.studies_per_site_day * (1 - scenario.peak_hour_share) / len(other_hours)
                for h in other_hours}
    per_hour[scenario.peak_hour] = scenario.studies_per_site_day * scenario.peak_hour_share
    times = []
    for hour, count in per_hour.items():
        if count <= 0:
            continue
        t = hour * 3600.0
        while True:
            t += rng.expovariate(count / 3600.0)
            if t >= (hour + 1) * 3600.0:
                break
            times.append(t)
    return times


def simulate(scenario: Scenario, timings: StageTimings, plan: Plan, seed: int = 7) -> Outcome:
    rng = random.Random(seed)
    events: list[tuple[float, int, Callable[[float], None]]] = []
    counter = 0

    def at(time: float, action: Callable[[float], None]) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(events, (time, counter, action))

    def service(median: float) -> float:
        return median * math.exp(rng.gauss(0.0, SERVICE_SIGMA))

    gpu_s = gpu_seconds(scenario, timings)
    seg_cpu_s = max(timings.segmentation_s - timings.inference_s, 0.0)
    gpus = Pool(plan.gpus)
    sites = [{"preprocess": Pool(plan.preprocess), "segmentation": Pool(plan.segmentation),
              "results": Pool(plan.results), "longitudinal": Pool(plan.longitudinal)}
             for _ in range(scenario.sites)]
    peak = (scenario.peak_hour * 3600.0, (scenario.peak_hour + 1) * 3600.0)
    end_to_end: list[float] = []

    def hand_on(pool: Pool, then: Callable[[float], None]) -> Callable[[float], None]:
        """At the end of a step: free its server, then go on (the next pool's request, or done)."""
        def step(now: float) -> None:
            pool.release(now)
            then(now)
        return step

    def study(site: dict[str, Pool], arrived: float) -> None:
        # Whether the patient has a prior (a change pipeline runs too) and which kind of pair. No draw at all
        # without change jobs, so that change_share 0 is the glioma-only model, random stream included.
        change_s: float | None = None  # the pair's median time, if the study has a change job
        if scenario.change_share > 0 and rng.random() < scenario.change_share:
            haematoma = rng.random() < scenario.haematoma_share
            change_s = timings.haematoma_pair_s if haematoma else timings.ms_pair_s
        pending = 1 if change_s is None else 2  # workflows still to store their results

        def done(now: float) -> None:
            """One workflow stored its results; the study is done when the last one has."""
            nonlocal pending
            pending -= 1
            if pending == 0 and peak[0] <= arrived < peak[1]:
                end_to_end.append(now - arrived)

        def results(now: float) -> None:
            at(now + service(timings.results_s), hand_on(site["results"], done))

        def gpu(now: float) -> None:
            def after(t: float) -> None:
                gpus.release(t)
                at(t + service(seg_cpu_s), hand_on(site["segmentation"],
                                                   lambda t2: site["results"].request(t2, results)))
            duration = service(gpu_s)
            # Only the part of this inference inside the peak hour counts towards the peak's GPU load.
            gpus.busy_s += max(0.0, min(now + duration, peak[1]) - max(now, peak[0]))
            at(now + duration, after)

        def segmentation(now: float) -> None:
            gpus.request(now, gpu)

        def preprocess(now: float) -> None:
            at(now + service(timings.preprocess_s), hand_on(site["preprocess"],
                                                            lambda t: site["segmentation"].request(t, segmentation)))

        def longitudinal(now: float) -> None:
            assert change_s is not None
            at(now + service(change_s), hand_on(site["longitudinal"], done))

        ready = arrived + scenario.wait_window_s + timings.trigger_latency_s
        at(ready, lambda t: site["preprocess"].request(t, preprocess))
        if change_s is not None:
            # The same StudyReady triggers the change workflow, in parallel with the glioma one.
            at(ready, lambda t: site["longitudinal"].request(t, longitudinal))

    for site in sites:
        for arrived in arrival_times(scenario, rng):
            study(site, arrived)
    while events:
        time, _, action = heapq.heappop(events)
        action(time)
    if not end_to_end:
        raise ValueError(f"no study arrived in the peak hour of {scenario}: raise the daily volume")
    end_to_end.sort()
    waits = {kind: sum(s[kind].waited_s for s in sites)
             for kind in ("preprocess", "segmentation", "results", "longitudinal")}
    waits["gpu"] = gpus.waited_s
    return Outcome(plan, end_to_end[min(len(end_to_end) - 1, math.ceil(0.95 * len(end_to_end)) - 1)],
                   end_to_end[len(end_to_end) // 2], len(end_to_end), gpus.busy_s / (plan.gpus * 3600.0), waits)


def smallest_plan(scenario: Scenario, timings: StageTimings, *, max_steps: int = 400) -> Outcome:
    """Fewest workers and GPUs meeting the target: start at what the peak load needs on average, then add
    to the pool where studies queued longest until the peak hour's p95 is under the target."""
    per_site_peak = scenario.studies_per_site_day * scenario.peak_hour_share / 3600.0  # studies per second
    gpu_s = gpu_seconds(scenario, timings)
    seg_hold_s = timings.segmentation_s - timings.inference_s + gpu_s
    pair_s = ((1 - scenario.haematoma_share) * timings.ms_pair_s
              + scenario.haematoma_share * timings.haematoma_pair_s)
    plan = Plan(preprocess=max(1, math.ceil(per_site_peak * timings.preprocess_s)),
                segmentation=max(1, math.ceil(per_site_peak * seg_hold_s)),
                results=max(1, math.ceil(per_site_peak * timings.results_s)),
                longitudinal=max(1, math.ceil(per_site_peak * scenario.change_share * pair_s)),
                gpus=max(1, math.ceil(per_site_peak * scenario.sites * gpu_s)))
    # Per-site pools are added at every site: compare their waits per added server.
    costs = {"preprocess": scenario.sites, "segmentation": scenario.sites, "results": scenario.sites,
             "longitudinal": scenario.sites, "gpu": 1}
    for _ in range(max_steps):
        outcome = simulate(scenario, timings, plan)
        if outcome.p95_s <= scenario.target_s:
            return outcome
        worst = max(outcome.waits_s, key=lambda kind: outcome.waits_s[kind] / costs[kind])
        name = "gpus" if worst == "gpu" else worst
        plan = replace(plan, **{name: getattr(plan, name) + 1})
    raise RuntimeError(f"no plan meets {scenario.target_s:.0f} s within {max_steps} steps for {scenario}")


def table(scenario: Scenario, timings: StageTimings, site_counts: Sequence[int]) -> str:
    lines = [
        "| sites | studies/day (all sites) | peak studies/h (all sites) | preprocess workers per site "
        "| segmentation workers per site | results workers per site | longitudinal workers per site "
        "| GPUs (shared) | GPU busy in the peak hour | peak-hour end to end median s | peak-hour end to end p95 s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for sites in site_counts:
        case = Scenario(**{**scenario.__dict__, "sites": sites})
        outcome = smallest_plan(case, timings)
        plan = outcome.plan
        lines.append(
            f"| {sites} | {sites * case.studies_per_site_day:.0f} "
            f"| {sites * case.studies_per_site_day * case.peak_hour_share:.0f} | {plan.preprocess} "
            f"| {plan.segmentation} | {plan.results} | {plan.longitudinal} | {plan.gpus} "
            f"| {outcome.gpu_busy_peak:.1%} "
            f"| {outcome.median_s:.0f} | {outcome.p95_s:.0f} |")
    return "\n".join(lines)


def report(scenarios: Sequence[Scenario], timings: StageTimings, site_counts: Sequence[int]) -> str:
    lines = [SECTION, "", _inputs(scenarios[0], timings), ""]
    for scenario in scenarios:
        lines += [_scenario_line(scenario), "", table(scenario, timings, site_counts), ""]
    return "\n".join([
        *lines,
        "The end-to-end time is dominated by the wait window, which no worker count shortens; the workers and "
        f"GPUs only have to keep the queues short at the peak. {_change_line(timings)} A site runs at least "
        "one worker per stage; two for availability is a deployment choice (helm minReplicas), not a capacity "
        "need.",
        "",
        "Reproduce: `.venv/bin/python scripts/capacity_model.py --out BENCHMARKS.md` (also run by `make bench`).",
        "",
    ])


def _change_line(timings: StageTimings) -> str:
    """How the change pipeline, run in parallel with the glioma chain, bears on a study's end to end."""
    pair_s = max(timings.ms_pair_s, timings.haematoma_pair_s)
    chain_s = timings.preprocess_s + timings.segmentation_s + timings.results_s
    if pair_s < chain_s:
        return (f"A study with a prior runs its change pipeline in parallel with the glioma chain; the longer "
                f"pair ({pair_s} s) is shorter than that chain ({chain_s:.1f} s of work), so the change job "
                f"lengthens the study's end to end only when the longitudinal workers queue.")
    return (f"A study with a prior runs its change pipeline in parallel with the glioma chain; the longer pair "
            f"({pair_s} s) outlasts that chain ({chain_s:.1f} s of work), so such studies end with their "
            f"change result.")


def _gpu_line(scenario: Scenario, timings: StageTimings) -> str:
    if timings.gpu_inference_s is not None:
        return (f"GPU inference time {timings.gpu_inference_s} s per study, MEASURED (section \"Inference tier on a "
                "GPU\": the glioma stage's sliding window on the GPU, host to host).")
    return (f"GPU inference time is the CPU figure divided by {scenario.gpu_speedup:g}: an ASSUMPTION, not a "
            "measurement (no GPU run is in this file yet); `scripts/bench_gpu.py` on a GPU machine measures it.")


def _scenario_line(scenario: Scenario) -> str:
    return (f"**{scenario.studies_per_site_day:.0f} studies a day per site**, {scenario.peak_hour_share:.0%} of "
            f"them in the peak hour ({scenario.peak_hour}:00), the rest evenly over {scenario.working_hours[0]}:00-"
            f"{scenario.working_hours[1]}:00; wait window {scenario.wait_window_s:.0f} s; target: p95 of the peak "
            f"hour's studies from last instance to their last result stored under **{scenario.target_s:.0f} s**.")


def _inputs(scenario: Scenario, timings: StageTimings) -> str:
    return " ".join([
        "Written by `scripts/capacity_model.py` (a discrete-event simulation of one day, seed 7).",
        f"Inputs from the sections above (medians): trigger latency {timings.trigger_latency_s} s, preprocess "
        f"{timings.preprocess_s} s, segmentation {timings.segmentation_s} s (of which model inference "
        f"{timings.inference_s} s on CPU), results {timings.results_s} s. {_gpu_line(scenario, timings)} "
        "A segmentation worker holds its slot while it waits for a GPU.",
        f"Change pipelines (from the longitudinal bench): MS pair {timings.ms_pair_s} s, haematoma pair "
        f"{timings.haematoma_pair_s} s, registration to result; tumour_growth has no timing of its own and is "
        f"counted at the MS pair time. {scenario.change_share:.0%} of studies have a prior and also run a change "
        f"pipeline (`--change-share`), {scenario.haematoma_share:.0%} of those are CT haematoma pairs "
        f"(`--haematoma-share`). The change job runs entirely in the site's longitudinal worker on CPU "
        f"(registration, N4 and the skull-strip network all measured on CPU): "
        f"pessimistic, since the skull-strip inference would go to the GPU tier.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS, help="where the stage timings are read")
    parser.add_argument("--out", type=Path, default=None, help="write the section into this file")
    parser.add_argument("--sites", type=int, nargs="+", default=list(SITE_COUNTS))
    parser.add_argument("--studies-per-site-day", type=float, default=80.0)
    parser.add_argument("--peak-hour-share", type=float, default=0.15)
    parser.add_argument("--gpu-speedup", type=float, default=10.0)
    parser.add_argument("--change-share", type=float, default=CHANGE_SHARE,
                        help="fraction of studies that also run a change pipeline (the patient has a prior)")
    parser.add_argument("--haematoma-share", type=float, default=HAEMATOMA_SHARE,
                        help="fraction of the change jobs that are CT haematoma pairs rather than MS pairs")
    parser.add_argument("--target-s", type=float, default=MonitorSettings().end_to_end_target_s)
    parser.add_argument("--wait-window-s", type=float, default=IngestSettings().wait_window_s)
    args = parser.parse_args(argv)
    try:
        timings = read_timings(args.benchmarks.read_text())
    except (OSError, BenchmarksError) as exc:
        print(f"capacity_model: error: {exc}", file=sys.stderr)
        return 2
    typical = Scenario(sites=1, studies_per_site_day=args.studies_per_site_day,
                       peak_hour_share=args.peak_hour_share, working_hours=(7, 19), peak_hour=10,
                       wait_window_s=args.wait_window_s, target_s=args.target_s, gpu_speedup=args.gpu_speedup,
                       change_share=args.change_share, haematoma_share=args.haematoma_share)
    # A large centre with a tight promise: where worker and GPU counts start to matter.
    busy = Scenario(**{**typical.__dict__, "studies_per_site_day": args.studies_per_site_day * BUSY_FACTOR,
                       "peak_hour_share": BUSY_PEAK_SHARE, "target_s": BUSY_TARGET_S})
    section = report([typical, busy], timings, args.sites)
    print(section)
    if args.out is not None:
        write_section(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
