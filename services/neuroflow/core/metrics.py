"""Every Prometheus metric neuroflow exposes, defined once: names, help texts and label sets.

Services record through the objects here and nothing else defines a metric, so the alert rules and
dashboards in ``deploy/`` can be checked against this module (``exposed_names``).

Label values are bounded: a site, a pipeline, a stage, a reason code (an enum name), a storage role, a
Kafka group or topic, a model name, a kind of retained data (``RETENTION_KINDS``).
Never a patient, a study, a series or a workflow: such a label would
both leak identifiers into monitoring and grow without bound. ``ALLOWED_LABELS`` is the whole list, and
importing this module checks every metric against it. Every metric has at least one label, so a process
exports only what it recorded (an unlabelled gauge would read 0 in every process that imports this).

``start_metrics_server(port, host)`` exposes the process's metrics (``NeuroflowSettings.metrics_port``,
0: not exposed), beside its health endpoints /healthz and /readyz (core/status_server)."""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from neuroflow.core.config import HealthSettings, MetricsAccessSettings
from neuroflow.core.status_server import MetricsAccess, start_status_server

log = logging.getLogger(__name__)

ALLOWED_LABELS = frozenset({"site", "pipeline", "stage", "reason", "path_role", "group", "topic", "model",
                            "kind", "decision"})
UNKNOWN = "unknown"  # the label value when a message did not say (an undecodable task has no pipeline)

# Seconds. Stage work runs from under a second (results) to tens of minutes (a CPU-only segmentation).
_STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# The wait window is minutes; a trigger long after the last instance means ingest is behind.
_TRIGGER_BUCKETS = (10, 30, 60, 90, 120, 150, 180, 240, 300, 600, 1200, 3600)
# Last instance to result in PACS: the radiologist's wait. Sites target 5 to 15 minutes.
_END_TO_END_BUCKETS = (60, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600, 7200)

_STAGE = ("site", "pipeline", "stage")
_STAGE_REASON = (*_STAGE, "reason")

# -- stage work (workers and orchestrator) ------------------------------------------------------------
TASKS_STARTED = Counter("neuroflow_stage_tasks_started", "Stage tasks whose handler started", _STAGE)
TASKS_SUCCEEDED = Counter("neuroflow_stage_tasks_succeeded", "Stage tasks answered with TaskDone", _STAGE)
TASKS_FAILED = Counter("neuroflow_stage_tasks_failed",
                       "Stage tasks answered with TaskFailed, by FailureReason code", _STAGE_REASON)
TASKS_RETRIED = Counter("neuroflow_stage_tasks_retried",
                        "Failed stage tasks the orchestrator scheduled again, by FailureReason code", _STAGE_REASON)
TASKS_DEAD_LETTERED = Counter("neuroflow_stage_tasks_dead_lettered",
                              "Tasks or messages parked on a dead-letter topic, by FailureReason code", _STAGE_REASON)
TASK_DURATION = Histogram("neuroflow_stage_task_duration_seconds", "Time a stage handler took for one task",
                          _STAGE, buckets=_STAGE_BUCKETS)
TASKS_IN_FLIGHT = Gauge("neuroflow_stage_tasks_in_flight", "Stage tasks whose handler is running now", _STAGE)

# -- ingest -------------------------------------------------------------------------------------------
STUDIES_RECEIVED = Counter("neuroflow_ingest_studies_received",
                           "Studies whose first instance this ingest saw", ("site",))
WAIT_WINDOW_TRIGGERS = Counter("neuroflow_ingest_wait_window_triggers",
                               "Study versions handed on after their wait window closed", ("site",))
LATE_SERIES_RETRIGGERS = Counter("neuroflow_ingest_late_series_retriggers",
                                 "Studies handed on again because instances arrived after a trigger", ("site",))
LAST_INSTANCE_TO_TRIGGER = Histogram("neuroflow_ingest_last_instance_to_trigger_seconds",
                                     "From the study's last instance seen to its hand-on", ("site",),
                                     buckets=_TRIGGER_BUCKETS)
FEED_LOOKUP_FAILURES = Counter("neuroflow_ingest_feed_lookup_failures",
                               "Change-feed reads stopped at an instance that could not be looked up (Orthanc "
                               "unreachable or failing); the cursor stays before it", ("site",))
ORTHANC_REFUSALS = Counter("neuroflow_ingest_orthanc_refusals",
                           "Hand-ons Orthanc refused (HTTP 401/403: ingest's user lacks credentials or a right); "
                           "the study stays due and is tried again once per claim lease", ("site",))
ROUTING_FAILURES = Counter("neuroflow_ingest_routing_failures",
                           "RoutingFailed events, by RoutingFailed.Reason", ("site", "pipeline", "reason"))
STUDIES_ROUTED = Counter("neuroflow_ingest_studies_routed", "StudyReady events published, by pipeline",
                         ("site", "pipeline"))

# -- end to end (orchestrator) ------------------------------------------------------------------------
END_TO_END = Histogram("neuroflow_end_to_end_seconds",
                       "From the study's last instance (trigger time less the wait window) to its results "
                       "stored", ("site", "pipeline"), buckets=_END_TO_END_BUCKETS)
RESULTS_DELIVERED = Counter("neuroflow_results_delivered", "Workflows that stored their results",
                            ("site", "pipeline"))
# -- failure flag of the segmentations (segmentation service; the embedded runtime records them too) --------
REVIEWS_ASSESSED = Counter("neuroflow_segmentation_reviews",
                           "Segmentations assessed for review (the failure flag), by model (name/version)",
                           ("site", "pipeline", "model"))
REVIEW_FLAGS = Counter("neuroflow_segmentation_review_flags",
                       "Segmentations marked needs review (more alarms than the threshold), by model (name/version)",
                       ("site", "pipeline", "model"))
# -- delivery to the destination PACS (results and longitudinal services, from the outbox) -------------
DELIVERY_ATTEMPTS = Counter("neuroflow_delivery_attempts",
                            "Attempts to deliver stored results to the destination PACS, by outcome (reason: "
                            "delivered, failed: tried again later, gave_up: dead-lettered)", ("pipeline", "reason"))
# A radiologist's decision on a result in the console (decision: accepted / rejected): the acceptance rate of a
# model is accepted / all of its decisions, per site.
REVIEW_DECISIONS = Counter("neuroflow_console_review_decisions",
                           "Radiologists' decisions on results in the console, by model (name/version) and decision",
                           ("site", "pipeline", "model", "decision"))

# -- longitudinal (prior studies of the change pipelines) ----------------------------------------------
PRIORS_FOUND = Counter("neuroflow_longitudinal_priors_found",
                       "Follow-ups compared with a prior, by where the prior came from (reason: site_orthanc, "
                       "pacs, trigger)", ("site", "pipeline", "reason"))
PRIORS_WAITED = Counter("neuroflow_longitudinal_prior_waits",
                        "Follow-ups that found no prior and started waiting for one", ("site", "pipeline"))
PRIORS_MISSING = Counter("neuroflow_longitudinal_priors_missing",
                         "Follow-ups run without a prior because none arrived within the deadline",
                         ("site", "pipeline"))
LATE_PRIOR_TRIGGERS = Counter("neuroflow_longitudinal_late_prior_triggers",
                              "Comparisons started because a study older than a processed one arrived",
                              ("site", "pipeline"))
UNUSABLE_PATIENT_IDS = Counter("neuroflow_longitudinal_unusable_patient_ids",
                               "Follow-ups compared with nothing because their PatientID is empty, missing or a "
                               "wildcard (no prior looked up)", ("site", "pipeline"))
PRIOR_ANSWERS_DISCARDED = Counter("neuroflow_longitudinal_prior_answers_discarded",
                                  "Prior-lookup answers (site find, PACS C-FIND, candidate headers) about another "
                                  "patient: PatientID or IssuerOfPatientID not exactly the follow-up's", ("reason",))

# -- probes (monitor service) -------------------------------------------------------------------------
STORAGE_UP = Gauge("neuroflow_storage_up", "1 when the storage root exists and a probe file was written, "
                   "synced and removed within the deadline", ("path_role",))
STORAGE_FREE_BYTES = Gauge("neuroflow_storage_free_bytes", "Free bytes on the storage root's filesystem",
                           ("path_role",))
ORTHANC_UP = Gauge("neuroflow_orthanc_up", "1 when the site Orthanc answered /system", ("site",))
KAFKA_UP = Gauge("neuroflow_kafka_up", "1 when the Kafka cluster answered a metadata request", ("site",))
KAFKA_CONSUMER_LAG = Gauge("neuroflow_kafka_consumer_lag",
                           "Messages not yet committed by the group, summed over the topic's partitions",
                           ("group", "topic"))
STATE_STORE_UP = Gauge("neuroflow_state_store_up", "1 when the workflow state store answered a query",
                       ("site",))
WORKFLOWS_STUCK = Gauge("neuroflow_workflows_stuck",
                        "Workflows PENDING or RUNNING longer than their deadline", ("site", "pipeline"))
STUDIES_PROCESSED_LAST_HOUR = Gauge("neuroflow_studies_processed_last_hour",
                                    "Workflows that succeeded in the last hour", ("site",))
END_TO_END_TARGET = Gauge("neuroflow_end_to_end_target_seconds",
                          "The site's target for last instance to results stored (from settings)", ("site",))
MODEL_READY = Gauge("neuroflow_model_ready", "1 when the inference server reports the model ready", ("model",))
PROBE_LOOP_CPU_SECONDS = Gauge("neuroflow_monitor_probe_cpu_seconds",
                               "CPU time the monitor's last probe round took", ("site",))
PROBE_LAST_SUCCESS = Gauge("neuroflow_monitor_last_round_timestamp_seconds",
                           "Unix time the monitor's last probe round ended", ("site",))
STORAGE_MIN_FREE_BYTES = Gauge("neuroflow_storage_min_free_bytes",
                               "The disk guard's threshold for the storage root (settings: monitor.min_free_bytes)",
                               ("path_role",))
STORAGE_GUARD_TRIPPED = Gauge("neuroflow_storage_guard_tripped",
                              "1 when the root has less free space than the guard's threshold: the site refuses "
                              "C-STORE (Orthanc storage) or stages will fail to write (volume store)", ("path_role",))
ORTHANC_DISK_SIZE_BYTES = Gauge("neuroflow_orthanc_disk_size_bytes",
                                "What the site Orthanc stores (its /statistics TotalDiskSize)", ("site",))

# -- retention (monitor service) ----------------------------------------------------------------------
# The kinds of data the retention sweep deletes (the ``kind`` label), each with its own period.
RETENTION_KINDS = ("volumes", "records", "reports", "orthanc_studies", "state_rows", "window_rows")
RETENTION_DELETED = Counter("neuroflow_retention_deleted",
                            "Items the retention sweep deleted (volumes, records, report folders, Orthanc "
                            "studies, workflow rows, wait-window rows), by kind", ("site", "kind"))
RETENTION_FREED_BYTES = Counter("neuroflow_retention_freed_bytes",
                                "Bytes the retention sweep freed, by kind (rows: not counted)", ("site", "kind"))
RETENTION_LAST_SWEEP = Gauge("neuroflow_retention_last_sweep_timestamp_seconds",
                             "Unix time the last retention sweep ended without error", ("site",))

DEFINED: tuple[MetricWrapperBase, ...] = (
    TASKS_STARTED, TASKS_SUCCEEDED, TASKS_FAILED, TASKS_RETRIED, TASKS_DEAD_LETTERED, TASK_DURATION,
    TASKS_IN_FLIGHT, STUDIES_RECEIVED, WAIT_WINDOW_TRIGGERS, LATE_SERIES_RETRIGGERS, LAST_INSTANCE_TO_TRIGGER,
    ROUTING_FAILURES, STUDIES_ROUTED, END_TO_END, RESULTS_DELIVERED, DELIVERY_ATTEMPTS, PRIORS_FOUND, PRIORS_WAITED,
    PRIORS_MISSING, LATE_PRIOR_TRIGGERS, STORAGE_UP, STORAGE_FREE_BYTES,
    ORTHANC_UP, KAFKA_UP, KAFKA_CONSUMER_LAG, STATE_STORE_UP, WORKFLOWS_STUCK, STUDIES_PROCESSED_LAST_HOUR,
    END_TO_END_TARGET, MODEL_READY, PROBE_LOOP_CPU_SECONDS, PROBE_LAST_SUCCESS,
    STORAGE_MIN_FREE_BYTES, STORAGE_GUARD_TRIPPED, ORTHANC_DISK_SIZE_BYTES, RETENTION_DELETED,
    RETENTION_FREED_BYTES, RETENTION_LAST_SWEEP,
    FEED_LOOKUP_FAILURES, ORTHANC_REFUSALS, UNUSABLE_PATIENT_IDS, PRIOR_ANSWERS_DISCARDED, REVIEWS_ASSESSED,
    REVIEW_FLAGS, REVIEW_DECISIONS,
)

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_sum", "_count", "_created")}


def exposed_names() -> frozenset[str]:
    """Every series name a query may use for the metrics above (a counter ``x`` is ``x_total``, a
    histogram ``h`` is ``h_bucket``, ``h_sum`` and ``h_count``)."""
    names: set[str] = set()
    for metric in DEFINED:
        for suffix in _SUFFIXES[str(metric._type)]:
            names.add(metric._name + suffix)
    return frozenset(names)


def _check_labels() -> None:
    for metric in DEFINED:
        extra = set(metric._labelnames) - ALLOWED_LABELS
        if extra:
            raise RuntimeError(f"metric {metric._name} has unbounded label(s) {sorted(extra)}")
        if not metric._labelnames:
            # Every process imports this module: an unlabelled gauge would be exported as 0 by all of them,
            # and "kafka_up == 0" from a worker would page someone.
            raise RuntimeError(f"metric {metric._name} has no label: give it one (site)")


_check_labels()

_server_lock = threading.Lock()
_server_port: int | None = None


def start_metrics_server(port: int, host: str = "127.0.0.1", health: HealthSettings | None = None,
                         access: MetricsAccessSettings | None = None) -> int | None:
    """Expose this process's metrics on <host>:<port>/metrics, and its liveness and readiness on /healthz and
    /readyz (``health``: their bounds; ``access``: the login and TLS of the port), from a daemon thread. 0:
    do nothing. Calling it again (several services in one process) keeps the first server. Returns the
    port, or None. Raises OSError when the port is taken (two services must not claim the same one) or the
    certificate cannot be loaded."""
    global _server_port
    if port <= 0:
        return None
    bounds = health or HealthSettings()
    rules = MetricsAccess.from_settings(access or MetricsAccessSettings())
    with _server_lock:
        if _server_port is None:
            start_status_server(port, host, stall_s=bounds.stall_s, check_timeout_s=bounds.check_timeout_s,
                                access=rules)
            _server_port = port
            scheme = "https" if rules.ssl_context is not None else "http"
            login = "basic auth" if rules.password is not None else "no login"
            log.info("metrics on %s://%s:%d/metrics (%s), health on /healthz and /readyz", scheme, host, port, login)
        return _server_port
