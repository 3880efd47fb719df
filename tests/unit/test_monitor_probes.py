"""The monitor's probes: a storage root that is gone, replaced by a file, left without its mount sentinel
or whose write hangs past the deadline counts as down, and comes back up when mended; an unreachable
Orthanc counts as down; workflows that have not moved for longer than their stage allows count as stuck,
and succeeded ones in the last hour as processed. The probe loop's cost is measured (printed; the goal is
under 1% of one core)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import REGISTRY

from neuroflow.core import metrics
from neuroflow.core.config import DicomSettings, NeuroflowSettings, OrchestrationSettings, StateSettings
from neuroflow.core.orthanc import OrthancClient, OrthancEndpoint
from neuroflow.core.state import SqliteStateStore, WorkflowStatus
from neuroflow.devtools.ports import free_loopback_port
from neuroflow.monitor.probes import StorageProbe, UpProbe, WorkflowProbe, check_storage, probe_file_name
from neuroflow.monitor.service import build_monitor
from neuroflow.runtime.distributed import Backends


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_storage_root_that_is_gone_or_a_file_is_down_and_up_again_when_mended(tmp_path: Path) -> None:
    root = tmp_path / "volumes"
    root.mkdir()
    probe = StorageProbe({"test_volumes": root}, deadline_s=5.0)
    probe.run()
    assert gauge("neuroflow_storage_up", path_role="test_volumes") == 1.0
    free = gauge("neuroflow_storage_free_bytes", path_role="test_volumes")
    assert free is not None and free > 0
    assert list(root.iterdir()) == []  # the probe file was removed

    shutil.rmtree(root)
    probe.run()
    assert gauge("neuroflow_storage_up", path_role="test_volumes") == 0.0
    root.write_text("not a directory")
    probe.run()
    assert gauge("neuroflow_storage_up", path_role="test_volumes") == 0.0

    root.unlink()
    root.mkdir()
    probe.run()
    assert gauge("neuroflow_storage_up", path_role="test_volumes") == 1.0


def test_storage_root_without_its_mount_sentinel_is_down(tmp_path: Path) -> None:
    assert not check_storage(tmp_path, 5.0, sentinel=".mounted").up  # the empty mount point left behind
    (tmp_path / ".mounted").touch()
    assert check_storage(tmp_path, 5.0, sentinel=".mounted").up


def test_unreachable_orthanc_is_down() -> None:
    port = free_loopback_port()
    client = OrthancClient(OrthancEndpoint(url=f"http://127.0.0.1:{port}", username="", password=""),
                           timeout_s=1.0, retries=0)
    UpProbe("orthanc", lambda: client.get_json("/system"), metrics.ORTHANC_UP.labels("probe-test").set).run()
    assert gauge("neuroflow_orthanc_up", site="probe-test") == 0.0


def test_workflow_past_its_stage_deadline_is_stuck_and_a_recent_success_is_processed(tmp_path: Path) -> None:
    state = SqliteStateStore(tmp_path / "state.sqlite3")
    try:
        state.create("wf-running", "key-a", "glioma", "h1")
        state.set_status("wf-running", WorkflowStatus.RUNNING, stage="preprocess", detail="dispatched")
        state.create("wf-done", "key-b", "glioma", "h2")
        state.set_status("wf-done", WorkflowStatus.RUNNING, stage="results", detail="dispatched")
        state.set_status("wf-done", WorkflowStatus.SUCCEEDED, stage="results", detail="stored")
        orchestration = OrchestrationSettings(stage_timeout_s={"preprocess": 60.0}, retry_backoff_max_s=30.0)
        now = datetime.now(UTC)

        def probe_at(at: datetime) -> WorkflowProbe:
            return WorkflowProbe(state, "stuck-site", ["glioma"], orchestration, grace_s=10.0, clock=lambda: at)

        probe_at(now + timedelta(seconds=90)).run()  # within 60 + 30 + 10 s
        assert gauge("neuroflow_workflows_stuck", site="stuck-site", pipeline="glioma") == 0.0
        assert gauge("neuroflow_studies_processed_last_hour", site="stuck-site") == 1.0
        assert gauge("neuroflow_state_store_up", site="stuck-site") == 1.0
        probe_at(now + timedelta(seconds=110)).run()
        assert gauge("neuroflow_workflows_stuck", site="stuck-site", pipeline="glioma") == 1.0
        probe_at(now + timedelta(hours=2)).run()
        assert gauge("neuroflow_studies_processed_last_hour", site="stuck-site") == 0.0
    finally:
        state.close()


def test_monitor_round_sets_every_gauge_and_costs_little(tmp_path: Path) -> None:
    for name in ("volumes", "records", "reports", "in", "out"):
        (tmp_path / name).mkdir()
    settings = NeuroflowSettings(
        site="cost-site", volume_store_root=tmp_path / "volumes", records_root=tmp_path / "records",
        reports_dir=tmp_path / "reports", state=StateSettings(sqlite_path=tmp_path / "state.sqlite3"),
        dicom=DicomSettings(folder=tmp_path / "in", sink_folder=tmp_path / "out"))
    backends = Backends(settings)
    try:
        monitor = build_monitor(backends)
        rounds = 20
        started = time.process_time()
        for _ in range(rounds):
            monitor.run_round()
        cpu_per_round = (time.process_time() - started) / rounds
    finally:
        backends.close()
    for role in ("volumes", "records", "reports", "dicom_in", "dicom_out"):
        assert gauge("neuroflow_storage_up", path_role=role) == 1.0
    assert gauge("neuroflow_workflows_stuck", site="cost-site", pipeline="glioma") == 0.0
    assert gauge("neuroflow_end_to_end_target_seconds", site="cost-site") == settings.monitor.end_to_end_target_s
    share = cpu_per_round / settings.monitor.period_s
    print(f"\nprobe round: {cpu_per_round * 1000:.1f} ms CPU, {share:.3%} of one core at a "
          f"{settings.monitor.period_s:g} s period")


def test_storage_write_that_hangs_is_down_after_the_deadline_and_not_probed_twice(tmp_path: Path) -> None:
    # A FIFO where the probe file goes: opening it for writing blocks until a reader comes, as a write to a
    # dead NFS mount blocks.
    fifo = tmp_path / probe_file_name()
    os.mkfifo(fifo)
    probe = StorageProbe({"test_hung": tmp_path}, deadline_s=0.3)
    started = time.monotonic()
    probe.run()
    assert time.monotonic() - started < 2.0  # the deadline, not the hang, decides
    assert gauge("neuroflow_storage_up", path_role="test_hung") == 0.0
    hung = [t for t in threading.enumerate() if t.name == f"storage-probe {tmp_path}"]
    assert len(hung) == 1
    probe.run()  # still stuck: down again, and no second thread piles up on the dead mount
    assert gauge("neuroflow_storage_up", path_role="test_hung") == 0.0
    assert len([t for t in threading.enumerate() if t.name == f"storage-probe {tmp_path}"]) == 1

    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the mount answers again: the stuck write ends
    try:
        hung[0].join(5.0)
        assert not hung[0].is_alive()
    finally:
        os.close(reader)
    fifo.unlink()
    probe.run()
    assert gauge("neuroflow_storage_up", path_role="test_hung") == 1.0


def test_model_readiness_probe_reports_pinned_models_ready_and_a_missing_one_not(tmp_path: Path) -> None:
    from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, PipelineModels
    from neuroflow.core.inference import OnnxRuntimeBackend
    from neuroflow.core.model_card import ModelRef
    from neuroflow.monitor.probes import ModelReadinessProbe

    pinned = PipelineModels()
    missing = ModelRef(name="glioma_unet", version=99)
    ModelReadinessProbe(OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY), [pinned.glioma]).run()
    assert gauge("neuroflow_model_ready", model="glioma_unet") == 1.0
    ModelReadinessProbe(OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY), [missing]).run()
    assert gauge("neuroflow_model_ready", model="glioma_unet") == 0.0
