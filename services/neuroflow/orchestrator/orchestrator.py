"""The orchestrator: turns StudyReady events into workflows and walks each through its pipeline's stages.

* One workflow per (study, pipeline, input_hash): its id is derived from the three, and the state store
  refuses a second workflow for the same work, so a duplicate StudyReady starts nothing; a new input_hash
  (a late series) is new work and a new workflow.
* A stage's task goes to the stage's urgent or routine task topic by the study's priority, with a deadline
  (the stage's timeout from now). The answer (TaskDone) dispatches the next stage; the last one ends the
  workflow SUCCEEDED.
* A retryable failure, or a deadline that passes (``tick``), is retried with exponential backoff while
  attempts remain; then, or at once for a failure that is not retryable, the task is parked on the stage's
  dead-letter topic with the reason and the workflow ends DEAD_LETTERED (retries exhausted) or FAILED (the
  input must change), the reason in the state store's detail.
* Answers of a stage the workflow has left, or of an attempt it has given up on, are ignored: redelivered
  and duplicate messages change nothing; so is a late answer for a workflow an operator CANCELLED (its results
  are never scheduled for delivery).
* A new workflow of a pipeline an operator paused waits, PENDING, on a retry timer of its first stage that the
  state database holds back until the pipeline is resumed (``_hold``).

* A workflow of a pipeline with ``notice_on_failure`` (glioma) that ends FAILED or DEAD_LETTERED, or a study
  ingest refused for such a pipeline (RoutingFailed), sends the results stage one task more, the failure
  notice (``ResultsInput.failure``: the stage and the reason, no patient identifier); the notice objects it
  stores are delivered like a result (under ``notice_workflow_id``), so PACS shows that the study could not
  be processed and why, as the embedded run's output folder does. The workflow stays failed; a notice task
  that fails is logged, not retried.
* A workflow's results (the last stage's SOP Instance UIDs) are put in the delivery outbox of the state
  database when it succeeds; the results and longitudinal services deliver them to the PACS
  (``core.delivery``), retrying for the site's delivery period, so a PACS outage delays a result, never
  loses it.

What a workflow needs across messages (its StudyReady, the task in flight, each stage's answer) is kept in
the record store; its retry or deadline timer, and a lease on it, in the state database
(``core.state_schedules``). So any number of orchestrator replicas may run: a replica holds a workflow's
lease while it changes the workflow (an answer, a due timer), exactly one replica fires each due timer,
and a replica that dies holding a lease is replaced once the lease has expired.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from neuroflow.core import health, metrics, topics
from neuroflow.core.audit import AuditAction
from neuroflow.core.bus import Message, MessageBus
from neuroflow.core.config import OrchestrationSettings
from neuroflow.core.dead_letter import publish_dead_letter
from neuroflow.core.errors import NeuroflowError
from neuroflow.core.records import RecordStore
from neuroflow.core.state import SqlStateStore, WorkflowRecord, WorkflowStatus, notice_workflow_id
from neuroflow.core.state_schedules import (
    DeadLetterKind,
    DeadLetterRecord,
    Timer,
    TimerKind,
    new_letter_id,
    replica_name,
)
from neuroflow.orchestrator.pipelines import PipelineSpec, build_input, notice_input
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2

log = logging.getLogger(__name__)

Code = common_pb2.FailureReason
_EVENT_TOPICS = topics.ORCHESTRATOR_READS
_ACTIVE = (WorkflowStatus.PENDING, WorkflowStatus.RUNNING)


def workflow_id(study_key: str, pipeline: str, input_hash: str) -> str:
    """The id of the workflow doing this work: the same (study, pipeline, input) always gives the same id."""
    digest = hashlib.sha256(f"{study_key}\x00{pipeline}\x00{input_hash}".encode()).hexdigest()
    return f"wf-{digest[:24]}"


def idempotency_key(workflow: str, stage: common_pb2.Stage.ValueType) -> str:
    """Same for every attempt and redelivery of one stage of one workflow."""
    return f"{workflow}.{topics.stage_name(stage)}"


_STAGE_BY_NAME = {topics.stage_name(stage): stage for stage in topics.STAGES}


class WorkflowBusy(NeuroflowError):
    """Another replica holds the workflow's lease: handle the message again shortly."""


class Orchestrator:
    """Consumes STUDY_READY, TASK_DONE, TASK_FAILED and ROUTING_FAILED in group ``topics.ORCHESTRATOR_GROUP``.

    ``pipelines`` maps a pipeline name to its spec; a StudyReady for another pipeline is logged and
    dropped. ``destination`` is the PACS the results are delivered to (empty: stored at the site only).
    ``last_instance_lead_s`` (the site's ingest wait window) is added to the StudyReady-to-result time for
    the end-to-end metric: the study's last instance arrived at least that long before it was ready.
    ``delivery_period_s``: how long a succeeded workflow's results are offered to the destination before its
    delivery is given up (dead-lettered). ``holder`` names this replica in leases (default: host-pid-random)."""

    def __init__(
        self,
        bus: MessageBus,
        state: SqlStateStore[Any],
        records: RecordStore,
        pipelines: Mapping[str, PipelineSpec],
        settings: OrchestrationSettings,
        *,
        destination: str = "",
        last_instance_lead_s: float = 0.0,
        delivery_period_s: float = 24 * 3600.0,
        holder: str = "",
    ) -> None:
        self._bus = bus
        self._state = state
        self._records = records
        self._pipelines = dict(pipelines)
        self._settings = settings
        self._destination = destination
        self._last_instance_lead_s = last_instance_lead_s
        self._delivery_period_s = delivery_period_s
        self.holder = holder or replica_name()
        # The workflow changes this process makes are audited as this replica (core/audit.py).
        state.audit_actor = f"orchestrator/{self.holder}"
        self._stop = threading.Event()

    # -- the loop ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return after the message in hand."""
        self._stop.set()

    def run(self) -> None:
        """Resume unfinished workflows, then handle events and :meth:`tick` until :meth:`stop`."""
        self.recover()
        next_heartbeat = time.monotonic() + self._settings.heartbeat_s
        while not self._stop.is_set():
            try:
                handled = self.process_available()
                self.tick()
                health.beat("orchestrator")
                # Inside the try: the log line reads the state database, whose outage must not end the loop.
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + self._settings.heartbeat_s
                    running = len(self._state.list(WorkflowStatus.RUNNING))
                    log.info("orchestrator alive: %d workflow(s) running, %d retry(ies) scheduled",
                             running, len(self._state.timers(TimerKind.RETRY)))
            except Exception:
                log.exception("orchestrator: error in the loop; retrying in 1 s")
                self._stop.wait(1.0)
                continue
            if not handled:
                self._stop.wait(min(0.05, self._settings.poll_timeout_s))

    def process_available(self, max_messages: int = 16) -> int:
        """Handle what is waiting on the three topics (each message committed after it is handled);
        returns how many were handled."""
        handled = 0
        for topic in _EVENT_TOPICS:
            for message in self._bus.poll(topic, topics.ORCHESTRATOR_GROUP, max_messages=max_messages):
                self._handle_until_done(message)
                self._bus.commit(message, topics.ORCHESTRATOR_GROUP)
                handled += 1
        return handled

    def _handle_until_done(self, message: Message) -> None:
        """Handle ``message``. A message that cannot be handled as it is (undecodable, or refused by the
        state store's rules: a defect or a corrupted event) is logged and dropped so it never blocks the
        topic; any other error (the state store or the bus unreachable) is retried with backoff until it
        passes or the orchestrator stops, since committing past an unhandled event would lose it."""
        delay = 0.5
        while True:
            try:
                self._handle(message)
                return
            except WorkflowBusy:  # another replica is changing this workflow: its lease is short-lived
                if self._stop.is_set():
                    raise
                self._stop.wait(0.1)
                continue
            except (DecodeError, ValueError, KeyError) as exc:
                log.error("orchestrator: message at %s offset %d (key %s) dropped: %s: %s", message.topic,
                          message.offset, message.key, type(exc).__name__, exc)
                return
            except Exception:
                if self._stop.is_set():
                    raise
                log.exception("orchestrator: cannot handle the message at %s offset %d; again in %.1f s",
                              message.topic, message.offset, delay)
                self._stop.wait(delay)
                delay = min(2 * delay, 30.0)

    def _handle(self, message: Message) -> None:
        if message.topic == topics.STUDY_READY:
            self.on_study_ready(events_pb2.StudyReady.FromString(message.value))
        elif message.topic == topics.ROUTING_FAILED:
            self.on_routing_failed(events_pb2.RoutingFailed.FromString(message.value))
        elif message.topic == topics.TASK_DONE:
            self.on_task_done(tasks_pb2.TaskDone.FromString(message.value))
        else:
            self.on_task_failed(tasks_pb2.TaskFailed.FromString(message.value))

    # -- events --------------------------------------------------------------------------------------

    def on_study_ready(self, ready: events_pb2.StudyReady) -> None:
        """Start the workflow of this (study, pipeline, input), unless it exists already."""
        key = ready.study.study_key
        spec = self._pipelines.get(ready.pipeline)
        if spec is None:
            log.error("study %s: StudyReady for pipeline %r, which this orchestrator does not run (it runs "
                      "%s): ignored", key, ready.pipeline, sorted(self._pipelines))
            return
        if not key or not ready.input_hash:
            log.error("study %s: StudyReady without study key or input_hash: ignored", key or "-")
            return
        wid = workflow_id(key, ready.pipeline, ready.input_hash)
        self._records.put(_ready_key(wid), ready.SerializeToString())
        created = self._state.create(wid, key, ready.pipeline, ready.input_hash)
        with self._holding(wid):
            if not created:
                record = self._state.get(wid)
                # A crash between creating the workflow and dispatching leaves it PENDING without a task.
                if not (record and record.status == WorkflowStatus.PENDING and self._task(wid) is None
                        and self._state.timer(wid) is None):
                    log.info("study %s: %s workflow %s for this input exists (%s): duplicate StudyReady ignored",
                             key, ready.pipeline, wid, record.status if record else "?")
                    return
            paused = self._state.paused_pipelines().get(ready.pipeline)
            if paused is not None:
                self._hold(wid, key, ready.pipeline, spec, paused_by=paused[0])
                return
            log.info("study %s: %s workflow %s started (%s)", key, ready.pipeline, wid,
                     common_pb2.Priority.Name(ready.priority))
            self._dispatch(wid, spec.stages[0], attempt=1)

    def _hold(self, wid: str, key: str, pipeline: str, spec: PipelineSpec, *, paused_by: str) -> None:
        """A new workflow of a paused pipeline: it waits (PENDING) on a due retry timer of its first stage,
        which the state database does not hand out while the pipeline is paused (claim_due_timers); resumed,
        the next tick dispatches it. Nothing is lost: the workflow and its StudyReady are stored."""
        stage = topics.stage_name(spec.stages[0])
        self._state.set_timer_if_none(wid, TimerKind.RETRY, stage, 1, time.time())
        self._state.audit_append(key, AuditAction.HELD, {"workflow_id": wid, "pipeline": pipeline,
                                                         "paused_by": paused_by})
        log.info("study %s: %s workflow %s waits: the pipeline was paused by %s", key, pipeline, wid, paused_by)

    def on_task_done(self, done: tasks_pb2.TaskDone) -> None:
        """Record the stage's answer and its time, then dispatch the next stage or end the workflow (its
        results, if any, scheduled for delivery). A failure notice's answer only schedules its delivery (no lease:
        the workflow has ended, or there is none for a study routing refused)."""
        if is_notice_key(done.workflow_id, done.idempotency_key):
            self._on_notice_stored(done)
            return
        with self._holding(done.workflow_id):
            self._on_task_done(done)

    def _on_task_done(self, done: tasks_pb2.TaskDone) -> None:
        wid, stage = done.workflow_id, done.stage
        record = self._current(wid, stage, "TaskDone")
        if record is None:
            return
        spec = self._spec(record)
        if spec is None:
            return
        self._records.put(_done_key(wid, stage), done.SerializeToString())
        self._state.record_stage_timing(wid, topics.stage_name(stage), max(0.0, done.duration_s))
        self._state.audit_append(record.study_key, AuditAction.STAGE_FINISHED, _finished_detail(done))
        following = spec.next_stage(stage)
        if following is not None:
            self._dispatch(wid, following, attempt=1)
            return
        detail = f"{topics.stage_name(stage)} done"
        if done.WhichOneof("output") == "results":
            stored = done.results
            detail = (f"{len(stored.sop_instance_uids)} result object(s) stored"
                      + (f"; delivery to {stored.destination} scheduled" if stored.destination else ""))
            self._schedule_delivery(record, stage, list(stored.sop_instance_uids), stored.destination)
        elif done.WhichOneof("output") == "longitudinal":
            detail = _longitudinal_detail(done.longitudinal)
            self._schedule_delivery(record, stage, list(done.longitudinal.sop_instance_uids),
                                    done.longitudinal.destination)
        self._state.set_status(wid, WorkflowStatus.SUCCEEDED, stage=topics.stage_name(stage), detail=detail)
        self._state.clear_timer(wid)
        self._records.delete(_task_key(wid))
        waiting = (done.WhichOneof("output") == "longitudinal"
                   and done.longitudinal.outcome == tasks_pb2.LongitudinalOutput.WAITING_FOR_PRIOR)
        if not waiting:  # a follow-up waiting for its prior has delivered nothing yet
            self._observe_delivered(wid, done)
        log.info("study %s: workflow %s succeeded: %s", done.study.study_key, wid, detail)

    def on_task_failed(self, failed: tasks_pb2.TaskFailed) -> None:
        """Retry, with backoff, a retryable failure while attempts remain; dead-letter otherwise. A failure
        notice that could not be filed is logged (not retried)."""
        if is_notice_key(failed.workflow_id, failed.idempotency_key):
            log.error("study %s: the failure notice of %s could not be filed (%s): %s; PACS shows nothing for "
                      "this study", failed.study.study_key, failed.workflow_id, Code.Code.Name(failed.reason.code),
                      failed.reason.message)
            return
        with self._holding(failed.workflow_id):
            self._on_task_failed(failed)

    def _on_task_failed(self, failed: tasks_pb2.TaskFailed) -> None:
        record = self._current(failed.workflow_id, failed.stage, "TaskFailed")
        if record is None:
            return
        task = self._task(failed.workflow_id)
        if task is None or task.attempt != failed.attempt or record.status != WorkflowStatus.RUNNING:
            log.info("study %s: TaskFailed of %s attempt %d of workflow %s is stale (current attempt %s): "
                     "ignored", failed.study.study_key, topics.stage_name(failed.stage), failed.attempt,
                     failed.workflow_id, task.attempt if task else "-")
            return
        self._after_failure(task, failed.reason)

    def tick(self, now: float | None = None) -> None:
        """Fire the timers that are due, of every workflow (whichever replica set them): dispatch a due retry,
        and treat a task past its deadline as failed (DEADLINE_EXCEEDED, retryable). Each due timer is
        claimed in the state database (with this replica's lease), so exactly one replica fires it. The loop
        calls it after each batch of messages."""
        now = time.time() if now is None else now
        for timer in self._state.claim_due_timers(now, self.holder, self._settings.lease_s):
            try:
                self._fire(timer)
            except Exception:  # the timer stays due: fired again (by any replica) at a later tick
                self._state.release_workflow(timer.workflow_id, self.holder)
                raise
            self._state.release_workflow(timer.workflow_id, self.holder)

    def recover(self) -> None:
        """Give every unfinished workflow without a timer one (a database written before timers were kept
        there, or a crash between two writes): a RUNNING one its task's deadline; a PENDING one with a task
        the retry of that task; a PENDING one never dispatched its first stage, after a lease's time (a
        replica starting it now holds its lease and sets a timer first). Safe while other replicas run."""
        now = time.time()
        for status in _ACTIVE:
            for record in self._state.list(status):
                wid = record.workflow_id
                if self._state.timer(wid) is not None or self._spec(record) is None:
                    continue
                with contextlib.suppress(WorkflowBusy), self._holding(wid):
                    self._recover_timer(wid, now)

    def _recover_timer(self, wid: str, now: float) -> None:
        record, task = self._state.get(wid), self._task(wid)
        if record is None or record.status not in _ACTIVE:
            return
        if task is not None and record.status == WorkflowStatus.RUNNING:
            self._state.set_timer_if_none(wid, TimerKind.DEADLINE, topics.stage_name(task.stage), task.attempt,
                                          _seconds(task.deadline))
        elif task is not None:
            self._state.set_timer_if_none(wid, TimerKind.RETRY, topics.stage_name(task.stage), task.attempt + 1, now)
        elif (spec := self._spec(record)) is not None:
            self._state.set_timer_if_none(wid, TimerKind.RETRY, topics.stage_name(spec.stages[0]), 1,
                                          now + self._settings.lease_s)

    def _fire(self, timer: Timer) -> None:
        """Act on a due timer whose workflow's lease this replica holds, if it still applies."""
        wid = timer.workflow_id
        record = self._state.get(wid)
        current = self._state.timer(wid)
        if record is None or record.status not in _ACTIVE or current != timer:
            if record is None or record.status not in _ACTIVE:
                self._state.clear_timer(wid)
            return
        stage = _STAGE_BY_NAME.get(timer.stage)
        if stage is None:
            log.error("workflow %s: timer for unknown stage %r dropped", wid, timer.stage)
            self._state.clear_timer(wid)
            return
        if timer.kind == TimerKind.RETRY:
            self._dispatch(wid, stage, attempt=timer.attempt)
            return
        task = self._task(wid)
        if (task is None or record.status != WorkflowStatus.RUNNING or task.attempt != timer.attempt
                or task.stage != stage):
            self._state.clear_timer(wid)
            return
        timeout = self._settings.timeout_s(timer.stage)
        reason = common_pb2.FailureReason(
            code=Code.DEADLINE_EXCEEDED, retryable=True,
            message=f"study {task.study.study_key}: {timer.stage} attempt {task.attempt} "
                    f"was not done within its timeout of {timeout:.0f} s")
        self._after_failure(task, reason)

    # -- internals -----------------------------------------------------------------------------------

    def _after_failure(self, task: tasks_pb2.TaskRequested, reason: common_pb2.FailureReason) -> None:
        wid, stage_name, attempt = task.workflow_id, topics.stage_name(task.stage), task.attempt
        code = Code.Code.Name(reason.code)
        if reason.retryable and attempt < self._settings.max_attempts:
            delay = self._settings.backoff_s(attempt)
            self._state.set_timer(wid, TimerKind.RETRY, stage_name, attempt + 1, time.time() + delay)
            detail = (f"{stage_name} attempt {attempt}/{self._settings.max_attempts} failed ({code}): "
                      f"{reason.message}; retrying in {delay:.1f} s")
            self._state.set_status(wid, WorkflowStatus.PENDING, stage=stage_name, detail=detail)
            log.warning("study %s: workflow %s: %s", task.study.study_key, wid, detail)
            metrics.TASKS_RETRIED.labels(_site(task.study), task.pipeline, stage_name, code).inc()
            return
        letter = publish_dead_letter(self._bus, task.stage, task.SerializeToString(), reason,
                                     source_topic=_task_topic(task), task=task, attempts=attempt)
        self._state.record_dead_letter(DeadLetterRecord(
            letter_id=new_letter_id(), kind=DeadLetterKind.TASK, workflow_id=wid, study_key=task.study.study_key,
            pipeline=task.pipeline, stage=stage_name, attempts=attempt, code=code, reason=reason.message,
            payload=letter.payload, created_at=time.time(), replayed_at=None))
        metrics.TASKS_DEAD_LETTERED.labels(_site(task.study), task.pipeline, stage_name, code).inc()
        if reason.retryable:
            status = WorkflowStatus.DEAD_LETTERED
            detail = f"{stage_name} gave up after {attempt} attempt(s) ({code}): {reason.message}"
        else:
            status = WorkflowStatus.FAILED
            detail = f"{stage_name} failed ({code}, not retryable): {reason.message}"
        self._state.set_status(wid, status, stage=stage_name, detail=detail)
        self._state.clear_timer(wid)
        self._records.delete(_task_key(wid))
        log.error("study %s: workflow %s %s: %s", task.study.study_key, wid, status.value, detail)
        self._dispatch_notice(task, reason)

    def _dispatch_notice(self, failed: tasks_pb2.TaskRequested, reason: common_pb2.FailureReason) -> None:
        """Ask the results stage for the failure notice of a workflow that has just failed, when its pipeline
        calls for one. Not recorded as the workflow's task: the workflow has ended; its answer only schedules
        the notice's delivery."""
        wid = failed.workflow_id
        raw, record = self._records.get(_ready_key(wid)), self._state.get(wid)
        spec = self._spec(record) if record is not None else None
        if raw is None or spec is None or not spec.notice_on_failure:
            return
        failure = tasks_pb2.FailureNotice(failed_stage=topics.stage_name(failed.stage), reason=reason.message,
                                          retryable=reason.retryable)
        self._request_notice(wid, events_pb2.StudyReady.FromString(raw), spec, failure)

    def on_routing_failed(self, failed: events_pb2.RoutingFailed) -> None:
        """A study ingest refused for a pipeline with ``notice_on_failure`` (e.g. glioma without the sequences
        the model needs) gets the failure notice too, as the embedded run's refusal does. No workflow is made:
        the notice is requested under the id of the work that was refused (the same refusal: the same id, so
        a repeated RoutingFailed is answered from the worker's record and delivered once)."""
        spec = self._pipelines.get(failed.pipeline)
        key = failed.study.study_key
        if spec is None or not spec.notice_on_failure or not key:
            return
        identity = f"{failed.reason}\x00{failed.message}".encode()
        wid = workflow_id(key, failed.pipeline, f"routing-failed-{hashlib.sha256(identity).hexdigest()[:16]}")
        ready = events_pb2.StudyReady(schema_version=topics.SCHEMA_VERSION, pipeline=failed.pipeline,
                                      study=failed.study, priority=common_pb2.PRIORITY_ROUTINE)
        failure = tasks_pb2.FailureNotice(failed_stage="routing", reason=failed.message, retryable=False)
        self._request_notice(wid, ready, spec, failure)

    def _request_notice(self, wid: str, ready: events_pb2.StudyReady, spec: PipelineSpec,
                        failure: tasks_pb2.FailureNotice) -> None:
        timeout = self._settings.timeout_s(topics.stage_name(common_pb2.STAGE_RESULTS))
        task = tasks_pb2.TaskRequested(
            schema_version=topics.SCHEMA_VERSION, workflow_id=wid, stage=common_pb2.STAGE_RESULTS, attempt=1,
            idempotency_key=notice_key(wid, failure), deadline=_timestamp(time.time() + timeout),
            study=ready.study, pipeline=ready.pipeline, priority=ready.priority)
        task.results.CopyFrom(notice_input(spec, ready, failure, destination=self._destination))
        self._bus.publish(_task_topic(task), ready.study.study_key, task.SerializeToString())
        log.info("study %s: %s failed at %s: failure notice requested from the results stage (%s)",
                 ready.study.study_key, ready.pipeline, failure.failed_stage, wid)

    def _on_notice_stored(self, done: tasks_pb2.TaskDone) -> None:
        """The results stage filed a failure notice: schedule its delivery (once)."""
        stored = done.results
        if not stored.sop_instance_uids or not stored.destination:
            return
        now = time.time()
        if self._state.enqueue_delivery(notice_workflow_id(done.workflow_id), stored.destination,
                                        study_key=done.study.study_key, pipeline=done.pipeline,
                                        stage=topics.stage_name(done.stage),
                                        sop_instance_uids=list(stored.sop_instance_uids), now=now,
                                        give_up_at=now + self._delivery_period_s):
            log.info("study %s: failure notice of %s (%d object(s)) scheduled for delivery to %s",
                     done.study.study_key, done.workflow_id, len(stored.sop_instance_uids), stored.destination)

    def _dispatch(self, wid: str, stage: common_pb2.Stage.ValueType, *, attempt: int) -> None:
        """Publish ``stage``'s task (attempt ``attempt``) of workflow ``wid``, then record it. Publishing
        first: a crash in between leads to the same task again (same idempotency key), never to none."""
        raw = self._records.get(_ready_key(wid))
        record = self._state.get(wid)
        if raw is None or record is None:
            log.error("workflow %s: no StudyReady or state recorded; cannot dispatch", wid)
            return
        ready = events_pb2.StudyReady.FromString(raw)
        spec = self._spec(record)
        if spec is None:
            return
        outputs = {s: tasks_pb2.TaskDone.FromString(data) for s in spec.stages
                   if (data := self._records.get(_done_key(wid, s))) is not None}
        stage_name = topics.stage_name(stage)
        timeout = self._settings.timeout_s(stage_name)
        task = tasks_pb2.TaskRequested(
            schema_version=topics.SCHEMA_VERSION, workflow_id=wid, stage=stage, attempt=attempt,
            idempotency_key=idempotency_key(wid, stage), deadline=_timestamp(time.time() + timeout),
            study=ready.study, pipeline=ready.pipeline, priority=ready.priority,
        )
        stage_input = build_input(stage, spec, ready, outputs, destination=self._destination)
        getattr(task, stage_name).CopyFrom(stage_input)
        self._bus.publish(_task_topic(task), ready.study.study_key, task.SerializeToString())
        self._records.put(_task_key(wid), task.SerializeToString())
        self._state.set_timer(wid, TimerKind.DEADLINE, stage_name, attempt, _seconds(task.deadline))
        self._state.set_status(wid, WorkflowStatus.RUNNING, stage=stage_name,
                               detail=f"{stage_name} attempt {attempt}/{self._settings.max_attempts} dispatched")
        log.info("study %s: workflow %s: %s attempt %d dispatched", ready.study.study_key, wid, stage_name,
                 attempt)

    @contextlib.contextmanager
    def _holding(self, wid: str) -> Iterator[None]:
        """Hold the workflow's lease for the block (WorkflowBusy while another replica holds it)."""
        if not self._state.acquire_workflow(wid, self.holder, time.time(), self._settings.lease_s):
            raise WorkflowBusy(f"workflow {wid} is being changed by another orchestrator replica")
        try:
            yield
        finally:
            self._state.release_workflow(wid, self.holder)

    def _schedule_delivery(self, record: WorkflowRecord, stage: common_pb2.Stage.ValueType, uids: list[str],
                           destination: str) -> None:
        """Put the stored objects in the delivery outbox (once per workflow and destination)."""
        if not uids or not destination:
            return
        now = time.time()
        if self._state.enqueue_delivery(record.workflow_id, destination, study_key=record.study_key,
                                        pipeline=record.pipeline, stage=topics.stage_name(stage),
                                        sop_instance_uids=uids, now=now, give_up_at=now + self._delivery_period_s):
            log.info("study %s: workflow %s: %d object(s) scheduled for delivery to %s", record.study_key,
                     record.workflow_id, len(uids), destination)

    def _current(self, wid: str, stage: common_pb2.Stage.ValueType, what: str) -> WorkflowRecord | None:
        """The workflow's record when ``stage`` is the stage it is at and it is still active; None (and a
        log line) for an answer about another stage or a finished workflow (a duplicate or a late one)."""
        record = self._state.get(wid)
        stage_name = topics.stage_name(stage) if stage in topics.STAGES else str(stage)
        if record is None or record.status not in _ACTIVE or record.stage != stage_name:
            log.info("%s for %s of workflow %s ignored: the workflow is %s at %s", what, stage_name, wid,
                     record.status if record else "unknown", record.stage if record else "-")
            return None
        return record

    def _observe_delivered(self, wid: str, done: tasks_pb2.TaskDone) -> None:
        """Count the delivered result and its end-to-end time: from the StudyReady's ready_at less the
        wait window (when ingest last saw an instance of the study, at the earliest) to now."""
        site, pipeline = _site(done.study), done.pipeline
        metrics.RESULTS_DELIVERED.labels(site, pipeline).inc()
        raw = self._records.get(_ready_key(wid))
        ready = events_pb2.StudyReady.FromString(raw) if raw is not None else None
        if ready is not None and ready.HasField("ready_at"):
            waited = time.time() - _seconds(ready.ready_at) + self._last_instance_lead_s
            metrics.END_TO_END.labels(site, pipeline).observe(max(0.0, waited))

    def _spec(self, record: WorkflowRecord) -> PipelineSpec | None:
        spec = self._pipelines.get(record.pipeline)
        if spec is None:
            log.error("workflow %s: pipeline %r is not run by this orchestrator", record.workflow_id,
                      record.pipeline)
        return spec

    def _task(self, wid: str) -> tasks_pb2.TaskRequested | None:
        raw = self._records.get(_task_key(wid))
        return None if raw is None else tasks_pb2.TaskRequested.FromString(raw)


def _finished_detail(done: tasks_pb2.TaskDone) -> dict[str, object]:
    """The audit record of a stage's answer: which stage, attempt and time, and the model that made it."""
    detail: dict[str, object] = {"workflow_id": done.workflow_id, "stage": topics.stage_name(done.stage),
                                 "attempt": done.attempt, "duration_s": round(done.duration_s, 3),
                                 "worker": done.worker or "?"}
    kind = done.WhichOneof("output")
    output = getattr(done, kind) if kind else None
    if output is not None and "model" in output.DESCRIPTOR.fields_by_name and output.HasField("model"):
        detail["model"] = f"{output.model.name}:{output.model.version}"
    return detail


def _longitudinal_detail(output: tasks_pb2.LongitudinalOutput) -> str:
    """What a change pipeline's workflow ended with, for the state store's detail."""
    if output.outcome == tasks_pb2.LongitudinalOutput.WAITING_FOR_PRIOR:
        until = datetime.fromtimestamp(_seconds(output.waiting_until), UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"no prior yet: waiting for one until {until} (a prior that arrives triggers the comparison)"
    if output.outcome == tasks_pb2.LongitudinalOutput.NO_PRIOR:
        return "no prior within the deadline: run without one, as the report says"
    if output.outcome == tasks_pb2.LongitudinalOutput.NOT_COMPARED:
        return f"not compared: {output.reason}"
    return (f"compared with the prior: {len(output.sop_instance_uids)} result object(s) stored"
            + (f"; delivery to {output.destination} scheduled" if output.destination else ""))


def notice_key(wid: str, failure: tasks_pb2.FailureNotice) -> str:
    """The idempotency key of a workflow's failure notice task: the same failure gives the same key (a
    redelivery is answered from the worker's record), another failure after a replay a new one."""
    digest = hashlib.sha256(failure.SerializeToString(deterministic=True)).hexdigest()[:16]
    return f"{wid}.notice.{digest}"


def is_notice_key(wid: str, key: str) -> bool:
    return key.startswith(f"{wid}.notice.")


def ready_record_key(wid: str) -> str:
    """Record-store key of the StudyReady that started workflow ``wid``."""
    return _ready_key(wid)


def _task_topic(task: tasks_pb2.TaskRequested) -> str:
    if task.priority == common_pb2.PRIORITY_URGENT:
        return topics.urgent_task_topic(task.stage)
    return topics.task_topic(task.stage)


def _site(study: common_pb2.StudyRef) -> str:
    return study.site or metrics.UNKNOWN


def _ready_key(wid: str) -> str:
    return f"workflows/{wid}/study-ready"


def _task_key(wid: str) -> str:
    return f"workflows/{wid}/task"


def _done_key(wid: str, stage: common_pb2.Stage.ValueType) -> str:
    return f"workflows/{wid}/done.{topics.stage_name(stage)}"


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromtimestamp(seconds, UTC))
    return stamp


def _seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9
