"""The metastases pipeline in the embedded runtime (issue 15): one study -> the lesion table (report.json,
summary.txt) and the objects PACS and the planning system get (SEG, RTSTRUCT, SR, overlay; see
``results/metastases_results.py``). The same preprocessing as the glioma pipeline, registered onto the T1CE."""

from __future__ import annotations

import logging
from pathlib import Path

from neuroflow.core.atlas import brain_to_template, locations
from neuroflow.core.config import METASTASES_PIPELINE, NeuroflowSettings
from neuroflow.core.dicom_io import DicomSource, series_volume
from neuroflow.core.errors import NeuroflowError, StudyError
from neuroflow.core.identity import input_hash
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.lesions import LESION_THRESHOLD, MIN_LESION_MM3
from neuroflow.core.roles import METASTASES_INPUT_ROLES, SeriesRole
from neuroflow.core.site_secret import install_site_secret
from neuroflow.core.sub_series import volume_identity
from neuroflow.core.timing import ProgressSink, StageClock
from neuroflow.core.worker import is_retryable
from neuroflow.ingest.classify import classify_study, effective_policy
from neuroflow.ingest.routing import pipeline_inputs, qualify
from neuroflow.ingest.site_rules import SiteRules, load_site_rules
from neuroflow.longitudinal.compare import measure_metastases  # one measurement of a study, here and at follow-up
from neuroflow.results.glioma_results import preprocessing_checks, registration_warnings
from neuroflow.results.metastases_results import (
    METASTASES_RESULT_NAMES,
    metastases_objects,
    metastases_review,
    metastases_section,
)
from neuroflow.results.report import TOTAL_TIMING_KEY, ReportStatus, StudyReport, write_report, write_summary
from neuroflow.runtime.result_files import remove_results, write_objects
from neuroflow.runtime.study_reading import Indexed, StudyRun, file_failure_notice, read_study, series_entries

log = logging.getLogger(__name__)

METASTASES_STAGES = ("read", "classify", "read_series", "convert", "orientation", "register", "skull_strip",
                     "normalise", "segment", "postprocess", "locate", "write_results")


def run_metastases(
    source: DicomSource,
    out_dir: Path,
    settings: NeuroflowSettings,
    backend: InferenceBackend,
    *,
    study_uid: str | None = None,
    progress: ProgressSink | None = None,
    indexed: Indexed | None = None,
) -> StudyReport:
    """Runs the metastases pipeline on one study of ``source`` and writes ``report.json``, ``summary.txt`` and
    the result objects to ``out_dir``. Never raises for a bad study: the report says what is wrong, no earlier
    result is left behind, and the failure notice is filed as for the glioma pipeline."""
    install_site_secret(settings, distributed=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_results(out_dir, METASTASES_RESULT_NAMES)
    clock = StageClock(METASTASES_STAGES, progress)
    run = StudyRun(series=[], warnings=[], evidence=[])
    try:
        report = _run(source, out_dir, settings, backend, study_uid, clock, run, indexed)
    except NeuroflowError as exc:
        reason = exc.reason if isinstance(exc, StudyError) else str(exc)
        where = f"{clock.current}: " if clock.current else ""
        log.error("study %s failed in %s: %s", run.key or "-", clock.current, reason)
        report = StudyReport(
            study_instance_uid=run.study_uid, study_key=run.key, pipeline=METASTASES_PIPELINE,
            status=ReportStatus.FAILED, series=run.series or [],
            timings_s={**clock.timings, "total": clock.total()}, warnings=run.warnings or [],
            errors=[f"{where}{reason}"], retryable=is_retryable(exc), outputs=["report.json", "summary.txt"])
        report = file_failure_notice(report, run.evidence or [], out_dir, settings)
    write_summary(report, out_dir)
    write_report(report, out_dir)
    return report


def _run(source: DicomSource, out_dir: Path, settings: NeuroflowSettings, backend: InferenceBackend,
         study_uid: str | None, clock: StageClock, run: StudyRun, indexed: Indexed | None) -> StudyReport:
    assert run.series is not None and run.warnings is not None and run.evidence is not None
    study = read_study(source, study_uid, clock, run, indexed)

    with clock.stage("classify"):
        rules: SiteRules | None = load_site_rules(settings.site_rules) if settings.site_rules else None
        policy = effective_policy(settings.classify, rules)
        classified = classify_study(list(study.series.values()), rules=rules, policy=policy)
        # The same qualification as ingest's routing: T1CE required, FLAIR when present.
        chosen = qualify(classified, pipeline_inputs(None)[METASTASES_PIPELINE], study_key=run.key, policy=policy)
        run.series[:] = series_entries(classified, {c.series_instance_uid: role for role, c in chosen.items()})
        for c in classified:
            clock.note(f"{c.role:<6} {c.description or '(no description)'}")

    models = settings.models
    with clock.stage("read_series"):
        series = {role: series_volume(study, c.series_instance_uid) for role, c in chosen.items()}
        instances = {role: source.read_instances(s) for role, s in series.items()}
    # The same measurement the metastases follow-up makes of each of its two studies.
    measured = measure_metastases(instances, backend, settings, study_key=run.key, clock=clock,
                                  volumes_of={role: s.volume for role, s in series.items()})
    pre, lesions, t1ce, t1ce_image = measured.pre, measured.lesions, measured.t1ce_instances, measured.t1ce_image
    summary = pre.summary(models.skull_strip, clock.timings)
    run.warnings.extend(registration_warnings(summary))
    clock.note(f"{lesions.count} metastasis(es), {lesions.total_volume_ml * 1000.0:.0f} mm3")
    with clock.stage("locate"):  # one registration of the brain onto the atlas template, when there is a lesion
        named: list[str] = []
        if lesions.count:
            atlas_dir = settings.longitudinal.atlas_dir
            transform = brain_to_template(pre.normalised[SeriesRole.T1CE], pre.brain_mask, study_key=run.key,
                                          templates=atlas_dir)
            named = locations(transform, [m.centroid_mm for m in lesions.lesions], atlas_dir)

    with clock.stage("write_results"):
        uids = {role.value: [*(str(ds.SOPInstanceUID) for ds in datasets),
                             *volume_identity(chosen[role].series_instance_uid)]
                for role, datasets in instances.items()}
        key = input_hash(uids, models.metastases)
        if not lesions.count:
            run.warnings.append("no metastasis detected: no SEG or RTSTRUCT written")
        report = StudyReport(
            study_instance_uid=run.study_uid, study_key=run.key, pipeline=METASTASES_PIPELINE,
            status=ReportStatus.SUCCEEDED, series=run.series, timings_s=dict(clock.timings), model=models.metastases,
            **preprocessing_checks(summary),
            metastases=(section := metastases_section(lesions, threshold=LESION_THRESHOLD,
                                                      min_volume_mm3=MIN_LESION_MM3, locations=named)),
            review=metastases_review(models.metastases, section),
            sequences_missing=[r for r in METASTASES_INPUT_ROLES if r not in chosen], warnings=run.warnings)
        written = write_objects(metastases_objects(report, lesions.labels, t1ce_image, t1ce, input_hash=key,
                                                   objects=settings.results), out_dir)
    return report.model_copy(update={
        "timings_s": {**clock.timings, TOTAL_TIMING_KEY: round(sum(clock.timings.values()), 3)},
        "outputs": [*(path.name for path in written), "report.json", "summary.txt"]})
