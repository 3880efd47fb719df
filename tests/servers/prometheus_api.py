"""Reading a real Prometheus the way an operator's tools do (its HTTP API), and waiting for what the
monitoring tests expect to happen: one copy for the integration and the end-to-end tests."""

from __future__ import annotations

import json
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from neuroflow.devtools.monitoring_servers import basic_auth_header


def query(prometheus_url: str, expr: str, headers: Mapping[str, str],
          context: ssl.SSLContext | None) -> list[dict[str, Any]]:
    """The instant vector of ``expr`` (PromQL) on the Prometheus at ``prometheus_url``, logged in with
    ``headers`` (``MonitoringServer.headers``, or :func:`stack_headers`), its certificate verified with
    ``context`` (``MonitoringServer.ssl_context()``, or :func:`stack_tls`)."""
    url = f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers)), timeout=5,
                                context=context) as answer:
        result: list[dict[str, Any]] = json.load(answer)["data"]["result"]
        return result


def stack_headers(stack: Mapping[str, Any], server: str) -> dict[str, str]:
    """The Authorization header for ``server`` ("prometheus" or "alertmanager") of a local stack, from the
    password file stack.json names."""
    auth = stack["monitoring_auth"][server]
    with open(auth["password_file"]) as password:
        return basic_auth_header(auth["username"], password.read())


def stack_tls(stack: Mapping[str, Any], server: str) -> ssl.SSLContext:
    """How a client of a local stack verifies ``server``'s ("prometheus" or "alertmanager") certificate."""
    return ssl.create_default_context(cafile=stack["monitoring_auth"][server]["ca_file"])


def wait_until(what: str, check: Callable[[], bool], wait_s: float, interval_s: float = 0.25) -> None:
    """Return once ``check`` holds; AssertionError naming ``what`` after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {wait_s:g} s: {what}")
        time.sleep(interval_s)
