"""The stack's Kafka broker admits no one without credentials and lets each service write only the topics it
produces: SASL_SSL with SCRAM-SHA-512, the broker's certificate verified by every client, ACLs per service
principal from topics.service_access (issue 12, item 1). One secured broker for the module."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from pydantic import SecretStr

from neuroflow.core import topics
from neuroflow.core.bus import Message
from neuroflow.core.config import BusSettings, NeuroflowSettings
from neuroflow.core.errors import BusError
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.kafka_bus import KafkaBus
from neuroflow.core.kafka_security import client_security
from neuroflow.devtools.kafka_broker import BrokerSecurity, prepare_broker_security
from neuroflow.monitor.probes import ConsumerPair, KafkaProbe
from neuroflow.proto.neuroflow.v1 import common_pb2
from neuroflow.runtime.readiness import dependency_checks
from tests.servers.kafka import KafkaServer, running_kafka


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    with running_kafka(tmp_path_factory.mktemp("secure-kafka"), secure=True, mtls=True) as server:
        yield server

def _security(server: KafkaServer) -> BrokerSecurity:
    assert server.security is not None
    return server.security

def _bus_as(server: KafkaServer, service: str, **settings: object) -> KafkaBus:
    bus_settings = _security(server).bus_settings(server.bootstrap, service).model_copy(update=settings)
    return KafkaBus(server.bootstrap, client_id=f"test-{service}", timeout_s=8.0, publish_timeout_s=8.0,
                    security=client_security(bus_settings))

def test_a_client_without_credentials_is_refused(secure_kafka: KafkaServer) -> None:
    # Neither a plaintext client nor one that speaks TLS (trusting the broker) but does not log in is served.
    with pytest.raises(BusError):
        KafkaBus(secure_kafka.bootstrap, timeout_s=4.0)
    tls_only = BusSettings(kind="kafka", bootstrap=secure_kafka.bootstrap, security_protocol="SASL_SSL",
                           username="ingest", password=SecretStr("x"), ca_file=_security(secure_kafka).ca_file)
    no_login = {**client_security(tls_only), "security.protocol": "ssl"}
    for key in ("sasl.mechanism", "sasl.username", "sasl.password"):
        no_login.pop(key)
    with pytest.raises(BusError):
        KafkaBus(secure_kafka.bootstrap, timeout_s=4.0, security=no_login)

def test_a_wrong_password_is_refused_and_the_error_says_so_without_the_password(secure_kafka: KafkaServer) -> None:
    with pytest.raises(BusError, match=r"refused this client.*invalid credentials") as refused:
        _bus_as(secure_kafka, "ingest", password=SecretStr("not-the-password-4711"))
    assert "not-the-password-4711" not in str(refused.value)

def test_a_broker_whose_certificate_the_client_does_not_trust_is_refused(secure_kafka: KafkaServer,
                                                                           tmp_path: Path) -> None:
    # Another CA (another stack's): the right password must not be sent to a broker that cannot prove who it is.
    other_ca = prepare_broker_security(tmp_path / "other", services=[]).ca_file
    with pytest.raises(BusError, match=r"refused this client.*(certificate|SSL)"):
        _bus_as(secure_kafka, "ingest", ca_file=other_ca)

def test_a_service_writes_only_the_topics_it_produces(secure_kafka: KafkaServer) -> None:
    ingest = _bus_as(secure_kafka, "ingest")
    try:
        ingest.publish(topics.STUDY_READY, "study-a", b"ready")  # its own
        # A task topic belongs to the orchestrator: a compromised ingest cannot inject work.
        with pytest.raises(BusError, match="Topic authorization failed"):
            ingest.publish(topics.task_topic(common_pb2.STAGE_PREPROCESS), "study-a", b"forged task")
        with pytest.raises(BusError, match="Topic authorization failed"):
            ingest.publish(topics.TASK_DONE, "study-a", b"forged answer")
    finally:
        ingest.close()

def test_a_service_reads_only_what_is_addressed_to_it(secure_kafka: KafkaServer) -> None:
    segmentation = _bus_as(secure_kafka, "segmentation")
    try:
        # The preprocess tasks, in the preprocess workers' group: neither the topic nor the group is its own.
        with pytest.raises(BusError, match=r"[Aa]uthorization failed"):
            segmentation.poll(topics.task_topic(common_pb2.STAGE_PREPROCESS),
                              topics.worker_group(common_pb2.STAGE_PREPROCESS), timeout_s=5.0)
    finally:
        segmentation.close()

def test_events_and_tasks_go_round_over_sasl_ssl(secure_kafka: KafkaServer) -> None:
    """ingest -> orchestrator -> preprocess worker -> orchestrator, each as its own principal."""
    ingest, orchestrator, preprocess = (_bus_as(secure_kafka, name) for name in ("ingest", "orchestrator",
                                                                                   "preprocess"))
    key = f"study-{uuid.uuid4().hex[:8]}"
    task_topic = topics.task_topic(common_pb2.STAGE_PREPROCESS)
    worker_group = topics.worker_group(common_pb2.STAGE_PREPROCESS)
    try:
        ingest.publish(topics.STUDY_READY, key, b"ready")
        ready = _poll_for(orchestrator, topics.STUDY_READY, topics.ORCHESTRATOR_GROUP, key)
        orchestrator.commit(ready, topics.ORCHESTRATOR_GROUP)
        orchestrator.publish(task_topic, key, b"task")
        task = _poll_for(preprocess, task_topic, worker_group, key)
        preprocess.publish(topics.TASK_DONE, key, b"done")
        preprocess.commit(task, worker_group)
        done = _poll_for(orchestrator, topics.TASK_DONE, topics.ORCHESTRATOR_GROUP, key)
        assert done.value == b"done"
    finally:
        for bus in (ingest, orchestrator, preprocess):
            bus.close()

def test_mutual_tls_authenticates_by_certificate_with_the_same_acls(secure_kafka: KafkaServer) -> None:
    assert secure_kafka.mtls_bootstrap is not None
    security = _security(secure_kafka)
    ingest_settings = security.mtls_settings(secure_kafka.mtls_bootstrap, "ingest")
    ingest = KafkaBus(secure_kafka.mtls_bootstrap, timeout_s=8.0, publish_timeout_s=8.0,
                      security=client_security(ingest_settings))
    try:
        ingest.publish(topics.STUDY_READY, "study-m", b"ready")  # CN=ingest is User:ingest
        with pytest.raises(BusError, match="Topic authorization failed"):
            ingest.publish(topics.task_topic(common_pb2.STAGE_SEGMENTATION), "study-m", b"forged task")
    finally:
        ingest.close()
    # TLS that trusts the broker but shows no certificate of its own is not served.
    no_certificate = {"security.protocol": "ssl", "ssl.ca.location": str(security.ca_file),
                      "ssl.endpoint.identification.algorithm": "https"}
    with pytest.raises(BusError):
        KafkaBus(secure_kafka.mtls_bootstrap, timeout_s=4.0, security=no_certificate)


def test_readiness_and_the_lag_probe_log_in_as_their_service(secure_kafka: KafkaServer) -> None:
    security = _security(secure_kafka)
    worker = NeuroflowSettings().model_copy(
        update={"bus": security.bus_settings(secure_kafka.bootstrap, "segmentation")})
    dependency_checks(["segmentation"], worker, inference=_no_inference, models=[])["kafka"]()
    anonymous = NeuroflowSettings(bus=BusSettings(kind="kafka", bootstrap=secure_kafka.bootstrap))
    with pytest.raises(KafkaException):  # a plaintext client gets no metadata from the SASL_SSL listener
        dependency_checks(["segmentation"], anonymous, inference=_no_inference, models=[])["kafka"]()
    pair = ConsumerPair(topics.ORCHESTRATOR_GROUP, topics.STUDY_READY)
    monitor = security.bus_settings(secure_kafka.bootstrap, "monitor")
    probe = KafkaProbe(secure_kafka.bootstrap, [pair], 10.0, "test-site", security=client_security(monitor))
    assert pair in probe.lags()  # the monitor may describe the orchestrator's group and topic


def test_no_password_is_in_the_brokers_logs_or_left_on_a_command_line_file(secure_kafka: KafkaServer) -> None:
    # Runs after the others (a refused login, a wrong password, every service's login are in the logs by now).
    passwords = [p.read_text() for p in (_security(secure_kafka).directory / "passwords").iterdir()]
    logs = "".join(log.read_text(errors="replace") for log in (secure_kafka.data_dir / "logs").iterdir())
    assert passwords and not [p for p in passwords if p in logs]
    assert not (secure_kafka.data_dir / "format.args").exists(), "the SCRAM users' argument file is removed"
    assert oct((secure_kafka.data_dir / "server.properties").stat().st_mode & 0o777) == "0o600"


def _no_inference() -> InferenceBackend:
    raise AssertionError("the Kafka check needs no inference backend")

def _poll_for(bus: KafkaBus, topic: str, group: str, key: str, timeout_s: float = 60.0) -> Message:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for message in bus.poll(topic, group, max_messages=10, timeout_s=2.0):
            if message.key == key:
                return message
    raise AssertionError(f"no message with key {key} on {topic} within {timeout_s:g} s")
