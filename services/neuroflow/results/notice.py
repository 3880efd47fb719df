"""The notice that reaches PACS when neuroflow has no result to show: the study could not be processed, or
nothing was found. Silence must never read as "normal": a reader who looks for the AI result finds an SR and
one Secondary Capture image, which any viewer shows, saying what happened and why.

The reasons are the report's own errors, with DICOM UIDs masked: the notice belongs to the study it is
filed in, and the UIDs of other objects mean nothing to a reader."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

import neuroflow
from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.uids import derived_uid
from neuroflow.results.dicom_sr import SR_DISCLAIMER, mask_uids, notice_sr
from neuroflow.results.overlay import BANNER, font
from neuroflow.results.report import ReportStatus, StudyReport

NOTICE_SR_FILE = "notice_sr.dcm"
NOTICE_IMAGE_FILE = "notice.dcm"
NOTICE_IMAGE_DESCRIPTION = "AI NOTICE: no result (not for diagnosis)"
FAILED_HEADLINE = "NO AI RESULT: the study could not be processed"
NOTHING_FOUND_HEADLINE = "AI found no tumour"
NOT_NORMAL = "This is not a normal finding: read the study without the AI result."
_SIZE = 512
_TEXT_RGB = (255, 255, 255)
_HEADLINE_RGB = (240, 228, 66)  # Okabe-Ito yellow on black


@dataclass(frozen=True)
class Notice:
    """What the notice says: a headline and the reasons, one line each."""

    headline: str
    reasons: tuple[str, ...]


def notice_of(report: StudyReport) -> Notice | None:
    """The notice a report calls for: a failed run (why: its errors) or a glioma run that found no tumour;
    ``None`` when there is a result to show."""
    if report.status is ReportStatus.FAILED:
        return Notice(FAILED_HEADLINE, (*(mask_uids(e) for e in report.errors), NOT_NORMAL))
    if report.volumes_ml is not None and not report.volumes_ml.tumour_detected:
        model = f" ({report.model.name} version {report.model.version})" if report.model else ""
        return Notice(NOTHING_FOUND_HEADLINE, (f"The segmentation{model} found no tumour voxel; no SEG was made.",
                                               "The AI may miss lesions. " + NOT_NORMAL))
    return None


def failure_hash(report: StudyReport) -> str:
    """The identity of a failure notice: the same failure of the same study gives the same UIDs (a retry
    replaces it in PACS), another failure new ones."""
    identity = "\x00".join([report.study_instance_uid, report.pipeline, *report.errors])
    return hashlib.sha256(identity.encode()).hexdigest()


def notice_objects(report: StudyReport, notice: Notice, evidence: Sequence[Dataset], *, input_hash: str,
                   objects: ResultObjectSettings) -> dict[str, list[Dataset]]:
    """The notice SR and the notice image, by file name, filed in the study of ``evidence`` (any instances
    of it: the objects take patient and study from them). UIDs derive from the study and ``input_hash``."""
    sr = notice_sr(report, evidence, headline=notice.headline, reasons=notice.reasons, input_hash=input_hash,
                   objects=objects)
    return {NOTICE_SR_FILE: [sr],
            NOTICE_IMAGE_FILE: [notice_image(evidence[0], notice, input_hash=input_hash, objects=objects)]}


def notice_image(source: Dataset, notice: Notice, *, input_hash: str, objects: ResultObjectSettings) -> Dataset:
    """One RGB Secondary Capture image (512 x 512) with the banner, the headline and the reasons in words."""
    entropy = ("neuroflow.notice-image", str(source.StudyInstanceUID), input_hash)
    sc = hd.sc.SCImage(
        pixel_array=render_notice(notice), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=derived_uid(objects.uid_root, *entropy, "series"),
        series_number=objects.notice_series_number + 1,
        sop_instance_uid=derived_uid(objects.uid_root, *entropy, "instance"), instance_number=1,
        manufacturer=NEUROFLOW_MANUFACTURER, patient_id=source.get("PatientID"),
        patient_name=source.get("PatientName"), patient_birth_date=source.get("PatientBirthDate"),
        patient_sex=source.get("PatientSex") or None, accession_number=source.get("AccessionNumber"),
        study_id=source.get("StudyID"), study_date=source.get("StudyDate"), study_time=source.get("StudyTime"),
        referring_physician_name=source.get("ReferringPhysicianName"), patient_orientation=("L", "P"),
    )
    sc.PatientOrientation = []  # a page of text: no anatomical direction (Type 2: present, empty)
    sc.Modality = "OT"
    sc.Laterality = ""  # Type 2C: a page of text is of no side
    sc.SeriesDescription = NOTICE_IMAGE_DESCRIPTION
    sc.ConversionType = "WSD"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ManufacturerModelName = "neuroflow notice"
    sc.SoftwareVersions = neuroflow.__version__
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{notice.headline}. {SR_DISCLAIMER}"
    return sc


def render_notice(notice: Notice) -> npt.NDArray[np.uint8]:
    """(512, 512, 3) uint8: white text on black; the banner, the headline, the reasons wrapped."""
    canvas = Image.new("RGB", (_SIZE, _SIZE), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    y = 12
    for text, size, colour in ((BANNER, 20, _TEXT_RGB), (notice.headline, 24, _HEADLINE_RGB)):
        for line in textwrap.wrap(text, width=int(_SIZE / (size * 0.55))):
            draw.text((12, y), line, font=font(size), fill=colour)
            y += size + 6
        y += 10
    for reason in notice.reasons:
        for line in textwrap.wrap(reason, width=int(_SIZE / (16 * 0.55))):
            if y > _SIZE - 30:
                break
            draw.text((12, y), line, font=font(16), fill=_TEXT_RGB)
            y += 22
        y += 6
    return np.asarray(canvas, dtype=np.uint8)
