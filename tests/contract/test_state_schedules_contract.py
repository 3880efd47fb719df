"""Contract of the state database's timers, leases, delivery outbox and dead letters
(neuroflow.core.state_schedules), run against SQLite and a real PostgreSQL like the workflow contract.

Asserted: a due timer or delivery is claimed by exactly one of several racing replicas; a lease held by a
replica that died is taken over once it has expired, never before; a delivery is enqueued once per
workflow and destination and, once delivered, is never due again; dead letters are kept and replayed
once; a version-1 database (before these tables) is upgraded in place and keeps its workflows.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import psycopg

from neuroflow.core.state import SqliteStateStore, SqlStateStore, WorkflowStatus
from neuroflow.core.state_postgres import PostgresStateStore
from neuroflow.core.state_schedules import (
    DeadLetterKind,
    DeadLetterRecord,
    DeliveryStatus,
    TimerKind,
    correction_workflow_id,
)
from tests.contract.test_state_contract import store  # noqa: F401 - the backend-parametrised fixture

Store = SqlStateStore  # every backend of the contract is an SqlStateStore


def _race(count: int, work: object) -> list[object]:
    """Run ``work(i)`` in ``count`` threads released at once; their results."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)  # type: ignore[operator]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_due_timer_is_claimed_by_exactly_one_of_racing_replicas(store: Store) -> None:  # noqa: F811
    now = time.time()
    for n in range(10):
        store.set_timer(f"wf-{n}", TimerKind.RETRY, "preprocess", 2, now - 1)
    store.set_timer("wf-later", TimerKind.DEADLINE, "preprocess", 1, now + 60)

    claims = _race(4, lambda i: store.claim_due_timers(now, f"replica-{i}", 30.0))

    claimed = [t.workflow_id for got in claims for t in got]  # type: ignore[attr-defined]
    assert sorted(claimed) == sorted(f"wf-{n}" for n in range(10))  # each once; the later one not at all
    assert store.claim_due_timers(now, "replica-9", 30.0) == []  # leases still run


def test_a_lease_of_a_replica_that_died_is_taken_over_only_after_it_expires(store: Store) -> None:  # noqa: F811
    now = time.time()
    store.set_timer("wf-1", TimerKind.RETRY, "segmentation", 3, now - 1)
    (held,) = store.claim_due_timers(now, "replica-a", 10.0)  # replica-a dies holding it
    assert store.claim_due_timers(now + 9, "replica-b", 10.0) == []
    assert store.acquire_workflow("wf-1", "replica-b", now + 9, 10.0) is False
    (taken,) = store.claim_due_timers(now + 11, "replica-b", 10.0)
    assert taken == held and (taken.kind, taken.stage, taken.attempt) == (TimerKind.RETRY, "segmentation", 3)
    # The late replica-a can no longer release what replica-b holds.
    store.release_workflow("wf-1", "replica-a")
    assert store.acquire_workflow("wf-1", "replica-c", now + 12, 10.0) is False
    store.release_workflow("wf-1", "replica-b")
    assert store.acquire_workflow("wf-1", "replica-c", now + 12, 10.0) is True


def test_a_timer_set_while_holding_the_lease_keeps_the_lease_and_clearing_leaves_nothing_due(
    store: Store,  # noqa: F811
) -> None:
    now = time.time()
    assert store.acquire_workflow("wf-1", "replica-a", now, 30.0)
    store.set_timer("wf-1", TimerKind.DEADLINE, "results", 1, now - 5)
    assert store.claim_due_timers(now, "replica-b", 30.0) == []  # due, but replica-a holds the workflow
    store.release_workflow("wf-1", "replica-a")
    assert [t.workflow_id for t in store.claim_due_timers(now, "replica-b", 30.0)] == ["wf-1"]
    store.clear_timer("wf-1")
    store.release_workflow("wf-1", "replica-b")
    assert store.timer("wf-1") is None and store.claim_due_timers(now + 100, "replica-c", 30.0) == []
    assert store.set_timer_if_none("wf-1", TimerKind.RETRY, "preprocess", 1, now) is True
    assert store.set_timer_if_none("wf-1", TimerKind.RETRY, "segmentation", 1, now) is False
    timer = store.timer("wf-1")
    assert timer is not None and timer.stage == "preprocess"


def test_a_delivery_is_enqueued_once_claimed_once_and_never_due_after_it_was_delivered(
    store: Store,  # noqa: F811
) -> None:
    now = time.time()
    enqueue = {"study_key": "k1", "pipeline": "glioma", "stage": "results", "sop_instance_uids": ["2.25.1", "2.25.2"],
               "now": now, "give_up_at": now + 100}
    assert store.enqueue_delivery("wf-1", "PACS", **enqueue) is True  # type: ignore[arg-type]
    assert store.enqueue_delivery("wf-1", "PACS", **enqueue) is False  # type: ignore[arg-type]

    claims = _race(4, lambda i: store.claim_due_deliveries(now, f"replica-{i}", 30.0))
    (winner,) = [(i, got) for i, got in enumerate(claims) if got]  # type: ignore[arg-type]
    (delivery,) = winner[1]  # type: ignore[misc]
    assert delivery.sop_instance_uids == ("2.25.1", "2.25.2") and delivery.status == DeliveryStatus.PENDING

    assert store.delivery_failed(delivery, f"replica-{winner[0]}", "refused", next_attempt_at=now + 5,
                                 give_up=False)
    assert store.claim_due_deliveries(now + 4, "replica-x", 30.0) == []  # backing off
    (again,) = store.claim_due_deliveries(now + 5, "replica-x", 30.0)
    assert (again.attempts, again.last_error) == (1, "refused")
    assert store.delivery_done(again, "replica-late", now + 6) is False  # not the holder
    assert store.delivery_done(again, "replica-x", now + 6) is True
    (done,) = store.deliveries(workflow_id="wf-1")
    assert (done.status, done.attempts, done.delivered_at) == (DeliveryStatus.DELIVERED, 2, now + 6)
    assert store.claim_due_deliveries(now + 10_000, "replica-y", 30.0) == []
    assert store.reopen_delivery("wf-1", "PACS", now=now, give_up_at=now + 100) is False  # delivered stays


def test_a_rejected_results_pending_delivery_is_withheld_unless_in_flight(store: Store) -> None:  # noqa: F811
    now = 1_000.0
    for wid in ("wf-1", "wf-2"):
        store.create(wid, "study-1", "glioma", f"hash-{wid}")
        store.enqueue_delivery(wid, "PACS", study_key="study-1", pipeline="glioma", stage="results",
                               sop_instance_uids=["2.25.1"], now=now, give_up_at=now + 100)
    (in_flight,) = store.claim_due_deliveries(now, "replica-1", 30.0, limit=1)
    held = "wf-2" if in_flight.workflow_id == "wf-1" else "wf-1"
    assert store.withhold_deliveries(in_flight.workflow_id, "withheld: rejected", now=now + 1) == []
    assert store.withhold_deliveries(held, "withheld: rejected", now=now + 1) == ["PACS"]
    (withheld,) = store.deliveries(workflow_id=held)
    assert (withheld.status, withheld.last_error) == (DeliveryStatus.WITHHELD, "withheld: rejected")
    # An operator's replay reopens given-up deliveries only: a withheld one stays withheld.
    assert store.reopen_delivery(held, "PACS", now=now + 2, give_up_at=now + 300) is False
    assert store.claim_due_deliveries(now + 20, "replica-2", 30.0) == []  # never sent; the other is still held
    assert store.delivery_done(in_flight, "replica-1", now + 2) is True  # what was in flight completes


def test_a_rejected_result_that_reached_a_destination_owes_it_one_retraction(store: Store) -> None:  # noqa: F811
    now = 1_000.0
    store.create("wf-1", "study-1", "glioma", "hash-1")
    for destination in ("PACS", "ARCHIVE", "LATE"):
        store.enqueue_delivery("wf-1", destination, study_key="study-1", pipeline="glioma", stage="results",
                               sop_instance_uids=["2.25.1", "2.25.2"], now=now, give_up_at=now + 100)
    claimed = {d.destination: d for d in store.claim_due_deliveries(now, "replica-1", 30.0)}
    assert store.delivery_done(claimed["PACS"], "replica-1", now + 1)  # ARCHIVE in flight; LATE released
    assert store.delivery_failed(claimed["LATE"], "replica-1", "down", next_attempt_at=now + 50, give_up=False)
    assert store.withhold_deliveries("wf-1", "withheld: rejected", now=now + 2) == ["LATE"]

    assert store.request_retractions("wf-1", now=now + 2, give_up_at=now + 200) == ["ARCHIVE", "PACS"]
    assert store.request_retractions("wf-1", now=now + 3, give_up_at=now + 200) == []  # owed once
    (ready,) = store.claim_due_retractions(now + 3, "replica-2", 30.0)  # ARCHIVE waits for its delivery
    assert (ready.destination, ready.stage, ready.sop_instance_uids) == ("PACS", "retraction", ("2.25.1", "2.25.2"))
    assert store.claim_due_retractions(now + 3, "replica-3", 30.0) == []  # held
    assert store.delivery_failed(ready, "replica-2", "PACS down", next_attempt_at=now + 10, give_up=False)
    assert {d.destination: d.attempts for d in store.deliveries(workflow_id="wf-1")}["PACS"] == 1  # untouched

    assert store.delivery_done(claimed["ARCHIVE"], "replica-1", now + 4)
    again = {d.destination: d for d in store.claim_due_retractions(now + 10, "replica-2", 30.0)}
    assert sorted(again) == ["ARCHIVE", "PACS"]
    for retraction in again.values():
        assert store.delivery_done(retraction, "replica-2", now + 11)
    assert [(r.destination, r.status, r.attempts) for r in store.retractions(workflow_id="wf-1")] == [
        ("ARCHIVE", DeliveryStatus.DELIVERED, 1), ("PACS", DeliveryStatus.DELIVERED, 2)]
    assert store.claim_due_retractions(now + 10_000, "replica-4", 30.0) == []  # never sent again
    assert [r.fields()["destination"] for r in store.audit_records("study-1")
            if r.action == "retraction delivered"] == ["ARCHIVE", "PACS"]


def test_a_correction_follows_its_original_and_a_rejection_retracts_the_corrections_that_arrived(
        store: Store,  # noqa: F811
) -> None:
    now = 1_000.0
    store.create("wf-1", "study-1", "glioma", "hash-1")
    for destination in ("ARCHIVE", "PACS"):
        store.enqueue_delivery("wf-1", destination, study_key="study-1", pipeline="glioma", stage="results",
                               sop_instance_uids=["2.25.1", "2.25.2"], now=now, give_up_at=now + 100)
    originals = {d.destination: d for d in store.claim_due_deliveries(now, "replica-1", 30.0)}
    assert store.delivery_failed(originals["ARCHIVE"], "replica-1", "down", next_attempt_at=now + 50, give_up=False)
    # Accepted with a component removed while the original is being sent to PACS (not yet to ARCHIVE).
    assert store.request_corrections("wf-1", "rev-1", now=now + 1, give_up_at=now + 100) == ["ARCHIVE", "PACS"]
    assert store.withhold_deliveries("wf-1", "withheld: corrected", now=now + 1) == ["ARCHIVE"]
    (to_archive,) = store.claim_due_deliveries(now + 2, "replica-2", 30.0)  # PACS's waits for its original
    assert (to_archive.workflow_id, to_archive.destination) == (correction_workflow_id("wf-1", "rev-1"), "ARCHIVE")
    assert store.delivery_done(to_archive, "replica-2", now + 3, sent=["2.25.8"])
    assert store.delivery_done(originals["PACS"], "replica-1", now + 3)
    (to_pacs,) = store.claim_due_deliveries(now + 4, "replica-2", 30.0)
    assert (to_pacs.stage, to_pacs.destination) == ("correction", "PACS")

    # Rejected while that correction is in flight: a retraction is owed to ARCHIVE (only a correction reached
    # it) and to PACS, which waits until the correction arrived and then supersedes it too.
    assert store.reject_result("wf-1", "withheld: rejected", now=now + 5, give_up_at=now + 200) == (
        [], ["ARCHIVE", "PACS"])
    assert [r.destination for r in store.claim_due_retractions(now + 5, "replica-3", 30.0)] == ["ARCHIVE"]
    assert store.reached_objects("wf-1", "ARCHIVE") == ["2.25.8"]
    assert store.delivery_done(to_pacs, "replica-2", now + 6, sent=["2.25.9", "2.25.10"])
    assert [r.destination for r in store.claim_due_retractions(now + 6, "replica-3", 30.0)] == ["PACS"]
    assert store.reached_objects("wf-1", "PACS") == ["2.25.1", "2.25.2", "2.25.9", "2.25.10"]

    # Retention keeps a result while a correction of it is owed (it is built from the result's objects).
    store.create("wf-2", "study-2", "glioma", "hash-2")
    store.enqueue_delivery("wf-2", "PACS", study_key="study-2", pipeline="glioma", stage="results",
                           sop_instance_uids=["2.25.3"], now=now, give_up_at=now + 100)
    (original,) = store.claim_due_deliveries(now + 10, "replica-1", 30.0)
    assert store.delivery_done(original, "replica-1", now + 10) and not store.has_undelivered_results("wf-2")
    store.request_corrections("wf-2", "rev-2", now=now + 11, give_up_at=now + 100)
    assert store.has_undelivered_results("wf-2")
    (correction,) = store.claim_due_deliveries(now + 12, "replica-1", 30.0)
    assert store.delivery_done(correction, "replica-1", now + 12, sent=["2.25.4"])
    assert not store.has_undelivered_results("wf-2")

    # Corrected before it was sent (the original withheld there): a later review's correction is owed there too.
    store.create("wf-3", "study-3", "glioma", "hash-3")
    store.enqueue_delivery("wf-3", "PACS", study_key="study-3", pipeline="glioma", stage="results",
                           sop_instance_uids=["2.25.5"], now=now, give_up_at=now + 100)
    assert store.request_corrections("wf-3", "rev-a", now=now + 13, give_up_at=now + 100) == ["PACS"]
    assert store.withhold_deliveries("wf-3", "withheld: corrected", now=now + 13) == ["PACS"]
    assert store.request_corrections("wf-3", "rev-b", now=now + 14, give_up_at=now + 100) == ["PACS"]
    assert {d.sop_instance_uids for d in store.corrections(workflow_id="wf-3")} == {("2.25.5",)}  # the original's


def test_a_retraction_owed_keeps_the_results_and_one_given_up_is_replayed(store: Store) -> None:  # noqa: F811
    now = 1_000.0
    store.create("wf-1", "study-1", "glioma", "hash-1")
    store.enqueue_delivery("wf-1", "PACS", study_key="study-1", pipeline="glioma", stage="results",
                           sop_instance_uids=["2.25.1"], now=now, give_up_at=now + 100)
    (delivery,) = store.claim_due_deliveries(now, "replica-1", 30.0)
    assert store.delivery_done(delivery, "replica-1", now + 1)
    assert store.has_undelivered_results("wf-1") is False
    assert store.request_retractions("wf-1", now=now + 2, give_up_at=now + 50) == ["PACS"]
    assert store.has_undelivered_results("wf-1") is True  # the notice is built from the delivered objects
    (retraction,) = store.claim_due_retractions(now + 2, "replica-1", 30.0)
    assert store.delivery_failed(retraction, "replica-1", "PACS refused", next_attempt_at=now + 50, give_up=True)
    assert store.claim_due_retractions(now + 60, "replica-1", 30.0) == []
    assert store.reopen_delivery("wf-1", "PACS", now=now + 60, give_up_at=now + 160, retraction=True)
    assert [r.destination for r in store.claim_due_retractions(now + 60, "replica-2", 30.0)] == ["PACS"]
    assert store.deliveries(workflow_id="wf-1")[0].status == DeliveryStatus.DELIVERED  # the result's row untouched


def test_a_paused_destination_queues_its_deliveries_and_loses_none(store: Store) -> None:  # noqa: F811
    now = 1_000.0
    for wid, destination in (("wf-1", "PACS"), ("wf-2", "PACS"), ("wf-3", "ARCHIVE")):
        store.create(wid, "study-1", "glioma", f"hash-{wid}")
        store.enqueue_delivery(wid, destination, study_key="study-1", pipeline="glioma", stage="results",
                               sop_instance_uids=["2.25.1"], now=now, give_up_at=now + 100)
    assert store.pause_destination("PACS", by="console/op", now=now) is True
    assert store.pause_destination("PACS", by="console/op2", now=now) is False
    assert store.paused_destinations() == {"PACS": ("console/op", now)}
    # Long past the delivery period: the paused destination's deliveries are neither claimed nor given up.
    (other,) = store.claim_due_deliveries(now + 500, "replica-1", 30.0)
    assert other.destination == "ARCHIVE"
    assert store.resume_destination("PACS", now=now + 500, give_up_at=now + 600) is True
    assert store.resume_destination("PACS", now=now + 500, give_up_at=now + 600) is False
    resumed = store.claim_due_deliveries(now + 500, "replica-1", 30.0)
    assert sorted(d.workflow_id for d in resumed) == ["wf-1", "wf-2"]
    assert {d.give_up_at for d in resumed} == {now + 600} and store.paused_destinations() == {}


def test_pausing_a_pipeline_holds_its_variant_but_not_the_other_way_round(store: Store) -> None:  # noqa: F811
    """glioma_postop runs glioma's model: an operator who pauses glioma (a model withdrawn) stops it too."""
    from neuroflow.core.config import GLIOMA_PIPELINE, GLIOMA_POSTOP_PIPELINE

    now = 1_000.0
    for wid, pipeline in (("wf-g", GLIOMA_PIPELINE), ("wf-p", GLIOMA_POSTOP_PIPELINE), ("wf-m", "metastases")):
        store.create(wid, f"study-{wid}", pipeline, f"hash-{wid}")
        store.set_timer(wid, TimerKind.RETRY, "preprocess", 1, now)
    assert store.pause_pipeline(GLIOMA_PIPELINE, by="console/op", now=now)
    assert store.paused_pipelines() == {GLIOMA_PIPELINE: ("console/op", now),
                                        GLIOMA_POSTOP_PIPELINE: ("console/op", now)}
    assert [t.workflow_id for t in store.claim_due_timers(now + 1, "replica-1", 30.0)] == ["wf-m"]
    assert store.resume_pipeline(GLIOMA_PIPELINE) and store.paused_pipelines() == {}
    assert sorted(t.workflow_id for t in store.claim_due_timers(now + 1, "replica-1", 30.0)) == ["wf-g", "wf-p"]
    for wid in ("wf-g", "wf-p"):
        store.set_timer(wid, TimerKind.RETRY, "segmentation", 1, now + 2)
    assert store.pause_pipeline(GLIOMA_POSTOP_PIPELINE, by="console/op", now=now)  # the variant alone
    assert list(store.paused_pipelines()) == [GLIOMA_POSTOP_PIPELINE]
    assert sorted(t.workflow_id for t in store.claim_due_timers(now + 40, "replica-2", 30.0)) == ["wf-g", "wf-m"]


def test_dead_letters_are_kept_listed_and_replayed_once(store: Store) -> None:  # noqa: F811
    letter = DeadLetterRecord(letter_id="dl-1", kind=DeadLetterKind.TASK, workflow_id="wf-1", study_key="k1",
                              pipeline="glioma", stage="segmentation", attempts=3, code="INFERENCE_UNAVAILABLE",
                              reason="study k1: segmentation failed: Triton unreachable", payload=b"\x00\xfftask",
                              created_at=time.time(), replayed_at=None)
    assert store.record_dead_letter(letter) is True
    assert store.record_dead_letter(letter) is False
    assert store.dead_letter("dl-1") == letter and store.dead_letters() == [letter]
    assert _race(3, lambda i: store.mark_replayed("dl-1", time.time())).count(True) == 1
    assert store.dead_letters() == []
    (replayed,) = store.dead_letters(include_replayed=True)
    assert replayed.replayed_at is not None and replayed.payload == b"\x00\xfftask"


def test_every_status_change_is_kept_in_the_workflow_history(store: Store) -> None:  # noqa: F811
    store.create("wf-1", "k1", "glioma", "h")
    store.set_status("wf-1", WorkflowStatus.RUNNING, stage="preprocess", detail="attempt 1")
    store.set_status("wf-1", WorkflowStatus.PENDING, stage="preprocess", detail="retrying")
    events = store.workflow_events("wf-1")
    assert [(e.status, e.stage, e.detail) for e in events] == [
        ("PENDING", None, "created"), ("RUNNING", "preprocess", "attempt 1"), ("PENDING", "preprocess", "retrying")]


_VERSION_1 = (  # the schema neuroflow wrote before timers, deliveries and dead letters were kept
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version (version) VALUES (1)",
    """CREATE TABLE workflows (workflow_id TEXT PRIMARY KEY, study_key TEXT NOT NULL, pipeline TEXT NOT NULL,
        input_hash TEXT NOT NULL, status TEXT NOT NULL, stage TEXT, detail TEXT NOT NULL DEFAULT '',
        created_at {ts} NOT NULL, updated_at {ts} NOT NULL, UNIQUE (study_key, pipeline, input_hash))""",
    "CREATE INDEX workflows_status ON workflows (status, created_at)",
    """CREATE TABLE stage_timings (workflow_id TEXT NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
        stage TEXT NOT NULL, seconds {real} NOT NULL, PRIMARY KEY (workflow_id, stage))""",
    "INSERT INTO workflows VALUES ('wf-old', 'k', 'glioma', 'h', 'RUNNING', 'segmentation', 'attempt 1', {now}, {now})",
)


def _upgraded_keeps_its_workflow(upgraded: SqlStateStore) -> None:  # type: ignore[type-arg]
    record = upgraded.get("wf-old")
    assert record is not None and (record.status, record.stage) == (WorkflowStatus.RUNNING, "segmentation")
    upgraded.set_timer("wf-old", TimerKind.DEADLINE, "segmentation", 1, time.time())
    assert [t.workflow_id for t in upgraded.claim_due_timers(time.time(), "r", 10.0)] == ["wf-old"]


def test_a_version_1_sqlite_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        for statement in _VERSION_1:
            db.execute(statement.format(ts="TEXT", real="REAL", now="'2026-01-01T00:00:00+00:00'"))
    upgraded = SqliteStateStore(path)
    _upgraded_keeps_its_workflow(upgraded)
    upgraded.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(6,)]


def test_a_version_1_postgres_database_is_upgraded_in_place(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        for statement in _VERSION_1:
            db.execute(statement.format(ts="TIMESTAMPTZ", real="DOUBLE PRECISION", now="now()"))
    upgraded = PostgresStateStore(postgres_dsn)
    _upgraded_keeps_its_workflow(upgraded)
    upgraded.close()
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(6,)]
