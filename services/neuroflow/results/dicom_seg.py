"""The glioma segmentation as a DICOM SEG that references the slices of the series it was drawn on.

A viewer overlays a SEG frame on the source image the frame references, so the one thing that must
never go wrong here is which slice each frame points at: each volume slice is matched to its source
instance by ImagePositionPatient along the slice normal, never by the order the instances arrived in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import replace

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import neuroflow
from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.labels import (
    GLIOMA_SEGMENTS,
    LOCAL_CODING_SCHEME,
    REGION_LABELS,
    RESECTION_CAVITY_LABEL,
    RESECTION_CAVITY_SEGMENT,
    SEGMENT_BRATS_LABEL,
    SEGMENT_NEEDS,
    WHOLE_TUMOUR_SEGMENT,
    BratsLabel,
    SegmentDefinition,
    TumourRegion,
    metastasis_segment,
)
from neuroflow.core.model_card import ModelRef
from neuroflow.core.slice_order import sources_in_slice_order
from neuroflow.core.uids import derived_uid
from neuroflow.core.volume import Volume
from neuroflow.results.report import DISCLAIMER
from neuroflow.results.series_naming import series_description as describe

SERIES_DESCRIPTION = "AI glioma segmentation (not for diagnosis)"
CONTENT_LABEL = "GLIOMA_AI"  # CS, at most 16 characters
MANUFACTURER = NEUROFLOW_MANUFACTURER
MANUFACTURER_MODEL_NAME = "neuroflow glioma segmentation"
STAGE = "results"



def build_glioma_seg(
    label_map: Volume,
    source_instances: Sequence[pydicom.Dataset],
    *,
    model: ModelRef,
    input_hash: str | None = None,
    objects: ResultObjectSettings | None = None,
    needs_review: bool = False,
    version: int = 1,
    device_serial_number: str = "none",
    not_assessable: Collection[str] = (),
) -> pydicom.Dataset | None:
    """A BINARY DICOM SEG of a BraTS label map, or ``None`` when no tumour was found.

    Takes:
      * ``label_map``: uint8 BraTS labels (:class:`BratsLabel`) on the voxel grid of the reference
        series, i.e. ``label_map.geometry`` is that series' geometry.
      * ``source_instances``: the single-frame instances of that series, in any order (headers are
        enough; pixel data is not read). Each volume slice k is matched to the instance whose
        ImagePositionPatient lies at slice k, so the SEG frames reference the right images.
      * ``model``: the model that drew the segmentation, written as the algorithm identification.
      * ``input_hash``: the idempotency key of the pipeline's inputs (e.g. the hash of the series
        set). Defaults to a hash of the source SOPInstanceUIDs.
      * ``objects``: the site's UID root and series numbers (defaults: :class:`ResultObjectSettings`).
      * ``needs_review``: the failure flag (``StudyReport.review``): "NEEDS REVIEW" opens the series
        description. ``version``: 2 and up for a re-run that replaces an earlier result ("v2" ends it).
      * ``not_assessable``: the regions (WT, TC, ET) the study's sequences cannot show: a segment whose
        boundary depends on one (:data:`SEGMENT_NEEDS`) is left out; without the core but with the
        whole tumour, all tumour voxels form one :data:`WHOLE_TUMOUR_SEGMENT`.

    Returns a Segmentation dataset with one segment per disjoint sub-region of
    :data:`GLIOMA_SEGMENTS` (all three are always described; a sub-region that is absent simply has
    no frames), empty frames omitted. Its Series and SOP Instance UIDs are derived from (source
    series UID, model, input hash), so a re-run on the same input yields the same UIDs and replaces
    the earlier object in PACS instead of adding a second one.

    A label map of a post-operative study holds the resection cavity (``RESECTION_CAVITY_LABEL``): it is drawn
    as one more segment, :data:`RESECTION_CAVITY_SEGMENT`, numbered after the tumour segments.

    Returns ``None`` when the label map holds no tumour (or cavity) voxel: a SEG must have at least one frame, and
    an empty overlay tells a radiologist nothing. The report states "no tumour detected" instead.

    Refuses (:class:`StudyError`) when the source instances do not describe the label map's grid: a
    different orientation, matrix or pixel spacing, a slice without an instance, an instance off the
    grid, or two instances at one position. Raises ``ValueError`` for labels outside
    :class:`BratsLabel` or an empty instance list (programming errors, not study problems).
    """
    if not source_instances:
        raise ValueError("build_glioma_seg needs the source instances of the reference series")
    objects = objects or ResultObjectSettings()
    segments, numbers = _assessable_segments(not_assessable)
    if bool((np.asarray(label_map.array) == RESECTION_CAVITY_LABEL).any()):
        # A post-operative result (glioma_postop): the cavity after the tumour segments, never one of them.
        cavity = replace(RESECTION_CAVITY_SEGMENT, number=len(segments) + 1)
        segments, numbers = (*segments, cavity), {**numbers, RESECTION_CAVITY_LABEL: cavity.number}
    return build_seg(
        label_map.with_array(_segment_number_map(label_map.array, numbers)), source_instances,
        segments=segments, algorithm=model, algorithm_family=codes.cid7162.ArtificialIntelligence,
        kind="neuroflow.glioma-seg",
        series_description=describe(SERIES_DESCRIPTION, needs_review=needs_review, version=version),
        content_label=CONTENT_LABEL, manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        series_number=objects.seg_series_number, input_hash=input_hash, uid_root=objects.uid_root,
        device_serial_number=device_serial_number,
    )


METASTASES_SEG_DESCRIPTION = "AI metastases segmentation (not for diagnosis)"
METASTASES_CONTENT_LABEL = "METS_AI"
METASTASES_MODEL_NAME = "neuroflow metastases"


def build_metastases_seg(
    lesion_labels: Volume,
    source_instances: Sequence[pydicom.Dataset],
    *,
    model: ModelRef,
    input_hash: str | None = None,
    objects: ResultObjectSettings | None = None,
    needs_review: bool = False,
    version: int = 1,
    device_serial_number: str = "none",
) -> pydicom.Dataset | None:
    """A BINARY DICOM SEG with one segment per metastasis: segment n is lesion n of ``lesion_labels`` (0 none,
    1..n as :func:`neuroflow.core.lesions.label_lesions` numbers them, largest first), "Met n", as
    the RTSTRUCT's ROI n. ``None`` without a lesion. Raises ``ValueError`` for lesion numbers that are not
    1..n without gaps, or over 255 (a SEG's segment numbers here are 8-bit); otherwise as :func:`build_seg`."""
    objects = objects or ResultObjectSettings()
    values = np.asarray(lesion_labels.array)
    count = int(values.max()) if values.size else 0
    present = {int(v) for v in np.unique(values)} - {0}
    if present != set(range(1, count + 1)):
        raise ValueError(f"lesion numbers {sorted(present)} are not 1..{count} without gaps")
    if count > 255:
        raise ValueError(f"{count} lesions: over the 255 segments this SEG can number")
    return build_seg(
        lesion_labels.with_array(values.astype(np.uint8)), source_instances,
        segments=[metastasis_segment(n) for n in range(1, count + 1)], algorithm=model,
        algorithm_family=codes.cid7162.ArtificialIntelligence, kind="neuroflow.metastases-seg",
        series_description=describe(METASTASES_SEG_DESCRIPTION, needs_review=needs_review, version=version),
        content_label=METASTASES_CONTENT_LABEL, manufacturer_model_name=METASTASES_MODEL_NAME,
        series_number=objects.metastases_seg_series_number, input_hash=input_hash, uid_root=objects.uid_root,
        device_serial_number=device_serial_number,
    )


def build_seg(
    segment_numbers: Volume,
    source_instances: Sequence[pydicom.Dataset],
    *,
    segments: Sequence[SegmentDefinition],
    algorithm: ModelRef,
    algorithm_family: Code,
    kind: str,
    series_description: str,
    content_label: str,
    manufacturer_model_name: str,
    series_number: int,
    input_hash: str | None = None,
    uid_root: str | None = None,
    device_serial_number: str = "none",
) -> pydicom.Dataset | None:
    """The one SEG builder: a BINARY DICOM SEG of ``segment_numbers`` (uint8, 0 = none, n = segment
    number n of ``segments``) on the voxel grid of the series ``source_instances`` belong to, or ``None``
    when no voxel is set.

    ``algorithm`` (name, version) and ``algorithm_family`` (a CID 7162 code) identify what drew it;
    ``kind`` names the kind of result and enters the UIDs with the source series UID, the algorithm and
    ``input_hash`` (default: the hash of the source SOPInstanceUIDs), so a rerun on the same inputs
    gives the same UIDs. Every segment of ``segments`` is described; empty frames are omitted. The
    same refusals as :func:`build_glioma_seg` for source instances off the grid."""
    if not source_instances:
        raise ValueError("build_seg needs the source instances of the series the segmentation is drawn on")
    numbers = np.asarray(segment_numbers.array)
    known = {s.number for s in segments}
    unknown = sorted(int(v) for v in np.unique(numbers) if int(v) != 0 and int(v) not in known)
    if unknown:
        raise ValueError(f"segment numbers {unknown} are not among the segments {sorted(known)}")
    if not numbers.any():
        return None

    ordered_sources = sources_in_slice_order(segment_numbers.geometry, source_instances)
    source_series_uid = str(ordered_sources[0].SeriesInstanceUID)
    key = input_hash if input_hash is not None else hash_of_instance_uids(ordered_sources)
    entropy = [kind, source_series_uid, str(algorithm), key]
    root = uid_root or ResultObjectSettings().uid_root

    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=algorithm_family,
        version=str(algorithm.version),
        source=MANUFACTURER,
    )
    seg = hd.seg.Segmentation(
        source_images=ordered_sources,
        pixel_array=numbers.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description(s, identification) for s in segments],
        series_instance_uid=derived_uid(root, *entropy, "series"),
        series_number=series_number,
        sop_instance_uid=derived_uid(root, *entropy, "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=neuroflow.__version__,
        device_serial_number=device_serial_number,
        content_description=DISCLAIMER,
        content_label=content_label,
        omit_empty_frames=True,
    )
    seg.SeriesDescription = series_description
    # highdicom draws the dimension organisation UID at random under its own root: derived here instead,
    # under the site's root, so a rerun gives the same object to the byte.
    organisation = derived_uid(root, *entropy, "dimension-organization")
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = organisation
    declare_local_coding_scheme(seg)
    return seg


def declare_local_coding_scheme(ds: pydicom.Dataset) -> None:
    """Names neuroflow's private coding scheme (``core.labels.LOCAL_CODING_SCHEME``) in the object's Coding
    Scheme Identification Sequence, so a reader of its codes can tell whose they are."""
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = LOCAL_CODING_SCHEME
    item.CodingSchemeName = "neuroflow local codes"
    item.CodingSchemeResponsibleOrganization = NEUROFLOW_MANUFACTURER
    ds.CodingSchemeIdentificationSequence = [item]


def _assessable_segments(
    not_assessable: Collection[str],
) -> tuple[tuple[SegmentDefinition, ...], dict[int, int]]:
    """The segments to write and the segment number of each BraTS label drawn (a label not in the map is
    not drawn): all of :data:`GLIOMA_SEGMENTS` when every region can be assessed (numbered as defined),
    otherwise those whose regions all can, plus the whole tumour as one segment when only the core cannot,
    numbered from 1 as a SEG requires."""
    if not not_assessable:
        return GLIOMA_SEGMENTS, {int(label): number for number, label in SEGMENT_BRATS_LABEL.items()}
    unknown = {str(r) for r in not_assessable} - {r.value for r in TumourRegion}
    assessable = {r for r in TumourRegion if r.value not in not_assessable}
    if unknown:
        raise ValueError(f"not assessable regions {sorted(unknown)} are not tumour regions")
    chosen: list[tuple[SegmentDefinition, tuple[BratsLabel, ...]]] = [
        (segment, (SEGMENT_BRATS_LABEL[segment.number],)) for segment in GLIOMA_SEGMENTS
        if SEGMENT_NEEDS[SEGMENT_BRATS_LABEL[segment.number]] <= assessable]
    if TumourRegion.WT in assessable and TumourRegion.TC not in assessable:
        chosen.append((WHOLE_TUMOUR_SEGMENT, tuple(REGION_LABELS[TumourRegion.WT])))
    segments = tuple(replace(segment, number=n) for n, (segment, _) in enumerate(chosen, start=1))
    return segments, {int(label): n for n, (_, labels) in enumerate(chosen, start=1) for label in labels}


def _segment_number_map(labels: npt.NDArray[np.generic], numbers: dict[int, int]) -> npt.NDArray[np.uint8]:
    """The label map rewritten as segment numbers (0 = none) by ``numbers`` (BraTS label, or the resection
    cavity's label, -> segment)."""
    values = np.unique(labels)
    known = {int(v) for v in BratsLabel} | {RESECTION_CAVITY_LABEL}
    unknown = sorted(int(v) for v in values if int(v) not in known)
    if unknown:
        raise ValueError(f"label map holds values {unknown} that are not BraTS labels {sorted(known)}")
    lookup = np.zeros(max(known) + 1, dtype=np.uint8)
    for brats_label, number in numbers.items():
        lookup[int(brats_label)] = number
    return lookup[np.asarray(labels, dtype=np.intp)]


def _segment_description(
    segment: SegmentDefinition, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=segment.label,
        segmented_property_category=hd.sr.CodedConcept(*segment.category_code),
        segmented_property_type=hd.sr.CodedConcept(*segment.type_code),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*segment.rgb),
    )


def hash_of_instance_uids(instances: Sequence[pydicom.Dataset]) -> str:
    uids = sorted(str(ds.SOPInstanceUID) for ds in instances)
    return hashlib.sha256("\n".join(uids).encode()).hexdigest()

