"""What ``/readyz`` checks for each service (core/health): the dependencies it cannot work without, each
asked one small question with a deadline. A dependency a setting replaces by a local one (the in-memory
bus, a folder for DICOM, a SQLite state file) has nothing to check.

The monitor checks nothing: reporting the others' dependencies as down is its job, and an unready monitor
would be taken out of the very scrapes that show the outage."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from neuroflow.core.config import BusSettings, NeuroflowSettings
from neuroflow.core.health import Check
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelRef

# The dependencies of each service of runtime/distributed.SERVICES.
DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "ingest": ("state_db", "kafka", "orthanc"),  # wait windows, StudyReady, the change feed
    "orchestrator": ("state_db", "kafka"),
    "preprocess": ("kafka", "orthanc", "inference"),  # reads the study; skull strip
    "segmentation": ("kafka", "inference"),
    "results": ("kafka", "orthanc"),  # stores and forwards through Orthanc
    "longitudinal": ("state_db", "kafka", "orthanc", "inference"),  # timepoints, priors, skull strip
    "monitor": (),
}


def dependency_checks(services: Iterable[str], settings: NeuroflowSettings,
                      inference: Callable[[], InferenceBackend], models: Sequence[ModelRef]) -> dict[str, Check]:
    """The checks ``/readyz`` runs for ``services`` (one process may run several), by dependency name.
    ``inference`` gives the process's inference backend; ``models``: the ones that must be ready."""
    needed = {d for service in services for d in DEPENDENCIES[service]}
    timeout_s = settings.health.check_timeout_s
    checks: dict[str, Check] = {}
    if "state_db" in needed and settings.state.kind == "postgres":
        checks["state_db"] = _postgres_check(settings.state.connection_dsn(), timeout_s)
    if "kafka" in needed and settings.bus.kind == "kafka":
        checks["kafka"] = _kafka_check(settings.bus, timeout_s)
    if "orthanc" in needed and settings.dicom.source == "orthanc":
        checks["orthanc"] = _orthanc_check(settings, timeout_s)
    if "inference" in needed:
        checks["inference"] = _inference_check(inference, models)
    return checks


def _postgres_check(dsn: str, timeout_s: float) -> Check:
    def check() -> None:
        from neuroflow.core.sql_reconnect import connect_postgres

        # A connection of its own, not a store's: a probe must never disturb the loops' connections.
        with connect_postgres(dsn, connect_timeout_s=timeout_s,
                              options=f"-c statement_timeout={max(1, round(timeout_s * 1000))}") as db:
            db.execute("SELECT 1").fetchone()
    return check


def _kafka_check(bus: BusSettings, timeout_s: float) -> Check:
    admin: list[Any] = []  # made at the first check, then kept: a client per probe would leak threads
    bootstrap = bus.bootstrap

    def check() -> None:
        from confluent_kafka.admin import AdminClient

        from neuroflow.core.kafka_security import client_security

        if not admin:
            admin.append(AdminClient({"bootstrap.servers": bootstrap, "client.id": "neuroflow-readiness",
                                      **client_security(bus)}))
        cluster = admin[0].list_topics(timeout=timeout_s)
        if not cluster.brokers:
            raise RuntimeError(f"Kafka at {bootstrap} answered with no broker")
    return check


def _orthanc_check(settings: NeuroflowSettings, timeout_s: float) -> Check:
    from neuroflow.core.orthanc import OrthancClient, OrthancEndpoint

    client = OrthancClient(OrthancEndpoint.from_settings(settings.dicom), timeout_s=timeout_s, retries=0)
    return lambda: client.get_json("/system", what="readiness check")


def _inference_check(inference: Callable[[], InferenceBackend], models: Sequence[ModelRef]) -> Check:
    def check() -> None:
        backend = inference()
        missing = [str(m) for m in models if not backend.ready(m)]
        if missing:
            raise RuntimeError(f"{type(backend).__name__}: model(s) not ready: {', '.join(missing)}")
    return check
