"""Ingest across a PostgreSQL restart, on a real Orthanc and a real PostgreSQL of the test's own (issue 11,
defect 1: after a restart the wait-window store kept its dead connection, every later call failed, and the
ingest loop retried forever without handing anything on, while its liveness probe, which only asked for
/metrics, kept saying it was fine).

* A study arriving while PostgreSQL restarts is handed on once, by the same ingest loop, after its window.
* ``neuroflow serve ingest``: /readyz answers 503 naming the state database while PostgreSQL is down and
  200 once it is back; /healthz answers 503 once the loop has made no progress for the bound (every
  iteration fails while the database is down) and 200 again when the loop recovers by itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import psycopg
import pytest

from neuroflow.core import topics
from neuroflow.core.bus import InMemoryBus
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.devtools.ports import free_loopback_port
from neuroflow.devtools.postgres_server import PostgresProcess
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.ingest.service import IngestService
from neuroflow.ingest.window_store import PostgresWindowStore
from neuroflow.proto.neuroflow.v1 import events_pb2
from tests.integration.test_ingest import FILES, _crop, _settings, _upload
from tests.servers.orthanc import OrthancPair
from tests.servers.postgres import private_postgres

WAIT_S = 90.0  # generous: a busy, shared machine
_databases = count()


@pytest.fixture(scope="module")
def restartable_postgres() -> Iterator[PostgresProcess]:
    with private_postgres() as server:
        yield server


@pytest.fixture
def dsn(restartable_postgres: PostgresProcess) -> str:
    if not restartable_postgres.running:  # a test that failed while the server was down
        restartable_postgres.start()
    return restartable_postgres.create_database(f"nf_restart_{os.getpid()}_{next(_databases)}")


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.2)


def test_ingest_hands_a_study_on_after_postgres_restarted_mid_run(
    orthancs: OrthancPair, dsn: str, restartable_postgres: PostgresProcess, tmp_path: Path
) -> None:
    bus = InMemoryBus()
    ingest = IngestService(orthancs.site_client, PostgresWindowStore(dsn), bus,
                           _settings(wait_window_s=3.0, poll_interval_s=0.1))
    loop = threading.Thread(target=ingest.run, name="ingest", daemon=True)
    loop.start()
    ready: list[events_pb2.StudyReady] = []

    def handed_on() -> bool:
        ready.extend(events_pb2.StudyReady.FromString(m.value) for m in bus.poll(topics.STUDY_READY, "test", 100))
        return bool(ready)

    def windows_recorded() -> int:
        with psycopg.connect(dsn) as db:
            row = db.execute("SELECT count(*) FROM study_windows").fetchone()
            return int(row[0]) if row else 0

    try:
        written = write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.GE, seed="pg-restart")
        _upload(orthancs, tmp_path / "study")
        # The loop has recorded the study's window on its connection; its window has not closed yet.
        wait_until("the loop recorded the study", lambda: windows_recorded() == 1)
        assert not handed_on()
        restartable_postgres.restart()  # ends the loop's connection
        wait_until("the study was handed on after the restart", handed_on)
        time.sleep(2 * 3.0)  # two more windows: nothing is handed on twice
        handed_on()
    finally:
        ingest.stop()
        loop.join(30)
    assert [r.study.study_instance_uid for r in ready] == [written.study_instance_uid]
    assert ingest.counters.triggers == 1


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as failing:
        return failing.code, failing.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return 0, str(error)


def checks(body: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(body)["checks"]
    return result


def test_serve_ingest_health_and_readiness_follow_postgres_going_down_and_coming_back(
    orthancs: OrthancPair, dsn: str, restartable_postgres: PostgresProcess, tmp_path: Path
) -> None:
    port = free_loopback_port()
    site = orthancs.site.endpoint
    env = {**os.environ, "NEUROFLOW_SITE": "restart-test", "NEUROFLOW_METRICS_PORT": str(port),
           "NEUROFLOW_DICOM__SOURCE": "orthanc", "NEUROFLOW_DICOM__ORTHANC_URL": site.url,
           "NEUROFLOW_DICOM__ORTHANC_USERNAME": site.username, "NEUROFLOW_DICOM__ORTHANC_PASSWORD": site.password,
           "NEUROFLOW_STATE__KIND": "postgres", "NEUROFLOW_STATE__DSN": dsn,
           "NEUROFLOW_STATE__CONNECT_TIMEOUT_S": "2", "NEUROFLOW_INGEST__POLL_INTERVAL_S": "0.2",
           "NEUROFLOW_HEALTH__STALL_S": "3", "NEUROFLOW_HEALTH__CHECK_TIMEOUT_S": "2",
           "NEUROFLOW_RECORDS_ROOT": str(tmp_path / "records"), "NEUROFLOW_REPORTS_DIR": str(tmp_path / "reports"),
           "NEUROFLOW_VOLUME_STORE_ROOT": str(tmp_path / "volumes")}
    log_path = tmp_path / "ingest.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "neuroflow.cli", "serve", "ingest"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def answers(path: str, status: int, also: Callable[[dict[str, Any]], bool] = lambda _: True) -> bool:
        assert process.poll() is None, f"neuroflow serve ingest exited; its log:\n{log_path.read_text()[-3000:]}"
        code, body = get(base + path)
        return code == status and also(checks(body))

    try:
        wait_until("ingest is alive", lambda: answers("/healthz", 200, lambda c: c.get("ingest") == "ok"))
        wait_until("ingest is ready", lambda: answers("/readyz", 200))
        code, body = get(base + "/readyz")
        assert checks(body) == {"state_db": "ok", "orthanc": "ok"}  # the in-memory bus needs no check
        code, body = get(base + "/metrics")
        assert code == 200 and "# HELP neuroflow_ingest_studies_received" in body

        restartable_postgres.stop()
        wait_until("/readyz names the state database", lambda: answers(
            "/readyz", 503, lambda c: c["state_db"] != "ok" and c["orthanc"] == "ok"))
        wait_until("/healthz says the ingest loop makes no progress", lambda: answers(
            "/healthz", 503, lambda c: "no progress" in c["ingest"]))

        restartable_postgres.start()
        wait_until("/readyz is back", lambda: answers("/readyz", 200))
        wait_until("/healthz is back: the loop recovered without a restart", lambda: answers("/healthz", 200))
        assert process.poll() is None
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
