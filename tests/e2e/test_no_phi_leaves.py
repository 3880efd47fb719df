"""No patient identifier where the issue forbids it, after a real distributed flow on the local stack
(PostgreSQL, site and PACS Orthanc, Kafka, Triton over mutual TLS, one process per service).

Two studies of one patient whose PatientID, name, birth date, accession numbers and UIDs are distinctive
are sent by C-STORE: one gives its SEG in the PACS, the other (blank images) fails and is dead-lettered.
Then everything is scanned:

- never a PatientID, name or birth date: service logs, every service's /metrics, every Kafka message on
  every topic (read from the beginning), every table of the state database, the reports;
- never a UID or accession number: logs, metrics, dead letters (Kafka's dead-letter topics and the rows
  of the state database, payload included), error texts (failure messages on Kafka, the workflows' details
  and history), the audit trail and the reports' texts (summary.txt, errors, warnings).

Where a UID is legitimately needed at the site it stays: the task topics carry the StudyInstanceUID and
the series UIDs (the workers read the study from the site's Orthanc by them), report.json records the
study's and its series' UIDs for the site (its other fields name none), and the deliveries outbox the SOP
Instance UIDs of the results it forwards."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pydicom
import pytest

from neuroflow.core import topics
from neuroflow.core.kafka_bus import KafkaBus
from neuroflow.core.kafka_security import client_security
from neuroflow.core.orthanc import OrthancClient
from neuroflow.core.roles import SeriesRole
from neuroflow.core.state_postgres import PostgresStateStore
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools import stack
from neuroflow.devtools.cstore import send_folder
from neuroflow.devtools.dicom_writer import PatientInfo, write_study
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.proto.neuroflow.v1 import events_pb2, tasks_pb2

from .conftest import tcga_volumes

PATIENT = PatientInfo(patient_id="NFLEAK-PID-93817", name="QUIXOTE^ZEBULON^LEAKTEST", birth_date="19040229", sex="F")
WAIT_WINDOW_S = 3.0


@dataclass(frozen=True)
class Identifiers:
    patient: dict[str, str]  # what names the patient: never anywhere
    uids: dict[str, str]  # UIDs and accession numbers: never outside the site's own records

    @property
    def all(self) -> dict[str, str]:
        return {**self.patient, **self.uids}


def _identifiers(folders: list[Path]) -> Identifiers:
    patient = {"PatientID": PATIENT.patient_id, "PatientName": PATIENT.name, "name part": "ZEBULON",
               "PatientBirthDate": PATIENT.birth_date}
    uids: dict[str, str] = {}
    for folder in folders:
        for path in folder.rglob("IM*"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uids[f"StudyInstanceUID {ds.StudyInstanceUID}"] = ds.StudyInstanceUID
            uids[f"SeriesInstanceUID {ds.SeriesInstanceUID}"] = ds.SeriesInstanceUID
            uids[f"AccessionNumber {ds.AccessionNumber}"] = ds.AccessionNumber
            uids[f"SOPInstanceUID {ds.SOPInstanceUID}"] = ds.SOPInstanceUID
    return Identifiers(patient, uids)


def _found(text: str | bytes, needles: dict[str, str]) -> list[str]:
    """The names of the ``needles`` in ``text``, each matched as a whole token (a birth date is not found
    inside a longer number, a UID not inside a longer UID)."""
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in needles.items()
            if re.search(rb"(?<![0-9A-Za-z.])" + re.escape(value.encode()) + rb"(?![0-9A-Za-z.])", data)]


def _blank_study(folder: Path) -> Path:
    """Four blank series (the study fails at preprocessing: nothing to register or skull-strip)."""
    grid = Geometry((2.0, 2.0, 4.0), (0.0, 0.0, 0.0), tuple(float(x) for x in np.eye(3).ravel()), (48, 48, 12))
    blank = Volume(np.full(grid.size[::-1], 100.0, dtype=np.float32), grid)
    write_study({role: blank for role in (SeriesRole.T1, SeriesRole.T1CE, SeriesRole.T2, SeriesRole.FLAIR)},
                folder, vendor=Vendor.SIEMENS, patient=PATIENT, seed="phi-scan-blank", study_date="20240402")
    return folder


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Identifiers]]:
    root = tmp_path_factory.mktemp("phi-scan")
    good = root / "good"
    write_study(tcga_volumes(), good, vendor=Vendor.GE, patient=PATIENT, seed="phi-scan-good")
    blank = _blank_study(root / "blank")
    ids = _identifiers([good, blank])
    with stack.temporary(stack.StackOptions(wait_window_s=WAIT_WINDOW_S)) as started:
        # Ingest follows the change feed from where it was when it first started: send once it follows.
        ingest_log = Path(started["root"]) / "logs" / "ingest-1.log"
        _wait_for(lambda: "following site" in ingest_log.read_text(), 180, "ingest to follow the site Orthanc")
        site = started["orthanc"]["site"]
        for folder in (blank, good):
            send_folder(folder, site["dicom_host"], site["dicom_port"], site["aet"])
        client = OrthancClient(stack.orthanc_endpoint(started, "pacs"))
        dsn = started["postgresql"]["dsn"]
        _wait_for(lambda: client.post_json("/tools/find", {"Level": "Instance", "Query": {"Modality": "SEG"}})
                  and _dead_letter_count(dsn) >= 1, 600, "a SEG in the PACS and a dead letter")
        time.sleep(3.0)  # the last log lines and metrics of the finished work
        yield started, ids
        shutil.copytree(Path(started["root"]) / "logs", root / "logs")  # kept for a failure's diagnosis


def _wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(2.0)


def _dead_letter_count(dsn: str) -> int:
    with psycopg.connect(dsn) as db:
        try:
            row = db.execute("SELECT count(*) FROM dead_letters").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def test_service_logs_name_no_patient_and_no_uid(flow: tuple[dict[str, Any], Identifiers]) -> None:
    started, ids = flow
    logs = sorted((Path(started["root"]) / "logs").glob("*.log"))
    assert logs
    leaks = {log.name: found for log in logs if (found := _found(log.read_bytes(), ids.all))}
    assert not leaks


def test_metrics_name_no_patient_and_no_uid(flow: tuple[dict[str, Any], Identifiers]) -> None:
    started, ids = flow
    leaks, unreachable = {}, {}
    access = stack.metrics_access(Path(started["root"]))  # the scraper's login: the ports refuse anyone else
    for process in started["processes"]:
        if "metrics_port" in process:
            try:
                request = urllib.request.Request(f"https://127.0.0.1:{process['metrics_port']}/metrics",
                                                 headers=access.headers)
                with urllib.request.urlopen(request, timeout=10, context=access.ssl_context()) as answer:
                    if found := _found(answer.read(), ids.all):
                        leaks[process["name"]] = found
            except OSError as exc:
                log = Path(started["root"]) / "logs" / f"{process['name']}.log"
                unreachable[process["name"]] = (f"{exc}; running: {stack.is_running(process)}; log ends: "
                                                f"{log.read_text()[-1500:] if log.is_file() else '-'}")
    assert not leaks
    assert not unreachable


def test_kafka_messages_name_no_patient_and_dead_letters_no_uid(flow: tuple[dict[str, Any], Identifiers]) -> None:
    started, ids = flow
    operator = stack.stack_bus_settings(started)  # the operator's login reads every topic; no service may
    bus = KafkaBus(operator.bootstrap, client_id="phi-scan", security=client_security(operator))
    dead_letter_topics = {topics.dead_letter_topic(stage) for stage in topics.STAGES}
    leaks: dict[str, list[str]] = {}
    read = {}
    try:
        for topic in topics.all_topics():
            messages = []
            quiet_until = time.monotonic() + 5.0  # a fresh group joins, then reads from the start
            while time.monotonic() < quiet_until:
                batch = bus.poll(topic, "phi-scan", max_messages=500, timeout_s=1.0)
                if batch:
                    messages += batch
                    quiet_until = time.monotonic() + 2.0
            read[topic] = len(messages)
            needles = ids.all if topic in dead_letter_topics else ids.patient
            for message in messages:
                found = _found(message.key.encode() + b"\x00" + message.value, needles)
                found += _found(_error_text(topic, message.value), ids.all)
                if found:
                    leaks.setdefault(topic, []).extend(found)
    finally:
        bus.close()
    # Two studies (a study whose last series came after its wait window is ready again, with more series).
    assert read[topics.STUDY_READY] >= 2 and sum(read[t] for t in dead_letter_topics) >= 1
    assert not leaks


def _error_text(topic: str, value: bytes) -> str:
    """The error text of a failure message (the messages themselves carry the UIDs the site needs)."""
    if topic == topics.TASK_FAILED:
        return tasks_pb2.TaskFailed.FromString(value).reason.message
    if topic == topics.ROUTING_FAILED:
        return events_pb2.RoutingFailed.FromString(value).message
    return ""


def test_state_database_names_no_patient_and_its_texts_and_dead_letters_no_uid(
        flow: tuple[dict[str, Any], Identifiers]) -> None:
    started, ids = flow
    dsn = started["postgresql"]["dsn"]
    leaks: dict[str, list[str]] = {}
    with psycopg.connect(dsn) as db:
        tables = [str(r[0]) for r in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()]
        for table in tables:
            rows = db.execute(f'SELECT * FROM "{table}"').fetchall()  # names from the catalogue, not input
            # Where the site keeps UIDs it needs: the outbox (results to forward), the patients' timepoints.
            needles = ids.patient if table in ("deliveries", "longitudinal_timepoints") else ids.all
            if found := _found(repr(rows), needles):
                leaks[table] = found
    store = PostgresStateStore(dsn)
    try:
        letters = store.dead_letters(include_replayed=True)
    finally:
        store.close()
    assert letters
    for letter in letters:  # the parked payload, as bytes
        if found := _found(letter.payload + letter.reason.encode(), ids.all):
            leaks.setdefault(f"dead letter {letter.letter_id}", []).extend(found)
    assert not leaks


def test_reports_name_no_patient_and_their_texts_no_uid(flow: tuple[dict[str, Any], Identifiers]) -> None:
    started, ids = flow
    reports = sorted((Path(started["root"]) / "reports").rglob("report.json"))
    assert reports
    leaks = {}
    for path in reports:
        report = json.loads(path.read_text())
        found = _found(json.dumps(report), ids.patient)
        # report.json is the site's record of which study and series it is about: its UID fields stay,
        # everything else (errors, warnings, checks, descriptions) names no UID.
        found += _found(json.dumps(_without_uid_fields(report)), ids.uids)
        summary = path.with_name("summary.txt")
        if summary.is_file():
            found += _found(summary.read_text(), ids.all)
        if found:
            leaks[str(path.relative_to(started["root"]))] = found
    assert not leaks


def _without_uid_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_uid_fields(v) for k, v in value.items() if not k.endswith("_uid")}
    if isinstance(value, list):
        return [_without_uid_fields(v) for v in value]
    return value
