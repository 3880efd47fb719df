"""The results stage as a task handler of the distributed runtime: the label map in; the result objects
(``glioma_objects``: SEG, SR, colour overlays on T1CE and FLAIR, or the notice when no tumour was found)
stored in the site's sink, the study report written, RESULTS_STORED published. The orchestrator then
schedules their delivery to the destination PACS (the outbox, ``core.delivery``), retried for hours if need
be, so a PACS outage never fails this task. The objects are built with the same input hash as the
embedded runtime (``core.identity.input_hash`` of the series' SOP Instance UIDs and the model), so a retry
or a redelivery makes the same SOP Instance UID and the PACS replaces rather than duplicates.

A result from other inputs than the study's earlier glioma result (a new model, a re-sent series) is the
next version, as in the embedded runtime: its SR names the earlier SR (found among the study's objects in
the source, where this stage stored it) as predecessor, and its series say "v2".

A task with ``ResultsInput.failure`` (the orchestrator's, for a workflow that failed) files the failure
notice instead (``results/notice.py``: an SR and one Secondary Capture image, the same the embedded run
writes), filed under the study of the routed series."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom

from neuroflow.core import topics
from neuroflow.core.atlas import TEMPLATES, locations, transform_of
from neuroflow.core.bus import MessageBus
from neuroflow.core.config import METASTASES_PIPELINE, ResultObjectSettings
from neuroflow.core.dead_letter import now_timestamp
from neuroflow.core.dicom_io import DicomSink, DicomSource, Forwarder, find_series
from neuroflow.core.errors import MissingSequence, SeriesRejected
from neuroflow.core.handoff import CavityFinding, PreprocessSummary, ReviewSummary
from neuroflow.core.identity import input_hash
from neuroflow.core.lesions import LESION_THRESHOLD, MIN_LESION_MM3, lesions_on
from neuroflow.core.model_card import ModelRef
from neuroflow.core.non_image import SetAside
from neuroflow.core.roles import GLIOMA_REFERENCE_ORDER, METASTASES_INPUT_ROLES, SeriesRole
from neuroflow.core.sequence_subsets import glioma_reference_role
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume_members import volume_instances
from neuroflow.core.volume_store import VolumeStore
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2
from neuroflow.results.glioma_results import (
    earlier_result,
    glioma_objects,
    glioma_report,
    latest_glioma_sr,
    preprocessing_checks,
    registration_warnings,
)
from neuroflow.results.metastases_results import metastases_objects, metastases_review, metastases_section
from neuroflow.results.notice import failure_hash, notice_objects, notice_of
from neuroflow.results.postop_results import postoperative_section
from neuroflow.results.report import (
    ReportStatus,
    SeriesEntry,
    StudyReport,
    TumourVolumes,
    write_report,
    write_summary,
)

log = logging.getLogger(__name__)


class ResultsHandler:
    """``TaskRequested`` (stage results) -> ``ResultsOutput``. Writes ``report.json`` and ``summary.txt``
    to ``reports_dir/<study_key>/<workflow_id>/``."""

    def __init__(
        self,
        source: DicomSource,
        sink: DicomSink,
        volumes: VolumeStore,
        bus: MessageBus,
        reports_dir: Path,
        objects: ResultObjectSettings | None = None,
        *,
        atlas_dir: Path = TEMPLATES,
    ) -> None:
        self._objects = objects or ResultObjectSettings()
        self._atlas_dir = atlas_dir  # where the metastases' locations are read (LongitudinalSettings.atlas_dir)
        self._source = source
        self._sink = sink
        self._volumes = volumes
        self._bus = bus
        self._reports_dir = reports_dir

    def __call__(self, task: tasks_pb2.TaskRequested) -> tasks_pb2.ResultsOutput:
        if task.results.HasField("failure"):
            return self._file_notice(task)
        if task.pipeline == METASTASES_PIPELINE:
            return self._metastases(task)
        key_of_study, request = task.study.study_key, task.results
        started = time.perf_counter()
        labels = self._volumes.get_ref(request.label_map)
        summary = PreprocessSummary.of(labels)
        set_aside: list[str] = []
        others: list[SetAside] = []  # the study's non-image objects: the earlier results among them
        series = find_series(self._source, task.study, request.referenced_series, stage="results", notes=set_aside,
                             set_aside=others)
        try:  # the series preprocessing registered onto, chosen the same way (core/sequence_subsets.py)
            reference_role = glioma_reference_role(series)
        except ValueError:
            raise MissingSequence(
                key_of_study, f"the SEG is drawn on one of the {', '.join(GLIOMA_REFERENCE_ORDER)} series, none of "
                              f"which is among the referenced series {sorted(series)}", stage="results") from None
        model = ModelRef(name=request.model.name, version=request.model.version)
        uids = {role.value: [str(h.SOPInstanceUID) for h in s.headers] for role, s in series.items()}
        # The reference series is drawn on (SEG, overlay), FLAIR too when routed (overlay).
        drawn = {role: self._source.read_instances(series[role]) for role in (reference_role, SeriesRole.FLAIR)
                 if role in series}
        key = input_hash(uids, model)
        volumes = TumourVolumes.from_label_map(labels)
        cavity = CavityFinding.of(labels)  # glioma_postop: the segmentation stage carved the cavity in
        warnings = set_aside + registration_warnings(summary)
        if not volumes.tumour_detected:
            warnings.append("no tumour detected: no DICOM SEG written")
        earlier = earlier_result(latest_glioma_sr([h for item in others for h in item.headers], self._objects),
                                 study_instance_uid=task.study.study_instance_uid, input_hash=key,
                                 objects=self._objects)
        if earlier is not None and not earlier.same_input:
            warnings.append(f"this result replaces an earlier one (version {earlier.version}) from other inputs")
        timings = {**summary.timings_s, "write_results": round(time.perf_counter() - started, 3)}
        report = glioma_report(task.study.study_instance_uid, key_of_study, task.pipeline, summary, volumes=volumes,
                               model=model, series=series_entries(request.referenced_series), timings=timings,
                               warnings=warnings, outputs=["report.json", "summary.txt"],
                               roles_used=set(series), review=ReviewSummary.of(labels),
                               postoperative=None if cavity is None else postoperative_section(labels, cavity))
        datasets = glioma_objects(report, labels, drawn, input_hash=key, objects=self._objects, study_key=key_of_study,
                                  volumes_of={role: series[role].volume for role in drawn}, earlier=earlier)
        return self._store(task, report, datasets)

    def _metastases(self, task: tasks_pb2.TaskRequested) -> tasks_pb2.ResultsOutput:
        """The metastases result: the probability the segmentation stage stored, split into lesions on the
        routed T1CE's own grid, and the objects and report the embedded runtime writes."""
        key_of_study, request = task.study.study_key, task.results
        started = time.perf_counter()
        probability = self._volumes.get_ref(request.label_map)
        summary = PreprocessSummary.of(probability)
        set_aside: list[str] = []
        series = find_series(self._source, task.study, request.referenced_series, stage="results", notes=set_aside)
        if SeriesRole.T1CE not in series:
            raise MissingSequence(key_of_study, f"the metastases are drawn on the T1CE, which is not among the "
                                                f"referenced series {sorted(series)}", stage="results")
        model = ModelRef(name=request.model.name, version=request.model.version)
        key = input_hash({role.value: [str(h.SOPInstanceUID) for h in s.headers] for role, s in series.items()}, model)
        t1ce = volume_instances(self._source.read_instances(series[SeriesRole.T1CE]), study_key=key_of_study,
                                volume=series[SeriesRole.T1CE].volume)
        t1ce_image = series_to_volume(t1ce, study_key=key_of_study)
        lesions = lesions_on(probability, t1ce_image.geometry)
        warnings = set_aside + registration_warnings(summary)
        if not lesions.count:
            warnings.append("no metastasis detected: no SEG or RTSTRUCT written")
        # The segmentation stage registered the brain onto the atlas template (this stage has no brain mask).
        transform = transform_of(probability)
        named = None if transform is None else locations(transform, [m.centroid_mm for m in lesions.lesions],
                                                         self._atlas_dir)
        if transform is None and lesions.count:
            warnings.append("the segmentation stage attached no atlas registration: lesions are not located")
        timings = {**summary.timings_s, "write_results": round(time.perf_counter() - started, 3)}
        report = StudyReport(
            study_instance_uid=task.study.study_instance_uid, study_key=key_of_study, pipeline=task.pipeline,
            status=ReportStatus.SUCCEEDED, series=series_entries(request.referenced_series), timings_s=timings,
            model=model, **preprocessing_checks(summary),
            metastases=(section := metastases_section(lesions, threshold=LESION_THRESHOLD,
                                                      min_volume_mm3=MIN_LESION_MM3, locations=named)),
            review=metastases_review(model, section),
            sequences_missing=[r for r in METASTASES_INPUT_ROLES if r not in series], warnings=warnings,
            outputs=["report.json", "summary.txt"])
        datasets = metastases_objects(report, lesions.labels, t1ce_image, t1ce, input_hash=key, objects=self._objects)
        return self._store(task, report, datasets)

    def _file_notice(self, task: tasks_pb2.TaskRequested) -> tasks_pb2.ResultsOutput:
        """The failure notice of a failed workflow, stored (and reported) like a result, filed under an instance
        of a routed series (else of any series of the study). Refuses (SeriesRejected) when nothing of the study
        is left in the source. The study is not checked against the input limits again: a study refused for
        its size gets its notice too."""
        request, failure = task.results, task.results.failure
        refs = list(request.referenced_series)
        held, _skipped = self._source.index_study(task.study.study_instance_uid)
        routed = {ref.series_instance_uid for ref in refs}
        candidates = sorted(held.series.values() if held else [], key=lambda s: s.series_instance_uid not in routed)
        evidence = [s.headers[0] for s in candidates if s.headers][:1]
        if not evidence:
            raise SeriesRejected(task.study.study_key, "no instance of the study is left in the DICOM source to file "
                                 "the failure notice under", stage="results")
        report = StudyReport(
            study_instance_uid=task.study.study_instance_uid, study_key=task.study.study_key,
            pipeline=task.pipeline, status=ReportStatus.FAILED, series=series_entries(refs),
            errors=[failure.reason if failure.failed_stage in failure.reason  # it names the stage itself
                    else f"{failure.failed_stage}: {failure.reason}"], retryable=failure.retryable,
            outputs=["report.json", "summary.txt"])
        notice = notice_of(report)
        assert notice is not None  # a failed report always calls for one
        datasets = notice_objects(report, notice, evidence, input_hash=failure_hash(report), objects=self._objects)
        return self._store(task, report, datasets)

    def _store(self, task: tasks_pb2.TaskRequested, report: StudyReport,
               datasets: dict[str, list[pydicom.Dataset]]) -> tasks_pb2.ResultsOutput:
        """Store ``datasets`` in the sink, write the report and publish RESULTS_STORED."""
        key_of_study, request = task.study.study_key, task.results
        stored = [self._sink.store(ds) for name in sorted(datasets) for ds in datasets[name]]
        if request.destination and not isinstance(self._sink, Forwarder):
            report = report.model_copy(update={"warnings": [
                *report.warnings, f"the sink cannot forward: results stored, not sent to {request.destination}"]})
        out_dir = self._reports_dir / key_of_study / task.workflow_id
        out_dir.mkdir(parents=True, exist_ok=True)
        write_summary(report, out_dir)
        write_report(report, out_dir)
        destination = request.destination or "sink"
        event = events_pb2.ResultsStored(
            schema_version=topics.SCHEMA_VERSION, study=task.study, pipeline=task.pipeline,
            workflow_id=task.workflow_id, sop_instance_uids=stored, destination=destination, model=request.model,
            stored_at=now_timestamp())
        self._bus.publish(topics.RESULTS_STORED, key_of_study, event.SerializeToString())
        log.info("study %s: results of workflow %s: %d object(s) stored, report in %s", key_of_study, task.workflow_id,
                 len(stored), out_dir)
        return tasks_pb2.ResultsOutput(sop_instance_uids=stored, destination=request.destination)


def series_entries(refs: Sequence[common_pb2.SeriesRef]) -> list[SeriesEntry]:
    """The report's series list from the routed series. Routing chose each role; its confidence is not
    carried in StudyReady, so the entries say routing decided (confidence 1.0: the role was assigned)."""
    return [SeriesEntry(series_instance_uid=ref.series_instance_uid, description=ref.description,
                        role=SeriesRole(ref.role), confidence=1.0, reasons=["role assigned by routing"],
                        used_as=SeriesRole(ref.role))
            for ref in refs]


