"""Workflow state in PostgreSQL: the distributed runtime's WorkflowStateStore (see core/state.py for
the contract and the statements, shared with the embedded SQLite store; the same contract tests run on
both). Only this module (and core/sql_reconnect, when called) imports psycopg, so the embedded runtime
never needs it.

Several orchestrator processes share one database. The two invariants are the database's to keep: a
UNIQUE (study_key, pipeline, input_hash) constraint with INSERT ... ON CONFLICT DO NOTHING makes the
same work exist once; a status change reads the current status with SELECT ... FOR UPDATE and writes
the new one in the same transaction, so two workers cannot both move a workflow from the same status.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg

from neuroflow.core.sql_reconnect import connect_postgres, postgres_connection_lost, safe_dsn
from neuroflow.core.sql_statements import SCHEMA_LOCK_KEY
from neuroflow.core.state import SqlStateStore

_AUDIT_LOCK_SPACE = 0x6E66_6175  # "nfau": the first key of the (space, study) advisory lock of an audit chain


class PostgresStateStore(SqlStateStore["psycopg.Connection[Any]"]):
    """Over psycopg 3, one connection per thread (autocommit; every write is an explicit transaction).
    ``dsn`` is a libpq connection string or URL. Timestamps are TIMESTAMPTZ, taken from this process's
    clock (as the SQLite store does) and returned in UTC. Refuses (NeuroflowError) a database whose
    schema is newer than this code understands. A database that cannot be reached: StoreUnavailable."""

    _ph = "%s"
    _timestamp_type = "TIMESTAMPTZ"
    _real_type = "DOUBLE PRECISION"
    # Under READ COMMITTED two transactions could both read RUNNING and both write their own status;
    # FOR UPDATE makes the second wait for the first to commit, then read the status it wrote.
    _lock_row = " FOR UPDATE"

    def __init__(self, dsn: str, *, connect_timeout_s: float = 10.0) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout_s
        super().__init__()

    def _connect(self) -> psycopg.Connection[Any]:
        connection: psycopg.Connection[Any] = connect_postgres(
            self._dsn, connect_timeout_s=self._connect_timeout, role="workflow state database",
            options="-c timezone=UTC")
        return connection

    def _is_closed(self, connection: psycopg.Connection[Any]) -> bool:
        return connection.closed

    def _connection_lost(self, error: BaseException, connection: psycopg.Connection[Any]) -> bool:
        return postgres_connection_lost(error, connection)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        db = self._connection()
        with db.transaction():
            yield db

    def _lock_schema(self, db: psycopg.Connection[Any]) -> None:
        # Released at the end of the migration's transaction: CREATE TABLE IF NOT EXISTS alone races.
        db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))

    def _lock_chain(self, db: psycopg.Connection[Any], study_key: str) -> None:
        # Under READ COMMITTED two appends could read the same last record and both chain onto it: the
        # study's lock, held until COMMIT, makes the second read the record the first appended.
        db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_AUDIT_LOCK_SPACE, study_key))

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _time_value(self, moment: datetime) -> datetime:
        return moment.astimezone(UTC)

    def _read_time(self, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def _name(self) -> str:
        return safe_dsn(self._dsn)
