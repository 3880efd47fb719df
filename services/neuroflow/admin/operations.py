"""What an operator does to the work in the state database: list, inspect and replay dead letters; see the
studies with their status per stage, and one study's history; run a study version again; cancel a study's
unfinished work; pause and resume a pipeline.

Each operation returns plain data (dicts and lists of JSON types), printed as a table or as JSON by
``admin.cli``. Studies are named by their pseudonymous key, never by UIDs. An operation that cannot be
done says why (``AdminRefused``), changing nothing.

Replays never make a second result of work already delivered: a task's dead letter is replayed only while
its workflow is DEAD_LETTERED or FAILED and none of its results was delivered, a delivery's only while it
was given up; a letter is replayed once (marked in the same database). A re-run, by contrast, is asked for
on purpose: it starts a new workflow of the study's latest version, whose result objects have the same
SOP Instance UIDs as before (they follow from the series and the model), so the PACS replaces them.
"""

from __future__ import annotations

import getpass
import re
import socket
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from neuroflow.core import identity, topics
from neuroflow.core.audit import OPERATIONS_CHAIN, AuditAction
from neuroflow.core.bus import MessageBus
from neuroflow.core.errors import NeuroflowError
from neuroflow.core.records import RecordStore
from neuroflow.core.state import (
    ALLOWED_TRANSITIONS,
    SqlStateStore,
    WorkflowRecord,
    WorkflowStatus,
    notice_workflow_id,
)
from neuroflow.core.state_schedules import (
    RETRACTION_STAGE,
    DeadLetterKind,
    DeadLetterRecord,
    Delivery,
    DeliveryStatus,
    TimerKind,
)
from neuroflow.orchestrator.orchestrator import ready_record_key, workflow_id
from neuroflow.proto.neuroflow.v1 import events_pb2, tasks_pb2

Store = SqlStateStore[Any]
Row = dict[str, Any]
_RERUN = "+rerun"  # a re-run's input hash: the original's, this, and a number


class AdminRefused(NeuroflowError):
    """The operation cannot be done (unknown id, already replayed, already delivered...): nothing changed."""


def operator() -> str:
    """Who an operation is recorded as in the audit trail: the operator's account on this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container's arbitrary user)
        user = "unknown"
    return f"admin/{user}@{socket.gethostname()}"


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


# -- dead letters ----------------------------------------------------------------------------------------


def list_dead_letters(store: Store, *, include_replayed: bool = False) -> list[Row]:
    """The dead letters waiting for an operator (with ``include_replayed``, also those replayed), oldest first."""
    return [_letter_row(letter) for letter in store.dead_letters(include_replayed=include_replayed)]


def show_dead_letter(store: Store, letter_id: str) -> Row:
    """One dead letter, with its workflow's status and deliveries, and what a replay would do."""
    letter = _letter(store, letter_id)
    row = _letter_row(letter)
    record = store.get(letter.workflow_id)
    row["workflow_status"] = record.status.value if record else None
    row["workflow_detail"] = record.detail if record else None
    row["deliveries"] = [_delivery_row(d) for d in store.deliveries(workflow_id=letter.workflow_id)]
    if letter.payload:
        task = tasks_pb2.TaskRequested.FromString(letter.payload)
        row["task"] = {"stage": topics.stage_name(task.stage), "attempt": task.attempt,
                       "priority": task.priority, "idempotency_key": task.idempotency_key}
    try:
        _check_replayable(store, letter)
        row["replayable"], row["why"] = True, "a replay runs it again"
    except AdminRefused as refused:
        row["replayable"], row["why"] = False, str(refused)
    return row


def replay_dead_letter(store: Store, letter_id: str, *, delivery_period_s: float, now: float | None = None,
                       actor: str | None = None) -> Row:
    """Run the dead-lettered work again: a task's stage is scheduled for a running orchestrator to dispatch
    (attempt 1 again), a given-up delivery is offered to the PACS again for ``delivery_period_s``. ``actor``:
    who the audit trail names (default: ``operator()``, this host's account; the console names its user)."""
    now = time.time() if now is None else now
    actor = actor or operator()
    letter = _letter(store, letter_id)
    _check_replayable(store, letter)
    if not store.mark_replayed(letter.letter_id, now):
        raise AdminRefused(f"dead letter {letter_id} was replayed already")
    if letter.kind == DeadLetterKind.DELIVERY:
        until = now + delivery_period_s
        retraction = letter.stage == RETRACTION_STAGE  # a retraction notice never accepted, not the result
        owed = (store.retractions(workflow_id=letter.workflow_id) if retraction
                else store.deliveries(workflow_id=letter.workflow_id))
        reopened = [d.destination for d in owed if d.status == DeliveryStatus.GAVE_UP
                    and store.reopen_delivery(d.workflow_id, d.destination, now=now, give_up_at=until,
                                              retraction=retraction)]
        store.audit_append(letter.study_key, AuditAction.REPLAYED,
                           {"letter_id": letter_id, "workflow_id": letter.workflow_id, "kind": letter.kind.value,
                            "destinations": reopened}, actor=actor)
        return {"letter_id": letter_id, "workflow_id": letter.workflow_id, "study_key": letter.study_key,
                "replayed": f"delivery to {', '.join(reopened)} scheduled again"}
    store.set_status(letter.workflow_id, WorkflowStatus.PENDING, stage=letter.stage,
                     detail=f"replayed by an operator from dead letter {letter_id}: {letter.stage} again",
                     actor=actor)
    store.audit_append(letter.study_key, AuditAction.REPLAYED,
                       {"letter_id": letter_id, "workflow_id": letter.workflow_id, "kind": letter.kind.value,
                        "stage": letter.stage}, actor=actor)
    store.set_timer(letter.workflow_id, TimerKind.RETRY, letter.stage, 1, now)
    return {"letter_id": letter_id, "workflow_id": letter.workflow_id, "study_key": letter.study_key,
            "replayed": f"{letter.stage} scheduled again (attempt 1); a running orchestrator dispatches it"}


def _check_replayable(store: Store, letter: DeadLetterRecord) -> None:
    if letter.replayed_at is not None:
        raise AdminRefused(f"dead letter {letter.letter_id} was replayed already, at {iso(letter.replayed_at)}")
    deliveries = store.deliveries(workflow_id=letter.workflow_id)
    delivered = [d.destination for d in deliveries if d.status == DeliveryStatus.DELIVERED]
    if letter.kind == DeadLetterKind.DELIVERY:
        owed = store.retractions(workflow_id=letter.workflow_id) if letter.stage == RETRACTION_STAGE else deliveries
        withheld = [d.destination for d in owed if d.status == DeliveryStatus.WITHHELD]
        if withheld and not any(d.status == DeliveryStatus.GAVE_UP for d in owed):
            raise AdminRefused(f"workflow {letter.workflow_id} of study {letter.study_key}: its result was rejected "
                               f"in review and withheld from {', '.join(withheld)}; it is not sent again")
        if not any(d.status == DeliveryStatus.GAVE_UP for d in owed):
            raise AdminRefused(f"workflow {letter.workflow_id} has no given-up {letter.stage} delivery to replay"
                               + (f" (delivered to {', '.join(delivered)})" if delivered else ""))
        return
    if delivered:
        raise AdminRefused(f"workflow {letter.workflow_id} of study {letter.study_key}: its results were delivered "
                           f"to {', '.join(delivered)} already; a replay would make a second result")
    record = store.get(letter.workflow_id)
    if record is None:
        raise AdminRefused(f"workflow {letter.workflow_id} of dead letter {letter.letter_id} is not in the state "
                           "database")
    if record.status not in (WorkflowStatus.DEAD_LETTERED, WorkflowStatus.FAILED):
        raise AdminRefused(f"workflow {letter.workflow_id} of study {letter.study_key} is {record.status.value}: "
                           "only dead-lettered or failed work is replayed")


def _letter(store: Store, letter_id: str) -> DeadLetterRecord:
    letter = store.dead_letter(letter_id)
    if letter is None:
        raise AdminRefused(f"no dead letter {letter_id!r} (see `neuroflow admin dead-letters list`)")
    return letter


def _letter_row(letter: DeadLetterRecord) -> Row:
    return {"letter_id": letter.letter_id, "kind": letter.kind.value, "study_key": letter.study_key,
            "pipeline": letter.pipeline, "workflow_id": letter.workflow_id, "stage": letter.stage,
            "attempts": letter.attempts, "code": letter.code, "reason": letter.reason,
            "created_at": iso(letter.created_at), "replayed_at": iso(letter.replayed_at)}


# -- studies and their history ---------------------------------------------------------------------------


def list_studies(store: Store) -> list[Row]:
    """Every study with its workflows: status, the stages done (with their seconds) and the stage it is at,
    and the delivery of its results."""
    deliveries: dict[str, list[Delivery]] = {}
    for delivery in store.deliveries():
        deliveries.setdefault(delivery.workflow_id, []).append(delivery)
    studies: dict[str, list[Row]] = {}
    for record in store.list():
        studies.setdefault(record.study_key, []).append(_workflow_row(record, deliveries.get(record.workflow_id, [])))
    return [{"study_key": key, "workflows": rows} for key, rows in studies.items()]


def study_history(store: Store, study_key: str, *, actor: str | None = None) -> Row:
    """A study's history: each workflow's status changes, attempts, timer, deliveries and dead letters (the
    reading is recorded in the study's audit trail, as ``actor``: default ``operator()``)."""
    records = [r for r in store.list() if r.study_key == study_key]
    if not records:
        raise AdminRefused(f"no workflow of study {study_key!r} (see `neuroflow admin studies`)")
    workflows = []
    for record in records:
        deliveries = store.deliveries(workflow_id=record.workflow_id)
        row = _workflow_row(record, deliveries)
        row["events"] = [{"at": iso(e.at), "status": e.status, "stage": e.stage, "detail": e.detail}
                         for e in store.workflow_events(record.workflow_id)]
        timer = store.timer(record.workflow_id)
        row["timer"] = None if timer is None else {"kind": timer.kind.value, "stage": timer.stage,
                                                   "attempt": timer.attempt, "due_at": iso(timer.due_at)}
        row["deliveries"] = [_delivery_row(d) for d in deliveries]
        row["dead_letters"] = [_letter_row(d) for d in store.dead_letters(include_replayed=True,
                                                                           workflow_id=record.workflow_id)]
        workflows.append(row)
    store.audit_append(study_key, AuditAction.VIEWED, {"what": "history"}, actor=actor or operator())
    return {"study_key": study_key, "workflows": workflows}


def _workflow_row(record: WorkflowRecord, deliveries: list[Delivery]) -> Row:
    stages: dict[str, str] = {stage: f"done in {seconds:.1f} s" for stage, seconds in record.stage_seconds.items()}
    if record.stage and record.status != WorkflowStatus.SUCCEEDED:
        stages[record.stage] = record.status.value
    return {"workflow_id": record.workflow_id, "pipeline": record.pipeline, "input_hash": record.input_hash,
            "status": record.status.value, "stage": record.stage, "detail": record.detail, "stages": stages,
            "delivery": ", ".join(f"{d.destination}: {d.status.value}" for d in deliveries) or None,
            "created_at": record.created_at.isoformat(timespec="seconds"),
            "updated_at": record.updated_at.isoformat(timespec="seconds")}


def _delivery_row(delivery: Delivery) -> Row:
    return {"destination": delivery.destination, "status": delivery.status.value, "objects":
            len(delivery.sop_instance_uids), "attempts": delivery.attempts, "last_error": delivery.last_error,
            "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == DeliveryStatus.PENDING else None,
            "give_up_at": iso(delivery.give_up_at), "delivered_at": iso(delivery.delivered_at)}


# -- re-running a study version --------------------------------------------------------------------------


def rerun_study(store: Store, records: RecordStore, bus: MessageBus, study_key: str,
                pipeline: str | None = None, *, actor: str | None = None) -> list[Row]:
    """Start again the latest version of the study (of ``pipeline``, else of each of its pipelines): its
    StudyReady is published again under a new input hash (the original's plus ``+rerun<n>``), so the
    orchestrator makes it a new workflow rather than ignoring it as a duplicate."""
    records_of_study = [r for r in store.list() if r.study_key == study_key
                        and (pipeline is None or r.pipeline == pipeline)]
    if not records_of_study:
        raise AdminRefused(f"no workflow of study {study_key!r}" + (f" for pipeline {pipeline!r}" if pipeline else ""))
    latest: dict[str, WorkflowRecord] = {}
    for record in records_of_study:  # oldest first: the last one of each pipeline is its latest version
        latest[record.pipeline] = record
    started = []
    for name, record in sorted(latest.items()):
        raw = records.get(ready_record_key(record.workflow_id))
        if raw is None:
            raise AdminRefused(f"workflow {record.workflow_id} of study {study_key}: its StudyReady is not in the "
                               "record store; re-send the study from the PACS instead")
        ready = events_pb2.StudyReady.FromString(raw)
        base = ready.input_hash.split(_RERUN)[0]
        earlier = sum(1 for r in records_of_study if r.pipeline == name and r.input_hash.startswith(base + _RERUN))
        ready.input_hash = f"{base}{_RERUN}{earlier + 1}"
        bus.publish(topics.STUDY_READY, study_key, ready.SerializeToString())
        started.append({"study_key": study_key, "pipeline": name, "rerun_of": record.workflow_id,
                        "workflow_id": workflow_id(study_key, name, ready.input_hash)})
        store.audit_append(study_key, AuditAction.RERUN_REQUESTED, started[-1], actor=actor or operator())
    return started


# -- cancelling a study's work ---------------------------------------------------------------------------

CANCEL_LEASE_S = 30.0  # how long a cancel holds a workflow's lease (it takes a few statements)
CANCEL_WAIT_S = 10.0  # how long it waits for an orchestrator replica changing the workflow to let go


def cancel_study(store: Store, study_key: str, pipeline: str | None = None, *, actor: str | None = None,
                 now: float | None = None) -> list[Row]:
    """Cancel the study's unfinished or failed workflows (of ``pipeline``, else all): each becomes CANCELLED,
    so no orchestrator dispatches it again and a task answer that comes late is ignored; its deliveries not
    yet sent (a failure notice's too) are WITHHELD, as a rejection's are. The workflow's lease is held
    meanwhile, so no orchestrator replica changes it halfway. A workflow that SUCCEEDED is not cancelled (its
    result is withdrawn by rejecting it in review, which retracts it from the PACS)."""
    actor = actor or operator()
    records = [r for r in store.of_study(study_key) if pipeline is None or r.pipeline == pipeline]
    if not records:
        raise AdminRefused(f"no workflow of study {study_key!r}" + (f" for pipeline {pipeline!r}" if pipeline else ""))
    cancellable = [r for r in records if WorkflowStatus.CANCELLED in ALLOWED_TRANSITIONS[r.status]]
    if not cancellable:
        raise AdminRefused(f"study {study_key}: nothing to cancel; its workflows are "
                           + ", ".join(f"{r.pipeline} {r.status.value}" for r in records))
    return [_cancel(store, record, actor, time.time() if now is None else now) for record in cancellable]


def _cancel(store: Store, record: WorkflowRecord, actor: str, now: float) -> Row:
    wid = record.workflow_id
    deadline = time.monotonic() + CANCEL_WAIT_S
    while not store.acquire_workflow(wid, actor, time.time(), CANCEL_LEASE_S):
        if time.monotonic() > deadline:
            raise AdminRefused(f"workflow {wid} of study {record.study_key} is being changed by an orchestrator "
                               f"replica that did not let go within {CANCEL_WAIT_S:.0f} s; try again")
        time.sleep(0.1)
    try:
        current = store.get(wid)
        if current is None or WorkflowStatus.CANCELLED not in ALLOWED_TRANSITIONS[current.status]:
            return {"workflow_id": wid, "pipeline": record.pipeline, "cancelled": False,
                    "status": current.status.value if current else "deleted"}
        reason = f"withheld: the workflow was cancelled by {actor}"
        withheld = sorted({*store.withhold_deliveries(wid, reason, now=now),
                           *store.withhold_deliveries(notice_workflow_id(wid), reason, now=now)})
        # The status change is the audit record ("cancelled", naming ``actor``), its detail what was withheld.
        store.set_status(wid, WorkflowStatus.CANCELLED, stage=current.stage, detail=f"cancelled by {actor}"
                         + (f"; delivery to {', '.join(withheld)} withheld" if withheld else ""), actor=actor)
        store.clear_timer(wid)
        return {"workflow_id": wid, "pipeline": record.pipeline, "cancelled": True, "was": current.status.value,
                "stage": current.stage, "deliveries_withheld": withheld}
    finally:
        store.release_workflow(wid, actor)


# -- pausing a pipeline ----------------------------------------------------------------------------------


def list_pipelines(store: Store, known: Collection[str]) -> list[Row]:
    """The pipelines (``known``: the configured ones; any paused one too) and who paused each, when."""
    paused = store.paused_pipelines()
    return [{"pipeline": name, "paused_by": paused[name][0] if name in paused else None,
             "paused_at": iso(paused[name][1]) if name in paused else None,
             "waiting": sum(1 for r in store.list(WorkflowStatus.PENDING) if r.pipeline == name)}
            for name in sorted({*known, *paused})]


def pause_pipeline(store: Store, pipeline: str, *, known: Collection[str], actor: str | None = None,
                   now: float | None = None) -> Row:
    """Dispatch nothing of ``pipeline`` (one of ``known``, the site's) until resumed: its new studies wait as
    PENDING workflows (none is lost); a task in flight completes. Recorded in the site's operations chain of
    the audit trail."""
    if pipeline not in known:
        raise AdminRefused(f"pipeline {pipeline!r} is not one of this site's ({', '.join(sorted(known))})")
    actor = actor or operator()
    changed = store.pause_pipeline(pipeline, by=actor, now=time.time() if now is None else now)
    if changed:
        store.audit_append(OPERATIONS_CHAIN, AuditAction.PIPELINE_PAUSED, {"pipeline": pipeline}, actor=actor)
    return {"pipeline": pipeline, "paused": True, "changed": changed}


def resume_pipeline(store: Store, pipeline: str, *, actor: str | None = None) -> Row:
    """Dispatch ``pipeline``'s waiting workflows again (at a running orchestrator's next tick)."""
    actor = actor or operator()
    changed = store.resume_pipeline(pipeline)
    if changed:
        store.audit_append(OPERATIONS_CHAIN, AuditAction.PIPELINE_RESUMED, {"pipeline": pipeline}, actor=actor)
    return {"pipeline": pipeline, "paused": False, "changed": changed}


# -- the audit trail -------------------------------------------------------------------------------------

_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")  # a DICOM UID (digits and dots); a study key is hex


def resolve_study(study: str) -> str:
    """The study's pseudonymous key from its key or its StudyInstanceUID (keyed with this site's secret)."""
    return identity.study_key(study) if _UID.match(study) else study


def audit_trail(store: Store, study: str) -> Row:
    """The study's audit trail, oldest first, and whether its hash chain is intact (``chain``: "intact", or
    the first record that does not fit and why). The reading itself is recorded (``viewed``)."""
    key = resolve_study(study)
    records = store.audit_records(key)
    if not records:
        raise AdminRefused(f"no audit record of study {key!r}")
    check = store.audit_verify(key)
    # After reading: the trail shown ends before this view, which the next reading shows.
    store.audit_append(key, AuditAction.VIEWED, {"what": "audit trail"}, actor=operator())
    return {"study_key": key, "intact": check.intact, "broken_at": check.broken_at,
            "chain": "intact" if check.intact else f"BROKEN at record {check.broken_at}: {check.problem}",
            "records": [{"seq": r.seq, "at": r.at, "action": r.action, "actor": r.actor, "detail": r.fields(),
                         "hash": r.hash[:16]} for r in records]}
