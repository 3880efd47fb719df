"""C-STORE a folder of DICOM files to a DICOM node, as a scanner or another PACS does. Used by the
stack's end-to-end tests, the benchmarks and by operators to re-send a study."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, StoragePresentationContexts


class CStoreFailed(RuntimeError):
    """The association was refused or an instance was not stored; the message says which and why."""


def send_folder(folder: Path, host: str, port: int, called_aet: str, *, calling_aet: str = "NFSCANNER") -> int:
    """Send every DICOM file under ``folder`` in one association; returns how many were stored.
    Non-DICOM files are skipped. Raises CStoreFailed naming the file and the status when one is refused."""
    files = sorted(Path(p, f) for p, _, names in os.walk(folder) for f in names)
    ae = AE(ae_title=calling_aet)
    ae.requested_contexts = StoragePresentationContexts[:127]
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise CStoreFailed(f"association with {called_aet}@{host}:{port} was not established")
    sent = 0
    try:
        for path in files:
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                continue
            status = assoc.send_c_store(ds)
            if status is None or getattr(status, "Status", 0xFFFF) != 0x0000:
                code = "no answer" if status is None else f"status 0x{status.Status:04X}"
                raise CStoreFailed(f"{called_aet} did not store {path}: {code}")
            sent += 1
    finally:
        assoc.release()
    return sent
