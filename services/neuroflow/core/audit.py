"""The audit trail: every action on a study (its workflow created, each stage started and finished by which
replica with which model, retries, failures, dead letters, deliveries, an operator's replays and re-runs) in
an append-only, hash-chained table of the workflow state database (mixed into ``core.state.SqlStateStore``,
the same statements on SQLite and PostgreSQL).

One chain per study: record ``seq`` n of a study carries ``prev_hash`` (record n-1's hash, 64 zeros for the
first) and ``hash = sha256(prev_hash || canonical JSON of the record)``. Altering a record breaks its own
hash; deleting or inserting one breaks the sequence and the next record's ``prev_hash``. Per study, not one
global chain: verifying a study reads only its records, and replicas working on different studies never wait
on one lock (a global head would serialise every transition of the site). What a chain alone cannot show is
its own tail cut off or a whole study's chain removed: that needs the hashes anchored outside the database
(a later step; the newest hash of each study is what to anchor).

Appends to one study's chain are serialised: SQLite's write transactions already exclude each other (BEGIN
IMMEDIATE), PostgreSQL takes a transaction-scoped advisory lock on the study (``_lock_chain``); the UNIQUE
(study_key, seq) constraint is the backstop. An append made beside a workflow change runs in that change's
transaction, so the record exists exactly when the change does.

No PHI: studies are named by their pseudonymous key, actors by service and replica (host-pid-random), details
carry stage names, model name and version, counts and the failure texts that already name only the key.
Append-only: this module has no UPDATE or DELETE on ``audit_trail``, and retention never deletes from it
(``SqlStateStore._WORKFLOW_TABLES`` does not list it).
"""

from __future__ import annotations

import builtins
import hashlib
import json
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

AUDIT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_trail (
        study_key TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        at        TEXT NOT NULL,
        action    TEXT NOT NULL,
        actor     TEXT NOT NULL,
        detail    TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL,
        PRIMARY KEY (study_key, seq)
    )""",
)

GENESIS_HASH = "0" * 64
_COLUMNS = "study_key, seq, at, action, actor, detail, prev_hash, hash"
_T = TypeVar("_T")


class AuditAction:
    """What happened to a study (the ``action`` column)."""

    HANDED_ON = "classified and handed on"  # by ingest: the study routed to a pipeline, with its roles
    ROUTING_FAILED = "routing failed"
    WORKFLOW_CREATED = "workflow created"
    STAGE_STARTED = "stage started"
    STAGE_FINISHED = "stage finished"
    RETRY_SCHEDULED = "retry scheduled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead-lettered"
    DELIVERED = "delivered"
    DELIVERY_GIVEN_UP = "delivery given up"
    RETRACTED = "retraction delivered"  # a rejected result's superseding notice reached its destination
    REPLAYED = "replayed"
    RERUN_REQUESTED = "re-run requested"
    VIEWED = "viewed"  # an operator read the study's history or audit trail
    REVIEWED = "result reviewed"  # a radiologist accepted or rejected a result (console)
    CANCELLED = "cancelled"  # an operator cancelled a workflow (console or admin)
    HELD = "held: pipeline paused"  # a workflow waits for its paused pipeline to be resumed
    PIPELINE_PAUSED = "pipeline paused"  # (chain OPERATIONS_CHAIN)
    PIPELINE_RESUMED = "pipeline resumed"  # (chain OPERATIONS_CHAIN)
    LOGGED_IN = "logged in"  # (chain SESSIONS_CHAIN) a console user; the user name, never a password
    LOGGED_OUT = "logged out"  # (chain SESSIONS_CHAIN)
    LOG_IN_REFUSED = "log-in refused"  # (chain SESSIONS_CHAIN) wrong password, unknown user, OIDC refusal


# Chains of the audit trail that are not a study's: the site's own records, in the same hash-chained table
# (``neuroflow admin audit <chain>`` reads and verifies them like a study's). Not a study key (those are hex).
OPERATIONS_CHAIN = "site:operations"  # pausing and resuming pipelines
SESSIONS_CHAIN = "site:console-sessions"  # every log-in, log-out and refused log-in of the console


@dataclass(frozen=True)
class AuditRecord:
    study_key: str
    seq: int  # 1, 2, ... within the study's chain
    at: str  # ISO 8601 UTC, microseconds
    action: str
    actor: str  # service/replica
    detail: str  # canonical JSON, as hashed (a tampered one may not even parse: see ``fields``)
    prev_hash: str
    hash: str

    def fields(self) -> Any:
        """The detail parsed, or the raw text when it is not JSON."""
        try:
            return json.loads(self.detail)
        except ValueError:
            return self.detail


@dataclass(frozen=True)
class ChainCheck:
    """The result of verifying a study's chain: ``broken_at`` is the seq of the first record that does not
    fit (None when intact), ``problem`` says how."""

    study_key: str
    records: int
    broken_at: int | None
    problem: str

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def record_hash(prev_hash: str, study_key: str, seq: int, at: str, action: str, actor: str, detail: str) -> str:
    """sha256 over the previous hash and the record's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps({"study_key": study_key, "seq": seq, "at": at, "action": action, "actor": actor,
                            "detail": detail}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(prev_hash.encode("ascii") + canonical.encode("ascii")).hexdigest()


def canonical_detail(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def verify_chain(study_key: str, rows: builtins.list[AuditRecord]) -> ChainCheck:
    """Recompute the chain of ``rows`` (ordered by seq) and name the first record that does not fit."""
    prev_hash, expected_seq = GENESIS_HASH, 1
    for record in rows:
        if record.seq != expected_seq:
            return ChainCheck(study_key, len(rows), record.seq,
                              f"record {record.seq} follows record {expected_seq - 1}: "
                              f"record(s) {expected_seq}..{record.seq - 1} missing")
        if record.prev_hash != prev_hash:
            return ChainCheck(study_key, len(rows), record.seq,
                              f"record {record.seq} does not follow its predecessor (prev_hash differs)")
        recomputed = record_hash(record.prev_hash, record.study_key, record.seq, record.at, record.action,
                                 record.actor, record.detail)
        if recomputed != record.hash:
            return ChainCheck(study_key, len(rows), record.seq,
                              f"record {record.seq} ({record.action}) was altered: its hash does not match "
                              "its content")
        prev_hash, expected_seq = record.hash, expected_seq + 1
    return ChainCheck(study_key, len(rows), None, "")


class AuditStatements:
    """The statements on ``audit_trail``; SqlStateStore supplies the connection, placeholders and lock."""

    # Who this process's workflow changes are recorded as (service/replica); the service sets it at start.
    audit_actor: str = "neuroflow"

    @abstractmethod
    def _run(self, work: Callable[[Any], _T], *, idempotent: bool, what: str, transaction: bool = True) -> _T: ...

    @abstractmethod
    def _sql(self, sql: str) -> str: ...

    def _lock_chain(self, db: Any, study_key: str) -> None:
        """Inside the append's transaction: keep other appends to this study's chain out until COMMIT.
        Nothing by default, for a backend whose write transactions already exclude each other."""

    def audit_append(self, study_key: str, action: str, detail: Mapping[str, Any], *,
                     actor: str | None = None) -> AuditRecord:
        """Append one record to the study's chain, in its own transaction."""
        # Not repeated after a lost COMMIT: a second run would append the action twice.
        return self._run(lambda db: self._append_on(db, study_key, action, actor or self.audit_actor, detail),
                         idempotent=False, what=f"audit study {study_key}")

    def _append_on(self, db: Any, study_key: str, action: str, actor: str,
                   detail: Mapping[str, Any]) -> AuditRecord:
        """Append in the caller's transaction (beside the workflow change it records)."""
        self._lock_chain(db, study_key)
        row = db.execute(self._sql("SELECT seq, hash FROM audit_trail WHERE study_key = ? "
                                   "ORDER BY seq DESC LIMIT 1"), (study_key,)).fetchone()
        seq, prev_hash = (int(row[0]) + 1, str(row[1])) if row else (1, GENESIS_HASH)
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        text = canonical_detail(detail)
        digest = record_hash(prev_hash, study_key, seq, at, action, actor, text)
        db.execute(self._sql(f"INSERT INTO audit_trail ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                   (study_key, seq, at, action, actor, text, prev_hash, digest))
        return AuditRecord(study_key, seq, at, action, actor, text, prev_hash, digest)

    def audit_records(self, study_key: str) -> builtins.list[AuditRecord]:
        """The study's chain, oldest first."""
        rows = self._run(lambda db: list(db.execute(self._sql(
            f"SELECT {_COLUMNS} FROM audit_trail WHERE study_key = ? ORDER BY seq"), (study_key,)).fetchall()),
            idempotent=True, what=f"read audit of study {study_key}", transaction=False)
        return [AuditRecord(r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def audit_verify(self, study_key: str) -> ChainCheck:
        """Recompute the study's chain; the first record that does not fit is named."""
        return verify_chain(study_key, self.audit_records(study_key))
