"""Metrics of the distributed runtime, proved on a small in-process flow (orchestrator and stage workers in
threads over the in-memory bus, the tiny pipeline of test_distributed_inprocess):

* a workflow that succeeds counts each stage started and succeeded, its latency, a delivered result and
  its end-to-end time; a failure that persists counts each failed attempt by reason, the retries and the
  dead letter;
* the exposition never carries a patient or study identifier: no UID, patient ID, accession, study or
  patient key or workflow id used in the flow appears anywhere in it;
* exposition of every metric is fast (measured and printed; the goal is under 10 ms).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

from neuroflow.core import topics
from neuroflow.core.dicom_io import study_key
from neuroflow.core.errors import InferenceUnavailable
from neuroflow.core.state import WorkflowStatus
from neuroflow.orchestrator.orchestrator import workflow_id
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2
from tests.integration.test_distributed_inprocess import FAST, SEG, TINY, Cluster, TinyStages, _cluster

SITE = "metrics-site"
PATIENT_ID = "PAT-0042-SECRET"
ACCESSION = "ACC-99887766"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, {TINY.name: TINY}, FAST)


def ready_for(name: str, series_count: int = 1) -> events_pb2.StudyReady:
    uid = f"1.2.826.0.1.3680043.8.498.7{sum(map(ord, name))}{len(name)}"
    message = events_pb2.StudyReady(
        schema_version=topics.SCHEMA_VERSION, pipeline=TINY.name, input_hash=f"hash-{name}",
        study=common_pb2.StudyRef(study_instance_uid=uid, study_key=study_key(uid), site=SITE,
                                  patient_key=study_key(PATIENT_ID), accession=ACCESSION),
        series=[common_pb2.SeriesRef(series_instance_uid=f"{uid}.{i}", role="T1CE", instance_count=1)
                for i in range(series_count)])
    message.ready_at.GetCurrentTime()  # the end-to-end time counts from here
    return message


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def identifiers(ready: events_pb2.StudyReady) -> list[str]:
    study = ready.study
    return [study.study_instance_uid, study.study_key, study.patient_key, PATIENT_ID, ACCESSION,
            workflow_id(study.study_key, ready.pipeline, ready.input_hash),
            *(s.series_instance_uid for s in ready.series)]


def test_succeeded_and_dead_lettered_workflows_are_counted_by_stage_and_reason(cluster: Cluster) -> None:
    stage = {"site": SITE, "pipeline": TINY.name}
    before = {name: value(name, **stage, stage="segmentation") for name in (
        "neuroflow_stage_tasks_started_total", "neuroflow_stage_tasks_succeeded_total",
        "neuroflow_stage_task_duration_seconds_count")}
    reason = {**stage, "stage": "segmentation", "reason": "INFERENCE_UNAVAILABLE"}
    failed_before = value("neuroflow_stage_tasks_failed_total", **reason)
    retried_before = value("neuroflow_stage_tasks_retried_total", **reason)
    dead_before = value("neuroflow_stage_tasks_dead_lettered_total", **reason)
    delivered_before = value("neuroflow_results_delivered_total", **stage)
    e2e_before = value("neuroflow_end_to_end_seconds_count", **stage)

    stages = TinyStages()
    good, bad = ready_for("metrics-good"), ready_for("metrics-bad")

    def segmentation(task: tasks_pb2.TaskRequested) -> tasks_pb2.SegmentationOutput:
        if task.study.study_key == bad.study.study_key:
            raise InferenceUnavailable(f"model server down for {task.study.study_instance_uid}")
        return stages.segmentation(task)

    stages.start_all(cluster, skip=(SEG,))
    cluster.start_worker(SEG, segmentation)
    cluster.start_orchestrator()
    for ready in (good, bad):
        cluster.bus.publish(topics.STUDY_READY, ready.study.study_key, ready.SerializeToString())
    wid = workflow_id
    assert cluster.wait_for(wid(good.study.study_key, TINY.name, good.input_hash),
                            WorkflowStatus.SUCCEEDED) == WorkflowStatus.SUCCEEDED
    assert cluster.wait_for(wid(bad.study.study_key, TINY.name, bad.input_hash),
                            WorkflowStatus.DEAD_LETTERED) == WorkflowStatus.DEAD_LETTERED

    attempts = FAST.max_attempts
    assert value("neuroflow_stage_tasks_started_total", **stage, stage="segmentation") - before[
        "neuroflow_stage_tasks_started_total"] == 1 + attempts
    assert value("neuroflow_stage_tasks_succeeded_total", **stage, stage="segmentation") - before[
        "neuroflow_stage_tasks_succeeded_total"] == 1
    assert value("neuroflow_stage_task_duration_seconds_count", **stage, stage="segmentation") - before[
        "neuroflow_stage_task_duration_seconds_count"] == 1 + attempts
    assert value("neuroflow_stage_tasks_failed_total", **reason) - failed_before == attempts
    assert value("neuroflow_stage_tasks_retried_total", **reason) - retried_before == attempts - 1
    assert value("neuroflow_stage_tasks_dead_lettered_total", **reason) - dead_before == 1
    assert value("neuroflow_results_delivered_total", **stage) - delivered_before == 1
    assert value("neuroflow_end_to_end_seconds_count", **stage) - e2e_before == 1
    assert value("neuroflow_stage_tasks_in_flight", **stage, stage="segmentation") == 0


def test_exposition_carries_no_patient_or_study_identifier_and_is_fast(cluster: Cluster) -> None:
    stages = TinyStages()
    studies = [ready_for(f"privacy-{i}", series_count=2) for i in range(3)]
    stages.start_all(cluster)
    cluster.start_orchestrator()
    for ready in studies:
        cluster.bus.publish(topics.STUDY_READY, ready.study.study_key, ready.SerializeToString())
    for ready in studies:
        cluster.wait_for(workflow_id(ready.study.study_key, TINY.name, ready.input_hash), WorkflowStatus.SUCCEEDED)

    exposition = generate_latest(REGISTRY).decode()
    assert f'site="{SITE}"' in exposition  # the flow's metrics are in it
    for ready in studies:
        for identifier in identifiers(ready):
            assert identifier not in exposition, f"the metrics expose {identifier!r}"
    # No label value looks like a DICOM UID (digits and dots) either, whoever put it there.
    assert not [line for line in exposition.splitlines() if '="1.2.' in line or '="2.25.' in line]

    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        generate_latest(REGISTRY)
    per_exposition_ms = (time.perf_counter() - started) / rounds * 1000
    print(f"\nexposition of {len(exposition.splitlines())} lines: {per_exposition_ms:.2f} ms")
