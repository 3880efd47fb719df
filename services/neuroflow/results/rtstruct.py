"""Contours for radiotherapy planning: an RT Structure Set (RTSTRUCT) on the series the lesions were found on.

A planning system reads an RTSTRUCT, not a SEG: one ROI per lesion, each a stack of CLOSED_PLANAR
contours in patient coordinates (LPS, mm), one or more per source slice, each referencing the image it
lies on, all in that series' frame of reference. highdicom 0.28 has no RT Structure Set, so the IOD is
built here with pydicom (PS3.3 A.19: Patient, General Study, RT Series, General Equipment, Frame of Reference, Structure
Set, ROI Contour, RT ROI Observations, Approval, SOP Common).

Contours are drawn in the source slices' own planes (the label map is on the source grid; an oblique
series gives oblique contours) through the voxel-to-patient affine of :class:`Geometry`, never through
an axis flip. Filling them again by the even-odd rule gives back the label map
(:mod:`neuroflow.core.planar_contours`). The object says it is AI output: the structure set is
UNAPPROVED, its description carries the disclaimer, and each ROI names the algorithm that drew it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage

import neuroflow
from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.dicom_io import study_key
from neuroflow.core.errors import StudyError
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.labels import metastasis_segment
from neuroflow.core.model_card import ModelRef
from neuroflow.core.planar_contours import fill_contours, pixel_edge_contours
from neuroflow.core.slice_order import sources_in_slice_order
from neuroflow.core.uids import derived_uid
from neuroflow.core.volume import Geometry, Volume
from neuroflow.results.dicom_seg import METASTASES_MODEL_NAME, STAGE, hash_of_instance_uids
from neuroflow.results.report import DISCLAIMER
from neuroflow.results.series_naming import series_description as describe

METASTASES_RTSTRUCT_DESCRIPTION = "AI metastases contours (not for diagnosis)"
METASTASES_STRUCTURE_SET_LABEL = "AI METS"  # SH: at most 16 characters
# The SOP class PS3.3 C.8.8.5.3 asks an RT Referenced Study item to name (Detached Study Management,
# retired but still the one the standard and planning systems use there).
_STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"
# Patient and study attributes copied from the source (Type 2 ones are written empty when absent).
_PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")
_PATIENT_STUDY_OPTIONAL = ("SpecificCharacterSet", "IssuerOfPatientID", "StudyDescription", "PatientAge",
                           "PatientWeight", "PatientSize")
# Millimetres in ContourData: 4 decimals (0.1 µm) keeps a DS value within its 16 characters.
_DECIMALS = 4


@dataclass(frozen=True)
class RoiSpec:
    """One ROI: the label value it draws (also its ROI Number), its name, colour and RT interpreted type."""

    number: int
    name: str
    rgb: tuple[int, int, int]
    interpreted_type: str = "GTV"  # PS3.3 C.8.8.8.1: a gross tumour volume, what a planner contours a met as
    code: tuple[str, str, str] | None = None  # (value, scheme, meaning): what the ROI is, for a machine reader


def metastasis_rois(lesion_labels: npt.NDArray[np.generic]) -> list[RoiSpec]:
    """"Met 1" .. "Met n" for lesion labels 1 .. n (the label value is the lesion number), named, coded and
    coloured as the SEG's segments (:func:`neuroflow.core.labels.metastasis_segment`)."""
    numbers = sorted(int(v) for v in np.unique(lesion_labels) if int(v) != 0)
    segments = [metastasis_segment(n) for n in numbers]
    return [RoiSpec(s.number, s.label, s.rgb, code=s.type_code) for s in segments]


def build_metastases_rtstruct(
    lesion_labels: Volume,
    source_instances: Sequence[pydicom.Dataset],
    *,
    model: ModelRef,
    input_hash: str | None = None,
    objects: ResultObjectSettings | None = None,
    needs_review: bool = False,
    version: int = 1,
    device_serial_number: str = "none",
) -> Dataset | None:
    """The RTSTRUCT of a lesion label map (0 = background, n = lesion n, as
    :func:`neuroflow.core.lesions.label_lesions` numbers them) on the T1CE series
    ``source_instances`` belong to: ROI n is "Met n". ``None`` when there is no lesion. The same refusals
    and the same idempotent UIDs as :func:`build_rtstruct`."""
    objects = objects or ResultObjectSettings()
    return build_rtstruct(
        lesion_labels, source_instances, rois=metastasis_rois(np.asarray(lesion_labels.array)), algorithm=model,
        kind="neuroflow.metastases-rtstruct",
        series_description=describe(METASTASES_RTSTRUCT_DESCRIPTION, needs_review=needs_review, version=version),
        structure_set_label=METASTASES_STRUCTURE_SET_LABEL, manufacturer_model_name=METASTASES_MODEL_NAME,
        series_number=objects.metastases_rtstruct_series_number, input_hash=input_hash, uid_root=objects.uid_root,
        device_serial_number=device_serial_number,
    )


def build_rtstruct(
    labels: Volume,
    source_instances: Sequence[pydicom.Dataset],
    *,
    rois: Sequence[RoiSpec],
    algorithm: ModelRef,
    kind: str,
    series_description: str,
    structure_set_label: str,
    manufacturer_model_name: str,
    series_number: int,
    input_hash: str | None = None,
    uid_root: str | None = None,
    device_serial_number: str = "none",
) -> Dataset | None:
    """An RT Structure Set of ``labels`` (integer label map on the grid of the series ``source_instances``
    belong to, in any order): one ROI per entry of ``rois``, drawing the voxels of its ``number``. ``None``
    when no voxel of any ROI is set.

    Series and SOP Instance UIDs derive from (``kind``, source series UID, ``algorithm``, ``input_hash``
    (default: the hash of the source SOPInstanceUIDs)) under ``uid_root``: a rerun replaces, not adds.

    Refuses (:class:`StudyError`) source instances that do not describe the label map's grid (see
    :func:`~neuroflow.results.dicom_seg.sources_in_slice_order`) or that have no frame of reference; raises
    ``ValueError`` for label values no ROI names, ROI numbers below 1 or repeated, or an empty instance list."""
    if not source_instances:
        raise ValueError("build_rtstruct needs the source instances of the series the contours are drawn on")
    values = np.asarray(labels.array)
    numbers = [roi.number for roi in rois]
    if len(set(numbers)) != len(numbers) or any(n < 1 for n in numbers):
        raise ValueError(f"ROI numbers must be distinct and positive, got {numbers}")
    unnamed = sorted(int(v) for v in np.unique(values) if int(v) != 0 and int(v) not in numbers)
    if unnamed:
        raise ValueError(f"label values {unnamed} are not drawn by any ROI {numbers}")
    if not rois or not values.any():
        return None

    ordered = sources_in_slice_order(labels.geometry, source_instances)
    first = ordered[0]
    frame_uid = str(first.get("FrameOfReferenceUID", ""))
    if not frame_uid:
        raise StudyError(study_key(str(first.get("StudyInstanceUID", ""))),
                         "the source series has no FrameOfReferenceUID; contours cannot be placed",
                         stage=STAGE, series_uid=str(first.get("SeriesInstanceUID", "")) or None)
    key = input_hash if input_hash is not None else hash_of_instance_uids(ordered)
    entropy = [kind, str(first.SeriesInstanceUID), str(algorithm), key]
    root = uid_root or ResultObjectSettings().uid_root
    now = datetime.now(UTC)

    ds = Dataset()
    _copy_patient_and_study(ds, first)
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = derived_uid(root, *entropy, "instance")
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = derived_uid(root, *entropy, "series")
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    # The Frame of Reference module (Mandatory in the RT Structure Set IOD since 2020): the source's.
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.Manufacturer = NEUROFLOW_MANUFACTURER
    ds.ManufacturerModelName = manufacturer_model_name
    ds.SoftwareVersions = neuroflow.__version__
    ds.DeviceSerialNumber = device_serial_number

    ds.StructureSetLabel = structure_set_label
    ds.StructureSetName = structure_set_label
    ds.StructureSetDescription = DISCLAIMER
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ReferencedFrameOfReferenceSequence = [_frame_reference(frame_uid, ordered)]
    ds.StructureSetROISequence = [_structure_set_roi(roi, frame_uid, algorithm) for roi in rois]
    ds.ROIContourSequence = [_roi_contours(roi, values, labels, ordered) for roi in rois]
    ds.RTROIObservationsSequence = [_observation(roi) for roi in rois]
    # AI output is never an approved plan structure: a planner reviews and approves it in the planning system.
    ds.ApprovalStatus = "UNAPPROVED"

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _copy_patient_and_study(ds: Dataset, source: pydicom.Dataset) -> None:
    for keyword in _PATIENT_STUDY_OPTIONAL:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    for keyword in _PATIENT_STUDY_TYPE2:
        setattr(ds, keyword, source[keyword].value if keyword in source else "")
    ds.StudyInstanceUID = source.StudyInstanceUID


def _image_reference(source: pydicom.Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _frame_reference(frame_uid: str, ordered: Sequence[pydicom.Dataset]) -> Dataset:
    """The frame of reference with every source slice listed (RT Referenced Study > Series > Contour Image)."""
    series = Dataset()
    series.SeriesInstanceUID = ordered[0].SeriesInstanceUID
    series.ContourImageSequence = [_image_reference(ds) for ds in ordered]
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_REFERENCE_CLASS
    study.ReferencedSOPInstanceUID = ordered[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = [study]
    return frame


def _structure_set_roi(roi: RoiSpec, frame_uid: str, algorithm: ModelRef) -> Dataset:
    item = Dataset()
    item.ROINumber = roi.number
    item.ReferencedFrameOfReferenceUID = frame_uid
    item.ROIName = roi.name
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = f"{algorithm} (AI output for review)"
    return item


def _roi_contours(roi: RoiSpec, values: npt.NDArray[np.generic], labels: Volume,
                  ordered: Sequence[pydicom.Dataset]) -> Dataset:
    """ROI ``roi.number``'s contours, slice by slice, in patient coordinates on their source slice's plane."""
    affine = labels.geometry.index_to_patient()
    contours: list[Dataset] = []
    mask = values == roi.number
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        for points in pixel_edge_contours(mask[k]):
            # (row, column) on slice k -> (i, j, k, 1) -> LPS through the affine (no axis is flipped).
            index = np.c_[points[:, 1], points[:, 0], np.full(len(points), float(k)), np.ones(len(points))]
            patient = (affine @ index.T).T[:, :3]
            contour = Dataset()
            contour.ContourImageSequence = [_image_reference(ordered[int(k)])]
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(patient)
            contour.ContourNumber = len(contours) + 1
            contour.ContourData = [f"{v:.{_DECIMALS}f}" for v in np.round(patient, _DECIMALS).ravel()]
            contours.append(contour)
    item = Dataset()
    item.ReferencedROINumber = roi.number
    item.ROIDisplayColor = list(roi.rgb)
    if contours:
        item.ContourSequence = contours
    return item


def _observation(roi: RoiSpec) -> Dataset:
    item = Dataset()
    item.ObservationNumber = roi.number
    item.ReferencedROINumber = roi.number
    item.RTROIInterpretedType = roi.interpreted_type
    item.ROIInterpreter = ""
    if roi.code is not None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = roi.code
        item.RTROIIdentificationCodeSequence = [code]
    return item


def roi_masks(ds: Dataset, geometry: Geometry) -> dict[str, npt.NDArray[np.bool_]]:
    """Read an RTSTRUCT back: each ROI's contours filled on ``geometry`` (the source grid; even-odd rule per
    slice), by ROI name. What a test on a stored object, or a planning system, makes of it. Refuses
    (ValueError) a contour that does not lie on a slice of the grid (more than 0.01 voxel off its plane)."""
    names = {int(item.ROINumber): str(item.ROIName) for item in ds.StructureSetROISequence}
    to_index = np.linalg.inv(geometry.index_to_patient())
    shape = (geometry.size[2], geometry.size[1], geometry.size[0])
    masks: dict[str, npt.NDArray[np.bool_]] = {}
    for item in ds.ROIContourSequence:
        by_slice: dict[int, list[npt.NDArray[np.float64]]] = {}
        for contour in item.get("ContourSequence", []):
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
            ijk = (to_index @ np.c_[points, np.ones(len(points))].T).T[:, :3]
            k = round(float(ijk[:, 2].mean()))
            if not 0 <= k < shape[0] or float(np.abs(ijk[:, 2] - k).max()) > 0.01:
                raise ValueError(f"a contour of ROI {names[int(item.ReferencedROINumber)]!r} lies on no slice of "
                                 "the grid")
            by_slice.setdefault(k, []).append(ijk[:, [1, 0]])  # (row, column)
        mask = np.zeros(shape, dtype=bool)
        for k, polygons in by_slice.items():
            mask[k] = fill_contours(polygons, shape[1:])
        masks[names[int(item.ReferencedROINumber)]] = mask
    return masks
