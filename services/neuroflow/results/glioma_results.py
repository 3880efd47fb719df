"""The glioma result objects, drawn on the reference series as it was acquired."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk

from neuroflow.core.handoff import PreprocessSummary, ReviewSummary
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.results.dicom_seg import build_glioma_seg
from neuroflow.results.report import (
    TOTAL_TIMING_KEY,
    OrientationCheck,
    RegistrationQuality,
    ReportStatus,
    ReviewAssessment,
    SeriesEntry,
    SkullStrip,
    StudyReport,
    TumourVolumes,
)


def glioma_seg(
    labels_on_grid: Volume,
    reference_geometry: Geometry,
    reference_instances: Sequence[pydicom.Dataset],
    *,
    model: ModelRef,
    input_hash: str,
) -> pydicom.Dataset | None:
    """The DICOM SEG of a label map computed on the common 1 mm grid, resampled (nearest neighbour)
    onto the reference series' own voxel grid so a viewer overlays it slice by slice on the images
    the radiologist reads. ``None`` when no tumour was found."""
    on_reference = resample(labels_on_grid, reference_geometry, interpolator=sitk.sitkNearestNeighbor)
    labels = on_reference.with_array(np.asarray(on_reference.array, dtype=np.uint8))
    return build_glioma_seg(labels, reference_instances, model=model, input_hash=input_hash)


def registration_warnings(summary: PreprocessSummary) -> list[str]:
    """A warning per series that registration left worse aligned than the scanner geometry had it."""
    return [f"registration of {role} made the alignment worse (NMI {reg.nmi_before:.3f} -> {reg.nmi:.3f}); "
            "review the overlay"
            for role, reg in summary.registration.items() if reg.nmi < reg.nmi_before - 0.01]


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
    review: ReviewSummary | None = None,
) -> StudyReport:
    """The succeeded glioma report, the same in both runtimes: built from what preprocessing handed on
    (``summary``), the measured volumes and the series routing chose."""
    return StudyReport(
        study_instance_uid=study_instance_uid,
        study_key=study_key,
        pipeline=pipeline,
        status=ReportStatus.SUCCEEDED,
        series=series,
        timings_s={**timings, TOTAL_TIMING_KEY: round(sum(timings.values()), 3)},
        volumes_ml=volumes,
        model=model,
        registration={
            SeriesRole(role): RegistrationQuality(
                metric="mattes_mutual_information", metric_value=reg.metric, quality=reg.nmi,
                quality_measure="normalised mutual information with the reference")
            for role, reg in summary.registration.items()
        },
        orientation_check=OrientationCheck(
            passed=True,
            detail="; ".join(f"{role}: {c.verdict} (NMI as is {c.nmi_as_is:.3f}, mirrored {c.nmi_mirrored:.3f})"
                             for role, c in summary.orientation.items()),
        ),
        skull_strip=SkullStrip(brain_volume_ml=summary.brain_volume_ml, method=summary.skull_strip_method),
        review=None if review is None else review_assessment(review),
        warnings=warnings,
        outputs=outputs,
    )


def review_assessment(review: ReviewSummary) -> ReviewAssessment:
    """The report's failure flag from the one the segmentation handed on (None there: not assessed)."""
    return ReviewAssessment(needs_review=review.needs_review, risk_score=review.risk_score,
                            threshold=review.threshold, alarms=list(review.alarms),
                            disagreement=dict(review.disagreement), method=review.method)
