"""The monitoring chain with the real servers: a monitor process (``neuroflow serve monitor``) and an
orchestrator process expose metrics; Prometheus (Debian package) scrapes them with the alert rules of
deploy/prometheus (``for`` shortened to 0s, intervals to 1 s); Alertmanager routes by severity to a webhook
receiver run by this test.

Proved: a storage root that stops being writable (removed and replaced by a file: chmod does not stop
root) makes NeuroflowStorageDown fire in Prometheus and reach the pager webhook through Alertmanager, and
it resolves there when the root is mended; a service process that stops makes NeuroflowServiceDown fire and
reach the pager, and resolve when it runs again; a site Orthanc whose storage is under the disk guard's
threshold refuses C-STORE with 0xA700 and NeuroflowIngestRefused reaches the pager, resolving once it is not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from neuroflow.devtools.cstore import CStoreFailed, send_folder
from neuroflow.devtools.monitoring_servers import (
    MonitoringServer,
    WebhookReceiver,
    immediate_rules,
    start_alertmanager,
    start_prometheus,
    stop_pid,
)
from neuroflow.devtools.orthanc_server import OrthancProcess, start_orthanc
from neuroflow.devtools.ports import free_loopback_port, port_is_listening
from tests.servers import prometheus_api

WAIT_S = 60.0


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def serve(service: str, tmp_path: Path, metrics_port: int,
          extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NEUROFLOW_SITE": "alert-test", "NEUROFLOW_METRICS_PORT": str(metrics_port),
           "NEUROFLOW_STATE__SQLITE_PATH": str(tmp_path / "state.sqlite3"),
           "NEUROFLOW_VOLUME_STORE_ROOT": str(tmp_path / "volumes"),
           "NEUROFLOW_RECORDS_ROOT": str(tmp_path / "records"), "NEUROFLOW_REPORTS_DIR": str(tmp_path / "reports"),
           "NEUROFLOW_DICOM__FOLDER": str(tmp_path / "in"), "NEUROFLOW_DICOM__SINK_FOLDER": str(tmp_path / "out"),
           "NEUROFLOW_MONITOR__PERIOD_S": "0.5", "NEUROFLOW_ORCHESTRATION__POLL_TIMEOUT_S": "0.1",
           **(extra_env or {})}
    log = (tmp_path / f"{service}.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "neuroflow.cli", "serve", service], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + WAIT_S
    while not port_is_listening(metrics_port):
        assert process.poll() is None, (tmp_path / f"{service}.log").read_text()
        assert time.monotonic() < deadline, f"{service} exposed no metrics"
        time.sleep(0.1)
    return process


def wait_until(what: str, check: Callable[[], bool]) -> None:
    prometheus_api.wait_until(what, check, WAIT_S)


def prometheus_alerts(prometheus: MonitoringServer) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{prometheus.url}/api/v1/alerts", headers=prometheus.headers)
    with urllib.request.urlopen(request, timeout=5, context=prometheus.ssl_context()) as answer:
        alerts: list[dict[str, Any]] = json.load(answer)["data"]["alerts"]
        return alerts


def query(prometheus: MonitoringServer, expr: str) -> list[dict[str, Any]]:
    return prometheus_api.query(prometheus.url, expr, prometheus.headers, prometheus.ssl_context())


def firing_in_prometheus(prometheus: MonitoringServer, name: str, **labels: str) -> bool:
    return any(a["labels"].get("alertname") == name and a["state"] == "firing"
               and all(a["labels"].get(k) == v for k, v in labels.items()) for a in prometheus_alerts(prometheus))


def test_storage_down_and_service_down_alerts_reach_the_pager_and_resolve_when_mended(
    tmp_path: Path, webhook: WebhookReceiver,
) -> None:
    hook = webhook
    for name in ("volumes", "records", "reports", "in", "out"):
        (tmp_path / name).mkdir()
    monitor_port, orchestrator_port = free_loopback_port(), free_loopback_port()
    processes: list[subprocess.Popen[bytes]] = []
    servers: list[MonitoringServer] = []
    try:
        processes.append(serve("monitor", tmp_path, monitor_port))
        orchestrator = serve("orchestrator", tmp_path, orchestrator_port)
        processes.append(orchestrator)
        alertmanager = start_alertmanager(tmp_path / "alertmanager", fast=True,
                                          pager_url=hook.url("/pager"), ticket_url=hook.url("/ticket"))
        servers.append(alertmanager)
        prometheus = start_prometheus(
            tmp_path / "prometheus", fast=True, rules=immediate_rules(), alertmanager=alertmanager,
            targets=[("monitor", f"127.0.0.1:{monitor_port}"), ("orchestrator", f"127.0.0.1:{orchestrator_port}")])
        servers.append(prometheus)
        wait_until("Prometheus sees the volumes root up", lambda: any(
            r["value"][1] == "1" for r in query(prometheus, 'neuroflow_storage_up{path_role="volumes"}')))

        # The volume store's mount goes away: the path is no longer a writable directory.
        volumes = tmp_path / "volumes"
        volumes.rename(tmp_path / "volumes.away")
        volumes.write_text("not the mount")
        wait_until("NeuroflowStorageDown fires in Prometheus",
                   lambda: firing_in_prometheus(prometheus, "NeuroflowStorageDown", path_role="volumes"))
        wait_until("the pager is told", lambda: hook.notified("/pager", "NeuroflowStorageDown", "firing",
                                                         path_role="volumes", severity="critical"))
        volumes.unlink()
        (tmp_path / "volumes.away").rename(volumes)
        wait_until("the pager is told it resolved",
                   lambda: hook.notified("/pager", "NeuroflowStorageDown", "resolved", path_role="volumes"))
        assert not hook.notified("/ticket", "NeuroflowStorageDown", "firing")  # critical: pager only

        # A service process stops.
        stop_pid(orchestrator.pid)
        wait_until("NeuroflowServiceDown reaches the pager",
                   lambda: hook.notified("/pager", "NeuroflowServiceDown", "firing", service="orchestrator"))
        processes.append(serve("orchestrator", tmp_path, orchestrator_port))
        wait_until("NeuroflowServiceDown resolves",
                   lambda: hook.notified("/pager", "NeuroflowServiceDown", "resolved", service="orchestrator"))
    finally:
        for server in reversed(servers):
            server.stop()
        for process in processes:
            if process.poll() is None:
                stop_pid(process.pid)


def test_disk_guard_refuses_cstore_and_ingest_refused_reaches_the_pager_then_resolves(
    tmp_path: Path, webhook: WebhookReceiver,
) -> None:
    """Issue 11, defect 9: the site stops accepting rather than filling the disk, and someone is paged. The
    threshold is set above the machine's real free space (the guard trips), then below it."""
    for name in ("volumes", "records", "reports", "in", "out", "scan"):
        (tmp_path / name).mkdir()
    orthanc_root = tmp_path / "orthanc"
    (orthanc_root / "storage").mkdir(parents=True)
    over_free = shutil.disk_usage(orthanc_root).free + 1024**4
    instance = _scanner_instance(tmp_path / "scan")
    monitor_port = free_loopback_port()
    processes: list[subprocess.Popen[bytes]] = []
    servers: list[Any] = []

    def guarded(threshold: int) -> tuple[subprocess.Popen[bytes], OrthancProcess]:
        extra = {"NEUROFLOW_MONITOR__MIN_FREE_BYTES": str(threshold),
                 "NEUROFLOW_MONITOR__EXTRA_STORAGE": json.dumps({"orthanc": str(orthanc_root / "storage")})}
        orthanc = start_orthanc("neuroflow-guard", orthanc_root, aet="NFGUARD", min_free_bytes=threshold,
                                guard_check_interval_s=1)
        servers.append(orthanc)
        monitor = serve("monitor", tmp_path, monitor_port, extra)
        processes.append(monitor)
        return monitor, orthanc

    try:
        monitor, orthanc = guarded(over_free)
        alertmanager = start_alertmanager(tmp_path / "alertmanager", fast=True,
                                          pager_url=webhook.url("/pager"), ticket_url=webhook.url("/ticket"))
        servers.append(alertmanager)
        prometheus = start_prometheus(
            tmp_path / "prometheus", fast=True, rules=immediate_rules(), alertmanager=alertmanager,
            targets=[("monitor", f"127.0.0.1:{monitor_port}")])
        servers.append(prometheus)

        with pytest.raises(CStoreFailed, match="status 0xA700"):
            send_folder(instance, "127.0.0.1", orthanc.endpoint.dicom_port, "NFGUARD", attempts=1)
        wait_until("NeuroflowIngestRefused reaches the pager", lambda: webhook.notified(
            "/pager", "NeuroflowIngestRefused", "firing", path_role="orthanc", severity="critical"))

        # Space comes back (here: the threshold goes under the free space): accepted again, and resolved.
        stop_pid(monitor.pid)
        orthanc.stop()
        monitor, orthanc = guarded(1024**2)
        assert send_folder(instance, "127.0.0.1", orthanc.endpoint.dicom_port, "NFGUARD", attempts=1) == 1
        wait_until("NeuroflowIngestRefused resolves at the pager", lambda: webhook.notified(
            "/pager", "NeuroflowIngestRefused", "resolved", path_role="orthanc"))
    finally:
        for server in reversed(servers):
            server.stop()
        for process in processes:
            if process.poll() is None:
                stop_pid(process.pid)


def _scanner_instance(folder: Path) -> Path:
    """One MR instance as a scanner sends it, in ``folder``."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "GUARD-2", "MR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dcmwrite(folder / "mr.dcm", ds, enforce_file_format=True)
    return folder
