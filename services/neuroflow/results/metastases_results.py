"""The metastases result objects (issue 15), all on the T1CE as acquired: a SEG with one segment per lesion, an
RTSTRUCT with one ROI per lesion ("Met n") for radiosurgery planning, the SR with the lesion table and the
colour overlay series. Built from the report (the lesion table) and the lesion label map on the T1CE grid, so
every object numbers the lesions as report.json does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.labels import metastasis_segment
from neuroflow.core.lesions import Lesions
from neuroflow.core.model_card import ModelRef
from neuroflow.core.volume import Volume
from neuroflow.results.dicom_seg import build_metastases_seg
from neuroflow.results.dicom_sr import SR_FILE, metastases_sr
from neuroflow.results.overlay import LegendEntry, overlay_series
from neuroflow.results.report import MetastasesSection, MetastasisEntry, ReviewAssessment, StudyReport
from neuroflow.results.rtstruct import build_metastases_rtstruct
from neuroflow.results.series_naming import NEEDS_REVIEW, series_description

SEG_FILE = "seg.dcm"
RTSTRUCT_FILE = "rtstruct.dcm"
T1CE_OVERLAY_FOLDER = "overlay_t1ce"
# Every name a metastases result may write (a re-run removes them all first).
METASTASES_RESULT_NAMES = (SEG_FILE, RTSTRUCT_FILE, SR_FILE, T1CE_OVERLAY_FOLDER)
_OVERLAY_DESCRIPTION = "AI metastases overlay on T1CE (not for diagnosis)"
# Models whose every result is marked NEEDS REVIEW, with why: a model far from its anchor must never reach a
# reader unflagged (models/metastases_unet/EVALUATION.md has the figures).
PROVISIONAL_MODELS: dict[tuple[str, int], str] = {
    ("metastases_unet", 1): "provisional model (metastases_unet v1): on synthetic cases it never trained "
                            "on it found 75-84 % of metastases (about 40 % of those 3-6 mm) "
                            "with about 3 false positives per case; check every lesion, look for missed small ones",
    ("metastases_unet", 2): "provisional model (metastases_unet v2): on synthetic cases it never trained "
                            "on it found 74-75 % of metastases (22-30 % of those 3-6 mm) "
                            "with about 1 false positive per case; check every lesion, look for missed small ones",
    ("metastases_unet", 3): "provisional model (metastases_unet v3): on synthetic cases it never trained "
                            "on it found 83-90 % of metastases (48-67 % of those 3-6 mm) "
                            "with 1.2-1.7 false positives per case (about 2 without the default left-right "
                            "mirror); check every lesion, look for missed small ones",
}


def metastases_section(lesions: Lesions, *, threshold: float, min_volume_mm3: float,
                       locations: Sequence[str] | None) -> MetastasesSection:
    """The report's lesion table of ``lesions`` (numbered as their label map, largest first); ``locations``:
    the atlas region of each lesion's centroid, in the same order (None: not located)."""
    if locations is not None and len(locations) != lesions.count:
        raise ValueError(f"{len(locations)} location(s) for {lesions.count} lesion(s)")
    return MetastasesSection(
        count=lesions.count, total_volume_ml=round(lesions.total_volume_ml, 5), threshold=threshold,
        min_volume_mm3=min_volume_mm3,
        lesions=[MetastasisEntry(number=m.number, volume_ml=round(m.volume_ml, 5),
                                 longest_axial_diameter_mm=round(m.longest_axial_diameter_mm, 2),
                                 centroid_mm=(round(m.centroid_mm[0], 2), round(m.centroid_mm[1], 2),
                                              round(m.centroid_mm[2], 2)),
                                 confidence=None if m.confidence is None else round(m.confidence, 4),
                                 location=None if locations is None else locations[n])
                 for n, m in enumerate(lesions.lesions)])


def metastases_review(model: ModelRef, section: MetastasesSection) -> ReviewAssessment | None:
    """Whether a metastases result must be reviewed before anyone relies on it: always, while its model is
    provisional (PROVISIONAL_MODELS); None otherwise (no check of its own yet)."""
    return provisional_review(model, f"{section.count} lesion(s) reported")


def provisional_review(model: ModelRef, what: str) -> ReviewAssessment | None:
    """NEEDS REVIEW, with why, for any result of a provisional metastases model (PROVISIONAL_MODELS): the lesion
    table and the follow-up built on it alike; None for a model that is not provisional. ``what``: the result."""
    reason = PROVISIONAL_MODELS.get((model.name, model.version))
    if reason is None:
        return None
    return ReviewAssessment(needs_review=True, risk_score=1, threshold=0, alarms=[reason],
                            method=f"model provisional; {what}")


def metastases_objects(
    report: StudyReport,
    lesion_labels: Volume,
    t1ce_image: Volume,
    t1ce_instances: Sequence[pydicom.Dataset],
    *,
    input_hash: str,
    objects: ResultObjectSettings,
) -> dict[str, list[pydicom.Dataset]]:
    """Every object of a metastases result that goes to PACS, by file name (a name ending in .dcm is one
    object, any other a series): SEG and RTSTRUCT (both absent when no lesion was found), the SR and the
    overlay on the T1CE. ``lesion_labels``: 0 none, n = lesion n, on ``t1ce_image``'s grid (the T1CE as
    converted from ``t1ce_instances``)."""
    if report.model is None or report.metastases is None:
        raise ValueError("metastases result objects need the report of a succeeded metastases run")
    needs_review = report.review is not None and report.review.needs_review
    out: dict[str, list[pydicom.Dataset]] = {}
    seg = build_metastases_seg(lesion_labels, t1ce_instances, model=report.model, input_hash=input_hash,
                               objects=objects, needs_review=needs_review)
    if seg is not None:
        out[SEG_FILE] = [seg]
    rtstruct = build_metastases_rtstruct(lesion_labels, t1ce_instances, model=report.model, input_hash=input_hash,
                                         objects=objects, needs_review=needs_review)
    if rtstruct is not None:
        out[RTSTRUCT_FILE] = [rtstruct]
    out[SR_FILE] = [metastases_sr(report, t1ce_instances, seg=seg, input_hash=input_hash, objects=objects)]
    # One colour for every lesion: at 240 pixels across a legend has no room for n names.
    drawn = lesion_labels.with_array((np.asarray(lesion_labels.array) > 0).astype(np.uint8))
    out[T1CE_OVERLAY_FOLDER] = overlay_series(
        t1ce_image, drawn, t1ce_instances, legend=[LegendEntry(1, "Metastasis", metastasis_segment(1).rgb)],
        kind="neuroflow.metastases-overlay.T1CE", input_hash=input_hash,
        series_number=objects.metastases_overlay_series_number,
        series_description=series_description(_OVERLAY_DESCRIPTION, needs_review=needs_review),
        uid_root=objects.uid_root, flag=NEEDS_REVIEW if needs_review else "")
    return out
