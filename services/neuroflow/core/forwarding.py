"""Forwarding result objects to the destination PACS with bounded retries: shared by every stage that
delivers results (the glioma results stage and the longitudinal stage), so both give up the same way."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from neuroflow.core.dicom_io import Forwarder
from neuroflow.core.errors import DestinationUnavailable

log = logging.getLogger(__name__)


def forward_with_backoff(
    forwarder: Forwarder,
    sop_instance_uids: Sequence[str],
    destination: str,
    *,
    attempts: int,
    backoff_s: float,
    study_key: str,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Forward to ``destination``, trying up to ``attempts`` times while it is unavailable, waiting
    ``backoff_s``, then twice that, ... between tries. A rejection (DestinationRejected) is not retried
    here (the PACS answered: retrying at once would be refused again) but fails the task as retryable,
    so the orchestrator tries again after its own, longer backoff; unavailability on the last try is
    raised (DestinationUnavailable, saying how many tries were made). Both end in the dead-letter topic
    after the orchestrator's last attempt: never an endless loop."""
    for attempt in range(1, attempts + 1):
        try:
            forwarder.forward(sop_instance_uids, destination)
            return
        except DestinationUnavailable as exc:
            if attempt == attempts:
                raise DestinationUnavailable(f"{exc} (gave up after {attempts} tries in this task)") from exc
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("study %s: forwarding to %s failed (try %d/%d): %s; again in %.1f s", study_key,
                        destination, attempt, attempts, exc, delay)
            sleep(delay)
