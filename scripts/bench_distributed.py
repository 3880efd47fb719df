"""Distributed-runtime figures for `make bench`, measured on the local stack (real Orthanc x2, Kafka,
PostgreSQL, one process per service): trigger latency (last instance stored to StudyReady, minus the
wait window), orchestration overhead per study (end-to-end time not spent inside a stage), and the
throughput of a burst of studies with one versus two preprocessing workers, side by side in one run.

Each worker process is pinned to one thread (ITK and ONNX Runtime), as a deployment that scales by
processes would be, so the 1-vs-2 figure measures scaling by workers, not by threads."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from neuroflow.core import topics
from neuroflow.core.kafka_bus import KafkaBus
from neuroflow.core.roles import SeriesRole
from neuroflow.devtools import stack
from neuroflow.devtools.cstore import send_folder
from neuroflow.devtools.dicom_writer import load_volume, write_study
from neuroflow.proto.neuroflow.v1 import events_pb2

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "tests" / "data" / "glioma-tcga-du-7294"
FILES = {SeriesRole.T1: "t1_bet.nii.gz", SeriesRole.T1CE: "t1c_bet.nii.gz", SeriesRole.T2: "t2_bet.nii.gz",
         SeriesRole.FLAIR: "fla_bet.nii.gz"}
WAIT_WINDOW_S = 2.0


def run(workers: int, studies: list[Path], work: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"neuroflow-bench-{workers}-"))
    root.chmod(0o755)
    started = stack.up(stack.StackOptions(
        wait_window_s=WAIT_WINDOW_S, root=root, workers={"preprocess": workers},
        extra_env={"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "NEUROFLOW_INFERENCE_THREADS": "1",
                   "OMP_NUM_THREADS": "1"}))
    try:
        site = started["orthanc"]["site"]
        bus = KafkaBus(started["kafka"]["bootstrap"])
        sent_at: dict[str, float] = {}
        burst_start = time.time()
        for folder in studies:
            send_folder(folder, site["dicom_host"], site["dicom_port"], site["aet"])
            sent_at[folder.name] = time.time()
        ready: dict[str, events_pb2.StudyReady] = {}
        stored: dict[str, events_pb2.ResultsStored] = {}
        deadline = time.time() + 1800
        while len(stored) < len(studies) and time.time() < deadline:
            for m in bus.poll(topics.STUDY_READY, "bench", 50, timeout_s=0.5):
                ready_event = events_pb2.StudyReady.FromString(m.value)
                ready[ready_event.study.study_instance_uid] = ready_event
                bus.commit(m, "bench")
            for m in bus.poll(topics.RESULTS_STORED, "bench", 50, timeout_s=0.5):
                stored_event = events_pb2.ResultsStored.FromString(m.value)
                stored[stored_event.study.study_instance_uid] = stored_event
                bus.commit(m, "bench")
        makespan = max(e.stored_at.ToDatetime().timestamp() for e in stored.values()) - burst_start
        with psycopg.connect(started["postgresql"]["dsn"]) as db:
            stage_sum: dict[str, float] = dict(db.execute(
                "SELECT w.study_key, sum(t.seconds) FROM workflows w JOIN stage_timings t "
                "USING (workflow_id) GROUP BY w.study_key").fetchall())
            per_stage = db.execute("SELECT stage, seconds FROM stage_timings").fetchall()
        bus.close()
    finally:
        stack.down(root)
    uid_of = {json.loads((f / "uid.json").read_text())["uid"]: f.name for f in studies}
    latencies, overheads = [], []
    for uid, event in ready.items():
        latencies.append(event.ready_at.ToDatetime().timestamp() - sent_at[uid_of[uid]] - WAIT_WINDOW_S)
        if uid in stored:
            span = stored[uid].stored_at.ToDatetime().timestamp() - event.ready_at.ToDatetime().timestamp()
            overheads.append(span - float(stage_sum[event.study.study_key]))
    stages: dict[str, list[float]] = {}
    for stage, seconds in per_stage:
        stages.setdefault(stage, []).append(float(seconds))
    return {"workers": workers, "studies": len(stored), "makespan_s": makespan,
            "trigger_latency_s": latencies, "overhead_s": overheads,
            "stage_median_s": {k: statistics.median(v) for k, v in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neuroflow-bench-studies-"))
    volumes = {role: load_volume(CASE / name) for role, name in FILES.items()}
    studies = []
    for i in range(args.studies):
        written = write_study(volumes, work / f"study{i}", seed=f"bench-{i}")
        (work / f"study{i}" / "uid.json").write_text(json.dumps({"uid": written.study_instance_uid}))
        studies.append(work / f"study{i}")
    results = [run(workers, studies, work) for workers in (1, 2)]
    one, two = results
    latencies = one["trigger_latency_s"] + two["trigger_latency_s"]
    overheads = one["overhead_s"] + two["overhead_s"]
    lines = [
        "",
        "## Distributed runtime on the local stack (Orthanc x2, Kafka, PostgreSQL, one process per service)",
        "",
        f"Written by `make bench` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). A burst of "
        f"{args.studies} real 4-sequence studies (TCGA-DU-7294 under {args.studies} study UIDs) sent by C-STORE "
        f"back to back; wait window {WAIT_WINDOW_S:.0f} s; every worker process single-threaded.",
        "",
        "| figure | median | all |",
        "| --- | ---: | --- |",
        f"| trigger latency (last instance stored -> StudyReady, minus the wait window), s | "
        f"{statistics.median(latencies):.2f} | {', '.join(f'{x:.2f}' for x in latencies)} |",
        f"| orchestration overhead per study (end to end minus time inside stages), s | "
        f"{statistics.median(overheads):.2f} | {', '.join(f'{x:.2f}' for x in overheads)} |",
        "",
        "| preprocessing workers | studies | burst makespan s | throughput studies/h |",
        "| ---: | ---: | ---: | ---: |",
        *[f"| {r['workers']} | {r['studies']} | {r['makespan_s']:.1f} | {3600 * r['studies'] / r['makespan_s']:.0f} |"
          for r in results],
        "",
        f"Two preprocessing workers vs one: **{one['makespan_s'] / two['makespan_s']:.2f}x** "
        "(goal 1.7x on this 2-core machine; the other stages share the same two cores).",
        "",
        "Median stage time inside the workers (1-worker run), s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in one["stage_median_s"].items()) + ".",
        "",
        "Reproduce: `make bench` (or `.venv/bin/python scripts/bench_distributed.py`).",
        "",
    ]
    with args.out.open("a") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
