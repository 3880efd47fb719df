"""The HTTP endpoints of a service process, on one port (``NeuroflowSettings.metrics_port``):

* ``/metrics``: the process's Prometheus metrics (core/metrics);
* ``/healthz``: liveness (core/health): 200 while every service loop makes progress, 503 otherwise;
* ``/readyz``: readiness (core/health): 200 while every dependency answers, 503 naming the one that does
  not.

Both health answers are JSON: ``{"status": "ok" | "failing", "checks": {name: "ok" | reason}}``. The
server answers each request in a thread of its own, so a slow readiness check never delays a scrape."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from neuroflow.core.health import HEALTH, Health

log = logging.getLogger(__name__)


def start_status_server(port: int, host: str, *, stall_s: float, check_timeout_s: float,
                        health: Health = HEALTH) -> ThreadingHTTPServer:
    """Serve the three endpoints on ``host:port`` from a daemon thread; returns the server (its
    ``server_address`` holds the port, when ``port`` was 0). OSError when the port is taken."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == "/metrics":  # the format the scraper asks for, as prometheus_client's own server does
                encode, content_type = choose_encoder(self.headers.get("Accept") or "")
                self._answer(200, content_type, encode(REGISTRY))
            elif path == "/healthz":
                verdict = health.liveness(stall_s)
                self._answer(verdict.status, "application/json", verdict.body())
            elif path == "/readyz":
                verdict = health.readiness(check_timeout_s)
                self._answer(verdict.status, "application/json", verdict.body())
            else:
                self._answer(404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz or /readyz\n")

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), format % args)  # probes every few seconds: not INFO

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status-server", daemon=True).start()
    return server
