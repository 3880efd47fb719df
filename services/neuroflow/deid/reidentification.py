"""The re-identification map: which original PatientID, StudyInstanceUID and SeriesInstanceUID a pseudonym
stands for. It stays at the site (a SQLite file under the site's state folder, readable by its owner only)
and never goes into a de-identified object; with the site's key secret it is what re-identifies a result
that comes back from research."""

from __future__ import annotations

import os
import sqlite3
from enum import StrEnum
from pathlib import Path


class Kind(StrEnum):
    """What a pseudonym replaces."""

    PATIENT = "patient"  # PatientID
    STUDY = "study"  # StudyInstanceUID
    SERIES = "series"  # SeriesInstanceUID


_SCHEMA = """CREATE TABLE IF NOT EXISTS pseudonyms (
    kind TEXT NOT NULL, pseudonym TEXT NOT NULL, original TEXT NOT NULL, PRIMARY KEY (kind, pseudonym))"""


class ReidentificationMap:
    """Pseudonym -> original, per kind, in the SQLite file ``path`` (made 0600 if new)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # created private: the file pairs pseudonyms with patient identifiers
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute(_SCHEMA)
        self._db.commit()

    def record(self, pairs: list[tuple[Kind, str, str]]) -> None:
        """Remember each (kind, pseudonym, original); one already known is left as it is (pseudonyms are
        deterministic, so the same pair comes again with every instance)."""
        self._db.executemany("INSERT OR IGNORE INTO pseudonyms (kind, pseudonym, original) VALUES (?, ?, ?)",
                             [(str(kind), pseudonym, original) for kind, pseudonym, original in pairs])
        self._db.commit()

    def original(self, kind: Kind, pseudonym: str) -> str | None:
        """What ``pseudonym`` replaced, None when this site never made it."""
        row = self._db.execute("SELECT original FROM pseudonyms WHERE kind = ? AND pseudonym = ?",
                               (str(kind), pseudonym)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._db.close()
