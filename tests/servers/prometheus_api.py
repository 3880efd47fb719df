"""Reading a real Prometheus the way an operator's tools do (its HTTP API), and waiting for what the
monitoring tests expect to happen: one copy for the integration and the end-to-end tests."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector of ``expr`` (PromQL) on the Prometheus at ``prometheus_url``."""
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(expr)}",
                                timeout=5) as answer:
        result: list[dict[str, Any]] = json.load(answer)["data"]["result"]
        return result


def wait_until(what: str, check: Callable[[], bool], wait_s: float, interval_s: float = 0.25) -> None:
    """Return once ``check`` holds; AssertionError naming ``what`` after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {wait_s:g} s: {what}")
        time.sleep(interval_s)
