"""The post-operative part of a glioma result (pipeline glioma_postop): the report's section, measured on the
label map the segmentation stage carved the resection cavity into, the same in both runtimes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from neuroflow.core.handoff import CavityFinding
from neuroflow.core.labels import RESECTION_CAVITY_LABEL, BratsLabel
from neuroflow.core.volume import Volume
from neuroflow.results.report import PostoperativeSection, ReviewAssessment

# Enhancing tumour this close to the cavity wall is residual tumour at the resection margin.
RIM_MM = 3.0
_MM3_PER_ML = 1000.0
CAVITY_ALARM = ("post-operative study: the resection cavity is a rule-based estimate (no model trained on "
                "post-operative studies), unvalidated on real cases; check the cavity and the residual tumour")


def postoperative_section(labels: Volume, finding: CavityFinding) -> PostoperativeSection:
    """The cavity's volume, the enhancing tumour outside it and the part of that within RIM_MM of its wall."""
    array = np.asarray(labels.array)
    ml_per_voxel = labels.voxel_volume_mm3 / _MM3_PER_ML
    cavity = array == RESECTION_CAVITY_LABEL
    enhancing = array == int(BratsLabel.ENHANCING)
    rim = np.zeros_like(enhancing)
    if cavity.any():
        spacing = np.asarray(labels.geometry.spacing[::-1], dtype=float)  # array axes (z, y, x)
        rim = enhancing & (ndimage.distance_transform_edt(~cavity, sampling=spacing) <= RIM_MM)
    return PostoperativeSection(
        evidence=list(finding.evidence),
        cavity_ml=round(float(cavity.sum()) * ml_per_voxel, 3) if finding.assessable else None,
        why_not=finding.why_not, residual_enhancing_ml=round(float(enhancing.sum()) * ml_per_voxel, 3),
        rim_enhancing_ml=round(float(rim.sum()) * ml_per_voxel, 3), rim_mm=RIM_MM,
        tumour_removed_ml=finding.tumour_removed_ml, located_by=finding.located_by, method=finding.method,
        prior_tumour=finding.prior_tumour)


def with_cavity_alarm(review: ReviewAssessment | None) -> ReviewAssessment:
    """The review of a post-operative result: always NEEDS REVIEW, the cavity's estimate one of its alarms."""
    if review is None:
        return ReviewAssessment(needs_review=True, risk_score=1, threshold=0, alarms=[CAVITY_ALARM],
                                method="post-operative cavity rules")
    return review.model_copy(update={"needs_review": True, "risk_score": review.risk_score + 1,
                                     "alarms": [*review.alarms, CAVITY_ALARM]})

