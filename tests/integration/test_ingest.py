"""Ingest against a real Orthanc: a study is handed on once, after the wait window, by exactly one of
several replicas (even when one dies holding it); late series re-trigger without new work when the
pipeline's inputs did not change; a study missing a sequence gives a RoutingFailed a person can act on; an
Orthanc that goes away between the change feed and the instance lookups loses no study (the cursor waits at
the first instance it could not look at, the loop retries with backoff), while a deleted instance (404) is
passed over. The window state is tested on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from neuroflow.core import metrics, topics
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import GLIOMA_PIPELINE, PipelineModels
from neuroflow.core.errors import OrthancUnavailable
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.orthanc import Change, OrthancClient, OrthancEndpoint
from neuroflow.core.roles import SeriesRole
from neuroflow.core.state import SqliteStateStore
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import load_volume, write_study
from neuroflow.devtools.orthanc_server import OrthancProcess, restart_orthanc, start_orthanc
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.ingest.service import IngestService, IngestSettings
from neuroflow.ingest.site_rules import SiteRules
from neuroflow.ingest.window_store import PostgresWindowStore, SqliteWindowStore, WindowStore
from neuroflow.proto.neuroflow.v1 import events_pb2
from tests.servers.orthanc import OrthancPair

DATA = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294"
FILES = {SeriesRole.T1: "t1_bet.nii.gz", SeriesRole.T1CE: "t1c_bet.nii.gz", SeriesRole.T2: "t2_bet.nii.gz",
         SeriesRole.FLAIR: "fla_bet.nii.gz"}
WINDOW_S = 1.0


def _crop(role: SeriesRole) -> Volume:
    """A 40-slice slab of the real volume (slices 50-89, same geometry): enough for routing, quick to upload."""
    volume = load_volume(DATA / FILES[role])
    g = volume.geometry
    x, y, z = volume.to_sitk().TransformIndexToPhysicalPoint([0, 0, 50])
    return Volume(volume.array[50:90].copy(), Geometry(g.spacing, (x, y, z), g.direction, (g.size[0], g.size[1], 40)))


def _upload(orthancs: OrthancPair, folder: Path) -> None:
    for path in sorted(folder.rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())


def _settings(**kw: object) -> IngestSettings:
    base = {"site": "test-site", "pipelines": [GLIOMA_PIPELINE],
            "models": {GLIOMA_PIPELINE: PipelineModels().glioma}, "wait_window_s": WINDOW_S, "lease_s": 2.0}
    base.update(kw)
    return IngestSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
def window_store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], WindowStore]]:
    if request.param == "sqlite":
        yield lambda: SqliteWindowStore(tmp_path / "windows.sqlite")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        yield lambda: PostgresWindowStore(dsn)


def _ready(bus: InMemoryBus) -> list[events_pb2.StudyReady]:
    return [events_pb2.StudyReady.FromString(m.value) for m in bus.poll(topics.STUDY_READY, "test", 100)]


def _failed(bus: InMemoryBus) -> list[events_pb2.RoutingFailed]:
    return [events_pb2.RoutingFailed.FromString(m.value) for m in bus.poll(topics.ROUTING_FAILED, "test", 100)]


def test_study_is_handed_on_once_after_the_wait_window(
    orthancs: OrthancPair, window_store_factory: Callable[[], WindowStore], tmp_path: Path
) -> None:
    bus, audit = InMemoryBus(), SqliteStateStore(tmp_path / "state.sqlite")
    ingest = IngestService(orthancs.site_client, window_store_factory(), bus, _settings(), audit=audit)
    written = write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.GE, seed="ingest-1")
    _upload(orthancs, tmp_path / "study")
    ingest.poll_changes(now=1000.0)
    assert ingest.trigger_due(now=1000.0 + WINDOW_S / 2) == []  # still inside the window
    ready = ingest.trigger_due(now=1000.0 + WINDOW_S + 0.1)
    assert len(ready) == 1
    event = ready[0]
    assert event.study.study_instance_uid == written.study_instance_uid
    assert event.pipeline == GLIOMA_PIPELINE
    assert {s.role: s.series_instance_uid for s in event.series} == {
        r.value: w.series_instance_uid for r, w in written.series.items()}
    assert all(s.instance_count == 40 for s in event.series)
    assert ingest.trigger_due(now=1000.0 + 10 * WINDOW_S) == []  # once per study version
    assert len(_ready(bus)) == 1
    (handed_on,) = audit.audit_records(event.study.study_key)  # one audit record per hand-on, by this replica
    assert (handed_on.action, handed_on.actor.split("/")[0]) == ("classified and handed on", "ingest")
    assert handed_on.fields() == {"pipeline": GLIOMA_PIPELINE, "input_hash": event.input_hash,
                                  "study_version": event.study_version, "roles": {r.value: 40 for r in FILES}}
    assert written.study_instance_uid not in handed_on.detail
    audit.close()


def test_late_series_retriggers_with_the_same_input_hash_when_inputs_are_unchanged(
    orthancs: OrthancPair, window_store_factory: Callable[[], WindowStore], tmp_path: Path
) -> None:
    bus = InMemoryBus()
    ingest = IngestService(orthancs.site_client, window_store_factory(), bus, _settings())
    write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.SIEMENS, seed="ingest-late")
    _upload(orthancs, tmp_path / "study")
    ingest.poll_changes(now=2000.0)
    first = ingest.trigger_due(now=2000.0 + WINDOW_S + 0.1)
    # A diffusion series arrives 30 minutes later (routing delays of 15-30 min happen).
    write_study({SeriesRole.DWI: _crop(SeriesRole.T2)}, tmp_path / "late", vendor=Vendor.SIEMENS, seed="ingest-late")
    _upload(orthancs, tmp_path / "late")
    ingest.poll_changes(now=3800.0)
    second = ingest.trigger_due(now=3800.0 + WINDOW_S + 0.1)
    assert len(first) == len(second) == 1
    assert second[0].study_version > first[0].study_version
    assert second[0].input_hash == first[0].input_hash  # same glioma inputs: the orchestrator runs nothing new


def test_two_replicas_hand_a_study_on_exactly_once(
    orthancs: OrthancPair, window_store_factory: Callable[[], WindowStore], tmp_path: Path
) -> None:
    bus = InMemoryBus()
    replicas = [IngestService(orthancs.site_client, window_store_factory(), bus, _settings()) for _ in range(2)]
    write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.PHILIPS, seed="ingest-2")
    _upload(orthancs, tmp_path / "study")
    for replica in replicas:
        replica.poll_changes(now=5000.0)
    results: list[int] = []
    barrier = threading.Barrier(2)

    def tick(replica: IngestService) -> None:
        barrier.wait()
        results.append(len(replica.trigger_due(now=5000.0 + WINDOW_S + 0.1)))

    threads = [threading.Thread(target=tick, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1]
    assert len(_ready(bus)) == 1


def test_replica_dying_with_a_claim_is_taken_over_after_its_lease(
    orthancs: OrthancPair, window_store_factory: Callable[[], WindowStore], tmp_path: Path
) -> None:
    bus = InMemoryBus()
    store = window_store_factory()
    survivor = IngestService(orthancs.site_client, store, bus, _settings())
    write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.GE, seed="ingest-3")
    _upload(orthancs, tmp_path / "study")
    survivor.poll_changes(now=7000.0)
    # The other replica claims the study, then dies before publishing.
    assert len(window_store_factory().claim_due(7000.0 + WINDOW_S + 0.1, WINDOW_S, "dead-replica", 2.0)) == 1
    assert survivor.trigger_due(now=7000.0 + WINDOW_S + 0.5) == []  # its lease still holds
    assert len(survivor.trigger_due(now=7000.0 + WINDOW_S + 2.5)) == 1  # lease expired: taken over
    assert len(_ready(bus)) == 1


def test_study_missing_flair_gives_routing_failed_naming_it(
    orthancs: OrthancPair, window_store_factory: Callable[[], WindowStore], tmp_path: Path
) -> None:
    bus, audit = InMemoryBus(), SqliteStateStore(tmp_path / "state.sqlite")
    ingest = IngestService(orthancs.site_client, window_store_factory(), bus, _settings(), audit=audit)
    roles = [SeriesRole.T1, SeriesRole.T1CE, SeriesRole.T2]
    write_study({r: _crop(r) for r in roles}, tmp_path / "study", vendor=Vendor.SIEMENS, seed="ingest-4")
    _upload(orthancs, tmp_path / "study")
    ingest.poll_changes(now=9000.0)
    assert ingest.trigger_due(now=9000.0 + WINDOW_S + 0.1) == []
    failures = _failed(bus)
    assert len(failures) == 1
    assert failures[0].reason == events_pb2.RoutingFailed.MISSING_SEQUENCE
    assert "FLAIR" in failures[0].message and failures[0].pipeline == GLIOMA_PIPELINE
    assert [(r.action, r.fields()) for r in audit.audit_records(failures[0].study.study_key)] == [
        ("routing failed", {"pipeline": GLIOMA_PIPELINE, "reason": "MISSING_SEQUENCE"})]
    audit.close()


def test_neuroflow_results_stored_back_in_orthanc_do_not_retrigger_the_study(
    orthancs: OrthancPair, tmp_path: Path
) -> None:
    bus = InMemoryBus()
    ingest = IngestService(orthancs.site_client, SqliteWindowStore(tmp_path / "w.sqlite"), bus, _settings())
    write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.SIEMENS, seed="ingest-own")
    _upload(orthancs, tmp_path / "study")
    ingest.poll_changes(now=11000.0)
    assert len(ingest.trigger_due(now=11000.0 + WINDOW_S + 0.1)) == 1
    # The results worker stores its SEG into the same study (Manufacturer "neuroflow").
    result = pydicom.dcmread(next((tmp_path / "study").rglob("IM*")))
    result.Manufacturer = NEUROFLOW_MANUFACTURER
    result.SeriesInstanceUID = result.SOPInstanceUID = generate_uid()
    result.file_meta.MediaStorageSOPInstanceUID = result.SOPInstanceUID
    buffer = io.BytesIO()
    result.save_as(buffer, enforce_file_format=True)
    orthancs.site_client.upload(buffer.getvalue())
    ingest.poll_changes(now=12000.0)
    assert ingest.trigger_due(now=12000.0 + WINDOW_S + 0.1) == []


def test_site_routing_rule_keeps_a_study_from_a_pipeline_with_a_reason(orthancs: OrthancPair, tmp_path: Path) -> None:
    rules = SiteRules.model_validate({"routes": [{"pipeline": GLIOMA_PIPELINE, "study_description": "tumou?r|glioma"}]})
    bus = InMemoryBus()
    ingest = IngestService(orthancs.site_client, SqliteWindowStore(tmp_path / "w.sqlite"), bus, _settings(), rules)
    # The writer's studies are described "MRI BRAIN W WO CONTRAST": not a tumour protocol at this site.
    write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.GE, seed="ingest-routes")
    _upload(orthancs, tmp_path / "study")
    ingest.poll_changes(now=13000.0)
    assert ingest.trigger_due(now=13000.0 + WINDOW_S + 0.1) == []
    (failure,) = _failed(bus)
    assert failure.reason == events_pb2.RoutingFailed.NO_PIPELINE
    assert "StudyDescription" in failure.message and "tumou?r|glioma" in failure.message


# -- Orthanc going away under ingest ------------------------------------------------------------------------


class _AfterFeedRead(OrthancClient):
    """A client of a real Orthanc that, right after it first reads a page of the change feed holding
    changes, does ``then`` to that Orthanc before any lookup: stop it by PID (a crash, a restart), or
    delete what it holds."""

    def __init__(self, endpoint: OrthancEndpoint, then: Callable[[], None]) -> None:
        super().__init__(endpoint, retries=1, backoff_s=0.05)
        self._then = then
        self.done = threading.Event()

    def changes(self, since: int, limit: int = 100) -> tuple[list[Change], int, bool]:
        page = super().changes(since, limit)
        if page[0] and not self.done.is_set():
            self._then()
            self.done.set()
        return page


@pytest.fixture
def own_orthanc(tmp_path: Path) -> Iterator[list[OrthancProcess]]:
    """An Orthanc of this test's own (the test stops and restarts it); the list holds the running process."""
    servers = [start_orthanc("nf-ingest-outage", tmp_path / "orthanc", aet="NFOUTAGE")]
    yield servers
    servers[-1].stop()


def _lookup_failures() -> float:
    return metrics.FEED_LOOKUP_FAILURES.labels("test-site")._value.get()  # type: ignore[attr-defined,no-any-return]


def test_orthanc_down_between_the_change_feed_and_the_lookups_loses_no_study(
        own_orthanc: list[OrthancProcess], tmp_path: Path) -> None:
    server = own_orthanc[0]
    client = _AfterFeedRead(server.endpoint, server.stop)
    windows = SqliteWindowStore(tmp_path / "windows.sqlite")
    bus = InMemoryBus()
    ingest = IngestService(client, windows, bus, _settings())
    start = windows.cursor("orthanc")
    written = write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.GE, seed="ingest-outage")
    uploader = OrthancClient(server.endpoint)
    for path in sorted((tmp_path / "study").rglob("IM*")):
        uploader.upload(path.read_bytes())
    failures = _lookup_failures()

    raised: OrthancUnavailable | None = None
    try:
        ingest.poll_changes(now=20000.0)  # the feed is read, then Orthanc is gone before the first lookup
    except OrthancUnavailable as error:
        raised = error
    assert client.done.is_set()
    assert windows.cursor("orthanc") == start, "the cursor passed instances nobody could look at"
    assert raised is not None, "an Orthanc outage was taken for deleted instances"
    assert _lookup_failures() == failures + 1
    assert ingest.trigger_due(now=20000.0 + WINDOW_S + 0.1) == []

    own_orthanc.append(restart_orthanc(server.name, server.storage_dir, server.endpoint))
    ingest.poll_changes(now=20100.0)
    ready = ingest.trigger_due(now=20100.0 + WINDOW_S + 0.1)
    assert [r.study.study_instance_uid for r in ready] == [written.study_instance_uid]
    assert windows.cursor("orthanc") > start


def test_the_ingest_loop_backs_off_while_orthanc_is_down_and_hands_the_study_on_when_it_is_back(
        own_orthanc: list[OrthancProcess], tmp_path: Path) -> None:
    server = own_orthanc[0]
    client = _AfterFeedRead(server.endpoint, server.stop)
    bus = InMemoryBus()
    ingest = IngestService(client, SqliteWindowStore(tmp_path / "windows.sqlite"), bus,
                           _settings(poll_interval_s=0.1, retry_backoff_max_s=0.8))
    written = write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.SIEMENS,
                          seed="ingest-outage-loop")
    uploader = OrthancClient(server.endpoint)
    for path in sorted((tmp_path / "study").rglob("IM*")):
        uploader.upload(path.read_bytes())
    loop = threading.Thread(target=ingest.run, daemon=True)
    loop.start()
    try:
        assert client.done.wait(60), "ingest never read the change feed"
        deadline = time.monotonic() + 60
        while ingest.retry_delay_s() < 0.8 and time.monotonic() < deadline:  # failures in a row: backing off
            time.sleep(0.05)
        assert ingest.retry_delay_s() == 0.8
        own_orthanc.append(restart_orthanc(server.name, server.storage_dir, server.endpoint))
        deadline = time.monotonic() + 60
        while not (ready := _ready(bus)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        ingest.stop()
        loop.join(timeout=30)
    assert [r.study.study_instance_uid for r in ready] == [written.study_instance_uid]
    assert ingest.retry_delay_s() == 0.1  # back to the poll interval once a round succeeds


def test_an_instance_deleted_before_its_lookup_is_passed_over(orthancs: OrthancPair, tmp_path: Path) -> None:
    windows = SqliteWindowStore(tmp_path / "windows.sqlite")
    bus = InMemoryBus()
    client = _AfterFeedRead(orthancs.site.endpoint, orthancs.site_client.delete_everything)
    ingest = IngestService(client, windows, bus, _settings())
    write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.GE, seed="ingest-deleted")
    _upload(orthancs, tmp_path / "study")
    failures = _lookup_failures()
    assert ingest.poll_changes(now=30000.0) > 0  # the instances read from the feed are deleted: 404 each
    assert client.done.is_set()
    assert _lookup_failures() == failures
    assert windows.cursor("orthanc") == orthancs.site_client.get_json("/changes?last")["Last"]
    assert ingest.trigger_due(now=30000.0 + WINDOW_S + 0.1) == []
