"""The distributed runtime: builds one service (the orchestrator or a stage worker) from settings, with the
backends the settings name, so ``neuroflow serve <service>`` runs it as its own process.

Backends that live in optional modules (Kafka, PostgreSQL, Orthanc) are imported by name only when the
settings ask for them, so the embedded backends need none of their client libraries. The pipeline code
(``preprocess``, ``segmentation``, ``results``) is the same as the embedded runtime's.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from neuroflow.core import health
from neuroflow.core.bus import InMemoryBus, MessageBus
from neuroflow.core.config import CHANGE_PIPELINES, METASTASES_PIPELINE, NeuroflowSettings
from neuroflow.core.dicom_io import (
    DicomSink,
    DicomSource,
    FolderDicomSink,
    FolderDicomSource,
    SeriesInstances,
    StudyIndex,
    series_volume,
    study_key,
)
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.inference_triton import build_inference_backend
from neuroflow.core.metrics import start_metrics_server
from neuroflow.core.model_card import ModelRef
from neuroflow.core.records import FolderRecordStore, RecordStore
from neuroflow.core.roles import SeriesRole
from neuroflow.core.sequence_subsets import PipelineInputs
from neuroflow.core.site_secret import install_site_secret
from neuroflow.core.state import SqliteStateStore, SqlStateStore
from neuroflow.core.volume_store import FolderVolumeStore, VolumeStore
from neuroflow.core.worker import Handler, StageWorker
from neuroflow.orchestrator.orchestrator import Orchestrator
from neuroflow.orchestrator.pipelines import (
    PipelineSpec,
    change_pipeline,
    glioma_pipeline,
    glioma_postop_pipeline,
    metastases_pipeline,
)
from neuroflow.proto.neuroflow.v1 import common_pb2

if TYPE_CHECKING:
    from neuroflow.ingest.window_store import WindowStore

log = logging.getLogger(__name__)

SERVICES = ("ingest", "orchestrator", "preprocess", "segmentation", "results", "longitudinal", "monitor")
STAGE_OF_SERVICE: dict[str, common_pb2.Stage.ValueType] = {
    "preprocess": common_pb2.STAGE_PREPROCESS,
    "segmentation": common_pb2.STAGE_SEGMENTATION,
    "results": common_pb2.STAGE_RESULTS,
    "longitudinal": common_pb2.STAGE_LONGITUDINAL,
}
# Kafka hands a consumer's partitions to another when it spends longer than this on one task; it must
# exceed the slowest stage, or a long task is done twice. Added to the longest stage timeout.
_POLL_INTERVAL_MARGIN_S = 60.0


class Service(Protocol):
    """What ``serve`` runs: a loop until ``stop``."""

    def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Backends:
    """The backends one process uses, built lazily from settings and closed together."""

    settings: NeuroflowSettings
    _built: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every distributed process builds its backends first: it keys pseudonyms with the site's secret
        # from here on, and one without a secret stops here (MissingSiteSecret), before it touches a study.
        install_site_secret(self.settings, distributed=True)

    def _once(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._built:
            self._built[name] = build()
        return self._built[name]

    def bus(self) -> MessageBus:
        def build() -> MessageBus:
            if self.settings.bus.kind == "kafka":
                timeouts = self.settings.orchestration.stage_timeout_s.values()
                longest = max([*timeouts, self.settings.orchestration.default_stage_timeout_s])
                kafka: Any = _backend("neuroflow.core.kafka_bus", "KafkaBus")
                from neuroflow.core import kafka_security

                log.info("bus: %s", kafka_security.describe(self.settings.bus))  # never the password
                if kafka_security.unprotected_remote(self.settings.bus):
                    log.warning("the Kafka connection is neither authenticated nor encrypted, to a broker not on "
                                "this host: set NEUROFLOW_BUS__SECURITY_PROTOCOL=SASL_SSL (README, Kafka security)")
                bus: MessageBus = kafka(self.settings.bus.bootstrap,
                                        security=kafka_security.client_security(self.settings.bus),
                                        max_poll_interval_s=longest + _POLL_INTERVAL_MARGIN_S)
                return bus
            return InMemoryBus()
        result: MessageBus = self._once("bus", build)
        return result

    def state(self) -> SqlStateStore[Any]:
        """The workflow state database: workflows, their timers, the delivery outbox, dead letters."""
        def build() -> SqlStateStore[Any]:
            if self.settings.state.kind == "postgres":
                postgres: Any = _backend("neuroflow.core.state_postgres", "PostgresStateStore")
                store: SqlStateStore[Any] = postgres(self.settings.state.connection_dsn(),
                                                     connect_timeout_s=self.settings.state.connect_timeout_s)
                return store
            return SqliteStateStore(self.settings.state.sqlite_path)
        result: SqlStateStore[Any] = self._once("state", build)
        return result

    def records(self) -> RecordStore:
        result: RecordStore = self._once("records", lambda: FolderRecordStore(self.settings.records_root))
        return result

    def volumes(self) -> VolumeStore:
        result: VolumeStore = self._once("volumes", lambda: FolderVolumeStore(self.settings.volume_store_root))
        return result

    def inference(self) -> InferenceBackend:
        result: InferenceBackend = self._once("inference", lambda: build_inference_backend(self.settings))
        return result

    def source(self) -> DicomSource:
        def build() -> DicomSource:
            if self.settings.dicom.source == "orthanc":
                source: DicomSource = _backend("neuroflow.core.orthanc", "OrthancDicomSource")(
                    self.orthanc(), limits=self.settings.limits)
                return source
            return FolderDicomSource(self.settings.dicom.folder, limits=self.settings.limits)
        result: DicomSource = self._once("source", build)
        return result

    def sink(self) -> DicomSink:
        def build() -> DicomSink:
            if self.settings.dicom.source == "orthanc":  # results go back to the Orthanc studies came from
                sink: DicomSink = _backend("neuroflow.core.orthanc", "OrthancDicomSink")(self.orthanc())
                return sink
            return FolderDicomSink(self.settings.dicom.sink_folder)
        result: DicomSink = self._once("sink", build)
        return result

    def orthanc(self) -> Any:
        def build() -> Any:
            endpoint = _backend("neuroflow.core.orthanc", "OrthancEndpoint").from_settings(self.settings.dicom)
            return _backend("neuroflow.core.orthanc", "OrthancClient")(endpoint)
        return self._once("orthanc", build)

    def timepoints(self) -> Any:
        """The change pipelines' record of each patient's timepoints, in the workflow state's database."""
        def build() -> Any:
            priors = importlib.import_module("neuroflow.longitudinal.priors")
            if self.settings.state.kind == "postgres":
                return priors.PostgresTimepointStore(self.settings.state.connection_dsn(),
                                                     connect_timeout_s=self.settings.state.connect_timeout_s)
            return priors.SqliteTimepointStore(self.settings.state.sqlite_path.with_name("longitudinal.sqlite3"))
        return self._once("timepoints", build)

    def close(self) -> None:
        for name in ("bus", "state"):
            backend = self._built.pop(name, None)
            if backend is not None:
                backend.close()


def pipelines(settings: NeuroflowSettings) -> dict[str, PipelineSpec]:
    """The pipelines this site runs, by name: glioma, metastases and the change pipelines (ingest's pipeline list
    says which of them the site's studies are routed to)."""
    glioma, metastases = glioma_pipeline(settings.models), metastases_pipeline(settings.models)
    postop = glioma_postop_pipeline(settings.models)  # where ingest sends a post-operative glioma study
    return {glioma.name: glioma, postop.name: postop, metastases.name: metastases,
            **{name: change_pipeline(name) for name in CHANGE_PIPELINES}}


def stage_handler(service: str, backends: Backends) -> Handler:
    """The handler of a stage service, wired to its backends (imports only that stage's code)."""
    settings = backends.settings
    if service == "preprocess":
        from neuroflow.preprocess.worker import PreprocessHandler
        return PreprocessHandler(backends.source(), backends.volumes(), backends.inference(), settings)
    if service == "segmentation":
        from neuroflow.segmentation.worker import SegmentationHandler
        return SegmentationHandler(backends.volumes(), backends.inference(), settings)
    if service == "results":
        from neuroflow.results.worker import ResultsHandler
        return ResultsHandler(backends.source(), backends.sink(), backends.volumes(), backends.bus(),
                              settings.reports_dir, settings.results, atlas_dir=settings.longitudinal.atlas_dir)
    if service == "longitudinal":
        from neuroflow.longitudinal.priors import PriorLocator
        from neuroflow.longitudinal.worker import LongitudinalHandler
        # A folder source has no Orthanc to search: the priors are looked for among its own studies.
        on_orthanc = settings.dicom.source == "orthanc"
        locator = PriorLocator(backends.orthanc(), settings.longitudinal) if on_orthanc else None
        return LongitudinalHandler(backends.source(), backends.sink(), backends.timepoints(), backends.bus(),
                                   backends.inference(), settings, series_selector(settings), locator=locator)
    raise ValueError(f"no stage service {service!r}; stage services are {sorted(STAGE_OF_SERVICE)}")


def build_service(service: str, backends: Backends, *, name: str = "") -> Service:
    """The orchestrator or a stage worker, wired to ``backends``. ValueError for an unknown service."""
    settings = backends.settings
    if service == "ingest":
        return build_ingest(backends)
    if service == "orchestrator":
        return Orchestrator(backends.bus(), backends.state(), backends.records(), pipelines(settings),
                            settings.orchestration, destination=settings.dicom.destination,
                            last_instance_lead_s=settings.ingest.wait_window_s,
                            delivery_period_s=settings.delivery.retry_for_s)
    if service == "monitor":
        from neuroflow.monitor.service import build_monitor
        # Retention forgets ingest's handled wait-window rows and keeps studies ingest has not handed on.
        windows = window_store(backends.settings) if backends.settings.dicom.source == "orthanc" else None
        return build_monitor(backends, windows=windows)
    if service == "longitudinal":
        from neuroflow.longitudinal.worker import LongitudinalService, PriorWaitSweeper
        worker = StageWorker(backends.bus(), common_pb2.STAGE_LONGITUDINAL, stage_handler(service, backends),
                             backends.records(), name=name or "longitudinal-worker",
                             poll_timeout_s=settings.orchestration.poll_timeout_s,
                             heartbeat_s=settings.orchestration.heartbeat_s)
        return with_delivery(LongitudinalService(worker, PriorWaitSweeper(backends.timepoints(), backends.bus()),
                                                 interval_s=settings.longitudinal.prior_sweep_interval_s), backends)
    if service in STAGE_OF_SERVICE:
        stage_worker = StageWorker(backends.bus(), STAGE_OF_SERVICE[service], stage_handler(service, backends),
                                   backends.records(), name=name or f"{service}-worker",
                                   poll_timeout_s=settings.orchestration.poll_timeout_s,
                                   heartbeat_s=settings.orchestration.heartbeat_s)
        return with_delivery(stage_worker, backends) if service == "results" else stage_worker
    raise ValueError(f"unknown service {service!r}: choose one of {', '.join(SERVICES)}")


def with_delivery(service: Service, backends: Backends) -> Service:
    """The results and longitudinal services deliver the outbox's results to the destination PACS beside
    their stage work (core/delivery.py says why there); without a destination, or with a sink that cannot
    forward, there is nothing to deliver."""
    from neuroflow.core.delivery import DeliveryLoop, WithDelivery
    from neuroflow.core.dicom_io import Forwarder
    from neuroflow.core.state_schedules import replica_name

    sink = backends.sink()
    if not backends.settings.dicom.destination or not isinstance(sink, Forwarder):
        return service
    from neuroflow.core.orthanc import OrthancDicomSink
    from neuroflow.core.reviews import review_store
    from neuroflow.results.correction import Corrector, TrainingStore
    from neuroflow.results.retraction import Retractor

    # Retractions of results rejected after delivery, and corrections of those accepted with components
    # removed: built from and stored in the site Orthanc (the console's Orthanc user only reads).
    retract = correct = None
    reviews = review_store(backends.settings.state)  # nothing more of a rejected result is sent
    if isinstance(sink, OrthancDicomSink):
        settings = backends.settings
        retract = Retractor(sink, settings.results)
        correct = Corrector(sink, reviews, settings.results, TrainingStore(settings.console.training_dir),
                            reached=backends.state().reached_objects)
    loop = DeliveryLoop(backends.state(), sink, backends.settings.delivery, holder=replica_name(), retract=retract,
                        correct=correct, reviews=reviews)
    return WithDelivery(service, loop)


def series_selector(settings: NeuroflowSettings) -> Callable[[StudyIndex, Sequence[SeriesRole]],
                                                            dict[SeriesRole, SeriesInstances] | None]:
    """How the longitudinal stage tells whether a prior qualifies for a pipeline: its series classified and
    chosen for the pipeline's roles exactly as routing chooses them (with the site's rules and role policy). A
    study without the roles is None; one whose role two different protocols claim raises AmbiguousRole (the
    stage fails with AMBIGUOUS_ROLE naming them: a prior is not guessed either)."""
    from neuroflow.core.errors import MissingSequence
    from neuroflow.ingest.classify import classify_study, effective_policy, select_inputs
    from neuroflow.ingest.site_rules import load_site_rules

    rules = load_site_rules(settings.site_rules) if settings.site_rules else None
    policy = effective_policy(settings.classify, rules)

    def select(study: StudyIndex, roles: Sequence[SeriesRole]) -> dict[SeriesRole, SeriesInstances] | None:
        classified = classify_study(list(study.series.values()), rules=rules, policy=policy)
        try:
            chosen = select_inputs(classified, tuple(roles), study_key=study_key(study.study_instance_uid),
                                   policy=policy)
        except MissingSequence:
            return None
        return {role: series_volume(study, c.series_instance_uid) for role, c in chosen.items()}

    return select


def window_store(settings: NeuroflowSettings) -> WindowStore:
    """Ingest's wait-window state, in the workflow state's database."""
    from neuroflow.ingest.window_store import PostgresWindowStore, SqliteWindowStore

    if settings.state.kind == "postgres":
        return PostgresWindowStore(settings.state.connection_dsn(),
                                   connect_timeout_s=settings.state.connect_timeout_s)
    settings.state.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteWindowStore(settings.state.sqlite_path.with_name("ingest-windows.sqlite3"))


def build_ingest(backends: Backends) -> Service:
    """The ingest service: it follows an Orthanc's change feed, so it needs the Orthanc source; its
    wait-window state shares the workflow state's database."""
    from neuroflow.ingest.service import IngestService, IngestSettings
    from neuroflow.ingest.site_rules import load_site_rules

    settings = backends.settings
    if settings.dicom.source != "orthanc":
        raise ValueError("the ingest service follows an Orthanc: set NEUROFLOW_DICOM__SOURCE=orthanc")
    windows = window_store(settings)
    # Each pipeline's model is part of its input hash: a model upgrade is new work.
    models = {name: ModelRef(name=spec.model.name, version=spec.model.version)
              for name, spec in pipelines(settings).items()}
    ingest = settings.ingest
    return IngestService(
        backends.orthanc(), windows, backends.bus(),
        IngestSettings(site=settings.site, pipelines=ingest.pipelines,
                       models=models,
                       wait_window_s=ingest.wait_window_s, lease_s=ingest.claim_lease_s,
                       poll_interval_s=ingest.poll_interval_s, retry_backoff_max_s=ingest.retry_backoff_max_s,
                       classify=settings.classify, inputs=routed_inputs(settings)),
        load_site_rules(settings.site_rules) if settings.site_rules else None,
        audit=backends.state(),
    )


def routed_inputs(settings: NeuroflowSettings) -> dict[str, PipelineInputs]:
    """What each pipeline takes, read once at start from the glioma model's card (the embedded runtime reads
    the same card through its backend). Without a readable card every input role stays required: studies
    lacking one are refused with MISSING_SEQUENCE, never run on a model that was not trained for it."""
    from neuroflow.core.errors import InferenceUnavailable
    from neuroflow.core.model_card import load_model_card
    from neuroflow.ingest.routing import pipeline_inputs

    try:
        card = load_model_card(settings.model_repository, settings.models.glioma)
    except InferenceUnavailable as exc:
        log.warning("routing requires every glioma input sequence: %s", exc)
        card = None
    return pipeline_inputs(card)


# The services that run models: at start they ask the inference backend whether the site's models are ready.
_INFERENCE_SERVICES = {"preprocess", "segmentation", "longitudinal"}


def pinned_models(settings: NeuroflowSettings) -> list[ModelRef]:
    """The model versions this site's configuration pins (the optional change-pipeline networks when set, the
    metastases model when the site routes studies to that pipeline)."""
    pinned = settings.models
    optional = [m for m in (pinned.ms_lesion, pinned.haematoma) if m is not None]
    if METASTASES_PIPELINE in settings.ingest.pipelines:
        optional.append(pinned.metastases)
    return [pinned.skull_strip_bbox, pinned.skull_strip, pinned.glioma, *optional]


def check_model_readiness(backend: InferenceBackend, models: Sequence[ModelRef]) -> dict[ModelRef, bool]:
    """Ask ``backend`` whether each model is ready, log it and set ``neuroflow_model_ready``. A model that is
    not ready does not stop the worker: its tasks fail with a retryable InferenceUnavailable until it is."""
    from neuroflow.core import metrics

    readiness = {}
    for model in models:
        ready = backend.ready(model)
        readiness[model] = ready
        metrics.MODEL_READY.labels(model.name).set(1.0 if ready else 0.0)
        if ready:
            log.info("model %s ready on %s", model, type(backend).__name__)
        else:
            log.warning("model %s NOT ready on %s: its tasks will fail (retryable) until it is",
                        model, type(backend).__name__)
    return readiness


def serve(services: Sequence[str], settings: NeuroflowSettings) -> None:
    """Run ``services`` (each in its own thread, sharing one set of backends) until SIGINT or SIGTERM,
    then stop them cleanly: each finishes and answers the task in hand first."""
    if settings.bus.kind == "inmemory" and set(services) != set(SERVICES):
        log.warning("the in-memory bus joins only the services of this process (%s); other processes will "
                    "not see its messages: set NEUROFLOW_BUS__KIND=kafka to connect them", ", ".join(services))
    stopped = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping %s", signum, ", ".join(services))
        stopped.set()

    # First: a signal that arrives while the backends connect must stop the services, not kill them.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    backends = Backends(settings)
    try:
        start_metrics_server(settings.metrics_port, settings.metrics_host, settings.health,
                             settings.metrics_access)
        from neuroflow.runtime.readiness import dependency_checks
        for dependency, check in dependency_checks(services, settings, backends.inference,
                                                   pinned_models(settings)).items():
            health.HEALTH.add_check(dependency, check)
        running = [build_service(s, backends) for s in services]
        if set(services) & _INFERENCE_SERVICES:
            check_model_readiness(backends.inference(), pinned_models(settings))
        threads = [threading.Thread(target=service.run, name=name, daemon=True)
                   for service, name in zip(running, services, strict=True)]
        for thread in threads:
            thread.start()
        while not stopped.wait(0.2):
            if not any(t.is_alive() for t in threads):
                break
        for service in running:
            service.stop()
        for thread in threads:
            thread.join()
    finally:
        backends.close()


def _backend(module: str, name: str) -> Any:
    """``name`` from ``module``, imported only now; a clear error when that backend is not installed."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"backend {module}.{name} is not available in this installation: {exc}") from exc
