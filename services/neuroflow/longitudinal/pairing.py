"""Timepoints of one patient and the change pipelines each consecutive pair of them qualifies for.

Plain data in, plain data out: the caller (a runtime) has classified the series and chosen one per role;
this module reads the few header facts it needs from the study index and decides

* the order of a patient's studies in time (StudyDate/StudyTime, falling back to the series' dates);
* for each consecutive pair (previous, next), which change pipelines it qualifies for and, for those
  it does not, why.

What "matched on role and protocol" means here (the only protocol facts compared):

* MS new lesions: both timepoints have a FLAIR, both 3D or both 2D (a subtraction of a 2D from a 3D
  acquisition turns partial-volume differences into false "new lesions"), and 2D slices whose thickness
  differs by at most :data:`MAX_SLICE_THICKNESS_DIFFERENCE_MM`.
* Haematoma expansion: both timepoints have a CT, and neither is contrast-enhanced (contrast makes vessels
  and enhancing tissue as dense as blood, so the HU method would count them as haematoma).
* Tumour growth: both timepoints have every glioma input (T1, T1CE, T2, FLAIR).
* Metastases response: both timepoints have a T1CE (FLAIR used when present); which patients it follows is the
  caller's choice (``core.roles.CHANGE_FOLLOWS``: those of the metastases pipeline).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise

from pydicom.dataset import Dataset

from neuroflow.core.dicom_io import StudyIndex, study_key
from neuroflow.core.errors import StudyError
from neuroflow.core.identity import uid_key
from neuroflow.core.patient_id import PatientIdentity
from neuroflow.core.roles import (
    CHANGE_FOLLOWS,
    CHANGE_OPTIONAL_ROLES,
    CHANGE_REQUIRED_ROLES,
    ChangePipeline,
    SeriesRole,
)

STAGE = "pairing"
MAX_SLICE_THICKNESS_DIFFERENCE_MM = 1.0


@dataclass(frozen=True)
class ChosenSeries:
    """The series a timepoint uses for one role, with the protocol facts pairs are matched on."""

    series_instance_uid: str
    role: SeriesRole
    description: str
    is_3d: bool
    slice_thickness_mm: float | None
    contrast_enhanced: bool


@dataclass(frozen=True)
class StudyTimepoint:
    """One study of a patient, placed in time, with the series it offers by role."""

    study_instance_uid: str
    patient_id: str
    study_date: str  # YYYYMMDD, as found (StudyDate or the fallback)
    study_time: str  # HHMMSS(.ffffff) or ""
    series: Mapping[SeriesRole, ChosenSeries] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return study_key(self.study_instance_uid)

    @property
    def acquired_at(self) -> datetime:
        return _parse_datetime(self.study_date, self.study_time)


@dataclass(frozen=True)
class PairPlan:
    """A consecutive pair and what runs on it: ``pipelines`` it qualifies for, ``not_run`` the reasons for
    the others (pipeline -> sentence)."""

    baseline: StudyTimepoint
    followup: StudyTimepoint
    pipelines: tuple[ChangePipeline, ...]
    not_run: dict[ChangePipeline, str]


def group_by_patient(studies: Iterable[StudyIndex]) -> dict[PatientIdentity, list[StudyIndex]]:
    """Studies by patient (PatientID and IssuerOfPatientID). A study whose PatientID cannot identify a
    patient (empty, missing, a wildcard: ``core.patient_id``) is in no group: two studies without a
    PatientID are not one patient's."""
    grouped: dict[PatientIdentity, list[StudyIndex]] = {}
    for study in studies:
        identity = PatientIdentity.of_study(study)
        if identity.problem is None:
            grouped.setdefault(identity, []).append(study)
    return grouped


def timepoint_of(study: StudyIndex, chosen: Mapping[SeriesRole, str]) -> StudyTimepoint:
    """The timepoint of ``study`` using, for each role in ``chosen``, the series with that
    SeriesInstanceUID (the caller's choice, e.g. routing's best series per role).

    The date is StudyDate (with StudyTime); without it, the earliest SeriesDate, then AcquisitionDate, of
    the study's series. Refuses (StudyError naming the study) a study with none of them: its place among
    the patient's studies is unknown, so it can be neither baseline nor follow-up. Refuses likewise a study
    whose PatientID cannot identify a patient: it is never paired."""
    key = study_key(study.study_instance_uid)
    if (problem := PatientIdentity.of_study(study).problem) is not None:
        raise StudyError(key, problem, stage=STAGE)
    headers = [series.headers[0] for series in study.series.values() if series.headers]
    date, time = _study_date(headers)
    if not date:
        raise StudyError(key, f"study {key} has no StudyDate, SeriesDate or AcquisitionDate: cannot place it "
                              "in time against the patient's other studies; fix the date on the modality or "
                              "PACS and resend", stage=STAGE)
    try:
        _parse_datetime(date, time)
    except ValueError:
        raise StudyError(key, f"the study date {date!r} / time {time!r} is not a DICOM DA/TM value",
                         stage=STAGE) from None
    series: dict[SeriesRole, ChosenSeries] = {}
    for role, series_uid in chosen.items():
        found = study.series.get(series_uid)
        if found is None or not found.headers:
            raise StudyError(key, f"the {role} series {uid_key(series_uid)} is not in the study", stage=STAGE)
        series[role] = _chosen(found.headers[0], role, series_uid)
    return StudyTimepoint(study.study_instance_uid, study.patient_id, date, time, series)


def order_timepoints(timepoints: Iterable[StudyTimepoint]) -> list[StudyTimepoint]:
    """Oldest first; studies at the same moment keep a stable order (by StudyInstanceUID)."""
    return sorted(timepoints, key=lambda t: (t.acquired_at, t.study_instance_uid))


def plan_pairs(timepoints: Sequence[StudyTimepoint],
               pipelines: Iterable[ChangePipeline] | None = None) -> list[PairPlan]:
    """The consecutive pairs of ``timepoints`` (ordered oldest first), each with the change pipelines of
    ``pipelines`` it qualifies for (default: every one except those that follow a single-study pipeline's
    patients, ``CHANGE_FOLLOWS``, which a caller asks for). Two timepoints give one pair, n give n - 1."""
    ordered = order_timepoints(timepoints)
    considered = (tuple(p for p in ChangePipeline if p not in CHANGE_FOLLOWS) if pipelines is None
                  else tuple(pipelines))
    plans: list[PairPlan] = []
    for baseline, followup in pairwise(ordered):
        qualifies: list[ChangePipeline] = []
        not_run: dict[ChangePipeline, str] = {}
        for pipeline in considered:
            reason = why_not(pipeline, baseline, followup)
            if reason is None:
                qualifies.append(pipeline)
            else:
                not_run[pipeline] = reason
        plans.append(PairPlan(baseline, followup, tuple(qualifies), not_run))
    return plans


def roles_for(pipeline: ChangePipeline) -> tuple[SeriesRole, ...]:
    """Every role ``pipeline`` uses: the required ones, then the optional ones."""
    return (*CHANGE_REQUIRED_ROLES[pipeline], *CHANGE_OPTIONAL_ROLES[pipeline])


def why_not(pipeline: ChangePipeline, baseline: StudyTimepoint, followup: StudyTimepoint) -> str | None:
    """None when the pair qualifies for ``pipeline``; else the reason, in a sentence."""
    for label, timepoint in (("baseline", baseline), ("follow-up", followup)):
        missing = [role.value for role in CHANGE_REQUIRED_ROLES[pipeline] if role not in timepoint.series]
        if missing:
            return f"the {label} study {timepoint.key} ({timepoint.study_date}) has no {', '.join(missing)} series"
    if pipeline is ChangePipeline.MS:
        return _flair_protocols_differ(baseline.series[SeriesRole.FLAIR], followup.series[SeriesRole.FLAIR])
    if pipeline is ChangePipeline.HAEMATOMA:
        for label, timepoint in (("baseline", baseline), ("follow-up", followup)):
            if timepoint.series[SeriesRole.CT].contrast_enhanced:
                return (f"the {label} CT of study {timepoint.key} is contrast-enhanced; haematoma expansion is "
                        "measured on non-contrast CT")
    return None


def _flair_protocols_differ(baseline: ChosenSeries, followup: ChosenSeries) -> str | None:
    if baseline.is_3d != followup.is_3d:
        kinds = ("3D" if baseline.is_3d else "2D", "3D" if followup.is_3d else "2D")
        return (f"the FLAIR protocols differ ({kinds[0]} at baseline, {kinds[1]} at follow-up): subtracting them "
                "would report partial-volume differences as new lesions")
    if baseline.is_3d:
        return None
    thicknesses = (baseline.slice_thickness_mm, followup.slice_thickness_mm)
    if None not in thicknesses:
        a, b = (float(t) for t in thicknesses if t is not None)
        if abs(a - b) > MAX_SLICE_THICKNESS_DIFFERENCE_MM:
            return (f"the 2D FLAIR slice thicknesses differ ({a:g} mm at baseline, {b:g} mm at follow-up, more "
                    f"than {MAX_SLICE_THICKNESS_DIFFERENCE_MM:g} mm apart)")
    return None


def _chosen(header: Dataset, role: SeriesRole, series_uid: str) -> ChosenSeries:
    acquisition = str(header.get("MRAcquisitionType", "")).upper()
    thickness = header.get("SliceThickness")
    try:
        thickness_mm = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness_mm = None
    # CT and MR without MRAcquisitionType: thin contiguous slices are a volume acquisition.
    is_3d = acquisition == "3D" or (acquisition == "" and thickness_mm is not None and thickness_mm <= 1.5)
    return ChosenSeries(
        series_instance_uid=series_uid,
        role=role,
        description=str(header.get("SeriesDescription", "")),
        is_3d=is_3d,
        slice_thickness_mm=thickness_mm,
        contrast_enhanced=bool(str(header.get("ContrastBolusAgent", "")).strip()),
    )


def _study_date(headers: Sequence[Dataset]) -> tuple[str, str]:
    for header in headers:
        date = str(header.get("StudyDate", "")).strip()
        if date:
            return date, str(header.get("StudyTime", "")).strip()
    for date_tag, time_tag in (("SeriesDate", "SeriesTime"), ("AcquisitionDate", "AcquisitionTime")):
        found = sorted((str(h.get(date_tag, "")).strip(), str(h.get(time_tag, "")).strip())
                       for h in headers if str(h.get(date_tag, "")).strip())
        if found:
            return found[0]
    return "", ""


def _parse_datetime(date: str, time: str) -> datetime:
    moment = datetime.strptime(date, "%Y%m%d")
    digits = time.split(".")[0].replace(":", "")
    if digits:
        digits = digits.ljust(6, "0")[:6]
        moment = moment.replace(hour=int(digits[:2]), minute=int(digits[2:4]), second=int(digits[4:6]))
    return moment
