"""The change pipelines in the distributed runtime, against two real Orthanc servers (the site's, and a PACS
that holds older studies), with the services ``neuroflow serve`` builds (ingest, orchestrator, the
longitudinal worker and its sweeper) running in one process over the in-memory bus and SQLite state.

Proved here, on pairs made from real anatomy (Colin27: FLAIRs with a known motion, drift, noise and new
lesions; head CTs with a haematoma that grows): the prior in the site's Orthanc is found by PatientID and
compared, and the results are stored and forwarded; a redelivered task stores nothing twice; a prior only
the PACS holds is found by C-FIND and moved in by C-MOVE; a follow-up without a prior waits, then runs
without it after the deadline and says so, even when the services restart during the wait; a prior that
arrives after its follow-up was processed triggers the comparison of the pair. The record of a patient's
timepoints (SQLite or PostgreSQL) is shared by several workers: an ended wait is claimed exactly once.
A follow-up without a PatientID pulls nothing from the PACS and is compared with nothing (its report says
why); a PACS that answers other patients' studies (wildcard or case-insensitive matching, another issuer of
the same PatientID) has those answers discarded, never moved in.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from neuroflow.core import topics
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import (
    HAEMATOMA_CHANGE_PIPELINE,
    METASTASES_RESPONSE_PIPELINE,
    MS_CHANGE_PIPELINE,
    BusSettings,
    DicomSettings,
    IngestSettings,
    LongitudinalSettings,
    NeuroflowSettings,
    OrchestrationSettings,
    PacsNode,
    StateSettings,
)
from neuroflow.core.delivery import WithDelivery
from neuroflow.core.dicom_io import study_key
from neuroflow.core.orthanc import DicomModality, OrthancClient
from neuroflow.core.patient_id import PatientIdentity
from neuroflow.core.roles import SeriesRole
from neuroflow.core.state import WorkflowRecord, WorkflowStatus
from neuroflow.core.state_schedules import DeliveryStatus
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.devtools.dicom_writer import PatientInfo, write_study
from neuroflow.devtools.longitudinal_phantoms import Brain, colin27, make_haematoma_pair, make_ms_pair
from neuroflow.devtools.orthanc_server import CONFIG_TEMPLATE, start_orthanc
from neuroflow.devtools.ports import free_loopback_port
from neuroflow.devtools.synthetic_metastases import colin27_background, metastases_followup_pair
from neuroflow.longitudinal.priors import (
    PatientTimepoint,
    PostgresTimepointStore,
    PriorLocator,
    SqliteTimepointStore,
    TimepointState,
    TimepointStore,
)
from neuroflow.longitudinal.worker import LongitudinalService
from neuroflow.proto.neuroflow.v1 import common_pb2, tasks_pb2
from neuroflow.results.dicom_sr import sr_texts
from neuroflow.runtime.distributed import Backends, build_ingest, build_service
from tests.servers.orthanc import OrthancPair, site_and_pacs

SITE_AET, PACS_AET = "NFLONGSITE", "NFLONGPACS"
DESTINATION = "pacs"  # the site Orthanc's name for the PACS, where results are forwarded
PATIENT = PatientInfo(patient_id="NF-MS-0042", name="TEST^LONGITUDINAL", birth_date="19800101", sex="F")
BASELINE_DATE, FOLLOWUP_DATE = "20230110", "20240115"
CT_PATIENT = PatientInfo(patient_id="NF-ICH-0007", name="TEST^HAEMATOMA", birth_date="19500505", sex="M")
METS_PATIENT = PatientInfo(patient_id="NF-METS-0009", name="TEST^METASTASES", birth_date="19620303", sex="M")
NO_ID_PATIENT = PatientInfo(patient_id="", name="TEST^NOID", birth_date="19600606", sex="F")
# The phantom pairs (made at 1 mm) resampled, so each test moves fewer slices through Orthanc.
SPACING_MM = 1.5
CT_SPACING_MM = (2.0, 2.0, 4.0)  # a routine head CT's thick slices
WAIT_S = 180.0  # generous: on a loaded machine one ms_change comparison alone took 79 s
FAST = OrchestrationSettings(max_attempts=2, retry_backoff_s=0.05, retry_backoff_max_s=0.2, poll_timeout_s=0.05,
                             heartbeat_s=30.0, stage_timeout_s={"longitudinal": 120.0})


# -- servers and studies ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPair]:
    """A site Orthanc that forwards results to the PACS, and a PACS that knows the site (for C-MOVE)."""
    with site_and_pacs(tmp_path_factory.mktemp("longitudinal-orthanc"), name="nf-longitudinal", site_aet=SITE_AET,
                       pacs_aet=PACS_AET, destination=DESTINATION, pacs_knows_site=True) as pair:
        yield pair


@pytest.fixture
def orthancs(servers: OrthancPair) -> OrthancPair:
    servers.site_client.delete_everything()
    servers.pacs_client.delete_everything()
    return servers


@dataclass(frozen=True)
class Studies:
    baseline: Path
    followup: Path
    baseline_uid: str
    followup_uid: str


def _coarser(volume: Volume, spacing_mm: tuple[float, float, float]) -> Volume:
    g = volume.geometry
    size = tuple(max(1, round(n * s / t)) for n, s, t in zip(g.size, g.spacing, spacing_mm, strict=True))
    return resample(volume, Geometry(spacing_mm, g.origin, g.direction, (size[0], size[1], size[2])))


def _write_pair(baseline: Volume, followup: Volume, role: SeriesRole, spacing_mm: tuple[float, float, float],
                folder: Path, patient: PatientInfo, seed: str = "longitudinal") -> Studies:
    written = {}
    for name, volume, date in (("baseline", baseline, BASELINE_DATE), ("followup", followup, FOLLOWUP_DATE)):
        written[name] = write_study({role: _coarser(volume, spacing_mm)}, folder / name, patient=patient,
                                    seed=f"{seed}-{role}-{name}", study_date=date)
    return Studies(folder / "baseline", folder / "followup", written["baseline"].study_instance_uid,
                   written["followup"].study_instance_uid)


@pytest.fixture(scope="module")
def brain() -> Brain:
    return colin27()


@pytest.fixture(scope="module")
def studies(brain: Brain, tmp_path_factory: pytest.TempPathFactory) -> Studies:
    """One patient's FLAIR baseline (2023) and follow-up (2024, moved, drifted, with new lesions)."""
    pair = make_ms_pair(brain, seed=6)
    return _write_pair(pair.baseline, pair.followup, SeriesRole.FLAIR, (SPACING_MM,) * 3,
                       tmp_path_factory.mktemp("ms-studies"), PATIENT)


@pytest.fixture(scope="module")
def ct_studies(brain: Brain, tmp_path_factory: pytest.TempPathFactory) -> Studies:
    """Another patient's non-contrast head CTs: a haematoma of 20 mL, then of 30 mL (an expansion)."""
    pair = make_haematoma_pair(brain, baseline_ml=20.0, followup_ml=30.0, seed=1)
    return _write_pair(pair.baseline, pair.followup, SeriesRole.CT, CT_SPACING_MM,
                       tmp_path_factory.mktemp("ct-studies"), CT_PATIENT)


@pytest.fixture(scope="module")
def mets_studies(tmp_path_factory: pytest.TempPathFactory) -> Studies:
    """A third patient's T1CE and FLAIR, twice: a metastasis that grows (12 -> 20 mm), one that resolves (10 mm)
    and a new one (14 mm), the patient moved between the visits (a slab of Colin27 keeps it quick)."""
    pair = metastases_followup_pair(colin27_background(axial_slices=(60, 135)),
                                    {"growing": (12.0, 20.0), "resolved": (10.0, 0.0), "new": (0.0, 14.0)}, seed=11)
    folder = tmp_path_factory.mktemp("mets-studies")
    written = [write_study({role: v.with_array(np.round(v.array).astype(np.int16)) for role, v in volumes.items()},
                           folder / name, patient=METS_PATIENT, seed=f"mets-{name}", study_date=date)
               for name, date, volumes in (
                   ("baseline", BASELINE_DATE, {SeriesRole.T1CE: pair.prior.t1ce, SeriesRole.FLAIR: pair.prior.flair}),
                   ("followup", FOLLOWUP_DATE, {SeriesRole.T1CE: pair.followup_t1ce,
                                                SeriesRole.FLAIR: pair.followup_flair}))]
    return Studies(folder / "baseline", folder / "followup", written[0].study_instance_uid,
                   written[1].study_instance_uid)


@pytest.fixture(scope="module")
def id_less_ct_studies(brain: Brain, tmp_path_factory: pytest.TempPathFactory) -> Studies:
    """Head CTs whose PatientID is empty (an unregistered emergency, a bad interface): a haematoma pair that
    would qualify for the expansion pipeline if a patient could be told."""
    pair = make_haematoma_pair(brain, baseline_ml=15.0, followup_ml=25.0, seed=2)
    return _write_pair(pair.baseline, pair.followup, SeriesRole.CT, CT_SPACING_MM,
                       tmp_path_factory.mktemp("id-less-ct-studies"), NO_ID_PATIENT, seed="no-patient-id")


def _upload(client: OrthancClient, folder: Path) -> None:
    for path in sorted(folder.rglob("IM*")):
        client.upload(path.read_bytes())


# -- the services, in threads -------------------------------------------------------------------------------


@dataclass
class Site:
    """The services of one site as ``neuroflow serve ingest orchestrator longitudinal`` runs them."""

    backends: Backends
    settings: NeuroflowSettings
    services: list[Any] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def bus(self) -> InMemoryBus:
        bus = self.backends.bus()
        assert isinstance(bus, InMemoryBus)
        return bus

    @property
    def longitudinal(self) -> LongitudinalService:
        service = self.services[-1]
        if isinstance(service, WithDelivery):  # the service delivers the outbox's results beside its stage work
            service = service.service
        assert isinstance(service, LongitudinalService)
        return service

    def start(self) -> None:
        self.services = [build_ingest(self.backends), build_service("orchestrator", self.backends),
                         build_service("longitudinal", self.backends)]
        for service in self.services:
            thread = threading.Thread(target=service.run, name=type(service).__name__, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        for service in self.services:
            service.stop()
        for thread in self.threads:
            thread.join(timeout=60)
        self.backends.close()
        self.services, self.threads = [], []

    def workflows(self, study_uid: str, pipeline: str = MS_CHANGE_PIPELINE) -> list[WorkflowRecord]:
        return [r for r in self.backends.state().list() if r.study_key == study_key(study_uid)
                and r.pipeline == pipeline]

    def wait_for(self, what: str, found: Callable[[], list[WorkflowRecord]], count: int = 1) -> list[WorkflowRecord]:
        """The workflows ``found`` returns once there are ``count`` of them, all finished."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            records = found()
            if len(records) >= count and all(r.status not in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING)
                                              for r in records):
                return records
            time.sleep(0.1)
        raise AssertionError(f"{what}: not there within {WAIT_S:.0f} s; workflows: {self.backends.state().list()}")

    def wait_delivered(self, record: WorkflowRecord) -> None:
        """Until the workflow's results were delivered from the outbox to the PACS."""
        deadline = time.monotonic() + WAIT_S
        while not (found := self.backends.state().deliveries(workflow_id=record.workflow_id)) or any(
                d.status != DeliveryStatus.DELIVERED for d in found):
            assert time.monotonic() < deadline, f"workflow {record.workflow_id}: results not delivered"
            time.sleep(0.1)

    def report(self, record: WorkflowRecord) -> dict[str, Any]:
        path = self.settings.reports_dir / record.study_key / record.workflow_id / "report.json"
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded


@pytest.fixture
def make_site(orthancs: OrthancPair, tmp_path: Path) -> Iterator[Callable[..., Site]]:
    started: list[Site] = []

    def make(*, prior_wait_s: float = 3600.0, with_pacs: bool = False,
             pipelines: tuple[str, ...] = (MS_CHANGE_PIPELINE, HAEMATOMA_CHANGE_PIPELINE)) -> Site:
        endpoint = orthancs.site.endpoint
        pacs = orthancs.pacs.endpoint
        settings = NeuroflowSettings(
            site="test-site", reports_dir=tmp_path / "reports", records_root=tmp_path / "records",
            volume_store_root=tmp_path / "volumes", orchestration=FAST,
            bus=BusSettings(kind="inmemory"),
            state=StateSettings(kind="sqlite", sqlite_path=tmp_path / "state.sqlite3"),
            dicom=DicomSettings(source="orthanc", orthanc_url=endpoint.url, orthanc_username=endpoint.username,
                                orthanc_password=endpoint.password, destination=DESTINATION),  # type: ignore[arg-type]
            ingest=IngestSettings(wait_window_s=0.5, pipelines=list(pipelines), poll_interval_s=0.1),
            longitudinal=LongitudinalSettings(
                prior_wait_s=prior_wait_s, prior_sweep_interval_s=0.1,
                pacs=PacsNode(aet=PACS_AET, host="127.0.0.1", port=pacs.dicom_port) if with_pacs else None),
        )
        site = Site(Backends(settings), settings)
        site.start()
        started.append(site)
        return site

    yield make
    for site in started:
        site.stop()


def _instances(client: OrthancClient, study_uid: str) -> list[str]:
    found = [r["ID"] for r in client.lookup(study_uid) if r["Type"] == "Study"]
    if not found:
        return []
    return sorted(i["ID"] for i in client.get_json(f"/studies/{found[0]}/instances"))


def _succeeded(records: list[WorkflowRecord], words: str) -> list[WorkflowRecord]:
    return [r for r in records if r.status == WorkflowStatus.SUCCEEDED and words in r.detail]


# -- the behaviours -----------------------------------------------------------------------------------


def test_prior_in_the_site_orthanc_is_compared_stored_forwarded_and_a_redelivery_stores_nothing_twice(
        orthancs: OrthancPair, studies: Studies, make_site: Callable[..., Site]) -> None:
    site = make_site()
    _upload(orthancs.site_client, studies.baseline)
    _upload(orthancs.site_client, studies.followup)

    records = site.wait_for("the follow-up's comparison", lambda: _succeeded(
        site.workflows(studies.followup_uid), "compared with the prior"))
    report = site.report(records[0])
    assert report["longitudinal"]["baseline_study_instance_uid"] == studies.baseline_uid
    assert report["longitudinal"]["followup_study_instance_uid"] == studies.followup_uid
    # The phantom follow-up has new lesions: the section compare_pair made is the one reported.
    assert report["longitudinal"]["new_activity"] is True
    assert all(len(lesion["centroid_mm"]) == 3 and lesion["volume_mm3"] > 0 and lesion["location"]
               for lesion in report["longitudinal"]["new_lesions"])
    # The baseline itself has no earlier study: it waits for one (a deadline of an hour here).
    site.wait_for("the baseline's wait", lambda: _succeeded(site.workflows(studies.baseline_uid), "waiting"))

    stored = _instances(orthancs.site_client, studies.followup_uid)
    results = [i for i in stored
               if orthancs.site_client.get_json(f"/instances/{i}/simplified-tags").get("Manufacturer") == "neuroflow"]
    assert results, "no result object stored in the site Orthanc"
    site.wait_delivered(records[0])  # by the longitudinal service's delivery loop, from the outbox
    forwarded = _instances(orthancs.pacs_client, studies.followup_uid)
    assert len(forwarded) == len(results)
    # The PACS received the SR, and it counts the lesions the report lists (issue 13, section 4).
    srs = [ds for i in forwarded
           if (ds := _dataset(orthancs.pacs_client, i)).SOPClassUID == COMPREHENSIVE_3D_SR]
    assert len(srs) == 1, "no SR (or more than one) reached the PACS"
    assert _lesion_count(srs[0]) == len(report["longitudinal"]["new_lesions"])

    # The finished workflow's task, delivered again (as Kafka does after a consumer dies before committing).
    task = _task_of(site, records[0].workflow_id)
    stats = site.longitudinal.worker.stats
    replayed_before = stats.replayed
    site.bus.publish(topics.task_topic(task.stage), task.study.study_key, task.SerializeToString())
    deadline = time.monotonic() + 20
    while stats.replayed == replayed_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats.replayed == replayed_before + 1
    assert _instances(orthancs.site_client, studies.followup_uid) == stored
    assert len(_instances(orthancs.pacs_client, studies.followup_uid)) == len(forwarded)


COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def test_a_metastases_follow_up_is_compared_lesion_by_lesion_stored_and_forwarded_with_its_sr(
        orthancs: OrthancPair, mets_studies: Studies, make_site: Callable[..., Site]) -> None:
    # The distributed runtime runs the same comparison as `neuroflow run --pipeline metastases` on two studies.
    site = make_site(pipelines=(METASTASES_RESPONSE_PIPELINE,))
    _upload(orthancs.site_client, mets_studies.baseline)
    _upload(orthancs.site_client, mets_studies.followup)
    records = site.wait_for("the metastases follow-up", lambda: _succeeded(
        site.workflows(mets_studies.followup_uid, METASTASES_RESPONSE_PIPELINE), "compared with the prior"))
    section = site.report(records[0])["longitudinal"]
    assert section["baseline_study_instance_uid"] == mets_studies.baseline_uid
    response = section["metastases_response"]
    counts = response["counts"]
    assert counts["new"] >= 1 and counts["growing"] >= 1 and counts["resolved"] >= 1, response["lesions"]
    assert response["rano_bm"]["category"] == "PD" and response["review"]["needs_review"]
    site.wait_delivered(records[0])
    forwarded = [_dataset(orthancs.pacs_client, i) for i in _instances(orthancs.pacs_client, mets_studies.followup_uid)]
    srs = [ds for ds in forwarded if ds.SOPClassUID == COMPREHENSIVE_3D_SR]
    assert len(srs) == 1 and srs[0].SeriesDescription.startswith("NEEDS REVIEW")
    assert "RANO-BM PD from imaging only" in sr_texts(srs[0])


def _dataset(client: OrthancClient, instance_id: str) -> Dataset:
    return dcmread(io.BytesIO(client.request("GET", f"/instances/{instance_id}/file", what="read an instance")))


def _lesion_count(sr: Dataset) -> int:
    """The SR's new/enlarging lesion count (the NUM item coded NEW-LESION-COUNT)."""
    def walk(items: list[Dataset]) -> int | None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
            if item.get("ValueType") == "NUM" and name == "NEW-LESION-COUNT":
                return int(float(item.MeasuredValueSequence[0].NumericValue))
            found = walk(list(item.get("ContentSequence", [])))
            if found is not None:
                return found
        return None

    count = walk([sr])
    assert count is not None, "the SR holds no lesion count"
    return count


def _task_of(site: Site, workflow_id: str) -> tasks_pb2.TaskRequested:
    """The task the orchestrator dispatched for ``workflow_id``, read back from the bus (the orchestrator
    drops its own record of it when the workflow ends)."""
    stage = common_pb2.STAGE_LONGITUDINAL
    for topic in topics.task_topics_by_priority(stage):
        for message in site.bus.poll(topic, "test-redelivery", max_messages=1000):
            task = tasks_pb2.TaskRequested.FromString(message.value)
            if task.workflow_id == workflow_id:
                return task
    raise AssertionError(f"no task of workflow {workflow_id} on the bus")


def test_prior_held_only_by_the_pacs_is_found_by_c_find_and_moved_in_by_c_move(
        orthancs: OrthancPair, ct_studies: Studies, make_site: Callable[..., Site]) -> None:
    """On the haematoma pipeline (CT), whose comparison is the quicker one."""
    _upload(orthancs.pacs_client, ct_studies.baseline)
    site = make_site(with_pacs=True)
    _upload(orthancs.site_client, ct_studies.followup)

    records = site.wait_for("the follow-up's comparison", lambda: _succeeded(
        site.workflows(ct_studies.followup_uid, HAEMATOMA_CHANGE_PIPELINE), "compared with the prior"))
    assert site.report(records[0])["longitudinal"]["baseline_study_instance_uid"] == ct_studies.baseline_uid
    site.wait_delivered(records[0])  # the result objects drawn on the baseline reach the PACS too
    assert len(_instances(orthancs.site_client, ct_studies.baseline_uid)) == len(
        _instances(orthancs.pacs_client, ct_studies.baseline_uid)), "the prior was not moved into the site Orthanc"


def test_without_a_prior_the_follow_up_waits_then_runs_without_it_and_says_so_even_across_a_restart(
        orthancs: OrthancPair, studies: Studies, make_site: Callable[..., Site]) -> None:
    first = make_site(prior_wait_s=3.0)
    _upload(orthancs.site_client, studies.followup)
    first.wait_for("the wait", lambda: _succeeded(first.workflows(studies.followup_uid), "waiting for one until"))
    first.stop()  # the services go down while the study waits: its wait is in the state database

    site = make_site(prior_wait_s=3.0)
    records = site.wait_for("the run without a prior", lambda: site.workflows(studies.followup_uid), count=2)
    assert len(_succeeded(records, "waiting for one until")) == 1
    alone = _succeeded(records, "no prior within the deadline")
    assert len(alone) == 1
    report = site.report(alone[0])
    assert report["longitudinal"]["baseline_study_instance_uid"] == ""
    assert report["longitudinal"]["not_run"][MS_CHANGE_PIPELINE].startswith("no prior within 3 s")
    assert any("no prior within 3 s" in w for w in report["warnings"])


def test_a_prior_that_arrives_after_its_follow_up_was_processed_triggers_the_pair(
        orthancs: OrthancPair, ct_studies: Studies, make_site: Callable[..., Site]) -> None:
    """On the haematoma pipeline: a CT routed by ingest, its expansion measured once the prior is there."""
    site = make_site()
    _upload(orthancs.site_client, ct_studies.followup)
    site.wait_for("the follow-up's wait", lambda: _succeeded(
        site.workflows(ct_studies.followup_uid, HAEMATOMA_CHANGE_PIPELINE), "waiting"))

    _upload(orthancs.site_client, ct_studies.baseline)  # the older study, sent late
    records = site.wait_for("the pair's comparison", lambda: _succeeded(
        site.workflows(ct_studies.followup_uid, HAEMATOMA_CHANGE_PIPELINE), "compared with the prior"))
    section = site.report(records[0])["longitudinal"]
    assert section["baseline_study_instance_uid"] == ct_studies.baseline_uid
    assert section["haematoma"]["expansion"] is True  # 20 -> 30 mL
    # A CT is no failure of the MS pipeline: no RoutingFailed for it, since the study went somewhere.
    failed = site.bus.poll(topics.ROUTING_FAILED, "test-routing", max_messages=100)
    assert failed == []


@pytest.fixture(params=["sqlite", "postgres"])
def timepoint_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], TimepointStore]:
    if request.param == "sqlite":
        return lambda: SqliteTimepointStore(tmp_path / "longitudinal.sqlite3")
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresTimepointStore(dsn)


def test_an_ended_wait_is_claimed_by_exactly_one_of_several_workers(
        timepoint_store: Callable[[], TimepointStore]) -> None:
    stores = [timepoint_store() for _ in range(4)]
    for n in range(20):
        stores[0].start_wait(PatientTimepoint("p", MS_CHANGE_PIPELINE, f"1.2.{n}", f"2024010{n % 9}120000",
                                              TimepointState.WAITING, "", "", 100.0 + n, b"ready"))
    claimed: list[list[PatientTimepoint]] = [[] for _ in stores]

    def claim(index: int) -> None:
        claimed[index] = stores[index].claim_expired(now=110.5)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    uids = sorted(t.study_uid for batch in claimed for t in batch)
    assert uids == sorted(f"1.2.{n}" for n in range(11))  # deadlines 100..110 passed; each claimed once
    # A wait under way keeps its first deadline when the same study is seen again.
    again = stores[1].start_wait(PatientTimepoint("p", MS_CHANGE_PIPELINE, "1.2.15", "20240106120000",
                                                  TimepointState.WAITING, "", "", 999.0, b"ready"))
    assert again == 115.0


# -- PatientIDs that cannot find a patient, and answers about another patient -------------------------------


def test_a_follow_up_without_patient_id_pulls_nothing_from_the_pacs_is_compared_with_nothing_and_says_why(
        orthancs: OrthancPair, ct_studies: Studies, id_less_ct_studies: Studies,
        make_site: Callable[..., Site]) -> None:
    """A C-FIND with an empty PatientID is a universal match: it would move every earlier study of the PACS
    (another patient's, another ID-less one) into the site and compare the follow-up with one of them."""
    _upload(orthancs.pacs_client, ct_studies.baseline)  # another patient's earlier CT
    _upload(orthancs.pacs_client, id_less_ct_studies.baseline)  # an earlier CT without a PatientID either
    site = make_site(with_pacs=True)
    _upload(orthancs.site_client, id_less_ct_studies.followup)

    (record,) = site.wait_for("the follow-up's outcome", lambda: _succeeded(
        site.workflows(id_less_ct_studies.followup_uid, HAEMATOMA_CHANGE_PIPELINE), "not compared"))
    assert "PatientID" in record.detail
    report = site.report(record)
    assert report["longitudinal"]["baseline_study_instance_uid"] == ""
    reason = report["longitudinal"]["not_run"][HAEMATOMA_CHANGE_PIPELINE]
    assert "empty PatientID" in reason and "re-send" in reason
    assert any("empty PatientID" in w for w in report["warnings"])
    assert report["outputs"] == []
    # Nothing came in from the PACS: the site holds the follow-up alone, and stored no result for it.
    assert _instances(orthancs.site_client, ct_studies.baseline_uid) == []
    assert _instances(orthancs.site_client, id_less_ct_studies.baseline_uid) == []
    assert len(orthancs.site_client.get_json("/studies")) == 1
    # Ingest gave it no patient key: ID-less studies are no one patient.
    task = _task_of(site, record.workflow_id)
    assert task.study.patient_key == ""


def _instance(patient_id: str, *, issuer: str | None = None, study_date: str = "20230301") -> tuple[bytes, str]:
    """One small MR instance of a study of its own: (Part-10 bytes, StudyInstanceUID)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.StudyDate, ds.StudyTime = patient_id, "MR", study_date, "101500"
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), str(ds.StudyInstanceUID)


# Makes a real Orthanc PACS answer as a sloppy PACS does: the PatientID it is asked for matches as a prefix.
_WILDCARD_PACS_LUA = """
function IncomingFindRequestFilter(query, origin)
  if query['0010,0020'] ~= nil and query['0010,0020'] ~= '' then
    query['0010,0020'] = query['0010,0020'] .. '*'
  end
  return query
end
"""


def test_pacs_and_site_answers_about_another_patient_are_discarded_and_never_moved_in(tmp_path: Path) -> None:
    """Only the prior whose PatientID and IssuerOfPatientID are exactly the follow-up's is moved in, though the
    PACS answers a longer PatientID (prefix matching) and the same PatientID from another issuer, and the
    site's Orthanc answers a PatientID that differs in case."""
    lua = tmp_path / "wildcard-pacs.lua"
    lua.write_text(_WILDCARD_PACS_LUA)
    template = tmp_path / "orthanc.json.template"
    scripts = json.dumps([str(lua)])
    template.write_text(CONFIG_TEMPLATE.read_text().replace("{", f'{{\n  "LuaScripts": {scripts},', 1))
    site_port = free_loopback_port()
    pacs = start_orthanc("nf-sloppy-pacs", tmp_path / "pacs", aet="NFSLOPPYPACS", template=template,
                         modalities={"site": DicomModality("NFPIDSITE", "127.0.0.1", site_port)})
    try:
        site = start_orthanc("nf-pid-site", tmp_path / "site", aet="NFPIDSITE", dicom_port=site_port)
        try:
            pacs_client, site_client = OrthancClient(pacs.endpoint), OrthancClient(site.endpoint)
            uids = {}
            for name, patient_id, issuer in (("prior", "NF-0042", "HOSP-A"), ("longer", "NF-00421", "HOSP-A"),
                                             ("other issuer", "NF-0042", "HOSP-B"), ("no issuer", "NF-0042", None)):
                part10, uids[name] = _instance(patient_id, issuer=issuer)
                pacs_client.upload(part10)
            part10, uids["other case"] = _instance("nf-0042", issuer="HOSP-A")
            site_client.upload(part10)
            locator = PriorLocator(site_client, LongitudinalSettings(
                pacs=PacsNode(aet="NFSLOPPYPACS", host="127.0.0.1", port=pacs.endpoint.dicom_port)))
            patient = PatientIdentity("NF-0042", "HOSP-A")

            moved = locator.retrieve_from_pacs(patient, "20240115101500", set(), study_key="pid-test")
            assert moved == [uids["prior"]]
            in_site = {s["MainDicomTags"]["StudyInstanceUID"] for s in site_client.get_json("/studies?expand")}
            assert in_site == {uids["prior"], uids["other case"]}
            # The site's /tools/find matches PatientID case-insensitively: the other case is not this patient.
            assert [s.study_instance_uid for s in locator.studies_in_site(patient, "20240115101500")] == [
                uids["prior"]]
            # An empty or wildcard PatientID asks neither the site nor the PACS anything.
            for unusable in ("", "NF-00*"):
                assert locator.retrieve_from_pacs(PatientIdentity(unusable), "20240115101500", set(),
                                                  study_key="pid-test") == []
                assert locator.studies_in_site(PatientIdentity(unusable), "20240115101500") == []
            assert {s["MainDicomTags"]["StudyInstanceUID"] for s in site_client.get_json("/studies?expand")} == in_site
        finally:
            site.stop()
    finally:
        pacs.stop()
