"""The distributed runtime in one process: orchestrator and stage workers in threads over the embedded
backends (in-memory bus, SQLite state, folder volume/record stores, folder DICOM source and sink).

Proved here: the distributed run of a real study stores the objects the embedded run writes (SEG, SR,
overlays; the same UIDs) and the same volumes;
a duplicate StudyReady starts nothing; a worker killed mid-task has its task redone once; a redelivered
finished task is answered from its record; a poison message is dead-lettered with its reason without
blocking the next; failures are retried with backoff, bounded, then dead-lettered with the reason
(a destination PACS that is down or rejects delays the delivery, retried with backoff from the outbox
for the delivery period, then dead-lettered); a stage past its deadline is re-dispatched and
finally dead-lettered; urgent work overtakes routine work; two workers of a stage share its load.
Orchestration-only tests run a tiny pipeline (pipelines are data) with instant stage handlers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from pydicom import dcmread

from neuroflow.core import topics
from neuroflow.core.bus import InMemoryBus, Message
from neuroflow.core.config import DeliverySettings, NeuroflowSettings, OrchestrationSettings
from neuroflow.core.delivery import DeliveryLoop
from neuroflow.core.dicom_io import FolderDicomSink, FolderDicomSource, study_key
from neuroflow.core.errors import DestinationRejected, DestinationUnavailable, InferenceUnavailable, SeriesRejected
from neuroflow.core.handoff import GeometrySummary, PreprocessSummary
from neuroflow.core.identity import input_hash
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.records import FolderRecordStore, InMemoryRecordStore, RecordStore
from neuroflow.core.roles import SeriesRole
from neuroflow.core.state import SqliteStateStore, WorkflowStatus
from neuroflow.core.state_schedules import DeadLetterKind, DeliveryStatus
from neuroflow.core.volume import Geometry, Volume
from neuroflow.core.volume_store import FolderVolumeStore
from neuroflow.core.worker import Handler, StageWorker
from neuroflow.devtools.dicom_writer import WrittenStudy, write_study
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.orchestrator.orchestrator import Orchestrator, workflow_id
from neuroflow.orchestrator.pipelines import PipelineSpec, glioma_pipeline
from neuroflow.preprocess.worker import PreprocessHandler
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2
from neuroflow.results.report import StudyReport
from neuroflow.results.worker import ResultsHandler
from neuroflow.runtime.embedded import run_glioma
from neuroflow.segmentation.worker import SegmentationHandler
from tests.e2e.conftest import tcga_volumes

PRE, SEG, RES = common_pb2.STAGE_PREPROCESS, common_pb2.STAGE_SEGMENTATION, common_pb2.STAGE_RESULTS
TINY = PipelineSpec(name="tiny", stages=(PRE, SEG, RES), model=common_pb2.ModelRef(name="tiny", version=1),
                    reference_role=SeriesRole.T1CE.value)
FAST = OrchestrationSettings(max_attempts=3, retry_backoff_s=0.05, retry_backoff_max_s=0.2, poll_timeout_s=0.05,
                             heartbeat_s=5.0, stage_timeout_s={"preprocess": 30.0, "segmentation": 30.0,
                                                               "results": 30.0})
# The real pipeline's stages take minutes on a loaded 2-core machine: deadlines that only a hang exceeds.
REAL = OrchestrationSettings(max_attempts=3, retry_backoff_s=0.05, retry_backoff_max_s=0.2, poll_timeout_s=0.05,
                             heartbeat_s=5.0, stage_timeout_s={"preprocess": 900.0, "segmentation": 900.0,
                                                               "results": 900.0})
WAIT_S = 20.0
T = TypeVar("T")


class Killed(BaseException):
    """Stands for the worker process dying: not an Exception, so no handler or loop catches it."""


# -- the harness ---------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """One orchestrator and any number of workers, each running in its own thread."""

    bus: InMemoryBus
    state: SqliteStateStore
    records: RecordStore
    orchestrator: Orchestrator
    workers: list[StageWorker] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start_orchestrator(self) -> None:
        self._start(self.orchestrator.run, "orchestrator")

    def start_worker(self, stage: common_pb2.Stage.ValueType, handler: Handler, name: str = "") -> StageWorker:
        worker = StageWorker(self.bus, stage, handler, self.records, name=name, poll_timeout_s=0.05,
                             heartbeat_s=5.0)
        self.workers.append(worker)
        self._start(worker.run, worker.name)
        return worker

    def _start(self, target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            with contextlib.suppress(Killed):  # the "process" died: nothing answered or committed
                target()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        self.orchestrator.stop()
        for worker in self.workers:
            worker.stop()
        for thread in self.threads:
            thread.join(timeout=30)

    def wait_for(self, wid: str, *statuses: WorkflowStatus) -> WorkflowStatus:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            record = self.state.get(wid)
            if record is not None and record.status in statuses:
                time.sleep(0.2)  # let stray duplicates arrive, so "exactly one" is checked after them
                return record.status
            time.sleep(0.02)
        record = self.state.get(wid)
        raise AssertionError(f"workflow {wid} did not reach {statuses}: {record}")

    def read_all(self, topic: str, parse: Callable[[bytes], T]) -> list[T]:
        group = f"test-reader-{time.monotonic_ns()}"
        return [parse(m.value) for m in self.bus.poll(topic, group, max_messages=10_000)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, {TINY.name: TINY}, FAST)


def _cluster(tmp_path: Path, pipelines: dict[str, PipelineSpec], settings: OrchestrationSettings,
             records: RecordStore | None = None, destination: str = "",
             delivery_period_s: float = 3600.0) -> Iterator[Cluster]:
    bus, state = InMemoryBus(), SqliteStateStore(tmp_path / "state.sqlite3")
    records = records if records is not None else InMemoryRecordStore()
    orchestrator = Orchestrator(bus, state, records, pipelines, settings, destination=destination,
                                delivery_period_s=delivery_period_s)
    running = Cluster(bus, state, records, orchestrator)
    try:
        yield running
    finally:
        running.stop()
        state.close()


def study_ready(name: str, pipeline: str = TINY.name, *, hash_: str = "h1",
                priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_ROUTINE) -> events_pb2.StudyReady:
    uid = f"1.2.826.0.1.3680043.8.498.{sum(map(ord, name))}{len(name)}"
    return events_pb2.StudyReady(
        schema_version=topics.SCHEMA_VERSION, pipeline=pipeline, input_hash=hash_, priority=priority,
        study=common_pb2.StudyRef(study_instance_uid=uid, study_key=study_key(uid), site="test"),
        series=[common_pb2.SeriesRef(series_instance_uid=f"{uid}.1", role="T1CE", instance_count=1)])


def publish(bus: InMemoryBus, ready: events_pb2.StudyReady) -> str:
    bus.publish(topics.STUDY_READY, ready.study.study_key, ready.SerializeToString())
    return workflow_id(ready.study.study_key, ready.pipeline, ready.input_hash)


@dataclass
class TinyStages:
    """Instant handlers for the tiny pipeline; the results stage records what it was asked to do."""

    results: list[str] = field(default_factory=list)  # workflow ids, in the order results ran
    lock: threading.Lock = field(default_factory=threading.Lock)

    def preprocess(self, task: tasks_pb2.TaskRequested) -> tasks_pb2.PreprocessOutput:
        return tasks_pb2.PreprocessOutput(brain_mask=common_pb2.VolumeRef(uri=f"mem://{task.workflow_id}/mask"))

    def segmentation(self, task: tasks_pb2.TaskRequested) -> tasks_pb2.SegmentationOutput:
        assert task.segmentation.brain_mask.uri == f"mem://{task.workflow_id}/mask"  # the handoff arrived
        return tasks_pb2.SegmentationOutput(label_map=common_pb2.VolumeRef(uri=f"mem://{task.workflow_id}/labels"),
                                            model=task.segmentation.model)

    def result(self, task: tasks_pb2.TaskRequested) -> tasks_pb2.ResultsOutput:
        with self.lock:
            self.results.append(task.workflow_id)
        return tasks_pb2.ResultsOutput(sop_instance_uids=[f"2.25.{len(self.results)}"])

    def start_all(self, cluster: Cluster, *, skip: tuple[common_pb2.Stage.ValueType, ...] = ()) -> None:
        handlers: dict[common_pb2.Stage.ValueType, Handler] = {
            PRE: self.preprocess, SEG: self.segmentation, RES: self.result}
        for stage, handler in handlers.items():
            if stage not in skip:
                cluster.start_worker(stage, handler)


def dead_letters(cluster: Cluster, stage: common_pb2.Stage.ValueType) -> list[tasks_pb2.DeadLetter]:
    return [m for m in cluster.read_all(topics.dead_letter_topic(stage), tasks_pb2.DeadLetter.FromString)
            if isinstance(m, tasks_pb2.DeadLetter)]


# -- the real pipeline ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tcga_study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    folder = tmp_path_factory.mktemp("tcga-distributed")
    return write_study(tcga_volumes(), folder, vendor=Vendor.SIEMENS, seed="tcga-du-7294-distributed")


def glioma_ready(source: FolderDicomSource, study: WrittenStudy, settings: NeuroflowSettings) -> events_pb2.StudyReady:
    """The StudyReady ingest would publish for ``study`` (roles as written, input hash of its instances)."""
    index = source.index()[0][study.study_instance_uid]
    uids = {role.value: [str(h.SOPInstanceUID) for h in index.series[s.series_instance_uid].headers]
            for role, s in study.series.items()}
    return events_pb2.StudyReady(
        schema_version=topics.SCHEMA_VERSION, pipeline="glioma", study_version=1,
        input_hash=input_hash(uids, settings.models.glioma), priority=common_pb2.PRIORITY_ROUTINE,
        study=common_pb2.StudyRef(study_instance_uid=study.study_instance_uid,
                                  study_key=study_key(study.study_instance_uid), site="local"),
        series=[common_pb2.SeriesRef(series_instance_uid=s.series_instance_uid, role=role.value,
                                     description=s.series_description, instance_count=len(s.paths))
                for role, s in study.series.items()])


@pytest.mark.slow
def test_distributed_run_stores_the_objects_and_volumes_of_the_embedded_run(
    tcga_study: WrittenStudy, tmp_path: Path,
) -> None:
    settings = NeuroflowSettings(inference_threads=2)
    backend = OnnxRuntimeBackend(settings.model_repository, settings.inference_threads)
    source = FolderDicomSource(tcga_study.folder)
    embedded = run_glioma(source, tmp_path / "embedded", settings, backend)
    assert embedded.volumes_ml is not None and embedded.volumes_ml.WT > 0

    sink = FolderDicomSink(tmp_path / "sink")
    volumes = FolderVolumeStore(tmp_path / "volumes")
    reports = tmp_path / "reports"
    for cluster in _cluster(tmp_path, {"glioma": glioma_pipeline(settings.models)}, REAL,
                            records=FolderRecordStore(tmp_path / "records")):
        ready = glioma_ready(source, tcga_study, settings)
        wid = publish(cluster.bus, ready)
        publish(cluster.bus, ready)  # duplicate delivery of the same StudyReady
        cluster.start_orchestrator()
        cluster.start_worker(PRE, PreprocessHandler(source, volumes, backend, settings))
        cluster.start_worker(SEG, SegmentationHandler(volumes, backend, settings))
        cluster.start_worker(RES, ResultsHandler(source, sink, volumes, cluster.bus, reports))
        deadline = time.monotonic() + 1200
        while (record := cluster.state.get(wid)) is None or record.status not in (
                WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTERED):
            assert time.monotonic() < deadline, f"distributed run did not finish: {record}"
            time.sleep(0.5)
        assert record.status == WorkflowStatus.SUCCEEDED, record.detail
        assert set(record.stage_seconds) == {"preprocess", "segmentation", "results"}
        assert len(cluster.state.list()) == 1  # the duplicate started nothing
        stored = cluster.read_all(topics.RESULTS_STORED, events_pb2.ResultsStored.FromString)

    # Every object the embedded run wrote (SEG, SR, overlays), with the same identities: same input hash.
    embedded_uids = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                     for path in (tmp_path / "embedded").rglob("*.dcm")}
    assert str(dcmread(tmp_path / "embedded" / "seg.dcm").SOPInstanceUID) in sink.stored()
    assert str(dcmread(tmp_path / "embedded" / "sr.dcm").SOPInstanceUID) in sink.stored()
    assert sorted(sink.stored()) == sorted(embedded_uids)
    assert len(stored) == 1 and isinstance(stored[0], events_pb2.ResultsStored)
    assert sorted(stored[0].sop_instance_uids) == sorted(sink.stored())
    report = StudyReport.model_validate_json(
        (reports / ready.study.study_key / wid / "report.json").read_text())
    assert report.volumes_ml == embedded.volumes_ml
    # The optimiser's final metric varies in its last digits between runs (ITK's threads); the outcome not.
    assert report.registration.keys() == embedded.registration.keys()
    for role, quality in report.registration.items():
        assert quality.quality == pytest.approx(embedded.registration[role].quality, abs=1e-6)
        assert quality.metric_value == pytest.approx(embedded.registration[role].metric_value, abs=1e-6)
    assert report.orientation_check == embedded.orientation_check
    assert report.skull_strip == embedded.skull_strip
    assert report.study_key == embedded.study_key
    # The failure flag travels with the label map from segmentation to results, as in the embedded run.
    assert report.review is not None and embedded.review is not None
    assert report.review.alarms == embedded.review.alarms
    assert report.review.needs_review == embedded.review.needs_review
    assert report.review.disagreement.keys() == embedded.review.disagreement.keys()


# -- orchestration with the tiny pipeline --------------------------------------------------------------


def test_duplicate_study_ready_starts_nothing_but_a_new_input_is_a_new_workflow(cluster: Cluster) -> None:
    stages = TinyStages()
    first = publish(cluster.bus, study_ready("dup"))
    publish(cluster.bus, study_ready("dup"))
    cluster.start_orchestrator()
    stages.start_all(cluster)
    assert cluster.wait_for(first, WorkflowStatus.SUCCEEDED) == WorkflowStatus.SUCCEEDED
    publish(cluster.bus, study_ready("dup"))  # again, after it finished
    late = publish(cluster.bus, study_ready("dup", hash_="h2"))  # a late series changed the input
    cluster.wait_for(late, WorkflowStatus.SUCCEEDED)
    assert late != first
    assert stages.results == [first, late]
    assert len(cluster.state.list()) == 2


def test_worker_killed_mid_task_has_its_task_redone_once(cluster: Cluster) -> None:
    stages = TinyStages()
    calls: list[int] = []

    def dies_the_first_time(task: tasks_pb2.TaskRequested) -> tasks_pb2.SegmentationOutput:
        calls.append(task.attempt)
        if len(calls) == 1:
            raise Killed  # polled, not answered, not committed
        return stages.segmentation(task)

    wid = publish(cluster.bus, study_ready("killed"))
    cluster.start_orchestrator()
    stages.start_all(cluster, skip=(SEG,))
    victim = cluster.start_worker(SEG, dies_the_first_time, name="victim")
    deadline = time.monotonic() + WAIT_S
    while not calls:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cluster.threads[-1].join(timeout=5)
    assert victim.stats.done == victim.stats.failed == 0
    # The group notices the consumer is gone and hands its uncommitted task to the next one.
    assert cluster.bus.redeliver(topics.task_topic(SEG), topics.worker_group(SEG)) == 1
    cluster.start_worker(SEG, dies_the_first_time, name="replacement")
    cluster.wait_for(wid, WorkflowStatus.SUCCEEDED)
    assert calls == [1, 1]  # the same attempt, redone: no failure was reported
    assert stages.results == [wid]


class CommitDies(InMemoryBus):
    """A bus on which the first commit of a results task kills the worker: the answer is published, the
    task not committed (the worker died between the two)."""

    def __init__(self) -> None:
        super().__init__()
        self.killed = False

    def commit(self, message: Message, group: str) -> None:
        if message.topic == topics.task_topic(RES) and not self.killed:
            self.killed = True
            raise Killed
        super().commit(message, group)


def test_redelivered_finished_task_is_answered_from_its_record_not_redone(tmp_path: Path) -> None:
    stages = TinyStages()
    bus, state, records = CommitDies(), SqliteStateStore(tmp_path / "state.sqlite3"), InMemoryRecordStore()
    cluster = Cluster(bus, state, records, Orchestrator(bus, state, records, {TINY.name: TINY}, FAST))
    try:
        wid = publish(bus, study_ready("redelivered"))
        cluster.start_orchestrator()
        stages.start_all(cluster, skip=(RES,))
        cluster.start_worker(RES, stages.result, name="dies-at-commit")
        cluster.wait_for(wid, WorkflowStatus.SUCCEEDED)
        assert bus.killed
        assert bus.redeliver(topics.task_topic(RES), topics.worker_group(RES)) == 1
        second = cluster.start_worker(RES, stages.result, name="replacement")
        deadline = time.monotonic() + WAIT_S
        while second.stats.replayed == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert stages.results == [wid]  # the handler ran once
        done = [m for m in cluster.read_all(topics.TASK_DONE, tasks_pb2.TaskDone.FromString)
                if isinstance(m, tasks_pb2.TaskDone) and m.stage == RES]
        assert len(done) == 2 and done[0] == done[1]  # the same answer again
        assert state.get(wid).status == WorkflowStatus.SUCCEEDED  # type: ignore[union-attr]
    finally:
        cluster.stop()
        state.close()


def test_poison_message_is_dead_lettered_with_its_reason_and_the_next_task_still_runs(cluster: Cluster) -> None:
    stages = TinyStages()
    cluster.bus.publish(topics.task_topic(PRE), "garbage", b"\xff\xfe\x00 not a protobuf at all")
    wid = publish(cluster.bus, study_ready("after-poison"))
    cluster.start_orchestrator()
    stages.start_all(cluster)
    cluster.wait_for(wid, WorkflowStatus.SUCCEEDED)
    letters = dead_letters(cluster, PRE)
    assert len(letters) == 1
    assert letters[0].payload == b"\xff\xfe\x00 not a protobuf at all"
    assert letters[0].source_topic == topics.task_topic(PRE)
    assert "cannot use the message" in letters[0].reason.message and not letters[0].reason.retryable
    assert stages.results == [wid]


def test_retryable_failure_is_retried_and_succeeds_on_a_later_attempt(cluster: Cluster) -> None:
    stages = TinyStages()
    attempts: list[int] = []

    def flaky(task: tasks_pb2.TaskRequested) -> tasks_pb2.SegmentationOutput:
        attempts.append(task.attempt)
        if task.attempt < 3:
            raise InferenceUnavailable("model tiny:1 not ready")
        return stages.segmentation(task)

    wid = publish(cluster.bus, study_ready("flaky"))
    cluster.start_orchestrator()
    stages.start_all(cluster, skip=(SEG,))
    cluster.start_worker(SEG, flaky)
    cluster.wait_for(wid, WorkflowStatus.SUCCEEDED)
    assert attempts == [1, 2, 3]
    assert dead_letters(cluster, SEG) == []


def test_failure_that_persists_is_dead_lettered_after_the_last_attempt_with_its_reason(cluster: Cluster) -> None:
    stages = TinyStages()
    attempts: list[int] = []

    def down(task: tasks_pb2.TaskRequested) -> tasks_pb2.SegmentationOutput:
        attempts.append(task.attempt)
        raise InferenceUnavailable("model tiny:1 not ready on any inference server")

    wid = publish(cluster.bus, study_ready("down"))
    cluster.start_orchestrator()
    stages.start_all(cluster, skip=(SEG,))
    cluster.start_worker(SEG, down)
    cluster.wait_for(wid, WorkflowStatus.DEAD_LETTERED)
    assert attempts == [1, 2, 3]
    record = cluster.state.get(wid)
    assert record is not None and "not ready on any inference server" in record.detail
    assert "3 attempt" in record.detail
    (letter,) = dead_letters(cluster, SEG)
    assert letter.reason.code == common_pb2.FailureReason.INFERENCE_UNAVAILABLE and letter.attempts == 3
    assert tasks_pb2.TaskRequested.FromString(letter.payload).workflow_id == wid
    assert stages.results == []


def test_failure_that_is_not_retryable_fails_the_workflow_at_once(cluster: Cluster) -> None:
    calls: list[int] = []

    def rejects(task: tasks_pb2.TaskRequested) -> tasks_pb2.PreprocessOutput:
        calls.append(task.attempt)
        raise SeriesRejected(task.study.study_key, "slice 12 is missing", series_uid="1.2.3")

    wid = publish(cluster.bus, study_ready("bad-series"))
    cluster.start_orchestrator()
    cluster.start_worker(PRE, rejects)
    cluster.wait_for(wid, WorkflowStatus.FAILED)
    assert calls == [1]
    record = cluster.state.get(wid)
    assert record is not None and "slice 12 is missing" in record.detail and "SERIES_REJECTED" in record.detail
    (letter,) = dead_letters(cluster, PRE)
    # The dead letter names the error but not the series: UIDs stay in the site's state store, not on the bus.
    assert letter.reason.series_instance_uid == "" and "slice 12 is missing" in letter.reason.message


def test_stage_not_done_by_its_deadline_is_redispatched_then_dead_lettered(tmp_path: Path) -> None:
    settings = FAST.model_copy(update={"max_attempts": 2, "stage_timeout_s": {"segmentation": 0.3}})
    for cluster in _cluster(tmp_path, {TINY.name: TINY}, settings):
        stages = TinyStages()
        wid = publish(cluster.bus, study_ready("stuck"))
        cluster.start_orchestrator()
        stages.start_all(cluster, skip=(SEG,))  # nobody takes segmentation tasks
        cluster.wait_for(wid, WorkflowStatus.DEAD_LETTERED)
        tasks = cluster.read_all(topics.task_topic(SEG), tasks_pb2.TaskRequested.FromString)
        assert [t.attempt for t in tasks if isinstance(t, tasks_pb2.TaskRequested)] == [1, 2]
        (letter,) = dead_letters(cluster, SEG)
        assert letter.reason.code == common_pb2.FailureReason.DEADLINE_EXCEEDED
        record = cluster.state.get(wid)
        assert record is not None and "timeout" in record.detail


def test_a_workflow_left_running_without_a_timer_gets_its_deadline_back_when_an_orchestrator_starts(
    tmp_path: Path,
) -> None:
    # A state database written before timers were kept in it (or a crash between two writes): the workflow
    # is RUNNING with its task recorded, and no deadline anywhere. recover() gives it its task's deadline.
    settings = FAST.model_copy(update={"max_attempts": 2, "stage_timeout_s": {"segmentation": 0.5}})
    for cluster in _cluster(tmp_path, {TINY.name: TINY}, settings):
        stages = TinyStages()
        wid = publish(cluster.bus, study_ready("no-timer"))
        first = Orchestrator(cluster.bus, cluster.state, cluster.records, {TINY.name: TINY}, settings)
        first.process_available()  # dispatches preprocess; it never ticks, then goes away
        stages.start_all(cluster, skip=(SEG,))
        deadline = time.monotonic() + WAIT_S
        while (record := cluster.state.get(wid)) is None or record.stage != "segmentation":
            assert time.monotonic() < deadline
            first.process_available()
            time.sleep(0.02)
        cluster.state.clear_timer(wid)
        assert cluster.state.timer(wid) is None and cluster.state.get(wid).status == WorkflowStatus.RUNNING  # type: ignore[union-attr]
        cluster.orchestrator = Orchestrator(cluster.bus, cluster.state, cluster.records, {TINY.name: TINY},
                                            settings)
        cluster.start_orchestrator()  # its run() starts with recover()
        cluster.wait_for(wid, WorkflowStatus.DEAD_LETTERED)
        tasks = cluster.read_all(topics.task_topic(SEG), tasks_pb2.TaskRequested.FromString)
        assert [t.attempt for t in tasks if isinstance(t, tasks_pb2.TaskRequested)] == [1, 2]
        record = cluster.state.get(wid)
        assert record is not None and "was not done within its timeout" in record.detail


def test_urgent_study_queued_behind_routine_ones_is_processed_first(cluster: Cluster) -> None:
    stages = TinyStages()
    routine = [publish(cluster.bus, study_ready(f"routine-{i}")) for i in range(4)]
    urgent = publish(cluster.bus, study_ready("urgent", priority=common_pb2.PRIORITY_URGENT))
    cluster.start_orchestrator()
    deadline = time.monotonic() + WAIT_S
    while len(cluster.state.list(WorkflowStatus.RUNNING)) < 5:  # every task queued before any worker runs
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stages.start_all(cluster)
    for wid in [*routine, urgent]:
        cluster.wait_for(wid, WorkflowStatus.SUCCEEDED)
    assert stages.results[0] == urgent
    assert sorted(stages.results[1:]) == sorted(routine)


def test_two_preprocess_workers_share_the_load(cluster: Cluster) -> None:
    stages = TinyStages()

    def slow_preprocess(task: tasks_pb2.TaskRequested) -> tasks_pb2.PreprocessOutput:
        time.sleep(0.1)  # long enough that the other worker takes the next task meanwhile
        return stages.preprocess(task)

    wids = [publish(cluster.bus, study_ready(f"load-{i}")) for i in range(8)]
    cluster.start_orchestrator()
    one = cluster.start_worker(PRE, slow_preprocess, name="preprocess-1")
    two = cluster.start_worker(PRE, slow_preprocess, name="preprocess-2")
    stages.start_all(cluster, skip=(PRE,))
    for wid in wids:
        cluster.wait_for(wid, WorkflowStatus.SUCCEEDED)
    assert one.stats.done > 0 and two.stats.done > 0
    assert one.stats.done + two.stats.done == 8


# -- forwarding to the destination PACS ----------------------------------------------------------------


class FakePacs(FolderDicomSink):
    """A sink whose destination PACS is down, or refuses, every forward; it counts the tries."""

    def __init__(self, root: Path, error: Exception) -> None:
        super().__init__(root)
        self.error = error
        self.forwards = 0

    def forward(self, sop_instance_uids: list[str], destination: str, /) -> None:
        self.forwards += 1
        raise self.error


@dataclass(frozen=True)
class SmallStudy:
    source: FolderDicomSource
    ready: events_pb2.StudyReady
    label_map: Volume


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> SmallStudy:
    """A small T1CE series and a label map on its grid with a tumour blob."""
    geometry = Geometry(spacing=(1.0, 1.0, 2.0), origin=(-24.0, -24.0, -10.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size=(48, 48, 10))
    rng = np.random.default_rng(7)
    image = Volume(rng.integers(0, 400, size=(10, 48, 48)).astype(np.int16), geometry)
    folder = tmp_path_factory.mktemp("small-study")
    written = write_study({SeriesRole.T1CE: image}, folder, seed="small-distributed")
    labels = np.zeros((10, 48, 48), dtype=np.uint8)
    labels[3:7, 18:30, 18:30] = 2
    labels[4:6, 22:26, 22:26] = 3
    summary = PreprocessSummary(reference_geometry=GeometrySummary.of(geometry), brain_volume_ml=20.0)
    series = written.series[SeriesRole.T1CE]
    ready = study_ready("small", hash_="small")
    ready.study.study_instance_uid = written.study_instance_uid
    ready.study.study_key = study_key(written.study_instance_uid)
    del ready.series[:]
    ready.series.add(series_instance_uid=series.series_instance_uid, role="T1CE", instance_count=10)
    return SmallStudy(FolderDicomSource(folder), ready, summary.attach(Volume(labels, geometry)))


@pytest.mark.parametrize("error", [
    DestinationUnavailable("PACS 127.0.0.1:11112 did not answer"),
    # A PACS that refuses (maintenance, full storage) may accept later: retried the same way.
    DestinationRejected("PACS refused the SEG: C-STORE status 0xA700"),
], ids=["down", "rejects"])
def test_destination_that_is_down_or_rejects_delays_delivery_with_backoff_then_dead_letters_it_after_the_period(
    small_study: SmallStudy, tmp_path: Path, error: Exception,
) -> None:
    volumes = FolderVolumeStore(tmp_path / "volumes")
    label_ref = volumes.put_ref("small/labels", small_study.label_map)
    pacs = FakePacs(tmp_path / "sink", error)
    for cluster in _cluster(tmp_path, {TINY.name: TINY}, FAST, destination="PACS", delivery_period_s=1.5):
        stages = TinyStages()

        def segmentation(task: tasks_pb2.TaskRequested) -> tasks_pb2.SegmentationOutput:
            return tasks_pb2.SegmentationOutput(label_map=label_ref, model=common_pb2.ModelRef(name="tiny",
                                                                                               version=1))

        wid = publish(cluster.bus, small_study.ready)
        cluster.start_orchestrator()
        stages.start_all(cluster, skip=(SEG, RES))
        cluster.start_worker(SEG, segmentation)
        cluster.start_worker(RES, ResultsHandler(small_study.source, pacs, volumes, cluster.bus, tmp_path / "reports"))
        # The task stores the SEG and succeeds: the PACS being away is the outbox's business, not the task's.
        assert cluster.wait_for(wid, WorkflowStatus.SUCCEEDED) == WorkflowStatus.SUCCEEDED
        # Every object of the result (SEG, SR, overlay images) is stored; none forwarded yet.
        assert pacs.forwards == 0 and len(pacs.stored()) >= 3
        (queued,) = cluster.state.deliveries(workflow_id=wid)
        assert queued.status == DeliveryStatus.PENDING and queued.destination == "PACS"
        loop = DeliveryLoop(cluster.state, pacs, DeliverySettings(backoff_s=0.2, backoff_max_s=0.4), holder="r1")
        deadline = time.monotonic() + WAIT_S
        while cluster.state.deliveries(workflow_id=wid)[0].status == DeliveryStatus.PENDING:
            assert time.monotonic() < deadline, "the delivery was never given up"
            loop.deliver_due()
            time.sleep(0.02)
        (gave_up,) = cluster.state.deliveries(workflow_id=wid)
        assert gave_up.status == DeliveryStatus.GAVE_UP and str(error) in gave_up.last_error
        # Backoff, not a busy loop: 0.2, 0.4, 0.4 ... s apart over the 1.5 s period, the last try at its end.
        assert 3 <= pacs.forwards == gave_up.attempts <= 7
        (letter,) = cluster.state.dead_letters(workflow_id=wid)
        assert letter.kind == DeadLetterKind.DELIVERY and str(error) in letter.reason
        assert letter.code == ("DESTINATION_UNAVAILABLE" if isinstance(error, DestinationUnavailable)
                               else "DESTINATION_REJECTED")
        assert letter.study_key == small_study.ready.study.study_key


def test_undecodable_event_does_not_block_the_orchestrator(cluster: Cluster) -> None:
    stages = TinyStages()
    cluster.bus.publish(topics.STUDY_READY, "garbage", b"\xff\xfe\x00 not a protobuf at all")
    wid = publish(cluster.bus, study_ready("after-bad-event"))
    cluster.start_orchestrator()
    stages.start_all(cluster)
    cluster.wait_for(wid, WorkflowStatus.SUCCEEDED)
    assert stages.results == [wid]


def test_serve_runs_every_service_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "NEUROFLOW_STATE__SQLITE_PATH": str(tmp_path / "state.sqlite3"),
           "NEUROFLOW_VOLUME_STORE_ROOT": str(tmp_path / "volumes"), "NEUROFLOW_RECORDS_ROOT": str(tmp_path / "rec"),
           "NEUROFLOW_DICOM__FOLDER": str(tmp_path / "in"), "NEUROFLOW_DICOM__SINK_FOLDER": str(tmp_path / "out"),
           "NEUROFLOW_ORCHESTRATION__POLL_TIMEOUT_S": "0.1"}
    process = subprocess.Popen([sys.executable, "-m", "neuroflow.cli", "-v", "serve", "all"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "state.sqlite3").exists():  # the orchestrator opened its state store
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    for service in ("preprocess-worker", "segmentation-worker", "results-worker"):
        assert f"{service}: stopped" in err


def test_a_study_over_the_input_limits_fails_its_workflow_at_once_and_the_worker_lives_on(
        cluster: Cluster, tmp_path: Path) -> None:
    """Issue 11: the 724-byte RLE file claiming 60000 x 60000 pixels reaches the real preprocess handler; it is
    refused from its header (SERIES_REJECTED, not retried) and the same worker then takes the next task."""
    from neuroflow.devtools.dicom_fuzz import rle_bomb

    folder = tmp_path / "bomb"
    folder.mkdir()
    ready = study_ready("over-limit")
    (folder / "IM0").write_bytes(rle_bomb(study_uid=ready.study.study_instance_uid,
                                          series_uid=ready.series[0].series_instance_uid))
    settings = NeuroflowSettings()
    handler = PreprocessHandler(FolderDicomSource(folder, limits=settings.limits),
                                FolderVolumeStore(tmp_path / "volumes"), OnnxRuntimeBackend(settings.model_repository),
                                settings)
    stages = TinyStages()
    calls: list[str] = []

    def preprocess(task: tasks_pb2.TaskRequested) -> tasks_pb2.PreprocessOutput:
        calls.append(task.study.study_key)
        return handler(task) if task.study.study_key == ready.study.study_key else stages.preprocess(task)

    stages.start_all(cluster, skip=(PRE,))
    worker = cluster.start_worker(PRE, preprocess)
    cluster.start_orchestrator()
    wid = publish(cluster.bus, ready)
    cluster.wait_for(wid, WorkflowStatus.FAILED)
    record = cluster.state.get(wid)
    assert record is not None and "SERIES_REJECTED" in record.detail
    assert "60000 x 60000" in record.detail and "NEUROFLOW_LIMITS__MAX_PIXELS_PER_FRAME" in record.detail
    assert calls == [ready.study.study_key]  # not retried
    after = publish(cluster.bus, study_ready("after-the-bomb"))
    assert cluster.wait_for(after, WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED) == WorkflowStatus.SUCCEEDED
    assert worker.stats.failed == 1
