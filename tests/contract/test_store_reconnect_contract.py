"""Every store kept in PostgreSQL survives the database restarting, run against each store: the workflow
state, the ingest wait windows and the longitudinal timepoints. (Issue 11, defect 1: the wait-window and
timepoint stores kept their dead connection after a restart, and every later call failed with "the
connection is lost", so ingest stopped for good.)

Adding a store is one entry in STORES: how to open it on a DSN, write the n-th item, and read back every
item written. The tests restart a PostgreSQL server of their own (tests/servers/postgres.private_postgres):
a fast shutdown ends every open session, as a restart, a failover or an upgrade of the database does.
Asserted: the first call after the restart succeeds on the same store object, nothing written before is
lost; while the database stays down a call fails fast with the retryable StoreUnavailable, not a hang,
and the store works again once the database is back.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any

import pytest

from neuroflow.core.errors import StoreUnavailable
from neuroflow.core.state_postgres import PostgresStateStore
from neuroflow.devtools.postgres_server import PostgresProcess
from neuroflow.ingest.window_store import PostgresWindowStore
from neuroflow.longitudinal.priors import PatientTimepoint, PostgresTimepointStore, TimepointState
from tests.servers.postgres import private_postgres

_databases = count()


@dataclass(frozen=True)
class StoreUnderTest:
    open: Callable[[str], Any]
    write: Callable[[Any, int], None]  # write item n
    read: Callable[[Any], list[int]]  # every item written, ascending


def _timepoint(n: int) -> PatientTimepoint:
    return PatientTimepoint(patient_key="patient-key", pipeline="ms_change", study_uid=f"1.2.3.{n}",
                            acquired_at=f"2026010{n}120000", state=TimepointState.COMPARED, baseline_uid="",
                            baseline_at="", wait_deadline=0.0, ready=b"ready")


STORES = [
    pytest.param(StoreUnderTest(
        open=PostgresStateStore,
        write=lambda s, n: s.create(f"wf-{n}", f"study-{n}", "glioma", f"hash-{n}"),
        read=lambda s: sorted(int(r.workflow_id.removeprefix("wf-")) for r in s.list()),
    ), id="workflow-state"),
    pytest.param(StoreUnderTest(
        open=PostgresWindowStore,
        # The feed cursor only moves forward: after writing 1..n it reads n.
        write=lambda s, n: s.advance_cursor("orthanc", n),
        read=lambda s: list(range(1, s.cursor("orthanc") + 1)),
    ), id="ingest-wait-windows"),
    pytest.param(StoreUnderTest(
        open=PostgresTimepointStore,
        write=lambda s, n: s.record(_timepoint(n)),
        read=lambda s: sorted(int(t.study_uid.rsplit(".", 1)[1]) for t in s.newer_than("patient-key", "ms_change", "")),
    ), id="longitudinal-timepoints"),
]


@pytest.fixture(scope="module")
def restartable_postgres() -> Iterator[PostgresProcess]:
    with private_postgres() as server:
        yield server


@pytest.fixture
def dsn(restartable_postgres: PostgresProcess) -> Iterator[str]:
    if not restartable_postgres.running:  # a test that failed while the server was down
        restartable_postgres.start()
    name = f"nf_reconnect_{os.getpid()}_{next(_databases)}"
    yield restartable_postgres.create_database(name)
    if restartable_postgres.running:
        restartable_postgres.drop_database(name)


@pytest.mark.parametrize("store", STORES)
def test_a_store_keeps_working_after_postgres_restarts(
    store: StoreUnderTest, dsn: str, restartable_postgres: PostgresProcess
) -> None:
    under_test = store.open(dsn)
    store.write(under_test, 1)
    assert store.read(under_test) == [1]

    restartable_postgres.restart()
    store.write(under_test, 2)  # the first call after the restart, on the connection the restart ended
    assert store.read(under_test) == [1, 2]

    restartable_postgres.restart()
    assert store.read(under_test) == [1, 2]  # a read first this time
    store.write(under_test, 3)
    assert store.read(under_test) == [1, 2, 3]


@pytest.mark.parametrize("store", STORES)
def test_a_store_used_by_several_threads_reconnects_in_each(
    store: StoreUnderTest, dsn: str, restartable_postgres: PostgresProcess
) -> None:
    """Each thread has its own connection (so each has its own dead one after the restart)."""
    under_test = store.open(dsn)
    errors: list[BaseException] = []

    def use(n: int) -> None:
        try:
            store.write(under_test, n)
        except BaseException as error:  # reported below, with the thread's item
            errors.append(error)

    def in_threads(items: range) -> None:
        threads = [threading.Thread(target=use, args=(n,)) for n in items]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    in_threads(range(1, 4))
    restartable_postgres.restart()
    in_threads(range(4, 7))
    assert errors == []
    assert store.read(under_test) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("store", STORES)
def test_a_database_that_stays_down_is_a_fast_retryable_error_and_the_store_recovers(
    store: StoreUnderTest, dsn: str, restartable_postgres: PostgresProcess
) -> None:
    under_test = store.open(dsn)
    store.write(under_test, 1)
    restartable_postgres.stop()
    try:
        for _ in range(2):  # the dead connection first, then a refused new one
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"port=\d+") as raised:
                store.write(under_test, 2)
            assert time.monotonic() - started < 15, "a database that is down must not make a call hang"
            assert "password" not in str(raised.value)
    finally:
        restartable_postgres.start()
    store.write(under_test, 2)
    assert store.read(under_test) == [1, 2]
