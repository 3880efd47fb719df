"""Retention on the real servers (issue 11, defect 9: "nothing is ever deleted"): a sweep against a real
site Orthanc and a real state database (SQLite and PostgreSQL) deletes a delivered, old study (its Orthanc
study, volumes, records, report, workflow row and wait-window row) and keeps every study that is still
running, whose results wait for delivery, whose failure is recent (an operator may replay it) or that
ingest has not handed on yet. Two sweeps at once (two monitor replicas) delete each thing exactly once.

Periods are seconds (fractions of a day) so that "old" is real time in Orthanc and the database, not a
faked clock: what is created before a pause is old, what is created after it is recent."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from neuroflow.core.config import RetentionSettings
from neuroflow.core.dicom_io import study_key
from neuroflow.core.orthanc import OrthancClient
from neuroflow.core.records import FolderRecordStore
from neuroflow.core.state import SqliteStateStore, SqlStateStore, WorkflowStatus
from neuroflow.core.state_postgres import PostgresStateStore
from neuroflow.core.volume import Geometry, Volume
from neuroflow.core.volume_store import FolderVolumeStore
from neuroflow.ingest.window_store import PostgresWindowStore, SqliteWindowStore, WindowStore
from neuroflow.monitor.retention import DeliveryLedger, RetentionSweep, SweepTally
from neuroflow.proto.neuroflow.v1 import tasks_pb2
from tests.servers.orthanc import OrthancPair

PERIOD_S = 10.0  # long enough that the recent failure stays recent through two sweeps on a loaded machine
SITE = "retention-test"


@dataclass
class Stores:
    state: SqlStateStore[Any]
    windows: WindowStore


@contextlib.contextmanager
def sqlite_stores(scratch: Path, fixture: Callable[[str], str]) -> Iterator[Stores]:
    state = SqliteStateStore(scratch / "state.sqlite3")
    try:
        yield Stores(state, SqliteWindowStore(scratch / "ingest-windows.sqlite3"))
    finally:
        state.close()


@contextlib.contextmanager
def postgres_stores(scratch: Path, fixture: Callable[[str], str]) -> Iterator[Stores]:
    dsn = fixture("postgres_dsn")
    state = PostgresStateStore(dsn)
    try:
        yield Stores(state, PostgresWindowStore(dsn))
    finally:
        state.close()


@pytest.fixture(params=[pytest.param(sqlite_stores, id="sqlite"), pytest.param(postgres_stores, id="postgres")])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    with request.param(tmp_path, request.getfixturevalue) as built:
        yield built


@dataclass
class Study:
    name: str
    uid: str
    orthanc_id: str
    workflow_id: str | None

    @property
    def key(self) -> str:
        return study_key(self.uid)


def _instance(study_uid: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.Modality = "RETENTION-1", "MR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


class World:
    """A site's data as the services leave it: Orthanc study, workflow row, volumes, records, report,
    wait-window row, for each study."""

    def __init__(self, root: Path, orthanc: OrthancClient, stores: Stores) -> None:
        self.orthanc = orthanc
        self.state = stores.state
        self.windows = stores.windows
        self.volumes = FolderVolumeStore(root / "volumes")
        self.records = FolderRecordStore(root / "records")
        self.reports = root / "reports"
        self._seq = 0

    def receive(self, name: str) -> Study:
        uid = generate_uid()
        orthanc_id = ""
        for _ in range(2):
            instance_id = self.orthanc.upload(_instance(uid))
            orthanc_id = self.orthanc.get_json(f"/instances/{instance_id}/study")["ID"]
        self._seq += 1
        self.windows.touch(orthanc_id, self._seq, time.time())
        return Study(name, uid, orthanc_id, None)

    def hand_on(self, *studies: Study) -> None:
        """As ingest does: claim the due studies, complete these, give the others back."""
        wanted = {s.orthanc_id for s in studies}
        claims = self.windows.claim_due(time.time(), 0.0, "ingest-1", 60.0)
        assert wanted <= {c.resource_id for c in claims}
        for claim in claims:
            (self.windows.complete if claim.resource_id in wanted else self.windows.release)(claim)

    def start_workflow(self, study: Study, status: WorkflowStatus) -> None:
        wid = f"wf-{study.name}"
        study.workflow_id = wid
        self.state.create(wid, study.key, "glioma", f"hash-{study.name}")
        self.state.set_status(wid, WorkflowStatus.RUNNING, stage="preprocess")
        volume = Volume(np.ones((4, 4, 4), np.float32), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                                                                (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 4)), {})
        self.volumes.put(f"{study.key}/{wid}/t1", volume)
        self.records.put(f"workflows/{wid}/study-ready", b"ready " * 50)
        self.records.put(f"tasks/done/{wid}-preprocess-digest",
                         tasks_pb2.TaskDone(workflow_id=wid, idempotency_key=f"{wid}.preprocess").SerializeToString())
        folder = self.reports / study.key / wid
        folder.mkdir(parents=True)
        (folder / "report.json").write_text('{"ai_output": true}' * 20)
        if status != WorkflowStatus.RUNNING:
            self.state.set_status(wid, status, stage="results")

    def finish(self, study: Study, status: WorkflowStatus) -> None:
        assert study.workflow_id is not None
        self.state.set_status(study.workflow_id, status, stage="results")

    # -- what is left ---------------------------------------------------------------------------------

    def in_orthanc(self, study: Study) -> bool:
        return study.orthanc_id in self.orthanc.get_json("/studies")

    def everything_of(self, study: Study) -> dict[str, bool]:
        wid = study.workflow_id
        assert wid is not None
        return {
            "orthanc": self.in_orthanc(study),
            "row": self.state.get(wid) is not None,
            "volumes": (self.volumes.root / study.key / wid).exists(),
            "records": bool(self.records.keys(f"workflows/{wid}")),
            "task answers": any(k.startswith(f"tasks/done/{wid}") for k in self.records.keys("tasks/done")),
            "report": (self.reports / study.key / wid).exists(),
        }

    def sweep(self, ledger: DeliveryLedger) -> RetentionSweep:
        days = PERIOD_S / 86400
        settings = RetentionSettings(volumes_days=days, records_days=days, reports_days=days,
                                     orthanc_studies_days=days, state_rows_days=days)
        return RetentionSweep(settings, SITE, self.state, self.volumes, self.records, self.reports,
                              orthanc=self.orthanc, windows=self.windows, ledger=ledger)


def _deleted_metric(kind: str) -> float:
    return REGISTRY.get_sample_value("neuroflow_retention_deleted_total", {"site": SITE, "kind": kind}) or 0.0


def test_a_sweep_deletes_only_delivered_old_studies_and_keeps_running_undelivered_and_recent_ones(
        orthancs: OrthancPair, stores: Stores, tmp_path: Path) -> None:
    world = World(tmp_path, orthancs.site_client, stores)
    delivered, running, undelivered, replayable, not_handed_on, nothing_to_do = (
        world.receive(n) for n in ("delivered", "running", "undelivered", "replayable", "pending", "unrouted"))
    world.hand_on(delivered, running, undelivered, replayable, nothing_to_do)
    world.start_workflow(delivered, WorkflowStatus.SUCCEEDED)
    world.start_workflow(running, WorkflowStatus.RUNNING)
    world.start_workflow(undelivered, WorkflowStatus.SUCCEEDED)
    world.start_workflow(replayable, WorkflowStatus.RUNNING)
    time.sleep(PERIOD_S + 1.5)  # everything above is now older than the period ...
    world.finish(replayable, WorkflowStatus.DEAD_LETTERED)  # ... but this failure is recent
    # The real delivery outbox is the ledger: the undelivered study's result waits there for its PACS.
    ledger = world.state
    undelivered_wid = f"wf-{undelivered.name}"
    assert world.state.enqueue_delivery(undelivered_wid, "pacs", study_key=undelivered.key, pipeline="glioma",
                                        stage="results", sop_instance_uids=["1.2.826.0.1.3680043.10.1"],
                                        now=time.time(), give_up_at=time.time() + 3600)
    before = {kind: _deleted_metric(kind) for kind in ("orthanc_studies", "state_rows", "volumes", "window_rows")}

    # Two monitor replicas sweep at the same moment.
    tallies: list[SweepTally] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            tallies.append(world.sweep(ledger).sweep())
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors

    assert world.everything_of(delivered) == dict.fromkeys(
        ("orthanc", "row", "volumes", "records", "task answers", "report"), False)
    assert not world.in_orthanc(nothing_to_do), "a study no pipeline took goes after the same period"
    for kept in (running, undelivered, replayable):
        assert all(world.everything_of(kept).values()), (kept.name, world.everything_of(kept))
    assert world.in_orthanc(not_handed_on), "ingest has not handed it on: kept"
    assert stores.windows.is_pending(not_handed_on.orthanc_id)

    # Each thing was deleted once, whichever replica got there first; metrics count it once.
    total = {kind: sum(t.deleted[kind] for t in tallies) for kind in ("orthanc_studies", "state_rows")}
    assert total == {"orthanc_studies": 2, "state_rows": 1}
    assert sum(t.freed_bytes["orthanc_studies"] for t in tallies) > 0
    assert _deleted_metric("orthanc_studies") - before["orthanc_studies"] == 2
    assert _deleted_metric("state_rows") - before["state_rows"] == 1
    assert _deleted_metric("volumes") - before["volumes"] >= 1
    # The handed-on window rows of old studies are forgotten (delivered and unrouted ones among them).
    assert _deleted_metric("window_rows") - before["window_rows"] >= 2

    # A later sweep finds nothing more to do and fails on nothing already gone.
    again = world.sweep(ledger).sweep()
    assert again.deleted["orthanc_studies"] == again.deleted["state_rows"] == again.deleted["volumes"] == 0

    # Once its results are delivered, the undelivered study goes too; the running one still stays.
    [delivery] = world.state.claim_due_deliveries(time.time(), "test", 60.0)
    assert world.state.delivery_done(delivery, "test", time.time())
    world.sweep(ledger).sweep()
    assert not any(world.everything_of(undelivered).values())
    assert not world.state.deliveries(workflow_id=undelivered_wid), "the outbox row goes with its workflow"
    assert all(world.everything_of(running).values())
