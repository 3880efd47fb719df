"""The local stack: every server and service of the distributed runtime on loopback, for development,
demos and the end-to-end tests. ``neuroflow stack up`` starts PostgreSQL, a site Orthanc, a destination
PACS Orthanc, a Kafka broker (SASL_SSL with the stack's own CA; each service logs in as itself and may use
only its own topics: devtools/kafka_broker.py), Triton Inference Server (the CPU variant of every model), one
process per service (each exposing its metrics on a loopback port), and
Prometheus (scraping them, with the alert rules of deploy/prometheus) and Alertmanager, and writes every
endpoint to ``.neuroflow/stack.json``; ``stack down`` stops them by PID and waits until their ports are free;
``stack status`` says what runs.

Processes run in their own sessions, so they outlive the ``stack up`` command; stack.json is the one
record of what was started.

Secured as a site is (issue 12): a CA made for the stack (``tls/``) signs the certificates of PostgreSQL (TLS
and SCRAM only; the services connect with sslmode=verify-full) and of both Orthancs (HTTPS; each service
has its own Orthanc user with only its rights, core/orthanc_rights.py); only declared DICOM peers may
associate with an Orthanc (the development scanner NFSCANNER with the site, the site with the PACS)."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, REPOSITORY_ROOT, BusSettings, NeuroflowSettings
from neuroflow.core.identity import use_site_secret
from neuroflow.core.orthanc import DicomModality, OrthancEndpoint
from neuroflow.core.orthanc_rights import ADMIN_USER
from neuroflow.devtools.certificates import IssuedCertificate, make_authority
from neuroflow.devtools.kafka_broker import OPERATOR, BrokerSecurity, prepare_broker_security, start_secure_kafka
from neuroflow.devtools.monitoring_servers import (
    SCRAPE_USER,
    MetricsAccessFiles,
    immediate_rules,
    start_alertmanager,
    start_prometheus,
    write_targets,
)
from neuroflow.devtools.orthanc_server import OrthancProcess, start_orthanc
from neuroflow.devtools.orthanc_server import restart_orthanc as restart_orthanc_process
from neuroflow.devtools.ports import free_loopback_port, free_stable_port, port_is_listening, wait_until_ports_free
from neuroflow.devtools.postgres_server import start_postgres
from neuroflow.devtools.triton_server import client_certificate, stack_triton_tls, start_stack_triton, start_triton

STACK_DIR = REPOSITORY_ROOT / ".neuroflow"
STACK_FILE = STACK_DIR / "stack.json"
SERVICES = ("ingest", "orchestrator", "preprocess", "segmentation", "results", "longitudinal", "monitor")
PACS_MODALITY = "pacs"  # how the site Orthanc names the destination PACS


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says which part and why."""


@dataclass(frozen=True)
class StackOptions:
    wait_window_s: float = 10.0
    workers: dict[str, int] | None = None  # copies per service (default 1 each)
    root: Path = STACK_DIR
    extra_env: dict[str, str] | None = None  # added to every service's environment (benchmarks)
    # Alertmanager's webhooks (default: those of deploy/prometheus/alertmanager.yml).
    pager_url: str | None = None
    ticket_url: str | None = None
    # Tests: scrape and evaluate every second, alerts without their `for`, Alertmanager grouping of 1 s.
    monitoring_fast: bool = False
    # The disk guard of the site Orthanc (refuses C-STORE under it) and of the monitor's alert; 1 GiB: a
    # development machine has less room than a hospital's server (settings default 10 GiB).
    min_free_bytes: int = 1024**3
    # The site Orthanc replaces an instance sent again (OverwriteInstances); a site allows it deliberately.
    overwrite_instances: bool = False


def up(options: StackOptions) -> dict[str, Any]:
    """Start everything; on any failure stop what was started and raise StackError."""
    root = options.root
    if (root / "stack.json").exists() and _any_running(json.loads((root / "stack.json").read_text())):
        raise StackError(f"a stack is already running (see {root / 'stack.json'}); run `neuroflow stack down`")
    root.mkdir(parents=True, exist_ok=True)
    started: dict[str, Any] = {"root": str(root), "processes": []}
    try:
        authority = make_authority(root / "tls", f"neuroflow stack CA {secrets.token_hex(4)}")
        postgres = start_postgres(root / "postgres", authority=authority)
        started["processes"].append(_record("postgresql", postgres.pid, [postgres.port], signal.SIGINT))
        if not _database_exists(postgres):  # a restarted stack keeps its cluster and its workflows
            postgres.create_database("neuroflow")
        state_dsn = postgres.dsn("neuroflow")
        tls = (authority, root / "tls")
        site_dicom_port = free_loopback_port()
        pacs = start_orthanc("neuroflow-pacs", root / "orthanc-pacs", aet="NFPACS", tls=tls,
                             senders={"site": DicomModality("NFSITE", "127.0.0.1", site_dicom_port)})
        started["processes"].extend(_orthanc_records("orthanc-pacs", pacs))
        site = start_orthanc(
            "neuroflow-site", root / "orthanc-site", aet="NFSITE", dicom_port=site_dicom_port, tls=tls,
            stable_age_s=max(1, int(options.wait_window_s)),
            modalities={PACS_MODALITY: DicomModality(pacs.endpoint.aet, "127.0.0.1", pacs.endpoint.dicom_port)},
            min_free_bytes=options.min_free_bytes, guarded_dirs=[root / "volumes"],
            overwrite_instances=options.overwrite_instances,
        )
        started["processes"].extend(_orthanc_records("orthanc-site", site))
        kafka_port, controller_port = free_loopback_port(), free_loopback_port()
        # SASL_SSL with the stack's own CA; each service logs in as itself and has only its own ACLs.
        kafka_security = prepare_broker_security(root / "kafka-security")
        _start_kafka(root, kafka_port, controller_port, kafka_security)
        started["processes"].append(_record("kafka", _kafka_pid(root / "kafka"), [kafka_port, controller_port],
                                            signal.SIGTERM))
        # The inference tier: every model of the repository on Triton; the workers infer through it, over
        # mutual TLS with the stack's CA.
        triton = start_stack_triton(root / "triton", DEFAULT_MODEL_REPOSITORY,
                                    tls=stack_triton_tls(root / "triton", make_authority(root / "tls")))
        started["processes"].append(_record("triton", triton.pid,
                                            [triton.grpc_port, triton.http_port, triton.metrics_port],
                                            signal.SIGTERM))
        endpoints = {
            "orthanc": {"site": _orthanc_endpoint(site), "pacs": _orthanc_endpoint(pacs)},
            "triton": {"grpc": triton.grpc_url, "http": triton.http_url, **_triton_client_files(root)},
            "kafka": {"bootstrap": f"127.0.0.1:{kafka_port}", "security_protocol": "SASL_SSL",
                      "ca_file": str(kafka_security.ca_file), "security_dir": str(kafka_security.directory)},
            "postgresql": {"dsn": state_dsn},
            "destination_modality": PACS_MODALITY,
        }
        started.update(endpoints)
        started["environment"] = service_environment(started, options)
        (root / "logs").mkdir(exist_ok=True)
        for shared in ("volumes", "records", "reports"):  # the monitor watches them from the start
            (root / shared).mkdir(exist_ok=True)
        for service in SERVICES:
            for copy in range((options.workers or {}).get(service, 1)):
                started["processes"].append(_launch_service(started, service, f"{service}-{copy + 1}"))
        started["console"] = _console_users(root)
        started["processes"].append(_launch_service(started, "console", "console-1"))
        started["console"]["url"] = f"http://127.0.0.1:{started['processes'][-1]['ports'][0]}/"
        _write(root, started)
        _start_monitoring(started, options)
        _write(root, started)
        _wait_services_alive(started, seconds=3.0)
        _wait_console(started, timeout_s=120.0)
    except BaseException as exc:
        _write(root, started)
        down(root)
        if isinstance(exc, StackError):
            raise
        raise StackError(f"the stack did not start: {exc}") from exc
    return started


@contextmanager
def temporary(options: StackOptions, prefix: str = "neuroflow-stack-") -> Iterator[dict[str, Any]]:
    """A whole stack in a fresh folder for a test or a benchmark, stopped and removed afterwards.
    The folder is made outside private (0700) temporary folders: PostgreSQL runs as its own user and
    must enter it."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    try:
        yield up(dataclasses.replace(options, root=root))
    finally:
        down(root)
        shutil.rmtree(root, ignore_errors=True)


def down(root: Path = STACK_DIR, timeout_s: float = 60.0) -> list[str]:
    """Stop everything stack.json names, services first, servers last; wait until ports are free."""
    path = root / "stack.json"
    if not path.exists():
        return []
    stack = json.loads(path.read_text())
    stopped: list[str] = []
    for proc in reversed(stack["processes"]):
        if _alive(proc["pid"]):
            stopped.append(proc["name"])
        stop_process(proc, timeout_s)
    path.unlink()
    return stopped


def start_service(stack: dict[str, Any], service: str, name: str) -> dict[str, Any]:
    """One more process of ``service`` in a running stack (a replacement, or another worker copy);
    recorded in stack.json so ``down`` stops it too."""
    # A replacement takes the metrics port of a stopped copy, so Prometheus sees that target come back (as
    # it would under a supervisor restarting the process) rather than a dead target beside a new one.
    stopped = next((p for p in stack["processes"] if p.get("service") == service and "metrics_port" in p
                    and not _alive(p["pid"]) and not port_is_listening(p["metrics_port"])), None)
    record = _launch_service(stack, service, name, stopped.pop("metrics_port") if stopped else None)
    stack["processes"].append(record)
    _write(Path(stack["root"]), stack)
    if "prometheus" in stack:
        write_targets(Path(stack["root"]) / "prometheus" / "targets.json", _metrics_targets(stack))
    return record


def stop_process(record: dict[str, Any], timeout_s: float = 60.0) -> None:
    """Stop one process of the stack by PID (its recorded signal, SIGKILL after ``timeout_s``)."""
    if _alive(record["pid"]):
        os.kill(record["pid"], record["signal"])
        deadline = time.monotonic() + timeout_s
        while _alive(record["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(record["pid"]):
            os.kill(record["pid"], signal.SIGKILL)
    wait_until_ports_free(record["ports"], timeout_s, record["name"])


def restart_orthanc(stack: dict[str, Any], name: str) -> dict[str, Any]:
    """Start again a stopped Orthanc of the stack ("orthanc-site" or "orthanc-pacs") with its data."""
    which = name.removeprefix("orthanc-")
    endpoint = orthanc_endpoint(stack, which)
    for proc in stack["processes"]:
        if proc["name"] == f"{name}-https":  # its TLS terminator holds the HTTPS port: restarted with it
            stop_process(proc)
    server = restart_orthanc_process(name, Path(stack["root"]) / name, endpoint)
    records = {r["name"]: r for r in _orthanc_records(name, server)}
    stack["processes"] = [records.get(p["name"], p) for p in stack["processes"]]
    _write(Path(stack["root"]), stack)
    return records[name]


def orthanc_endpoint(stack: dict[str, Any], which: str, user: str = ADMIN_USER) -> OrthancEndpoint:
    """How ``user`` (admin, or a service: core/orthanc_rights.py) reaches the stack's ``which`` Orthanc
    ("site" or "pacs"): HTTPS verified against the stack's CA, that user's password."""
    e = stack["orthanc"][which]
    return OrthancEndpoint(e["url"], user, e["passwords"][user], e["aet"], e["dicom_host"], e["dicom_port"],
                           ca_file=e["ca_file"])


def process_record(stack: dict[str, Any], name: str) -> dict[str, Any]:
    """The record of the process called ``name`` (e.g. "kafka", "preprocess-1"); KeyError if none."""
    for proc in stack["processes"]:
        if proc["name"] == name:
            record: dict[str, Any] = proc
            return record
    raise KeyError(f"the stack has no process called {name!r}")


def is_running(record: dict[str, Any]) -> bool:
    """Whether the process of a stack record is alive (a zombie counts as gone)."""
    return _alive(record["pid"])


def restart_process(stack: dict[str, Any], name: str) -> dict[str, Any]:
    """Start again the stopped process ``name`` of a running stack, as a supervisor would: a service
    with its name, environment, log and metrics port; a server (PostgreSQL, Kafka, Triton, an Orthanc)
    on its ports with its data. Its record in ``stack`` (and stack.json) is replaced; returned.
    StackError if it still runs."""
    old = process_record(stack, name)
    if _alive(old["pid"]):
        raise StackError(f"{name} still runs (pid {old['pid']}): stop it before restarting it")
    root = Path(stack["root"])
    if "service" in old:
        record = _launch_service(stack, old["service"], name, old["metrics_port"])
    elif name.startswith("orthanc-"):
        return restart_orthanc(stack, name)
    elif name == "postgresql":
        postgres = start_postgres(root / "postgres", port=old["ports"][0])
        record = _record(name, postgres.pid, old["ports"], signal.SIGINT)
    elif name == "kafka":
        kafka_port, controller_port = old["ports"]
        _start_kafka(root, kafka_port, controller_port, BrokerSecurity(Path(stack["kafka"]["security_dir"])))
        record = _record(name, _kafka_pid(root / "kafka"), old["ports"], signal.SIGTERM)
    elif name == "triton":
        grpc_port, http_port, metrics_port = old["ports"]
        # The repository built at `up` is still there: no rebuild, the same models come back.
        triton = start_triton(root / "triton" / "repository", root / "triton" / "tritonserver.log",
                              grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, wait_s=120.0,
                              tls=stack_triton_tls(root / "triton", make_authority(root / "tls")))
        record = _record(name, triton.pid, old["ports"], signal.SIGTERM)
    else:
        raise StackError(f"no way to restart {name!r}")
    stack["processes"] = [record if p["name"] == name else p for p in stack["processes"]]
    _write(root, stack)
    return record


def status(root: Path = STACK_DIR) -> list[tuple[str, bool, str]]:
    """(name, running, detail) for every process of the stack."""
    path = root / "stack.json"
    if not path.exists():
        return []
    out = []
    for proc in json.loads(path.read_text())["processes"]:
        alive = _alive(proc["pid"])
        ports = proc["ports"]
        listening = all(port_is_listening(p) for p in ports)
        detail = f"pid {proc['pid']}" + (f", ports {ports} {'open' if listening else 'CLOSED'}" if ports else "")
        out.append((proc["name"], alive and listening, detail))
    return out


def service_environment(stack: dict[str, Any], options: StackOptions) -> dict[str, str]:
    """The settings every service process of the stack runs with (on top of the caller's environment);
    recorded in stack.json so a replacement process gets the same."""
    root = Path(stack["root"])
    site = stack["orthanc"]["site"]
    return {
        "NEUROFLOW_SITE": "local-stack",
        "NEUROFLOW_BUS__KIND": "kafka",
        "NEUROFLOW_BUS__BOOTSTRAP": stack["kafka"]["bootstrap"],
        # The operator's login (a super user) for tools run with this environment; each service process
        # replaces it with its own (_launch_service).
        **kafka_environment(stack),
        "NEUROFLOW_STATE__KIND": "postgres",
        "NEUROFLOW_STATE__DSN": stack["postgresql"]["dsn"],
        "NEUROFLOW_DICOM__SOURCE": "orthanc",
        "NEUROFLOW_DICOM__ORTHANC_URL": site["url"],
        "NEUROFLOW_DICOM__ORTHANC_CA_FILE": site["ca_file"],
        # NEUROFLOW_DICOM__ORTHANC_USERNAME and _PASSWORD: each service its own (_launch_service).
        "NEUROFLOW_DICOM__DESTINATION": stack["destination_modality"],
        "NEUROFLOW_VOLUME_STORE_ROOT": str(root / "volumes"),
        "NEUROFLOW_RECORDS_ROOT": str(root / "records"),
        "NEUROFLOW_REPORTS_DIR": str(root / "reports"),
        "NEUROFLOW_CONSOLE__TRAINING_DIR": str(root / "training"),  # corrected SEGs kept as training data
        "NEUROFLOW_INGEST__WAIT_WINDOW_S": str(options.wait_window_s),
        "NEUROFLOW_INFERENCE_THREADS": "1",
        **({"NEUROFLOW_INFERENCE__BACKEND": "triton", "NEUROFLOW_INFERENCE__TRITON_URL": stack["triton"]["grpc"],
            "NEUROFLOW_INFERENCE__TRITON_TLS": "true",
            "NEUROFLOW_INFERENCE__TRITON_CA_FILE": stack["triton"]["ca_file"],
            "NEUROFLOW_INFERENCE__TRITON_CERT_FILE": stack["triton"]["cert_file"],
            "NEUROFLOW_INFERENCE__TRITON_KEY_FILE": stack["triton"]["key_file"]}
           if "triton" in stack else {}),
        # "orthanc": the role the disk guard watches (monitor.service.GUARDED_ROLES).
        "NEUROFLOW_MONITOR__EXTRA_STORAGE": json.dumps(
            {"orthanc": str(root / "orthanc-site"), "orthanc_pacs": str(root / "orthanc-pacs")}),
        "NEUROFLOW_MONITOR__MIN_FREE_BYTES": str(options.min_free_bytes),
        **({"NEUROFLOW_MONITOR__PERIOD_S": "1"} if options.monitoring_fast else {}),
        "PYTHONUNBUFFERED": "1",
        **_key_secret_environment(root),
        **_metrics_access_environment(root),
        **(options.extra_env or {}),
    }


def _triton_client_files(root: Path) -> dict[str, str]:
    """What a client of the stack's Triton needs: the CA it verifies the server with, its certificate and key."""
    client = client_certificate(root / "triton")
    return {"ca_file": str(make_authority(root / "tls").certificate), "cert_file": str(client.certificate),
            "key_file": str(client.private_key)}


def _key_secret_environment(root: Path) -> dict[str, str]:
    """The site key secret of the stack's services: the caller's (NEUROFLOW_KEYS__SECRET[_FILE], which they
    inherit; the tests set one to compute the same keys), else a random one made for this stack in a file
    only its owner reads, passed as a file (stack.json names the file, not the secret)."""
    if os.environ.get("NEUROFLOW_KEYS__SECRET") or os.environ.get("NEUROFLOW_KEYS__SECRET_FILE"):
        return {}
    path = root / "key-secret"
    if not path.exists():
        _write_private(path, secrets.token_hex(32))
    return {"NEUROFLOW_KEYS__SECRET_FILE": str(path)}


def metrics_access(root: Path) -> MetricsAccessFiles:
    """The login and certificate of the stack's service metrics ports (made once, kept across restarts): a
    random password in a file only the owner reads, and a certificate for 127.0.0.1 signed by the stack's CA."""
    directory = root / "metrics-access"
    password_file = directory / "password"
    if not password_file.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(password_file, secrets.token_urlsafe(24))
    authority = make_authority(root / "tls")
    certificate = directory / "metrics.crt"
    issued = (IssuedCertificate(certificate, directory / "metrics.key", directory / "metrics.pem")
              if certificate.exists() else authority.issue("metrics", directory))
    return MetricsAccessFiles(SCRAPE_USER, password_file, authority.certificate, issued.certificate,
                              issued.private_key)


def metrics_scheme(stack: dict[str, Any]) -> str:
    """How the stack's service metrics ports are reached: "https" (a stack.json written before the ports
    had TLS: "http")."""
    return "https" if "NEUROFLOW_METRICS_ACCESS__CERT_FILE" in stack.get("environment", {}) else "http"


def _metrics_access_environment(root: Path) -> dict[str, str]:
    """The services' side of :func:`metrics_access`: files, never the password itself."""
    files = metrics_access(root)
    return {"NEUROFLOW_METRICS_ACCESS__USERNAME": files.username,
            "NEUROFLOW_METRICS_ACCESS__PASSWORD_FILE": str(files.password_file),
            "NEUROFLOW_METRICS_ACCESS__CERT_FILE": str(files.cert_file),
            "NEUROFLOW_METRICS_ACCESS__KEY_FILE": str(files.key_file)}


def use_stack_key_secret(stack: dict[str, Any]) -> None:
    """Key this process's study and patient keys as the stack's services do, so a harness or a test can
    find a study's records by its key: the caller's secret when one is set, else the stack's own file."""
    from neuroflow.core.site_secret import install_site_secret

    if not (os.environ.get("NEUROFLOW_KEYS__SECRET") or os.environ.get("NEUROFLOW_KEYS__SECRET_FILE")):
        secret = SecretStr((Path(stack["root"]) / "key-secret").read_text())
        use_site_secret(secret)
        return
    install_site_secret(NeuroflowSettings(), distributed=False)


def kafka_environment(stack: dict[str, Any], user: str = OPERATOR) -> dict[str, str]:
    """The NEUROFLOW_BUS__* login of ``user`` (a service, or the operator) on the stack's broker: files, never
    the password itself, so stack.json holds no Kafka secret."""
    kafka = stack["kafka"]
    if "security_dir" not in kafka:
        return {}
    return BrokerSecurity(Path(kafka["security_dir"])).environment(user)


def stack_bus_settings(stack: dict[str, Any], user: str = OPERATOR) -> BusSettings:
    """Bus settings of ``user`` on the stack's broker, for a harness or a benchmark talking to it directly."""
    kafka = stack["kafka"]
    if "security_dir" not in kafka:
        return BusSettings(kind="kafka", bootstrap=kafka["bootstrap"])
    return BrokerSecurity(Path(kafka["security_dir"])).bus_settings(kafka["bootstrap"], user)


def _start_kafka(root: Path, port: int, controller_port: int, security: BrokerSecurity) -> None:
    try:
        start_secure_kafka(root / "kafka", port=port, controller_port=controller_port, partitions=2,
                           security=security)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"Kafka did not start: {exc}") from exc


def _launch_service(stack: dict[str, Any], service: str, name: str, metrics_port: int | None = None) -> dict[str, Any]:
    root = Path(stack["root"])
    # Each process its own port (Prometheus tells them apart by it), picked outside the ephemeral range:
    # a service binds it only after seconds of imports, time enough for a client socket to take it.
    taken = {p["metrics_port"] for p in stack["processes"] if "metrics_port" in p}
    taken |= {port for p in stack["processes"] for port in p["ports"]}
    metrics_port = metrics_port or free_stable_port(taken)
    ports: list[int] = []
    console: dict[str, str] = {}
    if service == "console":
        # The console's own page port, beside its metrics port; it runs the operator's admin operations (a
        # re-run publishes on the bus), so on the dev stack it logs in to Kafka as the operator does.
        ports = [free_stable_port(taken | {metrics_port})]
        console = {"NEUROFLOW_CONSOLE__PORT": str(ports[0]), **kafka_environment(stack),
                   "NEUROFLOW_CONSOLE__USERS_FILE": stack["console"]["users_file"],
                   "NEUROFLOW_CONSOLE__SESSION_SECRET_FILE": stack["console"]["session_secret_file"]}
    # Each service its own Orthanc user (a service without one, e.g. the orchestrator before it had, gets
    # none: its requests are refused rather than run with another service's rights).
    user = service if service in stack["orthanc"]["site"]["passwords"] else ""
    orthanc = {"NEUROFLOW_DICOM__ORTHANC_USERNAME": user,
               "NEUROFLOW_DICOM__ORTHANC_PASSWORD": stack["orthanc"]["site"]["passwords"].get(user, "")}
    environment = {**os.environ, **stack["environment"], **kafka_environment(stack, service), **orthanc,
                   "NEUROFLOW_METRICS_PORT": str(metrics_port), **console}
    with (root / "logs" / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "neuroflow.cli", "serve", service], env=environment,
            stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPOSITORY_ROOT)
    return {**_record(name, process.pid, ports, signal.SIGTERM), "service": service, "metrics_port": metrics_port}


CONSOLE_DEV_USERS = ("viewer", "radiologist", "operator", "admin")  # one dev user per role, named after it


def _console_users(root: Path) -> dict[str, str]:
    """The console's dev users (one per role, a random password each) and its session key, in files only
    the stack's owner reads; kept across restarts of the stack. stack.json names the files, not the secrets."""
    import bcrypt  # deferred: only the stack's console needs it

    directory = root / "console"
    directory.mkdir(mode=0o700, exist_ok=True)
    passwords_file, users_file = directory / "passwords.json", directory / "users.json"
    session_file = directory / "session-secret"
    if not passwords_file.exists():
        passwords = {name: secrets.token_urlsafe(12) for name in CONSOLE_DEV_USERS}
        users = [{"name": name, "role": name,
                  "password_hash": bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}
                 for name, password in passwords.items()]
        _write_private(users_file, json.dumps({"users": users}, indent=2))
        _write_private(session_file, secrets.token_hex(32))
        _write_private(passwords_file, json.dumps(passwords, indent=2))
    return {"users_file": str(users_file), "passwords_file": str(passwords_file),
            "session_secret_file": str(session_file)}


def _metrics_targets(stack: dict[str, Any]) -> list[tuple[str, str]]:
    """(service, host:port) of every service process's metrics, for Prometheus."""
    return [(p["service"], f"127.0.0.1:{p['metrics_port']}") for p in stack["processes"] if "metrics_port" in p]


def _start_monitoring(stack: dict[str, Any], options: StackOptions) -> None:
    """Alertmanager, then Prometheus scraping every service process; recorded in ``stack`` (keys
    ``alertmanager`` and ``prometheus``: their https URLs; ``monitoring_auth``: by server, the basic-auth user,
    the file holding its password and the CA its certificate chains to) so ``down`` stops them first."""
    root = Path(stack["root"])
    fast = options.monitoring_fast
    authority = make_authority(root / "tls")  # the stack's CA: one bundle verifies every server
    alertmanager = start_alertmanager(root / "alertmanager", pager_url=options.pager_url,
                                      ticket_url=options.ticket_url, fast=fast, authority=authority)
    stack["processes"].append(_record("alertmanager", alertmanager.pid, [alertmanager.port], signal.SIGTERM))
    stack["alertmanager"] = alertmanager.url
    prometheus = start_prometheus(root / "prometheus", targets=_metrics_targets(stack), alertmanager=alertmanager,
                                  rules=immediate_rules() if fast else None, fast=fast,
                                  scrape_access=metrics_access(root), authority=authority)
    stack["processes"].append(_record("prometheus", prometheus.pid, [prometheus.port], signal.SIGTERM))
    stack["prometheus"] = prometheus.url
    stack["monitoring_auth"] = {s.name: {"username": s.username, "password_file": str(s.password_file),
                                         "ca_file": str(s.ca_file)} for s in (alertmanager, prometheus)}


def _orthanc_endpoint(server: OrthancProcess) -> dict[str, Any]:
    """An Orthanc in stack.json: the admin's credentials (username, password: what tools use), every
    user's password by user (``orthanc_endpoint`` picks one), and the CA its HTTPS is verified with."""
    e = server.endpoint
    return {"url": e.url, "username": e.username, "password": e.password, "passwords": server.passwords,
            "ca_file": e.ca_file, "aet": e.aet, "dicom_host": e.dicom_host, "dicom_port": e.dicom_port}


def _orthanc_records(name: str, server: OrthancProcess) -> list[dict[str, Any]]:
    """Orthanc (its own loopback HTTP port and the DICOM port) and, with HTTPS, its TLS terminator."""
    records = [_record(name, server.pid, [server.orthanc_http_port, server.endpoint.dicom_port], signal.SIGTERM)]
    if server.https_proxy is not None:
        records.append(_record(f"{name}-https", server.https_proxy.pid, [server.endpoint.http_port],
                               signal.SIGTERM))
    return records


def _record(name: str, pid: int, ports: list[int], sig: signal.Signals) -> dict[str, Any]:
    return {"name": name, "pid": pid, "ports": ports, "signal": int(sig)}


def _write(root: Path, stack: dict[str, Any]) -> None:
    path = root / "stack.json"
    tmp = path.with_suffix(".json.partial")
    _write_private(tmp, json.dumps(stack, indent=2) + "\n")  # it holds the dev credentials
    os.replace(tmp, path)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only (0600) from the first byte: no
    moment where another user of the host could open it."""
    path.unlink(missing_ok=True)  # an existing file would keep its mode
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def exited_processes(stack: dict[str, Any], *, lines: int = 10) -> list[str]:
    """Each process of the stack that is no longer running, with the end of its log: a test that times out
    waiting on the stack names the process that died instead of leaving it to be guessed (Triton's log is its
    own file; a service's is under ``logs/``)."""
    root = Path(stack["root"])
    found = []
    for proc in stack.get("processes", []):
        if _alive(proc["pid"]):
            continue
        name = proc["name"]
        log = root / "triton" / "tritonserver.log" if name == "triton" else root / "logs" / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-lines:] if log.is_file() else ["(no log file)"]
        found.append(f"{name} (pid {proc['pid']}) is not running; its log ends:\n" + "\n".join(tail))
    return found


def _any_running(stack: dict[str, Any]) -> bool:
    return any(_alive(p["pid"]) for p in stack.get("processes", []))


def _wait_services_alive(stack: dict[str, Any], seconds: float) -> None:
    """A service that cannot reach its backends exits at once: catch that here, with its log."""
    time.sleep(seconds)
    root = Path(stack["root"])
    for proc in stack["processes"]:
        if proc["name"].rsplit("-", 1)[0] in (*SERVICES, "console") and not _alive(proc["pid"]):
            log = (root / "logs" / f"{proc['name']}.log").read_text(errors="replace").splitlines()[-15:]
            raise StackError(f"service {proc['name']} exited at start; its log ends:\n" + "\n".join(log))


def _wait_console(stack: dict[str, Any], timeout_s: float) -> None:
    """Until the console listens: its URL in stack.json must open once `stack up` returns."""
    (record,) = [p for p in stack["processes"] if p.get("service") == "console"]
    deadline = time.monotonic() + timeout_s
    while not port_is_listening(record["ports"][0]):
        if not _alive(record["pid"]) or time.monotonic() > deadline:
            log = (Path(stack["root"]) / "logs" / f"{record['name']}.log").read_text(errors="replace")
            raise StackError(f"the console did not start listening on {stack['console']['url']}; its log ends:\n"
                             + "\n".join(log.splitlines()[-15:]))
        time.sleep(0.5)


def _database_exists(postgres: Any) -> bool:
    import psycopg

    with psycopg.connect(postgres.dsn(), autocommit=True) as db:
        return db.execute("SELECT 1 FROM pg_database WHERE datname = 'neuroflow'").fetchone() is not None


def _kafka_pid(data_dir: Path) -> int:
    return int((data_dir / "kafka.pid").read_text().split()[0])
