"""Radiologists' decisions on results: accept or reject, a 1-5 quality score, the components kept or
removed, a comment; who and when. Kept in the workflow state's database (table ``console_reviews``),
every decision a new row (a later one supersedes an earlier one of the same result; none is changed).
In the core: the console records them, the delivery loop and the results services' corrections read them.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from neuroflow.core.config import StateSettings
from neuroflow.core.errors import NeuroflowError
from neuroflow.core.sql_statements import PostgresStatements, SqliteStatements, SqlStatements

_TABLE = """CREATE TABLE IF NOT EXISTS console_reviews (
    review_id TEXT PRIMARY KEY,
    study_key TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    model TEXT NOT NULL,
    decision TEXT NOT NULL,
    quality INTEGER,
    removed_components TEXT NOT NULL,
    comment TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    decided_at {real} NOT NULL
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS console_reviews_study ON console_reviews (study_key, decided_at)"
_COLUMNS = ("review_id, study_key, workflow_id, pipeline, model, decision, quality, removed_components, comment, "
            "reviewer, decided_at")
MAX_COMMENT = 2000


class Decision(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class InvalidReview(NeuroflowError):
    """A decision that cannot be recorded as given (names the study and what is wrong)."""


@dataclass(frozen=True)
class ReviewDecision:
    study_key: str
    workflow_id: str
    pipeline: str
    model: str  # name/version, as the metrics label it
    decision: Decision
    quality: int | None  # 1 (unusable) .. 5 (as a radiologist would draw it); None: not scored
    reviewer: str
    removed_components: list[str] = field(default_factory=list)
    comment: str = ""
    decided_at: float = 0.0
    review_id: str = ""

    def checked(self) -> ReviewDecision:
        if self.quality is not None and not 1 <= self.quality <= 5:
            raise InvalidReview(f"study {self.study_key}: quality score {self.quality} is not 1 to 5")
        if len(self.comment) > MAX_COMMENT:
            raise InvalidReview(f"study {self.study_key}: the comment is longer than {MAX_COMMENT} characters")
        return self


class ReviewStore(SqlStatements):
    def record(self, review: ReviewDecision, now: float | None = None) -> ReviewDecision:
        review = review.checked()
        stored = ReviewDecision(**{**review.__dict__, "decided_at": time.time() if now is None else now,
                                   "review_id": uuid.uuid4().hex})
        self._execute(self._sql(f"INSERT INTO console_reviews ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                      (stored.review_id, stored.study_key, stored.workflow_id, stored.pipeline, stored.model,
                       stored.decision.value, stored.quality, json.dumps(stored.removed_components), stored.comment,
                       stored.reviewer, stored.decided_at))
        return stored

    def of_study(self, study_key: str) -> list[ReviewDecision]:
        """The study's decisions, oldest first."""
        rows = self._execute(self._sql(f"SELECT {_COLUMNS} FROM console_reviews WHERE study_key = ? "
                                       "ORDER BY decided_at, review_id"), (study_key,), idempotent=True)
        return [_decision(r) for r in rows]

    def get(self, review_id: str) -> ReviewDecision | None:
        """One decision (a correction's delivery names the review it carries out)."""
        rows = self._execute(self._sql(f"SELECT {_COLUMNS} FROM console_reviews WHERE review_id = ?"), (review_id,),
                             idempotent=True)
        return _decision(rows[0]) if rows else None

    def rejected(self, workflow_id: str) -> bool:
        """Whether the workflow's result stands rejected (its latest decision): the delivery loop sends
        nothing more of it."""
        rows = self._execute(self._sql("SELECT decision FROM console_reviews WHERE workflow_id = ? "
                                       "ORDER BY decided_at DESC, review_id DESC LIMIT 1"), (workflow_id,),
                             idempotent=True)
        return bool(rows) and Decision(rows[0][0]) == Decision.REJECTED

    def latest_by_workflow(self) -> dict[str, Decision]:
        """Each reviewed workflow's standing decision (its latest), for the worklist."""
        rows = self._execute("SELECT workflow_id, decision, decided_at FROM console_reviews ORDER BY decided_at",
                             idempotent=True)
        return {str(r[0]): Decision(r[1]) for r in rows}


def _decision(r: Any) -> ReviewDecision:
    return ReviewDecision(review_id=r[0], study_key=r[1], workflow_id=r[2], pipeline=r[3], model=r[4],
                          decision=Decision(r[5]), quality=r[6], removed_components=json.loads(r[7]),
                          comment=r[8], reviewer=r[9], decided_at=float(r[10]))


class SqliteReviewStore(SqliteStatements, ReviewStore):
    def __init__(self, path: Path) -> None:
        self._open(path)
        self._create_tables(_TABLE.format(real="REAL"), _INDEX)


class PostgresReviewStore(PostgresStatements, ReviewStore):
    def __init__(self, dsn: str, *, connect_timeout_s: float = 10.0) -> None:
        self._open(dsn, connect_timeout_s=connect_timeout_s)
        self._create_tables(_TABLE.format(real="DOUBLE PRECISION"), _INDEX)


def review_store(settings: StateSettings) -> ReviewStore:
    """The review table in the workflow state's database (SQLite: the state file itself)."""
    if settings.kind == "postgres":
        return PostgresReviewStore(settings.connection_dsn(), connect_timeout_s=settings.connect_timeout_s)
    return SqliteReviewStore(settings.sqlite_path)
