"""Workflow state in PostgreSQL: the distributed runtime's WorkflowStateStore (see core/state.py for
the contract; the SQLite store is the embedded one, and the same contract tests run on both).

Several orchestrator processes share one database. The two invariants are the database's to keep: a
UNIQUE (study_key, pipeline, input_hash) constraint with INSERT ... ON CONFLICT DO NOTHING makes the
same work exist once; a status change reads the current status with SELECT ... FOR UPDATE and writes
the new one in the same transaction, so two workers cannot both move a workflow from the same status.
"""

from __future__ import annotations

import builtins
import math
import threading
from datetime import UTC, datetime
from typing import Any

import psycopg

from neuroflow.core.errors import NeuroflowError
from neuroflow.core.state import (
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    WorkflowNotFound,
    WorkflowRecord,
    WorkflowStateStore,
    WorkflowStatus,
)

_SCHEMA_VERSION = 1
# Any constant: serialises the first creation of the schema by several processes starting at once.
_MIGRATION_LOCK_KEY = 0x6E66_7374  # "nfst"
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
        created_at  TIMESTAMPTZ NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL,
        UNIQUE (study_key, pipeline, input_hash)
    )""",
    "CREATE INDEX IF NOT EXISTS workflows_status ON workflows (status, created_at)",
    """CREATE TABLE IF NOT EXISTS stage_timings (
        workflow_id TEXT NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
        stage       TEXT NOT NULL,
        seconds     DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (workflow_id, stage)
    )""",
)
_COLUMNS = "workflow_id, study_key, pipeline, input_hash, status, stage, detail, created_at, updated_at"


class PostgresStateStore(WorkflowStateStore):
    """Over psycopg 3, one connection per thread (autocommit; every write is an explicit transaction).
    ``dsn`` is a libpq connection string or URL. Timestamps are TIMESTAMPTZ, taken from this process's
    clock (as the SQLite store does) and returned in UTC. Refuses (NeuroflowError) a database whose
    schema is newer than this code understands."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 10.0) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout_s
        self._local = threading.local()
        self._connections: builtins.list[psycopg.Connection[Any]] = []
        self._connections_lock = threading.Lock()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def create(self, workflow_id: str, study_key: str, pipeline: str, input_hash: str) -> bool:
        now = _now()
        db = self._connection()
        with db.transaction():
            cursor = db.execute(
                f"INSERT INTO workflows ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, NULL, '', %s, %s) "
                "ON CONFLICT DO NOTHING",
                (workflow_id, study_key, pipeline, input_hash, WorkflowStatus.PENDING.value, now, now),
            )
            return cursor.rowcount == 1

    def get(self, workflow_id: str) -> WorkflowRecord | None:
        rows = self._select("WHERE workflow_id = %s", (workflow_id,))
        return rows[0] if rows else None

    def set_status(
        self, workflow_id: str, status: WorkflowStatus, *, stage: str | None, detail: str = ""
    ) -> None:
        status = WorkflowStatus(status)
        db = self._connection()
        with db.transaction():
            row = db.execute("SELECT status FROM workflows WHERE workflow_id = %s FOR UPDATE",
                             (workflow_id,)).fetchone()
            if row is None:
                raise WorkflowNotFound(f"no workflow {workflow_id!r}")
            current = WorkflowStatus(row[0])
            if status != current and status not in ALLOWED_TRANSITIONS[current]:
                raise InvalidTransition(f"workflow {workflow_id}: cannot go from {current} to {status} "
                                        f"(allowed: {sorted(ALLOWED_TRANSITIONS[current]) or 'none'})")
            db.execute("UPDATE workflows SET status = %s, stage = %s, detail = %s, updated_at = %s "
                       "WHERE workflow_id = %s", (status.value, stage, detail, _now(), workflow_id))

    def record_stage_timing(self, workflow_id: str, stage: str, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"workflow {workflow_id} stage {stage}: "
                             f"duration must be finite and >= 0, not {seconds}")
        db = self._connection()
        with db.transaction():
            cursor = db.execute("UPDATE workflows SET updated_at = %s WHERE workflow_id = %s",
                                (_now(), workflow_id))
            if cursor.rowcount == 0:
                raise WorkflowNotFound(f"no workflow {workflow_id!r}")
            db.execute("INSERT INTO stage_timings (workflow_id, stage, seconds) VALUES (%s, %s, %s) "
                       "ON CONFLICT (workflow_id, stage) DO UPDATE SET seconds = excluded.seconds",
                       (workflow_id, stage, float(seconds)))

    def list(self, status: WorkflowStatus | None = None) -> builtins.list[WorkflowRecord]:
        if status is None:
            return self._select("", ())
        return self._select("WHERE status = %s", (WorkflowStatus(status).value,))

    def find(self, study_key: str, pipeline: str, input_hash: str) -> WorkflowRecord | None:
        rows = self._select("WHERE study_key = %s AND pipeline = %s AND input_hash = %s",
                            (study_key, pipeline, input_hash))
        return rows[0] if rows else None

    def close(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    # -- internals -----------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        connection: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed:
            try:
                connection = psycopg.connect(self._dsn, autocommit=True,
                                             connect_timeout=max(1, round(self._connect_timeout)),
                                             options="-c timezone=UTC")
            except psycopg.OperationalError as error:
                raise NeuroflowError(f"workflow state database unavailable ({_safe(self._dsn)}): {error}") from error
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _migrate(self) -> None:
        db = self._connection()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            for statement in _SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            found = row[0] if row else None
            if found is None:
                db.execute("INSERT INTO schema_version (version) VALUES (%s)", (_SCHEMA_VERSION,))
            elif found > _SCHEMA_VERSION:
                raise NeuroflowError(f"state database {_safe(self._dsn)} has schema version {found}, newer than "
                                     f"this neuroflow understands ({_SCHEMA_VERSION}): upgrade neuroflow")

    def _select(self, where: str, parameters: tuple[str, ...]) -> builtins.list[WorkflowRecord]:
        db = self._connection()
        rows = db.execute(f"SELECT {_COLUMNS} FROM workflows {where} ORDER BY created_at, workflow_id",
                          parameters).fetchall()
        if not rows:
            return []
        ids = [r[0] for r in rows]
        timings: dict[str, dict[str, float]] = {i: {} for i in ids}
        for workflow_id, stage, seconds in db.execute(
                "SELECT workflow_id, stage, seconds FROM stage_timings WHERE workflow_id = ANY(%s)", (ids,)):
            timings[workflow_id][stage] = seconds
        return [
            WorkflowRecord(workflow_id=r[0], study_key=r[1], pipeline=r[2], input_hash=r[3],
                           status=WorkflowStatus(r[4]), stage=r[5], detail=r[6],
                           created_at=r[7].astimezone(UTC), updated_at=r[8].astimezone(UTC),
                           stage_seconds=timings[r[0]])
            for r in rows
        ]


def _now() -> datetime:
    return datetime.now(UTC)


def _safe(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())
