"""The embedded runtime: one process runs a whole pipeline on a study from a DICOM source and writes
the results to an output folder. Same steps, same outputs as the distributed runtime."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from neuroflow.core.config import GLIOMA_PIPELINE, NeuroflowSettings
from neuroflow.core.dicom_io import DicomSource, SkippedFile, StudyIndex, series_volume, study_key
from neuroflow.core.errors import NeuroflowError, StudyError
from neuroflow.core.identity import input_hash, patient_key
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.input_limits import check_study_size
from neuroflow.core.patient_id import PatientIdentity
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, GLIOMA_REFERENCE_ROLE, SeriesRole
from neuroflow.core.site_secret import install_site_secret
from neuroflow.core.sub_series import volume_identity
from neuroflow.core.timing import ProgressSink, StageClock
from neuroflow.core.volume_members import volume_instances
from neuroflow.core.worker import is_retryable
from neuroflow.ingest.classify import SeriesClassification, classify_study, effective_policy, select_inputs
from neuroflow.ingest.site_rules import SiteRules, load_site_rules
from neuroflow.longitudinal.pairing import group_by_patient
from neuroflow.preprocess.glioma_inputs import preprocess_glioma
from neuroflow.results.glioma_results import glioma_report, glioma_seg, registration_warnings
from neuroflow.results.report import (
    ReportStatus,
    SeriesEntry,
    StudyReport,
    TumourVolumes,
    write_report,
    write_summary,
)
from neuroflow.segmentation.glioma import label_map, predict_regions
from neuroflow.segmentation.review import record_review, review_segmentation

log = logging.getLogger(__name__)

SEG_FILE = "seg.dcm"
GLIOMA_STAGES = (
    "read", "classify", "read_series", "convert", "orientation", "register", "skull_strip",
    "normalise", "segment", "postprocess", "review", "write_results",
)


class MultipleStudies(NeuroflowError):
    """The input holds more than one study and none was chosen."""


@dataclass
class _Run:
    """What a run has learnt so far; becomes the report whether the run succeeds or fails."""

    study_uid: str = ""
    key: str = ""
    series: list[SeriesEntry] | None = None
    warnings: list[str] | None = None


def run_embedded(
    source: DicomSource,
    out_dir: Path,
    settings: NeuroflowSettings,
    backend: InferenceBackend,
    *,
    study_uid: str | None = None,
    progress: ProgressSink | None = None,
) -> StudyReport:
    """What ``neuroflow run`` does: on two or more studies of one patient (and no ``study_uid``), the change
    pipelines each consecutive pair qualifies for (``runtime/embedded_longitudinal.py``); otherwise the
    glioma pipeline on the one study (or ``study_uid``), which refuses several studies without a choice."""
    install_site_secret(settings, distributed=False)  # the site's, else the development secret
    if study_uid is not None:
        return run_glioma(source, out_dir, settings, backend, study_uid=study_uid, progress=progress)
    started = time.perf_counter()
    studies, skipped = source.index()
    patients = group_by_patient(studies.values())
    if len(studies) > 1 and [len(p) for p in patients.values()] == [len(studies)]:  # all of one patient
        from neuroflow.runtime.embedded_longitudinal import run_longitudinal  # its imports only when needed

        return run_longitudinal(source, studies, skipped, out_dir, settings, backend, progress=progress)
    # Reading every header is the slowest part of "read" on a cold disk: done once, not again for the run.
    indexed = _Indexed(studies, skipped, time.perf_counter() - started)
    return run_glioma(source, out_dir, settings, backend, progress=progress, indexed=indexed)


@dataclass(frozen=True)
class _Indexed:
    """The source's index, already read by the caller, and what reading it took."""

    studies: dict[str, StudyIndex]
    skipped: list[SkippedFile]
    seconds: float


def run_glioma(
    source: DicomSource,
    out_dir: Path,
    settings: NeuroflowSettings,
    backend: InferenceBackend,
    *,
    study_uid: str | None = None,
    progress: ProgressSink | None = None,
    indexed: _Indexed | None = None,
) -> StudyReport:
    """Runs the glioma pipeline on one study of ``source`` and writes ``report.json``,
    ``summary.txt`` and, on success, ``seg.dcm`` to ``out_dir``. Never raises for a bad study: the
    report says what is wrong (``status`` failed, ``errors``) and no ``seg.dcm`` is left behind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # A result left by an earlier run must not pass for this run's result if this one fails.
    (out_dir / SEG_FILE).unlink(missing_ok=True)
    clock = StageClock(GLIOMA_STAGES, progress)
    run = _Run(series=[], warnings=[])
    try:
        report = _run(source, out_dir, settings, backend, study_uid, clock, run, indexed)
    except NeuroflowError as exc:
        reason = exc.reason if isinstance(exc, StudyError) else str(exc)
        where = f"{clock.current}: " if clock.current else ""
        log.error("study %s failed in %s: %s", run.key or "-", clock.current, reason)
        report = StudyReport(
            study_instance_uid=run.study_uid,
            study_key=run.key,
            pipeline=GLIOMA_PIPELINE,
            status=ReportStatus.FAILED,
            series=run.series or [],
            timings_s={**clock.timings, "total": clock.total()},
            warnings=run.warnings or [],
            errors=[f"{where}{reason}"],
            retryable=is_retryable(exc),
            outputs=["report.json", "summary.txt"],
        )
    write_summary(report, out_dir)
    write_report(report, out_dir)
    return report


def _run(
    source: DicomSource,
    out_dir: Path,
    settings: NeuroflowSettings,
    backend: InferenceBackend,
    study_uid: str | None,
    clock: StageClock,
    run: _Run,
    indexed: _Indexed | None,
) -> StudyReport:
    assert run.series is not None and run.warnings is not None
    with clock.stage("read"):
        if indexed is None:
            studies, skipped = source.index()
        else:
            studies, skipped = indexed.studies, indexed.skipped
            clock.credit("read", indexed.seconds)
        run.warnings.extend(f"skipped {s.path}: {s.reason}" for s in skipped)
        study = _choose_study(studies, study_uid)
        run.study_uid, run.key = study.study_instance_uid, study_key(study.study_instance_uid)
        check_study_size(run.key, sum(len(s.headers) for s in study.series.values()), source.limits, stage="read")
        run.warnings.extend(study.set_aside_notes())
        clock.note(f"study {run.key}: {len(study.series)} series, {len(skipped)} files skipped")

    with clock.stage("classify"):
        rules: SiteRules | None = load_site_rules(settings.site_rules) if settings.site_rules else None
        policy = effective_policy(settings.classify, rules)
        classified = classify_study(list(study.series.values()), rules=rules, policy=policy)
        run.series.extend(_series_entries(classified, {}))
        chosen = select_inputs(classified, GLIOMA_INPUT_ROLES, study_key=run.key, policy=policy)
        used = {c.series_instance_uid: role for role, c in chosen.items()}
        run.series[:] = _series_entries(classified, used)
        for c in classified:
            clock.note(f"{c.role:<6} {c.description or '(no description)'}")

    models = settings.models
    with clock.stage("read_series"):
        series = {role: series_volume(study, c.series_instance_uid) for role, c in chosen.items()}
        instances = {role: source.read_instances(s) for role, s in series.items()}

    pre = preprocess_glioma(instances, backend, (models.skull_strip_bbox, models.skull_strip),
                            spacing_mm=settings.target_spacing_mm, study_key=run.key, clock=clock,
                            volumes_of={role: s.volume for role, s in series.items()})
    summary = pre.summary(models.skull_strip, clock.timings)
    run.warnings.extend(registration_warnings(summary))

    with clock.stage("segment"):
        probabilities = predict_regions(
            pre.normalised, pre.brain_mask, backend, models.glioma, overlap=settings.window_overlap,
            batch_size=settings.window_batch_size, study_key=run.key,
        )
    with clock.stage("postprocess"):
        labels_on_grid = label_map(probabilities, pre.brain_mask)
        volumes_ml = TumourVolumes.from_label_map(labels_on_grid)
    with clock.stage("review"):
        review = review_segmentation(pre.normalised, pre.brain_mask, probabilities, labels_on_grid, backend,
                                     models.glioma, settings, study_key=run.key)
        record_review(review, site=settings.site, pipeline=GLIOMA_PIPELINE, model=models.glioma)

    with clock.stage("write_results"):
        outputs = ["report.json", "summary.txt"]
        uids = {role.value: [*(str(ds.SOPInstanceUID) for ds in datasets),
                             *volume_identity(chosen[role].series_instance_uid)]
                for role, datasets in instances.items()}
        reference = volume_instances(instances[GLIOMA_REFERENCE_ROLE], study_key=run.key,
                                     volume=series[GLIOMA_REFERENCE_ROLE].volume)
        seg = glioma_seg(labels_on_grid, pre.reference_geometry, reference,
                         model=models.glioma, input_hash=input_hash(uids, models.glioma))
        if seg is None:
            run.warnings.append("no tumour detected: no DICOM SEG written")
        else:
            _save_atomically(seg, out_dir / SEG_FILE)
            outputs.insert(0, SEG_FILE)

    return glioma_report(run.study_uid, run.key, GLIOMA_PIPELINE, summary, volumes=volumes_ml, model=models.glioma,
                         series=run.series, timings=clock.timings, warnings=run.warnings, outputs=outputs,
                         review=review)


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


def _series_entries(classified: list[SeriesClassification], used: dict[str, SeriesRole]) -> list[SeriesEntry]:
    return [
        SeriesEntry(
            series_instance_uid=c.series_instance_uid, series_number=c.series_number, description=c.description,
            role=c.role, confidence=c.confidence, reasons=list(c.reasons), used_as=used.get(c.series_instance_uid),
        )
        for c in classified
    ]


def _save_atomically(dataset: Dataset, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    dataset.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


