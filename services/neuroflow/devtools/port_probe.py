"""Probe every port a running local stack listens on, as a stranger would (issue 12): without credentials,
each must refuse (HTTP 401/403, a TLS or authentication failure, a rejected DICOM association). The services'
metrics ports speak TLS only and refuse /metrics to a stranger; their /healthz and /readyz tell a stranger
their status alone (the kubelet's probes carry no credentials); none of the three, read with the scraper's
login, may carry an identifier.

The ports come from the operating system (every listening socket of every process stack.json records), not
from stack.json alone, so a port someone adds later is probed too: one this module cannot classify is a
finding. Servers whose securing is still to come (``pending``: e.g. Kafka before its SASL_SSL listeners)
are probed and reported, but not counted as findings.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# The endpoints of a service's metrics port (core/status_server).
METRICS_PATHS = ("/metrics", "/healthz", "/readyz")
# A DICOM UID of five components or more (1.2.840.x.y...): never in an open answer.
_UID = re.compile(r"\b[12]\.\d+\.\d+\.\d+\.\d+(?:\.\d+)*\b")


@dataclass(frozen=True)
class PortVerdict:
    process: str
    port: int
    kind: str  # what was probed: "postgresql", "orthanc-http", "orthanc-https", "dicom", "metrics", ...
    refused: bool  # a stranger got nothing (or, for metrics, nothing but identifier-free metrics)
    detail: str
    pending: bool = False  # probed, but its securing is still to come: not a finding yet

    def __str__(self) -> str:
        outcome = "pending" if self.pending else "refused" if self.refused else "OPEN"
        return f"{self.process}:{self.port} {self.kind}: {outcome} ({self.detail})"


def kafka_is_secured(stack: dict[str, Any]) -> bool:
    """Whether the stack's broker was started with authenticated listeners: stack.json's kafka entry names a
    security protocol other than PLAINTEXT (issue 12, item 1)."""
    return str(stack.get("kafka", {}).get("security_protocol", "PLAINTEXT")).upper() != "PLAINTEXT"


def listening_ports(pid: int) -> list[int]:
    """TCP ports ``pid`` (and its children, e.g. a JVM under a shell) listens on."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    ports: set[int] = set()
    for process in processes:
        try:
            connections = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        ports.update(c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN)
    return sorted(ports)


def probe_stack(stack: dict[str, Any], *, identifiers: Sequence[str] = (),
                pending: Collection[str] = ()) -> list[PortVerdict]:
    """A verdict for every listening port of the stack's processes. ``identifiers``: strings (PatientID,
    UIDs, accession numbers of the studies sent) that must not appear in an open answer. ``pending``:
    process names whose ports are reported as probed, without being required to refuse."""
    ca_file = stack["orthanc"]["site"]["ca_file"]
    verdicts = []
    for record in stack["processes"]:
        name = record["name"]
        for port in listening_ports(record["pid"]):
            verdict = _probe(stack, record, port, ca_file, identifiers)
            if name in pending or name.split("-")[0] in pending:
                verdict = PortVerdict(name, port, verdict.kind, True, verdict.detail, pending=True)
            verdicts.append(verdict)
    return verdicts


def _probe(stack: dict[str, Any], record: dict[str, Any], port: int, ca_file: str,
           identifiers: Sequence[str]) -> PortVerdict:
    name = record["name"]
    if "service" in record and port == record.get("metrics_port"):
        return _probe_metrics(stack, name, port, identifiers)
    if record.get("service") == "console":
        return _probe_console(name, port)
    if name == "postgresql":
        return _probe_postgres(name, port)
    if name.startswith("orthanc-") and name.endswith("-https"):
        return _probe_http(name, port, "orthanc-https", f"https://127.0.0.1:{port}/system",
                           ssl.create_default_context(cafile=ca_file))
    if name.startswith("orthanc-"):
        endpoint = stack["orthanc"][name.removeprefix("orthanc-")]
        if port == endpoint["dicom_port"]:
            return _probe_dicom(name, port, endpoint["aet"])
        return _probe_http(name, port, "orthanc-http", f"http://127.0.0.1:{port}/system", None)
    if name == "kafka":
        return _probe_kafka(name, port)
    if name == "triton":
        return _probe_triton(name, port, record["ports"], identifiers)
    if name in ("prometheus", "alertmanager"):
        # TLS only: a stranger can still speak TLS (trusting no CA) and must then meet the log-in
        return _probe_http(name, port, name, f"https://127.0.0.1:{port}/", _stranger_tls())
    return PortVerdict(name, port, "unknown", False, "a port this probe does not know: classify it")


def _stranger_tls() -> ssl.SSLContext:
    """TLS as a stranger speaks it: no CA trusted, no certificate checked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _probe_http(name: str, port: int, kind: str, url: str, context: ssl.SSLContext | None,
                method: str = "GET") -> PortVerdict:
    try:
        request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            return PortVerdict(name, port, kind, False, f"HTTP {answer.status} without credentials")
    except urllib.error.HTTPError as error:
        refused = error.code in (401, 403)
        return PortVerdict(name, port, kind, refused, f"HTTP {error.code}")
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError) as error:
        reason = getattr(error, "reason", error)
        # Not HTTP at all (gRPC, a TLS-only listener) or TLS refused: a stranger gets nothing over HTTP.
        if _is_tls_listener(port):
            return PortVerdict(name, port, kind, True, f"TLS only: {reason}")
        return PortVerdict(name, port, kind, False, f"answers, not HTTP: {reason}")


def _probe_console(name: str, port: int) -> PortVerdict:
    """The browser console: without a session a page answers only a redirect to its log-in (GET) or 403
    (POST); the log-in page itself holds no data."""
    answers = []
    for method, path in (("GET", "/"), ("GET", "/dead-letters"), ("POST", "/dead-letters/x/replay")):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request(method, path, body=b"" if method == "POST" else None)
            answer = connection.getresponse()
            answers.append((method, path, answer.status, answer.getheader("Location") or ""))
        except (OSError, http.client.HTTPException) as error:
            return PortVerdict(name, port, "console", False, f"answers, not HTTP: {error}")
        finally:
            connection.close()
    refused = all(status == 403 or (status == 303 and location.endswith("/login"))
                  for _, _, status, location in answers)
    return PortVerdict(name, port, "console", refused,
                       ", ".join(f"{m} {p}: HTTP {s}{' to ' + loc if loc else ''}" for m, p, s, loc in answers))


def _probe_triton(name: str, port: int, ports: Sequence[int], identifiers: Sequence[str]) -> PortVerdict:
    """Triton's three ports: gRPC (TLS, a client certificate required), HTTP (health only: every other API
    needs the admin header) and its own metrics (inference counts per model, no identifier)."""
    grpc_port, http_port, metrics_port = ports
    if port == metrics_port:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                body = answer.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            return PortVerdict(name, port, "metrics", False, f"/metrics unreadable: {error}")
        leaked = [i for i in identifiers if i and i in body] + _UID.findall(body)
        return PortVerdict(name, port, "metrics", not leaked,
                           f"shows identifiers: {sorted(set(leaked))[:3]}" if leaked else "/metrics, no identifier")
    if port == http_port:  # the model list needs the admin header; health alone is open
        return _probe_http(name, port, "triton-http", f"http://127.0.0.1:{port}/v2/repository/index", None,
                           method="POST")
    return _probe_triton_grpc(name, grpc_port)


def _probe_triton_grpc(name: str, port: int) -> PortVerdict:
    """A plaintext gRPC client asks whether the server is live: a TLS-only Triton gives it nothing."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        live = client.is_server_live(client_timeout=5.0)
    except InferenceServerException as error:
        return PortVerdict(name, port, "triton-grpc", True, f"plaintext gRPC refused: {str(error)[:80]}")
    finally:
        client.close()
    return PortVerdict(name, port, "triton-grpc", False, f"a plaintext gRPC client was answered (live={live})")


def _is_tls_listener(port: int) -> bool:
    """Whether the port completes a TLS handshake (certificate not checked: only the protocol)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1"):
            return True
    except (ssl.SSLError, OSError):
        return False


def _probe_metrics(stack: dict[str, Any], name: str, port: int, identifiers: Sequence[str]) -> PortVerdict:
    """A service's metrics port: TLS only; /metrics refuses a stranger; /healthz and /readyz give a stranger
    their status alone (what the kubelet's probes read). Read with the scraper's login, none of the three
    may show an identifier."""
    from neuroflow.devtools.stack import metrics_access

    access = metrics_access(Path(stack["root"]))
    verify = access.ssl_context()
    stranger = ssl.create_default_context()  # a stranger does not hold the site's CA: it checks nothing
    stranger.check_hostname, stranger.verify_mode = False, ssl.CERT_NONE
    problems = []
    if not _is_tls_listener(port):
        problems.append("answers without TLS")
    for path in METRICS_PATHS:
        status, body = _get(f"https://127.0.0.1:{port}{path}", stranger, {})
        if path == "/metrics" and status != 401:
            problems.append(f"{path} answered a stranger: {status}")
        elif path != "/metrics" and (status not in (200, 503) or set(json.loads(body or "{}")) != {"status"}):
            problems.append(f"{path} told a stranger more than its status: {status} {body[:60]!r}")
        status, body = _get(f"https://127.0.0.1:{port}{path}", verify, access.headers)
        if status not in (200, 503):
            problems.append(f"{path} unreadable with the scraper's login: {status} {body[:60]!r}")
        leaked = [i for i in identifiers if i and i in body] + _UID.findall(body)
        if leaked:
            problems.append(f"{path} shows identifiers: {sorted(set(leaked))[:3]}")
    return PortVerdict(name, port, "metrics", not problems,
                       "; ".join(problems) or "TLS only, /metrics needs the scraper's login, health says its "
                                              "status alone to a stranger, no identifier")


def _get(url: str, context: ssl.SSLContext, headers: dict[str, str]) -> tuple[int | str, str]:
    """(HTTP status, body), or (what went wrong, "") when no HTTP answer came."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5,
                                    context=context) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:  # 401, or /readyz's 503 while a dependency is down
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        return f"no answer ({getattr(error, 'reason', error)})", ""


def _probe_postgres(name: str, port: int) -> PortVerdict:
    import psycopg

    refusals = []
    for sslmode in ("disable", "require"):
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=neuroflow dbname=postgres password=guess "
                            f"sslmode={sslmode} connect_timeout=5").close()
        except psycopg.OperationalError as error:
            refusals.append(f"sslmode={sslmode}: {str(error).rsplit('FATAL:', 1)[-1].strip()[:90]}")
            continue
        return PortVerdict(name, port, "postgresql", False, f"sslmode={sslmode} with a guessed password connected")
    return PortVerdict(name, port, "postgresql", True, "; ".join(refusals))


def _probe_dicom(name: str, port: int, aet: str) -> PortVerdict:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="NFSTRANGER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if assoc.is_established:
        assoc.release()
        return PortVerdict(name, port, "dicom", False, "an undeclared AE title was given an association")
    return PortVerdict(name, port, "dicom", True, "association rejected for an undeclared AE title")


def _probe_kafka(name: str, port: int) -> PortVerdict:
    """A client with no credentials asks for the cluster's topics: a secured broker (SASL_SSL) refuses."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "socket.timeout.ms": 5000})
    try:
        topics = admin.list_topics(timeout=5).topics
    except Exception as error:  # KafkaException: the broker did not answer a plaintext client
        return PortVerdict(name, port, "kafka", True, f"plaintext client refused: {str(error)[:80]}")
    return PortVerdict(name, port, "kafka", False, f"a client without credentials listed {len(topics)} topics")
