"""Retention: what neuroflow keeps of a study once its results are delivered, and for how long
(``RetentionSettings``, days per kind; 0 keeps that kind for ever). The monitor runs one sweep every
``RetentionSettings.interval_s``.

What may go, and when (``now - period``, per kind, is the cutoff):

* a workflow's volumes (``<study_key>/<workflow_id>/`` in the volume store), records (``workflows/<id>/...``
  and the workers' answers to its tasks) and report folder (``<reports_dir>/<study_key>/<workflow_id>/``):
  when the workflow is finished (SUCCEEDED, FAILED or DEAD_LETTERED, core.state.FINISHED_STATUSES) and its
  last update is older than the cutoff. A FAILED or DEAD_LETTERED workflow can be replayed by an operator
  until then; a replay moves it to PENDING, which keeps everything.
* its workflow row, last: the row is how the sweep finds the rest (so a sweep that dies half-way is
  finished by the next), and how re-sent input is known as done (settings keep rows longest).
* a study in the site Orthanc (``DELETE /studies/{id}``): when Orthanc last changed it before the cutoff,
  ingest has no unhandled change of it, and every workflow of the study is finished and delivered (FAILED
  and DEAD_LETTERED ones last updated before the cutoff). A study no pipeline took (no workflow) goes after
  the same period. The PACS keeps its own copy and the results: a later study needing this one as a prior
  retrieves it from there.
* a handled wait-window row (ingest's per-study state): after ``state_rows_days``; a study changing again
  later gets a new row.

Never deleted here, nor anywhere: the audit trail (core/audit.py, table ``audit_trail``). It is append-only
and hash-chained; a workflow row's deletion (``SqlStateStore.delete_finished``) leaves it, so who did what to a
study stays provable after everything else of the study is gone. It holds no PHI (pseudonymous keys only).

Kept for ever on purpose: the longitudinal timepoints (a row of a few hundred bytes per study and change
pipeline). They are the patient's timeline: which earlier study a follow-up was compared with, and which
follow-ups a late-arriving older study must re-trigger; without them a late prior would silently not be
compared, or a follow-up re-compared and reported twice.

"Delivered": a SUCCEEDED workflow has stored its results. When results are queued for delivery separately
(a delivery outbox), ``DeliveryLedger.has_undelivered_results`` says which still wait: nothing of such a
workflow, nor its study in Orthanc, is touched.

Safe with several monitors: every delete is idempotent (what is gone is skipped) and the row's delete is
conditional on it still being finished and old, in one statement. Two sweeps at once only repeat work
(their counts may then both include an item). Nothing here logs or labels a patient or a UID: counts by
kind only."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from neuroflow.core import metrics
from neuroflow.core.config import RetentionSettings
from neuroflow.core.dicom_io import study_key
from neuroflow.core.errors import OrthancRequestFailed
from neuroflow.core.records import RecordStore
from neuroflow.core.state import FINISHED_STATUSES, WorkflowRecord, WorkflowStateStore, WorkflowStatus
from neuroflow.core.volume_store import VolumeStore, file_size, files_under
from neuroflow.proto.neuroflow.v1 import tasks_pb2

log = logging.getLogger(__name__)

_DAY_S = 86400.0
_ORTHANC_PAGE = 100
# Where the workers keep their answer to each task (core.worker.done_record_key): a TaskDone naming its workflow.
_TASK_ANSWERS = "tasks/done"


class DeliveryLedger(Protocol):
    """Whether a workflow still has results waiting to be delivered (e.g. in a delivery outbox)."""

    def has_undelivered_results(self, workflow_id: str) -> bool: ...


class NothingUndelivered:
    """The ledger while results are delivered inside the workflow: SUCCEEDED means delivered."""

    def has_undelivered_results(self, workflow_id: str) -> bool:
        return False


class HandledWindows(Protocol):
    """What retention needs of ingest's wait-window store (neuroflow.ingest.window_store.WindowStore)."""

    def is_pending(self, resource_id: str) -> bool: ...

    def forget_handled(self, before: float) -> int: ...


class OrthancStudies(Protocol):
    """What retention needs of the site Orthanc's REST API (core.orthanc.OrthancClient)."""

    def get_json(self, path: str, *, what: str = "") -> Any: ...

    def request(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
                accept: str | None = None, timeout_s: float | None = None, what: str = "") -> bytes: ...


@dataclass
class SweepTally:
    """What one sweep deleted, by kind (metrics.RETENTION_KINDS)."""

    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(metrics.RETENTION_KINDS, 0))
    freed_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(metrics.RETENTION_KINDS, 0))

    def add(self, kind: str, items: int, freed: int = 0) -> None:
        self.deleted[kind] += items
        self.freed_bytes[kind] += freed

    def line(self) -> str:
        return ", ".join(f"{kind} {self.deleted[kind]} ({self.freed_bytes[kind] / 1e6:.1f} MB)"
                         if self.freed_bytes[kind] else f"{kind} {self.deleted[kind]}" for kind in self.deleted)


class RetentionSweep:
    """Deletes what ``settings`` no longer keeps; a monitor probe (``run``: a sweep when ``interval_s`` has
    passed since the last). ``orthanc`` None: the site's studies are not in an Orthanc (folder source);
    ``windows`` None: no wait-window rows to forget."""

    name = "retention"

    def __init__(self, settings: RetentionSettings, site: str, state: WorkflowStateStore, volumes: VolumeStore,
                 records: RecordStore, reports_dir: Path, *, orthanc: OrthancStudies | None = None,
                 windows: HandledWindows | None = None, ledger: DeliveryLedger | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._site = site
        self._state = state
        self._volumes = volumes
        self._records = records
        self._reports_dir = reports_dir
        self._orthanc = orthanc
        self._windows = windows
        self._ledger: DeliveryLedger = ledger or NothingUndelivered()
        self._clock = clock
        self._last_sweep: float | None = None

    def run(self) -> None:
        now = self._clock()
        if self._last_sweep is not None and now - self._last_sweep < self._settings.interval_s:
            return
        self._last_sweep = now
        try:
            self.sweep(now)
        except Exception:  # the next interval tries again; the staleness of the timestamp shows it
            log.exception("retention sweep failed")

    def sweep(self, now: float | None = None) -> SweepTally:
        """One pass over every kind; returns (and records in metrics, and logs) what it deleted."""
        now = self._clock() if now is None else now
        began = time.monotonic()
        tally = SweepTally()
        self._sweep_workflows(now, tally)
        self._sweep_orthanc(now, tally)
        days = self._settings.state_rows_days
        if self._windows is not None and days > 0:
            tally.add("window_rows", self._windows.forget_handled(now - days * _DAY_S))
        for kind in metrics.RETENTION_KINDS:
            metrics.RETENTION_DELETED.labels(self._site, kind).inc(tally.deleted[kind])
            metrics.RETENTION_FREED_BYTES.labels(self._site, kind).inc(tally.freed_bytes[kind])
        metrics.RETENTION_LAST_SWEEP.labels(self._site).set(time.time())
        log.info("retention sweep in %.1f s: %s", time.monotonic() - began, tally.line())
        return tally

    # -- a workflow's volumes, records, report and row ------------------------------------------------

    def _cutoff(self, now: float, days: float) -> datetime | None:
        return datetime.fromtimestamp(now - days * _DAY_S, UTC) if days > 0 else None

    def _sweep_workflows(self, now: float, tally: SweepTally) -> None:
        s = self._settings
        cutoffs = {kind: self._cutoff(now, days) for kind, days in (
            ("volumes", s.volumes_days), ("records", s.records_days), ("reports", s.reports_days),
            ("state_rows", s.state_rows_days))}
        set_cutoffs = [c for c in cutoffs.values() if c is not None]
        if not set_cutoffs:
            return
        records_gone: set[str] = set()
        rows_due: list[WorkflowRecord] = []
        for workflow in self._state.finished_before(max(set_cutoffs)):
            if self._ledger.has_undelivered_results(workflow.workflow_id):
                continue
            older = {kind for kind, cutoff in cutoffs.items() if cutoff is not None and workflow.updated_at < cutoff}
            # A row goes last, after everything found through it (again: a sweep may have died half-way),
            # except a kind kept for ever (period 0).
            if "state_rows" in older:
                older |= {kind for kind in ("volumes", "records", "reports") if cutoffs[kind] is not None}
                rows_due.append(workflow)
            folder = f"{workflow.study_key}/{workflow.workflow_id}"
            if "volumes" in older:
                tally.add("volumes", *self._volumes.delete_prefix(folder))
            if "reports" in older:
                tally.add("reports", *_remove_tree(self._reports_dir / workflow.study_key, workflow.workflow_id))
            if "records" in older:
                tally.add("records", *self._delete_records(f"workflows/{workflow.workflow_id}"))
                records_gone.add(workflow.workflow_id)
        if records_gone:
            tally.add("records", *self._delete_task_answers(records_gone))
        cutoff = cutoffs["state_rows"]
        for workflow in rows_due:
            if cutoff is not None and self._state.delete_finished(workflow.workflow_id, cutoff):
                tally.add("state_rows", 1)

    def _delete_records(self, folder: str) -> tuple[int, int]:
        removed = freed = 0
        for key in self._records.keys(folder):
            value = self._records.get(key)
            if value is not None:
                self._records.delete(key)
                removed, freed = removed + 1, freed + len(value)
        return removed, freed

    def _delete_task_answers(self, workflow_ids: set[str]) -> tuple[int, int]:
        """The workers' TaskDone records of these workflows (keyed by a digest of the task: read to match)."""
        removed = freed = 0
        for key in self._records.keys(_TASK_ANSWERS):
            value = self._records.get(key)
            if value is None:
                continue
            try:
                workflow = tasks_pb2.TaskDone.FromString(value).workflow_id
            except Exception:  # not ours to judge: a record retention cannot read is left alone
                continue
            if workflow in workflow_ids:
                self._records.delete(key)
                removed, freed = removed + 1, freed + len(value)
        return removed, freed

    # -- the site Orthanc's studies -------------------------------------------------------------------

    def _sweep_orthanc(self, now: float, tally: SweepTally) -> None:
        cutoff = self._cutoff(now, self._settings.orthanc_studies_days)
        if self._orthanc is None or cutoff is None:
            return
        for study in list(self._orthanc_studies()):  # listed first: deleting shifts Orthanc's paging
            orthanc_id = str(study["ID"])
            changed = _orthanc_time(str(study.get("LastUpdate", "")))
            uid = str(study.get("MainDicomTags", {}).get("StudyInstanceUID", ""))
            if changed is None or changed >= cutoff or not uid:
                continue
            if self._windows is not None and self._windows.is_pending(orthanc_id):
                continue  # ingest has a change of it not yet handed on
            if not self._delivered(self._state.of_study(study_key(uid)), cutoff):
                continue
            tally.add("orthanc_studies", *self._delete_orthanc_study(orthanc_id))

    def _orthanc_studies(self) -> Iterator[dict[str, Any]]:
        assert self._orthanc is not None
        since = 0
        while True:
            page: list[dict[str, Any]] = self._orthanc.get_json(
                f"/studies?expand&since={since}&limit={_ORTHANC_PAGE}", what="list studies for retention")
            yield from page
            if len(page) < _ORTHANC_PAGE:
                return
            since += len(page)

    def _delivered(self, workflows: list[WorkflowRecord], cutoff: datetime) -> bool:
        for workflow in workflows:
            if workflow.status not in FINISHED_STATUSES:
                return False  # still running, or waiting for a retry
            if workflow.status != WorkflowStatus.SUCCEEDED and workflow.updated_at >= cutoff:
                return False  # an operator may still replay it
            if self._ledger.has_undelivered_results(workflow.workflow_id):
                return False
        return True

    def _delete_orthanc_study(self, orthanc_id: str) -> tuple[int, int]:
        assert self._orthanc is not None
        try:
            size = int(self._orthanc.get_json(f"/studies/{orthanc_id}/statistics",
                                              what=f"size study {orthanc_id}").get("DiskSize", 0))
            self._orthanc.request("DELETE", f"/studies/{orthanc_id}", what=f"delete study {orthanc_id}")
        except OrthancRequestFailed as error:
            if error.status == 404:
                return 0, 0  # another sweep (or a person) deleted it first
            raise
        return 1, size


def _orthanc_time(text: str) -> datetime | None:
    """Orthanc's LastUpdate (``YYYYMMDDTHHMMSS``, UTC) as a datetime; None when absent or malformed."""
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _remove_tree(parent: Path, name: str) -> tuple[int, int]:
    """Remove ``parent/name`` (a report folder) and ``parent`` once empty; (folders removed, bytes freed)."""
    folder = parent / name
    if not folder.is_dir():
        return 0, 0
    freed = sum(file_size(p) for p in files_under(folder))
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # only when empty: the study's other workflows keep theirs
        parent.rmdir()
    return 1, freed
