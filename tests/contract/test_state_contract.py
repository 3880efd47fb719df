"""Contract of neuroflow.core.state.WorkflowStateStore, run against every backend.

Adding a backend is one entry in BACKENDS: a context manager that takes a scratch folder and a way to
ask for a pytest fixture (a real server), and yields an empty store. PostgreSQL runs on a server the
tests start (tests/servers/postgres.py), one fresh database per test. Asserted: the same work is created
once, even by racing threads; statuses move only along ALLOWED_TRANSITIONS; records carry timezone-aware
timestamps that move forward.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from neuroflow.core.errors import NeuroflowError
from neuroflow.core.state import (
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    SqliteStateStore,
    WorkflowNotFound,
    WorkflowRecord,
    WorkflowStateStore,
    WorkflowStatus,
)
from neuroflow.core.state_postgres import PostgresStateStore
from neuroflow.devtools.postgres_server import PostgresProcess

FixtureLookup = Callable[[str], Any]


@contextlib.contextmanager
def sqlite_store(scratch: Path, fixture: FixtureLookup) -> Iterator[WorkflowStateStore]:
    store = SqliteStateStore(scratch / "state" / "workflows.sqlite")
    yield store
    store.close()


@contextlib.contextmanager
def postgres_store(scratch: Path, fixture: FixtureLookup) -> Iterator[WorkflowStateStore]:
    store = PostgresStateStore(fixture("postgres_dsn"))
    yield store
    store.close()


BACKENDS: list[object] = [pytest.param(sqlite_store, id="sqlite"), pytest.param(postgres_store, id="postgres")]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkflowStateStore]:
    factory: Callable[[Path, FixtureLookup], contextlib.AbstractContextManager[WorkflowStateStore]] = request.param
    with factory(tmp_path, request.getfixturevalue) as under_test:
        yield under_test


def _must_get(store: WorkflowStateStore, workflow_id: str) -> WorkflowRecord:
    record = store.get(workflow_id)
    assert record is not None, f"workflow {workflow_id} vanished"
    return record


def test_a_new_workflow_is_pending_with_utc_timestamps(store: WorkflowStateStore) -> None:
    before = datetime.now(UTC)
    assert store.create("wf-1", "3f2a9c1b7d4e", "glioma", "hash-a") is True
    record = store.get("wf-1")

    assert record is not None
    assert (record.workflow_id, record.study_key, record.pipeline, record.input_hash) == (
        "wf-1", "3f2a9c1b7d4e", "glioma", "hash-a")
    assert (record.status, record.stage, record.detail, record.stage_seconds) == (
        WorkflowStatus.PENDING, None, "", {})
    assert record.created_at.utcoffset() == timedelta(0)  # timezone-aware, in UTC
    assert before <= record.created_at == record.updated_at <= datetime.now(UTC)


def test_creating_the_same_workflow_again_changes_nothing(store: WorkflowStateStore) -> None:
    assert store.create("wf-1", "study", "glioma", "hash-a")
    store.set_status("wf-1", WorkflowStatus.RUNNING, stage="preprocess")

    assert store.create("wf-1", "study", "glioma", "hash-a") is False
    assert _must_get(store, "wf-1").status == WorkflowStatus.RUNNING


def test_the_same_study_pipeline_and_input_is_the_same_work_whatever_the_id(
        store: WorkflowStateStore) -> None:
    assert store.create("wf-1", "study", "glioma", "hash-a")

    assert store.create("wf-2", "study", "glioma", "hash-a") is False
    assert store.get("wf-2") is None
    found = store.find("study", "glioma", "hash-a")
    assert found is not None and found.workflow_id == "wf-1"
    # A changed input (a late series) or another pipeline is new work.
    assert store.create("wf-3", "study", "glioma", "hash-b")
    assert store.create("wf-4", "study", "ms-lesions", "hash-a")
    assert store.find("study", "glioma", "hash-c") is None


def test_concurrent_creates_of_the_same_workflow_succeed_exactly_once(store: WorkflowStateStore) -> None:
    threads, results = 8, []
    barrier = threading.Barrier(threads)
    lock = threading.Lock()

    def create(n: int) -> None:
        barrier.wait()
        created = store.create(f"wf-{n}", "study", "glioma", "hash-a")  # racing ids, one piece of work
        with lock:
            results.append(created)

    workers = [threading.Thread(target=create, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert sorted(results) == [False] * (threads - 1) + [True]
    assert len(store.list()) == 1


def test_concurrent_creates_of_the_same_id_succeed_exactly_once(store: WorkflowStateStore) -> None:
    threads, results = 8, []
    barrier = threading.Barrier(threads)

    def create() -> None:
        barrier.wait()
        results.append(store.create("wf-1", "study", "glioma", "hash-a"))

    workers = [threading.Thread(target=create) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert results.count(True) == 1 and results.count(False) == threads - 1


def test_a_workflow_runs_its_stages_and_succeeds_with_updated_timestamps(store: WorkflowStateStore) -> None:
    store.create("wf-1", "study", "glioma", "hash-a")
    created = _must_get(store, "wf-1").created_at
    for stage in ("preprocess", "segmentation", "results"):
        time.sleep(0.002)
        store.set_status("wf-1", WorkflowStatus.RUNNING, stage=stage, detail=f"attempt 1 of {stage}")
        record = store.get("wf-1")
        assert record is not None
        assert (record.status, record.stage) == (WorkflowStatus.RUNNING, stage)
        assert record.detail == f"attempt 1 of {stage}"
        assert record.updated_at > created and record.created_at == created
    store.set_status("wf-1", WorkflowStatus.SUCCEEDED, stage="results")
    assert _must_get(store, "wf-1").status == WorkflowStatus.SUCCEEDED
    # A redelivered "done" repeats the update harmlessly.
    store.set_status("wf-1", WorkflowStatus.SUCCEEDED, stage="results")


@pytest.mark.parametrize("status", [s for s in WorkflowStatus if s != WorkflowStatus.SUCCEEDED])
def test_nothing_leaves_succeeded(store: WorkflowStateStore, status: WorkflowStatus) -> None:
    store.create("wf-1", "study", "glioma", "hash-a")
    store.set_status("wf-1", WorkflowStatus.RUNNING, stage="results")
    store.set_status("wf-1", WorkflowStatus.SUCCEEDED, stage="results")

    with pytest.raises(InvalidTransition, match="wf-1: cannot go from SUCCEEDED"):
        store.set_status("wf-1", status, stage="preprocess")
    assert _must_get(store, "wf-1").status == WorkflowStatus.SUCCEEDED


def test_every_transition_is_allowed_or_refused_as_the_table_says(store: WorkflowStateStore) -> None:
    paths_to = {  # a way to reach each status from PENDING
        WorkflowStatus.PENDING: [],
        WorkflowStatus.RUNNING: [WorkflowStatus.RUNNING],
        WorkflowStatus.SUCCEEDED: [WorkflowStatus.RUNNING, WorkflowStatus.SUCCEEDED],
        WorkflowStatus.FAILED: [WorkflowStatus.FAILED],
        WorkflowStatus.DEAD_LETTERED: [WorkflowStatus.RUNNING, WorkflowStatus.DEAD_LETTERED],
        WorkflowStatus.CANCELLED: [WorkflowStatus.RUNNING, WorkflowStatus.CANCELLED],
    }
    for n, (source, target) in enumerate((s, t) for s in WorkflowStatus for t in WorkflowStatus):
        workflow = f"wf-{n}"
        store.create(workflow, "study", "glioma", f"hash-{n}")
        for step in paths_to[source]:
            store.set_status(workflow, step, stage="segmentation")
        allowed = target == source or target in ALLOWED_TRANSITIONS[source]
        if allowed:
            store.set_status(workflow, target, stage="segmentation", detail="moved")
            assert _must_get(store, workflow).status == target
        else:
            with pytest.raises(InvalidTransition):
                store.set_status(workflow, target, stage="segmentation")
            assert _must_get(store, workflow).status == source
    # The operator's replay paths exist: FAILED and DEAD_LETTERED go back to PENDING.
    assert WorkflowStatus.PENDING in ALLOWED_TRANSITIONS[WorkflowStatus.DEAD_LETTERED]
    assert WorkflowStatus.PENDING in ALLOWED_TRANSITIONS[WorkflowStatus.FAILED]
    # An operator cancels unfinished or failed work; nothing leaves CANCELLED (a late answer changes nothing).
    assert not ALLOWED_TRANSITIONS[WorkflowStatus.CANCELLED]


def test_status_of_an_unknown_workflow_is_refused(store: WorkflowStateStore) -> None:
    with pytest.raises(WorkflowNotFound, match="no workflow 'wf-missing'"):
        store.set_status("wf-missing", WorkflowStatus.RUNNING, stage="preprocess")
    with pytest.raises(WorkflowNotFound):
        store.record_stage_timing("wf-missing", "preprocess", 1.0)
    assert store.get("wf-missing") is None


def test_stage_timings_keep_the_latest_run_of_each_stage(store: WorkflowStateStore) -> None:
    store.create("wf-1", "study", "glioma", "hash-a")
    store.record_stage_timing("wf-1", "preprocess", 41.5)
    store.record_stage_timing("wf-1", "segmentation", 12.0)
    store.record_stage_timing("wf-1", "segmentation", 9.25)  # the retry

    assert _must_get(store, "wf-1").stage_seconds == {"preprocess": 41.5, "segmentation": 9.25}
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="duration"):
            store.record_stage_timing("wf-1", "results", bad)


def test_list_filters_by_status_oldest_first(store: WorkflowStateStore) -> None:
    for n in range(4):
        store.create(f"wf-{n}", f"study-{n}", "glioma", "hash")
        time.sleep(0.002)
    store.set_status("wf-1", WorkflowStatus.RUNNING, stage="preprocess")
    store.set_status("wf-3", WorkflowStatus.RUNNING, stage="preprocess")

    assert [r.workflow_id for r in store.list()] == ["wf-0", "wf-1", "wf-2", "wf-3"]
    assert [r.workflow_id for r in store.list(WorkflowStatus.RUNNING)] == ["wf-1", "wf-3"]
    assert [r.workflow_id for r in store.list(WorkflowStatus.PENDING)] == ["wf-0", "wf-2"]
    assert store.list(WorkflowStatus.DEAD_LETTERED) == []


def test_records_written_by_other_threads_are_visible(store: WorkflowStateStore) -> None:
    def work(n: int) -> None:
        store.create(f"wf-{n}", f"study-{n}", "glioma", "hash")
        store.set_status(f"wf-{n}", WorkflowStatus.RUNNING, stage="preprocess")
        store.record_stage_timing(f"wf-{n}", "preprocess", float(n))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    records = store.list(WorkflowStatus.RUNNING)
    assert sorted(r.workflow_id for r in records) == [f"wf-{n}" for n in range(6)]
    timings = {r.workflow_id: r.stage_seconds["preprocess"] for r in records}
    assert timings == {f"wf-{n}": float(n) for n in range(6)}


# -- SQLite backend specifics (not part of the contract) ------------------------------------------------


def test_sqlite_state_survives_a_restart_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "workflows.sqlite"
    first = SqliteStateStore(path)
    first.create("wf-1", "study", "glioma", "hash-a")
    first.set_status("wf-1", WorkflowStatus.RUNNING, stage="segmentation", detail="attempt 2")
    first.close()

    reopened = SqliteStateStore(path)
    record = _must_get(reopened, "wf-1")
    assert (record.status, record.stage) == (WorkflowStatus.RUNNING, "segmentation")
    assert record.detail == "attempt 2"
    assert reopened.create("wf-1", "study", "glioma", "hash-a") is False
    reopened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(6,)]


def test_sqlite_refuses_a_database_written_by_a_newer_neuroflow(tmp_path: Path) -> None:
    path = tmp_path / "workflows.sqlite"
    SqliteStateStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")

    with pytest.raises(NeuroflowError, match="schema version 99, newer than this neuroflow understands"):
        SqliteStateStore(path)


# -- PostgreSQL backend specifics (not part of the contract) --------------------------------------------


def test_postgres_state_is_shared_by_separate_stores_and_survives_reconnecting(postgres_dsn: str) -> None:
    orchestrator_a, orchestrator_b = PostgresStateStore(postgres_dsn), PostgresStateStore(postgres_dsn)
    assert orchestrator_a.create("wf-1", "study", "glioma", "hash-a")
    assert orchestrator_b.create("wf-2", "study", "glioma", "hash-a") is False  # the same work, seen by B
    orchestrator_b.set_status("wf-1", WorkflowStatus.RUNNING, stage="segmentation", detail="attempt 2")
    orchestrator_a.close()
    orchestrator_b.close()

    reopened = PostgresStateStore(postgres_dsn)
    record = _must_get(reopened, "wf-1")
    assert (record.status, record.stage, record.detail) == (WorkflowStatus.RUNNING, "segmentation", "attempt 2")
    reopened.close()
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(6,)]


def test_postgres_racing_stores_move_a_workflow_out_of_running_once(postgres_dsn: str) -> None:
    # Two orchestrators finish the same workflow at once, one as SUCCEEDED, one as FAILED: the row lock
    # makes one of them second, and the second must see SUCCEEDED and be refused (or repeat SUCCEEDED).
    setup = PostgresStateStore(postgres_dsn)
    stores = [PostgresStateStore(postgres_dsn) for _ in range(4)]
    for n in range(10):
        workflow = f"wf-{n}"
        setup.create(workflow, f"study-{n}", "glioma", "hash")
        setup.set_status(workflow, WorkflowStatus.RUNNING, stage="results")
        targets = [WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED] * 2
        outcomes = _race_to_status(stores, workflow, targets)
        final = _must_get(setup, workflow).status
        # Whatever won, every later writer saw it: only repeats of the winner succeeded after it.
        succeeded = [o for o in outcomes if o is not None]
        assert succeeded and succeeded == [final] * len(succeeded)
    for store in [setup, *stores]:
        store.close()


def _race_to_status(stores: list[PostgresStateStore], workflow: str,
                    targets: list[WorkflowStatus]) -> list[WorkflowStatus | None]:
    """Each store sets ``workflow`` to its target at the same moment: the targets that were accepted
    (None where refused), in the order the attempts finished."""
    barrier, outcomes, lock = threading.Barrier(len(stores)), [], threading.Lock()

    def finish(store: WorkflowStateStore, target: WorkflowStatus) -> None:
        barrier.wait()
        try:
            store.set_status(workflow, target, stage="results")
            outcome: WorkflowStatus | None = target
        except InvalidTransition:
            outcome = None
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=finish, args=(s, t)) for s, t in zip(stores, targets, strict=True)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


def test_postgres_refuses_a_database_written_by_a_newer_neuroflow(postgres_dsn: str) -> None:
    PostgresStateStore(postgres_dsn).close()
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = 99")

    with pytest.raises(NeuroflowError, match="schema version 99, newer than this neuroflow understands"):
        PostgresStateStore(postgres_dsn)


def test_postgres_unreachable_is_an_error_naming_the_database(postgres_server: PostgresProcess) -> None:
    dsn = f"host=127.0.0.1 port={postgres_server.port} user=nobody_here dbname=missing_db connect_timeout=2"
    with pytest.raises(NeuroflowError, match=r"workflow state database unavailable.*dbname=missing_db"):
        PostgresStateStore(dsn)


def test_retention_deletes_only_finished_workflows_last_updated_before_the_cutoff(store: WorkflowStateStore) -> None:
    for wid, status in (("wf-done", WorkflowStatus.SUCCEEDED), ("wf-run", WorkflowStatus.RUNNING),
                        ("wf-dead", WorkflowStatus.DEAD_LETTERED)):
        store.create(wid, "study-a", wid, f"hash-{wid}")
        store.set_status(wid, WorkflowStatus.RUNNING, stage="preprocess")
        if status != WorkflowStatus.RUNNING:
            store.set_status(wid, status, stage="results")
        store.record_stage_timing(wid, "preprocess", 1.0)
    before_any = datetime.now(UTC) - timedelta(hours=1)
    after_all = datetime.now(UTC) + timedelta(seconds=1)

    assert store.finished_before(before_any) == []
    assert [w.workflow_id for w in store.finished_before(after_all)] == ["wf-done", "wf-dead"]
    assert {w.workflow_id for w in store.of_study("study-a")} == {"wf-done", "wf-run", "wf-dead"}
    assert not store.delete_finished("wf-done", before_any)  # not old enough
    assert not store.delete_finished("wf-run", after_all)  # still running
    store.set_status("wf-dead", WorkflowStatus.PENDING, stage=None)  # an operator replays it meanwhile
    assert not store.delete_finished("wf-dead", after_all)
    assert store.delete_finished("wf-done", after_all)
    assert not store.delete_finished("wf-done", after_all)  # gone: a second sweep is not an error

    assert store.get("wf-done") is None
    assert {w.workflow_id for w in store.list()} == {"wf-run", "wf-dead"}
