"""Workflow state: one record per workflow, i.e. per (study, pipeline, input) — the orchestrator's memory.

Embedded: SQLite. Distributed: PostgreSQL, behind the same interface. The store, not its callers,
guards the two invariants several workers could otherwise break at once: the same work is created only
once (idempotency), and a workflow's status only moves along ALLOWED_TRANSITIONS.
"""

from __future__ import annotations

import builtins
import math
import sqlite3
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from neuroflow.core.errors import NeuroflowError


class WorkflowStatus(StrEnum):
    PENDING = "PENDING"  # created, no task dispatched yet (or re-queued for a retry)
    RUNNING = "RUNNING"  # a stage's task is dispatched; `stage` says which
    SUCCEEDED = "SUCCEEDED"  # results stored: never runs again (new input makes a new workflow)
    FAILED = "FAILED"  # stopped for a reason a person must act on (input problem, not retryable)
    DEAD_LETTERED = "DEAD_LETTERED"  # retries exhausted or deadline passed; parked for an operator


# Where each status may go. Staying in the same status is always allowed (a redelivered message repeats
# the update; a workflow RUNNING moves on to its next stage). An operator replays FAILED and
# DEAD_LETTERED work by moving it back to PENDING; nothing leaves SUCCEEDED.
ALLOWED_TRANSITIONS: dict[WorkflowStatus, frozenset[WorkflowStatus]] = {
    WorkflowStatus.PENDING: frozenset(
        {WorkflowStatus.RUNNING, WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTERED}),
    WorkflowStatus.RUNNING: frozenset({
        WorkflowStatus.PENDING, WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTERED,
    }),
    WorkflowStatus.SUCCEEDED: frozenset(),
    WorkflowStatus.FAILED: frozenset({WorkflowStatus.PENDING}),
    WorkflowStatus.DEAD_LETTERED: frozenset({WorkflowStatus.PENDING}),
}


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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default holds none."""


_SCHEMA_VERSION = 1
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
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        UNIQUE (study_key, pipeline, input_hash)
    )""",
    "CREATE INDEX IF NOT EXISTS workflows_status ON workflows (status, created_at)",
    """CREATE TABLE IF NOT EXISTS stage_timings (
        workflow_id TEXT NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
        stage       TEXT NOT NULL,
        seconds     REAL NOT NULL,
        PRIMARY KEY (workflow_id, stage)
    )""",
)
_COLUMNS = "workflow_id, study_key, pipeline, input_hash, status, stage, detail, created_at, updated_at"


class SqliteStateStore(WorkflowStateStore):
    """SQLite in WAL mode (readers never block the writer). One connection per thread; writes take the
    database lock up front (BEGIN IMMEDIATE) so a check-then-update cannot interleave with another
    writer, in this process or another. Timestamps are stored as ISO 8601 UTC text."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self._path = path
        self._timeout = busy_timeout_s
        self._local = threading.local()
        self._connections: builtins.list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def create(self, workflow_id: str, study_key: str, pipeline: str, input_hash: str) -> bool:
        now = _now()
        with self._write() as db:
            cursor = db.execute(
                f"INSERT INTO workflows ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, '', ?, ?) "
                "ON CONFLICT DO NOTHING",
                (workflow_id, study_key, pipeline, input_hash, WorkflowStatus.PENDING.value, now, now),
            )
            return cursor.rowcount == 1

    def get(self, workflow_id: str) -> WorkflowRecord | None:
        rows = self._select("WHERE workflow_id = ?", (workflow_id,))
        return rows[0] if rows else None

    def set_status(
        self, workflow_id: str, status: WorkflowStatus, *, stage: str | None, detail: str = ""
    ) -> None:
        status = WorkflowStatus(status)
        with self._write() as db:
            row = db.execute("SELECT status FROM workflows WHERE workflow_id = ?", (workflow_id,)).fetchone()
            if row is None:
                raise WorkflowNotFound(f"no workflow {workflow_id!r}")
            current = WorkflowStatus(row[0])
            if status != current and status not in ALLOWED_TRANSITIONS[current]:
                raise InvalidTransition(f"workflow {workflow_id}: cannot go from {current} to {status} "
                                        f"(allowed: {sorted(ALLOWED_TRANSITIONS[current]) or 'none'})")
            db.execute(
                "UPDATE workflows SET status = ?, stage = ?, detail = ?, updated_at = ? "
                "WHERE workflow_id = ?",
                (status.value, stage, detail, _now(), workflow_id),
            )

    def record_stage_timing(self, workflow_id: str, stage: str, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"workflow {workflow_id} stage {stage}: "
                             f"duration must be finite and >= 0, not {seconds}")
        with self._write() as db:
            cursor = db.execute("UPDATE workflows SET updated_at = ? WHERE workflow_id = ?",
                                (_now(), workflow_id))
            if cursor.rowcount == 0:
                raise WorkflowNotFound(f"no workflow {workflow_id!r}")
            db.execute("INSERT INTO stage_timings (workflow_id, stage, seconds) VALUES (?, ?, ?) "
                       "ON CONFLICT (workflow_id, stage) DO UPDATE SET seconds = excluded.seconds",
                       (workflow_id, stage, float(seconds)))

    def list(self, status: WorkflowStatus | None = None) -> builtins.list[WorkflowRecord]:
        if status is None:
            return self._select("", ())
        return self._select("WHERE status = ?", (WorkflowStatus(status).value,))

    def find(self, study_key: str, pipeline: str, input_hash: str) -> WorkflowRecord | None:
        rows = self._select("WHERE study_key = ? AND pipeline = ? AND input_hash = ?",
                            (study_key, pipeline, input_hash))
        return rows[0] if rows else None

    def close(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    # -- internals -----------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), never implicit.
            connection = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _write(self) -> _Transaction:
        return _Transaction(self._connection())

    def _migrate(self) -> None:
        with self._write() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            found = row[0]
            if found is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (_SCHEMA_VERSION,))
            elif found > _SCHEMA_VERSION:
                raise NeuroflowError(f"state database {self._path} has schema version {found}, newer than "
                                     f"this neuroflow understands ({_SCHEMA_VERSION}): upgrade neuroflow")

    def _select(self, where: str, parameters: tuple[str, ...]) -> builtins.list[WorkflowRecord]:
        db = self._connection()
        rows = db.execute(f"SELECT {_COLUMNS} FROM workflows {where} ORDER BY created_at, workflow_id",
                          parameters).fetchall()
        if not rows:
            return []
        ids = [r[0] for r in rows]
        timings: dict[str, dict[str, float]] = {i: {} for i in ids}
        placeholders = ",".join("?" * len(ids))
        query = f"SELECT workflow_id, stage, seconds FROM stage_timings WHERE workflow_id IN ({placeholders})"
        for workflow_id, stage, seconds in db.execute(query, ids):
            timings[workflow_id][stage] = seconds
        return [
            WorkflowRecord(workflow_id=r[0], study_key=r[1], pipeline=r[2], input_hash=r[3],
                           status=WorkflowStatus(r[4]), stage=r[5], detail=r[6],
                           created_at=datetime.fromisoformat(r[7]), updated_at=datetime.fromisoformat(r[8]),
                           stage_seconds=timings[r[0]])
            for r in rows
        ]


class _Transaction:
    """``with`` block around BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
