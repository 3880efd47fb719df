"""Retention's own rules, without servers (the real-server proof is tests/integration/test_retention.py):
periods that would orphan data are refused at start, 0 keeps a kind for ever, the monitor sweeps once per
interval, and a sweep's log line names counts only, never a study."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from neuroflow.core.config import NeuroflowSettings, RetentionSettings
from neuroflow.core.records import FolderRecordStore
from neuroflow.core.state import SqliteStateStore, WorkflowStatus
from neuroflow.core.volume import Geometry, Volume
from neuroflow.core.volume_store import FolderVolumeStore
from neuroflow.monitor.retention import RetentionSweep


def test_rows_kept_shorter_than_what_they_lead_to_are_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match="volumes_days"):
        RetentionSettings(volumes_days=30, state_rows_days=7)
    RetentionSettings(volumes_days=30, state_rows_days=0)  # rows kept for ever: anything goes


def test_retention_periods_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROFLOW_RETENTION__ORTHANC_STUDIES_DAYS", "14")
    monkeypatch.setenv("NEUROFLOW_MONITOR__MIN_FREE_BYTES", "5000000000")
    settings = NeuroflowSettings()
    assert settings.retention.orthanc_studies_days == 14
    assert settings.monitor.min_free_bytes == 5_000_000_000


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _sweep(tmp_path: Path, settings: RetentionSettings, clock: Clock) -> tuple[RetentionSweep, SqliteStateStore]:
    state = SqliteStateStore(tmp_path / "state.sqlite3")
    sweep = RetentionSweep(settings, "unit", state, FolderVolumeStore(tmp_path / "volumes"),
                           FolderRecordStore(tmp_path / "records"), tmp_path / "reports", clock=clock)
    return sweep, state


def test_zero_keeps_a_kind_and_the_monitor_sweeps_once_per_interval(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(1e9)
    settings = RetentionSettings(interval_s=3600, volumes_days=1, records_days=0, reports_days=1,
                                 orthanc_studies_days=0, state_rows_days=0)
    sweep, state = _sweep(tmp_path, settings, clock)
    state.create("wf-1", "studykey0001", "glioma", "h")
    state.set_status("wf-1", WorkflowStatus.RUNNING, stage="results")
    state.set_status("wf-1", WorkflowStatus.SUCCEEDED, stage="results")
    records = FolderRecordStore(tmp_path / "records")
    records.put("workflows/wf-1/study-ready", b"x")
    report = tmp_path / "reports" / "studykey0001" / "wf-1"
    report.mkdir(parents=True)
    (report / "report.json").write_text("{}")
    clock.now = state.list()[0].updated_at.timestamp() + 2 * 86400

    with caplog.at_level(logging.INFO, logger="neuroflow.monitor.retention"):
        sweep.run()
    assert not report.exists()
    assert records.keys("workflows/wf-1") == ["workflows/wf-1/study-ready"], "records_days=0 keeps them"
    assert state.get("wf-1") is not None, "state_rows_days=0 keeps rows"
    (line,) = [r.getMessage() for r in caplog.records if "retention sweep" in r.getMessage()]
    assert "reports 1" in line and "studykey0001" not in line and "wf-1" not in line

    report.mkdir(parents=True)
    caplog.clear()
    clock.now += 60
    sweep.run()  # within the interval: no sweep
    assert report.exists() and not caplog.records
    clock.now += 3600
    sweep.run()
    assert not report.exists()


def test_a_kind_kept_for_ever_survives_its_workflows_row(tmp_path: Path) -> None:
    clock = Clock(1e9)
    settings = RetentionSettings(volumes_days=0, records_days=1, reports_days=1, orthanc_studies_days=0,
                                 state_rows_days=2)
    sweep, state = _sweep(tmp_path, settings, clock)
    state.create("wf-1", "studykey0001", "glioma", "h")
    state.set_status("wf-1", WorkflowStatus.FAILED, stage="preprocess")
    volumes = FolderVolumeStore(tmp_path / "volumes")
    ref = volumes.put("studykey0001/wf-1/t1", Volume(np.zeros((2, 2, 2), np.float32), Geometry(
        (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (2, 2, 2)), {}))
    clock.now = state.list()[0].updated_at.timestamp() + 3 * 86400

    tally = sweep.sweep()

    assert tally.deleted["state_rows"] == 1 and state.get("wf-1") is None
    assert volumes.exists(ref), "volumes_days=0: kept, even once the row is gone"
