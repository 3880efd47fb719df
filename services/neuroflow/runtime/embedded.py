"""The embedded runtime: one process runs a whole pipeline on a study from a DICOM source and writes
the results to an output folder. Same steps, same outputs as the distributed runtime."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydicom.dataset import Dataset

from neuroflow.core.config import GLIOMA_PIPELINE, GLIOMA_POSTOP_PIPELINE, METASTASES_PIPELINE, NeuroflowSettings
from neuroflow.core.dicom_io import DicomSource, StudyIndex, series_volume
from neuroflow.core.errors import NeuroflowError, StudyError
from neuroflow.core.glioma_findings import reported_tumour_ml
from neuroflow.core.handoff import CavityFinding
from neuroflow.core.identity import input_hash
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.patient_id import PatientIdentity
from neuroflow.core.roles import CHANGE_FOLLOWS
from neuroflow.core.sequence_subsets import glioma_reference_role
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.site_secret import install_site_secret
from neuroflow.core.sub_series import volume_identity
from neuroflow.core.timing import ProgressSink, StageClock
from neuroflow.core.volume import Volume
from neuroflow.core.volume_members import volume_instances
from neuroflow.core.worker import is_retryable
from neuroflow.ingest.classify import SeriesClassification, classify_study, effective_policy
from neuroflow.ingest.postoperative import PriorTumour, postoperative_evidence
from neuroflow.ingest.routing import pipeline_inputs, qualify
from neuroflow.ingest.site_rules import SiteRules, load_site_rules
from neuroflow.longitudinal.pairing import group_by_patient
from neuroflow.longitudinal.priors import acquired_at
from neuroflow.preprocess.glioma_inputs import preprocess_glioma
from neuroflow.preprocess.prior_bed import PriorBed, prior_tumour_bed
from neuroflow.results.dicom_sr import SR_FILE
from neuroflow.results.glioma_results import (
    GLIOMA_RESULT_NAMES,
    SEG_FILE,
    earlier_result,
    glioma_objects,
    glioma_report,
    latest_glioma_sr,
    registration_warnings,
)
from neuroflow.results.postop_results import postoperative_section
from neuroflow.results.report import (
    TOTAL_TIMING_KEY,
    ReportStatus,
    StudyReport,
    TumourVolumes,
    write_report,
    write_summary,
)
from neuroflow.runtime.result_files import read_if_present, remove_results, write_objects
from neuroflow.runtime.study_reading import (
    Indexed,
    StudyRun,
    file_failure_notice,
    read_study,
    series_entries,
)
from neuroflow.segmentation.cavity import postoperative_labels
from neuroflow.segmentation.glioma import label_map, predict_regions
from neuroflow.segmentation.review import record_review, review_segmentation

log = logging.getLogger(__name__)

__all__ = ["GLIOMA_RESULT_NAMES", "SEG_FILE", "run_embedded", "run_glioma"]
GLIOMA_STAGES = (
    "read", "classify", "read_series", "convert", "orientation", "register", "skull_strip",
    "normalise", "segment", "postprocess", "review", "write_results",
)


def run_embedded(
    source: DicomSource,
    out_dir: Path,
    settings: NeuroflowSettings,
    backend: InferenceBackend,
    *,
    study_uid: str | None = None,
    progress: ProgressSink | None = None,
    pipeline: str | None = None,
) -> StudyReport:
    """What ``neuroflow run`` does: ``pipeline`` "metastases" (or no ``pipeline`` at a site that enables the
    metastases pipeline and not the glioma one) runs the metastases pipeline on the one study
    (``runtime/embedded_metastases.py``), or, on two or more studies of one patient (and no ``study_uid``), its
    follow-up against the prior (``metastases_response``); otherwise, on two or more studies of one patient (and
    no ``study_uid``), the change pipelines each consecutive pair qualifies for
    (``runtime/embedded_longitudinal.py``); otherwise the glioma pipeline on the one study (or ``study_uid``),
    which refuses several studies without a choice."""
    install_site_secret(settings, distributed=False)  # the site's, else the development secret
    if pipeline is None and METASTASES_PIPELINE in settings.ingest.pipelines \
            and GLIOMA_PIPELINE not in settings.ingest.pipelines:
        pipeline = METASTASES_PIPELINE
    if pipeline == METASTASES_PIPELINE:
        indexed = None
        if study_uid is None:
            started = time.perf_counter()
            studies, skipped = source.index()
            if _one_patients(studies):
                # Several studies of one patient: the metastases pipeline's follow-up, lesion by lesion (RANO-BM).
                from neuroflow.runtime.embedded_longitudinal import run_longitudinal  # its imports only when needed

                return run_longitudinal(source, studies, skipped, out_dir, settings, backend, progress=progress,
                                        pipelines=[p for p, single in CHANGE_FOLLOWS.items() if single == pipeline])
            indexed = Indexed(studies, skipped, time.perf_counter() - started)
        from neuroflow.runtime.embedded_metastases import run_metastases  # its imports only when needed

        return run_metastases(source, out_dir, settings, backend, study_uid=study_uid, progress=progress,
                              indexed=indexed)
    if pipeline not in (None, GLIOMA_PIPELINE, GLIOMA_POSTOP_PIPELINE):
        raise NeuroflowError(f"unknown pipeline {pipeline!r}: choose {GLIOMA_PIPELINE}, {GLIOMA_POSTOP_PIPELINE} "
                             f"or {METASTASES_PIPELINE}")
    postoperative = pipeline == GLIOMA_POSTOP_PIPELINE
    started = time.perf_counter()
    studies, skipped = source.index()
    if study_uid is not None or postoperative:
        # The whole index goes with the study: an earlier study of the patient with neuroflow's glioma SR in it
        # (a prior with tumour) makes this one post-operative.
        indexed = Indexed(studies, skipped, time.perf_counter() - started)
        return run_glioma(source, out_dir, settings, backend, study_uid=study_uid, progress=progress,
                          postoperative=postoperative, indexed=indexed)
    if _one_patients(studies):
        from neuroflow.runtime.embedded_longitudinal import run_longitudinal  # its imports only when needed

        return run_longitudinal(source, studies, skipped, out_dir, settings, backend, progress=progress)
    # Reading every header is the slowest part of "read" on a cold disk: done once, not again for the run.
    indexed = Indexed(studies, skipped, time.perf_counter() - started)
    return run_glioma(source, out_dir, settings, backend, progress=progress, indexed=indexed)


def _one_patients(studies: dict[str, StudyIndex]) -> bool:
    """Whether ``studies`` are several studies all of one patient: a follow-up, for the change pipelines."""
    patients = group_by_patient(studies.values())
    return len(studies) > 1 and [len(p) for p in patients.values()] == [len(studies)]


def run_glioma(
    source: DicomSource,
    out_dir: Path,
    settings: NeuroflowSettings,
    backend: InferenceBackend,
    *,
    study_uid: str | None = None,
    progress: ProgressSink | None = None,
    indexed: Indexed | None = None,
    postoperative: bool = False,
    prior: PriorTumour | None = None,
) -> StudyReport:
    """Runs the glioma pipeline on one study of ``source`` and writes ``report.json``, ``summary.txt`` and
    the objects PACS would get (``glioma_objects``: ``seg.dcm``, ``sr.dcm``, the overlay series) to
    ``out_dir``. Never raises for a bad study: the report says what is wrong (``status`` failed,
    ``errors``), no earlier result is left behind, and the notice (``notice_sr.dcm``, ``notice.dcm``) says
    in DICOM that the study could not be processed and why. A run on other inputs than the earlier run into
    ``out_dir`` (a new model) is the next version of the result: its SR names the earlier SR.

    A post-operative study (``postoperative``: asked for as glioma_postop; or its descriptions say so, or
    ``prior``, a prior study of the patient, had tumour: ingest.postoperative) runs as ``glioma_postop``: the
    resection cavity is carved into the label map (segmentation/cavity.py), never counted as tumour, and
    reported with the residual enhancing tumour, for review."""
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier_sr = read_if_present(out_dir / SR_FILE)
    # A result left by an earlier run must not pass for this run's result if this one fails.
    remove_results(out_dir, GLIOMA_RESULT_NAMES)
    clock = StageClock(GLIOMA_STAGES, progress)
    run = StudyRun(series=[], warnings=[], evidence=[],
               pipeline=GLIOMA_POSTOP_PIPELINE if postoperative else GLIOMA_PIPELINE)
    try:
        report = _run(source, out_dir, settings, backend, study_uid, clock, run, indexed, earlier_sr, prior)
    except NeuroflowError as exc:
        reason = exc.reason if isinstance(exc, StudyError) else str(exc)
        where = f"{clock.current}: " if clock.current else ""
        log.error("study %s failed in %s: %s", run.key or "-", clock.current, reason)
        report = StudyReport(
            study_instance_uid=run.study_uid,
            study_key=run.key,
            pipeline=run.pipeline,
            status=ReportStatus.FAILED,
            series=run.series or [],
            timings_s={**clock.timings, "total": clock.total()},
            warnings=run.warnings or [],
            errors=[f"{where}{reason}"],
            retryable=is_retryable(exc),
            outputs=["report.json", "summary.txt"],
        )
        report = file_failure_notice(report, run.evidence or [], out_dir, settings)
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
    run: StudyRun,
    indexed: Indexed | None,
    earlier_sr: Dataset | None = None,
    prior: PriorTumour | None = None,
) -> StudyReport:
    assert run.series is not None and run.warnings is not None and run.evidence is not None
    study = read_study(source, study_uid, clock, run, indexed)
    if prior is None and indexed is not None:
        prior = prior_tumour(indexed.studies, study, settings)

    with clock.stage("classify"):
        rules: SiteRules | None = load_site_rules(settings.site_rules) if settings.site_rules else None
        policy = effective_policy(settings.classify, rules)
        classified = classify_study(list(study.series.values()), rules=rules, policy=policy)
        run.series.extend(series_entries(classified, {}))
        # The same qualification as ingest's routing: the roles the glioma model's card takes and needs.
        inputs = pipeline_inputs(backend.card(settings.models.glioma))[GLIOMA_PIPELINE]
        chosen = qualify(classified, inputs, study_key=run.key, policy=policy)
        used = {c.series_instance_uid: role for role, c in chosen.items()}
        run.series[:] = series_entries(classified, used)
        for c in classified:
            clock.note(f"{c.role:<6} {c.description or '(no description)'}")
        postop_evidence = _postoperative(study, classified, rules, prior, run)

    models = settings.models
    reference_role = glioma_reference_role(chosen)
    with clock.stage("read_series"):
        series = {role: series_volume(study, c.series_instance_uid) for role, c in chosen.items()}
        instances = {role: source.read_instances(s) for role, s in series.items()}

    pre = preprocess_glioma(instances, backend, (models.skull_strip_bbox, models.skull_strip),
                            spacing_mm=settings.target_spacing_mm, study_key=run.key, clock=clock,
                            volumes_of={role: s.volume for role, s in series.items()},
                            reference_role=reference_role)
    summary = pre.summary(models.skull_strip, clock.timings)
    run.warnings.extend(registration_warnings(summary))

    with clock.stage("segment"):
        probabilities = predict_regions(
            pre.normalised, pre.brain_mask, backend, models.glioma, overlap=settings.window_overlap,
            batch_size=settings.window_batch_size, study_key=run.key,
        )
    with clock.stage("postprocess"):
        network_labels = labels_on_grid = label_map(probabilities, pre.brain_mask)
        postoperative = None
        if run.pipeline == GLIOMA_POSTOP_PIPELINE:  # the resection cavity, never counted as tumour
            bed = _prior_bed(source, indexed, prior, settings, pre.brain_mask, run, clock,
                             reference=(series[reference_role].volume, instances[reference_role]))
            labels_on_grid = postoperative_labels(network_labels, pre.normalised, pre.brain_mask,
                                                  evidence=postop_evidence, prior_tumour=bed.mask,
                                                  prior_tumour_note=bed.note)
            finding = CavityFinding.of(labels_on_grid)
            assert finding is not None  # postoperative_labels always attaches it
            postoperative = postoperative_section(labels_on_grid, finding)
        volumes_ml = TumourVolumes.from_label_map(labels_on_grid)
    with clock.stage("review"):  # of what the network drew (its checks know nothing of the cavity)
        review = review_segmentation(pre.normalised, pre.brain_mask, probabilities, network_labels, backend,
                                     models.glioma, settings, study_key=run.key, registration=summary.registration)
        record_review(review, site=settings.site, pipeline=run.pipeline, model=models.glioma)

    with clock.stage("write_results"):
        uids = {role.value: [*(str(ds.SOPInstanceUID) for ds in datasets),
                             *volume_identity(chosen[role].series_instance_uid)]
                for role, datasets in instances.items()}
        key = input_hash(uids, models.glioma)
        if not volumes_ml.tumour_detected:
            run.warnings.append("no tumour detected: no DICOM SEG written")
        earlier = earlier_result(earlier_sr, study_instance_uid=run.study_uid, input_hash=key,
                                 objects=settings.results)
        if earlier is not None and not earlier.same_input:
            run.warnings.append(f"this result replaces an earlier one (version {earlier.version}) from other inputs")
        # The objects are built from the report (what report.json says), before the files are known.
        report = glioma_report(run.study_uid, run.key, run.pipeline, summary, volumes=volumes_ml,
                               model=models.glioma, series=run.series, timings=clock.timings, warnings=run.warnings,
                               outputs=[], roles_used=set(chosen), review=review, postoperative=postoperative)
        datasets = glioma_objects(report, labels_on_grid, instances, input_hash=key, objects=settings.results,
                                  study_key=run.key, volumes_of={role: s.volume for role, s in series.items()},
                                  earlier=earlier)
        written = write_objects(datasets, out_dir)
    # The report the objects were built from, with the write_results stage timed and the files named.
    return report.model_copy(update={
        "timings_s": {**clock.timings, TOTAL_TIMING_KEY: round(sum(clock.timings.values()), 3)},
        "outputs": [*(path.name for path in written), "report.json", "summary.txt"]})


def prior_tumour(studies: dict[str, StudyIndex], study: StudyIndex,
                  settings: NeuroflowSettings) -> PriorTumour | None:
    """The latest earlier study of the same patient (longitudinal.pairing's grouping) holding a neuroflow glioma
    SR that reports tumour, as routing's ``prior``; None when there is none."""
    patient = PatientIdentity.of_study(study)
    if patient.problem is not None:
        return None
    when = _acquired(study)
    found: list[tuple[str, PriorTumour]] = []
    for other in group_by_patient(studies.values()).get(patient, []):
        if other.study_instance_uid == study.study_instance_uid or _acquired(other) >= when:
            continue
        sr = latest_glioma_sr([h for item in other.set_aside for h in item.headers], settings.results)
        tumour_ml = None if sr is None else reported_tumour_ml(sr)
        if tumour_ml is not None:
            found.append((_acquired(other), PriorTumour(study_date=_acquired(other)[:8], tumour_ml=tumour_ml,
                                                        study_instance_uid=other.study_instance_uid)))
    return max(found, key=lambda item: item[0])[1] if found else None


def _prior_bed(source: DicomSource, indexed: Indexed | None, prior: PriorTumour | None, settings: NeuroflowSettings,
               brain_mask: Volume, run: StudyRun, clock: StageClock,
               reference: tuple[str, list[Dataset]]) -> PriorBed:
    """The prior's tumour on the brain mask's grid (preprocess.prior_bed), or why there is none: no prior with
    tumour is known (an empty note), or it could not be placed (the report's post-operative section says so, and
    the cavity is then tied to today's tumour only)."""
    if prior is None or not prior.study_instance_uid:
        return PriorBed(None, "")
    prior_study = None if indexed is None else indexed.studies.get(prior.study_instance_uid)
    if prior_study is None:
        return PriorBed(None, "the prior study is not in the input")
    volume, datasets = reference  # this study's reference series: the sub-volume label and its instances
    image = series_to_volume(volume_instances(datasets, study_key=run.key, volume=volume), study_key=run.key)
    bed = prior_tumour_bed(source, prior_study, image, brain_mask, settings, study_key=run.key)
    clock.note(bed.note)
    return bed


def _acquired(study: StudyIndex) -> str:
    """When ``study`` was acquired (longitudinal.priors), from a set-aside object when it holds no images."""
    headers = [s.headers[0] for s in study.series.values() if s.headers] or [
        h for item in study.set_aside for h in item.headers[:1]]
    return acquired_at(str(headers[0].get("StudyDate", "")), str(headers[0].get("StudyTime", ""))) if headers \
        else acquired_at("", "")


def _postoperative(study: StudyIndex, classified: list[SeriesClassification], rules: SiteRules | None,
                   prior: PriorTumour | None, run: StudyRun) -> list[str]:
    """Why the study is post-operative (the evidence ingest's routing weighs: ingest.routing.postoperative_route),
    switching ``run`` to glioma_postop when there is any and the site's route rules allow it; a study asked for
    as glioma_postop says so."""
    assert run.evidence is not None
    descriptions = [str(h.get("StudyDescription", "")) for h in run.evidence[:1]]
    evidence = postoperative_evidence([*descriptions, *(c.description for c in classified)], prior=prior,
                                      extra_patterns=rules.postoperative_patterns if rules is not None else ())
    if run.pipeline == GLIOMA_POSTOP_PIPELINE:
        return [f"run as {GLIOMA_POSTOP_PIPELINE} on request", *evidence]
    tags = {"StudyDescription": descriptions[0] if descriptions else ""}
    if evidence and (rules is None or rules.route_refusal(GLIOMA_POSTOP_PIPELINE, tags) is None):
        run.pipeline = GLIOMA_POSTOP_PIPELINE
        return evidence
    return []
