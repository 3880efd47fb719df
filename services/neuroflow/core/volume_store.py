"""Volume store: where stages leave volumes for the next stage. Messages carry a ``VolumeRef`` (the
store's reference plus the SHA-256 of the content), never voxels. Embedded: a local folder. A shared
mount (or, later, object storage) serves the distributed mode through the same interface.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import SimpleITK as sitk

from neuroflow.core.errors import NeuroflowError
from neuroflow.core.volume import Geometry, Volume, geometry_of
from neuroflow.proto.neuroflow.v1 import common_pb2

# A key is one or more '/'-separated segments of letters, digits, '_', '-' and '.', each starting with a
# letter, digit, '_' or '-': so no '..' or '.' segment, no hidden files, no absolute path, no backslash.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
_MAX_KEY_LENGTH = 200
# dtypes MetaImage cannot hold are written as a wider type and cast back on reading (exactly).
_STORED_AS: dict[np.dtype[Any], np.dtype[Any]] = {
    np.dtype(np.bool_): np.dtype(np.uint8),
    np.dtype(np.float16): np.dtype(np.float32),
}
_SIDECAR_FORMAT = 1
# Reads retried when a concurrent overwrite removes the version being read (see FolderVolumeStore.get).
_READ_ATTEMPTS = 20


class VolumeNotFound(NeuroflowError):
    """No volume under the reference (never stored, deleted, or a reference of another store)."""


class VolumeCorrupted(NeuroflowError):
    """A stored volume no longer matches the digest recorded when it was stored."""


def validate_key(key: str) -> str:
    """Return ``key`` when it is a safe relative name (see _KEY_PATTERN); ValueError otherwise."""
    if len(key) > _MAX_KEY_LENGTH or not _KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"invalid volume key {key!r}: use '/'-separated segments of letters, digits, '.', '_' and '-', "
            f"not starting with '.', at most {_MAX_KEY_LENGTH} characters (no '..', no absolute paths)"
        )
    return key


def content_sha256(volume: Volume) -> str:
    """SHA-256 of what a volume *is*: dtype, shape, geometry, metadata and voxels (little-endian, C order).

    Independent of the file format and compression, so any store gives the same digest for the same
    volume, and two volumes that differ in any voxel, in geometry or in metadata never share one."""
    array = np.ascontiguousarray(volume.array)
    header = {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "geometry": _geometry_to_json(volume.geometry),
        "meta": dict(sorted(volume.meta.items())),
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


class VolumeStore(ABC):
    """Stores volumes under keys chosen by the caller (e.g. ``<study_key>/<workflow_id>/t1ce``).

    ``put`` under an existing key replaces the volume atomically: a reader sees the old volume or the new
    one, never a mixture. References are opaque strings valid for any store over the same storage."""

    @abstractmethod
    def put(self, key: str, volume: Volume) -> str:
        """Store ``volume`` under ``key`` and return its reference. ValueError for an unsafe key."""

    @abstractmethod
    def get(self, ref: str) -> Volume:
        """The volume under ``ref`` with its geometry and meta exactly as stored.

        Raises VolumeNotFound when nothing is stored there, VolumeCorrupted when the content no longer
        matches its digest, ValueError for a malformed reference."""

    @abstractmethod
    def exists(self, ref: str) -> bool:
        """True when a volume is stored under ``ref``."""

    @abstractmethod
    def delete(self, ref: str) -> None:
        """Remove the volume under ``ref``; deleting what is not there is not an error (idempotent)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> tuple[int, int]:
        """Remove every volume whose key lies under the folder ``prefix`` (e.g. ``<study_key>/<workflow_id>``)
        and what else the store keeps there; returns (volumes removed, bytes freed). Idempotent. For
        retention, of work that is finished: a volume written there meanwhile may be removed too."""

    @abstractmethod
    def sha256(self, ref: str) -> str:
        """The content digest (``content_sha256``) recorded when the volume was stored; VolumeNotFound."""

    def put_ref(self, key: str, volume: Volume) -> common_pb2.VolumeRef:
        """``put`` and return the ``VolumeRef`` a message carries (digest of what this call stored)."""
        return common_pb2.VolumeRef(uri=self.put(key, volume), sha256=content_sha256(volume))

    def get_ref(self, ref: common_pb2.VolumeRef) -> Volume:
        """``get`` the volume a message's ``VolumeRef`` names, refusing (VolumeCorrupted) one whose content is
        no longer what the reference was made for (the key was overwritten since: a stale message)."""
        volume = self.get(ref.uri)
        if ref.sha256 and content_sha256(volume) != ref.sha256:
            raise VolumeCorrupted(f"volume at {ref.uri} changed since the reference was made (SHA-256 "
                                  f"{ref.sha256[:12]}... expected): the message is stale")
        return volume


class FolderVolumeStore(VolumeStore):
    """Volumes as compressed MetaImage (``.mha``) files under ``root`` with a JSON sidecar per key.

    Layout for key ``k``: ``k.json`` (the sidecar: digest, dtype, geometry, meta, and the name of the data
    file) and ``k.<digest[:16]>.mha`` (the data). The sidecar is the commit point: data is written first
    under its own content-derived name, then the sidecar is replaced with ``os.replace``, then the data
    file of the previous version is removed. So a reader always finds a complete pair, and an interrupted
    write leaves the previous version intact. Writers of one key are serialised with a lock file
    (``root/.locks``), which also holds between processes on one host.

    References are ``file://`` URIs of the sidecar: every worker must see ``root`` at the same path.
    MetaImage keeps spacing, origin and the direction matrix to 17 significant digits (exact doubles), in
    LPS, so nothing is reoriented on the way through."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        (self._root / ".locks").mkdir(parents=True, exist_ok=True)

    @property
    def root(self) -> Path:
        return self._root

    def put(self, key: str, volume: Volume) -> str:
        validate_key(key)
        digest = content_sha256(volume)
        sidecar = self._sidecar_path(key)
        data = sidecar.with_name(f"{sidecar.stem}.{digest[:16]}.mha")
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        array = np.asarray(volume.array)
        stored_dtype = _STORED_AS.get(array.dtype, array.dtype)
        image = volume.with_array(array.astype(stored_dtype, copy=False)).to_sitk()
        record = {
            "format": _SIDECAR_FORMAT,
            "key": key,
            "sha256": digest,
            "data_file": data.name,
            "dtype": array.dtype.name,
            "geometry": _geometry_to_json(volume.geometry),
            "meta": dict(volume.meta),
        }
        with self._key_lock(key):
            previous = self._read_sidecar(sidecar)
            temporary = data.with_name(f".{data.name}.{uuid.uuid4().hex}.partial.mha")
            try:
                sitk.WriteImage(image, str(temporary), useCompression=True)
                _fsync(temporary)
                os.replace(temporary, data)
                _write_atomically(sidecar, json.dumps(record, indent=1, sort_keys=True).encode())
            finally:
                temporary.unlink(missing_ok=True)
            if previous is not None and previous["data_file"] != data.name:
                (sidecar.parent / previous["data_file"]).unlink(missing_ok=True)
        return sidecar.as_uri()

    def get(self, ref: str) -> Volume:
        sidecar = self._sidecar_of(ref)
        failure = ""
        for attempt in range(_READ_ATTEMPTS):
            record = self._read_sidecar(sidecar)
            if record is None:
                key = self._key_of(sidecar)
                raise VolumeNotFound(f"no volume at {ref} (nothing stored under key {key!r})")
            try:
                image = sitk.ReadImage(str(sidecar.parent / record["data_file"]))
            except RuntimeError as exc:
                # Almost always a concurrent overwrite that removed this version between our reading the
                # sidecar and the data file (ITK opens the file several times): read the sidecar again.
                failure = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                time.sleep(0.002 * attempt)
                continue
            array = sitk.GetArrayFromImage(image).astype(np.dtype(record["dtype"]), copy=False)
            # Geometry from the data file itself, so the digest check also proves it survived exactly.
            volume = Volume(array, geometry_of(image), dict(record["meta"]))
            if content_sha256(volume) != record["sha256"]:
                raise VolumeCorrupted(f"volume at {ref}: content does not match its recorded SHA-256 "
                                      f"{record['sha256']}; the file was altered or damaged")
            return volume
        raise VolumeCorrupted(f"volume at {ref}: data file unreadable after {_READ_ATTEMPTS} attempts: "
                              f"{failure}")

    def exists(self, ref: str) -> bool:
        return self._sidecar_of(ref).is_file()

    def delete(self, ref: str) -> None:
        sidecar = self._sidecar_of(ref)
        with self._key_lock(self._key_of(sidecar)):
            record = self._read_sidecar(sidecar)
            if record is None:
                return
            sidecar.unlink()  # the commit point first: from now on the volume does not exist
            (sidecar.parent / record["data_file"]).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> tuple[int, int]:
        folder = self._root / validate_key(prefix)
        if not folder.is_dir():
            return 0, 0
        files = files_under(folder)
        freed = sum(file_size(p) for p in files)
        removed = 0
        for sidecar in files:
            if sidecar.suffix == ".json" and not sidecar.name.startswith("."):
                record = self._read_sidecar(sidecar)
                self.delete(sidecar.as_uri())  # under the key's lock, sidecar first, as every delete
                removed += record is not None
                # The key's lock file too, or .locks grows for ever. Safe for finished work only: a writer
                # holding the old file and one opening a new one would not exclude each other.
                self._lock_path(self._key_of(sidecar)).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)  # leftovers of interrupted writes, and the folders
        return removed, freed

    def sha256(self, ref: str) -> str:
        record = self._read_sidecar(self._sidecar_of(ref))
        if record is None:
            raise VolumeNotFound(f"no volume at {ref}")
        return str(record["sha256"])

    def _sidecar_path(self, key: str) -> Path:
        return self._root / f"{key}.json"

    def _key_of(self, sidecar: Path) -> str:
        return sidecar.relative_to(self._root).as_posix().removesuffix(".json")

    def _sidecar_of(self, ref: str) -> Path:
        """The sidecar a reference names; ValueError unless it is a reference into this store."""
        parsed = urlparse(ref)
        path = Path(unquote(parsed.path))
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or path.suffix != ".json":
            raise ValueError(f"not a volume reference of this store: {ref!r} (expected file://{self._root}/...json)")
        try:
            key = path.relative_to(self._root).as_posix().removesuffix(".json")
        except ValueError:
            raise ValueError(f"volume reference {ref!r} lies outside the store at {self._root}") from None
        return self._sidecar_path(validate_key(key))

    @staticmethod
    def _read_sidecar(sidecar: Path) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads(sidecar.read_bytes())
        except FileNotFoundError:
            return None
        return record

    def _lock_path(self, key: str) -> Path:
        # Named by a digest of the key: lock files stay flat and never collide with volume names.
        return self._root / ".locks" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        path = self._lock_path(key)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def file_size(path: Path) -> int:
    """The size of ``path``; 0 when it is gone (another replica's sweep deleted it meanwhile)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder``. os.walk, not Path.rglob: a folder that another replica's sweep removes
    during the walk is skipped, where rglob raises FileNotFoundError (two sweeps at once must both finish)."""
    return [Path(root) / name for root, _dirs, names in os.walk(folder) for name in names]


def _fsync(path: Path) -> None:
    # Data reaches the disk before the sidecar that names it: a crash never commits a missing file.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with temporary.open("wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _geometry_to_json(geometry: Geometry) -> dict[str, list[float] | list[int]]:
    # json writes floats with repr(), which round-trips doubles exactly.
    return {
        "spacing": list(geometry.spacing),
        "origin": list(geometry.origin),
        "direction": list(geometry.direction),
        "size": list(geometry.size),
    }

