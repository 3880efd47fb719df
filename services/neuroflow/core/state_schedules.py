"""What must survive any one process and be done by exactly one of several replicas, kept in the workflow
state database beside the workflows (the statements are written once for SQLite and PostgreSQL and mixed
into ``core.state.SqlStateStore``):

* **workflow timers**: the retry scheduled for a workflow, or the deadline of its task in flight (one per
  workflow). The row is also the workflow's *lease*: an orchestrator replica holds it while it changes the
  workflow (handling an answer or firing the timer), so two replicas never move one workflow at once, and
  a replica killed while holding it is replaced once the lease has expired.
* **deliveries** (the outbox): result objects stored at the site that must reach the destination PACS,
  with their schedule (next attempt, attempts, last error) until the PACS accepted them or the delivery
  period ran out. A replica claims a due delivery with a lease, so each is sent by one replica at a time.
* **dead letters**: work given up on, with the reason, for an operator to list, inspect and replay.
* **workflow events**: every status a workflow took, for a study's history.

Claims are one conditional UPDATE (``... WHERE lease expired``), like the ingest wait window's: the
database makes exactly one caller win. Times are seconds since the epoch (``time.time()``) of the caller.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import socket
import uuid
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from neuroflow.core.audit import AuditAction, AuditStatements
from neuroflow.core.config import PIPELINE_VARIANT_OF

# The outbox's columns: the deliveries of results and the retractions of rejected ones share them (and the
# delivery loop that works both).
_OUTBOX_COLUMNS = """
        workflow_id       TEXT NOT NULL,
        destination       TEXT NOT NULL,
        study_key         TEXT NOT NULL,
        pipeline          TEXT NOT NULL,
        stage             TEXT NOT NULL,
        sop_instance_uids TEXT NOT NULL,
        status            TEXT NOT NULL,
        attempts          INTEGER NOT NULL DEFAULT 0,
        next_attempt_at   {real} NOT NULL,
        give_up_at        {real} NOT NULL,
        last_error        TEXT NOT NULL DEFAULT '',
        created_at        {real} NOT NULL,
        delivered_at      {real},
        holder            TEXT,
        lease_until       {real} NOT NULL DEFAULT 0,
        PRIMARY KEY (workflow_id, destination)
    )"""

# The tables, created by SqlStateStore's migration ({real}: the backend's floating-point column type).
SCHEDULE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS workflow_timers (
        workflow_id TEXT PRIMARY KEY,
        kind        TEXT,
        stage       TEXT,
        attempt     INTEGER NOT NULL DEFAULT 0,
        due_at      {real},
        holder      TEXT,
        lease_until {real} NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS workflow_timers_due ON workflow_timers (due_at)",
    "CREATE TABLE IF NOT EXISTS deliveries (" + _OUTBOX_COLUMNS,
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        letter_id   TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        workflow_id TEXT NOT NULL,
        study_key   TEXT NOT NULL,
        pipeline    TEXT NOT NULL,
        stage       TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        code        TEXT NOT NULL,
        reason      TEXT NOT NULL,
        payload     TEXT NOT NULL DEFAULT '',
        created_at  {real} NOT NULL,
        replayed_at {real}
    )""",
    """CREATE TABLE IF NOT EXISTS workflow_events (
        workflow_id TEXT NOT NULL,
        at          {real} NOT NULL,
        status      TEXT NOT NULL,
        stage       TEXT,
        detail      TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS workflow_events_workflow ON workflow_events (workflow_id, at)",
    # A destination an operator paused: its deliveries wait (none is claimed, none gives up) until resumed.
    """CREATE TABLE IF NOT EXISTS paused_destinations (
        destination TEXT PRIMARY KEY,
        paused_by   TEXT NOT NULL,
        paused_at   {real} NOT NULL
    )""",
    # A pipeline an operator paused: its workflows' dispatches wait (their retry timers are not claimed; a new
    # study's workflow is created and waits on one) until resumed. A task in flight completes.
    """CREATE TABLE IF NOT EXISTS paused_pipelines (
        pipeline    TEXT PRIMARY KEY,
        paused_by   TEXT NOT NULL,
        paused_at   {real} NOT NULL
    )""",
    # A result a radiologist rejected after it reached a destination: a superseding retraction notice is owed
    # there. The outbox's shape (sop_instance_uids: the delivered objects it supersedes; delivered_at: when
    # the destination accepted the notice), worked by the same delivery loop with the same guarantees.
    "CREATE TABLE IF NOT EXISTS retractions (" + _OUTBOX_COLUMNS,
)

RETRACTION_STAGE = "retraction"  # the stage of a retraction's outbox row: a Delivery of the superseding notice
# The stage of a correction's outbox row (in ``deliveries``, under ``correction_workflow_id``): a result accepted
# with components removed; its objects are those it corrects until it is delivered, then the corrected objects
# the delivery loop built and sent (what a later retraction of the result supersedes there).
CORRECTION_STAGE = "correction"
_CORRECTION = ".correction."
# The rows of a result to one destination, in a statement on ``{outer}`` (a retraction or delivery row): its
# delivery and every correction's (its one parameter: _CORRECTIONS). A LIKE prefix: workflow ids are generated
# (hex, dashes), never user text.
_OF_RESULT = ("(d.workflow_id = {outer}.workflow_id OR d.workflow_id LIKE {outer}.workflow_id || ?) "
              "AND d.destination = {outer}.destination")
_CORRECTIONS = _CORRECTION + "%"  # a parameter: psycopg takes no literal % in a statement
_IN_FLIGHT = "d.status = ? AND d.holder IS NOT NULL AND d.lease_until >= ?"  # PENDING, now: a replica sends it


def correction_workflow_id(workflow_id: str, review_id: str) -> str:
    """The id a review's correction of the workflow's result is delivered under (deleted with the workflow)."""
    return f"{workflow_id}{_CORRECTION}{review_id}"


def review_of_correction(correction_workflow: str) -> str:
    """The review a correction's delivery carries out."""
    return correction_workflow.rsplit(_CORRECTION, 1)[-1]


def result_workflow(workflow_id: str) -> str:
    """The workflow whose result a delivery carries: a correction's, the workflow it corrects."""
    return workflow_id.split(_CORRECTION, 1)[0]


class TimerKind(StrEnum):
    RETRY = "retry"  # dispatch ``stage`` attempt ``attempt`` at ``due_at``
    DEADLINE = "deadline"  # ``stage`` attempt ``attempt`` is in flight; it has failed if not done by ``due_at``


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"  # not yet accepted by the destination; tried again at next_attempt_at
    DELIVERED = "DELIVERED"  # the destination accepted every object: never sent again
    GAVE_UP = "GAVE_UP"  # the delivery period ran out; dead-lettered, an operator may replay it
    # Stopped because a radiologist rejected the result: never sent, and no replay reopens it (a replay
    # reopens GAVE_UP only), so a rejected result cannot reach the PACS by an operator's replay.
    WITHHELD = "WITHHELD"


class DeadLetterKind(StrEnum):
    TASK = "task"  # a stage's task: retries exhausted, or a failure that is not retryable
    DELIVERY = "delivery"  # results stored at the site that the destination never accepted in time
    # (also a retraction notice never accepted: its stage is RETRACTION_STAGE)


@dataclass(frozen=True)
class Timer:
    workflow_id: str
    kind: TimerKind
    stage: str
    attempt: int
    due_at: float


@dataclass(frozen=True)
class Delivery:
    workflow_id: str
    destination: str
    study_key: str
    pipeline: str
    stage: str  # the stage that stored the objects (results, longitudinal)
    sop_instance_uids: tuple[str, ...]
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    give_up_at: float
    last_error: str
    created_at: float
    delivered_at: float | None


@dataclass(frozen=True)
class DeadLetterRecord:
    letter_id: str
    kind: DeadLetterKind
    workflow_id: str
    study_key: str
    pipeline: str
    stage: str
    attempts: int
    code: str  # FailureReason code name
    reason: str  # for a person: names the study by its key, never UIDs
    payload: bytes  # the parked message (a TaskRequested), b"" for a delivery
    created_at: float
    replayed_at: float | None


@dataclass(frozen=True)
class WorkflowEvent:
    workflow_id: str
    at: float
    status: str
    stage: str | None
    detail: str


_T = TypeVar("_T")

_DELIVERY_COLUMNS = ("workflow_id, destination, study_key, pipeline, stage, sop_instance_uids, status, attempts, "
                     "next_attempt_at, give_up_at, last_error, created_at, delivered_at")
_LETTER_COLUMNS = ("letter_id, kind, workflow_id, study_key, pipeline, stage, attempts, code, reason, payload, "
                   "created_at, replayed_at")


class ScheduleStatements(AuditStatements):
    """The statements on those tables; SqlStateStore supplies the connection and placeholders."""

    @abstractmethod
    def _run(self, work: Callable[[Any], _T], *, idempotent: bool, what: str, transaction: bool = True) -> _T: ...

    @abstractmethod
    def _sql(self, sql: str) -> str: ...

    def _rows(self, sql: str, parameters: tuple[Any, ...] = ()) -> builtins.list[Any]:
        # Through the reconnecting runner: a read is run again on a new connection after a restart; a write
        # only when its COMMIT was never sent (a claim applied twice would answer wrongly).
        return self._run(lambda db: list(db.execute(self._sql(sql), parameters).fetchall()),
                         idempotent=_is_read(sql), what="schedules")

    def _changed(self, sql: str, parameters: tuple[Any, ...]) -> bool:
        return self._run(lambda db: bool(db.execute(self._sql(sql), parameters).rowcount > 0),
                         idempotent=False, what="schedules")

    # -- workflow leases and timers ------------------------------------------------------------------

    def acquire_workflow(self, workflow_id: str, holder: str, now: float, lease_s: float) -> bool:
        """Hold the workflow's lease until ``now + lease_s`` (or renew it); False while another holder's
        lease runs."""
        return self._changed(
            "INSERT INTO workflow_timers (workflow_id, holder, lease_until) VALUES (?, ?, ?) "
            "ON CONFLICT (workflow_id) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until "
            "WHERE workflow_timers.holder IS NULL OR workflow_timers.lease_until < ? OR workflow_timers.holder = ?",
            (workflow_id, holder, now + lease_s, now, holder))

    def release_workflow(self, workflow_id: str, holder: str) -> None:
        """Give the lease up (nothing when ``holder`` no longer holds it)."""
        self._changed("UPDATE workflow_timers SET holder = NULL, lease_until = 0 WHERE workflow_id = ? AND holder = ?",
                      (workflow_id, holder))

    def set_timer(self, workflow_id: str, kind: TimerKind, stage: str, attempt: int, due_at: float) -> None:
        """Replace the workflow's timer (its lease, if held, is kept)."""
        self._changed(
            "INSERT INTO workflow_timers (workflow_id, kind, stage, attempt, due_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (workflow_id) DO UPDATE SET kind = excluded.kind, stage = excluded.stage, "
            "attempt = excluded.attempt, due_at = excluded.due_at",
            (workflow_id, TimerKind(kind).value, stage, attempt, due_at))

    def set_timer_if_none(self, workflow_id: str, kind: TimerKind, stage: str, attempt: int, due_at: float) -> bool:
        """Set the timer only when the workflow has none; True when set."""
        return self._changed(
            "INSERT INTO workflow_timers (workflow_id, kind, stage, attempt, due_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (workflow_id) DO UPDATE SET kind = excluded.kind, stage = excluded.stage, "
            "attempt = excluded.attempt, due_at = excluded.due_at WHERE workflow_timers.kind IS NULL",
            (workflow_id, TimerKind(kind).value, stage, attempt, due_at))

    def clear_timer(self, workflow_id: str) -> None:
        """The workflow waits for nothing (finished, or its next step is in hand)."""
        self._changed("UPDATE workflow_timers SET kind = NULL, stage = NULL, due_at = NULL WHERE workflow_id = ?",
                      (workflow_id,))

    def timer(self, workflow_id: str) -> Timer | None:
        rows = self._rows("SELECT workflow_id, kind, stage, attempt, due_at FROM workflow_timers "
                          "WHERE workflow_id = ? AND kind IS NOT NULL", (workflow_id,))
        return _timer(rows[0]) if rows else None

    def timers(self, kind: TimerKind | None = None) -> builtins.list[Timer]:
        where, parameters = ("kind = ?", (TimerKind(kind).value,)) if kind else ("kind IS NOT NULL", ())
        return [_timer(r) for r in self._rows(
            f"SELECT workflow_id, kind, stage, attempt, due_at FROM workflow_timers WHERE {where} ORDER BY due_at",
            parameters)]

    def claim_due_timers(self, now: float, holder: str, lease_s: float, limit: int = 32) -> builtins.list[Timer]:
        """Claim (hold the lease of) up to ``limit`` workflows whose timer is due and whose lease is free or
        expired. Each due timer is claimed by exactly one caller. A retry (a dispatch) of a workflow whose
        pipeline is paused is not claimed: it stays due, and fires once the pipeline is resumed."""
        # A variant is held with its pipeline (paused_pipelines); ``?`` per variant whose pipeline is paused now.
        variants = [v for v, of in PIPELINE_VARIANT_OF.items() if of in self._paused_by_operator()]
        held = f" OR pipeline IN ({', '.join('?' for _ in variants)})" if variants else ""
        rows = self._rows(
            "UPDATE workflow_timers SET holder = ?, lease_until = ? WHERE workflow_id IN ("
            "SELECT workflow_id FROM workflow_timers WHERE kind IS NOT NULL AND due_at <= ? "
            "AND (holder IS NULL OR lease_until < ?) AND NOT (kind = ? AND workflow_id IN (SELECT workflow_id FROM "
            f"workflows WHERE pipeline IN (SELECT pipeline FROM paused_pipelines){held})) ORDER BY due_at LIMIT ?) "
            "AND kind IS NOT NULL AND due_at <= ? AND (holder IS NULL OR lease_until < ?) "
            "RETURNING workflow_id, kind, stage, attempt, due_at",
            (holder, now + lease_s, now, now, TimerKind.RETRY.value, *variants, limit, now, now))
        return sorted((_timer(r) for r in rows), key=lambda t: t.due_at)

    # -- the delivery outbox -------------------------------------------------------------------------

    def enqueue_delivery(self, workflow_id: str, destination: str, *, study_key: str, pipeline: str, stage: str,
                         sop_instance_uids: builtins.list[str], now: float, give_up_at: float) -> bool:
        """Schedule the objects' delivery to ``destination`` now; False (changing nothing) when this
        workflow's delivery there exists already, delivered or not: a result is sent once."""
        return self._changed(
            f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, '', ?, NULL) "
            "ON CONFLICT (workflow_id, destination) DO NOTHING",
            (workflow_id, destination, study_key, pipeline, stage, json.dumps(sop_instance_uids),
             DeliveryStatus.PENDING.value, now, give_up_at, now))

    def claim_due_deliveries(self, now: float, holder: str, lease_s: float,
                             limit: int = 8) -> builtins.list[Delivery]:
        """Claim up to ``limit`` pending deliveries that are due and not held by another live replica. A
        correction waits while the result it corrects is being sent to the same destination (accepted at that
        moment): its SR supersedes that one, so it must reach the PACS after it (the delivery loop then
        withholds the original if that send failed: it is never sent after its correction)."""
        original_in_flight = (
            "stage = ? AND EXISTS (SELECT 1 FROM deliveries d WHERE deliveries.workflow_id LIKE d.workflow_id || ? "
            f"AND d.destination = deliveries.destination AND {_IN_FLIGHT})")
        rows = self._rows(
            "UPDATE deliveries SET holder = ?, lease_until = ? WHERE (workflow_id, destination) IN ("
            "SELECT workflow_id, destination FROM deliveries WHERE status = ? AND next_attempt_at <= ? "
            f"AND (holder IS NULL OR lease_until < ?) AND NOT ({original_in_flight}) "
            "AND destination NOT IN (SELECT destination FROM paused_destinations) ORDER BY next_attempt_at LIMIT ?) "
            "AND status = ? AND next_attempt_at <= ? AND (holder IS NULL OR lease_until < ?) "
            f"RETURNING {_DELIVERY_COLUMNS}",
            (holder, now + lease_s, DeliveryStatus.PENDING.value, now, now, CORRECTION_STAGE, _CORRECTIONS,
             DeliveryStatus.PENDING.value, now, limit, DeliveryStatus.PENDING.value, now, now))
        return sorted((_delivery(r) for r in rows), key=lambda d: d.next_attempt_at)

    def delivery_done(self, delivery: Delivery, holder: str, now: float,
                      sent: Sequence[str] | None = None) -> bool:
        """The destination accepted the objects (recorded in the study's audit trail). False when ``holder``
        lost its lease meanwhile. A correction records the corrected objects it ``sent`` as its objects."""
        uids = json.dumps(list(sent if sent is not None and delivery.stage == CORRECTION_STAGE
                               else delivery.sop_instance_uids))
        return self._delivery_outcome(
            delivery, holder, AuditAction.RETRACTED if delivery.stage == RETRACTION_STAGE else AuditAction.DELIVERED,
            f"UPDATE {_table(delivery)} SET status = ?, delivered_at = ?, attempts = attempts + 1, last_error = '', "
            "sop_instance_uids = ?, holder = NULL, lease_until = 0 WHERE workflow_id = ? AND destination = ? "
            "AND holder = ?",
            (DeliveryStatus.DELIVERED.value, now, uids, delivery.workflow_id, delivery.destination, holder))

    def withhold_claimed(self, delivery: Delivery, holder: str, reason: str) -> bool:
        """The delivery ``holder`` claimed must not be sent (its result was rejected, or corrected for that
        destination, since it was scheduled): WITHHELD, ``reason`` its last error."""
        return self._changed(
            "UPDATE deliveries SET status = ?, last_error = ?, holder = NULL, lease_until = 0 WHERE workflow_id = ? "
            "AND destination = ? AND holder = ?",
            (DeliveryStatus.WITHHELD.value, reason, delivery.workflow_id, delivery.destination, holder))

    def delivery_failed(self, delivery: Delivery, holder: str, error: str, *, next_attempt_at: float,
                        give_up: bool) -> bool:
        """An attempt failed: try again at ``next_attempt_at``, or (``give_up``) stop trying (recorded in the
        study's audit trail)."""
        status = DeliveryStatus.GAVE_UP if give_up else DeliveryStatus.PENDING
        return self._delivery_outcome(
            delivery, holder, AuditAction.DELIVERY_GIVEN_UP if give_up else None,
            f"UPDATE {_table(delivery)} SET status = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
            "holder = NULL, lease_until = 0 WHERE workflow_id = ? AND destination = ? AND holder = ?",
            (status.value, error, next_attempt_at, delivery.workflow_id, delivery.destination, holder))

    def _delivery_outcome(self, delivery: Delivery, holder: str, action: str | None, sql: str,
                          parameters: tuple[Any, ...]) -> bool:
        """The delivery's update and, when it applied and ``action``, its audit record, in one transaction."""
        def update(db: Any) -> bool:
            if db.execute(self._sql(sql), parameters).rowcount == 0:
                return False
            if action is not None:
                self._append_on(db, delivery.study_key, action, f"delivery/{holder}",
                                {"workflow_id": delivery.workflow_id, "destination": delivery.destination,
                                 "stage": delivery.stage, "objects": len(delivery.sop_instance_uids),
                                 "attempt": delivery.attempts + 1})
            return True

        return self._run(update, idempotent=False, what="schedules")

    def reopen_delivery(self, workflow_id: str, destination: str, *, now: float, give_up_at: float,
                        retraction: bool = False) -> bool:
        """A delivery (``retraction``: a retraction) given up on is scheduled again now (an operator's
        replay); a delivered one never."""
        return self._changed(
            f"UPDATE {'retractions' if retraction else 'deliveries'} SET status = ?, next_attempt_at = ?, "
            "give_up_at = ? WHERE workflow_id = ? AND destination = ? AND status = ?",
            (DeliveryStatus.PENDING.value, now, give_up_at, workflow_id, destination, DeliveryStatus.GAVE_UP.value))

    def pause_destination(self, destination: str, *, by: str, now: float) -> bool:
        """Hold every delivery to ``destination`` (none claimed from now on; one in flight completes) until
        ``resume_destination``; False when it was paused already."""
        return self._changed("INSERT INTO paused_destinations (destination, paused_by, paused_at) VALUES (?, ?, ?) "
                             "ON CONFLICT (destination) DO NOTHING", (destination, by, now))

    def resume_destination(self, destination: str, *, now: float, give_up_at: float) -> bool:
        """Deliver to ``destination`` again; its pending deliveries get until ``give_up_at`` at least, so none
        gives up for the time it was paused. False when it was not paused."""
        def resume(db: Any) -> bool:
            if db.execute(self._sql("DELETE FROM paused_destinations WHERE destination = ?"),
                          (destination,)).rowcount == 0:
                return False
            db.execute(self._sql("UPDATE deliveries SET give_up_at = CASE WHEN give_up_at < ? THEN ? ELSE give_up_at "
                                 "END, next_attempt_at = ? WHERE destination = ? AND status = ?"),
                       (give_up_at, give_up_at, now, destination, DeliveryStatus.PENDING.value))
            return True

        return self._run(resume, idempotent=False, what="schedules")

    def paused_destinations(self) -> dict[str, tuple[str, float]]:
        """Each paused destination: who paused it and when."""
        return {str(r[0]): (str(r[1]), float(r[2])) for r in self._rows(
            "SELECT destination, paused_by, paused_at FROM paused_destinations ORDER BY destination")}

    def pause_pipeline(self, pipeline: str, *, by: str, now: float) -> bool:
        """Dispatch no task of ``pipeline``'s workflows (new studies wait; one in flight completes) until
        ``resume_pipeline``; False when it was paused already."""
        return self._changed("INSERT INTO paused_pipelines (pipeline, paused_by, paused_at) VALUES (?, ?, ?) "
                             "ON CONFLICT (pipeline) DO NOTHING", (pipeline, by, now))

    def resume_pipeline(self, pipeline: str) -> bool:
        """Dispatch ``pipeline``'s waiting workflows again (their due timers fire at the orchestrator's next
        tick); False when it was not paused."""
        return self._changed("DELETE FROM paused_pipelines WHERE pipeline = ?", (pipeline,))

    def paused_pipelines(self) -> dict[str, tuple[str, float]]:
        """Each held pipeline: who paused it and when. A variant (core.config.PIPELINE_VARIANT_OF) is held with the
        pipeline it stands in for, as paused by the same person: pausing glioma (a model withdrawn, say) must
        also stop glioma_postop, which runs the same model; the variant may also be paused on its own."""
        paused = self._paused_by_operator()
        return {**{v: paused[of] for v, of in PIPELINE_VARIANT_OF.items() if of in paused}, **paused}

    def _paused_by_operator(self) -> dict[str, tuple[str, float]]:
        return {str(r[0]): (str(r[1]), float(r[2])) for r in self._rows(
            "SELECT pipeline, paused_by, paused_at FROM paused_pipelines ORDER BY pipeline")}

    def withhold_deliveries(self, workflow_id: str, reason: str, *, now: float) -> builtins.list[str]:
        """Stop the workflow's pending deliveries that no delivery replica holds (a result a radiologist
        rejected must not reach the PACS): WITHHELD, ``reason`` as their last error; given up ones too, so an
        operator's replay of their dead letter cannot send them. The destinations withheld; one being sent at
        this moment is not stopped (nor listed)."""
        rows = self._rows(
            "UPDATE deliveries SET status = ?, last_error = ?, holder = NULL, lease_until = 0 "
            "WHERE workflow_id = ? AND (status = ? OR (status = ? AND (holder IS NULL OR lease_until < ?))) "
            "RETURNING destination",
            (DeliveryStatus.WITHHELD.value, reason, workflow_id, DeliveryStatus.GAVE_UP.value,
             DeliveryStatus.PENDING.value, now))
        return sorted(str(r[0]) for r in rows)

    def request_retractions(self, workflow_id: str, *, now: float, give_up_at: float) -> builtins.list[str]:
        """Owe a retraction notice to every destination the workflow's result reached, or is being sent to at
        this moment (one withhold_deliveries could not stop), as delivered or as corrected (a correction's
        row): the destinations, each once however often asked. The notice is claimed once nothing of the
        result is being sent there and something reached it (claim_due_retractions); it supersedes every
        object of the result that did (``reached_objects``)."""
        rows = self._rows(
            f"INSERT INTO retractions ({_DELIVERY_COLUMNS}) SELECT ?, destination, study_key, pipeline, "
            "?, sop_instance_uids, ?, 0, ?, ?, '', ?, NULL FROM deliveries "
            "WHERE (workflow_id = ? OR workflow_id LIKE ?) "
            "AND (status = ? OR (status = ? AND holder IS NOT NULL AND lease_until >= ?)) "
            "ON CONFLICT (workflow_id, destination) DO NOTHING RETURNING destination",
            (workflow_id, RETRACTION_STAGE, DeliveryStatus.PENDING.value, now, give_up_at, now, workflow_id,
             correction_workflow_id(workflow_id, "%"), DeliveryStatus.DELIVERED.value, DeliveryStatus.PENDING.value,
             now))
        return sorted({str(r[0]) for r in rows})

    def reject_result(self, workflow_id: str, reason: str, *, now: float, give_up_at: float
                      ) -> tuple[builtins.list[str], builtins.list[str]]:
        """A radiologist rejected the workflow's result (recorded first in core/reviews, so the delivery loop
        withholds what it claims from now on): what of it, originals and corrections, is not being sent is
        withheld; a retraction is owed where any of it arrived or is arriving. The destinations withheld, and
        those owed a retraction."""
        withheld = {*self.withhold_deliveries(workflow_id, reason, now=now),
                    *self.withhold_corrections(workflow_id, reason, now=now)}
        return sorted(withheld), self.request_retractions(workflow_id, now=now, give_up_at=give_up_at)

    def reached_objects(self, workflow_id: str, destination: str) -> builtins.list[str]:
        """Every object of the workflow's result that ``destination`` accepted: the result as delivered, and
        each correction's corrected objects, in the order they were sent (what its retraction supersedes)."""
        rows = self._rows(
            "SELECT sop_instance_uids FROM deliveries WHERE (workflow_id = ? OR workflow_id LIKE ?) "
            "AND destination = ? AND status = ? ORDER BY delivered_at",
            (workflow_id, correction_workflow_id(workflow_id, "%"), destination, DeliveryStatus.DELIVERED.value))
        return [uid for r in rows for uid in json.loads(r[0])]

    def request_corrections(self, workflow_id: str, review_id: str, *, now: float, give_up_at: float
                            ) -> builtins.list[str]:
        """Owe the review's correction (core/delivery, results/correction) to every destination the workflow's
        result reached or is owed to (DELIVERED or PENDING), as delivered or as an earlier review corrected it:
        the destinations, each once however often asked. Its objects are the result's as delivered (a later
        review corrects the original again). The caller withholds the pending originals, so a destination the
        result had not reached gets only the corrected one."""
        owed = (DeliveryStatus.DELIVERED.value, DeliveryStatus.PENDING.value)
        rows = self._rows(
            f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) SELECT ?, destination, study_key, pipeline, ?, "
            "sop_instance_uids, ?, 0, ?, ?, '', ?, NULL FROM deliveries o WHERE workflow_id = ? AND (status IN (?, ?) "
            "OR EXISTS (SELECT 1 FROM deliveries c WHERE c.workflow_id LIKE ? AND c.destination = o.destination "
            "AND c.status IN (?, ?))) ON CONFLICT (workflow_id, destination) DO NOTHING RETURNING destination",
            (correction_workflow_id(workflow_id, review_id), CORRECTION_STAGE, DeliveryStatus.PENDING.value, now,
             give_up_at, now, workflow_id, *owed, correction_workflow_id(workflow_id, "%"), *owed))
        return sorted(str(r[0]) for r in rows)

    def corrections(self, *, workflow_id: str) -> builtins.list[Delivery]:
        """The deliveries of every review's correction of the workflow's result, oldest first."""
        return [_delivery(r) for r in self._rows(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE workflow_id LIKE ? ORDER BY created_at, destination",
            (correction_workflow_id(workflow_id, "%"),))]

    def withhold_corrections(self, workflow_id: str, reason: str, *, now: float) -> builtins.list[str]:
        """``withhold_deliveries`` for every correction of the workflow's result not sent yet (the result was
        rejected after it was corrected): the destinations withheld."""
        return sorted({destination for correction in {d.workflow_id for d in self.corrections(workflow_id=workflow_id)}
                       for destination in self.withhold_deliveries(correction, reason, now=now)})

    def claim_due_retractions(self, now: float, holder: str, lease_s: float,
                              limit: int = 8) -> builtins.list[Delivery]:
        """Claim up to ``limit`` due retractions (as Deliveries of stage RETRACTION_STAGE) whose result (as
        delivered or corrected) the destination has accepted and none of which is being sent there now, not
        held by another live replica nor to a paused destination."""
        of_result = _OF_RESULT.format(outer="retractions")
        ready = ("status = ? AND next_attempt_at <= ? AND (holder IS NULL OR lease_until < ?) "
                 "AND destination NOT IN (SELECT destination FROM paused_destinations) "
                 f"AND EXISTS (SELECT 1 FROM deliveries d WHERE {of_result} AND d.status = ?) "
                 f"AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE {of_result} AND {_IN_FLIGHT})")
        due = (DeliveryStatus.PENDING.value, now, now, _CORRECTIONS, DeliveryStatus.DELIVERED.value, _CORRECTIONS,
               DeliveryStatus.PENDING.value, now)
        rows = self._rows(
            "UPDATE retractions SET holder = ?, lease_until = ? WHERE (workflow_id, destination) IN ("
            f"SELECT workflow_id, destination FROM retractions WHERE {ready} ORDER BY next_attempt_at LIMIT ?) "
            f"AND {ready} RETURNING {_DELIVERY_COLUMNS}",
            (holder, now + lease_s, *due, limit, *due))
        return sorted((_delivery(r) for r in rows), key=lambda d: d.next_attempt_at)

    def retractions(self, *, workflow_id: str) -> builtins.list[Delivery]:
        """The workflow's retractions, by destination."""
        return [_delivery(r) for r in self._rows(
            f"SELECT {_DELIVERY_COLUMNS} FROM retractions WHERE workflow_id = ? ORDER BY destination", (workflow_id,))]

    def deliveries(self, *, workflow_id: str | None = None, status: DeliveryStatus | None = None
                   ) -> builtins.list[Delivery]:
        clauses, parameters = _filters(workflow_id=workflow_id, status=status.value if status else None)
        return [_delivery(r) for r in self._rows(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries {clauses} ORDER BY created_at, workflow_id", parameters)]

    def has_undelivered_results(self, workflow_id: str) -> bool:
        """Whether a delivery of the workflow's results, or a retraction of them, has not been accepted by its
        PACS (pending, or given up on and waiting for an operator), or a correction of them is still owed:
        retention keeps everything of such a workflow (a retraction or a correction is built from the
        delivered objects)."""
        return bool(self._rows("SELECT 1 FROM deliveries WHERE workflow_id = ? AND status <> ? UNION ALL "
                               "SELECT 1 FROM retractions WHERE workflow_id = ? AND status <> ? UNION ALL "
                               "SELECT 1 FROM deliveries WHERE workflow_id LIKE ? AND status IN (?, ?)",
                               (*(workflow_id, DeliveryStatus.DELIVERED.value) * 2,
                                correction_workflow_id(workflow_id, "%"), DeliveryStatus.PENDING.value,
                                DeliveryStatus.GAVE_UP.value)))

    # -- dead letters --------------------------------------------------------------------------------

    def record_dead_letter(self, letter: DeadLetterRecord) -> bool:
        """Keep ``letter`` (False when its id is kept already: recording it again changes nothing)."""
        return self._changed(
            f"INSERT INTO dead_letters ({_LETTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) "
            "ON CONFLICT (letter_id) DO NOTHING",
            (letter.letter_id, DeadLetterKind(letter.kind).value, letter.workflow_id, letter.study_key,
             letter.pipeline, letter.stage, letter.attempts, letter.code, letter.reason,
             base64.b64encode(letter.payload).decode("ascii"), letter.created_at))

    def dead_letters(self, *, include_replayed: bool = False, workflow_id: str | None = None
                     ) -> builtins.list[DeadLetterRecord]:
        clauses, parameters = _filters(workflow_id=workflow_id)
        if not include_replayed:
            clauses += (" AND" if clauses else "WHERE") + " replayed_at IS NULL"
        return [_letter(r) for r in self._rows(
            f"SELECT {_LETTER_COLUMNS} FROM dead_letters {clauses} ORDER BY created_at, letter_id", parameters)]

    def dead_letter(self, letter_id: str) -> DeadLetterRecord | None:
        rows = self._rows(f"SELECT {_LETTER_COLUMNS} FROM dead_letters WHERE letter_id = ?", (letter_id,))
        return _letter(rows[0]) if rows else None

    def mark_replayed(self, letter_id: str, now: float) -> bool:
        """Mark the letter replayed; False when it was already (so two operators cannot replay it twice)."""
        return self._changed("UPDATE dead_letters SET replayed_at = ? WHERE letter_id = ? AND replayed_at IS NULL",
                             (now, letter_id))

    # -- history -------------------------------------------------------------------------------------

    def workflow_events(self, workflow_id: str) -> builtins.list[WorkflowEvent]:
        return [WorkflowEvent(r[0], float(r[1]), r[2], r[3], r[4]) for r in self._rows(
            "SELECT workflow_id, at, status, stage, detail FROM workflow_events WHERE workflow_id = ? ORDER BY at",
            (workflow_id,))]


def _is_read(sql: str) -> bool:
    return sql.lstrip().upper().startswith("SELECT")


def replica_name() -> str:
    """This process's name as a lease holder: host, pid and a random part (a restarted pid is another holder)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def new_letter_id() -> str:
    """A new dead letter's id (random: the same work may be dead-lettered again after a replay)."""
    return f"dl-{uuid.uuid4().hex[:16]}"


def _filters(**equal: str | None) -> tuple[str, tuple[str, ...]]:
    given = {column: value for column, value in equal.items() if value is not None}
    if not given:
        return "", ()
    return "WHERE " + " AND ".join(f"{column} = ?" for column in given), tuple(given.values())


def _table(delivery: Delivery) -> str:
    return "retractions" if delivery.stage == RETRACTION_STAGE else "deliveries"


def _timer(row: Any) -> Timer:
    return Timer(str(row[0]), TimerKind(row[1]), str(row[2]), int(row[3]), float(row[4]))


def _delivery(row: Any) -> Delivery:
    return Delivery(workflow_id=row[0], destination=row[1], study_key=row[2], pipeline=row[3], stage=row[4],
                    sop_instance_uids=tuple(json.loads(row[5])), status=DeliveryStatus(row[6]), attempts=int(row[7]),
                    next_attempt_at=float(row[8]), give_up_at=float(row[9]), last_error=row[10],
                    created_at=float(row[11]), delivered_at=None if row[12] is None else float(row[12]))


def _letter(row: Any) -> DeadLetterRecord:
    return DeadLetterRecord(letter_id=row[0], kind=DeadLetterKind(row[1]), workflow_id=row[2], study_key=row[3],
                            pipeline=row[4], stage=row[5], attempts=int(row[6]), code=row[7], reason=row[8],
                            payload=base64.b64decode(row[9]), created_at=float(row[10]),
                            replayed_at=None if row[11] is None else float(row[11]))
