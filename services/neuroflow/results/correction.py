"""The corrected result of a result a radiologist accepted with components removed (a lesion, a sub-region).

Accepting with removals in the console (console/app.py) owes a correction to each destination the result
reached or was going to (``request_corrections`` in core/state_schedules.py: a delivery of stage
``CORRECTION_STAGE`` under ``correction_workflow_id``, whose objects are the result it corrects). The delivery
loop of the results services builds it here, from the delivered objects as the site Orthanc holds them (the
console's Orthanc user stays read-only), stores it at the site and sends it like a delivery:

* each SEG without the removed segments (frames, segment descriptions; the rest renumbered 1..n as a SEG
  requires), in a new series whose description starts "CORRECTED";
* an SR superseding the earlier one (its predecessor document; also the SR of an earlier correction that
  reached that destination: a later review corrects the original result again, and supersedes it), the
  corrected SEG its evidence, saying what was removed, by review, when;
* when the result has other objects drawn from the uncorrected segmentation (the burned-in colour overlays,
  an RTSTRUCT), the SR names them superseded, not to be used, and a notice page (a Secondary Capture any
  viewer shows beside them) says so too. They are not redrawn: an overlay is drawn on the source slices as
  the results stage converted them, and the corrected SEG is what the radiologist reviewed.

The corrected SEG is also kept as training data (``TrainingStore``): beside it, its provenance (pseudonymous
study key, model, reviewer, time, what was removed); the copy carries no patient name, ID or birth date.
UIDs derive from the superseded object and the review: a retry, and every destination, get the same objects.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.errors import StudyError
from neuroflow.core.labels import (
    GLIOMA_SEGMENTS,
    REGION_LABELS,
    SEGMENT_BRATS_LABEL,
    SEGMENT_REGION,
    WHOLE_TUMOUR_SEGMENT,
    TumourRegion,
)
from neuroflow.core.reviews import ReviewDecision
from neuroflow.core.state_schedules import Delivery, review_of_correction
from neuroflow.core.uids import derived_uid
from neuroflow.results.dicom_sr import correction_sr
from neuroflow.results.notice import Notice, notice_image

CORRECTED_PREFIX = "CORRECTED "
CORRECTION_HEADLINE = "CORRECTED by radiologist review: the earlier AI overlays show removed components"
CORRECTION_IMAGE_DESCRIPTION = "AI RESULT CORRECTED: earlier overlays superseded"
_SEGMENT_NUMBER = Tag(0x0062, 0x000B)  # ReferencedSegmentNumber, a dimension index of every SEG built here
# Removed from the training copy: who the patient is (the pseudonymous key in its provenance names the study).
_PATIENT_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                       "OtherPatientIDsSequence", "IssuerOfPatientID", "AccessionNumber", "ReferringPhysicianName",
                       "InstitutionName", "StudyID")


class StoredObjects(Protocol):
    """The site sink as a correction needs it: reads what it supersedes, stores the corrected objects."""

    def read_stored(self, sop_instance_uids: Sequence[str], /) -> list[Dataset]: ...

    def store(self, dataset: Dataset, /) -> str: ...


class Reviews(Protocol):
    def get(self, review_id: str, /) -> ReviewDecision | None: ...


# Every object of a workflow's result a destination accepted, corrections included
# (core.state_schedules.ScheduleStatements.reached_objects).
Reached = Callable[[str, str], list[str]]


def removed_segment_labels(components: Collection[str]) -> set[str]:
    """The SEG segment labels a reviewer's removed components stand for: a tumour region (WT, TC, ET) every
    segment inside it; a sub-region of the report (necrotic_core, oedema) its segment; anything else (a
    lesion, "Met 2") the segment of that label."""
    labels: set[str] = set()
    by_region = {region: number for number, region in SEGMENT_REGION.items()}
    for component in components:
        if component in {r.value for r in TumourRegion}:
            inside = REGION_LABELS[TumourRegion(component)]
            labels |= {s.label for s in GLIOMA_SEGMENTS if SEGMENT_BRATS_LABEL[s.number] in inside}
            if component == TumourRegion.WT.value:
                labels.add(WHOLE_TUMOUR_SEGMENT.label)
        elif component in by_region:
            labels |= {s.label for s in GLIOMA_SEGMENTS if s.number == by_region[component]}
        else:
            labels.add(component)
    return labels


def corrected_seg(seg: Dataset, removed_labels: Collection[str], *, study_key: str, review_id: str,
                  uid_root: str) -> Dataset | None:
    """``seg`` (a BINARY SEG) without the segments labelled ``removed_labels``: their descriptions and frames
    gone, the rest renumbered 1..n; None when nothing is left. A new series and instance, derived from the
    original's SOP Instance UID and the review."""
    if str(seg.get("SegmentationType", "")) != "BINARY":
        raise StudyError(study_key, f"only a BINARY SEG can be corrected, not {seg.get('SegmentationType', '?')}")
    kept = [item for item in seg.SegmentSequence if str(item.SegmentLabel) not in removed_labels]
    if not kept:
        return None
    renumber = {int(item.SegmentNumber): n for n, item in enumerate(kept, start=1)}
    frames = list(seg.PerFrameFunctionalGroupsSequence)
    frame_segments = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in frames]
    keep_frames = [i for i, number in enumerate(frame_segments) if number in renumber]
    pixels = int(seg.Rows) * int(seg.Columns)
    # BINARY frames are bit-packed end to end (a frame may begin inside a byte): unpack, select, pack again.
    bits = np.unpackbits(np.frombuffer(seg.PixelData, dtype=np.uint8), bitorder="little")[:len(frames) * pixels]
    packed = np.packbits(bits.reshape(len(frames), pixels)[keep_frames].ravel(), bitorder="little").tobytes()
    corrected = copy.deepcopy(seg)
    corrected.PixelData = packed + (b"\0" if len(packed) % 2 else b"")
    corrected.NumberOfFrames = len(keep_frames)
    pointers = [Tag(d.DimensionIndexPointer) for d in seg.DimensionIndexSequence]
    for item in (corrected_items := [copy.deepcopy(frames[i]) for i in keep_frames]):
        old = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        item.SegmentIdentificationSequence[0].ReferencedSegmentNumber = renumber[old]
        if _SEGMENT_NUMBER in pointers:
            values = list(item.FrameContentSequence[0].DimensionIndexValues)
            values[pointers.index(_SEGMENT_NUMBER)] = renumber[old]
            item.FrameContentSequence[0].DimensionIndexValues = values
    corrected.PerFrameFunctionalGroupsSequence = corrected_items
    segments = [copy.deepcopy(item) for item in kept]
    for item in segments:
        item.SegmentNumber = renumber[int(item.SegmentNumber)]
    corrected.SegmentSequence = segments
    entropy = ("neuroflow.corrected-seg", str(seg.SOPInstanceUID), review_id)
    corrected.SeriesInstanceUID = derived_uid(uid_root, *entropy, "series")
    corrected.SOPInstanceUID = derived_uid(uid_root, *entropy, "instance")
    corrected.file_meta.MediaStorageSOPInstanceUID = corrected.SOPInstanceUID
    corrected.SeriesDescription = (CORRECTED_PREFIX + str(seg.get("SeriesDescription", "AI segmentation")))[:64]
    corrected.ContentDate, corrected.ContentTime = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    return corrected


class TrainingStore:
    """Corrected SEGs kept as training data: ``<folder>/<study key>/<review id>/corrected_seg_<n>.dcm`` and
    ``provenance.json``. Written again (the same) when a correction is retried."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def keep(self, review: ReviewDecision, segs: Sequence[Dataset], provenance: dict[str, Any]) -> Path:
        where = self.folder / review.study_key / review.review_id
        where.mkdir(parents=True, exist_ok=True)
        for n, seg in enumerate(segs, start=1):
            copy_ = copy.deepcopy(seg)
            for keyword in _PATIENT_ATTRIBUTES:
                if keyword in copy_:
                    delattr(copy_, keyword)
            _write_atomically(where / f"corrected_seg_{n}.dcm", lambda path, d=copy_: d.save_as(path))
        _write_atomically(where / "provenance.json",
                          lambda path: path.write_text(json.dumps(provenance, indent=2, sort_keys=True)))
        return where


class Corrector:
    """Builds and stores at the site the correction a correction row (a Delivery of stage CORRECTION_STAGE)
    owes, keeps the corrected SEGs as training data; the SOP Instance UIDs to send."""

    def __init__(self, sink: StoredObjects, reviews: Reviews, objects: ResultObjectSettings,
                 training: TrainingStore | None, reached: Reached | None = None) -> None:
        self._sink = sink
        self._reached = reached
        self._reviews = reviews
        self._objects = objects
        self._training = training

    def __call__(self, correction: Delivery) -> list[str]:
        review_id = review_of_correction(correction.workflow_id)
        review = self._reviews.get(review_id)
        if review is None:
            raise StudyError(correction.study_key, f"the review {review_id} this correction carries out is not in "
                             "the state database")
        originals = list(correction.sop_instance_uids)
        superseded = self._sink.read_stored(originals)
        # What earlier corrections sent there: superseded too, never corrected again (this one starts over).
        earlier_uids = [] if self._reached is None else [
            uid for uid in self._reached(review.workflow_id, correction.destination) if uid not in originals]
        earlier = self._sink.read_stored(earlier_uids) if earlier_uids else []
        labels = removed_segment_labels(review.removed_components)
        segs = [d for d in superseded if d.SOPClassUID == SegmentationStorage]
        if not segs:
            raise StudyError(correction.study_key, f"the result corrected in review {review_id} has no SEG to remove "
                             "components from")
        corrected = [c for seg in segs if (c := corrected_seg(seg, labels, study_key=correction.study_key,
                                                                  review_id=review_id,
                                                                  uid_root=self._objects.uid_root)) is not None]
        removed_here = sorted({str(i.SegmentLabel) for seg in segs for i in seg.SegmentSequence} & labels)
        srs = [d for d in (*superseded, *earlier) if d.SOPClassUID == Comprehensive3DSRStorage]
        # Drawn from the uncorrected segmentation (overlays, RTSTRUCT), or an earlier correction's: superseded,
        # not redrawn.
        # (An earlier correction's notice page stays true: not listed.)
        stale = sorted({str(d.get("SeriesDescription", "")) or "an AI result series" for d in (*superseded, *earlier)
                        if d.SOPClassUID != Comprehensive3DSRStorage
                        and d.get("SeriesDescription") != CORRECTION_IMAGE_DESCRIPTION
                        and (d.SOPClassUID != SegmentationStorage or str(d.SOPInstanceUID) in earlier_uids)})
        decided = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(review.decided_at))
        lines = (f"CORRECTED by radiologist review on {decided}: removed {', '.join(review.removed_components)}"
                 f" ({'; '.join(removed_here) or 'no segment of that name'}).",
                 ("The corrected segmentation is this report's evidence; " if corrected else
                  "Nothing of the segmentation is left; ") + "the earlier AI report is superseded.",
                 *([f"Superseded, do not use: {'; '.join(stale)} (made before this correction, they may show "
                    "what it removed)."] if stale else []))
        correction_hash = hashlib.sha256(f"neuroflow.correction\x00{correction.workflow_id}".encode()).hexdigest()
        sr = correction_sr(corrected or segs, srs, study_key=correction.study_key, pipeline=correction.pipeline,
                           lines=lines, correction_hash=correction_hash, objects=self._objects)
        notice = []
        if stale:
            page = notice_image(sr, Notice(CORRECTION_HEADLINE, lines), input_hash=correction_hash,
                                objects=self._objects)
            page.SeriesNumber = self._objects.notice_series_number + 5
            page.SeriesDescription = CORRECTION_IMAGE_DESCRIPTION
            notice.append(page)
        uids = [self._sink.store(d) for d in (*corrected, sr, *notice)]
        if self._training is not None and corrected:
            self._training.keep(review, corrected, {
                "study_key": review.study_key, "workflow_id": review.workflow_id, "pipeline": review.pipeline,
                "model": review.model, "reviewer": review.reviewer, "decided_at": review.decided_at,
                "review_id": review.review_id, "removed_components": review.removed_components,
                "removed_segments": removed_here,
                "kept_segments": [str(i.SegmentLabel) for c in corrected for i in c.SegmentSequence]})
        return uids


def _write_atomically(path: Path, write: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)
