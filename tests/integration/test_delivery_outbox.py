"""Delivery of stored results to the destination PACS from the outbox in the state database, against a real
site Orthanc, a real destination PACS Orthanc and a real PostgreSQL.

Proved here: a PACS that is down for longer than the old retry budget (three tries in each of three task
attempts, then the result was dead-lettered and never delivered) delays the result and does not lose it:
two delivery replicas keep trying with backoff, and once the PACS is back the result is sent exactly once
(one accepted send between both replicas, one instance in the PACS) and is never sent again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from neuroflow.core.config import DeliverySettings
from neuroflow.core.delivery import DeliveryLoop
from neuroflow.core.orthanc import OrthancClient, OrthancDicomSink
from neuroflow.core.roles import SeriesRole
from neuroflow.core.state_postgres import PostgresStateStore
from neuroflow.core.state_schedules import DeliveryStatus
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.devtools.orthanc_server import OrthancProcess, restart_orthanc
from tests.servers.orthanc import PACS_MODALITY, OrthancPair, site_and_pacs

OLD_TRIES = 3 * 3  # forward tries per task x orchestrator attempts, before the result was given up
SETTINGS = DeliverySettings(retry_for_s=600.0, backoff_s=0.3, backoff_max_s=0.6, poll_interval_s=0.1, lease_s=30.0)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[OrthancPair]:
    with site_and_pacs(tmp_path / "orthanc", name="delivery", site_aet="NFDELIVERY", pacs_aet="DELIVERYPACS",
                       scu_timeout_s=2) as servers:
        yield servers


def a_result(folder: Path) -> pydicom.Dataset:
    """One small DICOM object standing for a stored result (the outbox sends whatever the site holds)."""
    geometry = Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size=(16, 16, 1))
    image = Volume(np.arange(256, dtype=np.int16).reshape(1, 16, 16), geometry)
    written = write_study({SeriesRole.T1CE: image}, folder, seed="delivery-outbox")
    (path,) = written.series[SeriesRole.T1CE].paths
    return pydicom.dcmread(path)


def pacs_instances(client: OrthancClient) -> list[str]:
    instances: list[str] = client.get_json("/instances")
    return instances


def wait_until(what: str, done: Callable[[], bool], wait_s: float = 60.0) -> None:
    deadline = time.monotonic() + wait_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def test_a_pacs_down_longer_than_the_old_retry_budget_gets_the_result_exactly_once_when_it_is_back(
    pair: OrthancPair, postgres_dsn: str, tmp_path: Path,
) -> None:
    stores = [PostgresStateStore(postgres_dsn) for _ in range(3)]
    sink = OrthancDicomSink(pair.site_client)
    loops = [DeliveryLoop(store, sink, SETTINGS, holder=f"replica-{n}") for n, store in enumerate(stores[:2])]
    threads = [threading.Thread(target=loop.run, daemon=True) for loop in loops]
    restarted: OrthancProcess | None = None
    try:
        pair.pacs.stop()
        uid = sink.store(a_result(tmp_path / "result"))
        now = time.time()
        assert stores[2].enqueue_delivery("wf-outage", PACS_MODALITY, study_key="k-outage", pipeline="glioma",
                                          stage="results", sop_instance_uids=[uid], now=now,
                                          give_up_at=now + SETTINGS.retry_for_s)
        for thread in threads:
            thread.start()

        def attempts() -> int:
            return stores[2].deliveries(workflow_id="wf-outage")[0].attempts

        wait_until(f"more than {OLD_TRIES} tries failed", lambda: attempts() > OLD_TRIES + 1)
        (waiting,) = stores[2].deliveries(workflow_id="wf-outage")
        assert waiting.status == DeliveryStatus.PENDING and "unavailable" in waiting.last_error.lower()
        assert stores[2].dead_letters() == []  # nothing given up

        restarted = restart_orthanc(pair.pacs.name, pair.pacs.storage_dir, pair.pacs.endpoint)
        wait_until("the result was delivered", lambda: stores[2].deliveries(
            workflow_id="wf-outage")[0].status == DeliveryStatus.DELIVERED)
        time.sleep(2.0)  # both replicas keep looking: nothing is sent again

        assert sum(loop.sent for loop in loops) == 1
        assert len(pacs_instances(pair.pacs_client)) == 1
        assert [r["Type"] for r in pair.pacs_client.lookup(uid)] == ["Instance"]
        (delivered,) = stores[2].deliveries(workflow_id="wf-outage")
        assert delivered.delivered_at is not None and delivered.attempts > waiting.attempts
    finally:
        for loop in loops:
            loop.stop()
        for thread in threads:
            with contextlib.suppress(RuntimeError):
                thread.join(timeout=30)
        if restarted is not None:
            restarted.stop()
        for store in stores:
            store.close()
