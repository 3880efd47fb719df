"""The ingest service: follows a site Orthanc's change feed, decides when a study is complete (the wait
window: no new instance for N seconds), routes it, and publishes one StudyReady per study version and
pipeline, or a RoutingFailed with a reason a person can act on.

Several replicas may run at once; the window state lives in a shared WindowStore (see window_store),
so exactly one of them hands each study version on. Series that arrive after a study was handed on
make it due again: the new StudyReady carries a new input hash only for the pipelines whose inputs
changed, and the orchestrator ignores one whose input hash it has already run.

The change feed's cursor never passes an instance ingest could not look at: only Orthanc's 404 (the instance
was deleted since) lets it move on; Orthanc away or failing stops the read there, and the loop retries with
backoff, so no study is lost to an outage."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from neuroflow.core import health, metrics, topics
from neuroflow.core.audit import AuditAction, AuditStatements
from neuroflow.core.bus import MessageBus
from neuroflow.core.config import (
    CHANGE_PIPELINES,
    GLIOMA_PIPELINE,
    GLIOMA_POSTOP_PIPELINE,
    PIPELINE_VARIANT_OF,
    ClassifySettings,
)
from neuroflow.core.dicom_io import StudyIndex, series_volume, study_key
from neuroflow.core.errors import OrthancRequestFailed
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER, input_hash, patient_key
from neuroflow.core.model_card import ModelRef
from neuroflow.core.orthanc import OrthancClient, OrthancDicomSource
from neuroflow.core.patient_id import PatientIdentity
from neuroflow.core.sequence_subsets import PipelineInputs
from neuroflow.core.state_schedules import replica_name
from neuroflow.core.sub_series import volume_identity
from neuroflow.ingest.classify import classify_study
from neuroflow.ingest.postoperative import prior_tumour_in_orthanc, study_moment
from neuroflow.ingest.routing import route_study
from neuroflow.ingest.site_rules import SiteRules
from neuroflow.ingest.window_store import Claim, WindowStore
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2

log = logging.getLogger(__name__)

_INSTANCE_CHANGES = {"NewInstance", "UpdatedAttachment"}
_URGENT_WORDS = ("STAT", "URGENT", "EMERGENCY", "STROKE", "TRAUMA")
# Studies this replica handed on, remembered (oldest forgotten first) to tell a late series from a new study
# in the metrics. Another replica's hand-ons are not known here: the metrics of the replicas add up.
_REMEMBERED_HAND_ONS = 10_000
# Orthanc's answers that say who asks may not do this (no credentials, or no right): no retry soon changes them.
_REFUSED_STATUSES = (401, 403)


@dataclass
class IngestSettings:
    site: str
    pipelines: Sequence[str]
    models: dict[str, ModelRef]  # pipeline -> segmentation model, part of each input hash
    wait_window_s: float
    lease_s: float = 120.0
    poll_interval_s: float = 0.5
    retry_backoff_max_s: float = 30.0  # a failing loop waits poll_interval_s, doubled per failure, up to this
    feed: str = "orthanc"
    classify: ClassifySettings = field(default_factory=ClassifySettings)  # confidence floor, ambiguity margin
    # pipeline -> the roles it takes and needs (routing.pipeline_inputs of the model cards); unset: all required
    inputs: dict[str, PipelineInputs] = field(default_factory=dict)
    holder: str = field(default_factory=lambda: f"ingest-{uuid.uuid4().hex[:8]}")


@dataclass
class IngestCounters:
    """What happened, for the log and for metrics."""

    changes: int = 0
    triggers: int = 0
    studies_ready: int = 0
    routing_failed: int = 0


class IngestService:
    def __init__(self, client: OrthancClient, windows: WindowStore, bus: MessageBus, settings: IngestSettings,
                 rules: SiteRules | None = None, audit: AuditStatements | None = None) -> None:
        self._client = client
        # The state database's audit trail (core/audit.py): each hand-on and routing failure, as this replica.
        self._audit = audit
        self._actor = f"ingest/{replica_name()}"
        self._source = OrthancDicomSource(client)
        self._windows = windows
        self._bus = bus
        self._settings = settings
        self._rules = rules
        # Orthanc series id -> Orthanc study id, or None for neuroflow's own results (not images to wait for).
        self._series_study: dict[str, str | None] = {}
        self._since = windows.cursor(settings.feed)
        if self._since == 0:
            # First start at this site: follow from now on. The studies Orthanc already holds were
            # either processed before neuroflow or are re-sent on purpose (which makes new changes).
            self._since = int(client.get_json("/changes?last", what="read the change feed")["Last"])
            windows.advance_cursor(settings.feed, self._since)
        self.counters = IngestCounters()
        self._stopped = threading.Event()
        self._last_instance_at: dict[str, float] = {}  # Orthanc study id -> when its newest instance was seen
        self._handed_on: OrderedDict[str, None] = OrderedDict()
        self._failures_in_a_row = 0

    def poll_changes(self, now: float | None = None, limit: int = 1000) -> int:
        """Read the change feed to its end; record a change for each study that received an instance.

        An instance that cannot be looked up (Orthanc unreachable, timing out, failing) stops the read: the
        cursor is left just before it, so the next read starts there, and the error is raised for the loop to
        retry. Only an instance Orthanc says is gone (404) is passed over."""
        seen = 0
        while True:
            changes, last, done = self._client.changes(self._since, limit)
            at = time.time() if now is None else now
            for change in changes:
                if change.change_type in _INSTANCE_CHANGES and change.resource_type == "Instance":
                    try:
                        study = self._study_of_instance(change.resource_id)
                    except Exception:
                        metrics.FEED_LOOKUP_FAILURES.labels(self._settings.site).inc()
                        log.warning("could not look up instance %s (change %d) from the change feed: the feed "
                                    "waits at it until Orthanc answers", change.resource_id, change.seq)
                        self._advance(change.seq - 1)
                        self.counters.changes += seen
                        raise
                    if study is not None:
                        self._windows.touch(study, change.seq, at)
                        if study not in self._last_instance_at and study not in self._handed_on:
                            metrics.STUDIES_RECEIVED.labels(self._settings.site).inc()
                        self._last_instance_at[study] = at
                seen += 1
            self._advance(last)
            if done or not changes:
                break
        self.counters.changes += seen
        return seen

    def trigger_due(self, now: float | None = None) -> list[events_pb2.StudyReady]:
        """Hand on every study quiet for the wait window: StudyReady per qualifying pipeline,
        RoutingFailed per pipeline it does not qualify for."""
        at = time.time() if now is None else now
        published: list[events_pb2.StudyReady] = []
        s = self._settings
        for claim in self._windows.claim_due(at, s.wait_window_s, s.holder, s.lease_s):
            try:
                published.extend(self._hand_on(claim))
            except OrthancRequestFailed as exc:
                if exc.status not in _REFUSED_STATUSES:
                    self._windows.release(claim)
                    log.exception("could not hand on Orthanc study %s; will retry", claim.resource_id)
                    continue
                # Credentials or a right missing: configuration, not an outage, so retrying at the next tick only
                # spins (every try reads the study again). The claim is kept until its lease runs out: the study
                # stays due, is tried once per lease, and goes on by itself once the right is granted.
                metrics.ORTHANC_REFUSALS.labels(s.site).inc()
                log.error("Orthanc refused ingest while handing on study %s (%s): ingest's Orthanc user lacks a "
                          "right (neuroflow.core.orthanc_rights; the chart's files/orthanc-rights.json). The study "
                          "waits and is tried again in %.0f s", claim.resource_id, exc, s.lease_s)
                continue
            except Exception:
                # Orthanc or the bus failed: leave the study due, the next tick (here or elsewhere) retries.
                self._windows.release(claim)
                log.exception("could not hand on Orthanc study %s; will retry", claim.resource_id)
                continue
            self._windows.complete(claim)
            self.counters.triggers += 1
            self._observe_trigger(claim.resource_id, at)
        return published

    def run(self) -> None:
        """Follow the feed and trigger until ``stop()``; errors (Orthanc, the bus, the database away)
        are logged and retried with backoff (``retry_delay_s``), never fatal."""
        log.info("ingest %s following site %s, wait window %.0f s", self._settings.holder, self._settings.site,
                 self._settings.wait_window_s)
        while not self._stopped.is_set():
            try:
                self.poll_changes()
                self.trigger_due()
                health.beat("ingest")
                self._failures_in_a_row = 0
            except Exception:
                self._failures_in_a_row += 1
                log.exception("ingest loop failed (%d in a row); retrying in %.1f s", self._failures_in_a_row,
                              self.retry_delay_s())
            self._stopped.wait(self.retry_delay_s())

    def stop(self) -> None:
        self._stopped.set()

    def retry_delay_s(self) -> float:
        """The wait before the loop's next round: the poll interval, doubled per failure in a row up to
        ``retry_backoff_max_s`` (an Orthanc that is down is not hammered; one that is back is soon read)."""
        s = self._settings
        if self._failures_in_a_row == 0:
            return s.poll_interval_s
        return float(min(s.retry_backoff_max_s, s.poll_interval_s * 2 ** min(self._failures_in_a_row, 30)))

    def _advance(self, seq: int) -> None:
        """Move the cursor to ``seq`` (every change up to it handled), never back."""
        if seq > self._since:
            self._since = seq
            self._windows.advance_cursor(self._settings.feed, seq)

    def _observe_trigger(self, study: str, at: float) -> None:
        """Metrics of one hand-on: a trigger, a re-trigger when this replica handed the study on before
        (a late series), and the time since its last instance when this replica saw that instance."""
        site = self._settings.site
        metrics.WAIT_WINDOW_TRIGGERS.labels(site).inc()
        if study in self._handed_on:
            metrics.LATE_SERIES_RETRIGGERS.labels(site).inc()
        last = self._last_instance_at.pop(study, None)
        if last is not None:
            metrics.LAST_INSTANCE_TO_TRIGGER.labels(site).observe(max(0.0, at - last))
        self._handed_on[study] = None
        self._handed_on.move_to_end(study)
        while len(self._handed_on) > _REMEMBERED_HAND_ONS:
            self._handed_on.popitem(last=False)

    def _study_of_instance(self, instance_id: str) -> str | None:
        """The Orthanc study of the instance; None for neuroflow's own results and for an instance (or its
        series) deleted since (Orthanc's feed outlives its resources: nothing to wait for). Any other failure
        raises: it says nothing about whether the instance exists."""
        instance = self._client.get_json_unless_gone(f"/instances/{instance_id}", what="look up an instance")
        if instance is None:
            log.info("instance %s from the change feed is gone (deleted since)", instance_id)
            return None
        series = str(instance["ParentSeries"])
        if series not in self._series_study:
            info = self._client.get_json_unless_gone(f"/series/{series}", what="look up a series")
            if info is None:
                log.info("series %s from the change feed is gone (deleted since)", series)
                return None
            ours = info.get("MainDicomTags", {}).get("Manufacturer") == NEUROFLOW_MANUFACTURER
            self._series_study[series] = None if ours else str(info["ParentStudy"])
        return self._series_study[series]

    def _hand_on(self, claim: Claim) -> list[events_pb2.StudyReady]:
        tags = self._client.get_json(f"/studies/{claim.resource_id}", what="read a study")["MainDicomTags"]
        uid = str(tags["StudyInstanceUID"])
        study, _skipped = self._source.index_study(uid)
        if study is None:
            log.warning("study %s left Orthanc before its wait window closed", study_key(uid))
            return []
        ref = self._study_ref(study, tags)
        classified = classify_study(list(study.series.values()), rules=self._rules, policy=self._settings.classify)
        modalities = sorted({str(h.get("Modality", "")) for s in study.series.values() for h in s.headers[:1]})
        study_tags = {k: str(v) for k, v in tags.items()}
        study_tags["ModalitiesInStudy"] = "\\".join(m for m in modalities if m)
        # A prior with tumour makes a glioma study post-operative (glioma_postop): asked only where glioma is on.
        prior = prior_tumour_in_orthanc(
            self._client, PatientIdentity.of_study(study), uid,
            study_moment(tags.get("StudyDate", ""), tags.get("StudyTime", ""))) \
            if GLIOMA_PIPELINE in self._settings.pipelines else None
        outcome = route_study(classified, self._settings.pipelines, study_key=ref.study_key, rules=self._rules,
                              study_tags=study_tags, policy=self._settings.classify, inputs=self._settings.inputs,
                              prior=prior)
        if outcome.not_routed and not outcome.routes and not outcome.refusals:
            self._publish_failure(ref, "", events_pb2.RoutingFailed.NO_PIPELINE,
                                  "the site's routing rules send this study to no pipeline: "
                                  + "; ".join(outcome.not_routed.values()))
        for pipeline, reason in outcome.refusals.items():
            if pipeline in CHANGE_PIPELINES and outcome.routes:
                # A change pipeline compares the studies that qualify for it (MS: FLAIR; haematoma: CT); an MR
                # study is no failure of the haematoma pipeline. Said only when the study goes nowhere.
                log.info("study %s: not for %s: %s", ref.study_key, pipeline, reason)
                continue
            self._publish_failure(ref, pipeline, events_pb2.RoutingFailed.MISSING_SEQUENCE, reason)
        for pipeline, reason in outcome.ambiguous.items():
            # Never skipped like a missing role: the study has what the pipeline needs, a person must say which.
            self._publish_failure(ref, pipeline, events_pb2.RoutingFailed.AMBIGUOUS_ROLE, reason)
        if not self._settings.pipelines:
            self._publish_failure(ref, "", events_pb2.RoutingFailed.NO_PIPELINE,
                                  f"site {self._settings.site} enables no pipeline")
        priority = _priority(tags)
        out: list[events_pb2.StudyReady] = []
        for route in outcome.routes:
            series = [common_pb2.SeriesRef(series_instance_uid=c.series_instance_uid, role=role.value,
                                           description=c.description, instance_count=c.instance_count)
                      for role, c in route.inputs.items()]
            uids = {role.value: [*(str(h.SOPInstanceUID) for h in series_volume(study, c.series_instance_uid).headers),
                                 *volume_identity(c.series_instance_uid)]
                    for role, c in route.inputs.items()}
            ready = events_pb2.StudyReady(
                schema_version=topics.SCHEMA_VERSION, study=ref, pipeline=route.pipeline, series=series,
                input_hash=input_hash(uids, self._model_of(route.pipeline)), study_version=claim.seq,
                priority=priority, ready_at=_timestamp(),
                # A post-operative study's prior with tumour: its tumour locates the resection cavity.
                baseline_study_instance_uid=prior.study_instance_uid
                if prior is not None and route.pipeline == GLIOMA_POSTOP_PIPELINE else "",
            )
            self._bus.publish(topics.STUDY_READY, ref.study_key, ready.SerializeToString())
            if self._audit is not None:
                self._audit.audit_append(ref.study_key, AuditAction.HANDED_ON, {
                    "pipeline": route.pipeline, "input_hash": ready.input_hash, "study_version": claim.seq,
                    "roles": {s.role: s.instance_count for s in series},
                    # why a glioma study went to glioma_postop (the descriptions that said so), for whoever asks
                    **({"postoperative": outcome.postoperative} if route.pipeline == GLIOMA_POSTOP_PIPELINE
                       else {})}, actor=self._actor)
            self.counters.studies_ready += 1
            metrics.STUDIES_ROUTED.labels(self._settings.site, route.pipeline).inc()
            log.info("study %s ready for %s (version %d)%s", ref.study_key, route.pipeline, claim.seq,
                     f", {len(outcome.postoperative)} line(s) of post-operative evidence in the audit"
                     if route.pipeline == GLIOMA_POSTOP_PIPELINE else "")
            out.append(ready)
        return out

    def _model_of(self, pipeline: str) -> ModelRef:
        """The model that is part of ``pipeline``'s input hash; a variant (glioma_postop) without a model of its
        own in the settings runs the model of the pipeline it stands in for."""
        models = self._settings.models
        return models[pipeline] if pipeline in models else models[PIPELINE_VARIANT_OF.get(pipeline, pipeline)]

    def _study_ref(self, study: StudyIndex, tags: dict[str, str]) -> common_pb2.StudyRef:
        return common_pb2.StudyRef(
            study_instance_uid=study.study_instance_uid, study_key=study_key(study.study_instance_uid),
            patient_key=patient_key(study.patient_id) or "", site=self._settings.site,
            accession=str(tags.get("AccessionNumber", "")),
        )

    def _publish_failure(self, ref: common_pb2.StudyRef, pipeline: str,
                         reason: events_pb2.RoutingFailed.Reason.ValueType, message: str) -> None:
        failed = events_pb2.RoutingFailed(schema_version=topics.SCHEMA_VERSION, study=ref, reason=reason,
                                          message=message, pipeline=pipeline, failed_at=_timestamp())
        self._bus.publish(topics.ROUTING_FAILED, ref.study_key, failed.SerializeToString())
        if self._audit is not None:  # the code, not the message: a person reads that from the event
            self._audit.audit_append(ref.study_key, AuditAction.ROUTING_FAILED, {
                "pipeline": pipeline, "reason": events_pb2.RoutingFailed.Reason.Name(reason)}, actor=self._actor)
        self.counters.routing_failed += 1
        metrics.ROUTING_FAILURES.labels(self._settings.site, pipeline or metrics.UNKNOWN,
                                        events_pb2.RoutingFailed.Reason.Name(reason)).inc()
        log.warning("study %s not routed to %s: %s", ref.study_key, pipeline or "any pipeline", message)


def _priority(tags: dict[str, str]) -> common_pb2.Priority.ValueType:
    """Urgent when the order says so in the study description (STAT, stroke, trauma...), else routine."""
    text = str(tags.get("StudyDescription", "")).upper()
    return common_pb2.PRIORITY_URGENT if any(w in text for w in _URGENT_WORDS) else common_pb2.PRIORITY_ROUTINE


def _timestamp() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts
