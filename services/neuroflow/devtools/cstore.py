"""C-STORE a folder of DICOM files to a DICOM node, as a scanner or another PACS does. Used by the
stack's end-to-end tests, the benchmarks and by operators to re-send a study.

Like a modality's send queue, an instance that gets no answer is sent again on a new association
(pynetdicom aborts the association when a response times out): storing is idempotent on the
receiving side, whereas giving up loses the study. A refusal (a failure status) is final.
pynetdicom 3 loses answers on a loaded machine: ``send_c_store`` pauses the association's reactor thread
by clearing an Event and then waiting for a flag the reactor raises *before* it waits on that Event, so a
reactor already past the wait still counts as paused, and may take the C-STORE response off the queue
(logged as "Received unexpected C-STORE service message", then a DIMSE timeout; pydicom/pynetdicom#435,
#875). CI met it: the 30 s stall outlasted the wait window and the study was handed on twice. Here the
sender parks the reactor itself (ReactorGate) before each request, so the answer always reaches it."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.association import Association

log = logging.getLogger(__name__)

# PS3.4 B.2.3: 0x0000 success; 0xB000, 0xB006, 0xB007 are warnings for an instance that *was* stored
# (coercion of data elements, elements discarded, data set does not match the SOP class).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
# The AE title this sender calls as by default: the development scanner every Orthanc of devtools declares.
SCANNER_AET = "NFSCANNER"


class CStoreFailed(RuntimeError):
    """The association was refused or an instance was not stored; the message says which and why."""


def send_folder(folder: Path, host: str, port: int, called_aet: str, *, calling_aet: str = SCANNER_AET,
                dimse_timeout_s: float = 30.0, attempts: int = 3) -> int:
    """Send every DICOM file under ``folder``; returns how many were stored. Non-DICOM files are skipped.

    One association carries the whole folder. An instance with no answer within ``dimse_timeout_s``
    is sent again on a fresh association, up to ``attempts`` times in all. Raises CStoreFailed naming
    the node, the file and the status when an instance is refused, or when it is still unanswered."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    files = sorted(Path(p, f) for p, _, names in os.walk(folder) for f in names)
    ae = AE(ae_title=calling_aet)
    ae.requested_contexts = StoragePresentationContexts[:127]
    ae.dimse_timeout = dimse_timeout_s
    node = f"{called_aet}@{host}:{port}"
    assoc: Association | None = None
    sent = 0
    try:
        for path in files:
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                continue
            for attempt in range(1, attempts + 1):
                if assoc is None or not assoc.is_established:
                    assoc = _associate(ae, host, port, called_aet, node)
                if not _gate_of(assoc).park_reactor(dimse_timeout_s):
                    log.warning("%s: association stuck before %s (attempt %d of %d)", node, path, attempt, attempts)
                    assoc.abort()
                    continue
                status = assoc.send_c_store(ds)
                code = _status_code(status)
                if code is None:
                    log.warning("%s: no answer for %s within %.0f s (attempt %d of %d)",
                                node, path, dimse_timeout_s, attempt, attempts)
                    continue
                if code not in STORED_STATUSES:
                    raise CStoreFailed(f"{node} did not store {path}: status 0x{code:04X}")
                sent += 1
                break
            else:
                raise CStoreFailed(f"{node} did not store {path}: no answer within {dimse_timeout_s:.0f} s, "
                                   f"{attempts} attempts")
    finally:
        # release() pauses the reactor the same racy way, and a stolen A-RELEASE answer would stall it
        if assoc is not None and assoc.is_established:
            if _gate_of(assoc).park_reactor(dimse_timeout_s):
                assoc.release()
            else:
                assoc.abort()
    return sent


def _associate(ae: AE, host: str, port: int, called_aet: str, node: str) -> Association:
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise CStoreFailed(f"association with {node} was not established")
    # pynetdicom leaves Nagle's algorithm on: each C-STORE request (command, then data set) would wait out
    # the receiver's delayed ACK, ~50 ms per instance on loopback (20 instances/s; bench_peers measured it).
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # The reactor reads ``_reactor_checkpoint`` afresh on every turn of its loop, so the gate takes over from
    # the next turn; the Event it replaces is set, so nothing is left waiting on it.
    assoc._reactor_checkpoint = ReactorGate()  # type: ignore[assignment]
    return assoc


class ReactorGate:
    """Stands in for the association's reactor checkpoint (a threading.Event: set = run, clear = pause), and
    knows when the reactor is truly blocked on it, which pynetdicom's own pause cannot tell."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._parked = False

    def is_set(self) -> bool:
        with self._cond:
            return self._open

    def set(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False

    def wait(self, timeout: float | None = None) -> bool:
        """The reactor's wait: blocks while the gate is closed, and says so to ``park_reactor``."""
        with self._cond:
            if not self._open:
                self._parked = True
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._open, timeout)
                self._parked = False
            return self._open

    def park_reactor(self, timeout_s: float) -> bool:
        """Close the gate and return once the reactor is blocked on it (it stays blocked until ``set``, which
        ``send_c_store`` calls after its answer); False if it did not block within ``timeout_s``."""
        with self._cond:
            self._open = False
            return self._cond.wait_for(lambda: self._parked, timeout_s)


def _gate_of(assoc: Association) -> ReactorGate:
    gate = assoc._reactor_checkpoint
    if not isinstance(gate, ReactorGate):
        raise TypeError("the association was not opened by _associate")
    return gate


def _status_code(status: Dataset | None) -> int | None:
    """The response's Status, or None when there was none: pynetdicom returns an empty Dataset
    (not None) when the response timed out or the association was aborted."""
    if status is None or "Status" not in status:
        return None
    return int(status.Status)
