"""What the delivery loop no longer sends (core/delivery.DeliveryLoop._superseded), on a real SQLite state
database: an original whose send was in flight when a correction was requested, and then failed, is withheld
rather than sent after the correction that supersedes it (an earlier correction not sent yet likewise, once a
later one is owed); nothing of a result is sent once it is rejected. The
forwarder records what it is given (the PACS side is tested on real Orthanc in tests/integration)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from neuroflow.core.config import DeliverySettings
from neuroflow.core.delivery import DeliveryLoop
from neuroflow.core.reviews import Decision, ReviewDecision, SqliteReviewStore
from neuroflow.core.state import SqliteStateStore
from neuroflow.core.state_schedules import DeliveryStatus, correction_workflow_id


class Recording:
    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def forward(self, sop_instance_uids: Sequence[str], destination: str, /) -> None:
        self.sent.append(list(sop_instance_uids))


def test_a_superseded_original_and_a_rejected_results_correction_are_withheld_not_sent(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "workflows.sqlite")
    reviews = SqliteReviewStore(tmp_path / "workflows.sqlite")
    forwarder = Recording()
    loop = DeliveryLoop(store, forwarder, DeliverySettings(), holder="replica-1", reviews=reviews,
                        correct=lambda correction: ["2.25.9"])
    now = time.time()
    store.create("wf-1", "study-1", "glioma", "hash-1")
    store.enqueue_delivery("wf-1", "PACS", study_key="study-1", pipeline="glioma", stage="results",
                           sop_instance_uids=["2.25.1"], now=now, give_up_at=now + 600)
    (original,) = store.claim_due_deliveries(now, "replica-2", 30.0)  # being sent when the review comes
    store.request_corrections("wf-1", "rev-1", now=now, give_up_at=now + 600)
    assert store.withhold_deliveries("wf-1", "withheld: corrected", now=now) == []  # in flight: not stopped
    assert loop.deliver_due() == 0  # the correction waits for the original's send
    assert store.delivery_failed(original, "replica-2", "PACS down", next_attempt_at=now, give_up=False)

    assert loop.deliver_due() == 1
    assert forwarder.sent == [["2.25.9"]]  # the correction only: the original is never sent after it
    statuses = {d.workflow_id: (d.status, d.last_error, d.sop_instance_uids) for d in store.deliveries()}
    assert statuses["wf-1"][:2] == (DeliveryStatus.WITHHELD, "withheld: the corrected result is sent instead")
    assert statuses[correction_workflow_id("wf-1", "rev-1")] == (DeliveryStatus.DELIVERED, "", ("2.25.9",))

    # Two reviews' corrections owed: the earlier one, not sent yet, is withheld; the later one is sent.
    store.request_corrections("wf-1", "rev-2", now=now + 1, give_up_at=now + 600)
    store.request_corrections("wf-1", "rev-3", now=now + 2, give_up_at=now + 600)
    assert loop.deliver_due(now + 3) == 1 and forwarder.sent == [["2.25.9"], ["2.25.9"]]
    statuses = {d.workflow_id: d.status for d in store.deliveries()}
    assert statuses[correction_workflow_id("wf-1", "rev-2")] == DeliveryStatus.WITHHELD
    assert statuses[correction_workflow_id("wf-1", "rev-3")] == DeliveryStatus.DELIVERED

    # Rejected: the review is recorded before the console withholds anything; what the loop claims in between
    # is withheld all the same.
    store.create("wf-2", "study-2", "glioma", "hash-2")
    store.enqueue_delivery("wf-2", "PACS", study_key="study-2", pipeline="glioma", stage="results",
                           sop_instance_uids=["2.25.2"], now=now, give_up_at=now + 600)
    reviews.record(ReviewDecision(study_key="study-2", workflow_id="wf-2", pipeline="glioma", model="m/1",
                                  decision=Decision.REJECTED, quality=1, reviewer="rad"))
    assert loop.deliver_due(now + 3) == 0 and len(forwarder.sent) == 2
    (rejected,) = store.deliveries(workflow_id="wf-2")
    assert (rejected.status, rejected.last_error) == (DeliveryStatus.WITHHELD,
                                                      "withheld: the result was rejected in review")
    store.close()
