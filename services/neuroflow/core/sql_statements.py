"""Small SQL stores that run the same statements on SQLite (embedded, one machine) and PostgreSQL
(distributed): each statement in its own transaction, on a connection per thread. The stores write
``?`` placeholders; ``_sql`` turns them into the backend's."""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

Rows = list[tuple[Any, ...]]


class SqlStatements(ABC):
    _ph = "?"

    @abstractmethod
    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> Rows:
        """Run one statement atomically and return its rows (none for a statement without a result)."""

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._ph)


class SqliteStatements(SqlStatements):
    """One SQLite file in WAL mode, shared by the threads and processes of a machine."""

    _path: Path
    _local: threading.local

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._local = threading.local()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> Rows:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        # BEGIN IMMEDIATE: a conditional UPDATE (a claim) must not interleave with another writer's.
        db.execute("BEGIN IMMEDIATE")
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
    _local: threading.local

    def _open(self, dsn: str) -> None:
        self._dsn = dsn
        self._local = threading.local()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> Rows:
        db = getattr(self._local, "db", None)
        if db is None:
            import psycopg  # deferred: only the distributed runtime needs it

            db = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
            self._local.db = db
        with db.transaction():
            cursor = db.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description is not None else []
