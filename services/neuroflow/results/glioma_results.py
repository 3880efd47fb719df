"""The glioma result objects, drawn on the reference series as it was acquired."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import Comprehensive3DSRStorage

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.handoff import PreprocessSummary, ReviewSummary
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.labels import (
    GLIOMA_SEGMENTS,
    REGION_LABELS,
    RESECTION_CAVITY_LABEL,
    RESECTION_CAVITY_SEGMENT,
    SEGMENT_BRATS_LABEL,
    WHOLE_TUMOUR_SEGMENT,
    TumourRegion,
)
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, SeriesRole
from neuroflow.core.sequence_subsets import glioma_reference_role, not_assessable
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.core.volume_members import volume_instances
from neuroflow.results.dicom_seg import build_glioma_seg
from neuroflow.results.dicom_sr import GLIOMA_SR_DESCRIPTION, SR_FILE, glioma_sr, glioma_sr_uid
from neuroflow.results.notice import NOTICE_IMAGE_FILE, NOTICE_SR_FILE, notice_objects, notice_of
from neuroflow.results.overlay import LegendEntry, overlay_series
from neuroflow.results.postop_results import with_cavity_alarm
from neuroflow.results.report import (
    TOTAL_TIMING_KEY,
    OrientationCheck,
    PostoperativeSection,
    RegistrationQuality,
    ReportStatus,
    ReviewAssessment,
    SeriesEntry,
    SkullStrip,
    StudyReport,
    TumourVolumes,
)
from neuroflow.results.series_naming import NEEDS_REVIEW, series_description

SEG_FILE = "seg.dcm"
T1CE_OVERLAY_FOLDER = "overlay_t1ce"
FLAIR_OVERLAY_FOLDER = "overlay_flair"
# Every name a glioma result may write (a re-run removes them all first).
GLIOMA_RESULT_NAMES = (SEG_FILE, SR_FILE, T1CE_OVERLAY_FOLDER, FLAIR_OVERLAY_FOLDER, NOTICE_SR_FILE,
                       NOTICE_IMAGE_FILE)


def glioma_seg(
    labels_on_grid: Volume,
    reference_geometry: Geometry,
    reference_instances: Sequence[pydicom.Dataset],
    *,
    model: ModelRef,
    input_hash: str,
    unassessable: Collection[str] = (),
    objects: ResultObjectSettings | None = None,
    needs_review: bool = False,
    version: int = 1,
) -> pydicom.Dataset | None:
    """The DICOM SEG of a label map computed on the common 1 mm grid, resampled (nearest neighbour)
    onto the reference series' own voxel grid so a viewer overlays it slice by slice on the images
    the radiologist reads. The sub-regions the study's sequences cannot show (``unassessable``, the report's
    ``not_assessable``) are not drawn. ``None`` when no tumour was found."""
    on_reference = resample(labels_on_grid, reference_geometry, interpolator=sitk.sitkNearestNeighbor)
    labels = on_reference.with_array(np.asarray(on_reference.array, dtype=np.uint8))
    return build_glioma_seg(labels, reference_instances, model=model, input_hash=input_hash, objects=objects,
                            needs_review=needs_review, version=version, not_assessable=unassessable)


@dataclass(frozen=True)
class Supersedes:
    """The result a re-run replaces: its SR and its version. ``same_input``: the earlier result came from
    the same inputs (same UIDs: rebuilt in place, keeping its version); otherwise the new result is the next
    version and its SR names the earlier SR as predecessor."""

    sr: pydicom.Dataset
    version: int
    same_input: bool


# Short names: the legend is burned into images of 240 pixels or fewer across.
_LEGEND_NAMES = {1: "Necrotic core", 2: "Oedema", 3: "Enhancing tumour"}
_VERSION = re.compile(r" v(\d+)$")


def earlier_result(sr: pydicom.Dataset | None, *, study_instance_uid: str, input_hash: str,
                   objects: ResultObjectSettings) -> Supersedes | None:
    """What an earlier glioma SR of the same study (``sr``, None when there is none) means for this run."""
    if sr is None or str(sr.get("StudyInstanceUID", "")) != study_instance_uid:
        return None
    match = _VERSION.search(str(sr.get("SeriesDescription", "")))
    same = str(sr.get("SOPInstanceUID", "")) == glioma_sr_uid(study_instance_uid, input_hash, objects)
    return Supersedes(sr, int(match.group(1)) if match else 1, same)


def latest_glioma_sr(headers: Sequence[pydicom.Dataset], objects: ResultObjectSettings) -> pydicom.Dataset | None:
    """Of a study's objects (headers, as a source indexes them), the glioma SR of the latest version neuroflow
    made there (None when there is none): what a re-run on a store of results, rather than an output folder,
    supersedes."""
    ours = [h for h in headers
            if str(h.get("SOPClassUID", "")) == str(Comprehensive3DSRStorage)
            and str(h.get("Manufacturer", "")) == NEUROFLOW_MANUFACTURER
            and h.get("SeriesNumber") is not None and int(h.SeriesNumber) == objects.sr_series_number
            and GLIOMA_SR_DESCRIPTION in str(h.get("SeriesDescription", ""))]

    def version(sr: pydicom.Dataset) -> int:
        match = _VERSION.search(str(sr.get("SeriesDescription", "")))
        return int(match.group(1)) if match else 1

    return max(ours, key=version, default=None)


def glioma_objects(
    report: StudyReport,
    labels_on_grid: Volume,
    instances: Mapping[SeriesRole, Sequence[pydicom.Dataset]],
    *,
    input_hash: str,
    objects: ResultObjectSettings,
    study_key: str,
    volumes_of: Mapping[SeriesRole, str] | None = None,
    earlier: Supersedes | None = None,
) -> dict[str, list[pydicom.Dataset]]:
    """Every object of a glioma result that goes to PACS, by file name (a name ending in .dcm is one object,
    any other a series): the SEG on T1CE (None when no tumour), the SR, the colour overlays on T1CE and on
    FLAIR, and, when no tumour was found, the notice SR and image. Built from ``report`` (volumes, model,
    review flag), so they say what report.json says. ``instances``: the routed series with pixels (T1CE
    needed; FLAIR drawn on when present). ``earlier``: the result of an earlier input this one replaces.

    The FLAIR overlay maps the labels onto the FLAIR grid through patient coordinates; registration moved
    FLAIR onto T1CE, so a patient who moved between the two series shows the shift (the T1CE objects are exact)."""
    if report.model is None:
        raise ValueError("glioma result objects need the report of a succeeded run")
    volumes_of = volumes_of or {}
    needs_review = report.review is not None and report.review.needs_review
    version = 1 if earlier is None else earlier.version + (0 if earlier.same_input else 1)
    reference_role = glioma_reference_role(instances)  # the series preprocessing registered onto
    reference = volume_instances(instances[reference_role], study_key=study_key,
                                 volume=volumes_of.get(reference_role, ""))
    reference_image = series_to_volume(reference, study_key=study_key)
    out: dict[str, list[pydicom.Dataset]] = {}
    seg = glioma_seg(labels_on_grid, reference_image.geometry, reference, model=report.model, input_hash=input_hash,
                     unassessable=report.not_assessable, objects=objects, needs_review=needs_review, version=version)
    if seg is not None:
        out[SEG_FILE] = [seg]
    new_version = earlier is not None and not earlier.same_input
    sr = glioma_sr(report, reference, seg=seg, input_hash=input_hash, objects=objects, version=version,
                   predecessor=earlier.sr if new_version and earlier is not None else None)
    if earlier is not None and earlier.same_input and "PredecessorDocumentsSequence" in earlier.sr:
        sr.PredecessorDocumentsSequence = earlier.sr.PredecessorDocumentsSequence  # rebuilt, still version n
    out[SR_FILE] = [sr]
    drawn_labels, legend = _overlay_labels(labels_on_grid, report.not_assessable)
    for role, folder, number in ((SeriesRole.T1CE, T1CE_OVERLAY_FOLDER, objects.t1ce_overlay_series_number),
                                 (SeriesRole.FLAIR, FLAIR_OVERLAY_FOLDER, objects.flair_overlay_series_number)):
        if role not in instances:
            continue
        series = reference if role is reference_role else volume_instances(
            instances[role], study_key=study_key, volume=volumes_of.get(role, ""))
        image = reference_image if role is reference_role else series_to_volume(series, study_key=study_key)
        labels = resample(drawn_labels, image.geometry, interpolator=sitk.sitkNearestNeighbor)
        description = series_description(f"AI glioma overlay on {role.value} (not for diagnosis)",
                                         needs_review=needs_review, version=version)
        out[folder] = overlay_series(image, labels.with_array(np.asarray(labels.array, dtype=np.uint8)), series,
                                     legend=legend, kind=f"neuroflow.glioma-overlay.{role.value}",
                                     input_hash=input_hash, series_number=number,
                                     series_description=description, uid_root=objects.uid_root,
                                     flag=NEEDS_REVIEW if needs_review else "")
    notice = notice_of(report)
    if notice is not None:
        out.update(notice_objects(report, notice, reference, input_hash=input_hash, objects=objects))
    return out


def _overlay_labels(labels: Volume, unassessable: Collection[str]) -> tuple[Volume, list[LegendEntry]]:
    """The labels an overlay draws and its legend: the sub-regions as segmented, or, when the sequences cannot
    show the core (no T1CE), the whole tumour as one colour, as the SEG draws it."""
    cavity = np.asarray(labels.array) == RESECTION_CAVITY_LABEL
    # The resection cavity of a post-operative result, in its own colour beside the tumour.
    cavity_legend = [LegendEntry(RESECTION_CAVITY_LABEL, "Resection cavity", RESECTION_CAVITY_SEGMENT.rgb)
                     ] if cavity.any() else []
    if TumourRegion.TC.value not in unassessable:
        return labels, [*(LegendEntry(int(SEGMENT_BRATS_LABEL[s.number]), _LEGEND_NAMES[s.number], s.rgb)
                          for s in GLIOMA_SEGMENTS), *cavity_legend]
    tumour = np.isin(labels.array, [int(label) for label in REGION_LABELS[TumourRegion.WT]])
    drawn = np.where(cavity, RESECTION_CAVITY_LABEL, tumour.astype(np.uint8)).astype(np.uint8)
    return (labels.with_array(drawn), [LegendEntry(1, "Whole tumour", WHOLE_TUMOUR_SEGMENT.rgb), *cavity_legend])


def registration_warnings(summary: PreprocessSummary) -> list[str]:
    """A warning per series that registration left worse aligned than the scanner geometry had it, or whose
    outline still disagrees with the reference's (a failed registration: the segmentation saw misaligned inputs)."""
    return [*(f"registration of {role} made the alignment worse (NMI {reg.nmi_before:.3f} -> {reg.nmi:.3f}); "
              "review the overlay"
              for role, reg in summary.registration.items() if reg.nmi < reg.nmi_before - 0.01),
            *(reg.misalignment(role) for role, reg in summary.registration.items() if reg.misaligned)]


def glioma_report(
    study_instance_uid: str,
    study_key: str,
    pipeline: str,
    summary: PreprocessSummary,
    *,
    volumes: TumourVolumes,
    model: ModelRef,
    series: list[SeriesEntry],
    timings: dict[str, float],
    warnings: list[str],
    outputs: list[str],
    roles_used: Collection[SeriesRole],
    review: ReviewSummary | None = None,
    postoperative: PostoperativeSection | None = None,
) -> StudyReport:
    """The succeeded glioma report, the same in both runtimes: built from what preprocessing handed on
    (``summary``), the measured volumes and the series routing chose; from the input roles the study had
    (``roles_used``), the sequences missing and the sub-regions they leave not assessable. ``postoperative``
    (glioma_postop): the resection cavity and residual tumour, which make the result NEEDS REVIEW."""
    assessment = None if review is None else review_assessment(review)
    if postoperative is not None:
        assessment = with_cavity_alarm(assessment)
    return StudyReport(
        study_instance_uid=study_instance_uid,
        study_key=study_key,
        pipeline=pipeline,
        status=ReportStatus.SUCCEEDED,
        series=series,
        timings_s={**timings, TOTAL_TIMING_KEY: round(sum(timings.values()), 3)},
        volumes_ml=volumes,
        model=model,
        **preprocessing_checks(summary),
        not_assessable=not_assessable(roles_used),
        sequences_missing=[r for r in GLIOMA_INPUT_ROLES if r not in roles_used],
        review=assessment,
        postoperative=postoperative,
        warnings=warnings,
        outputs=outputs,
    )


def preprocessing_checks(summary: PreprocessSummary) -> dict[str, Any]:
    """The report's fields on preprocessing (registration, orientation, skull strip), for every pipeline that
    runs the glioma preprocessing (glioma, metastases)."""
    return {
        "registration": {
            SeriesRole(role): RegistrationQuality(
                metric="mattes_mutual_information", metric_value=reg.metric, quality=reg.nmi,
                quality_measure="normalised mutual information with the reference")
            if reg.outline_dice is None else RegistrationQuality(
                metric="mattes_mutual_information", metric_value=reg.metric, quality=reg.outline_dice,
                quality_measure="outline Dice with the reference")
            for role, reg in summary.registration.items()},
        "orientation_check": OrientationCheck(
            passed=True,
            detail="; ".join(f"{role}: {c.verdict} (NMI as is {c.nmi_as_is:.3f}, mirrored {c.nmi_mirrored:.3f})"
                             for role, c in summary.orientation.items())),
        "skull_strip": SkullStrip(brain_volume_ml=summary.brain_volume_ml, method=summary.skull_strip_method),
    }


def review_assessment(review: ReviewSummary) -> ReviewAssessment:
    """The report's failure flag from the one the segmentation handed on (None there: not assessed)."""
    return ReviewAssessment(needs_review=review.needs_review, risk_score=review.risk_score,
                            threshold=review.threshold, alarms=list(review.alarms),
                            disagreement=dict(review.disagreement), method=review.method)
