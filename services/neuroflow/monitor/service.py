"""The monitor loop: every ``MonitorSettings.period_s``, run each probe once, then record what the round
cost (``neuroflow_monitor_probe_cpu_seconds``) and when it ended. Probes set their own gauges; the process's
metrics server (``NeuroflowSettings.metrics_port``) exposes them to Prometheus. The retention sweep
(``neuroflow.monitor.retention``) runs in the same loop, once per ``RetentionSettings.interval_s``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from neuroflow.core import health, metrics, topics
from neuroflow.core.config import NeuroflowSettings, routed_pipelines
from neuroflow.core.kafka_security import client_security
from neuroflow.monitor.probes import (
    ConsumerPair,
    KafkaProbe,
    ModelReadinessProbe,
    OrthancStorageProbe,
    Probe,
    StorageProbe,
    UpProbe,
    WorkflowProbe,
)
from neuroflow.monitor.retention import HandledWindows, OrthancStudies, RetentionSweep

if TYPE_CHECKING:
    from neuroflow.runtime.distributed import Backends

log = logging.getLogger(__name__)


class Monitor:
    """Runs ``probes`` in turn every ``period_s`` until :meth:`stop`. A probe that raises despite its
    contract is logged and the round goes on."""

    def __init__(self, probes: Sequence[Probe], period_s: float, site: str) -> None:
        self.probes = list(probes)
        self._period_s = period_s
        self._site = site
        self._stop = threading.Event()

    def run_round(self) -> float:
        """Run every probe once; returns the CPU seconds this thread spent on it."""
        started = time.thread_time()
        for probe in self.probes:
            try:
                probe.run()
            except Exception:
                log.exception("probe %s failed", probe.name)
        spent = time.thread_time() - started
        metrics.PROBE_LOOP_CPU_SECONDS.labels(self._site).set(spent)
        metrics.PROBE_LAST_SUCCESS.labels(self._site).set(time.time())
        return spent

    def run(self) -> None:
        log.info("monitor: %s every %.0f s", ", ".join(p.name for p in self.probes), self._period_s)
        while not self._stop.is_set():
            began = time.monotonic()
            self.run_round()  # never raises: a probe's failure is a value
            health.beat("monitor", pause_s=self._period_s)
            self._stop.wait(max(0.0, self._period_s - (time.monotonic() - began)))

    def stop(self) -> None:
        self._stop.set()


def storage_roots(settings: NeuroflowSettings) -> dict[str, Path]:
    """The storage the services of a site write to, by role (the ``path_role`` label)."""
    roots = {"volumes": settings.volume_store_root, "records": settings.records_root,
             "reports": settings.reports_dir}
    if settings.dicom.source == "folder":
        roots |= {"dicom_in": settings.dicom.folder, "dicom_out": settings.dicom.sink_folder}
    return roots | settings.monitor.extra_storage


def consumer_pairs() -> list[ConsumerPair]:
    """Every (consumer group, topic) of the distributed runtime: the orchestrator's event topics and each
    stage's task topics."""
    pairs = [ConsumerPair(topics.ORCHESTRATOR_GROUP, t)
             for t in (topics.STUDY_READY, topics.TASK_DONE, topics.TASK_FAILED)]
    for stage in topics.STAGES:
        pairs += [ConsumerPair(topics.worker_group(stage), t) for t in topics.task_topics_by_priority(stage)]
    return pairs


# The roots the disk guard watches (NeuroflowIngestRefused): the site Orthanc's storage, where it is mounted
# in the monitor (MonitorSettings.extra_storage "orthanc"), and the volume store every study passes through.
GUARDED_ROLES = ("orthanc", "volumes")


def build_monitor(backends: Backends, *, windows: HandledWindows | None = None) -> Monitor:
    """The probes the settings call for: storage and workflows always; Orthanc when studies come from one;
    Kafka when it is the bus; and the retention sweep (``windows``: ingest's wait-window store)."""
    settings = backends.settings
    watch = settings.monitor
    probes: list[Probe] = [StorageProbe(storage_roots(settings), watch.storage_deadline_s, watch.storage_sentinel,
                                        min_free_bytes=watch.min_free_bytes, guarded=GUARDED_ROLES)]
    orthanc: OrthancStudies | None = None
    # Set once: the latency alert compares the site's end-to-end time with it.
    metrics.END_TO_END_TARGET.labels(settings.site).set(watch.end_to_end_target_s)
    if settings.dicom.source == "orthanc":
        from neuroflow.core.orthanc import OrthancClient, OrthancEndpoint

        client = OrthancClient(OrthancEndpoint.from_settings(settings.dicom), timeout_s=watch.request_timeout_s,
                               retries=0)
        gauge = metrics.ORTHANC_UP.labels(settings.site)
        probes.append(UpProbe("orthanc", lambda: client.get_json("/system", what="probe"), gauge.set))
        probes.append(OrthancStorageProbe(lambda: client.get_json("/statistics", what="probe"), settings.site))
        # Retention's own client: deleting a large study takes Orthanc longer than a probe may wait.
        orthanc = OrthancClient(client.endpoint, timeout_s=300.0, retries=1)
    if settings.bus.kind == "kafka":
        probes.append(KafkaProbe(settings.bus.bootstrap, consumer_pairs(), watch.request_timeout_s, settings.site,
                                 security=client_security(settings.bus)))
    pinned = settings.models
    probes.append(ModelReadinessProbe(backends.inference(),
                                      [pinned.skull_strip_bbox, pinned.skull_strip, pinned.glioma]))
    probes.append(WorkflowProbe(backends.state(), settings.site, sorted(routed_pipelines(settings.ingest.pipelines)),
                                settings.orchestration, watch.stuck_grace_s))
    probes.append(RetentionSweep(settings.retention, settings.site, backends.state(), backends.volumes(),
                                 backends.records(), settings.reports_dir, orthanc=orthanc, windows=windows,
                                 ledger=backends.state()))
    return Monitor(probes, watch.period_s, settings.site)
