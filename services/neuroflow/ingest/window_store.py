"""The wait window's shared state: when each study last received an instance, and which version of it
was last handed on. Kept in the state database, not in a process, so several ingest replicas agree and
a replica that dies mid-way loses nothing: its claim expires and another replica takes the study.

A study is *due* when its newest change is older than the wait window and newer than the change it
was last triggered for. A replica *claims* a due study (an atomic conditional update: exactly one
wins), publishes, then *completes* it at the change sequence it saw. A publish followed by a crash
before completion is published again by the next claimant; the orchestrator's idempotency (same
input hash, same workflow) makes that harmless."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from neuroflow.core.sql_statements import PostgresStatements, SqliteStatements, SqlStatements

_TABLE = """CREATE TABLE IF NOT EXISTS study_windows (
    resource_id     TEXT PRIMARY KEY,
    last_seq        BIGINT NOT NULL,
    last_change_at  DOUBLE PRECISION NOT NULL,
    triggered_seq   BIGINT NOT NULL DEFAULT -1,
    claimed_by      TEXT,
    claim_expires   DOUBLE PRECISION NOT NULL DEFAULT 0
)"""
_CURSOR_TABLE = "CREATE TABLE IF NOT EXISTS feed_cursors (feed TEXT PRIMARY KEY, seq BIGINT NOT NULL)"


@dataclass(frozen=True)
class Claim:
    resource_id: str  # the source's id of the study (Orthanc's study id)
    seq: int  # the newest change of the study when it was claimed
    holder: str


class WindowStore(ABC):
    @abstractmethod
    def touch(self, resource_id: str, seq: int, at: float) -> None:
        """Record a change of the study (idempotent; keeps the newest sequence and time)."""

    @abstractmethod
    def claim_due(self, now: float, window_s: float, holder: str, lease_s: float) -> list[Claim]:
        """Claim every study quiet for ``window_s`` whose newest change has not been handed on, and whose
        earlier claim (if any) has expired. Each study is claimed by exactly one caller."""

    @abstractmethod
    def complete(self, claim: Claim) -> None:
        """The claimed version was handed on: it is not due again until a newer change arrives."""

    @abstractmethod
    def release(self, claim: Claim) -> None:
        """Give the claim up without completing (try again at the next tick)."""

    @abstractmethod
    def cursor(self, feed: str) -> int:
        """The change-feed position every replica has read up to (0: never read)."""

    @abstractmethod
    def advance_cursor(self, feed: str, seq: int) -> None:
        """Move the shared feed position forward (never back)."""

    @abstractmethod
    def is_pending(self, resource_id: str) -> bool:
        """Whether the study has a change not yet handed on, or is claimed now (retention keeps it)."""

    @abstractmethod
    def forget_handled(self, before: float) -> int:
        """Retention: delete the rows of studies handed on, unclaimed, whose newest change is older than
        ``before``; returns how many. A study that changes again later gets a new row and is due as usual."""


class _SqlWindowStore(WindowStore, SqlStatements):
    """The statements are the same for SQLite and PostgreSQL; only the placeholders and the
    connection differ. Every statement but the claim may run twice after a lost connection (each keeps a
    maximum or sets fixed values). A claim whose COMMIT was lost is not run again: it raises
    StoreUnavailable, and a claim that did commit just holds its studies until the lease expires."""

    def touch(self, resource_id: str, seq: int, at: float) -> None:
        self._execute(self._sql(
            "INSERT INTO study_windows (resource_id, last_seq, last_change_at) VALUES (?, ?, ?) "
            "ON CONFLICT (resource_id) DO UPDATE SET "
            "last_seq = CASE WHEN excluded.last_seq > study_windows.last_seq "
            "THEN excluded.last_seq ELSE study_windows.last_seq END, "
            "last_change_at = CASE WHEN excluded.last_change_at > study_windows.last_change_at "
            "THEN excluded.last_change_at ELSE study_windows.last_change_at END"), (resource_id, seq, at),
            idempotent=True)

    def claim_due(self, now: float, window_s: float, holder: str, lease_s: float) -> list[Claim]:
        rows = self._execute(self._sql(
            "UPDATE study_windows SET claimed_by = ?, claim_expires = ? "
            "WHERE last_seq > triggered_seq AND last_change_at <= ? "
            "AND (claimed_by IS NULL OR claim_expires < ?) "
            "RETURNING resource_id, last_seq"), (holder, now + lease_s, now - window_s, now))
        return [Claim(str(r[0]), int(r[1]), holder) for r in rows]

    def complete(self, claim: Claim) -> None:
        self._execute(self._sql(
            "UPDATE study_windows SET triggered_seq = ?, claimed_by = NULL, claim_expires = 0 "
            "WHERE resource_id = ? AND claimed_by = ?"), (claim.seq, claim.resource_id, claim.holder), idempotent=True)

    def release(self, claim: Claim) -> None:
        self._execute(self._sql(
            "UPDATE study_windows SET claimed_by = NULL, claim_expires = 0 WHERE resource_id = ? AND claimed_by = ?"),
            (claim.resource_id, claim.holder), idempotent=True)

    def cursor(self, feed: str) -> int:
        rows = self._execute(self._sql("SELECT seq FROM feed_cursors WHERE feed = ?"), (feed,), idempotent=True)
        return int(rows[0][0]) if rows else 0

    def advance_cursor(self, feed: str, seq: int) -> None:
        self._execute(self._sql(
            "INSERT INTO feed_cursors (feed, seq) VALUES (?, ?) ON CONFLICT (feed) DO UPDATE SET "
            "seq = CASE WHEN excluded.seq > feed_cursors.seq THEN excluded.seq ELSE feed_cursors.seq END"),
            (feed, seq), idempotent=True)

    def is_pending(self, resource_id: str) -> bool:
        rows = self._execute(self._sql(
            "SELECT 1 FROM study_windows WHERE resource_id = ? "
            "AND (last_seq > triggered_seq OR claimed_by IS NOT NULL)"), (resource_id,))
        return bool(rows)

    def forget_handled(self, before: float) -> int:
        rows = self._execute(self._sql(
            "DELETE FROM study_windows WHERE last_seq <= triggered_seq AND claimed_by IS NULL AND last_change_at < ? "
            "RETURNING resource_id"), (before,))
        return len(rows)


class SqliteWindowStore(SqliteStatements, _SqlWindowStore):
    """Embedded: one SQLite file (WAL), shared by the threads and processes of one machine."""

    def __init__(self, path: Path) -> None:
        self._open(path)
        self._create_tables(_TABLE, _CURSOR_TABLE)


class PostgresWindowStore(PostgresStatements, _SqlWindowStore):
    """Distributed: the site's PostgreSQL. Row-level locking of UPDATE makes claims exclusive."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 10.0) -> None:
        self._open(dsn, connect_timeout_s=connect_timeout_s)
        self._create_tables(_TABLE, _CURSOR_TABLE)
