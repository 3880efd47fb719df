"""Two orchestrator replicas on one real Kafka broker and one real PostgreSQL (as the chart runs them).

Proved here: with a slow stage whose deadlines pass while the second replica joins, each workflow gets
exactly one dispatch per attempt and exactly one result (the deadlines and retry timers are in the state
database, each claimed by one replica); a replica that dies while holding a due retry is replaced by the
other once the retry's lease has expired, and the retry is dispatched exactly once.

The orchestrators, the instant preprocess and results workers (StageWorker) run in threads; the slow
segmentation stage is a consumer over Kafka that answers each task in its own thread after a delay, so
a slow task never holds the others back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from neuroflow.core import topics
from neuroflow.core.bus import MessageBus
from neuroflow.core.config import OrchestrationSettings
from neuroflow.core.dead_letter import now_timestamp
from neuroflow.core.kafka_bus import KafkaBus
from neuroflow.core.records import FolderRecordStore
from neuroflow.core.state import WorkflowStatus
from neuroflow.core.state_postgres import PostgresStateStore
from neuroflow.core.worker import StageWorker
from neuroflow.orchestrator.orchestrator import Orchestrator
from neuroflow.proto.neuroflow.v1 import common_pb2, tasks_pb2
from tests.integration.test_distributed_inprocess import PRE, RES, SEG, TINY, TinyStages, publish, study_ready
from tests.servers.kafka import KafkaServer, running_kafka

WAIT_S = 90.0
LEASE_S = 4.0
SETTINGS = OrchestrationSettings(max_attempts=4, retry_backoff_s=0.1, retry_backoff_max_s=0.2, poll_timeout_s=0.05,
                                 heartbeat_s=5.0, lease_s=LEASE_S,
                                 stage_timeout_s={"preprocess": 60.0, "segmentation": 3.0, "results": 60.0})


class Killed(BaseException):
    """The replica's process died: not an Exception, so no loop catches it and no lease is released."""


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    # Its own broker: the orchestrator uses the real (fixed) topic names, which must start empty.
    with running_kafka(tmp_path_factory.mktemp("kafka-replicas"), partitions=4) as server:
        yield server


class RecordingBus:
    """A replica's bus that notes every task it publishes, and can die instead of publishing one."""

    def __init__(self, bus: KafkaBus, name: str, dispatches: list[tuple[str, str, int, str, float]],
                 die_before: Callable[[tasks_pb2.TaskRequested], bool] | None = None) -> None:
        self.bus, self.name, self._dispatches, self._die_before = bus, name, dispatches, die_before

    def publish(self, topic: str, key: str, value: bytes) -> None:
        if topic in _TASK_TOPICS:
            task = tasks_pb2.TaskRequested.FromString(value)
            if self._die_before is not None and self._die_before(task):
                self.bus.close()  # its connections go with the process: the group hands its partitions on
                raise Killed(f"{self.name} died dispatching {task.workflow_id} attempt {task.attempt}")
            self._dispatches.append((task.workflow_id, topics.stage_name(task.stage), task.attempt, self.name,
                                     time.monotonic()))
        self.bus.publish(topic, key, value)

    def __getattr__(self, name: str) -> object:
        return getattr(self.bus, name)


_TASK_TOPICS = {t for stage in topics.STAGES for t in topics.task_topics_by_priority(stage)}


@dataclass
class SlowSegmentation:
    """Answers each segmentation task after ``delay(task)`` seconds (in its own thread); ``fail(task)``
    answers a retryable TaskFailed instead. Notes each task it received."""

    bus: KafkaBus
    delay: Callable[[tasks_pb2.TaskRequested], float]
    fail: Callable[[tasks_pb2.TaskRequested], bool] = lambda task: False
    received: list[tuple[str, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        group = topics.worker_group(SEG)
        while not self.stop.is_set():
            for topic in topics.task_topics_by_priority(SEG):
                for message in self.bus.poll(topic, group, max_messages=16, timeout_s=0.05):
                    task = tasks_pb2.TaskRequested.FromString(message.value)
                    self.received.append((task.workflow_id, task.attempt))
                    threading.Thread(target=self._answer, args=(task,), daemon=True).start()
                    self.bus.commit(message, group)

    def _answer(self, task: tasks_pb2.TaskRequested) -> None:
        time.sleep(self.delay(task))
        if self.fail(task):
            failed = tasks_pb2.TaskFailed(
                schema_version=topics.SCHEMA_VERSION, workflow_id=task.workflow_id, stage=task.stage,
                attempt=task.attempt, idempotency_key=task.idempotency_key, study=task.study, pipeline=task.pipeline,
                reason=common_pb2.FailureReason(code=common_pb2.FailureReason.INFERENCE_UNAVAILABLE, retryable=True,
                                                message=f"study {task.study.study_key}: inference unavailable"))
            self.bus.publish(topics.TASK_FAILED, task.study.study_key, failed.SerializeToString())
            return
        done = tasks_pb2.TaskDone(
            schema_version=topics.SCHEMA_VERSION, workflow_id=task.workflow_id, stage=task.stage,
            attempt=task.attempt, idempotency_key=task.idempotency_key, study=task.study, pipeline=task.pipeline,
            finished_at=now_timestamp(), duration_s=0.1)
        done.segmentation.label_map.uri = f"mem://{task.workflow_id}/labels"
        done.segmentation.model.CopyFrom(task.segmentation.model)
        self.bus.publish(topics.TASK_DONE, task.study.study_key, done.SerializeToString())


@dataclass
class Site:
    """Everything of one test; each thread's loop is stopped and joined at the end."""

    kafka: KafkaServer
    dsn: str
    records: FolderRecordStore
    dispatches: list[tuple[str, str, int, str, float]] = field(default_factory=list)
    buses: list[KafkaBus] = field(default_factory=list)
    stoppers: list[Callable[[], None]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    stores: list[PostgresStateStore] = field(default_factory=list)

    def bus(self) -> KafkaBus:
        bus = KafkaBus(self.kafka.bootstrap, session_timeout_s=6.0, max_poll_interval_s=30.0)
        self.buses.append(bus)
        return bus

    def state(self) -> PostgresStateStore:
        store = PostgresStateStore(self.dsn)
        self.stores.append(store)
        return store

    def start(self, target: Callable[[], None], stop: Callable[[], None], name: str) -> threading.Thread:
        def guarded() -> None:
            with contextlib.suppress(Killed):
                target()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        self.stoppers.append(stop)
        return thread

    def orchestrator(self, name: str, bus: MessageBus | None = None,
                     die_before: Callable[[tasks_pb2.TaskRequested], bool] | None = None) -> Orchestrator:
        kafka_bus = self.bus()
        recording = RecordingBus(kafka_bus, name, self.dispatches, die_before)
        orchestrator = Orchestrator(recording, self.state(), self.records, {TINY.name: TINY},  # type: ignore[arg-type]
                                    SETTINGS, holder=name)
        self.start(orchestrator.run, orchestrator.stop, name)
        return orchestrator

    def workers(self, stages: TinyStages, segmentation: SlowSegmentation) -> None:
        bus = self.bus()
        for stage, handler in ((PRE, stages.preprocess), (RES, stages.result)):
            worker = StageWorker(bus, stage, handler, self.records, poll_timeout_s=0.05, heartbeat_s=5.0)
            self.start(worker.run, worker.stop, worker.name)
        self.start(segmentation.run, segmentation.stop.set, "slow-segmentation")

    def wait_until(self, what: str, done: Callable[[], bool], wait_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + wait_s
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting until {what}"
            time.sleep(0.1)

    def close(self) -> None:
        for stop in self.stoppers:
            stop()
        for thread in self.threads:
            thread.join(timeout=30)
        for bus in self.buses:
            bus.close()
        for store in self.stores:
            store.close()


@pytest.fixture
def site(kafka: KafkaServer, postgres_dsn: str, tmp_path: Path) -> Iterator[Site]:
    running = Site(kafka, postgres_dsn, FolderRecordStore(tmp_path / "records"))
    try:
        yield running
    finally:
        running.close()


def _dispatch_counts(site: Site) -> Counter[tuple[str, str, int]]:
    return Counter((wid, stage, attempt) for wid, stage, attempt, _, _ in site.dispatches)


def test_two_replicas_with_a_slow_stage_dispatch_each_attempt_once_and_give_one_result_per_workflow(
    site: Site,
) -> None:
    stages = TinyStages()
    # Attempt 1 answers after its 3 s deadline: the deadline fires (attempt 2), and its late answer comes too.
    segmentation = SlowSegmentation(site.bus(), delay=lambda task: 9.0 if task.attempt == 1 else 0.0)
    site.workers(stages, segmentation)
    publisher = site.bus()
    site.orchestrator("replica-a")
    wids = [publish(publisher, study_ready(f"replicas-{n}")) for n in range(6)]  # type: ignore[arg-type]
    site.wait_until("every workflow's segmentation attempt 1 is in flight",
                    lambda: {w for w, a in segmentation.received if a == 1} == set(wids))
    # The second replica joins while every deadline runs; both now look at the same timers.
    site.orchestrator("replica-b")
    state = site.state()
    site.wait_until("every workflow succeeded", lambda: all(
        (r := state.get(w)) is not None and r.status == WorkflowStatus.SUCCEEDED for w in wids))
    time.sleep(10.0)  # the late answers of attempt 1, and any stray second dispatch, arrive

    counts = _dispatch_counts(site)
    for wid in wids:
        assert counts[(wid, "preprocess", 1)] == 1
        assert counts[(wid, "segmentation", 1)] == 1
        assert counts[(wid, "segmentation", 2)] == 1, "the passed deadline was fired by exactly one replica"
        assert counts[(wid, "segmentation", 3)] == 0
        assert counts[(wid, "results", 1)] == 1
    assert sorted(stages.results) == sorted(wids)  # exactly one result per workflow
    assert all(state.get(w).status == WorkflowStatus.SUCCEEDED for w in wids)  # type: ignore[union-attr]
    assert {name for *_, name, _ in site.dispatches} == {"replica-a", "replica-b"}  # both did work


def test_a_replica_killed_holding_a_due_retry_is_replaced_after_the_lease_and_the_retry_runs_once(
    site: Site,
) -> None:
    stages = TinyStages()
    segmentation = SlowSegmentation(site.bus(), delay=lambda task: 0.0, fail=lambda task: task.attempt == 1)
    site.workers(stages, segmentation)
    killed_at: list[float] = []

    def die_on_the_first_retry(task: tasks_pb2.TaskRequested) -> bool:
        if task.attempt == 2 and not killed_at:
            killed_at.append(time.monotonic())
            return True
        return False

    # Whichever replica claims the retry dies with it, holding its lease (the other is not told).
    site.orchestrator("replica-a", die_before=die_on_the_first_retry)
    site.orchestrator("replica-b", die_before=die_on_the_first_retry)
    wid = publish(site.bus(), study_ready("replicas-killed"))  # type: ignore[arg-type]
    state = site.state()
    site.wait_until("the workflow succeeded", lambda: (r := state.get(wid)) is not None
                    and r.status == WorkflowStatus.SUCCEEDED)
    time.sleep(2.0)

    assert killed_at, "no replica claimed the retry"
    retries = [d for d in site.dispatches if d[:3] == (wid, "segmentation", 2)]
    (retry,) = retries  # dispatched once, by the survivor
    assert retry[4] - killed_at[0] >= LEASE_S - 0.5, "taken over before the dead replica's lease expired"
    assert _dispatch_counts(site)[(wid, "results", 1)] == 1 and stages.results == [wid]
