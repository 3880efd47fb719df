"""Two listeners never share a port: free_loopback_port never hands the same port out twice in one process,
and kafka.sh refuses a port given to two listeners."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from neuroflow.devtools import ports
from neuroflow.devtools.kafka_broker import KAFKA_SCRIPT


def test_a_port_the_os_offers_again_is_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # The OS offered the same port to two probes in a row in a CI run (Kafka's client and controller ports).
    offered = iter([40001, 40001, 40001, 40002])
    monkeypatch.setattr(ports, "_os_picked_port", lambda: next(offered))
    monkeypatch.setattr(ports, "_handed_out", set())
    assert ports.free_loopback_port() == 40001
    assert ports.free_loopback_port() == 40002


def test_ports_handed_out_are_distinct_and_unbound() -> None:
    handed = [ports.free_loopback_port() for _ in range(50)]
    assert len(set(handed)) == len(handed)
    assert not any(ports.port_is_listening(port) for port in handed[:5])


@pytest.mark.parametrize("ports_given", [
    ["--port", "40011", "--controller-port", "40011"],
    ["--port", "40011", "--controller-port", "40012", "--mtls-port", "40012"],
])
def test_kafka_script_refuses_one_port_for_two_listeners(ports_given: list[str], tmp_path: Path) -> None:
    # Before the check, Kafka's storage tool refused the shared port with a stack trace that hid the cause.
    started = subprocess.run(["bash", str(KAFKA_SCRIPT), "start", *ports_given, "--data-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=30, check=False)
    assert started.returncode == 1
    assert "40011" in started.stderr or "40012" in started.stderr
    assert not (tmp_path / "server.properties").exists()
