"""The stage worker loop, the same for every stage: take a task, run the stage's handler, answer.

A worker of stage S reads ``topics.urgent_task_topic(S)`` before ``topics.task_topic(S)`` in consumer group
``topics.worker_group(S)`` (one group per stage, so more copies share the load, one task each at a time),
and for each ``TaskRequested``:

* a message it cannot decode, or one that is not a task of S (poison), is parked raw on S's dead-letter
  topic with the reason and committed: it never blocks the topic;
* a task whose idempotency key was finished before (a redelivery) is answered with the recorded
  ``TaskDone`` again: the handler does not run, no second result is made;
* a task whose deadline has passed is answered with ``TaskFailed`` DEADLINE_EXCEEDED (retryable) without
  running: the orchestrator has re-dispatched it or will decide;
* otherwise the handler runs; its output becomes ``TaskDone`` (recorded first, then published), an
  exception becomes ``TaskFailed`` with a FailureReason derived from the exception (:func:`failure_reason`).

The message is committed only after the answer is published (at-least-once): a worker that dies before
that leaves the task to be delivered again. Log lines name the study by its pseudonymous key, never UIDs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from neuroflow.core import health, metrics, topics
from neuroflow.core.bus import Message, MessageBus
from neuroflow.core.dead_letter import now_timestamp, publish_dead_letter
from neuroflow.core.errors import (
    AmbiguousRole,
    DestinationRejected,
    DestinationUnavailable,
    InferenceUnavailable,
    InputLimitExceeded,
    MissingSequence,
    NeuroflowError,
    OrientationMismatch,
    OrthancRequestFailed,
    OrthancUnavailable,
    SeriesRejected,
    StoreUnavailable,
    StudyError,
)
from neuroflow.core.records import RecordStore
from neuroflow.core.state_schedules import replica_name
from neuroflow.core.volume_store import VolumeCorrupted, VolumeNotFound
from neuroflow.proto.neuroflow.v1 import common_pb2, tasks_pb2

log = logging.getLogger(__name__)

Code = common_pb2.FailureReason
StageOutput = (tasks_pb2.PreprocessOutput | tasks_pb2.SegmentationOutput | tasks_pb2.ResultsOutput
               | tasks_pb2.LongitudinalOutput)
# A stage's work: the task in, the stage's output message out; raises to fail the task.
Handler = Callable[[tasks_pb2.TaskRequested], StageOutput]
# Longest pause between tries to answer a task while the bus or the record store is unreachable.
_MAX_RETRY_DELAY_S = 30.0


# Longest idle wait on the urgent topic before the routine topic is looked at again.
_IDLE_WAIT_S = 0.05

class TaskDeadlineExceeded(NeuroflowError):
    """The task's deadline passed before the worker could finish it. Retryable."""


class PoisonMessage(NeuroflowError):
    """A message on a task topic that is not a usable task of the worker's stage."""


@dataclass
class WorkerStats:
    """What a worker has done since it started (for heartbeats, metrics and tests)."""

    done: int = 0  # tasks its handler finished
    failed: int = 0  # tasks answered with TaskFailed
    replayed: int = 0  # redelivered tasks answered from the record, without running the handler
    poisoned: int = 0  # undecodable messages sent to the dead-letter topic


def failure_reason(exc: BaseException, *, study_key: str, stage: str) -> common_pb2.FailureReason:
    """The FailureReason for an exception a handler raised: its class decides the code and whether trying
    again can help; the message names the study by its key, the stage and the cause.

    StudyError subclasses (bad input) are not retryable; unreachable services (inference, Orthanc, the
    destination) and a passed deadline are; anything unforeseen is INTERNAL and not retryable (a defect:
    the same input would fail again)."""
    series_uid = ""
    if isinstance(exc, StudyError):
        cause = exc.reason
        series_uid = exc.series_uid or ""
    else:
        cause = str(exc) or type(exc).__name__
    code, retryable = _classify(exc)
    return common_pb2.FailureReason(code=code, retryable=retryable, series_instance_uid=series_uid,
                                    message=f"study {study_key}: {stage} failed: {cause}")


def is_retryable(exc: BaseException) -> bool:
    """Whether the work that raised ``exc`` may succeed when tried again unchanged (see :func:`failure_reason`)."""
    return _classify(exc)[1]


def _classify(exc: BaseException) -> tuple[common_pb2.FailureReason.Code.ValueType, bool]:
    match exc:
        case SeriesRejected() | InputLimitExceeded():  # over the input limits: bad input, never retried
            return Code.SERIES_REJECTED, False
        case MissingSequence():
            return Code.MISSING_SEQUENCE, False
        case AmbiguousRole():
            return Code.AMBIGUOUS_ROLE, False
        case OrientationMismatch():
            return Code.ORIENTATION_MISMATCH, False
        case StudyError():
            return Code.INTERNAL, False
        case InferenceUnavailable():
            return Code.INFERENCE_UNAVAILABLE, True
        case TaskDeadlineExceeded():
            return Code.DEADLINE_EXCEEDED, True
        case DestinationUnavailable():
            return Code.DESTINATION_UNAVAILABLE, True
        case DestinationRejected():
            # Retried too (bounded, then dead-lettered): a PACS that refuses during maintenance or while
            # its storage is full accepts later; one that keeps refusing ends in the dead-letter topic.
            return Code.DESTINATION_REJECTED, True
        case OrthancUnavailable() | StoreUnavailable():  # the state database (timepoints) away: comes back
            return Code.STORAGE_UNAVAILABLE, True
        case OrthancRequestFailed() | VolumeNotFound() | VolumeCorrupted():
            return Code.STORAGE_UNAVAILABLE, False
        case OSError():  # a shared mount that went away, a full disk: may come back
            return Code.STORAGE_UNAVAILABLE, True
        case _:
            return Code.INTERNAL, False


def _monotonic_deadline(task: tasks_pb2.TaskRequested) -> float:
    """The task's deadline on time.monotonic()'s clock (what core/health compares); none: math.inf (the
    orchestrator always sets one)."""
    if not task.HasField("deadline"):
        return math.inf
    return time.monotonic() + (task.deadline.seconds + task.deadline.nanos / 1e9 - time.time())


def done_record_key(idempotency_key: str) -> str:
    """Record-store key of the TaskDone recorded for ``idempotency_key`` (a digest: any key is safe)."""
    return f"tasks/done/{hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]}"


class StageWorker:
    """Runs ``handler`` for every task of ``stage`` until :meth:`stop`. ``records`` must be shared by every
    copy of the stage (it is how a redelivered task finds the answer another copy recorded)."""

    def __init__(
        self,
        bus: MessageBus,
        stage: common_pb2.Stage.ValueType,
        handler: Handler,
        records: RecordStore,
        *,
        name: str = "",
        poll_timeout_s: float = 0.5,
        heartbeat_s: float = 60.0,
    ) -> None:
        self._bus = bus
        self._stage = stage
        self._stage_name = topics.stage_name(stage)
        self._handler = handler
        self._records = records
        self._group = topics.worker_group(stage)
        self._topics = topics.task_topics_by_priority(stage)
        self._poll_timeout_s = poll_timeout_s
        self._heartbeat_s = heartbeat_s
        self.name = name or f"{self._stage_name}-worker"
        self._replica = f"{self.name}/{replica_name()}"  # who answered, in TaskDone (the audit trail's actor)
        self.stats = WorkerStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the loop to end after the task in hand (if any) is answered and committed."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Poll and process until :meth:`stop`. A bus error is logged and retried after a pause, never
        fatal: an uncommitted task is delivered again."""
        log.info("%s: consuming %s in group %s", self.name, ", ".join(self._topics), self._group)
        next_heartbeat = time.monotonic() + self._heartbeat_s
        while not self._stop.is_set():
            try:
                self.process_one()
                health.beat(self.name)  # a task answered, or none waiting: progress either way
            except Exception:
                log.exception("%s: error between tasks; retrying in 1 s", self.name)
                self._stop.wait(1.0)
            if time.monotonic() >= next_heartbeat:
                s = self.stats
                log.info("%s alive: %d done, %d failed, %d replayed, %d poisoned",
                         self.name, s.done, s.failed, s.replayed, s.poisoned)
                next_heartbeat = time.monotonic() + self._heartbeat_s
        log.info("%s: stopped", self.name)

    def process_one(self) -> bool:
        """Take one task (urgent first) and answer it. False when none arrived within the poll timeout.

        When answering fails (the bus or the record store is unreachable; the handler's own failures are
        answers, not this), the same message is tried again with backoff until it succeeds or the worker
        is stopped, and is never committed unanswered: on Kafka, committing a later message would skip it."""
        message = self._poll()
        if message is None:
            return False
        delay = 0.5
        while True:
            try:
                self._process(message)
                self._bus.commit(message, self._group)  # only now: the answer is published
                return True
            except Exception:
                if self._stop.is_set():
                    raise  # left uncommitted: the group delivers it to another worker
                log.exception("%s: cannot answer the message at %s offset %d; trying again in %.1f s",
                              self.name, message.topic, message.offset, delay)
                self._stop.wait(delay)
                delay = min(2 * delay, _MAX_RETRY_DELAY_S)

    def _poll(self) -> Message | None:
        urgent, routine = self._topics
        for topic in (urgent, routine):
            messages = self._bus.poll(topic, self._group, max_messages=1, timeout_s=0.0)
            if messages:
                return messages[0]
        # Idle: wait on the urgent topic only, so urgent work wakes the worker at once and is never taken
        # after routine work that arrived during the wait. The wait is short (the next call looks at the
        # routine topic again): a long one made every routine task wait up to a whole poll timeout per
        # stage, most of the measured orchestration overhead (0.9 s per study with 0.5 s waits).
        wait = min(_IDLE_WAIT_S, self._poll_timeout_s)
        messages = self._bus.poll(urgent, self._group, max_messages=1, timeout_s=wait)
        return messages[0] if messages else None

    def _process(self, message: Message) -> None:
        try:
            task = self._decode(message.value)
        except PoisonMessage as exc:
            reason = common_pb2.FailureReason(code=Code.INTERNAL, retryable=False,
                                              message=f"{self._stage_name} worker cannot use the message at "
                                                      f"{message.topic} offset {message.offset}: {exc}")
            publish_dead_letter(self._bus, self._stage, message.value, reason, source_topic=message.topic)
            self.stats.poisoned += 1
            metrics.TASKS_DEAD_LETTERED.labels(metrics.UNKNOWN, metrics.UNKNOWN, self._stage_name,
                                               Code.Code.Name(reason.code)).inc()
            return
        key = task.study.study_key
        recorded = self._records.get(done_record_key(task.idempotency_key))
        if recorded is not None:
            log.info("study %s: %s task of workflow %s already done: answering from the record",
                     key, self._stage_name, task.workflow_id)
            self._bus.publish(topics.TASK_DONE, key, recorded)
            self.stats.replayed += 1
            return
        if task.HasField("deadline") and time.time() > task.deadline.ToDatetime().timestamp():
            self._fail(task, TaskDeadlineExceeded(
                f"attempt {task.attempt} was picked up after its deadline {task.deadline.ToJsonString()}"))
            return
        log.info("study %s: %s attempt %d of workflow %s started", key, self._stage_name, task.attempt,
                 task.workflow_id)
        labels = self._metric_labels(task)
        metrics.TASKS_STARTED.labels(*labels).inc()
        started = time.perf_counter()
        try:
            with metrics.TASKS_IN_FLIGHT.labels(*labels).track_inprogress(), \
                    health.busy(self.name, _monotonic_deadline(task)):
                output = self._handler(task)
        except Exception as exc:  # every failure becomes an answer; the loop goes on
            if not isinstance(exc, NeuroflowError):
                log.exception("study %s: %s failed unexpectedly", key, self._stage_name)
            self._fail(task, exc)
            return
        finally:
            metrics.TASK_DURATION.labels(*labels).observe(time.perf_counter() - started)
        done = tasks_pb2.TaskDone(
            schema_version=topics.SCHEMA_VERSION, workflow_id=task.workflow_id, stage=task.stage,
            attempt=task.attempt, idempotency_key=task.idempotency_key, study=task.study,
            pipeline=task.pipeline, finished_at=now_timestamp(), duration_s=time.perf_counter() - started,
            worker=self._replica,
        )
        getattr(done, self._stage_name).CopyFrom(output)
        wire = done.SerializeToString()
        self._records.put(done_record_key(task.idempotency_key), wire)  # before publishing: see module doc
        self._bus.publish(topics.TASK_DONE, key, wire)
        self.stats.done += 1
        metrics.TASKS_SUCCEEDED.labels(*labels).inc()
        log.info("study %s: %s of workflow %s done in %.1f s", key, self._stage_name, task.workflow_id,
                 done.duration_s)

    def _fail(self, task: tasks_pb2.TaskRequested, exc: BaseException) -> None:
        reason = failure_reason(exc, study_key=task.study.study_key, stage=self._stage_name)
        failed = tasks_pb2.TaskFailed(
            schema_version=topics.SCHEMA_VERSION, workflow_id=task.workflow_id, stage=task.stage,
            attempt=task.attempt, idempotency_key=task.idempotency_key, study=task.study,
            pipeline=task.pipeline, reason=reason, failed_at=now_timestamp(),
        )
        self._bus.publish(topics.TASK_FAILED, task.study.study_key, failed.SerializeToString())
        self.stats.failed += 1
        metrics.TASKS_FAILED.labels(*self._metric_labels(task), Code.Code.Name(reason.code)).inc()
        log.warning("study %s: %s attempt %d of workflow %s failed (%s, %s): %s", task.study.study_key,
                    self._stage_name, task.attempt, task.workflow_id, Code.Code.Name(reason.code),
                    "retryable" if reason.retryable else "not retryable", reason.message)

    def _metric_labels(self, task: tasks_pb2.TaskRequested) -> tuple[str, str, str]:
        """(site, pipeline, stage): bounded values only, never the study."""
        return task.study.site or metrics.UNKNOWN, task.pipeline or metrics.UNKNOWN, self._stage_name

    def _decode(self, value: bytes) -> tasks_pb2.TaskRequested:
        try:
            task = tasks_pb2.TaskRequested.FromString(value)
        except DecodeError as exc:
            raise PoisonMessage(f"not a TaskRequested ({exc})") from None
        if task.stage != self._stage:
            raise PoisonMessage(f"a task of stage {task.stage!r}, not {self._stage_name}")
        if not task.workflow_id or not task.idempotency_key:
            raise PoisonMessage("a task without workflow_id or idempotency_key")
        if task.WhichOneof("input") != self._stage_name:
            raise PoisonMessage(f"a {self._stage_name} task whose input is {task.WhichOneof('input')!r}")
        return task
