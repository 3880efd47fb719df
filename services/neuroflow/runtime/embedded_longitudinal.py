"""The embedded runtime on two or more studies of one patient: every consecutive pair runs the change
pipelines it qualifies for (the folder is where the prior is found), and, when every timepoint has the
glioma inputs, the glioma volumes of each timepoint give the tumour growth.

Writes ``report.json`` and ``summary.txt`` for the most recent study (the follow-up) and the result
objects: with one pair at the top of the output folder, with several in ``pair<n>/`` (oldest pair 1)."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from neuroflow.core.config import LONGITUDINAL_PIPELINE, ClassifySettings, NeuroflowSettings
from neuroflow.core.dicom_io import DicomSource, SkippedFile, StudyIndex, series_volume, study_key
from neuroflow.core.errors import MissingSequence, NeuroflowError, StudyError
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.roles import CHANGE_OPTIONAL_ROLES, CHANGE_REQUIRED_ROLES, ChangePipeline, SeriesRole
from neuroflow.core.sub_series import parse_sub_series_uid
from neuroflow.core.timing import ProgressSink, StageClock
from neuroflow.core.worker import is_retryable
from neuroflow.ingest.classify import SeriesClassification, classify_study, effective_policy, select_inputs
from neuroflow.ingest.site_rules import load_site_rules
from neuroflow.longitudinal.compare import COMPARE_STAGES, Timepoint, compare_pair, measure_glioma_volumes
from neuroflow.longitudinal.pairing import PairPlan, StudyTimepoint, plan_pairs, roles_for, timepoint_of
from neuroflow.longitudinal.tumour_growth import PLOT_FILE, GliomaTimepoint, growth_plot_svg, tumour_growth
from neuroflow.results.longitudinal_results import (
    HAEMATOMA_BASELINE_SEG_FILE,
    HAEMATOMA_FOLLOWUP_SEG_FILE,
    METASTASES_RESPONSE_SR_FILE,
    MS_OVERLAY_FOLDER,
    MS_SEG_FILE,
    MS_SR_FILE,
)
from neuroflow.results.report import (
    REPORT_FILE,
    SUMMARY_FILE,
    LongitudinalReport,
    ReportStatus,
    SeriesEntry,
    StudyReport,
    TumourGrowth,
    TumourVolumes,
    write_report,
    write_summary,
)
from neuroflow.runtime.embedded import GLIOMA_RESULT_NAMES
from neuroflow.runtime.result_files import remove_results, write_objects

log = logging.getLogger(__name__)

LONGITUDINAL_STAGES: tuple[str, ...] = tuple(dict.fromkeys(
    ("classify", "pairing", "read_series", *COMPARE_STAGES, "write_results")))
# Every result file a run here writes, and the glioma run's SEG (an earlier run's into the same folder).
_RESULT_FILES = (MS_SEG_FILE, MS_SR_FILE, MS_OVERLAY_FOLDER, HAEMATOMA_BASELINE_SEG_FILE, HAEMATOMA_FOLLOWUP_SEG_FILE,
                 METASTASES_RESPONSE_SR_FILE, PLOT_FILE, *GLIOMA_RESULT_NAMES)
_PAIR_FOLDER = re.compile(r"pair\d+")
# Every role any change pipeline uses: each study offers its best series for each.
_CHANGE_ROLES: tuple[SeriesRole, ...] = tuple(dict.fromkeys(
    role for roles in (*CHANGE_REQUIRED_ROLES.values(), *CHANGE_OPTIONAL_ROLES.values()) for role in roles))


@dataclass
class _Run:
    study_uid: str = ""
    key: str = ""
    series: list[SeriesEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run_longitudinal(
    source: DicomSource,
    studies: dict[str, StudyIndex],
    skipped: list[SkippedFile],
    out_dir: Path,
    settings: NeuroflowSettings,
    backend: InferenceBackend,
    *,
    progress: ProgressSink | None = None,
    pipelines: Collection[ChangePipeline] | None = None,
) -> StudyReport:
    """Compares the studies of one patient (``studies``, as ``source`` indexed them) pair by pair and
    writes the report and result objects to ``out_dir``. ``pipelines``: the change pipelines considered
    (default: ``plan_pairs``'s, which leaves out those that follow a single-study pipeline's patients: the
    metastases response runs when the metastases pipeline is asked for). Never raises for bad studies: a study without a
    date fails the run (status failed, exit 1: the order of the studies is unknown); a pipeline that
    cannot run on a pair (a missing FLAIR, a 2D FLAIR with thick slices) is a warning and a ``not_run``
    reason, and the run fails only when nothing could be compared."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_earlier_results(out_dir)
    clock = StageClock(LONGITUDINAL_STAGES, progress)
    run = _Run(warnings=[f"skipped {s.path}: {s.reason}" for s in skipped])
    run.warnings.extend(f"study {study_key(uid)}: {note}" for uid, study in sorted(studies.items())
                        for note in study.set_aside_notes())
    try:
        report = _run(source, studies, out_dir, settings, backend, clock, run, pipelines)
    except NeuroflowError as exc:
        reason = exc.reason if isinstance(exc, StudyError) else str(exc)
        where = f"{clock.current}: " if clock.current else ""
        log.error("longitudinal run %s failed in %s: %s", run.key or "-", clock.current, reason)
        report = StudyReport(
            study_instance_uid=run.study_uid, study_key=run.key, pipeline=LONGITUDINAL_PIPELINE,
            status=ReportStatus.FAILED, series=run.series, timings_s={**clock.timings, "total": clock.total()},
            warnings=run.warnings, errors=[f"{where}{reason}"], retryable=is_retryable(exc),
            outputs=[REPORT_FILE, SUMMARY_FILE],
        )
    write_summary(report, out_dir)
    write_report(report, out_dir)
    return report


def _run(source: DicomSource, studies: dict[str, StudyIndex], out_dir: Path, settings: NeuroflowSettings,
         backend: InferenceBackend, clock: StageClock, run: _Run,
         pipelines: Collection[ChangePipeline] | None) -> StudyReport:
    with clock.stage("classify"):
        rules = load_site_rules(settings.site_rules) if settings.site_rules else None
        policy = effective_policy(settings.classify, rules)
        classified = {uid: classify_study(list(study.series.values()), rules=rules, policy=policy)
                      for uid, study in studies.items()}
    with clock.stage("pairing"):
        timepoints = []
        for uid, study in sorted(studies.items()):
            run.study_uid, run.key = uid, study_key(uid)  # named in the error if this one has no date
            timepoints.append(timepoint_of(study, _best_per_role(classified[uid], run.key, policy)))
        plans = plan_pairs(timepoints, pipelines)
        latest = plans[-1].followup
        run.study_uid, run.key = latest.study_instance_uid, latest.key
        for plan in plans:
            clock.note(f"{plan.baseline.study_date} -> {plan.followup.study_date}: "
                       f"{', '.join(plan.pipelines) or 'no change pipeline qualifies'}")
    run.series = _series_entries(classified[latest.study_instance_uid], latest, plans[-1])

    reader = _InstanceReader(source, studies, clock)
    sections: list[LongitudinalReport] = []
    objects: list[dict[str, list[Dataset]]] = []
    for plan in plans:
        section, datasets = _compare(plan, reader, backend, settings, clock, run)
        sections.append(section)
        objects.append(datasets)

    top = sections[-1]
    outputs: list[str] = []
    if all(ChangePipeline.TUMOUR_GROWTH in plan.pipelines for plan in plans):
        ordered = [plans[0].baseline, *(plan.followup for plan in plans)]
        growth = _tumour_growth(ordered, reader, backend, settings, clock, run)
        if growth is not None:
            top = top.model_copy(update={"tumour_growth": growth})
            (out_dir / PLOT_FILE).write_text(growth_plot_svg(growth), encoding="utf-8")
            outputs.append(PLOT_FILE)
    if len(sections) > 1:
        top = top.model_copy(update={"pairs": sections})

    ran = [s for s in sections if s.pipelines] or ([top] if top.tumour_growth is not None else [])
    if not ran:
        reasons = "; ".join(f"{s.baseline_study_date} -> {s.followup_study_date}: {pipeline}: {reason}"
                            for s in sections for pipeline, reason in s.not_run.items())
        listing = ", ".join(f"{t.study_instance_uid} ({t.study_date})"
                            for t in [plans[0].baseline, *(plan.followup for plan in plans)])
        raise StudyError(run.key, f"the input holds {len(plans) + 1} studies of one patient and no change pipeline "
                                  f"could compare them ({reasons}); to run the glioma pipeline on one of them, "
                                  f"choose it with --study UID: {listing}", stage="pairing")

    with clock.stage("write_results"):
        for number, datasets in enumerate(objects, start=1):
            folder = out_dir / f"pair{number}" if len(objects) > 1 else out_dir
            outputs += [str(path.relative_to(out_dir)) for path in write_objects(datasets, folder)]
    return StudyReport(
        study_instance_uid=run.study_uid, study_key=run.key, pipeline=LONGITUDINAL_PIPELINE,
        status=ReportStatus.SUCCEEDED, series=run.series,
        timings_s={**clock.timings, "total": clock.total()}, longitudinal=top, warnings=run.warnings,
        outputs=[*outputs, REPORT_FILE, SUMMARY_FILE],
        # The follow-up of a provisional model's lesions is flagged where a reader looks first.
        review=top.metastases_response.review if top.metastases_response is not None else None,
    )


def _compare(plan: PairPlan, reader: _InstanceReader, backend: InferenceBackend, settings: NeuroflowSettings,
             clock: StageClock, run: _Run) -> tuple[LongitudinalReport, dict[str, list[Dataset]]]:
    """Every change pipeline of ``plan`` except tumour growth (measured over all timepoints)."""
    section = LongitudinalReport(
        baseline_study_instance_uid=plan.baseline.study_instance_uid,
        followup_study_instance_uid=plan.followup.study_instance_uid,
        baseline_study_date=plan.baseline.study_date, followup_study_date=plan.followup.study_date,
        not_run={pipeline.value: reason for pipeline, reason in plan.not_run.items()},
    )
    datasets: dict[str, list[Dataset]] = {}
    pair = f"{plan.baseline.study_date} -> {plan.followup.study_date}"
    for pipeline in plan.pipelines:
        if pipeline is ChangePipeline.TUMOUR_GROWTH:
            continue
        try:
            baseline, followup = (reader.timepoint(t, roles_for(pipeline)) for t in (plan.baseline, plan.followup))
            result = compare_pair(pipeline, baseline, followup, backend, settings, study_key=plan.followup.key,
                                  clock=clock)
        except StudyError as exc:
            run.warnings.append(f"{pipeline} {pair} not run: {exc.reason}")
            section = section.model_copy(update={"not_run": {**section.not_run, pipeline.value: exc.reason}})
            continue
        section = section.merged(result.section)
        datasets.update(result.datasets)
        run.warnings.extend(f"{pipeline} {pair}: {warning}" for warning in result.warnings)
    return section, datasets


def _tumour_growth(timepoints: list[StudyTimepoint], reader: _InstanceReader, backend: InferenceBackend,
                   settings: NeuroflowSettings, clock: StageClock, run: _Run) -> TumourGrowth | None:
    measured: list[GliomaTimepoint] = []
    for timepoint in timepoints:
        try:
            read = reader.timepoint(timepoint, roles_for(ChangePipeline.TUMOUR_GROWTH))
            volumes: TumourVolumes = measure_glioma_volumes(read.instances, backend, settings, study_key=timepoint.key,
                                                            clock=clock, volumes_of=read.volumes)
        except StudyError as exc:
            run.warnings.append(f"{ChangePipeline.TUMOUR_GROWTH} not run: study {timepoint.key} "
                                f"({timepoint.study_date}): {exc.reason}")
            return None
        measured.append(GliomaTimepoint(timepoint.study_instance_uid, timepoint.study_date, volumes))
    return tumour_growth(measured)


class _InstanceReader:
    """Reads each series' instances (with pixels) once, however many pairs and pipelines use them."""

    def __init__(self, source: DicomSource, studies: dict[str, StudyIndex], clock: StageClock) -> None:
        self._source, self._studies, self._clock = source, studies, clock
        self._cache: dict[str, list[Dataset]] = {}

    def timepoint(self, timepoint: StudyTimepoint, roles: tuple[SeriesRole, ...]) -> Timepoint:
        instances: dict[SeriesRole, list[Dataset]] = {}
        volumes: dict[SeriesRole, str] = {}
        for role in roles:
            chosen = timepoint.series.get(role)
            if chosen is None:
                continue
            if chosen.series_instance_uid not in self._cache:
                series = series_volume(self._studies[timepoint.study_instance_uid], chosen.series_instance_uid)
                with self._clock.stage("read_series"):
                    self._cache[chosen.series_instance_uid] = self._source.read_instances(series)
            instances[role] = self._cache[chosen.series_instance_uid]
            volumes[role] = parse_sub_series_uid(chosen.series_instance_uid)[1]
        return Timepoint(timepoint.study_instance_uid, timepoint.study_date, timepoint.study_time, instances, volumes)


def _best_per_role(classified: list[SeriesClassification], key: str, policy: ClassifySettings) -> dict[SeriesRole, str]:
    """Routing's choice of series for every role a change pipeline uses (absent roles are left out; an
    ambiguous one raises AmbiguousRole, naming the candidates)."""
    chosen: dict[SeriesRole, str] = {}
    for role in _CHANGE_ROLES:
        try:
            chosen[role] = select_inputs(classified, [role], study_key=key, policy=policy)[role].series_instance_uid
        except MissingSequence:
            continue
    return chosen


def _series_entries(classified: list[SeriesClassification], timepoint: StudyTimepoint,
                    plan: PairPlan) -> list[SeriesEntry]:
    used_roles = {role for pipeline in plan.pipelines for role in roles_for(pipeline)}
    used = {s.series_instance_uid: role for role, s in timepoint.series.items() if role in used_roles}
    return [
        SeriesEntry(series_instance_uid=c.series_instance_uid, series_number=c.series_number,
                    description=c.description, role=c.role, confidence=c.confidence, reasons=list(c.reasons),
                    used_as=used.get(c.series_instance_uid))
        for c in classified
    ]


def _remove_earlier_results(out_dir: Path) -> None:
    """An earlier run's objects must not pass for this run's (the same names are written again)."""
    remove_results(out_dir, [*_RESULT_FILES, *(p.name for p in out_dir.iterdir() if _PAIR_FOLDER.fullmatch(p.name))])
