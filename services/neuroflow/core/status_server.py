"""The HTTP endpoints of a service process, on one port (``NeuroflowSettings.metrics_port``):

* ``/metrics``: the process's Prometheus metrics (core/metrics);
* ``/healthz``: liveness (core/health): 200 while every service loop makes progress, 503 otherwise;
* ``/readyz``: readiness (core/health): 200 while every dependency answers, 503 naming the one that does
  not.

Both health answers are JSON: ``{"status": "ok" | "failing", "checks": {name: "ok" | reason}}``. The
server answers each request in a thread of its own, so a slow readiness check never delays a scrape.

Who may read them (``MetricsAccess``, from ``NeuroflowSettings.metrics_access``): with a password, /metrics
needs HTTP basic auth, and the health endpoints give their checks only to that login (to anyone else their
status code and ``{"status": ...}``: what the kubelet's probes read, which carry no credentials); with a
certificate, the port speaks TLS only. The TLS handshake runs in the request's thread, so a client that
never finishes one holds up no other."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import ssl
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from neuroflow.core.config import MetricsAccessSettings
from neuroflow.core.health import HEALTH, Health, Verdict

log = logging.getLogger(__name__)

_REALM = 'Basic realm="neuroflow metrics", charset="UTF-8"'
_CLIENT_TIMEOUT_S = 30.0  # a client silent this long (mid-handshake, mid-request) is dropped


class _StatusServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hung up or failed the TLS handshake (a port scanner, a plain-HTTP probe): not an
        # error of this process, and no traceback on stderr.
        log.debug("status request from %s failed: %s", client_address, sys.exc_info()[1])


@dataclass(frozen=True)
class MetricsAccess:
    """The login the port asks for (None: anyone may read it) and its TLS (None: plain HTTP)."""

    username: str = ""
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: MetricsAccessSettings) -> MetricsAccess:
        """OSError or ssl.SSLError (naming nothing secret) when the certificate or key cannot be loaded."""
        context = None
        if settings.cert_file is not None and settings.key_file is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(settings.cert_file, settings.key_file)
        password = settings.password.get_secret_value() if settings.password is not None else None
        return cls(settings.username, password or None, context)

    def admits(self, authorization: str | None) -> bool:
        """Whether an Authorization header carries this login (always, when no password is set)."""
        if self.password is None:
            return True
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return hmac.compare_digest((authorization or "").encode(), expected.encode())


def start_status_server(port: int, host: str, *, stall_s: float, check_timeout_s: float,
                        health: Health = HEALTH, access: MetricsAccess | None = None) -> ThreadingHTTPServer:
    """Serve the three endpoints on ``host:port`` from a daemon thread; returns the server (its
    ``server_address`` holds the port, when ``port`` was 0). OSError when the port is taken."""
    rules = access or MetricsAccess()

    class Handler(BaseHTTPRequestHandler):
        timeout = _CLIENT_TIMEOUT_S

        def setup(self) -> None:
            if isinstance(self.request, ssl.SSLSocket):  # the handshake here, in this request's thread
                self.request.settimeout(self.timeout)
                self.request.do_handshake()
            super().setup()

        def do_GET(self) -> None:  # the name http.server calls
            path = self.path.split("?", 1)[0]
            admitted = rules.admits(self.headers.get("Authorization"))
            if path == "/metrics":  # the format the scraper asks for, as prometheus_client's own server does
                if not admitted:
                    self._refuse()
                    return
                encode, content_type = choose_encoder(self.headers.get("Accept") or "")
                self._answer(200, content_type, encode(REGISTRY))
            elif path == "/healthz":
                self._health(health.liveness(stall_s), admitted)
            elif path == "/readyz":
                self._health(health.readiness(check_timeout_s), admitted)
            else:
                self._answer(404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz or /readyz\n")

        def _health(self, verdict: Verdict, admitted: bool) -> None:
            body = verdict.body() if admitted else json.dumps({"status": "ok" if verdict.ok else "failing"}).encode()
            self._answer(verdict.status, "application/json", body)

        def _refuse(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", _REALM)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            body = b"credentials required\n"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), format % args)  # probes every few seconds: not INFO

    server = _StatusServer((host, port), Handler)
    if rules.ssl_context is not None:
        server.socket = rules.ssl_context.wrap_socket(server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="status-server", daemon=True).start()
    return server
