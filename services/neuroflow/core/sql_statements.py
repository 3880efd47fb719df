"""Small SQL stores that run the same statements on SQLite (embedded, one machine) and PostgreSQL
(distributed): each statement in its own transaction, on a connection per thread. The stores write
``?`` placeholders; ``_sql`` turns them into the backend's. A connection the database ended (a restart,
a dropped network path) is replaced, and the statement run again when that is safe (core/sql_reconnect)."""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from neuroflow.core.sql_reconnect import (
    ConnectionLost,
    connect_postgres,
    postgres_connection_lost,
    retry_once,
    safe_dsn,
)

Rows = list[tuple[Any, ...]]


# Any constant: serialises the first creation of a schema by several processes starting at once.
SCHEMA_LOCK_KEY = 0x6E66_7374  # "nfst"


class SqlStatements(ABC):
    _ph = "?"

    def _execute(self, sql: str, params: tuple[Any, ...] = (), *, idempotent: bool = False) -> Rows:
        """Run one statement atomically and return its rows (none for a statement without a result).
        ``idempotent``: running it twice leaves what running it once leaves (a read, an upsert that keeps
        the maximum, an update to fixed values), so it may be run again after a connection lost while
        committing; a statement that is not (a claim: UPDATE ... RETURNING) then raises StoreUnavailable."""
        return retry_once(lambda: self._execute_once(sql, params), idempotent=idempotent,
                          what=f"{type(self).__name__}: {sql.split(maxsplit=1)[0]} statement")

    @abstractmethod
    def _execute_once(self, sql: str, params: tuple[Any, ...]) -> Rows:
        """One attempt at ``_execute``; ConnectionLost when the connection went away (and was dropped)."""

    def _create_tables(self, *ddl: str) -> None:
        """Run ``CREATE ... IF NOT EXISTS`` statements (no parameters), safe when several processes start at once."""
        for statement in ddl:
            self._execute(statement, idempotent=True)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._ph)


class SqliteStatements(SqlStatements):
    """One SQLite file in WAL mode, shared by the threads and processes of a machine. A file has no
    connection to lose; a connection that was closed is replaced, as a PostgreSQL one is."""

    _path: Path
    _local: threading.local

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._local = threading.local()

    def _execute_once(self, sql: str, params: tuple[Any, ...]) -> Rows:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        try:
            # BEGIN IMMEDIATE: a conditional UPDATE (a claim) must not interleave with another writer's.
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.ProgrammingError as error:  # "Cannot operate on a closed database"
            self._local.db = None
            raise ConnectionLost(str(self._path), error, maybe_applied=False) from error
        try:
            rows = db.execute(sql, params).fetchall()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return rows


class PostgresStatements(SqlStatements):
    """The site's PostgreSQL; row-level locking of UPDATE makes conditional updates (claims) exclusive."""

    _ph = "%s"
    _dsn: str
    _connect_timeout_s: float
    _local: threading.local

    def _open(self, dsn: str, *, connect_timeout_s: float = 10.0) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._local = threading.local()

    def _create_tables(self, *ddl: str) -> None:
        # CREATE TABLE IF NOT EXISTS alone races on PostgreSQL (two services starting on a fresh database: one
        # fails with a unique violation in pg_type); one transaction under the schema's advisory lock does not.
        # Without parameters psycopg sends the statements as one simple query, in one transaction.
        self._execute("; ".join([f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})", *ddl]), idempotent=True)

    def _execute_once(self, sql: str, params: tuple[Any, ...]) -> Rows:
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect_postgres(self._dsn, connect_timeout_s=self._connect_timeout_s)
            self._local.db = db
        committing = False
        try:
            # An explicit transaction (BEGIN, the statement, COMMIT) rather than autocommit: a connection
            # lost before COMMIT was sent is known not to have applied anything, so it may be run again.
            with db.transaction():
                cursor = db.execute(sql, params)
                rows = list(cursor.fetchall()) if cursor.description is not None else []
                committing = True
        except Exception as error:
            if not postgres_connection_lost(error, db):
                raise
            self._local.db = None
            raise ConnectionLost(safe_dsn(self._dsn), error, maybe_applied=committing) from error
        return rows
