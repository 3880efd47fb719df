"""The monitor's probes: each checks one thing the pipeline depends on and sets its gauges in
``neuroflow.core.metrics``. A probe never raises (a failed check is a value, 0) and never blocks longer than
its deadline: a hung NFS mount or a silent broker must show as down, not stall the other probes.

Every probe is an object with ``name`` and ``run()``; the monitor runs them in turn each period."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from neuroflow.core import metrics
from neuroflow.core.config import OrchestrationSettings
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.state import WorkflowStateStore, WorkflowStatus

log = logging.getLogger(__name__)

_PROBE_FILE_PREFIX = ".neuroflow-probe-"


class Probe(Protocol):
    name: str

    def run(self) -> None:
        """Check once and set the gauges; never raises."""


# -- storage ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageCheck:
    up: bool
    free_bytes: float | None  # None when it could not be read
    detail: str  # why it is down, for the log


def check_storage(root: Path, deadline_s: float, sentinel: str = "") -> StorageCheck:
    """Whether ``root`` is a directory (holding the file ``sentinel``, when given) that takes a small file
    (create, write, fsync, delete) within ``deadline_s``, and its free space. Runs the file system calls in
    a daemon thread: a call stuck on a dead mount is abandoned (the thread lingers until the kernel gives
    up) and the root counts as down."""
    return _check_with_deadline(root, deadline_s, sentinel)[0]


def _check_with_deadline(root: Path, deadline_s: float,
                         sentinel: str) -> tuple[StorageCheck, threading.Thread | None]:
    """The check, and the thread still stuck in it (None when it finished)."""
    outcome: list[StorageCheck] = []
    worker = threading.Thread(target=lambda: outcome.append(_write_probe_file(root, sentinel)),
                              name=f"storage-probe {root}", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if worker.is_alive() or not outcome:
        return StorageCheck(False, None, f"{root}: no answer within {deadline_s:g} s (hung mount?)"), worker
    return outcome[0], None


def probe_file_name() -> str:
    """The file this process's storage probe writes and deletes in each root (one per process: a probe of
    a root never starts while an earlier one of the same root is still stuck)."""
    return f"{_PROBE_FILE_PREFIX}{os.getpid()}"


def _write_probe_file(root: Path, sentinel: str) -> StorageCheck:
    if not root.is_dir():
        return StorageCheck(False, None, f"{root} is not a directory (not mounted, or removed)")
    if sentinel and not (root / sentinel).is_file():
        return StorageCheck(False, None, f"{root} lacks {sentinel}: the volume is not mounted there")
    probe = root / probe_file_name()
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"neuroflow storage probe\n")
            os.fsync(fd)  # a full or read-only device fails here or at write, not at open
        finally:
            os.close(fd)
        probe.unlink()
        free = float(shutil.disk_usage(root).free)
    except OSError as exc:
        return StorageCheck(False, None, f"{root}: {exc.strerror or exc}")
    return StorageCheck(True, free, "")


class StorageProbe:
    """``neuroflow_storage_up{path_role}`` and ``neuroflow_storage_free_bytes{path_role}`` for each root;
    for the ``guarded`` roles also the disk guard's ``neuroflow_storage_min_free_bytes`` and
    ``neuroflow_storage_guard_tripped`` (free space under ``min_free_bytes``: the site Orthanc refuses
    C-STORE, see deploy/orthanc/storage-guard.lua; 0: no guard).

    While an earlier check of a root is still stuck, the root stays down and no second thread is started
    for it: a dead mount costs one thread, not one per period."""

    name = "storage"

    def __init__(self, roots: Mapping[str, Path], deadline_s: float, sentinel: str = "", *,
                 min_free_bytes: int = 0, guarded: Iterable[str] = ()) -> None:
        self._roots = dict(roots)
        self._deadline_s = deadline_s
        self._sentinel = sentinel
        self._min_free_bytes = min_free_bytes
        self._guarded = frozenset(guarded) & set(self._roots) if min_free_bytes > 0 else frozenset()
        self._stuck: dict[str, threading.Thread] = {}
        self._was_up: dict[str, bool] = {}
        self._was_tripped: dict[str, bool] = {}

    def run(self) -> None:
        for role, root in self._roots.items():
            pending = self._stuck.get(role)
            if pending is not None and pending.is_alive():
                check = StorageCheck(False, None, f"{root}: the previous probe is still waiting on it")
            else:
                self._stuck.pop(role, None)
                check = self._check(role, root)
            metrics.STORAGE_UP.labels(role).set(1.0 if check.up else 0.0)
            if check.free_bytes is not None:
                metrics.STORAGE_FREE_BYTES.labels(role).set(check.free_bytes)
                if role in self._guarded:
                    self._guard(role, check.free_bytes)
            if self._was_up.get(role, True) != check.up:  # log changes, not every period
                if check.up:
                    log.info("storage %s (%s) up again", role, root)
                else:
                    log.warning("storage %s down: %s", role, check.detail)
            self._was_up[role] = check.up

    def _guard(self, role: str, free_bytes: float) -> None:
        tripped = free_bytes < self._min_free_bytes
        metrics.STORAGE_MIN_FREE_BYTES.labels(role).set(self._min_free_bytes)
        metrics.STORAGE_GUARD_TRIPPED.labels(role).set(1.0 if tripped else 0.0)
        if self._was_tripped.get(role, False) != tripped:
            if tripped:
                log.error("storage %s: %.0f bytes free, under the guard's %d: the site refuses new studies",
                          role, free_bytes, self._min_free_bytes)
            else:
                log.info("storage %s: free space back over the guard's %d bytes", role, self._min_free_bytes)
        self._was_tripped[role] = tripped

    def _check(self, role: str, root: Path) -> StorageCheck:
        check, stuck = _check_with_deadline(root, self._deadline_s, self._sentinel)
        if stuck is not None:
            self._stuck[role] = stuck
        return check


# -- services -----------------------------------------------------------------------------------------


class UpProbe:
    """Sets ``gauge`` to 1 when ``check`` returns, 0 when it raises (any exception: the service is not usable)."""

    def __init__(self, name: str, check: Callable[[], object], set_up: Callable[[float], None]) -> None:
        self.name = name
        self._check = check
        self._set_up = set_up

    def run(self) -> None:
        try:
            self._check()
        except Exception as exc:
            self._set_up(0.0)
            log.warning("%s down: %s", self.name, exc)
            return
        self._set_up(1.0)


class OrthancStorageProbe:
    """``neuroflow_orthanc_disk_size_bytes{site}``: what the site Orthanc says it stores (``/statistics``
    TotalDiskSize), the one storage figure the monitor has where Orthanc's volume is not mounted in it
    (a cluster). A failure leaves the gauge as it was: the ``orthanc`` UpProbe reports Orthanc down."""

    name = "orthanc-storage"

    def __init__(self, statistics: Callable[[], Any], site: str) -> None:
        self._statistics = statistics
        self._gauge = metrics.ORTHANC_DISK_SIZE_BYTES.labels(site)

    def run(self) -> None:
        try:
            answer = self._statistics()
            # TotalDiskSize: bytes (as a string); TotalDiskSizeMB is rounded down to whole MB.
            size = float(answer["TotalDiskSize"]) if "TotalDiskSize" in answer else \
                float(answer["TotalDiskSizeMB"]) * 1024 * 1024
        except Exception as exc:
            log.info("orthanc storage size unknown: %s", exc)
            return
        self._gauge.set(size)


class ModelReadinessProbe:
    """Sets ``neuroflow_model_ready{model}`` for every model the site pins, as the configured inference
    backend reports it (ONNX Runtime: the model loads; Triton: the server says the model is ready), so
    a model that a deployment lost or failed to load alerts before a study needs it."""

    name = "models"

    def __init__(self, backend: InferenceBackend, models: Sequence[ModelRef]) -> None:
        self._backend = backend
        self._models = list(models)

    def run(self) -> None:
        for model in self._models:
            try:
                ready = self._backend.ready(model)
            except Exception as exc:  # a backend that cannot even be asked counts as not ready
                log.warning("model %s readiness unknown: %s", model, exc)
                ready = False
            metrics.MODEL_READY.labels(model.name).set(1.0 if ready else 0.0)


@dataclass(frozen=True)
class ConsumerPair:
    """One bus consumer group reading one topic (``topics.kafka_group_id`` names its Kafka group)."""

    group: str
    topic: str


class KafkaProbe:
    """``neuroflow_kafka_up`` and ``neuroflow_kafka_consumer_lag{group,topic}``: per pair, the messages on
    the topic's partitions past the group's committed offsets (from the start of a partition the group has
    not committed on). One AdminClient for every query; nothing joins a group."""

    name = "kafka"

    def __init__(self, bootstrap: str, pairs: Sequence[ConsumerPair], timeout_s: float, site: str, *,
                 security: Mapping[str, Any] | None = None) -> None:
        from confluent_kafka.admin import AdminClient

        # ``security``: kafka_security.client_security of the monitor's own principal (TLS, SASL).
        config: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": "neuroflow-monitor", "logger": log,
                                  **(security or {})}
        self._admin = AdminClient(config)
        self._pairs = list(pairs)
        self._timeout_s = timeout_s
        self._up = metrics.KAFKA_UP.labels(site)

    def run(self) -> None:
        try:
            lags = self.lags()
        except Exception as exc:
            self._up.set(0.0)
            log.warning("kafka down: %s", exc)
            return
        self._up.set(1.0)
        for pair, lag in lags.items():
            metrics.KAFKA_CONSUMER_LAG.labels(pair.group, pair.topic).set(lag)

    def lags(self) -> dict[ConsumerPair, float]:
        """Lag per pair whose topic exists (and whose group's offsets could be read); raises when the
        cluster does not answer in time."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        from neuroflow.core.topics import kafka_group_id

        cluster = self._admin.list_topics(timeout=self._timeout_s)
        partitions = {pair: [TopicPartition(pair.topic, p) for p in cluster.topics[pair.topic].partitions]
                      for pair in self._pairs if pair.topic in cluster.topics}
        every = {(tp.topic, tp.partition) for tps in partitions.values() for tp in tps}
        latest = self._offsets(every, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        earliest = self._offsets(every, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        requests = [ConsumerGroupTopicPartitions(kafka_group_id(pair.topic, pair.group), tps)
                    for pair, tps in partitions.items()]
        lags: dict[ConsumerPair, float] = {}
        for (pair, _), request in zip(partitions.items(), requests, strict=True):
            try:
                answer = self._admin.list_consumer_group_offsets([request], request_timeout=self._timeout_s)
                committed = answer[request.group_id].result(timeout=self._timeout_s)
            except Exception as exc:  # this group's coordinator, not the cluster: leave its lag unknown
                log.info("kafka lag of %s on %s unknown: %s", pair.group, pair.topic, exc)
                continue
            lag = 0
            for tp in committed.topic_partitions:
                key = (tp.topic, tp.partition)
                start = tp.offset if tp.offset >= 0 else earliest.get(key, 0)
                lag += max(0, latest.get(key, 0) - start)
            lags[pair] = float(lag)
        return lags

    def _offsets(self, partitions: Iterable[tuple[str, int]], spec: Any) -> dict[tuple[str, int], int]:
        from confluent_kafka import TopicPartition

        wanted = {TopicPartition(topic, p): spec for topic, p in partitions}
        if not wanted:
            return {}
        futures = self._admin.list_offsets(wanted, request_timeout=self._timeout_s)
        return {(tp.topic, tp.partition): int(f.result(timeout=self._timeout_s).offset) for tp, f in futures.items()}


# -- workflows ----------------------------------------------------------------------------------------


class WorkflowProbe:
    """``neuroflow_state_store_up``, ``neuroflow_workflows_stuck{site,pipeline}`` and
    ``neuroflow_studies_processed_last_hour{site}`` from the workflow state store.

    A workflow is stuck when it is PENDING or RUNNING and unchanged for longer than the orchestrator
    allows its stage (the stage's timeout plus the longest retry backoff) plus ``grace_s``: by then the
    orchestrator should have retried it, dead-lettered it or moved it on. Succeeded workflows are counted
    at most every ``processed_refresh_s``: that query reads every finished workflow of the site."""

    name = "workflows"

    def __init__(self, state: WorkflowStateStore, site: str, pipelines: Sequence[str],
                 orchestration: OrchestrationSettings, grace_s: float, processed_refresh_s: float = 300.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._state = state
        self._site = site
        self._pipelines = list(pipelines)
        self._orchestration = orchestration
        self._grace_s = grace_s
        self._processed_refresh_s = processed_refresh_s
        self._clock = clock
        self._next_processed = 0.0

    def run(self) -> None:
        try:
            active = [*self._state.list(WorkflowStatus.PENDING), *self._state.list(WorkflowStatus.RUNNING)]
            processed = None
            if time.monotonic() >= self._next_processed:
                hour_ago = self._clock() - timedelta(hours=1)
                processed = sum(1 for r in self._state.list(WorkflowStatus.SUCCEEDED) if r.updated_at >= hour_ago)
                self._next_processed = time.monotonic() + self._processed_refresh_s
        except Exception as exc:
            metrics.STATE_STORE_UP.labels(self._site).set(0.0)
            log.warning("state store down: %s", exc)
            return
        metrics.STATE_STORE_UP.labels(self._site).set(1.0)
        now = self._clock()
        stuck = dict.fromkeys(self._pipelines, 0)
        for record in active:
            allowed = (self._orchestration.timeout_s(record.stage or "") + self._orchestration.retry_backoff_max_s
                       + self._grace_s)
            if (now - record.updated_at).total_seconds() > allowed:
                stuck[record.pipeline] = stuck.get(record.pipeline, 0) + 1
        for pipeline, count in stuck.items():
            metrics.WORKFLOWS_STUCK.labels(self._site, pipeline).set(count)
        if processed is not None:
            metrics.STUDIES_PROCESSED_LAST_HOUR.labels(self._site).set(processed)
