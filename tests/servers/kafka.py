"""A real single-node Kafka broker for the tests, started with scripts/kafka.sh (the script the local
stack uses) on free loopback ports in a temporary folder, and stopped by its PID at the end.

``kafka_server`` is the plain broker most tests share (no TLS, no login: fast, and what they test is the bus,
not its security); ``running_kafka(..., secure=True)`` is the stack's broker, SASL_SSL with a certificate
authority of its own and ACLs per service (devtools/kafka_broker.py), for the security tests.

The first run on a machine fetches the broker's jars from Maven Central into the neuroflow cache
(about 100 MB, 10-20 s); later runs find them there.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from neuroflow.devtools.kafka_broker import BrokerSecurity, prepare_broker_security, start_secure_kafka
from neuroflow.devtools.ports import free_loopback_port

KAFKA_SH = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"


@dataclass(frozen=True)
class KafkaServer:
    bootstrap: str  # "127.0.0.1:port", what KafkaBus and any Kafka client take
    data_dir: Path  # logs/server.log there tells what the broker did
    start_s: float  # how long `kafka.sh start` took, formatting included
    security: BrokerSecurity | None = None  # the CA and passwords of a secured broker
    mtls_bootstrap: str | None = None  # its mutual-TLS listener, when asked for


def _run(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KAFKA_SH), *args], capture_output=True, text=True, timeout=timeout_s, check=False)


@contextlib.contextmanager
def running_kafka(data_dir: Path, *, partitions: int = 1, secure: bool = False,
                  mtls: bool = False) -> Iterator[KafkaServer]:
    """A broker serving on a free loopback port until the block ends; fails (never skips) when Java,
    Maven or the jars are missing, with the script's own explanation. ``secure``: SASL_SSL and ACLs, its
    CA and passwords in ``data_dir/security``; ``mtls`` (with ``secure``): also a listener taking client
    certificates."""
    fetched = _run("fetch", timeout_s=900)
    if fetched.returncode != 0:
        raise RuntimeError(f"scripts/kafka.sh fetch failed:\n{fetched.stderr}")
    port = free_loopback_port()
    controller_port = free_loopback_port()
    while controller_port == port:
        controller_port = free_loopback_port()
    started_at = time.monotonic()
    if secure:
        security = prepare_broker_security(data_dir / "security")
        mtls_port = free_loopback_port() if mtls else None
        while mtls_port in (port, controller_port):
            mtls_port = free_loopback_port()
        try:
            bootstrap = start_secure_kafka(data_dir, port=port, controller_port=controller_port,
                                           partitions=partitions, security=security, mtls_port=mtls_port)
        except BaseException:
            _run("stop", "--data-dir", str(data_dir), timeout_s=60)
            raise
        secured = KafkaServer(bootstrap, data_dir, time.monotonic() - started_at, security,
                              f"127.0.0.1:{mtls_port}" if mtls_port else None)
        try:
            yield secured
        finally:
            stop_kafka(secured)
        return
    started = _run("start", "--port", str(port), "--controller-port", str(controller_port),
                   "--data-dir", str(data_dir), "--partitions", str(partitions), timeout_s=120)
    if started.returncode != 0:
        _run("stop", "--data-dir", str(data_dir), timeout_s=60)
        raise RuntimeError(f"scripts/kafka.sh start failed:\n{started.stderr}")
    server = KafkaServer(started.stdout.strip(), data_dir, time.monotonic() - started_at)
    try:
        yield server
    finally:
        stop_kafka(server)


def stop_kafka(server: KafkaServer) -> None:
    """Stop ``server`` now (a test of what clients do when the broker goes away); stopping again is harmless."""
    stopped = _run("stop", "--data-dir", str(server.data_dir), timeout_s=60)
    if stopped.returncode != 0:
        raise RuntimeError(f"scripts/kafka.sh stop failed:\n{stopped.stderr}")


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """One broker for the whole test session; tests keep apart by using fresh topic and group names."""
    with running_kafka(tmp_path_factory.mktemp("kafka")) as server:
        yield server
