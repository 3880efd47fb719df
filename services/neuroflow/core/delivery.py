"""Delivery of stored results to the destination PACS, from the outbox in the state database.

The orchestrator puts a succeeded workflow's result objects (their SOP Instance UIDs, already stored in the
site Orthanc) in the outbox (``core.state_schedules``). Every replica of the results and longitudinal
services runs a :class:`DeliveryLoop` beside its stage worker: it claims the due deliveries (a lease, so
one replica sends each at a time), C-STOREs them through the site Orthanc, and records the outcome. A
delivery that fails (PACS down, refusing, not answering) is tried again with exponential backoff until the
site's delivery period (``DeliverySettings.retry_for_s``, 24 h by default) has passed since the results
were stored; then it is dead-lettered for an operator to replay. So a PACS outage of minutes or hours
delays a result and never loses it, and a result is marked delivered only once the PACS accepted it,
after which it is never sent again.

Why there: those services already hold the site Orthanc that forwards (their sink) and may reach it; the
orchestrator stays free of DICOM I/O, so a C-STORE that waits minutes on a hung PACS never delays
dispatching. Every site runs at least one of the two services.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from neuroflow.core import metrics
from neuroflow.core.config import DeliverySettings
from neuroflow.core.dicom_io import Forwarder
from neuroflow.core.errors import NeuroflowError
from neuroflow.core.state_schedules import (
    CORRECTION_STAGE,
    RETRACTION_STAGE,
    DeadLetterKind,
    DeadLetterRecord,
    Delivery,
    ScheduleStatements,
    new_letter_id,
    result_workflow,
)
from neuroflow.core.worker import failure_reason
from neuroflow.proto.neuroflow.v1 import common_pb2

log = logging.getLogger(__name__)


class Service(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


# Builds and stores at the site the notice a retraction owes; the SOP Instance UIDs to send
# (results.retraction.Retractor).
Retract = Callable[[Delivery], Sequence[str]]


class Reviews(Protocol):
    """The radiologists' decisions as the loop needs them (core.reviews.ReviewStore)."""

    def rejected(self, workflow_id: str, /) -> bool: ...


class DeliveryLoop:
    """Sends due deliveries from ``outbox`` through ``forwarder``; ``holder`` names this replica in leases.
    With ``retract``, also the retraction notices owed for results a radiologist rejected after delivery
    (same leases, backoff and dead letters); with ``correct``, the corrected results of those accepted with
    components removed (their rows are in the outbox: without ``correct`` one fails, and is retried). With
    ``reviews``, nothing more of a rejected result is sent.

    The order at one destination, when a decision meets a send in flight (the console withholds only what no
    replica holds): a correction is not claimed while its original is being sent (claim_due_deliveries), so
    its SR, which names the original's as predecessor, arrives after it; an original whose send failed is
    withheld at its next claim once a correction to that destination exists (a correction not yet sent, once
    a later one does: it would arrive after the one that supersedes it); a retraction is claimed once
    nothing of the result is in flight there, and supersedes all of it that arrived, originals and
    corrections (reached_objects); a correction or original claimed after the rejection is withheld."""

    def __init__(self, outbox: ScheduleStatements, forwarder: Forwarder, settings: DeliverySettings, *,
                 holder: str, retract: Retract | None = None, correct: Retract | None = None,
                 reviews: Reviews | None = None) -> None:
        self._outbox = outbox
        self._reviews = reviews
        self._retract = retract
        self._correct = correct
        self._forwarder = forwarder
        self._settings = settings
        self._holder = holder
        self._stop = threading.Event()
        self.sent = 0  # deliveries the destination accepted (for tests and heartbeats)

    def deliver_due(self, now: float | None = None) -> int:
        """Try every due delivery once; returns how many the destination accepted."""
        now = time.time() if now is None else now
        accepted = 0
        due = self._outbox.claim_due_deliveries(now, self._holder, self._settings.lease_s)
        if self._retract is not None:
            due += self._outbox.claim_due_retractions(now, self._holder, self._settings.lease_s)
        for delivery in due:
            if self._attempt(delivery):
                accepted += 1
        return accepted

    def run(self) -> None:
        """Deliver until :meth:`stop`, looking every ``poll_interval_s``."""
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # the state database away: try again at the next interval
                log.exception("delivery: cannot read the outbox; again in %.0f s", self._settings.poll_interval_s)
            self._stop.wait(self._settings.poll_interval_s)

    def stop(self) -> None:
        self._stop.set()

    def _attempt(self, delivery: Delivery) -> bool:
        key, destination = delivery.study_key, delivery.destination
        if delivery.stage != RETRACTION_STAGE and (why := self._superseded(delivery)):
            if self._outbox.withhold_claimed(delivery, self._holder, why):
                log.info("study %s: workflow %s: delivery to %s %s", key, delivery.workflow_id, destination, why)
            return False
        try:
            # A retraction's notice is built (and stored at the site) at each attempt, from every object of the
            # result the destination accepted: the same UIDs each time.
            uids = list(self._retract(replace(delivery, sop_instance_uids=tuple(self._outbox.reached_objects(
                        delivery.workflow_id, destination))))
                        if delivery.stage == RETRACTION_STAGE and self._retract is not None
                        else self._corrected(delivery) if delivery.stage == CORRECTION_STAGE
                        else delivery.sop_instance_uids)
            self._forwarder.forward(uids, destination)
        except Exception as exc:  # any failure is retried until the delivery period ends
            reason = failure_reason(exc, study_key=delivery.study_key, stage="delivery")
            self._failed(delivery, f"{type(exc).__name__}: {exc}", common_pb2.FailureReason.Code.Name(reason.code))
            return False
        if self._outbox.delivery_done(delivery, self._holder, time.time(), sent=uids):
            self.sent += 1
            metrics.DELIVERY_ATTEMPTS.labels(delivery.pipeline, "delivered").inc()
            log.info("study %s: workflow %s: %d %s object(s) delivered to %s (attempt %d)", key,
                     delivery.workflow_id, len(uids), delivery.stage, destination, delivery.attempts + 1)
        return True

    def _superseded(self, delivery: Delivery) -> str:
        """Why a claimed delivery must not be sent any more ("" when it must): its result was rejected, or a
        correction of it (a later one, for a correction) is owed to the same destination."""
        result = result_workflow(delivery.workflow_id)
        if self._reviews is not None and self._reviews.rejected(result):
            return "withheld: the result was rejected in review"
        later = [c for c in self._outbox.corrections(workflow_id=result) if c.destination == delivery.destination
                 and (delivery.stage != CORRECTION_STAGE or c.created_at > delivery.created_at)]
        return "withheld: the corrected result is sent instead" if later else ""

    def _corrected(self, delivery: Delivery) -> Sequence[str]:
        """The corrected objects a correction row owes, built and stored at the site (the same UIDs each
        attempt); never the uncorrected objects the row lists."""
        if self._correct is None:
            raise NeuroflowError(f"study {delivery.study_key}: this delivery replica cannot build corrected results "
                                 "(its site sink is not an Orthanc)")
        return self._correct(delivery)

    def _failed(self, delivery: Delivery, error: str, code: str) -> None:
        now, attempts = time.time(), delivery.attempts + 1
        give_up = now >= delivery.give_up_at
        # The last attempt is made when the period ends, however long the backoff has grown.
        next_at = min(now + self._settings.backoff(attempts), delivery.give_up_at)
        what = ("the retraction notice" if delivery.stage == RETRACTION_STAGE
                else f"{len(delivery.sop_instance_uids)} result object(s)")
        message = (f"study {delivery.study_key}: delivery of {what} "
                   f"to {delivery.destination} failed: {error}")
        if not self._outbox.delivery_failed(delivery, self._holder, error, next_attempt_at=next_at, give_up=give_up):
            return  # the lease ran out meanwhile: another replica has the delivery now
        metrics.DELIVERY_ATTEMPTS.labels(delivery.pipeline, "gave_up" if give_up else "failed").inc()
        if not give_up:
            log.warning("%s (attempt %d); again in %.0f s", message, attempts, next_at - now)
            return
        self._outbox.record_dead_letter(DeadLetterRecord(
            letter_id=new_letter_id(), kind=DeadLetterKind.DELIVERY, workflow_id=delivery.workflow_id,
            study_key=delivery.study_key, pipeline=delivery.pipeline, stage=delivery.stage, attempts=attempts,
            code=code,
            reason=f"{message}; gave up after {attempts} attempt(s) over {self._settings.retry_for_s:.0f} s",
            payload=b"", created_at=now, replayed_at=None))
        log.error("%s; gave up after %d attempt(s): dead-lettered for an operator to replay", message, attempts)


class WithDelivery:
    """A stage service with a :class:`DeliveryLoop` running beside it in a thread, stopped with it."""

    def __init__(self, service: Service, delivery: DeliveryLoop) -> None:
        self.service = service
        self.delivery = delivery

    def run(self) -> None:
        thread = threading.Thread(target=self.delivery.run, name="delivery", daemon=True)
        thread.start()
        try:
            self.service.run()
        finally:
            self.delivery.stop()
            thread.join()

    def stop(self) -> None:
        self.delivery.stop()
        self.service.stop()
