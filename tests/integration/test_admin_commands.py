"""`neuroflow admin` against a real PostgreSQL state database, with an orchestrator and stage workers running
(in threads, over the in-memory bus) as an operator would find them.

Proved here: a dead-lettered task that an operator replays (once the cause is gone) is processed exactly
once and its result delivered once, and a second replay is refused; replaying a dead letter of a workflow
whose results were delivered is refused and makes no second result; a delivery given up after the
delivery period is replayed and sent once; `admin studies` and `admin history` show each workflow's
status per stage, its transitions, attempts and deliveries; a re-run starts a new workflow of the study; a
cancelled workflow's late result is never delivered; a paused pipeline holds a new study until resumed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from neuroflow.admin.operations import rerun_study
from neuroflow.cli import main
from neuroflow.core.audit import OPERATIONS_CHAIN
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import DeliverySettings
from neuroflow.core.delivery import DeliveryLoop
from neuroflow.core.errors import DestinationUnavailable, InferenceUnavailable
from neuroflow.core.records import FolderRecordStore
from neuroflow.core.state import WorkflowStatus
from neuroflow.core.state_postgres import PostgresStateStore
from neuroflow.core.state_schedules import DeadLetterKind, DeadLetterRecord, DeliveryStatus
from neuroflow.core.worker import StageWorker
from neuroflow.orchestrator.orchestrator import Orchestrator
from neuroflow.proto.neuroflow.v1 import tasks_pb2
from tests.integration.test_distributed_inprocess import FAST, PRE, RES, SEG, TINY, TinyStages, publish, study_ready

WAIT_S = 30.0


@dataclass
class Pacs:
    """The destination as the delivery loop sees it: down or up; counts what it accepted."""

    down: bool = False
    accepted: list[tuple[str, ...]] = field(default_factory=list)

    def forward(self, sop_instance_uids: Sequence[str], destination: str, /) -> None:
        if self.down:
            raise DestinationUnavailable(f"destination {destination} unavailable: connection refused")
        self.accepted.append(tuple(sop_instance_uids))


@dataclass
class Site:
    state: PostgresStateStore
    bus: InMemoryBus
    records: FolderRecordStore
    pacs: Pacs
    delivery: DeliveryLoop
    triton_down: threading.Event
    results: list[str]
    results_open: threading.Event  # cleared: the results stage waits (a task in flight, answering late)

    def wait_for(self, wid: str, *statuses: WorkflowStatus) -> None:
        deadline = time.monotonic() + WAIT_S
        while (record := self.state.get(wid)) is None or record.status not in statuses:
            assert time.monotonic() < deadline, f"workflow {wid} did not reach {statuses}: {record}"
            time.sleep(0.05)

    def deliver_until(self, wid: str, status: DeliveryStatus) -> None:
        deadline = time.monotonic() + WAIT_S
        while not (found := self.state.deliveries(workflow_id=wid)) or found[0].status != status:
            assert time.monotonic() < deadline, f"the delivery of {wid} did not become {status}: {found}"
            self.delivery.deliver_due()
            time.sleep(0.05)


@pytest.fixture
def site(postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setenv("NEUROFLOW_STATE__KIND", "postgres")
    monkeypatch.setenv("NEUROFLOW_STATE__DSN", postgres_dsn)
    monkeypatch.setenv("NEUROFLOW_RECORDS_ROOT", str(tmp_path / "records"))
    state, bus, records = PostgresStateStore(postgres_dsn), InMemoryBus(), FolderRecordStore(tmp_path / "records")
    pacs, triton_down, stages, results_open = Pacs(), threading.Event(), TinyStages(), threading.Event()
    results_open.set()

    def segmentation(task: tasks_pb2.TaskRequested) -> tasks_pb2.SegmentationOutput:
        if triton_down.is_set():
            raise InferenceUnavailable("Triton at 127.0.0.1:8001 unreachable")
        return stages.segmentation(task)

    def results(task: tasks_pb2.TaskRequested) -> tasks_pb2.ResultsOutput:
        assert results_open.wait(WAIT_S)
        output = stages.result(task)
        output.destination = task.results.destination
        return output

    orchestrator = Orchestrator(bus, state, records, {TINY.name: TINY}, FAST.model_copy(update={"max_attempts": 2}),
                                destination="PACS", delivery_period_s=1.0)
    services: list[Any] = [orchestrator, *(
        StageWorker(bus, stage, handler, records, poll_timeout_s=0.05, heartbeat_s=5.0)
        for stage, handler in ((PRE, stages.preprocess), (SEG, segmentation), (RES, results)))]
    threads = [threading.Thread(target=s.run, daemon=True) for s in services]
    for thread in threads:
        thread.start()
    delivery = DeliveryLoop(state, pacs, DeliverySettings(backoff_s=0.2, backoff_max_s=0.3), holder="delivery-1")
    try:
        yield Site(state, bus, records, pacs, delivery, triton_down, stages.results, results_open)
    finally:
        results_open.set()
        for service in services:
            service.stop()
        for thread in threads:
            thread.join(timeout=30)
        state.close()


def admin(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """Run ``neuroflow admin ARGS --json``: its exit status, its JSON and its stderr."""
    capsys.readouterr()
    status = main(["admin", *args, "--json"])
    out, err = capsys.readouterr()
    return status, json.loads(out) if status == 0 else None, err


def test_a_replayed_dead_letter_is_processed_once_and_work_already_delivered_is_never_replayed(
    site: Site, capsys: pytest.CaptureFixture[str],
) -> None:
    site.triton_down.set()
    ready = study_ready("admin-replay")
    key = ready.study.study_key
    wid = publish(site.bus, ready)
    site.wait_for(wid, WorkflowStatus.DEAD_LETTERED)

    status, letters, _ = admin(capsys, "dead-letters", "list")
    assert status == 0
    (letter,) = letters
    assert (letter["kind"], letter["study_key"], letter["workflow_id"], letter["stage"], letter["attempts"],
            letter["code"]) == ("task", key, wid, "segmentation", 2, "INFERENCE_UNAVAILABLE")
    assert "Triton at 127.0.0.1:8001 unreachable" in letter["reason"]
    status, shown, _ = admin(capsys, "dead-letters", "show", letter["letter_id"])
    assert status == 0 and shown["replayable"] is True and shown["workflow_status"] == "DEAD_LETTERED"
    assert shown["task"]["stage"] == "segmentation"

    site.triton_down.clear()  # the cause is gone: the operator replays
    status, replayed, _ = admin(capsys, "dead-letters", "replay", letter["letter_id"])
    assert status == 0 and replayed["workflow_id"] == wid
    site.wait_for(wid, WorkflowStatus.SUCCEEDED)
    site.deliver_until(wid, DeliveryStatus.DELIVERED)
    assert site.results == [wid] and len(site.pacs.accepted) == 1

    status, _, err = admin(capsys, "dead-letters", "replay", letter["letter_id"])
    assert status == 1 and "replayed already" in err
    # A letter of the same workflow that was never replayed (e.g. recorded twice by a crashing orchestrator)
    # is refused too: the workflow's results were delivered.
    site.state.record_dead_letter(DeadLetterRecord(
        letter_id="dl-stale", kind=DeadLetterKind.TASK, workflow_id=wid, study_key=key, pipeline=TINY.name,
        stage="results", attempts=2, code="DEADLINE_EXCEEDED", reason="stale", payload=b"", created_at=time.time(),
        replayed_at=None))
    status, _, err = admin(capsys, "dead-letters", "replay", "dl-stale")
    assert status == 1 and "delivered to PACS already" in err
    time.sleep(0.5)
    site.delivery.deliver_due()
    assert site.results == [wid] and len(site.pacs.accepted) == 1  # no second result, nothing sent again
    assert site.state.get(wid).status == WorkflowStatus.SUCCEEDED  # type: ignore[union-attr]

    status, studies, _ = admin(capsys, "studies")
    assert status == 0
    (study,) = [s for s in studies if s["study_key"] == key]
    (workflow,) = study["workflows"]
    assert workflow["status"] == "SUCCEEDED" and workflow["delivery"] == "PACS: DELIVERED"
    assert set(workflow["stages"]) == {"preprocess", "segmentation", "results"}
    assert all(v.startswith("done in") for v in workflow["stages"].values())

    status, history, _ = admin(capsys, "history", key)
    assert status == 0
    (flow,) = history["workflows"]
    statuses = [e["status"] for e in flow["events"]]
    # created, seg attempt 1 failed -> retried, attempt 2 failed -> dead-lettered, replayed, then succeeded
    assert statuses[0] == "PENDING" and statuses[-1] == "SUCCEEDED"
    dead_at = statuses.index("DEAD_LETTERED")
    assert statuses[dead_at + 1] == "PENDING" and "replayed by an operator" in flow["events"][dead_at + 1]["detail"]
    assert sum("segmentation attempt" in e["detail"] and "dispatched" in e["detail"] for e in flow["events"]) == 3
    assert [d["status"] for d in flow["deliveries"]] == ["DELIVERED"] and flow["deliveries"][0]["attempts"] == 1
    assert {d["letter_id"] for d in flow["dead_letters"]} == {letter["letter_id"], "dl-stale"}
    assert flow["timer"] is None

    status, _, err = admin(capsys, "history", "no-such-study")
    assert status == 1 and "no workflow of study 'no-such-study'" in err


def test_a_delivery_given_up_after_the_period_is_replayed_and_sent_once(
    site: Site, capsys: pytest.CaptureFixture[str],
) -> None:
    site.pacs.down = True
    wid = publish(site.bus, study_ready("admin-delivery"))
    site.wait_for(wid, WorkflowStatus.SUCCEEDED)
    site.deliver_until(wid, DeliveryStatus.GAVE_UP)  # the 1 s delivery period has passed
    status, letters, _ = admin(capsys, "dead-letters", "list")
    (letter,) = [x for x in letters if x["workflow_id"] == wid]
    assert letter["kind"] == "delivery" and "connection refused" in letter["reason"]

    site.pacs.down = False
    status, _, _ = admin(capsys, "dead-letters", "replay", letter["letter_id"])
    assert status == 0
    site.deliver_until(wid, DeliveryStatus.DELIVERED)
    status, _, err = admin(capsys, "dead-letters", "replay", letter["letter_id"])
    assert status == 1 and "replayed already" in err
    site.delivery.deliver_due()
    assert len(site.pacs.accepted) == 1 and site.results == [wid]


def test_a_given_up_delivery_of_a_result_rejected_in_review_is_never_replayed(
    site: Site, capsys: pytest.CaptureFixture[str],
) -> None:
    """A radiologist rejects a result whose delivery had given up (the PACS was down): the operator's replay
    of that dead letter is refused, and nothing reaches the PACS once it is back."""
    site.pacs.down = True
    wid = publish(site.bus, study_ready("admin-rejected"))
    site.wait_for(wid, WorkflowStatus.SUCCEEDED)
    site.deliver_until(wid, DeliveryStatus.GAVE_UP)
    (letter,) = [x for x in site.state.dead_letters() if x.workflow_id == wid]
    accepted_before = len(site.pacs.accepted)
    assert site.state.withhold_deliveries(wid, "withheld: rejected in review", now=time.time()) == ["PACS"]
    site.pacs.down = False
    status, _, err = admin(capsys, "dead-letters", "replay", letter.letter_id)
    assert status == 1 and "rejected in review" in err
    site.delivery.deliver_due()
    assert len(site.pacs.accepted) == accepted_before
    assert {d.status for d in site.state.deliveries(workflow_id=wid)} == {DeliveryStatus.WITHHELD}


def test_a_rerun_starts_a_new_workflow_of_the_study_whose_result_is_delivered_once(site: Site) -> None:
    ready = study_ready("admin-rerun")
    wid = publish(site.bus, ready)
    site.wait_for(wid, WorkflowStatus.SUCCEEDED)
    publish(site.bus, ready)  # re-sending the same study is a duplicate: nothing happens
    (started,) = rerun_study(site.state, site.records, site.bus, ready.study.study_key)
    assert started["rerun_of"] == wid and started["workflow_id"] != wid
    site.wait_for(started["workflow_id"], WorkflowStatus.SUCCEEDED)
    site.deliver_until(started["workflow_id"], DeliveryStatus.DELIVERED)
    site.deliver_until(wid, DeliveryStatus.DELIVERED)
    assert site.results == [wid, started["workflow_id"]]
    assert len(site.pacs.accepted) == 2  # one per workflow: the rerun's objects replace the first's in the PACS
    record = site.state.get(started["workflow_id"])
    assert record is not None and record.input_hash == f"{ready.input_hash}+rerun1"


def test_the_audit_trail_records_who_did_what_to_a_study_and_admin_audit_detects_tampering(
    site: Site, capsys: pytest.CaptureFixture[str], postgres_dsn: str,
) -> None:
    site.triton_down.set()
    ready = study_ready("admin-audit")
    key, uid = ready.study.study_key, ready.study.study_instance_uid
    wid = publish(site.bus, ready)
    site.wait_for(wid, WorkflowStatus.DEAD_LETTERED)
    site.triton_down.clear()
    (letter,) = [x for x in site.state.dead_letters() if x.workflow_id == wid]
    assert admin(capsys, "dead-letters", "replay", letter.letter_id)[0] == 0
    site.wait_for(wid, WorkflowStatus.SUCCEEDED)
    site.deliver_until(wid, DeliveryStatus.DELIVERED)

    status, trail, _ = admin(capsys, "audit", uid)  # named by its StudyInstanceUID: the same as by its key
    assert status == 0 and trail["study_key"] == key and trail["intact"] is True and trail["chain"] == "intact"
    records = trail["records"]
    steps = [(r["action"], r["detail"].get("stage")) for r in records]
    assert steps[:3] == [("workflow created", None), ("stage started", "preprocess"),
                         ("stage finished", "preprocess")]
    assert ("dead-lettered", "segmentation") in steps and ("replayed", "segmentation") in steps
    assert steps[-3:] == [("stage finished", "results"), ("succeeded", "results"), ("delivered", "results")]
    (segmented,) = [r for r in records if (r["action"], r["detail"].get("stage")) == ("stage finished",
                                                                                       "segmentation")]
    assert segmented["detail"]["model"] == "tiny:1" and segmented["detail"]["attempt"] == 1
    assert segmented["detail"]["worker"].startswith("segmentation-worker/")  # the replica that answered
    actors = {r["action"]: r["actor"].split("/")[0] for r in records}
    assert (actors["stage started"], actors["replayed"], actors["delivered"]) == ("orchestrator", "admin", "delivery")
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert uid not in json.dumps(records)  # pseudonymous: the UID is nowhere in the trail
    viewed = site.state.audit_records(key)[-1]  # reading the trail is itself recorded, after what was shown
    assert (viewed.seq, viewed.action, viewed.actor.split("/")[0]) == (len(records) + 1, "viewed", "admin")

    with psycopg.connect(postgres_dsn, autocommit=True) as db:  # someone edits the table behind neuroflow
        db.execute("UPDATE audit_trail SET actor = 'nobody' WHERE study_key = %s AND seq = 4", (key,))
    capsys.readouterr()
    assert main(["admin", "audit", key]) == 65  # EX_DATAERR
    out, err = capsys.readouterr()
    assert "BROKEN at record 4" in err and "was altered" in err and "stage finished" in out


def test_a_cancelled_workflow_dispatches_nothing_more_and_its_late_result_is_never_delivered(
    site: Site, capsys: pytest.CaptureFixture[str],
) -> None:
    """The results stage is working (its answer will come late) when the operator cancels the study: the
    workflow ends CANCELLED, the answer is ignored, nothing is put in the outbox nor reaches the PACS."""
    site.results_open.clear()
    ready = study_ready("admin-cancel")
    key = ready.study.study_key
    wid = publish(site.bus, ready)
    deadline = time.monotonic() + WAIT_S
    while (record := site.state.get(wid)) is None or record.stage != "results":
        assert time.monotonic() < deadline, f"the results stage was not dispatched: {record}"
        time.sleep(0.05)
    status, (cancelled,), _ = admin(capsys, "cancel", key)
    assert status == 0 and cancelled["cancelled"] and cancelled["was"] == "RUNNING"
    site.results_open.set()  # the task in flight answers now, after the cancel
    later = publish(site.bus, study_ready("admin-after-cancel"))  # answered after the late one, on the same topic
    site.wait_for(later, WorkflowStatus.SUCCEEDED)
    assert wid in site.results  # the late answer was made...
    site.delivery.deliver_due()
    assert site.state.deliveries(workflow_id=wid) == []  # ... and ignored: nothing to deliver
    record = site.state.get(wid)
    assert record is not None and record.status == WorkflowStatus.CANCELLED
    trail = [(r.action, r.actor) for r in site.state.audit_records(key)]
    assert trail[-1][0] == "cancelled" and trail[-1][1].startswith("admin/")
    status, _, err = admin(capsys, "cancel", key)  # nothing is left to cancel
    assert status == 1 and "nothing to cancel" in err
    status, studies, _ = admin(capsys, "studies")
    assert [w["status"] for s in studies if s["study_key"] == key for w in s["workflows"]] == ["CANCELLED"]


def test_a_paused_pipeline_holds_a_new_study_until_it_is_resumed(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEUROFLOW_INGEST__PIPELINES", json.dumps([TINY.name]))
    status, _, err = admin(capsys, "pipelines", "pause", "tinny")  # a typo pauses nothing
    assert status == 1 and "not one of this site's (tiny)" in err
    status, paused, _ = admin(capsys, "pipelines", "pause", TINY.name)
    assert status == 0 and paused["changed"]
    ready = study_ready("admin-paused")
    wid = publish(site.bus, ready)
    site.wait_for(wid, WorkflowStatus.PENDING)  # the workflow exists: the study is not lost...
    time.sleep(1.0)  # ... and stays undispatched, ticks and all
    record = site.state.get(wid)
    assert record is not None and record.status == WorkflowStatus.PENDING and record.stage is None
    status, listing, _ = admin(capsys, "pipelines", "list")
    assert status == 0 and [(p["pipeline"], p["waiting"]) for p in listing if p["paused_by"]] == [(TINY.name, 1)]
    assert "held: pipeline paused" in [r.action for r in site.state.audit_records(ready.study.study_key)]
    status, resumed, _ = admin(capsys, "pipelines", "resume", TINY.name)
    assert status == 0 and resumed["changed"]
    site.wait_for(wid, WorkflowStatus.SUCCEEDED)
    site.deliver_until(wid, DeliveryStatus.DELIVERED)
    assert site.results == [wid]
    trail = [(r.action, r.fields()["pipeline"]) for r in site.state.audit_records(OPERATIONS_CHAIN)]
    assert trail == [("pipeline paused", TINY.name), ("pipeline resumed", TINY.name)]
