"""The study report: what the pipeline did with a study and what it found, as ``report.json`` for
machines and ``summary.txt`` for a radiologist.

The models here are the report's contract: a DICOM Structured Report (a later step) is to be built
from a :class:`StudyReport`, not from the pipeline's internals, so both always say the same thing.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

import neuroflow
from neuroflow.core.labels import REGION_LABELS, TumourRegion
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume

DISCLAIMER = "AI output for review; not a diagnosis."
REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.txt"
REPORT_SCHEMA_VERSION = 1
TOTAL_TIMING_KEY = "total"
_MM3_PER_ML = 1000.0


class ReportStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class _ReportModel(BaseModel):
    # Unknown keys are refused: a misspelt field must fail in a test, not vanish from a report.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeriesEntry(_ReportModel):
    """One series of the study, as routing classified it, and whether the pipeline used it."""

    series_instance_uid: str
    series_number: int | None = None
    description: str = ""
    role: SeriesRole
    confidence: float = Field(ge=0.0, le=1.0)
    reasons: list[str] = Field(default_factory=list)
    used_as: SeriesRole | None = None  # the pipeline input this series fed, or None if unused


class TumourVolumes(_ReportModel):
    """Volumes in millilitres of the nested regions WT ⊇ TC ⊇ ET and of the two shells between them."""

    WT: float = Field(ge=0.0)
    TC: float = Field(ge=0.0)
    ET: float = Field(ge=0.0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def oedema(self) -> float:
        """WT − TC: the peritumoural oedema."""
        return self.WT - self.TC

    @computed_field  # type: ignore[prop-decorator]
    @property
    def necrotic_core(self) -> float:
        """TC − ET: the necrotic and non-enhancing core."""
        return self.TC - self.ET

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: object) -> object:
        # A report read back from JSON carries the derived volumes; they are recomputed, not trusted.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in ("oedema", "necrotic_core")}
        return data

    @model_validator(mode="after")
    def _nested(self) -> Self:
        if not self.WT >= self.TC >= self.ET:
            raise ValueError(f"regions must nest (WT ⊇ TC ⊇ ET), got WT={self.WT} TC={self.TC} ET={self.ET}")
        return self

    @classmethod
    def from_label_map(cls, label_map: Volume) -> TumourVolumes:
        """Region volumes of a BraTS label map, using the voxel size of its geometry."""
        ml_per_voxel = label_map.voxel_volume_mm3 / _MM3_PER_ML
        counts = {
            region: int(np.isin(label_map.array, [int(label) for label in labels]).sum())
            for region, labels in REGION_LABELS.items()
        }
        return cls(**{region.value: counts[region] * ml_per_voxel for region in TumourRegion})

    @property
    def tumour_detected(self) -> bool:
        return self.WT > 0.0


class RegistrationQuality(_ReportModel):
    """How well one moving series was registered onto the reference series."""

    metric: str  # the similarity metric optimised, e.g. "mattes_mutual_information"
    metric_value: float
    quality: float  # a figure of merit a reviewer can threshold
    quality_measure: str  # what ``quality`` is, e.g. "brain-mask Dice with the reference"


class OrientationCheck(_ReportModel):
    """Whether all series agree on left/right and on the patient axes."""

    passed: bool
    detail: str = ""


class SkullStrip(_ReportModel):
    brain_volume_ml: float = Field(ge=0.0)
    method: str = ""


class NewLesionEntry(_ReportModel):
    """One new or enlarging MS lesion on the follow-up."""

    centroid_mm: tuple[float, float, float]  # DICOM patient coordinates (LPS), on the follow-up
    volume_mm3: float = Field(ge=0.0)
    location: str  # atlas region, "outside atlas" when none
    kind: str = "new"  # "new", or "enlarging" (then the volume is the tissue added since baseline)


class DiametersMm(_ReportModel):
    """Extents along the patient axes: anteroposterior, left-right, craniocaudal."""

    ap_mm: float
    lr_mm: float
    cc_mm: float


class HaematomaSection(_ReportModel):
    """Haematoma at both timepoints and its change. A timepoint without a haematoma has volume 0 and no
    shape figures (``None``)."""

    baseline_ml: float = Field(ge=0.0)
    followup_ml: float = Field(ge=0.0)
    change_ml: float
    change_pct: float | None  # None when there was no haematoma at baseline
    expansion: bool  # >= 6 mL or >= 33 %
    centroid_shift_mm: float | None
    baseline_diameters: DiametersMm | None = None
    diameters: DiametersMm | None = None  # follow-up
    diameter_change: DiametersMm | None = None
    baseline_main_axis: tuple[float, float, float] | None = None  # unit vector, patient coordinates
    main_axis: tuple[float, float, float] | None = None  # follow-up
    baseline_regularity: float | None = None
    regularity: float | None = None  # follow-up; pi^(1/3)(6V)^(2/3)/A, 1.0 for a sphere
    # The other blood-density regions (mL, largest first): not in the expansion judgement, which is the
    # largest haematoma's, but a reader must see them.
    baseline_others_ml: list[float] = Field(default_factory=list)
    others_ml: list[float] = Field(default_factory=list)  # follow-up


class GrowthPoint(_ReportModel):
    """The glioma volumes of one timepoint and how they changed."""

    study_instance_uid: str
    study_date: str
    months_from_baseline: float
    volumes_ml: TumourVolumes
    change_from_previous_pct: float | None = None  # of the measured region; None at baseline or from 0
    change_from_baseline_pct: float | None = None
    change_from_nadir_pct: float | None = None


class TumourGrowth(_ReportModel):
    """Glioma volumes over all timepoints of a patient, the growth rate over the last interval, and the
    change from the nadir against the volumetric equivalent of RANO's 25 % (2D) progression threshold."""

    region: TumourRegion  # the region the rate and threshold are measured on
    points: list[GrowthPoint]
    rate_ml_per_month: float | None = None
    rate_pct_per_month: float | None = None
    doubling_time_months: float | None = None  # only while growing
    threshold_pct: float
    change_from_nadir_pct: float | None = None
    threshold_exceeded: bool
    plot_file: str | None = None


class LesionStatus(StrEnum):
    """What became of one metastasis between the prior and the follow-up (rules: longitudinal/metastases_response)."""

    NEW = "new"
    GROWING = "growing"
    STABLE = "stable"
    SHRINKING = "shrinking"
    RESOLVED = "resolved"


class RanoBmCategory(StrEnum):
    """The RANO-BM response categories (Lin et al., Lancet Oncol 2015), plus "NE" where none applies: no
    measurable (target) lesion at baseline and neither complete response nor progression."""

    CR = "CR"
    PR = "PR"
    SD = "SD"
    PD = "PD"
    NE = "NE"


class LesionFollowUpEntry(_ReportModel):
    """One metastasis followed from the prior to the follow-up. ``number``: its "Met n" on the follow-up T1CE
    (None when resolved); ``prior_number``: the "Met n" of the matched lesion on the prior T1CE (None when new).
    Diameters are the longest axial ones (RANO-BM), each measured on its own study's T1CE; 0 when absent."""

    number: int | None = Field(default=None, ge=1)
    prior_number: int | None = Field(default=None, ge=1)
    status: LesionStatus
    prior_diameter_mm: float = Field(ge=0.0)
    diameter_mm: float = Field(ge=0.0)
    change_mm: float
    change_pct: float | None  # None for a new lesion (from nothing)
    prior_volume_ml: float = Field(ge=0.0)
    volume_ml: float = Field(ge=0.0)
    centroid_mm: tuple[float, float, float]  # LPS on the follow-up (a resolved lesion: its prior's, registered)
    confidence: float | None = None  # the follow-up lesion's mean probability (a faint new one may be noise)
    target: bool = False  # a RANO-BM target lesion (chosen on the prior)
    matched_by: str | None = None  # "overlap" or "distance" after registration; None when unmatched
    match_distance_mm: float | None = None  # between the registered prior centroid and the follow-up centroid


class RanoBmAssessment(_ReportModel):
    """The RANO-BM category from the images alone: the sum of longest diameters (SLD) of up to five target
    lesions chosen on the prior, at both timepoints, and the new lesions. ``caveats``: what RANO-BM also needs
    that the software does not know (corticosteroids, clinical status, confirmation)."""

    category: RanoBmCategory
    reasons: list[str] = Field(default_factory=list)
    target_count: int = Field(ge=0, le=5)
    sld_prior_mm: float = Field(ge=0.0)
    sld_mm: float = Field(ge=0.0)
    sld_change_pct: float | None  # None without target lesions
    nadir_mm: float = Field(ge=0.0)  # the smallest SLD known: the prior's (earlier studies not consulted)
    unequivocal_new: int = Field(ge=0)  # new lesions >= the measurable size: progression by themselves
    equivocal_new: int = Field(ge=0)  # smaller new lesions: to confirm on the next scan
    caveats: list[str] = Field(default_factory=list)


class MetastasesResponse(_ReportModel):
    """Lesion-wise follow-up of brain metastases against the prior (issue 15): the table of lesions with their
    status, the counts by status, the RANO-BM assessment, how the prior was registered onto the follow-up and
    how lesions were matched; ``review``: why a reader must check it (always, while the model is provisional)."""

    lesions: list[LesionFollowUpEntry] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)  # status -> lesions
    rano_bm: RanoBmAssessment
    match_rule: str
    registration: dict[str, float] = Field(default_factory=dict)  # RegistrationResult.summary()
    review: ReviewAssessment | None = None


class LongitudinalReport(_ReportModel):
    """The comparison of a follow-up study with the patient's previous study. With more than two
    timepoints, the top level is the latest pair and ``pairs`` holds every consecutive pair."""

    baseline_study_instance_uid: str
    followup_study_instance_uid: str
    baseline_study_date: str = ""
    followup_study_date: str = ""
    pipelines: list[str] = Field(default_factory=list)  # the change pipelines that ran on the pair
    not_run: dict[str, str] = Field(default_factory=dict)  # change pipeline -> why it did not run
    new_lesions: list[NewLesionEntry] | None = None
    new_lesion_count: int | None = None
    new_activity: bool | None = None  # per patient: at least one new lesion
    rejected_candidates: int | None = None
    # The faintest change the MS pair can show (robust spreads of the brain; MsLesionChange.detectable_change),
    # and whether that hides the faintest lesions: then "no new activity" is not evidence of none (issue 18).
    ms_detectable_change: float | None = None
    ms_sensitivity_limited: bool | None = None
    haematoma: HaematomaSection | None = None
    tumour_growth: TumourGrowth | None = None
    metastases_response: MetastasesResponse | None = None
    pairs: list[LongitudinalReport] = Field(default_factory=list)

    def merged(self, other: LongitudinalReport) -> LongitudinalReport:
        """This section with the results of another change pipeline on the same pair added."""
        if (other.baseline_study_instance_uid, other.followup_study_instance_uid) != (
                self.baseline_study_instance_uid, self.followup_study_instance_uid):
            raise ValueError("cannot merge the sections of two different pairs")
        update = {name: value for name in ("new_lesions", "new_lesion_count", "new_activity",
                                           "rejected_candidates", "ms_detectable_change",
                                           "ms_sensitivity_limited", "haematoma", "tumour_growth",
                                           "metastases_response")
                  if (value := getattr(other, name)) is not None}
        update["pipelines"] = list(dict.fromkeys([*self.pipelines, *other.pipelines]))
        update["not_run"] = {**self.not_run, **other.not_run}
        for name in update["pipelines"]:
            update["not_run"].pop(name, None)
        return self.model_copy(update=update)


class ReviewAssessment(_ReportModel):
    """Whether a segmentation should be reviewed before anyone relies on it: the alarms raised on it (each a
    check that disagreed, e.g. flipped inputs or an independent estimate), their count as the risk score, and
    the threshold above which the result is marked *needs review*. Filled by the segmentation's quality
    check; rendered in report.json, the summary, the SR and the SEG's series description."""

    needs_review: bool
    risk_score: int = Field(ge=0)  # the number of alarms raised
    threshold: int = Field(ge=0)  # needs_review when risk_score > threshold
    alarms: list[str] = Field(default_factory=list)  # one line per alarm a reader can act on
    disagreement: dict[str, float] = Field(default_factory=dict)  # measure -> value, e.g. "WT_flip_dice": 0.91
    method: str = ""  # how the alarms were computed


class MetastasisEntry(_ReportModel):
    """One metastasis: ``number`` is its segment in the SEG and its ROI "Met n" in the RTSTRUCT (1 = largest)."""

    number: int = Field(ge=1)
    volume_ml: float = Field(ge=0.0)
    longest_axial_diameter_mm: float = Field(ge=0.0)  # RANO-BM
    centroid_mm: tuple[float, float, float]  # DICOM patient coordinates (LPS) of the T1CE
    confidence: float | None = None  # mean probability over the lesion's voxels
    # Atlas region of the centroid (core.atlas), "outside atlas" when none; None when not located (a report
    # of before locations, or a segmentation stage that attached no patient-to-template transform).
    location: str | None = None


class MetastasesSection(_ReportModel):
    """The metastases found on the T1CE, measured on its own grid (what the RTSTRUCT contours)."""

    count: int = Field(ge=0)
    total_volume_ml: float = Field(ge=0.0)
    lesions: list[MetastasisEntry] = Field(default_factory=list)
    threshold: float  # the probability a voxel needs to be lesion
    min_volume_mm3: float  # smaller connected components are dropped


class PostoperativeSection(_ReportModel):
    """A post-operative glioma study (pipeline glioma_postop): why it was taken as one, the resection cavity and
    the enhancing tumour left beside it. The cavity is a rule-based estimate (segmentation/cavity.py), never
    tumour: ``volumes_ml`` (WT/TC/ET) excludes it. Always for review (``needs_review``)."""

    evidence: list[str] = Field(default_factory=list)  # why the study is post-operative
    cavity_ml: float | None = Field(default=None, ge=0.0)  # None: not assessable (``why_not``)
    why_not: str = ""
    # Enhancing tumour outside the cavity (all of ET once the cavity is removed), and the part of it within
    # ``rim_mm`` of the cavity wall: residual enhancing tumour at the resection margin.
    residual_enhancing_ml: float = Field(ge=0.0)
    rim_enhancing_ml: float = Field(ge=0.0)
    rim_mm: float = Field(ge=0.0)
    tumour_removed_ml: float = Field(default=0.0, ge=0.0)  # tumour the model drew inside the cavity, not counted
    located_by: str = ""
    prior_tumour: str = ""  # what became of the prior study's tumour: placed on this study, or why not
    method: str = ""
    needs_review: bool = True  # a rule-based estimate, unvalidated on real post-operative studies


class StudyReport(_ReportModel):
    """Everything a reviewer needs to judge one (study, pipeline) run.

    A failed run carries at least one error and no volumes; a succeeded run carries no errors.
    ``timings_s`` maps stage → seconds; ``total`` is filled with the sum of the stages if not given.
    """

    schema_version: int = REPORT_SCHEMA_VERSION
    study_instance_uid: str
    study_key: str
    pipeline: str
    status: ReportStatus
    series: list[SeriesEntry] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)
    volumes_ml: TumourVolumes | None = None
    model: ModelRef | None = None
    registration: dict[SeriesRole, RegistrationQuality] = Field(default_factory=dict)  # by moving role
    orientation_check: OrientationCheck | None = None
    skull_strip: SkullStrip | None = None
    longitudinal: LongitudinalReport | None = None  # change against the prior study
    metastases: MetastasesSection | None = None  # the metastases pipeline's lesion table
    postoperative: PostoperativeSection | None = None  # glioma_postop: the resection cavity, residual ET
    review: ReviewAssessment | None = None  # the failure flag of the segmentation, None when not assessed
    # Sub-regions the sequences at hand cannot show (e.g. ET without T1 post-contrast) -> why; empty when all could.
    # Their figures in ``volumes_ml`` are what the model drew, not a measurement: the summary shows none for them.
    not_assessable: dict[str, str] = Field(default_factory=dict)
    # The pipeline's input sequences the study did not have (the model was given empty channels in their place).
    sequences_missing: list[SeriesRole] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    # A failed run that may pass when tried again unchanged (the inference server or storage was unreachable);
    # false for bad input, which fails again until the study is fixed. ``neuroflow run`` exits 75 or 65 on it.
    retryable: bool = False
    outputs: list[str] = Field(default_factory=list)  # names of the files written for this run
    generated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    neuroflow_version: str = neuroflow.__version__
    disclaimer: str = DISCLAIMER

    @model_validator(mode="before")
    @classmethod
    def _fill_total(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("timings_s") and TOTAL_TIMING_KEY not in data["timings_s"]:
            timings = dict(data["timings_s"])
            timings[TOTAL_TIMING_KEY] = float(sum(timings.values()))
            return {**data, "timings_s": timings}
        return data

    @model_validator(mode="after")
    def _consistent_outcome(self) -> Self:
        if self.status is ReportStatus.FAILED:
            if not self.errors:
                raise ValueError("a failed report must say why: errors is empty")
            if self.volumes_ml is not None:
                raise ValueError("a failed report must not carry volumes")
            if self.longitudinal is not None:
                raise ValueError("a failed report must not carry longitudinal results")
            if self.metastases is not None:
                raise ValueError("a failed report must not carry metastases")
            if self.postoperative is not None:
                raise ValueError("a failed report must not carry a resection cavity")
        elif self.errors:
            raise ValueError("a succeeded report must not carry errors; report them as warnings or fail")
        return self


def write_report(report: StudyReport, out_dir: Path) -> Path:
    """Writes ``out_dir/report.json`` atomically (a reader sees the old file or the new, never half)."""
    return _write_atomically(out_dir / REPORT_FILE, report.model_dump_json(indent=2) + "\n")


def write_summary(report: StudyReport, out_dir: Path) -> Path:
    """Writes :func:`render_summary` to ``out_dir/summary.txt`` atomically."""
    return _write_atomically(out_dir / SUMMARY_FILE, render_summary(report))


_REGION_NAMES: tuple[tuple[str, str], ...] = (
    ("WT", "Whole tumour (WT)"),
    ("TC", "Tumour core (TC)"),
    ("ET", "Enhancing tumour (ET)"),
    ("oedema", "Oedema (WT - TC)"),
    ("necrotic_core", "Necrotic core (TC - ET)"),
)


def render_summary(report: StudyReport) -> str:
    """A plain-text summary a radiologist can read: the study, the series used, the volumes in mL
    (one decimal), checks, warnings, errors and the disclaimer."""
    lines = [
        f"neuroflow {report.pipeline} report -- {report.disclaimer}",
        "",
        # The key, not the UID: a summary is read, copied into tickets and mailed; report.json keeps the UID.
        f"Study:     key {report.study_key}",
        f"Status:    {report.status.value}",
    ]
    if report.review is not None and report.review.needs_review:
        lines.append(f"Review:    NEEDS REVIEW ({report.review.risk_score} alarm(s); see the quality check below)")
    if report.model is not None:
        lines.append(f"Model:     {report.model.name}, version {report.model.version}")
    lines.append(f"Generated: {report.generated_at.isoformat(timespec='seconds')} "
                 f"by neuroflow {report.neuroflow_version}")

    used = [s for s in report.series if s.used_as is not None]
    lines += ["", "Series used:"]
    lines += [f"  {s.used_as}: {_series_name(s)} ({s.confidence:.0%})" for s in used] or ["  none"]
    if report.sequences_missing:
        lines.append(f"Sequences missing: {', '.join(report.sequences_missing)} (segmented without them)")
    unused = [s for s in report.series if s.used_as is None]
    if unused:
        lines += ["Series not used:"]
        lines += [f"  {_series_name(s)}, classified {s.role} ({s.confidence:.0%})" for s in unused]

    if report.volumes_ml is not None:
        lines += ["", "Tumour volumes (mL):"]
        if not report.volumes_ml.tumour_detected:
            lines.append("  No tumour detected.")
        volumes = report.volumes_ml.model_dump()
        unknown = _not_assessable_volumes(report.not_assessable)
        width = max(len(name) for _, name in _REGION_NAMES)
        lines += [f"  {name:<{width}}  {volumes[key]:8.1f}" if key not in unknown
                  else f"  {name:<{width}}  not assessable ({unknown[key]})" for key, name in _REGION_NAMES]

    if report.metastases is not None:
        lines += _metastases_lines(report.metastases)
    if report.postoperative is not None:
        lines += _postoperative_lines(report.postoperative)
    if report.review is not None:
        lines += _review_lines(report.review)
    if report.longitudinal is not None:
        lines += _longitudinal_lines(report.longitudinal)
    lines += _checks(report)
    for title, items in (("Warnings", report.warnings), ("Errors", report.errors)):
        if items:
            lines += ["", f"{title}:", *(f"  - {item}" for item in items)]
    if report.outputs:
        lines += ["", "Outputs: " + ", ".join(report.outputs)]
    lines += ["", report.disclaimer, ""]
    return "\n".join(lines)


# The volumes derived from two regions (TumourVolumes' computed fields), each not assessable when either is not.
_DERIVED_FROM: dict[str, tuple[str, str]] = {"oedema": ("WT", "TC"), "necrotic_core": ("TC", "ET")}


def _not_assessable_volumes(regions: dict[str, str]) -> dict[str, str]:
    """Volume key (regions and the shells between them) -> why its figure is not a measurement."""
    derived = {key: "; ".join(dict.fromkeys(regions[r] for r in parts if r in regions))
               for key, parts in _DERIVED_FROM.items() if any(r in regions for r in parts)}
    return {**regions, **derived}


def _metastases_lines(section: MetastasesSection) -> list[str]:
    lines = ["", f"Metastases: {section.count}, total {section.total_volume_ml:.2f} mL"]
    for m in section.lesions:
        x, y, z = m.centroid_mm
        confidence = f", confidence {m.confidence:.2f}" if m.confidence is not None else ""
        lines.append(f"  Met {m.number}: {m.volume_ml * 1000.0:8.1f} mm3, longest axial "
                     f"{m.longest_axial_diameter_mm:5.1f} mm, at ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS{confidence}"
                     f"{f', {m.location}' if m.location is not None else ''}")
    return lines


def _postoperative_lines(section: PostoperativeSection) -> list[str]:
    lines = ["", "Post-operative study (NEEDS REVIEW: the resection cavity is a rule-based estimate):"]
    lines += [f"  Evidence: {line}" for line in section.evidence]
    if section.cavity_ml is None:
        lines.append(f"  Resection cavity: not assessable ({section.why_not})")
    else:
        lines.append(f"  Resection cavity: {section.cavity_ml:.1f} mL (located by {section.located_by or 'none'}); "
                     "not counted as tumour")
    if section.prior_tumour:
        lines.append(f"  Prior tumour: {section.prior_tumour}")
    lines.append(f"  Residual enhancing tumour: {section.residual_enhancing_ml:.2f} mL, of which "
                 f"{section.rim_enhancing_ml:.2f} mL within {section.rim_mm:g} mm of the cavity wall")
    if section.tumour_removed_ml:
        lines.append(f"  Removed from the tumour volumes: {section.tumour_removed_ml:.1f} mL the model drew inside "
                     "the cavity")
    if section.method:
        lines.append(f"  Method: {section.method}")
    return lines


def _review_lines(review: ReviewAssessment) -> list[str]:
    """The failure flag: a line a reader cannot miss when the result needs review, and every alarm."""
    verdict = (f"NEEDS REVIEW: {review.risk_score} alarm(s), more than the site's threshold of {review.threshold}"
               if review.needs_review else
               f"no review flag ({review.risk_score} alarm(s), threshold {review.threshold})")
    return ["", f"Quality check: {verdict}", *(f"  - {alarm}" for alarm in review.alarms)]


def _longitudinal_lines(section: LongitudinalReport) -> list[str]:
    """The change against the prior study(ies): one block per consecutive pair, oldest first."""
    lines: list[str] = []
    for pair in section.pairs or [section]:
        lines += ["", f"Change {pair.baseline_study_date or 'prior (no date)'} -> "
                      f"{pair.followup_study_date or 'follow-up (no date)'}:"]
        if pair.new_lesions is not None:
            activity = "YES" if pair.new_activity else "no"
            lines.append(f"  MS new activity: {activity} ({pair.new_lesion_count} new/enlarging lesion(s))")
            if pair.ms_sensitivity_limited:
                lines.append(f"    SENSITIVITY LIMITED: this pair shows only changes above "
                             f"{pair.ms_detectable_change:.2f} robust spreads of the brain; faint new lesions may be "
                             "missed (compare the scans)")
            lines += [f"    {lesion.volume_mm3:8.0f} mm3 at ({lesion.centroid_mm[0]:.1f}, {lesion.centroid_mm[1]:.1f}, "
                      f"{lesion.centroid_mm[2]:.1f}) mm LPS, {lesion.location}" for lesion in pair.new_lesions]
        if pair.haematoma is not None:
            h = pair.haematoma
            pct = f"{h.change_pct:+.0f} %" if h.change_pct is not None else "new"
            shift = f", centroid shift {h.centroid_shift_mm:.1f} mm" if h.centroid_shift_mm is not None else ""
            lines.append(f"  Haematoma: {h.baseline_ml:.1f} -> {h.followup_ml:.1f} mL ({h.change_ml:+.1f} mL, {pct})"
                         f"{shift}; expansion: {'YES' if h.expansion else 'no'}")
            if h.diameters is not None:
                d = h.diameters
                lines.append(f"    diameters AP {d.ap_mm:.0f} x LR {d.lr_mm:.0f} x CC {d.cc_mm:.0f} mm"
                             + (f", regularity {h.regularity:.2f}" if h.regularity is not None else ""))
            for when, others in (("baseline", h.baseline_others_ml), ("follow-up", h.others_ml)):
                if others:
                    lines.append(f"    other blood at {when}: " + ", ".join(f"{v:.1f}" for v in others) + " mL")
        if pair.metastases_response is not None:
            lines += _metastases_response_lines(pair.metastases_response)
        for pipeline, reason in pair.not_run.items():
            lines.append(f"  {pipeline} not run: {reason}")
    growth = section.tumour_growth
    if growth is not None:
        lines += ["", f"Tumour growth ({growth.region}, mL):"]
        lines += [f"  {p.study_date}  WT {p.volumes_ml.WT:7.1f}  TC {p.volumes_ml.TC:7.1f}  ET {p.volumes_ml.ET:7.1f}"
                  for p in growth.points]
        if growth.rate_ml_per_month is not None:
            lines.append(f"  rate {growth.rate_ml_per_month:+.2f} mL/month"
                         + (f" ({growth.rate_pct_per_month:+.1f} %/month)" if growth.rate_pct_per_month is not None
                            else "")
                         + (f", doubling time {growth.doubling_time_months:.1f} months"
                            if growth.doubling_time_months is not None else ""))
        if growth.change_from_nadir_pct is not None:
            lines.append(f"  change from nadir {growth.change_from_nadir_pct:+.0f} % "
                         f"(threshold {growth.threshold_pct:.0f} %): "
                         f"{'EXCEEDED' if growth.threshold_exceeded else 'not exceeded'}")
        if growth.plot_file:
            lines.append(f"  plot: {growth.plot_file}")
    return lines


def _metastases_response_lines(response: MetastasesResponse) -> list[str]:
    """The RANO-BM category with its reasons and caveats, then one line per lesion: status, diameters then and
    now, the prior lesion it was matched with."""
    rano = response.rano_bm
    change = f"{rano.sld_change_pct:+.1f} %" if rano.sld_change_pct is not None else "no target lesion"
    flag = "NEEDS REVIEW: " if response.review is not None and response.review.needs_review else ""
    lines = [f"  {flag}Metastases RANO-BM (imaging only): {rano.category.value}; sum of longest diameters of "
             f"{rano.target_count} target lesion(s) {rano.sld_prior_mm:.1f} -> {rano.sld_mm:.1f} mm ({change})",
             *(f"    {reason}" for reason in rano.reasons),
             "  " + ", ".join(f"{n} {status}" for status, n in response.counts.items() if n)]
    for lesion in response.lesions:
        name = f"Met {lesion.number}" if lesion.number is not None else f"(prior Met {lesion.prior_number})"
        prior = (f"prior Met {lesion.prior_number}" if lesion.prior_number is not None and lesion.number is not None
                 else "")
        x, y, z = lesion.centroid_mm
        confidence = f", confidence {lesion.confidence:.2f}" if lesion.confidence is not None else ""
        lines.append(f"    {name:<16} {lesion.status.value:<9} {lesion.prior_diameter_mm:5.1f} -> "
                     f"{lesion.diameter_mm:5.1f} mm{' target' if lesion.target else ''}"
                     f"{f', {prior}' if prior else ''}, at ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS{confidence}")
    lines += [f"    caveat: {caveat}" for caveat in rano.caveats]
    if response.review is not None:
        lines += [f"    review: {alarm}" for alarm in response.review.alarms]
    return lines


def _series_name(series: SeriesEntry) -> str:
    number = f"series {series.series_number}" if series.series_number is not None else "series (no number)"
    description = f' "{series.description}"' if series.description else ""
    return f"{number}{description}"


def _checks(report: StudyReport) -> list[str]:
    lines: list[str] = []
    if report.orientation_check is not None:
        verdict = "passed" if report.orientation_check.passed else "FAILED"
        detail = f" ({report.orientation_check.detail})" if report.orientation_check.detail else ""
        lines.append(f"  Orientation check: {verdict}{detail}")
    if report.skull_strip is not None:
        lines.append(f"  Brain volume: {report.skull_strip.brain_volume_ml:.1f} mL")
    for role, reg in report.registration.items():
        lines.append(f"  Registration {role} -> reference: {reg.quality_measure} {reg.quality:.2f} "
                     f"({reg.metric} {reg.metric_value:.3f})")
    return ["", "Checks:", *lines] if lines else []


def _write_atomically(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
