"""The result objects of the change pipelines, drawn on the series as acquired: a DICOM SEG of the new MS
lesions on the follow-up FLAIR, a DICOM SEG of the haematoma on each CT, and a colour overlay series on
the follow-up FLAIR (new lesions red, rejected candidates green) for a reviewer's viewer.

Every object's UIDs follow from (kind, source series, algorithm, input hash), so a rerun on the same pair
replaces the earlier objects in PACS instead of adding second ones."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_ROOT_UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

import neuroflow
from neuroflow.core.config import CHANGE_ALGORITHM_VERSION
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.labels import (
    CHANGE_OVERLAY_RGB,
    HAEMATOMA_SEGMENT,
    MS_NEW_LESION_SEGMENT,
    OTHER_BLOOD_SEGMENT,
    ChangeLabel,
)
from neuroflow.core.model_card import ModelRef
from neuroflow.core.volume import Volume
from neuroflow.results.dicom_seg import build_seg, sources_in_slice_order
from neuroflow.results.report import DISCLAIMER

MS_SEG_FILE = "ms_new_lesions_seg.dcm"
MS_OVERLAY_FOLDER = "ms_overlay"
HAEMATOMA_BASELINE_SEG_FILE = "haematoma_baseline_seg.dcm"
HAEMATOMA_FOLLOWUP_SEG_FILE = "haematoma_followup_seg.dcm"

# The methods that drew the change objects (the network hooks, when used, name their model instead).
MS_SUBTRACTION = ModelRef(name="ms_subtraction", version=CHANGE_ALGORITHM_VERSION)
HAEMATOMA_HU = ModelRef(name="haematoma_hu_threshold", version=CHANGE_ALGORITHM_VERSION)

MS_SEG_SERIES_NUMBER = 9101
MS_OVERLAY_SERIES_NUMBER = 9102
HAEMATOMA_SEG_SERIES_NUMBER = 9111
MS_OVERLAY_DESCRIPTION = "AI new MS lesions overlay, for review (red new, green rejected)"
_OVERLAY_ALPHA = 0.6  # how strongly a label's colour covers the image below it
_WINDOW_PERCENTILES = (1.0, 99.5)  # the grey scale of the overlay: the bulk of the image's intensities
_TYPE2_STUDY_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                           "ReferringPhysicianName", "StudyID", "AccessionNumber")


def ms_lesion_seg(
    labels: Volume, followup_flair: Sequence[pydicom.Dataset], *, input_hash: str,
    algorithm: ModelRef = MS_SUBTRACTION,
) -> pydicom.Dataset | None:
    """The SEG of the new lesions (label :attr:`ChangeLabel.NEW_LESION` of ``labels``, on the follow-up
    FLAIR's own grid) referencing the follow-up FLAIR instances; ``None`` when there is no new lesion.
    ``algorithm``: the subtraction method, or the lesion network when one joined it."""
    new = (np.asarray(labels.array) == ChangeLabel.NEW_LESION).astype(np.uint8) * MS_NEW_LESION_SEGMENT.number
    return build_seg(
        labels.with_array(new), followup_flair, segments=(MS_NEW_LESION_SEGMENT,), algorithm=algorithm,
        algorithm_family=_family(algorithm, MS_SUBTRACTION), kind="neuroflow.ms-new-lesions-seg",
        series_description="AI new/enlarging MS lesions (research, not for diagnosis)", content_label="MS_NEW_AI",
        manufacturer_model_name="neuroflow MS new lesions", series_number=MS_SEG_SERIES_NUMBER,
        input_hash=input_hash,
    )


def haematoma_seg(
    mask: Volume, ct_instances: Sequence[pydicom.Dataset], *, input_hash: str, timepoint: str,
    algorithm: ModelRef = HAEMATOMA_HU,
) -> pydicom.Dataset | None:
    """The SEG of a haematoma label map (``HaematomaChange.baseline_mask``: the haematoma, and any other
    blood-density regions as a second segment, on the CT's own grid) referencing that CT's instances;
    ``timepoint`` ("baseline"/"follow-up") enters the description and the UIDs. ``None`` when there is no
    haematoma."""
    numbers = np.asarray(mask.array).astype(np.uint8)
    if not (numbers == HAEMATOMA_SEGMENT.number).any():
        return None
    others = (OTHER_BLOOD_SEGMENT,) if (numbers == OTHER_BLOOD_SEGMENT.number).any() else ()
    return build_seg(
        mask.with_array(numbers), ct_instances, segments=(HAEMATOMA_SEGMENT, *others), algorithm=algorithm,
        algorithm_family=_family(algorithm, HAEMATOMA_HU), kind=f"neuroflow.haematoma-seg.{timepoint}",
        series_description=f"AI haematoma {timepoint} (research, not for diagnosis)", content_label="HAEMATOMA_AI",
        manufacturer_model_name="neuroflow haematoma expansion", series_number=HAEMATOMA_SEG_SERIES_NUMBER,
        input_hash=input_hash,
    )


def change_overlay(
    image: Volume,
    labels: Volume,
    source_instances: Sequence[pydicom.Dataset],
    *,
    input_hash: str,
    series_number: int = MS_OVERLAY_SERIES_NUMBER,
    series_description: str = MS_OVERLAY_DESCRIPTION,
) -> list[Dataset]:
    """An RGB Secondary Capture series, one instance per slice of ``image``, each on the position, orientation
    and pixel spacing of its source slice (same FrameOfReferenceUID): the image in grey with each
    :class:`ChangeLabel` of ``labels`` blended in its colour (:data:`CHANGE_OVERLAY_RGB`).

    ``image`` is the source series as converted (its grid is the instances' grid); ``labels`` must be on
    that grid. Refuses (ValueError) labels on another grid, and (StudyError, via
    :func:`sources_in_slice_order`) instances that do not describe the image's grid."""
    if not labels.geometry.is_close(image.geometry):
        raise ValueError("the change labels are not on the grid of the image they are to be drawn on")
    ordered = sources_in_slice_order(image.geometry, source_instances)
    rgb = _blend(np.asarray(image.array, dtype=np.float32), np.asarray(labels.array))
    source_series_uid = str(ordered[0].SeriesInstanceUID)
    entropy = ["neuroflow.change-overlay", source_series_uid, input_hash]
    series_uid = generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[*entropy, "series"])
    now = datetime.now(UTC)
    header = _overlay_header(ordered[0], series_uid, series_number, series_description, now)
    instances: list[Dataset] = []
    for k, source in enumerate(ordered):
        ds = copy.deepcopy(header)
        sop_uid = generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[*entropy, "instance", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = source.ImagePositionPatient
        if "SliceLocation" in source:
            ds.SliceLocation = source.SliceLocation
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = [reference]
        ds.PixelData = np.ascontiguousarray(rgb[k]).tobytes()
        instances.append(ds)
    return instances


def _family(algorithm: ModelRef, method: ModelRef) -> Code:
    """CID 7162: the intensity-based methods are histogram analysis; a network that joined them is AI."""
    family: Code = (codes.cid7162.HistogramAnalysis if algorithm == method
                    else codes.cid7162.ArtificialIntelligence)
    return family


def _blend(image: npt.NDArray[np.float32], labels: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """(k, rows, columns, 3) uint8: the image windowed to grey, each label's colour blended over it."""
    finite = image[np.isfinite(image)]
    low, high = (np.percentile(finite, _WINDOW_PERCENTILES) if finite.size else (0.0, 1.0))
    grey = np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label, colour in CHANGE_OVERLAY_RGB.items():
        where = labels == int(label)
        rgb[where] = (1 - _OVERLAY_ALPHA) * rgb[where] + _OVERLAY_ALPHA * np.asarray(colour, dtype=np.float32)
    return np.round(rgb).astype(np.uint8)


def _overlay_header(source: Dataset, series_uid: str, series_number: int, description: str,
                    now: datetime) -> Dataset:
    """Everything the overlay instances share: patient, study and frame of reference of the source, a new
    series marked as derived AI output for review."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.ImageType = ["DERIVED", "SECONDARY"]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
                    "FrameOfReferenceUID", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows",
                    "Columns", "BodyPartExamined"):
        if keyword in source:
            ds[keyword] = copy.deepcopy(source[keyword])
    for keyword in _TYPE2_STUDY_ATTRIBUTES:  # present, empty if the source lacks them
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    # The Secondary Capture IOD has no Image Plane module: viewers without it orient by PatientOrientation.
    ds.PatientOrientation = _patient_orientation([float(v) for v in source.ImageOrientationPatient])
    ds.Modality = source.get("Modality", "OT")
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Manufacturer = NEUROFLOW_MANUFACTURER
    ds.ManufacturerModelName = "neuroflow change overlay"
    ds.SoftwareVersions = neuroflow.__version__
    ds.ConversionType = "WSD"  # workstation: drawn by software, not digitised from film or video
    ds.DerivationDescription = f"{description}. {DISCLAIMER}"
    ds.ImageComments = DISCLAIMER
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return ds


def _patient_orientation(orientation: list[float]) -> list[str]:
    """PatientOrientation (row direction, column direction) from ImageOrientationPatient: each as the
    LPS letters of its main components, strongest first (e.g. ["L", "P"] for an axial slice)."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def describe(vector: list[float]) -> str:
        order = sorted(range(3), key=lambda axis: -abs(vector[axis]))
        return "".join(letters[axis][0 if vector[axis] > 0 else 1] for axis in order if abs(vector[axis]) > 0.25)

    return [describe(orientation[:3]), describe(orientation[3:])]
