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
from neuroflow.core.kafka_security import client_security
from neuroflow.core.orthanc import OrthancClient
from neuroflow.core.roles import SeriesRole
from neuroflow.devtools import stack
from neuroflow.devtools.benchmarks_md import write_section
from neuroflow.devtools.cstore import send_folder
from neuroflow.devtools.dicom_writer import load_volume, write_study
from neuroflow.proto.neuroflow.v1 import events_pb2

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "tests" / "data" / "glioma-tcga-du-7294"
FILES = {SeriesRole.T1: "t1_bet.nii.gz", SeriesRole.T1CE: "t1c_bet.nii.gz", SeriesRole.T2: "t2_bet.nii.gz",
         SeriesRole.FLAIR: "fla_bet.nii.gz"}
WAIT_WINDOW_S = 5.0


def run(workers: int, latency_study: Path, burst: list[Path]) -> dict[str, Any]:
    """One stack with ``workers`` preprocessing processes: first one study by C-STORE alone (trigger
    latency, overhead), then a burst uploaded at once (throughput: last upload to last result)."""
    options = stack.StackOptions(
        wait_window_s=WAIT_WINDOW_S, workers={"preprocess": workers},
        extra_env={"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "NEUROFLOW_INFERENCE_THREADS": "1",
                   "OMP_NUM_THREADS": "1"})
    with stack.temporary(options, prefix=f"neuroflow-bench-{workers}-") as started:
        site = started["orthanc"]["site"]
        client = OrthancClient(stack.orthanc_endpoint(started, "site"))
        # The operator's login: it reads what the services publish, as no service's principal may.
        operator = stack.stack_bus_settings(started)
        bus = KafkaBus(operator.bootstrap, security=client_security(operator))
        send_folder(latency_study, site["dicom_host"], site["dicom_port"], site["aet"])
        sent_at = {study_uid(latency_study): time.time()}
        ready, stored = collect_results(bus, 1)
        for folder in burst:
            for path in sorted(folder.rglob("IM*")):
                client.upload(path.read_bytes())
            sent_at[study_uid(folder)] = time.time()
        burst_sent = time.time()
        more_ready, more_stored = collect_results(bus, len(burst))
        ready.update(more_ready)
        stored.update(more_stored)
        makespan = max(stored[study_uid(f)].stored_at.ToDatetime().timestamp() for f in burst) - burst_sent
        with psycopg.connect(started["postgresql"]["dsn"]) as db:
            stage_sum: dict[str, float] = dict(db.execute(
                "SELECT w.study_key, sum(t.seconds) FROM workflows w JOIN stage_timings t "
                "USING (workflow_id) GROUP BY w.study_key").fetchall())
            per_stage = db.execute("SELECT stage, seconds FROM stage_timings").fetchall()
            workflows = db.execute("SELECT count(*) FROM workflows").fetchone()
        bus.close()
    latencies, overheads = [], []
    for uid, event in ready.items():
        latencies.append(event.ready_at.ToDatetime().timestamp() - sent_at[uid] - WAIT_WINDOW_S)
        span = stored[uid].stored_at.ToDatetime().timestamp() - event.ready_at.ToDatetime().timestamp()
        overheads.append(span - float(stage_sum[event.study.study_key]))
    stages: dict[str, list[float]] = {}
    for stage, seconds in per_stage:
        stages.setdefault(stage, []).append(float(seconds))
    return {"workers": workers, "studies": len(burst), "makespan_s": makespan,
            "workflows": int(workflows[0]) if workflows else 0, "studies_sent": len(sent_at),
            "trigger_latency_s": latencies, "overhead_s": overheads,
            "stage_median_s": {k: statistics.median(v) for k, v in stages.items()}}


def collect_results(bus: KafkaBus, count: int, timeout_s: float = 1800.0) -> tuple[
        dict[str, events_pb2.StudyReady], dict[str, events_pb2.ResultsStored]]:
    """The next ``count`` results, with their StudyReady (the first one of each study)."""
    ready: dict[str, events_pb2.StudyReady] = {}
    stored: dict[str, events_pb2.ResultsStored] = {}
    deadline = time.time() + timeout_s
    while len(stored) < count and time.time() < deadline:
        for m in bus.poll(topics.STUDY_READY, "bench", 50, timeout_s=0.5):
            ready_event = events_pb2.StudyReady.FromString(m.value)
            ready.setdefault(ready_event.study.study_instance_uid, ready_event)
            bus.commit(m, "bench")
        for m in bus.poll(topics.RESULTS_STORED, "bench", 50, timeout_s=0.5):
            stored_event = events_pb2.ResultsStored.FromString(m.value)
            stored[stored_event.study.study_instance_uid] = stored_event
            bus.commit(m, "bench")
    if len(stored) < count:
        raise SystemExit(f"bench: only {len(stored)} of {count} results arrived within {timeout_s:.0f} s")
    return ready, stored


def study_uid(folder: Path) -> str:
    return str(json.loads((folder / "uid.json").read_text())["uid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=4, help="studies in the burst")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neuroflow-bench-studies-"))
    volumes = {role: load_volume(CASE / name) for role, name in FILES.items()}
    def study(name: str) -> Path:
        written = write_study(volumes, work / name, seed=f"bench-{name}")
        (work / name / "uid.json").write_text(json.dumps({"uid": written.study_instance_uid}))
        return work / name

    results = [run(workers, study(f"latency-{workers}"), [study(f"burst-{workers}-{i}") for i in range(args.studies)])
               for workers in (1, 2)]
    one, two = results
    latencies = one["trigger_latency_s"] + two["trigger_latency_s"]
    overheads = one["overhead_s"] + two["overhead_s"]
    lines = [
        "## Distributed runtime on the local stack (Orthanc x2, Kafka, PostgreSQL, one process per service)",
        "",
        f"Written by `make bench` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Per stack: one real "
        "4-sequence study (TCGA-DU-7294) sent alone by C-STORE (trigger latency, overhead), then a burst of "
        f"{args.studies} copies under other study UIDs uploaded at once (throughput: last upload to last result in "
        f"the PACS); wait window {WAIT_WINDOW_S:.0f} s; every worker process single-threaded. "
        f"Workflows run: {one['workflows']} and {two['workflows']} for {one['studies_sent']} studies each "
        "(one per study: no premature trigger).",
        "",
        "| figure | median | all |",
        "| --- | ---: | --- |",
        f"| trigger latency (last instance stored -> StudyReady, minus the wait window), s | "
        f"{statistics.median(latencies):.2f} | {', '.join(f'{x:.2f}' for x in latencies)} |",
        f"| orchestration overhead per study (end to end minus time inside stages), s | "
        f"{statistics.median(overheads):.2f} | {', '.join(f'{x:.2f}' for x in overheads)} |",
        "",
        "| preprocessing workers | burst studies | burst makespan s | throughput studies/h |",
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
    ]
    # In place of this section's last figures: `make bench`'s first script keeps the other scripts' sections, so
    # appending would leave the old section above the new one.
    write_section(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
