"""Workflow state: one record per workflow, i.e. per (study, pipeline, input) — the orchestrator's memory.

Embedded: SQLite. Distributed: PostgreSQL (core/state_postgres.py), behind the same interface. The store,
not its callers, guards the two invariants several workers could otherwise break at once: the same work is
created only once (idempotency), and a workflow's status only moves along ALLOWED_TRANSITIONS. Both
backends run the same statements, written once in SqlStateStore; each supplies only what differs.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from neuroflow.core.audit import AUDIT_SCHEMA, AuditAction, AuditStatements
from neuroflow.core.errors import NeuroflowError
from neuroflow.core.sql_reconnect import ConnectionLost, retry_once
from neuroflow.core.state_schedules import SCHEDULE_SCHEMA, ScheduleStatements, correction_workflow_id


class WorkflowStatus(StrEnum):
    PENDING = "PENDING"  # created, no task dispatched yet (or re-queued for a retry)
    RUNNING = "RUNNING"  # a stage's task is dispatched; `stage` says which
    SUCCEEDED = "SUCCEEDED"  # results stored: never runs again (new input makes a new workflow)
    FAILED = "FAILED"  # stopped for a reason a person must act on (input problem, not retryable)
    DEAD_LETTERED = "DEAD_LETTERED"  # retries exhausted or deadline passed; parked for an operator
    # An operator stopped it (admin.operations.cancel_study): never dispatched again, and a task answer that
    # comes late is ignored, so none of its results is delivered.
    CANCELLED = "CANCELLED"


# Where each status may go. Staying in the same status is always allowed (a redelivered message repeats
# the update; a workflow RUNNING moves on to its next stage). An operator replays FAILED and
# DEAD_LETTERED work by moving it back to PENDING, and cancels any unfinished or failed work (CANCELLED);
# nothing leaves SUCCEEDED (a result is withdrawn by rejecting it in review) or CANCELLED.
ALLOWED_TRANSITIONS: dict[WorkflowStatus, frozenset[WorkflowStatus]] = {
    WorkflowStatus.PENDING: frozenset(
        {WorkflowStatus.RUNNING, WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTERED, WorkflowStatus.CANCELLED}),
    WorkflowStatus.RUNNING: frozenset({
        WorkflowStatus.PENDING, WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTERED,
        WorkflowStatus.CANCELLED,
    }),
    WorkflowStatus.SUCCEEDED: frozenset(),
    WorkflowStatus.FAILED: frozenset({WorkflowStatus.PENDING, WorkflowStatus.CANCELLED}),
    WorkflowStatus.DEAD_LETTERED: frozenset({WorkflowStatus.PENDING, WorkflowStatus.CANCELLED}),
    WorkflowStatus.CANCELLED: frozenset(),
}

# Statuses a workflow does not leave by itself: its results are delivered (SUCCEEDED), it waits for an
# operator (FAILED, DEAD_LETTERED) or an operator ended it (CANCELLED). Only these are ever deleted by
# retention (neuroflow.monitor.retention).
FINISHED_STATUSES = frozenset({WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTERED,
                               WorkflowStatus.CANCELLED})


class WorkflowNotFound(NeuroflowError, KeyError):
    """No workflow with this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InvalidTransition(NeuroflowError, ValueError):
    """A status change ALLOWED_TRANSITIONS forbids (e.g. a late message re-running a SUCCEEDED workflow)."""


@dataclass(frozen=True)
class WorkflowRecord:
    workflow_id: str
    study_key: str  # pseudonymous (neuroflow.core.dicom_io.study_key)
    pipeline: str
    input_hash: str  # StudyReady.input_hash: the same input is the same work
    status: WorkflowStatus
    stage: str | None  # stage last set with the status (None before any)
    detail: str  # why it is in this status, for a person: the last failure reason, the retry count...
    created_at: datetime  # UTC, timezone-aware
    updated_at: datetime  # UTC, timezone-aware: the last create/set_status/record_stage_timing
    stage_seconds: dict[str, float] = field(default_factory=dict)  # stage -> duration of its latest run


class WorkflowStateStore(ABC):
    """The orchestrator's workflow records. Every method is safe to call from several threads (and, for
    the database backends, several processes) at once."""

    @abstractmethod
    def create(self, workflow_id: str, study_key: str, pipeline: str, input_hash: str) -> bool:
        """Create a PENDING workflow. False, changing nothing, when ``workflow_id`` exists or another
        workflow already has the same (study_key, pipeline, input_hash): that is the same work."""

    @abstractmethod
    def get(self, workflow_id: str) -> WorkflowRecord | None:
        """The workflow's record, or None."""

    @abstractmethod
    def set_status(
        self, workflow_id: str, status: WorkflowStatus, *, stage: str | None, detail: str = ""
    ) -> None:
        """Move the workflow to ``status`` (recording ``stage`` and ``detail``), atomically checked against
        ALLOWED_TRANSITIONS. WorkflowNotFound for an unknown id, InvalidTransition when not allowed."""

    @abstractmethod
    def record_stage_timing(self, workflow_id: str, stage: str, seconds: float) -> None:
        """Record how long ``stage`` took; a later run of the same stage (a retry) replaces the value.
        WorkflowNotFound for an unknown id; ValueError for a negative or non-finite duration."""

    @abstractmethod
    def list(self, status: WorkflowStatus | None = None) -> builtins.list[WorkflowRecord]:
        """Every workflow (or those in ``status``), oldest first."""

    @abstractmethod
    def find(self, study_key: str, pipeline: str, input_hash: str) -> WorkflowRecord | None:
        """The workflow doing this work, or None."""

    @abstractmethod
    def finished_before(self, before: datetime) -> builtins.list[WorkflowRecord]:
        """Workflows in FINISHED_STATUSES last updated before ``before`` (UTC), oldest first: retention's
        candidates."""

    @abstractmethod
    def of_study(self, study_key: str) -> builtins.list[WorkflowRecord]:
        """Every workflow of the study, oldest first."""

    @abstractmethod
    def delete_finished(self, workflow_id: str, before: datetime) -> bool:
        """Delete the workflow (and its stage timings) when it is in FINISHED_STATUSES and was last updated
        before ``before``, in one statement; True when deleted. A workflow replayed meanwhile (PENDING
        again, so updated since) is kept; deleting what is gone is not an error (False)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default holds none."""


# 2: the timers, deliveries, dead letters and workflow events of core/state_schedules.py (new tables only:
# a version-1 database is upgraded in place by creating them). 3: the audit trail (core/audit.py), likewise.
# 4: the destinations an operator paused (paused_destinations), likewise. 5: retractions, likewise.
# 6: the pipelines an operator paused (paused_pipelines), likewise.
_SCHEMA_VERSION = 6
# Written once for every SQL backend: {timestamp} and {real} are the backend's column types.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS workflows (
        workflow_id TEXT PRIMARY KEY,
        study_key   TEXT NOT NULL,
        pipeline    TEXT NOT NULL,
        input_hash  TEXT NOT NULL,
        status      TEXT NOT NULL,
        stage       TEXT,
        detail      TEXT NOT NULL DEFAULT '',
        created_at  {timestamp} NOT NULL,
        updated_at  {timestamp} NOT NULL,
        UNIQUE (study_key, pipeline, input_hash)
    )""",
    "CREATE INDEX IF NOT EXISTS workflows_status ON workflows (status, created_at)",
    """CREATE TABLE IF NOT EXISTS stage_timings (
        workflow_id TEXT NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
        stage       TEXT NOT NULL,
        seconds     {real} NOT NULL,
        PRIMARY KEY (workflow_id, stage)
    )""",
    *SCHEDULE_SCHEMA,
    *AUDIT_SCHEMA,
)
# Rows of a workflow kept beside it (stage timings, timers, deliveries, dead letters, history), deleted with it.
# Never audit_trail: the audit trail is append-only and outlives the workflows it records.
_WORKFLOW_TABLES = ("stage_timings", "workflow_timers", "deliveries", "dead_letters", "workflow_events")


def notice_workflow_id(workflow_id: str) -> str:
    """The id a workflow's failure notice is delivered (and dead-lettered) under: not the workflow's own, so a
    workflow an operator replays after its notice still has its result delivered; deleted with the workflow."""
    return f"{workflow_id}.notice"


_COLUMNS = "workflow_id, study_key, pipeline, input_hash, status, stage, detail, created_at, updated_at"
# The audit action of each status a workflow is moved to (set_status).
_AUDIT_ACTIONS = {WorkflowStatus.RUNNING: AuditAction.STAGE_STARTED,
                  WorkflowStatus.PENDING: AuditAction.RETRY_SCHEDULED,
                  WorkflowStatus.SUCCEEDED: AuditAction.SUCCEEDED, WorkflowStatus.FAILED: AuditAction.FAILED,
                  WorkflowStatus.DEAD_LETTERED: AuditAction.DEAD_LETTERED,
                  WorkflowStatus.CANCELLED: AuditAction.CANCELLED}
_FINISHED_LIST = ", ".join(f"'{s.value}'" for s in sorted(FINISHED_STATUSES))  # constants, no user input


class _Cursor(Protocol):
    """What the SQL stores use of a cursor (sqlite3's and psycopg's alike)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> builtins.list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class _Connection(Protocol):
    """What the SQL stores use of a connection (sqlite3's and psycopg 3's alike)."""

    def execute(self, sql: str, parameters: tuple[Any, ...] = ..., /) -> _Cursor: ...

    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Connection)
_T = TypeVar("_T")


class SqlStateStore(WorkflowStateStore, ScheduleStatements, AuditStatements, Generic[_C]):
    """The statements of the SQL backends and their logic, written once. One connection per thread;
    every write is one transaction. Statements use ``?`` placeholders, which ``_sql`` turns into the
    backend's (``_ph``, as in neuroflow.core.sql_statements). A backend supplies only what differs:
    connecting, opening a transaction, the column types, writing and reading timestamps, row and schema
    locking, telling a lost connection from a refused statement, and the database's name in error messages.

    A connection the database ended (a restart, a dropped network path) is dropped and the call tried once
    more on a new one when that cannot apply it twice (core/sql_reconnect): reads and the idempotent
    writes (set_status to a status it may stay in, record_stage_timing) always, ``create`` only when the
    connection was lost before COMMIT; otherwise StoreUnavailable (retryable)."""

    _ph: ClassVar[str] = "?"
    _timestamp_type: ClassVar[str]  # column type of created_at/updated_at
    _real_type: ClassVar[str]  # column type of stage_timings.seconds
    # Appended to set_status's read of the current status. It must keep another writer from changing
    # the status between that read and the update, unless the transaction already does.
    _lock_row: ClassVar[str]

    def __init__(self) -> None:
        """Call last in a backend's __init__, once it can connect: creates the schema or checks it."""
        self._local = threading.local()
        self._connections: builtins.list[_C] = []
        self._connections_lock = threading.Lock()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def create(self, workflow_id: str, study_key: str, pipeline: str, input_hash: str) -> bool:
        now = self._now()

        def insert(db: _C) -> bool:
            cursor = db.execute(
                self._sql(f"INSERT INTO workflows ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, '', ?, ?) "
                          "ON CONFLICT DO NOTHING"),
                (workflow_id, study_key, pipeline, input_hash, WorkflowStatus.PENDING.value, now, now),
            )
            created = cursor.rowcount == 1
            if created:
                self._record_event(db, workflow_id, WorkflowStatus.PENDING, None, "created")
                self._append_on(db, study_key, AuditAction.WORKFLOW_CREATED, self.audit_actor,
                                {"workflow_id": workflow_id, "pipeline": pipeline, "input_hash": input_hash})
            return created

        # Not idempotent in its answer: run again after a COMMIT that did apply, it would say False ("the
        # same work exists") for the workflow it created itself.
        return self._run(insert, idempotent=False, what=f"create workflow {workflow_id}")

    def get(self, workflow_id: str) -> WorkflowRecord | None:
        rows = self._select("WHERE workflow_id = ?", (workflow_id,))
        return rows[0] if rows else None

    def set_status(
        self, workflow_id: str, status: WorkflowStatus, *, stage: str | None, detail: str = "",
        actor: str | None = None,
    ) -> None:
        """As WorkflowStateStore's; the change is also appended to the study's audit trail, as ``actor``
        (default: ``audit_actor``)."""
        status = WorkflowStatus(status)

        def update(db: _C) -> None:
            row = db.execute(self._sql(f"SELECT status, study_key FROM workflows WHERE workflow_id = ?"
                                       f"{self._lock_row}"),
                             (workflow_id,)).fetchone()
            if row is None:
                raise WorkflowNotFound(f"no workflow {workflow_id!r}")
            current = WorkflowStatus(row[0])
            if status != current and status not in ALLOWED_TRANSITIONS[current]:
                raise InvalidTransition(f"workflow {workflow_id}: cannot go from {current} to {status} "
                                        f"(allowed: {sorted(ALLOWED_TRANSITIONS[current]) or 'none'})")
            db.execute(
                self._sql("UPDATE workflows SET status = ?, stage = ?, detail = ?, updated_at = ? "
                          "WHERE workflow_id = ?"),
                (status.value, stage, detail, self._now(), workflow_id),
            )
            self._record_event(db, workflow_id, status, stage, detail)
            self._append_on(db, row[1], _AUDIT_ACTIONS[status], actor or self.audit_actor,
                            {"workflow_id": workflow_id, "stage": stage, "detail": detail})

        # Idempotent: staying in a status is always allowed, so applying the same change twice leaves the
        # record as once (but for updated_at and a repeated line in the workflow's history).
        self._run(update, idempotent=True, what=f"set workflow {workflow_id} {status}")

    def record_stage_timing(self, workflow_id: str, stage: str, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"workflow {workflow_id} stage {stage}: "
                             f"duration must be finite and >= 0, not {seconds}")

        def upsert(db: _C) -> None:
            cursor = db.execute(self._sql("UPDATE workflows SET updated_at = ? WHERE workflow_id = ?"),
                                (self._now(), workflow_id))
            if cursor.rowcount == 0:
                raise WorkflowNotFound(f"no workflow {workflow_id!r}")
            db.execute(self._sql("INSERT INTO stage_timings (workflow_id, stage, seconds) VALUES (?, ?, ?) "
                                 "ON CONFLICT (workflow_id, stage) DO UPDATE SET seconds = excluded.seconds"),
                       (workflow_id, stage, float(seconds)))

        self._run(upsert, idempotent=True, what=f"record workflow {workflow_id} {stage} timing")  # replaces

    def list(self, status: WorkflowStatus | None = None) -> builtins.list[WorkflowRecord]:
        if status is None:
            return self._select("", ())
        return self._select("WHERE status = ?", (WorkflowStatus(status).value,))

    def find(self, study_key: str, pipeline: str, input_hash: str) -> WorkflowRecord | None:
        rows = self._select("WHERE study_key = ? AND pipeline = ? AND input_hash = ?",
                            (study_key, pipeline, input_hash))
        return rows[0] if rows else None

    def finished_before(self, before: datetime) -> builtins.list[WorkflowRecord]:
        return self._select(f"WHERE status IN ({_FINISHED_LIST}) AND updated_at < ?", (self._time_value(before),))

    def of_study(self, study_key: str) -> builtins.list[WorkflowRecord]:
        return self._select("WHERE study_key = ?", (study_key,))

    def delete_finished(self, workflow_id: str, before: datetime) -> bool:
        def delete(db: _C) -> bool:
            cursor = db.execute(self._sql(f"DELETE FROM workflows WHERE workflow_id = ? AND status IN "
                                          f"({_FINISHED_LIST}) AND updated_at < ?"),
                                (workflow_id, self._time_value(before)))
            if cursor.rowcount != 1:
                return False
            # What hangs off the row goes with it, in the same transaction (there is no cascading delete).
            for table in _WORKFLOW_TABLES:
                db.execute(self._sql(f"DELETE FROM {table} WHERE workflow_id IN (?, ?) OR workflow_id LIKE ?"),
                           (workflow_id, notice_workflow_id(workflow_id), correction_workflow_id(workflow_id, "%")))
            return True

        # Not repeated after a lost COMMIT: a second run would answer False for a row the first deleted; the
        # sweep is idempotent anyway and the next one finishes what this one could not.
        return self._run(delete, idempotent=False, what="delete a finished workflow")

    def close(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    # -- what a backend supplies ---------------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> _C:
        """A new connection, for the calling thread."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[_C]:
        """A ``with`` block around one transaction on this thread's connection (rolled back on an
        exception); it gives the connection."""

    @abstractmethod
    def _now(self) -> object:
        """The current UTC time, as this backend stores a timestamp."""

    @abstractmethod
    def _time_value(self, moment: datetime) -> object:
        """``moment`` as this backend stores a timestamp (what ``_now`` gives), to compare with one."""

    @abstractmethod
    def _read_time(self, value: Any) -> datetime:
        """A stored timestamp, back as a timezone-aware UTC datetime."""

    @abstractmethod
    def _name(self) -> str:
        """The database, for error messages (never with a password)."""

    def _lock_schema(self, db: _C) -> None:
        """Inside the migration's transaction: serialise schema creation by processes starting at once.
        Nothing by default, for a backend whose write transactions already exclude each other."""

    def _is_closed(self, connection: _C) -> bool:
        """Whether this thread's connection is unusable, to be replaced by a new one."""
        return False

    def _connection_lost(self, error: BaseException, connection: _C) -> bool:
        """Whether ``error`` means ``connection`` is gone (rather than the statement refused). Never, by
        default: a database file has no connection to lose."""
        return False

    # -- internals -----------------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._ph)

    def _run(self, work: Callable[[_C], _T], *, idempotent: bool, what: str, transaction: bool = True) -> _T:
        """``work`` on this thread's connection, in one transaction (``transaction``; reads need none),
        tried once more on a new connection when the connection was lost and that is safe."""
        return retry_once(lambda: self._attempt(work, transaction), idempotent=idempotent,
                          what=f"workflow state: {what}")

    def _attempt(self, work: Callable[[_C], _T], transaction: bool) -> _T:
        connection = self._connection()
        committing = False
        try:
            if not transaction:
                return work(connection)
            with self._transaction() as db:
                result = work(db)
                committing = True  # the body ran: what fails from here on is the COMMIT
            return result
        except Exception as error:
            if not self._connection_lost(error, connection):
                raise
            self._drop(connection)
            raise ConnectionLost(self._name(), error, maybe_applied=committing) from error

    def _drop(self, connection: _C) -> None:
        """Forget this thread's lost connection: the next call opens a new one."""
        self._local.connection = None
        with self._connections_lock:
            if connection in self._connections:
                self._connections.remove(connection)
        with contextlib.suppress(Exception):
            connection.close()

    def _connection(self) -> _C:
        connection: _C | None = getattr(self._local, "connection", None)
        if connection is None or self._is_closed(connection):
            connection = self._connect()
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _record_event(self, db: _C, workflow_id: str, status: WorkflowStatus, stage: str | None,
                      detail: str) -> None:
        """Append the status change to the workflow's history (workflow_events), in the caller's transaction."""
        db.execute(self._sql("INSERT INTO workflow_events (workflow_id, at, status, stage, detail) "
                             "VALUES (?, ?, ?, ?, ?)"), (workflow_id, time.time(), status.value, stage, detail))

    def _migrate(self) -> None:
        with self._transaction() as db:
            self._lock_schema(db)
            for statement in _SCHEMA:
                db.execute(statement.format(timestamp=self._timestamp_type, real=self._real_type))
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            found = row[0] if row else None
            if found is None:
                db.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"), (_SCHEMA_VERSION,))
            elif found < _SCHEMA_VERSION:  # the tables it lacked were created above
                db.execute(self._sql("UPDATE schema_version SET version = ?"), (_SCHEMA_VERSION,))
            elif found > _SCHEMA_VERSION:
                raise NeuroflowError(f"state database {self._name()} has schema version {found}, newer than "
                                     f"this neuroflow understands ({_SCHEMA_VERSION}): upgrade neuroflow")

    def _select(self, where: str, parameters: tuple[object, ...]) -> builtins.list[WorkflowRecord]:
        return self._run(lambda db: self._select_on(db, where, parameters), idempotent=True, what="read workflows",
                         transaction=False)

    def _select_on(self, db: _C, where: str, parameters: tuple[object, ...]) -> builtins.list[WorkflowRecord]:
        rows = db.execute(self._sql(f"SELECT {_COLUMNS} FROM workflows {where} ORDER BY created_at, workflow_id"),
                          parameters).fetchall()
        if not rows:
            return []
        timings: dict[str, dict[str, float]] = {r[0]: {} for r in rows}
        # The same filter as a subquery, not a list of ids: no limit on the number of placeholders.
        query = ("SELECT workflow_id, stage, seconds FROM stage_timings "
                 f"WHERE workflow_id IN (SELECT workflow_id FROM workflows {where})")
        for workflow_id, stage, seconds in db.execute(self._sql(query), parameters):
            if workflow_id in timings:  # not one created since the first read
                timings[workflow_id][stage] = seconds
        return [
            WorkflowRecord(workflow_id=r[0], study_key=r[1], pipeline=r[2], input_hash=r[3],
                           status=WorkflowStatus(r[4]), stage=r[5], detail=r[6],
                           created_at=self._read_time(r[7]), updated_at=self._read_time(r[8]),
                           stage_seconds=timings[r[0]])
            for r in rows
        ]


class SqliteStateStore(SqlStateStore[sqlite3.Connection]):
    """SQLite in WAL mode (readers never block the writer). One connection per thread; writes take the
    database lock up front (BEGIN IMMEDIATE) so a check-then-update cannot interleave with another
    writer, in this process or another. Timestamps are stored as ISO 8601 UTC text."""

    _timestamp_type = "TEXT"
    _real_type = "REAL"
    _lock_row = ""  # BEGIN IMMEDIATE already holds the database's write lock until COMMIT

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self._path = path
        self._timeout = busy_timeout_s
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), never implicit.
        connection = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None,
                                     check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
        return connection

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception). Taking the write lock at BEGIN, not at
        the first write, also serialises the schema's creation by processes starting at once."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _now(self) -> str:
        return datetime.now(UTC).isoformat(timespec="microseconds")

    def _time_value(self, moment: datetime) -> str:
        # The same text form as _now, so the stored ISO strings compare in time order.
        return moment.astimezone(UTC).isoformat(timespec="microseconds")

    def _read_time(self, value: str) -> datetime:
        return datetime.fromisoformat(value)

    def _name(self) -> str:
        return str(self._path)
