"""C-STORE a folder of DICOM files to a DICOM node, as a scanner or another PACS does. Used by the
stack's end-to-end tests, the benchmarks and by operators to re-send a study.

Like a modality's send queue, an instance that gets no answer is sent again on a new association
(pynetdicom aborts the association when a response times out): storing is idempotent on the
receiving side, whereas giving up loses the study. A refusal (a failure status) is final.
Lost answers do happen with pynetdicom 3 on a loaded machine: its association reactor thread can take
the C-STORE response off the queue before ``send_c_store`` waits for it (logged as "Received
unexpected C-STORE service message", then a DIMSE timeout; pydicom/pynetdicom#435, #875). CI met it."""

from __future__ import annotations

import logging
import os
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
        if assoc is not None and assoc.is_established:
            assoc.release()
    return sent


def _associate(ae: AE, host: str, port: int, called_aet: str, node: str) -> Association:
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise CStoreFailed(f"association with {node} was not established")
    return assoc


def _status_code(status: Dataset | None) -> int | None:
    """The response's Status, or None when there was none: pynetdicom returns an empty Dataset
    (not None) when the response timed out or the association was aborted."""
    if status is None or "Status" not in status:
        return None
    return int(status.Status)
