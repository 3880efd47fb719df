"""Record store: small byte records by key, shared by every copy of a service. The worker keeps the
``TaskDone`` of each finished task here (so a redelivered task is answered again, not redone) and the
orchestrator keeps each workflow's context (its StudyReady, the task in flight, each stage's answer), so a
restarted process carries on where the last one stopped.

Embedded: a folder (on the same shared mount as the volume store in the distributed mode) or memory.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

# '/'-separated segments of letters, digits, '.', '_', '-', none starting with '.': no escaping the root.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
_SUFFIX = ".rec"


def validate_record_key(key: str) -> str:
    """Return ``key`` when it is a safe relative name; ValueError otherwise."""
    if len(key) > 240 or not _KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid record key {key!r}: use '/'-separated segments of letters, digits, "
                         "'.', '_' and '-', not starting with '.'")
    return key


class RecordStore(ABC):
    """Bytes by key. ``put`` replaces atomically: a reader sees the old record or the new, never half."""

    @abstractmethod
    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing what was there. ValueError for an unsafe key."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The record under ``key``, or None."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the record under ``key``; removing what is not there is not an error."""

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Keys under the folder ``prefix`` (e.g. "workflows/wf-1"), sorted."""


class InMemoryRecordStore(RecordStore):
    """One process, many threads."""

    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._records[validate_record_key(key)] = bytes(value)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._records.get(validate_record_key(key))

    def delete(self, key: str) -> None:
        with self._lock:
            self._records.pop(validate_record_key(key), None)

    def keys(self, prefix: str) -> list[str]:
        folder = validate_record_key(prefix) + "/"
        with self._lock:
            return sorted(k for k in self._records if k.startswith(folder))


class FolderRecordStore(RecordStore):
    """One file per record (``<root>/<key>.rec``), written to a temporary name, flushed and renamed, so a
    crash never leaves half a record and several processes on a shared mount can use one root."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        self._root.mkdir(parents=True, exist_ok=True)

    @property
    def root(self) -> Path:
        return self._root

    def put(self, key: str, value: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with temporary.open("wb") as handle:
                handle.write(value)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[str]:
        folder = self._root / validate_record_key(prefix)
        if not folder.is_dir():
            return []
        # os.walk: a folder another replica's retention sweep removes meanwhile is skipped (rglob raises).
        return sorted((Path(root) / name).relative_to(self._root).as_posix().removesuffix(_SUFFIX)
                      for root, _dirs, names in os.walk(folder) for name in names
                      if name.endswith(_SUFFIX) and not name.startswith("."))

    def _path(self, key: str) -> Path:
        return self._root / f"{validate_record_key(key)}{_SUFFIX}"
