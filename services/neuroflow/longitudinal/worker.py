"""The longitudinal stage as a task handler of the distributed runtime, and the service that runs it.

A task names a follow-up study and a change pipeline (``ms_change``, ``haematoma_change``, ``metastases_response``,
``tumour_growth``). The handler:

1. asks again for the comparison of the patient's *next* timepoint when this study is older than it and
   newer than that timepoint's baseline (a late prior: the consecutive pair changed), by publishing its
   StudyReady with this study named as the baseline;
2. finds the baseline: the one the task names, else the newest earlier study of the patient that
   qualifies for the pipeline, in the site's Orthanc and then, when configured, moved in from the PACS
   (the series of the roles the pipeline uses when present, MS's T1 and T2, are added on both sides);
3. with a baseline, loads both timepoints' instances, runs ``longitudinal.compare.compare_pair`` (the same
   code as the embedded runtime), stores the result objects in the site's sink (the orchestrator then puts
   them in the delivery outbox for the destination, ``core.delivery``), writes the report where the results
   stage writes the glioma report, and publishes ResultsStored;
4. without one, records that the study waits for its prior until the site's deadline (answer
   WAITING_FOR_PRIOR); after the deadline (:class:`PriorWaitSweeper` asks for a run with
   ``prior_wait_expired``) the report says there was no prior within the deadline (answer NO_PRIOR).

A follow-up whose PatientID cannot find one patient (empty, missing, a wildcard: ``core.patient_id``) is
compared with nothing and no prior is looked up for it (answer NOT_COMPARED, the report says why).

What the stage knows of a patient's timepoints is in the :class:`~neuroflow.longitudinal.priors.TimepointStore`
(the state database). A redelivered finished task is answered from its record by the StageWorker; a task
run again after a crash stores objects whose UIDs ``compare_pair`` derives from the pair's input hash, so
the sink replaces rather than duplicates them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from neuroflow.core import health, metrics, topics
from neuroflow.core.bus import MessageBus
from neuroflow.core.config import CHANGE_ALGORITHM_VERSION, NeuroflowSettings
from neuroflow.core.dead_letter import now_timestamp
from neuroflow.core.dicom_io import (
    DicomSink,
    DicomSource,
    Forwarder,
    SeriesInstances,
    StudyIndex,
    find_series,
)
from neuroflow.core.errors import SeriesRejected, StudyError
from neuroflow.core.identity import input_hash, patient_key
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.patient_id import PatientIdentity, same_patient
from neuroflow.core.roles import CHANGE_OPTIONAL_ROLES, CHANGE_REQUIRED_ROLES, ChangePipeline, SeriesRole
from neuroflow.core.timing import StageClock
from neuroflow.core.worker import StageWorker
from neuroflow.longitudinal.compare import COMPARE_STAGES, Timepoint, compare_pair
from neuroflow.longitudinal.priors import (
    PatientTimepoint,
    PriorLocator,
    SelectSeries,
    StudyAt,
    TimepointState,
    TimepointStore,
    describe_wait,
    qualifying_prior,
    study_acquired_at,
    wait_deadline,
)
from neuroflow.proto.neuroflow.v1 import events_pb2, tasks_pb2
from neuroflow.results.report import LongitudinalReport

log = logging.getLogger(__name__)

Outcome = tasks_pb2.LongitudinalOutput
STAGE = "longitudinal"
# Where a baseline came from, as the priors-found metric labels it.
FROM_TASK, FROM_SITE, FROM_PACS = "trigger", "site_orthanc", "pacs"


def change_model(pipeline: str) -> ModelRef:
    """The identity of a change pipeline's algorithms in input hashes (no single network decides it)."""
    return ModelRef(name=pipeline, version=CHANGE_ALGORITHM_VERSION)


def rerun_ready(ready: events_pb2.StudyReady, *, baseline_uid: str = "", expired: bool = False
                ) -> events_pb2.StudyReady:
    """``ready`` asking again for the follow-up's comparison, with ``baseline_uid`` named or after the wait
    for a prior expired: a new input hash (new work, a new workflow), the same every time it is asked."""
    again = events_pb2.StudyReady()
    again.CopyFrom(ready)
    again.baseline_study_instance_uid = baseline_uid
    again.prior_wait_expired = expired
    again.input_hash = input_hash({"followup": [ready.input_hash], "baseline": [baseline_uid] if baseline_uid else [],
                                   "prior_wait_expired": ["yes"] if expired else []}, change_model(ready.pipeline))
    again.ready_at.GetCurrentTime()
    return again


class LongitudinalHandler:
    """``TaskRequested`` (stage longitudinal) -> ``LongitudinalOutput``. Reports go to
    ``reports_dir/<study_key>/<workflow_id>/report.json``.

    ``locator`` looks priors up in the site's Orthanc and the PACS; None (a folder source) looks among the
    source's studies. ``select`` picks a study's series for a pipeline's roles the way routing does."""

    def __init__(
        self,
        source: DicomSource,
        sink: DicomSink,
        timepoints: TimepointStore,
        bus: MessageBus,
        backend: InferenceBackend,
        settings: NeuroflowSettings,
        select: SelectSeries,
        *,
        locator: PriorLocator | None = None,
    ) -> None:
        self._source = source
        self._sink = sink
        self._timepoints = timepoints
        self._bus = bus
        self._backend = backend
        self._settings = settings
        self._select = select
        self._locator = locator

    def __call__(self, task: tasks_pb2.TaskRequested) -> tasks_pb2.LongitudinalOutput:
        key, request = task.study.study_key, task.longitudinal
        if task.pipeline not in set(ChangePipeline):
            raise StudyError(key, f"pipeline {task.pipeline!r} is not a change pipeline (those are "
                                  f"{', '.join(ChangePipeline)})", stage=STAGE)
        roles = CHANGE_REQUIRED_ROLES[ChangePipeline(task.pipeline)]
        series = find_series(self._source, task.study, request.series, stage=STAGE)
        followup, _skipped = self._source.index_study(task.study.study_instance_uid)
        if followup is None:  # find_series refuses first; kept for the type checker
            raise SeriesRejected(key, "the follow-up study is no longer in the DICOM source", stage=STAGE)
        at = StudyAt(followup.study_instance_uid, study_acquired_at(followup))
        identity = PatientIdentity.of_study(followup)
        key_of_patient = patient_key(identity.patient_id)
        if key_of_patient is None:  # no usable PatientID: nothing looked up, nothing paired, nothing recorded
            return self._not_compared(task, at, identity.problem or "the study has no usable PatientID")
        patient = task.study.patient_key or key_of_patient  # pseudonymous, as ingest sets it
        ready = self._ready_of(task, series)
        self._ask_for_next_pair(task, patient, at)

        baseline, found_in, warnings = self._baseline(task, followup, identity, at, series, roles)
        if baseline is None and not request.prior_wait_expired:
            current = self._timepoints.get(patient, task.pipeline, at.study_instance_uid)
            if current is None or current.state == TimepointState.WAITING:
                return self._wait(task, patient, at, ready)
            # Its wait ended before (a re-sent study): no second wait.
        if baseline is None:
            return self._alone(task, patient, at, ready)
        return self._compared(task, patient, at, ready, followup, series, baseline, found_in, warnings)

    # -- the baseline -------------------------------------------------------------------------------

    def _baseline(self, task: tasks_pb2.TaskRequested, followup: StudyIndex, identity: PatientIdentity,
                  at: StudyAt, series: dict[SeriesRole, SeriesInstances], roles: tuple[SeriesRole, ...]
                  ) -> tuple[tuple[StudyIndex, dict[SeriesRole, SeriesInstances]] | None, str, list[str]]:
        """(the baseline study and its series, where it was found, warnings), or (None, "", [])."""
        key, named = task.study.study_key, task.longitudinal.baseline_study_instance_uid
        if named:
            study, _skipped = self._source.index_study(named)
            chosen = self._select(study, roles) if study is not None else None
            if study is not None and not same_patient(identity, PatientIdentity.of_study(study)):
                # The patient key does not hold the issuer: the same PatientID from another issuer is not this
                # patient, whatever the record of timepoints says.
                raise SeriesRejected(key, "the baseline study named for this comparison is another patient's "
                                          "(PatientID or IssuerOfPatientID differs): not compared", stage=STAGE)
            if study is None or chosen is None:
                raise SeriesRejected(key, f"the baseline study named for this comparison is no longer in the "
                                          f"DICOM source with the {', '.join(roles)} series it needs; re-send it",
                                     stage=STAGE)
            return (study, chosen), FROM_TASK, []
        if task.longitudinal.prior_wait_expired:
            return None, "", []
        choice = qualifying_prior(self._candidates(identity, at), at, series, roles, self._source, self._select,
                                  patient=identity)
        found_in = FROM_SITE
        if choice is None and self._locator is not None and self._locator.pacs_configured:
            held = {c.study_instance_uid for c in self._candidates(identity, at)}
            if self._locator.retrieve_from_pacs(identity, at.when, held, study_key=key):
                choice = qualifying_prior(self._candidates(identity, at), at, series, roles, self._source,
                                          self._select, patient=identity)
                found_in = FROM_PACS
        if choice is None:
            return None, "", []
        return (choice.study, choice.series), found_in, choice.warnings

    def _candidates(self, identity: PatientIdentity, at: StudyAt) -> list[StudyAt]:
        if self._locator is not None:
            return self._locator.studies_in_site(identity, at.when)
        studies, _skipped = self._source.index()
        return [StudyAt(s.study_instance_uid, study_acquired_at(s)) for s in studies.values()
                if same_patient(identity, PatientIdentity.of_study(s))]

    # -- the three outcomes -------------------------------------------------------------------------

    def _wait(self, task: tasks_pb2.TaskRequested, patient: str, at: StudyAt,
              ready: events_pb2.StudyReady) -> tasks_pb2.LongitudinalOutput:
        deadline = self._timepoints.start_wait(PatientTimepoint(
            patient, task.pipeline, at.study_instance_uid, at.when, TimepointState.WAITING, "", "",
            wait_deadline(self._settings.longitudinal), ready.SerializeToString()))
        metrics.PRIORS_WAITED.labels(_site(task), task.pipeline).inc()
        log.info("study %s: %s has no prior yet; waiting until %s", task.study.study_key, task.pipeline,
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(deadline)))
        until = Timestamp()
        until.FromSeconds(int(deadline))
        return tasks_pb2.LongitudinalOutput(outcome=Outcome.WAITING_FOR_PRIOR, waiting_until=until)

    def _alone(self, task: tasks_pb2.TaskRequested, patient: str, at: StudyAt,
               ready: events_pb2.StudyReady) -> tasks_pb2.LongitudinalOutput:
        waited = describe_wait(self._settings.longitudinal.prior_wait_s)
        note = f"no prior within {waited}: the {task.pipeline} comparison was not run"
        section = LongitudinalReport(baseline_study_instance_uid="", followup_study_instance_uid=at.study_instance_uid,
                                     followup_study_date=at.when[:8], not_run={task.pipeline: note})
        self._write_report(task, section.model_dump(mode="json"), warnings=[note], outputs=[])
        self._timepoints.record(PatientTimepoint(patient, task.pipeline, at.study_instance_uid, at.when,
                                                 TimepointState.ALONE, "", "", 0.0, ready.SerializeToString()))
        metrics.PRIORS_MISSING.labels(_site(task), task.pipeline).inc()
        log.info("study %s: %s", task.study.study_key, note)
        return tasks_pb2.LongitudinalOutput(outcome=Outcome.NO_PRIOR)

    def _not_compared(self, task: tasks_pb2.TaskRequested, at: StudyAt, reason: str
                      ) -> tasks_pb2.LongitudinalOutput:
        """The follow-up cannot be told apart from other patients' studies: its report says why, and it is
        neither recorded among any patient's timepoints nor looked up."""
        note = f"the {task.pipeline} comparison was not run: {reason}"
        section = LongitudinalReport(baseline_study_instance_uid="", followup_study_instance_uid=at.study_instance_uid,
                                     followup_study_date=at.when[:8], not_run={task.pipeline: reason})
        self._write_report(task, section.model_dump(mode="json"), warnings=[note], outputs=[])
        metrics.UNUSABLE_PATIENT_IDS.labels(_site(task), task.pipeline).inc()
        log.warning("study %s: %s", task.study.study_key, note)
        return tasks_pb2.LongitudinalOutput(outcome=Outcome.NOT_COMPARED, reason=reason)

    def _compared(self, task: tasks_pb2.TaskRequested, patient: str, at: StudyAt, ready: events_pb2.StudyReady,
                  followup: StudyIndex, series: dict[SeriesRole, SeriesInstances],
                  baseline: tuple[StudyIndex, dict[SeriesRole, SeriesInstances]], found_in: str,
                  warnings: list[str]) -> tasks_pb2.LongitudinalOutput:
        key, request = task.study.study_key, task.longitudinal
        started = time.perf_counter()
        base_study, base_series = baseline
        base_at = study_acquired_at(base_study)
        pipeline = ChangePipeline(task.pipeline)
        before = _timepoint(base_study.study_instance_uid, self._with_optional(base_study, base_series, pipeline),
                            self._source)
        after = _timepoint(at.study_instance_uid, self._with_optional(followup, series, pipeline), self._source)
        clock = StageClock(COMPARE_STAGES, progress=lambda line: log.info("study %s: %s %s", key, pipeline,
                                                                          line.strip()))
        # The objects' UIDs follow from the pair's input hash (compare_pair): a re-run replaces them.
        result = compare_pair(pipeline, before, after, self._backend, self._settings, study_key=key, clock=clock)
        stored = [self._sink.store(ds) for name in sorted(result.datasets) for ds in result.datasets[name]]
        notes = [*warnings, *result.warnings]
        if stored and request.destination and not isinstance(self._sink, Forwarder):
            notes.append(f"the sink cannot forward: results stored, not sent to {request.destination}")
        section = result.section.model_dump(mode="json")
        self._write_report(task, section, warnings=notes, outputs=sorted(result.datasets),
                           timings={**clock.timings, "total": round(time.perf_counter() - started, 3)})
        self._timepoints.record(PatientTimepoint(patient, task.pipeline, at.study_instance_uid, at.when,
                                                 TimepointState.COMPARED, base_study.study_instance_uid, base_at,
                                                 0.0, ready.SerializeToString()))
        metrics.PRIORS_FOUND.labels(_site(task), task.pipeline, found_in).inc()
        event = events_pb2.ResultsStored(
            schema_version=topics.SCHEMA_VERSION, study=task.study, pipeline=task.pipeline,
            workflow_id=task.workflow_id, sop_instance_uids=stored, destination=request.destination or "sink",
            stored_at=now_timestamp())
        event.model.name, event.model.version = task.pipeline, CHANGE_ALGORITHM_VERSION
        self._bus.publish(topics.RESULTS_STORED, key, event.SerializeToString())
        log.info("study %s: %s compared with its prior (found: %s): %d object(s) stored", key, task.pipeline,
                 found_in, len(stored))
        return tasks_pb2.LongitudinalOutput(outcome=Outcome.COMPARED, sop_instance_uids=stored,
                                            destination=request.destination,
                                            baseline_study_instance_uid=base_study.study_instance_uid)

    # -- late priors --------------------------------------------------------------------------------

    def _ask_for_next_pair(self, task: tasks_pb2.TaskRequested, patient: str, at: StudyAt) -> None:
        """When the patient's next processed (or waiting) timepoint was compared with something older than
        this study, or with nothing, its consecutive pair is now (this study, it): ask for that comparison.
        Only the next timepoint changes; the ones after it keep their own consecutive baselines."""
        newer = self._timepoints.newer_than(patient, task.pipeline, at.when)
        if not newer:
            return
        following = newer[0]
        if following.baseline_uid and following.baseline_at >= at.when:
            return  # already compared with this study or a newer one
        again = rerun_ready(events_pb2.StudyReady.FromString(following.ready), baseline_uid=at.study_instance_uid)
        # Recorded before publishing: the sweeper must not also run it without a prior meanwhile.
        self._timepoints.record(PatientTimepoint(
            following.patient_key, following.pipeline, following.study_uid, following.acquired_at,
            TimepointState.COMPARED, at.study_instance_uid, at.when, 0.0, following.ready))
        self._bus.publish(topics.STUDY_READY, again.study.study_key, again.SerializeToString())
        metrics.LATE_PRIOR_TRIGGERS.labels(_site(task), task.pipeline).inc()
        log.info("study %s: older than the patient's processed study %s: its %s comparison is asked for again "
                 "with this study as the baseline", task.study.study_key, again.study.study_key, task.pipeline)

    # -- helpers ------------------------------------------------------------------------------------

    def _with_optional(self, study: StudyIndex, chosen: dict[SeriesRole, SeriesInstances],
                       pipeline: ChangePipeline) -> dict[SeriesRole, SeriesInstances]:
        """``chosen`` plus the series of the roles ``pipeline`` uses when present (MS: T1, T2)."""
        out = dict(chosen)
        for role in CHANGE_OPTIONAL_ROLES[pipeline]:
            if role not in out and (found := self._select(study, (role,))) is not None:
                out[role] = found[role]
        return out

    def _ready_of(self, task: tasks_pb2.TaskRequested, series: Mapping[SeriesRole, SeriesInstances]
                  ) -> events_pb2.StudyReady:
        """The StudyReady that asks for this follow-up's comparison, kept to ask for it again later."""
        uids = {role.value: [str(h.SOPInstanceUID) for h in s.headers] for role, s in series.items()}
        return events_pb2.StudyReady(
            schema_version=topics.SCHEMA_VERSION, study=task.study, pipeline=task.pipeline,
            series=task.longitudinal.series, input_hash=input_hash(uids, change_model(task.pipeline)),
            priority=task.priority)

    def _write_report(self, task: tasks_pb2.TaskRequested, section: dict[str, Any], *, warnings: list[str],
                      outputs: list[str], timings: dict[str, float] | None = None) -> Path:
        out_dir = self._settings.reports_dir / task.study.study_key / task.workflow_id
        out_dir.mkdir(parents=True, exist_ok=True)
        report = {"study_key": task.study.study_key, "study_instance_uid": task.study.study_instance_uid,
                  "pipeline": task.pipeline, "workflow_id": task.workflow_id, "longitudinal": section,
                  "warnings": warnings, "outputs": outputs, "timings_s": timings or {},
                  "disclaimer": "AI output for review by a radiologist; not a diagnosis."}
        path = out_dir / "report.json"
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(report, indent=2, sort_keys=True))
        partial.replace(path)  # a reader never sees half a report
        return path


def _timepoint(study_uid: str, series: Mapping[SeriesRole, SeriesInstances], source: DicomSource) -> Timepoint:
    instances = {role: source.read_instances(s) for role, s in series.items()}
    head = next(iter(next(iter(series.values())).headers), None) if series else None
    return Timepoint(study_instance_uid=study_uid, study_date=str(head.get("StudyDate", "")) if head else "",
                     study_time=str(head.get("StudyTime", "")) if head else "", instances=instances,
                     volumes={role: s.volume for role, s in series.items() if s.volume})


def _site(task: tasks_pb2.TaskRequested) -> str:
    return task.study.site or metrics.UNKNOWN


class PriorWaitSweeper:
    """Asks for the run without a prior of every follow-up whose wait has ended (a StudyReady with
    ``prior_wait_expired``). Each expired wait is claimed by exactly one sweeper (see TimepointStore)."""

    def __init__(self, timepoints: TimepointStore, bus: MessageBus) -> None:
        self._timepoints = timepoints
        self._bus = bus

    def sweep(self, now: float | None = None) -> list[events_pb2.StudyReady]:
        published = []
        for expired in self._timepoints.claim_expired(time.time() if now is None else now):
            again = rerun_ready(events_pb2.StudyReady.FromString(expired.ready), expired=True)
            try:
                self._bus.publish(topics.STUDY_READY, again.study.study_key, again.SerializeToString())
            except Exception:
                # The bus is away: the wait goes back to WAITING (its deadline passed), so the next sweep
                # asks again rather than losing the run without a prior.
                self._timepoints.record(replace(expired, state=TimepointState.WAITING))
                raise
            log.info("study %s: the wait for a %s prior ended: asked for the run without one",
                     again.study.study_key, again.pipeline)
            published.append(again)
        return published


class LongitudinalService:
    """``neuroflow serve longitudinal``: the stage worker, and beside it the sweeper of ended waits."""

    def __init__(self, worker: StageWorker, sweeper: PriorWaitSweeper, *, interval_s: float) -> None:
        self._worker = worker
        self._sweeper = sweeper
        self._interval_s = interval_s
        self._stop = threading.Event()

    @property
    def worker(self) -> StageWorker:
        return self._worker

    def run(self) -> None:
        sweeping = threading.Thread(target=self._sweep_until_stopped, name="prior-wait-sweeper", daemon=True)
        sweeping.start()
        try:
            self._worker.run()
        finally:
            self._stop.set()
            sweeping.join()

    def stop(self) -> None:
        self._stop.set()
        self._worker.stop()

    def _sweep_until_stopped(self) -> None:
        while not self._stop.is_set():
            try:
                self._sweeper.sweep()
                health.beat("prior-wait-sweeper", pause_s=self._interval_s)
            except Exception:  # the database or the bus away: try again at the next interval
                log.exception("prior-wait sweep failed; again in %.0f s", self._interval_s)
            self._stop.wait(self._interval_s)
