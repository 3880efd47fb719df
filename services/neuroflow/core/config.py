"""Configuration, read once at start and passed in (never re-read in a loop). Environment variables
prefixed NEUROFLOW_ override the defaults; site rules come from a YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from neuroflow.core.model_card import ModelRef

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL_REPOSITORY = REPOSITORY_ROOT / "models" / "repository"
# The MNI template and label atlases ms_change and metastases name lesion locations with: where Debian's mricron-data
# installs them, on a development machine (make system-deps) and in the image (deploy/docker/Dockerfile).
DEFAULT_ATLAS_DIR = Path("/usr/share/mricron/templates")

GLIOMA_PIPELINE = "glioma"
# Brain metastases (issue 15): lesion-wise detection on T1 post-contrast (FLAIR used when present).
METASTASES_PIPELINE = "metastases"
# Post-operative glioma (issue 15): the glioma pipeline on a study after surgery (routing decides from the
# study's descriptions or a prior with tumour), whose label map has the resection cavity beside the tumour. A site
# enabling glioma gets it without listing it (ingest/routing.postoperative_route); a site listing it sends every
# study that qualifies for glioma there (a post-surgical follow-up clinic).
GLIOMA_POSTOP_PIPELINE = "glioma_postop"
# A pipeline routing chooses in place of an enabled one -> that one: where a site enables the other, the monitor
# watches the variant's workflows; pausing the pipeline holds the variant too (it runs the same model), and an
# operator may also pause the variant by its name.
PIPELINE_VARIANT_OF = {GLIOMA_POSTOP_PIPELINE: GLIOMA_PIPELINE}

# The embedded run on two or more studies of one patient: the change pipelines the pairs qualify for.
LONGITUDINAL_PIPELINE = "longitudinal"
# The change pipelines (issue 6), compared with the patient's prior study; their series roles are in core/roles.
MS_CHANGE_PIPELINE = "ms_change"
HAEMATOMA_CHANGE_PIPELINE = "haematoma_change"
TUMOUR_GROWTH_PIPELINE = "tumour_growth"
# Brain metastases lesion by lesion against the prior, with the RANO-BM category (issue 15): it follows the
# patients of the metastases pipeline (routed by the same site rules; embedded: ``--pipeline metastases``).
METASTASES_RESPONSE_PIPELINE = "metastases_response"
CHANGE_PIPELINES = (MS_CHANGE_PIPELINE, HAEMATOMA_CHANGE_PIPELINE, TUMOUR_GROWTH_PIPELINE,
                    METASTASES_RESPONSE_PIPELINE)
# Version of the change algorithms, part of each comparison's identity (input hash): raise it when they change
# (2: the MS subtraction of issue 18, its N4 fitted on normal-appearing tissue; 3: the brain mask without a
# pre-stripped series' empty background, in the MS subtraction and the tumour-growth comparison's preprocessing).
CHANGE_ALGORITHM_VERSION = 3


def routed_pipelines(enabled: list[str]) -> list[str]:
    """The pipelines a site's studies can be routed to: those it enables and the variants of them."""
    return [*enabled, *(v for v, of in PIPELINE_VARIANT_OF.items() if of in enabled and v not in enabled)]


class PipelineModels(BaseSettings):
    """The model versions a site runs, pinned so an upgrade is a deliberate configuration change."""

    skull_strip: ModelRef = ModelRef(name="deepbet", version=1)
    skull_strip_bbox: ModelRef = ModelRef(name="deepbet_bbox", version=1)
    glioma: ModelRef = ModelRef(name="glioma_unet", version=4)
    metastases: ModelRef = ModelRef(name="metastases_unet", version=3)
    # Optional networks of the change pipelines (issue 6), off unless set: their candidates join the
    # subtraction's (MS: channels baseline, follow-up FLAIR -> new-lesion probability) or the HU method's
    # (haematoma: CT -> haematoma probability), and pass the same checks.
    ms_lesion: ModelRef | None = None
    haematoma: ModelRef | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_from_the_default(cls, data: Any) -> Any:
        """A version pinned alone (``NEUROFLOW_MODELS__GLIOMA__VERSION=3``, as the evaluations tell sites to) keeps
        the default's model name; without this the name was required and the setting refused."""
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        for role, value in data.items():
            field = cls.model_fields.get(role)
            if isinstance(value, dict) and "name" not in value and field is not None and \
                    isinstance(field.default, ModelRef):
                filled[role] = {"name": field.default.name, **value}
        return filled


class BusSettings(BaseModel):
    """Which message bus carries events and tasks. ``inmemory`` joins the threads of one process only.

    Kafka's security (core/kafka_security.py turns it into every client's settings): ``SASL_SSL`` with
    SCRAM-SHA-512, the broker's certificate checked against ``ca_file`` (hostname included), each service
    its own principal (``username``) whose ACLs let it write only the topics it produces and read only its
    own; ``SSL`` with a client certificate (mTLS) instead, or beside SASL. The password comes from the
    environment or a file (a mounted Secret), never from a file of settings, and is never logged.
    ``PLAINTEXT`` is for a broker on loopback (embedded tests) only."""

    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["inmemory", "kafka"] = "inmemory"
    bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, comma-separated host:port
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    username: str = ""  # the SCRAM principal (one per service: its ACLs are its own)
    password: SecretStr = SecretStr("")
    password_file: Path | None = None
    ca_file: Path | None = None  # PEM CA certificate(s) the broker's certificate must chain to; None: system's
    cert_file: Path | None = None  # PEM client certificate (mTLS); with key_file
    key_file: Path | None = None

    @model_validator(mode="after")
    def _read_password_file(self) -> BusSettings:
        self.password = secret_from_file(self.password, self.password_file, "bus.password") or SecretStr("")
        return self


def secret_from_file(value: SecretStr | None, file: Path | None, setting: str) -> SecretStr | None:
    """``value``, or the content of ``file`` (a mounted Kubernetes Secret: one trailing newline dropped)
    when it is set; both set is refused (which one counts would be a guess). Errors name the setting and
    the file, never the secret."""
    if file is None:
        return value
    if value is not None and value.get_secret_value():
        raise ValueError(f"{setting} and {setting}_file are both set: set one")
    try:
        text = file.read_text()
    except OSError as exc:
        raise ValueError(f"{setting}_file {file} cannot be read: {exc.strerror}") from None
    return SecretStr(text.removesuffix("\n"))


class MetricsAccessSettings(BaseModel):
    """Who may read a service's metrics port, and over what (core/status_server). With a password, /metrics
    and the detail of /healthz and /readyz need HTTP basic auth as ``username`` (the scraper's login;
    without credentials the health endpoints answer their status code alone, which is what the kubelet's
    probes read); with a certificate and key, the port speaks TLS only. Unset: plain HTTP to anyone, for a
    process on loopback in a test. The password comes from the environment or a file, never a settings file."""

    model_config = ConfigDict(hide_input_in_errors=True)

    username: str = "prometheus"
    password: SecretStr | None = None
    password_file: Path | None = None
    cert_file: Path | None = None  # PEM server certificate (chain) of the metrics port
    key_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> MetricsAccessSettings:
        self.password = secret_from_file(self.password, self.password_file, "metrics_access.password")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("metrics_access.cert_file and metrics_access.key_file go together: set both or neither")
        return self


class KeySettings(BaseModel):
    """The site's secret that pseudonymous keys (core/identity.py) and de-identified UIDs (deid/) are keyed
    with: from the environment (NEUROFLOW_KEYS__SECRET) or a file (NEUROFLOW_KEYS__SECRET_FILE, e.g. a
    mounted Kubernetes Secret), never from a file of settings. The same on every process of a site; the
    distributed runtime refuses to start without one (core/site_secret.py)."""

    # An invalid setting's error must not echo the values around it (the secret among them).
    model_config = ConfigDict(hide_input_in_errors=True)

    secret: SecretStr | None = None
    secret_file: Path | None = None

    @model_validator(mode="after")
    def _read_file(self) -> KeySettings:
        self.secret = secret_from_file(self.secret, self.secret_file, "keys.secret")
        return self


class DeidSettings(BaseModel):
    """De-identification of what leaves the site (deid/): where the re-identification map is kept, at the
    site only (created readable by its owner only)."""

    map_path: Path = Path(".neuroflow/deid/reidentification.sqlite3")


class StateSettings(BaseModel):
    """Where workflow state lives: SQLite (embedded, one host) or PostgreSQL (distributed)."""

    kind: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: Path = Path(".neuroflow/state.sqlite3")
    dsn: SecretStr = SecretStr("")  # PostgreSQL connection string (libpq form); may hold a password
    dsn_file: Path | None = None  # ... or a file holding it (a mounted Secret); the same for *_file below

    @model_validator(mode="after")
    def _read_dsn_file(self) -> StateSettings:
        self.dsn = secret_from_file(self.dsn, self.dsn_file, "state.dsn") or SecretStr("")
        return self
    # A PostgreSQL that does not accept a connection within this long is unavailable (StoreUnavailable).
    connect_timeout_s: float = Field(default=10.0, gt=0.0)
    # TLS to PostgreSQL, for a DSN that does not set its own sslmode: verify-full checks the server's
    # certificate against sslrootcert (the site's CA bundle; None: libpq's ~/.postgresql/root.crt) and its
    # host name; the server refuses plain connections (hostssl lines only, SCRAM passwords). An optional
    # client certificate (sslcert, sslkey) where the server asks for one.
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "verify-full"
    sslrootcert: Path | None = None
    sslcert: Path | None = None
    sslkey: Path | None = None

    def connection_dsn(self) -> str:
        """The DSN the stores connect with: ``dsn`` plus the TLS settings above for what it does not set."""
        import psycopg  # deferred: only the PostgreSQL stores need it

        dsn = self.dsn.get_secret_value()
        given = psycopg.conninfo.conninfo_to_dict(dsn)
        extra = {key: str(value) for key, value in (("sslmode", self.sslmode), ("sslrootcert", self.sslrootcert),
                                                    ("sslcert", self.sslcert), ("sslkey", self.sslkey))
                 if value is not None and key not in given}
        return psycopg.conninfo.make_conninfo(dsn, **extra) if extra else dsn


class DicomSettings(BaseModel):
    """Where studies are read from and results are stored; ``destination`` is the PACS results go on to."""

    source: Literal["folder", "orthanc"] = "folder"
    folder: Path = Path(".neuroflow/dicom-in")  # folder source
    sink_folder: Path = Path(".neuroflow/dicom-out")  # folder sink
    orthanc_url: str = "http://127.0.0.1:8042"
    orthanc_username: str = ""
    orthanc_password: SecretStr = SecretStr("")
    orthanc_password_file: Path | None = None
    # HTTPS to Orthanc (an https:// orthanc_url): the CA bundle its certificate is verified against (None: the
    # system's CAs; it is always verified) and, where Orthanc asks for one, this service's client certificate.
    orthanc_ca_file: Path | None = None
    orthanc_client_cert: Path | None = None
    orthanc_client_key: Path | None = None

    @model_validator(mode="after")
    def _read_password_file(self) -> DicomSettings:
        self.orthanc_password = (secret_from_file(self.orthanc_password, self.orthanc_password_file,
                                                  "dicom.orthanc_password") or SecretStr(""))
        return self
    # DICOM peer (as the sink names it, e.g. an Orthanc DicomModalities entry) results are forwarded to;
    # empty: results are stored in the sink only.
    destination: str = ""


class OrchestrationSettings(BaseModel):
    """Retries, backoff and timeouts of the distributed runtime, the same for every pipeline."""

    max_attempts: int = Field(default=3, ge=1)  # tries of one stage before its task is dead-lettered
    retry_backoff_s: float = Field(default=5.0, ge=0.0)  # wait before retry n: backoff * 2**(n-1) ...
    retry_backoff_max_s: float = Field(default=300.0, ge=0.0)  # ... capped at this
    # A dispatched task not done by then is retried (or dead-lettered on the last attempt), by stage name.
    stage_timeout_s: dict[str, float] = Field(
        default_factory=lambda: {"preprocess": 900.0, "segmentation": 1800.0, "results": 600.0})
    default_stage_timeout_s: float = Field(default=1800.0, gt=0.0)  # stages missing above
    poll_timeout_s: float = Field(default=0.5, gt=0.0)  # how long a loop waits for a message at a time
    heartbeat_s: float = Field(default=60.0, gt=0.0)  # how often an idle service logs that it is alive
    # A replica holds a workflow's lease while it changes it (state database); one that died holding it is
    # replaced after this long. Longer than handling one message or timer (a publish and a few writes).
    lease_s: float = Field(default=60.0, gt=0.0)

    def timeout_s(self, stage_name: str) -> float:
        return self.stage_timeout_s.get(stage_name, self.default_stage_timeout_s)

    def backoff_s(self, attempt: int) -> float:
        """Wait before re-dispatching after failed attempt ``attempt`` (1, 2, ...): exponential, capped."""
        return float(min(self.retry_backoff_s * 2 ** max(0, attempt - 1), self.retry_backoff_max_s))


class DeliverySettings(BaseModel):
    """Delivery of stored results to the destination PACS from the outbox in the state database
    (core/delivery.py), by the results and longitudinal services: a PACS outage delays a result, never loses it."""

    # Results the PACS has not accepted are offered this long, then dead-lettered (an operator may replay).
    retry_for_s: float = Field(default=24 * 3600.0, gt=0.0)
    backoff_s: float = Field(default=10.0, gt=0.0)  # wait after failed attempt n: backoff * 2**(n-1) ...
    # ... capped at this: after a long outage the result follows the PACS's return within this long.
    backoff_max_s: float = Field(default=300.0, gt=0.0)
    poll_interval_s: float = Field(default=1.0, gt=0.0)  # how often a service looks for due deliveries
    # A replica claims a delivery for this long: more than one C-STORE of a result may take.
    lease_s: float = Field(default=300.0, gt=0.0)

    def backoff(self, attempts: int) -> float:
        """Wait after ``attempts`` failed attempts (1, 2, ...): exponential, capped."""
        return float(min(self.backoff_s * 2 ** max(0, attempts - 1), self.backoff_max_s))


class IngestSettings(BaseModel):
    """When a study is complete and where it goes, per site."""

    # No new instance for this long: the study is complete. The published pipeline needed 2 minutes
    # because some scanners' sends were delayed; late series are handled anyway (a new study version).
    wait_window_s: float = Field(default=120.0, gt=0.0)
    pipelines: list[str] = Field(default_factory=lambda: [GLIOMA_PIPELINE])  # enabled at this site
    # A replica that claimed a study and died is taken over after this long.
    claim_lease_s: float = Field(default=120.0, gt=0.0)
    poll_interval_s: float = Field(default=0.5, gt=0.0)  # change feed and wait-window checks
    # A loop that failed (Orthanc, the database or the bus away) retries after poll_interval_s, doubled per
    # failure in a row up to this.
    retry_backoff_max_s: float = Field(default=30.0, gt=0.0)


class ClassifySettings(BaseModel):
    """How sure routing must be before a series is used for a role, and when two candidates are too close to
    call. A site's rules YAML may override both (``confidence_floor``, ``ambiguity_margin``)."""

    # A role below this confidence is not used for the series (it stays visible, "below floor", with its
    # score). Chosen from tests/unit/test_classify.py: the weakest clear case is 0.49 (a T2 from TR/TE alone:
    # one uncontested textbook clue of weight 2), while the known-wrong verdicts score 0.24 (the phase map
    # 'DTIphase_S2MB2' as T2: two weight-2 clues tied), 0.39 (Philips 'SWIp_mIP', a projection, as SWI; a
    # nameless localizer as T1 from a short-TE gradient echo). 0.45 lies between; a single clue needs weight
    # 1.8 to pass it. test_default_floor_separates_clear_cases_from_known_wrong_ones keeps it there.
    confidence_floor: float = Field(default=0.45, ge=0.0, le=1.0)
    # Two candidates for a required role whose confidences differ by less than this are too close to call:
    # one piece of evidence more or less (a synonym, a missing tag) moves a confidence by 0.1 or more, so a
    # smaller gap says nothing about which series is meant. Repeats of one protocol are decided by the order.
    ambiguity_margin: float = Field(default=0.1, ge=0.0, le=1.0)


class MonitorSettings(BaseModel):
    """The monitor service's probes: how often they run and when a probe counts as failed."""

    period_s: float = Field(default=15.0, gt=0.0)  # one round of every probe
    # A storage root that cannot take a small file (write, fsync, delete) within this long is down: a hung
    # NFS mount blocks writers rather than failing them.
    storage_deadline_s: float = Field(default=5.0, gt=0.0)
    request_timeout_s: float = Field(default=3.0, gt=0.0)  # Orthanc, Kafka and the state store
    # A workflow is stuck when the orchestrator should have moved it on by now: its stage's timeout plus
    # the longest retry backoff plus this grace.
    stuck_grace_s: float = Field(default=300.0, ge=0.0)
    # More storage to watch, by role (e.g. {"orthanc": "/var/lib/orthanc/db"}); the volume store, records
    # and reports roots (and the DICOM folders of the folder source) are always watched.
    extra_storage: dict[str, Path] = Field(default_factory=dict)
    # When set, a storage root without this file counts as down: a mount that dropped leaves its empty
    # mount point behind, which is writable (on the wrong disk). Create the file on each mounted volume.
    storage_sentinel: str = ""
    # The site's promise: last instance received to results stored in PACS (the latency alert's threshold).
    end_to_end_target_s: float = Field(default=900.0, gt=0.0)
    # The disk guard: below this many free bytes on the site Orthanc's storage the site refuses C-STORE
    # (status 0xA700, out of resources: the modality keeps the study and retries) rather than filling the
    # disk, and the monitor raises NeuroflowIngestRefused for every guarded root (the Orthanc storage
    # and the volume store). Orthanc checks it itself (deploy/orthanc/storage-guard.lua); give Orthanc the
    # same number (devtools.orthanc_server min_free_bytes, the chart's orthanc.minFreeBytes). 0: no guard.
    min_free_bytes: int = Field(default=10 * 1024**3, ge=0)


class RetentionSettings(BaseModel):
    """How long each kind of data is kept once a study's results are delivered (days; 0: keep for ever).
    Nothing of a workflow that is still running, or whose results are not delivered, is ever deleted; a
    FAILED or DEAD_LETTERED workflow counts as finished once it is older than the period (an operator may
    replay it until then). The monitor runs the sweep (neuroflow.monitor.retention)."""

    interval_s: float = Field(default=3600.0, gt=0.0)  # one sweep per interval
    volumes_days: float = Field(default=7.0, ge=0.0)  # intermediate volumes: the largest, needed least
    records_days: float = Field(default=30.0, ge=0.0)  # workflow context and task answers
    reports_days: float = Field(default=30.0, ge=0.0)  # report.json / summary.txt (the PACS has the SR)
    orthanc_studies_days: float = Field(default=30.0, ge=0.0)  # the site Orthanc's copy (PACS keeps its own)
    # Workflow rows and handled wait-window rows. A row is what makes re-sent input "already done": a study
    # re-sent after its row is gone is processed (and delivered) again. So rows outlive everything else.
    state_rows_days: float = Field(default=365.0, ge=0.0)

    @model_validator(mode="after")
    def _rows_outlive_what_they_find(self) -> RetentionSettings:
        # The sweep finds a workflow's volumes, records and reports through its row: a row deleted before
        # them would leave them behind for ever.
        if self.state_rows_days > 0:
            longer = [f"{name} ({days:g})" for name, days in (("volumes_days", self.volumes_days),
                      ("records_days", self.records_days), ("reports_days", self.reports_days))
                      if days > self.state_rows_days]
            if longer:
                raise ValueError(f"retention: state_rows_days ({self.state_rows_days:g}) must be 0 (keep) or at "
                                 f"least {', '.join(longer)}")
        return self


class HealthSettings(BaseModel):
    """What /healthz and /readyz (on the metrics port) answer; see core/health."""

    # Liveness: a service loop that made no progress for this long (an iteration that ended without error;
    # a task counts until its deadline) is stuck or failing every time: /healthz answers 503.
    stall_s: float = Field(default=120.0, gt=0.0)
    # Readiness: a dependency (state database, Kafka, Orthanc, inference server) that does not answer its
    # check within this long is down: /readyz answers 503 naming it.
    check_timeout_s: float = Field(default=3.0, gt=0.0)


class PacsNode(BaseModel):
    """A DICOM node (the site's PACS) that priors are queried (C-FIND) and retrieved (C-MOVE) from."""

    aet: str = Field(min_length=1, max_length=16)  # DICOM limits an AE title to 16 characters
    host: str
    port: int = Field(ge=1, le=65535)


class LongitudinalSettings(BaseModel):
    """Where the change pipelines look for a patient's prior study, and how long they wait for it."""

    # A follow-up without a prior waits this long for one (C-MOVEs and late sends), then runs without it
    # and says so; a prior that arrives later still triggers the comparison.
    prior_wait_s: float = Field(default=24 * 3600.0, ge=0.0)
    # How often the longitudinal service looks for follow-ups whose wait has ended.
    prior_sweep_interval_s: float = Field(default=30.0, gt=0.0)
    # Priors older than this are not looked for (neither in the site Orthanc nor in the PACS).
    prior_lookback_days: int = Field(default=3650, ge=1)
    # The PACS to C-FIND for the patient's studies and C-MOVE missing priors from into the site Orthanc;
    # None: the site Orthanc only. It is declared in the site Orthanc as modality ``pacs_modality``.
    pacs: PacsNode | None = None
    pacs_modality: str = "neuroflow-prior-pacs"
    # A C-MOVE of one study may take this long before the prior counts as not there yet.
    retrieve_timeout_s: float = Field(default=300.0, gt=0.0)
    # Folder of the Colin27 template and the AAL, Harvard-Oxford and JHU atlases (core/atlas.py; ms_change and
    # metastases name lesion locations with them).
    atlas_dir: Path = DEFAULT_ATLAS_DIR


class ResultObjectSettings(BaseModel):
    """The DICOM objects neuroflow sends to PACS (``NEUROFLOW_RESULTS__*``): the site's UID root, under which
    every UID neuroflow makes is derived (core/uids.py), and one series number per kind of object, so a
    radiologist finds each kind at the same place in every study."""

    # The site's registered UID root (digits and dots, ending in "."); the default is pydicom's, shared with
    # every pydicom user: a site should set its own. Changing it changes every result UID (new objects).
    uid_root: str = Field(default="1.2.826.0.1.3680043.8.498.", pattern=r"^[0-9]+(\.[0-9]+)*\.$", max_length=40)
    seg_series_number: int = Field(default=9001, ge=1)
    sr_series_number: int = Field(default=9002, ge=1)
    t1ce_overlay_series_number: int = Field(default=9003, ge=1)
    flair_overlay_series_number: int = Field(default=9004, ge=1)
    notice_series_number: int = Field(default=9005, ge=1)  # "nothing found" / "could not be processed"
    ms_seg_series_number: int = Field(default=9101, ge=1)
    ms_overlay_series_number: int = Field(default=9102, ge=1)
    ms_sr_series_number: int = Field(default=9103, ge=1)
    haematoma_seg_series_number: int = Field(default=9111, ge=1)
    # Brain metastases (issue 15): a SEG with one segment per lesion, the overlay, the SR and the RTSTRUCT.
    metastases_seg_series_number: int = Field(default=9121, ge=1)
    metastases_overlay_series_number: int = Field(default=9122, ge=1)
    metastases_sr_series_number: int = Field(default=9123, ge=1)
    metastases_rtstruct_series_number: int = Field(default=9124, ge=1)
    metastases_response_sr_series_number: int = Field(default=9125, ge=1)


class InferenceSettings(BaseModel):
    """Where models run: ONNX Runtime in this process, or a Triton Inference Server over gRPC (the shared
    GPU tier). Either way the model cards are read from ``model_repository``."""

    backend: Literal["onnxruntime", "triton"] = "onnxruntime"
    triton_url: str = "127.0.0.1:8001"  # host:port of Triton's gRPC endpoint
    # One request (a batch of patches) may take this long on a busy server before it counts as failed.
    timeout_s: float = Field(default=120.0, gt=0.0)
    # Transient failures (server unreachable, deadline exceeded) are retried this often, backing off
    # from retry_wait_s; then the stage fails with a retryable InferenceUnavailable.
    retries: int = Field(default=3, ge=0)
    retry_wait_s: float = Field(default=0.5, ge=0.0)
    # Requests one sliding window keeps in flight, so Triton batches and computes while the client blends.
    max_in_flight: int = Field(default=4, ge=1)
    # TLS to Triton's gRPC endpoint: the server's certificate is verified against triton_ca_file (unset: the
    # system's trust store) for triton_url's host, or for triton_server_name when set (a server reached by
    # another name or address). triton_cert_file and triton_key_file: this client's certificate, for a
    # Triton that asks for one (mutual TLS).
    triton_tls: bool = False
    triton_ca_file: Path | None = None
    triton_cert_file: Path | None = None
    triton_key_file: Path | None = None
    triton_server_name: str = ""
    # The shared GPU tier gets only brain-masked tensors: skull stripping (the one network that sees the whole
    # head) runs on this site's own ONNX Runtime, and only models whose inputs are zero outside the brain
    # (glioma segmentation) go to Triton (inference_site_split.py).
    shared_tier_skull_stripped_only: bool = False

    @model_validator(mode="after")
    def _check_tls(self) -> InferenceSettings:
        if (self.triton_cert_file is None) != (self.triton_key_file is None):
            raise ValueError("inference.triton_cert_file and inference.triton_key_file go together: "
                             "set both or neither")
        files = (self.triton_ca_file, self.triton_cert_file, self.triton_server_name)
        if not self.triton_tls and any(files):
            raise ValueError("inference.triton_ca_file, triton_cert_file and triton_server_name need "
                             "inference.triton_tls true")
        return self


# A test-time mirror, named by the patient axis it mirrors along (segmentation/mirrors.py).
Mirror = Literal["left_right", "anterior_posterior", "superior_inferior"]


class SegmentationSettings(BaseModel):
    """The failure flag of each glioma segmentation (segmentation/review.py): alarms from test-time flips and an
    independent FLAIR estimate of the whole tumour; the result needs review when their count exceeds
    ``review_threshold`` (calibrated on real cases: models/glioma_unet/EVALUATION.md, "Failure flag"). And the
    metastases pipeline's test-time mirrors (models/metastases_unet/EVALUATION.md, "Test-time mirrors")."""

    # 1: two alarms flag. On the real cases every result with WT Dice < 0.7 raised 2-5 alarms, the good ones 0-1
    # (a single alarm came on a good result with a very noisy FLAIR).
    review_threshold: int = Field(default=1, ge=0)
    # Mirrors run as ensemble members, each one more sliding window (about the cost of the segmentation).
    # JSON in the environment: NEUROFLOW_SEGMENTATION__REVIEW_FLIPS='["left_right", "superior_inferior"]'.
    review_flips: tuple[Mirror, ...] = ("left_right",)
    # The metastases pipeline's probability: the mean of the plain prediction and one per mirror listed
    # (segmentation/metastases.py). Each mirror is one more sliding window: on a CPU it doubles the network's
    # time. Left-right by default: with it metastases_unet v3 has fewer false positives (2.11 -> 1.67 per case)
    # and 80 -> 83 % sensitivity at 1 per case on the development cases (EVALUATION.md, "Test-time mirrors").
    # JSON in the environment: NEUROFLOW_SEGMENTATION__METASTASES_MIRRORS='[]' turns it off.
    metastases_mirrors: tuple[Mirror, ...] = ("left_right",)


class InputLimitSettings(BaseModel):
    """The largest input a worker takes, checked from the DICOM headers before any pixel data is decoded: a
    tiny compressed file can claim billions of pixels, and one study that exhausts a worker's memory would be
    redelivered to the next replica and kill it too. Over a limit, the series (or study) is refused as bad input.
    The defaults hold any clinical brain MR or head CT with a wide margin."""

    max_pixels_per_frame: int = Field(default=4096 * 4096, ge=1)  # Rows x Columns of one frame
    max_frames_per_instance: int = Field(default=4096, ge=1)  # NumberOfFrames of one (enhanced) instance
    # Decoded pixel data of one series: Rows*Columns*SamplesPerPixel*BitsAllocated/8*NumberOfFrames, summed.
    max_series_bytes: int = Field(default=1024**3, ge=1)
    max_instances_per_study: int = Field(default=20_000, ge=1)


class ConsoleOidcSettings(BaseModel):
    """Log-in through the site's OpenID Connect provider (Keycloak or another), authorization-code flow; off
    while ``issuer`` is empty. The role comes from ``role_claim`` of the ID token (a list or a string; the
    first of viewer/radiologist/operator/admin found, the highest wins)."""

    issuer: str = ""  # e.g. https://keycloak.example/realms/hospital (its /.well-known/openid-configuration)
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    client_secret_file: Path | None = None
    role_claim: str = "roles"  # a dotted path is followed, e.g. realm_access.roles (Keycloak's realm roles)
    redirect_url: str = ""  # https://<console>/oidc/callback, as registered with the provider
    ca_file: Path | None = None  # the provider's CA bundle, when not a public one

    @model_validator(mode="after")
    def _read_secret_file(self) -> ConsoleOidcSettings:
        self.client_secret = (secret_from_file(self.client_secret, self.client_secret_file,
                                               "console.oidc.client_secret") or SecretStr(""))
        return self


class ConsoleSettings(BaseModel):
    """The operations and review console (``neuroflow serve console``, neuroflow/console)."""

    host: str = "127.0.0.1"  # 0.0.0.0 in a pod
    port: int = Field(default=8095, ge=1, le=65535)
    # Local users: a YAML/JSON file of {"users": [{"name", "role", "password_hash" (bcrypt)}]}; None: none.
    users_file: Path | None = None
    # The key sessions are signed with (a file: every replica the same); None: a random one per process,
    # so a restart logs everyone out.
    session_secret_file: Path | None = None
    session_hours: float = Field(default=8.0, gt=0.0)
    # TLS served by the console itself; the session cookie is Secure when it is, or when cookie_secure
    # (TLS ends at an ingress in front of it).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    cookie_secure: bool = False
    refresh_s: float = Field(default=5.0, gt=0.0)  # how often an open worklist asks for changes
    # Where corrected SEGs (a radiologist removed components) are kept as training data with their provenance
    # (results/correction.py); written by the results services' delivery loop: a path they share.
    training_dir: Path = Path(".neuroflow/training")
    oidc: ConsoleOidcSettings = Field(default_factory=ConsoleOidcSettings)


class NeuroflowSettings(BaseSettings):
    # hide_input_in_errors: a settings error names the setting, never its value (a DSN holds a password).
    model_config = SettingsConfigDict(env_prefix="NEUROFLOW_", env_nested_delimiter="__", hide_input_in_errors=True)

    site: str = "local"
    keys: KeySettings = Field(default_factory=KeySettings)  # the site secret pseudonymous keys are keyed with
    deid: DeidSettings = Field(default_factory=DeidSettings)
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    models: PipelineModels = Field(default_factory=PipelineModels)
    site_rules: Path | None = None  # YAML with series classification overrides
    inference_threads: int = 0  # 0: ONNX Runtime picks (all cores)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    # Isotropic grid every glioma input is resampled onto, in mm.
    target_spacing_mm: float = 1.0
    # Sliding window: overlap between neighbouring patches as a fraction of the patch size.
    window_overlap: float = 0.5
    window_batch_size: int = 2
    # Distributed runtime (neuroflow serve): which backends, where shared data lives, retry numbers.
    bus: BusSettings = Field(default_factory=BusSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    # Shared by every service of a site (the same path on every host): volumes between stages ...
    volume_store_root: Path = Path(".neuroflow/volumes")
    # ... the workers' answers to finished tasks and the orchestrator's workflow context ...
    records_root: Path = Path(".neuroflow/records")
    # ... and the report of each workflow (report.json, summary.txt under <study_key>/<workflow_id>/).
    reports_dir: Path = Path(".neuroflow/reports")
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    classify: ClassifySettings = Field(default_factory=ClassifySettings)  # role floor, ambiguity
    # Prometheus metrics of this process on http://127.0.0.1:<port>/metrics; 0: not exposed. Each process
    # of a host needs its own port.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Address the metrics server binds: loopback on a shared host; 0.0.0.0 in a pod, where the kubelet's
    # probes and Prometheus reach it on the pod IP (helm/neuroflow sets it).
    metrics_host: str = "127.0.0.1"
    metrics_access: MetricsAccessSettings = Field(default_factory=MetricsAccessSettings)  # credentials, TLS
    health: HealthSettings = Field(default_factory=HealthSettings)  # /healthz and /readyz on the metrics port
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    longitudinal: LongitudinalSettings = Field(default_factory=LongitudinalSettings)
    limits: InputLimitSettings = Field(default_factory=InputLimitSettings)
    results: ResultObjectSettings = Field(default_factory=ResultObjectSettings)  # UID root, series numbers
    segmentation: SegmentationSettings = Field(default_factory=SegmentationSettings)  # the failure flag
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)  # the browser console
