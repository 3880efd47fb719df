"""What every embedded pipeline run shares, from reading its input to its failure notice: the run's record (what
it has learnt so far, which becomes the report whether it succeeds or fails), the index the caller may already
have read, the "read" stage, the series table of the report and the notice written beside a failed report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from neuroflow.core.config import GLIOMA_PIPELINE, NeuroflowSettings
from neuroflow.core.dicom_io import DicomSource, SkippedFile, StudyIndex, study_key
from neuroflow.core.errors import NeuroflowError
from neuroflow.core.identity import patient_key
from neuroflow.core.input_limits import check_study_size
from neuroflow.core.patient_id import PatientIdentity
from neuroflow.core.roles import SeriesRole
from neuroflow.core.timing import StageClock
from neuroflow.ingest.classify import SeriesClassification
from neuroflow.results.notice import failure_hash, notice_objects, notice_of
from neuroflow.results.report import SeriesEntry, StudyReport
from neuroflow.runtime.result_files import write_objects

log = logging.getLogger(__name__)


class MultipleStudies(NeuroflowError):
    """The input holds more than one study and none was chosen."""


@dataclass
class StudyRun:
    """What a run has learnt so far; becomes the report whether the run succeeds or fails."""

    study_uid: str = ""
    key: str = ""
    series: list[SeriesEntry] | None = None
    warnings: list[str] | None = None
    evidence: list[Dataset] | None = None  # an instance header of the study: what a notice is filed under
    pipeline: str = GLIOMA_PIPELINE  # glioma_postop once the study is taken as post-operative


@dataclass(frozen=True)
class Indexed:
    """The source's index, already read by the caller, and what reading it took."""

    studies: dict[str, StudyIndex]
    skipped: list[SkippedFile]
    seconds: float


def file_failure_notice(report: StudyReport, evidence: list[Dataset], out_dir: Path,
                        settings: NeuroflowSettings) -> StudyReport:
    """The failed report with the notice written beside it (the notice SR and image, filed under the study
    of ``evidence``); unchanged when nothing of the study could be read (no study to file a notice under)."""
    notice = notice_of(report)
    if notice is None or not evidence:
        return report
    try:
        written = write_objects(notice_objects(report, notice, evidence, input_hash=failure_hash(report),
                                               objects=settings.results), out_dir)
    except (ValueError, AttributeError, OSError) as exc:  # a header too broken for a notice: the report says why
        log.error("study %s: the failure notice could not be made: %s", report.study_key or "-", exc)
        return report.model_copy(update={"warnings": [*report.warnings, f"no failure notice for PACS: {exc}"]})
    return report.model_copy(update={"outputs": [*(path.name for path in written), *report.outputs]})


def read_study(source: DicomSource, study_uid: str | None, clock: StageClock, run: StudyRun,
               indexed: Indexed | None) -> StudyIndex:
    """The "read" stage every embedded pipeline starts with: the input indexed (or the index the caller
    made), the study chosen, its key, evidence and set-aside notes recorded in ``run``, its size checked."""
    assert run.warnings is not None and run.evidence is not None
    with clock.stage("read"):
        if indexed is None:
            studies, skipped = source.index()
        else:
            studies, skipped = indexed.studies, indexed.skipped
            clock.credit("read", indexed.seconds)
        run.warnings.extend(f"skipped {s.path}: {s.reason}" for s in skipped)
        study = _choose_study(studies, study_uid)
        run.study_uid, run.key = study.study_instance_uid, study_key(study.study_instance_uid)
        run.evidence[:] = [s.headers[0] for s in study.series.values() if s.headers][:1]
        check_study_size(run.key, sum(len(s.headers) for s in study.series.values()), source.limits, stage="read")
        run.warnings.extend(study.set_aside_notes())
        clock.note(f"study {run.key}: {len(study.series)} series, {len(skipped)} files skipped")
    return study


def _choose_study(studies: dict[str, StudyIndex], study_uid: str | None) -> StudyIndex:
    if not studies:
        raise NeuroflowError("no DICOM study found in the input (no readable DICOM files)")
    if study_uid is not None:
        if study_uid not in studies:
            raise NeuroflowError(f"study {study_uid} is not in the input; it holds {sorted(studies)}")
        return studies[study_uid]
    if len(studies) > 1:
        listing = ", ".join(
            f"{uid} (patient key {patient_key(s.patient_id) or 'none'}, {len(s.series)} series)"
            for uid, s in sorted(studies.items())
        )
        # Studies without a usable PatientID are no patient's: never compared, and the report says why.
        why = "".join(f"; {uid}: {problem}" for uid, s in sorted(studies.items())
                      if (problem := PatientIdentity.of_study(s).problem) is not None)
        raise MultipleStudies(f"the input holds {len(studies)} studies: {listing}; choose one with --study UID{why}")
    return next(iter(studies.values()))


def series_entries(classified: list[SeriesClassification], used: dict[str, SeriesRole]) -> list[SeriesEntry]:
    return [
        SeriesEntry(
            series_instance_uid=c.series_instance_uid, series_number=c.series_number, description=c.description,
            role=c.role, confidence=c.confidence, reasons=list(c.reasons), used_as=used.get(c.series_instance_uid),
        )
        for c in classified
    ]
