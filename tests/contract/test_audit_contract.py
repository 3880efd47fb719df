"""Contract of the audit trail (neuroflow.core.audit) on SQLite and a real PostgreSQL, like the workflow
contract: workflow changes and deliveries append to the study's hash chain in their own transaction; the
chain verifies; a record altered or deleted with plain SQL is found and named; two replicas appending to one
study at once still make one valid chain; retention's deletion of a workflow leaves its audit trail.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from neuroflow.core.audit import AuditAction, record_hash
from neuroflow.core.state import InvalidTransition, SqliteStateStore, SqlStateStore, WorkflowStatus
from neuroflow.core.state_postgres import PostgresStateStore
from tests.contract.test_state_contract import store  # noqa: F401 - the backend-parametrised fixture

Store = SqlStateStore[Any]


def _sql(target: Store, sql: str, parameters: tuple[Any, ...] = ()) -> int:
    """A statement straight on the database, past the store's interface (what a tamperer does)."""
    return target._run(lambda db: db.execute(target._sql(sql), parameters).rowcount,
                      idempotent=False, what="test")


def _another(first: Store) -> Store:
    """A second store on the same database: another replica."""
    if isinstance(first, PostgresStateStore):
        return PostgresStateStore(first._dsn)
    assert isinstance(first, SqliteStateStore)
    return SqliteStateStore(first._path)


def _a_workflow(store: Store) -> None:  # noqa: F811
    store.audit_actor = "orchestrator/replica-a"
    assert store.create("wf-1", "study-a", "glioma", "hash-1")
    store.set_status("wf-1", WorkflowStatus.RUNNING, stage="preprocess", detail="preprocess attempt 1 dispatched")
    store.audit_append("study-a", AuditAction.STAGE_FINISHED,
                       {"workflow_id": "wf-1", "stage": "preprocess", "model": "glioma_unet:2"})
    store.set_status("wf-1", WorkflowStatus.RUNNING, stage="segmentation", detail="segmentation attempt 1 dispatched")
    store.set_status("wf-1", WorkflowStatus.SUCCEEDED, stage="results", detail="2 result object(s) stored")


def test_workflow_changes_make_one_verified_chain_per_study(store: Store) -> None:  # noqa: F811
    _a_workflow(store)
    store.create("wf-2", "study-b", "glioma", "hash-2")  # another study: another chain

    records = store.audit_records("study-a")
    assert [r.action for r in records] == [AuditAction.WORKFLOW_CREATED, AuditAction.STAGE_STARTED,
                                           AuditAction.STAGE_FINISHED, AuditAction.STAGE_STARTED,
                                           AuditAction.SUCCEEDED]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert {r.actor for r in records} == {"orchestrator/replica-a"}
    assert records[2].fields()["model"] == "glioma_unet:2"
    assert all(r.prev_hash == p.hash for p, r in itertools.pairwise(records))
    assert store.audit_verify("study-a").intact and store.audit_verify("study-a").records == 5
    assert [r.seq for r in store.audit_records("study-b")] == [1]


def test_a_refused_transition_records_nothing(store: Store) -> None:  # noqa: F811
    _a_workflow(store)
    with pytest.raises(InvalidTransition):  # nothing leaves SUCCEEDED
        store.set_status("wf-1", WorkflowStatus.RUNNING, stage="preprocess")
    assert len(store.audit_records("study-a")) == 5  # the audit record went with the rolled-back change


def test_a_record_altered_with_sql_is_named(store: Store) -> None:  # noqa: F811
    _a_workflow(store)
    assert _sql(store, "UPDATE audit_trail SET actor = ? WHERE study_key = ? AND seq = ?",
                ("someone-else", "study-a", 3)) == 1

    check = store.audit_verify("study-a")
    assert not check.intact and check.broken_at == 3
    assert "record 3 (stage finished) was altered" in check.problem


def test_a_record_rehashed_after_altering_breaks_the_next_link(store: Store) -> None:  # noqa: F811
    _a_workflow(store)
    # A tamperer who also recomputes the altered record's hash cannot fix the next record's prev_hash
    # without rewriting every later record.
    r = store.audit_records("study-a")[1]
    forged = record_hash(r.prev_hash, r.study_key, r.seq, r.at, r.action, r.actor, '{"detail":"nothing"}')
    _sql(store, "UPDATE audit_trail SET detail = ?, hash = ? WHERE study_key = ? AND seq = 2",
         ('{"detail":"nothing"}', forged, "study-a"))

    check = store.audit_verify("study-a")
    assert (check.intact, check.broken_at) == (False, 3)
    assert "does not follow its predecessor" in check.problem


def test_a_deleted_middle_record_is_detected(store: Store) -> None:  # noqa: F811
    _a_workflow(store)
    assert _sql(store, "DELETE FROM audit_trail WHERE study_key = ? AND seq = 2", ("study-a",)) == 1

    check = store.audit_verify("study-a")
    assert (check.intact, check.broken_at) == (False, 3)
    assert "record(s) 2..2 missing" in check.problem


def test_two_replicas_appending_at_once_make_one_valid_chain(store: Store) -> None:  # noqa: F811
    other = _another(store)
    per_thread = 25
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def append(replica: Store, name: str) -> None:
        try:
            barrier.wait()
            for n in range(per_thread):
                replica.audit_append("study-c", AuditAction.STAGE_STARTED, {"n": n}, actor=name)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=append, args=(s, name)) for s, name in ((store, "a"), (other, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    other.close()

    assert errors == []
    records = store.audit_records("study-c")
    assert [r.seq for r in records] == list(range(1, 2 * per_thread + 1))
    assert sorted(r.actor for r in records) == ["a"] * per_thread + ["b"] * per_thread
    assert store.audit_verify("study-c").intact


def test_deliveries_are_audited_and_retention_leaves_the_trail(store: Store) -> None:  # noqa: F811
    _a_workflow(store)
    now = time.time()
    store.enqueue_delivery("wf-1", "PACS", study_key="study-a", pipeline="glioma", stage="results",
                           sop_instance_uids=["1.2.3"], now=now, give_up_at=now + 60)
    (claimed,) = store.claim_due_deliveries(now, "replica-d", 30.0)
    assert store.delivery_done(claimed, "replica-d", now)
    delivered = store.audit_records("study-a")[-1]
    assert (delivered.action, delivered.actor) == (AuditAction.DELIVERED, "delivery/replica-d")
    assert delivered.fields() == {"workflow_id": "wf-1", "destination": "PACS", "stage": "results", "objects": 1,
                                  "attempt": 1}

    assert store.delete_finished("wf-1", datetime.now(UTC) + timedelta(seconds=1))
    assert store.get("wf-1") is None
    assert len(store.audit_records("study-a")) == 6 and store.audit_verify("study-a").intact
