"""The notice that retracts a result a radiologist rejected after it had reached the PACS.

Rejecting in the console (console/app.py) owes a retraction to each destination the result reached
(``retractions`` in core/state_schedules.py); the delivery loop (core/delivery.py) builds it here from the
delivered objects as the site Orthanc holds them, stores it at the site and sends it like a delivery. It is an
SR whose predecessor documents are the superseded SRs and whose evidence names every superseded object (SEG,
overlays), and a Secondary Capture page any viewer shows, both saying "RETRACTED: do not use". Its UIDs derive
from the workflow alone: every destination, and every retry, gets the same objects."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.state_schedules import Delivery
from neuroflow.results.dicom_sr import retraction_sr
from neuroflow.results.notice import Notice, notice_image

RETRACTION_HEADLINE = "RETRACTED by radiologist review: do not use this AI result"
RETRACTION_IMAGE_DESCRIPTION = "AI RESULT RETRACTED: do not use (not for diagnosis)"


class StoredObjects(Protocol):
    """The site sink as a retraction needs it: reads what it supersedes, stores the notice."""

    def read_stored(self, sop_instance_uids: Sequence[str], /) -> list[Dataset]: ...

    def store(self, dataset: Dataset, /) -> str: ...


def retraction_objects(superseded: Sequence[Dataset], *, workflow_id: str, study_key: str, pipeline: str,
                       rejected_at: float, objects: ResultObjectSettings) -> list[Dataset]:
    """The retraction SR and page for the delivered objects ``superseded`` of ``workflow_id``."""
    if not superseded:
        raise ValueError(f"study {study_key}: a retraction needs the objects it supersedes")
    srs = [d for d in superseded if d.SOPClassUID == Comprehensive3DSRStorage]
    first = srs[0] if srs else superseded[0]
    produced = _dicom_date(first.get("ContentDate") or first.get("SeriesDate") or first.get("InstanceCreationDate"))
    rejected = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(rejected_at))
    names = sorted({str(d.get("SeriesDescription", "")) for d in superseded} - {""})
    lines = (f"RETRACTED by radiologist review on {rejected}: do not use the AI result of {produced}.",
             f"Superseded: {'; '.join(names) or 'the AI result objects'} (listed as this report's evidence"
             f"{' and predecessor documents' if srs else ''}).",
             "Read the study without the AI result.")
    retraction_hash = hashlib.sha256(f"neuroflow.retraction\x00{workflow_id}".encode()).hexdigest()
    sr = retraction_sr(superseded, srs, study_key=study_key, pipeline=pipeline, lines=lines,
                       retraction_hash=retraction_hash, objects=objects)
    page = notice_image(superseded[0], Notice(RETRACTION_HEADLINE, lines), input_hash=retraction_hash,
                        objects=objects)
    page.SeriesNumber = objects.notice_series_number + 3
    page.SeriesDescription = RETRACTION_IMAGE_DESCRIPTION
    page.ImageComments = RETRACTION_HEADLINE
    return [sr, page]


class Retractor:
    """Builds and stores at the site the retraction a retraction row (a Delivery of stage "retraction") owes;
    the SOP Instance UIDs to send. Building again (a retry) stores the same objects again."""

    def __init__(self, sink: StoredObjects, objects: ResultObjectSettings) -> None:
        self._sink = sink
        self._objects = objects

    def __call__(self, retraction: Delivery) -> list[str]:
        superseded = self._sink.read_stored(list(retraction.sop_instance_uids))
        return [self._sink.store(d) for d in retraction_objects(
            superseded, workflow_id=retraction.workflow_id, study_key=retraction.study_key,
            pipeline=retraction.pipeline, rejected_at=retraction.created_at, objects=self._objects)]


def _dicom_date(value: object) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else "an unknown date"
