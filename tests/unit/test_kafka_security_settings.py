"""Kafka security settings become every client's librdkafka settings in one place, secrets come from the
environment or a file and never appear in errors or descriptions, and each service's ACLs follow from who
produces and who consumes each topic (topics.service_access)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from neuroflow.core import topics
from neuroflow.core.config import BusSettings, NeuroflowSettings
from neuroflow.core.kafka_acl import AclRow, acl_rows
from neuroflow.core.kafka_security import KafkaSecurityError, client_security, describe, unprotected_remote
from neuroflow.proto.neuroflow.v1 import common_pb2

SECRET = "s3cret-scram-password"


def test_sasl_ssl_from_the_environment_with_the_password_from_a_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "password").write_text(SECRET + "\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    for name, value in {"KIND": "kafka", "BOOTSTRAP": "kafka.site:9093", "SECURITY_PROTOCOL": "SASL_SSL",
                        "USERNAME": "ingest", "PASSWORD_FILE": str(tmp_path / "password"),
                        "CA_FILE": str(tmp_path / "ca.pem")}.items():
        monkeypatch.setenv(f"NEUROFLOW_BUS__{name}", value)
    bus = NeuroflowSettings().bus
    assert client_security(bus) == {
        "security.protocol": "sasl_ssl", "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": str(tmp_path / "ca.pem"), "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "ingest", "sasl.password": SECRET}
    assert SECRET not in repr(bus) and SECRET not in describe(bus)
    assert describe(bus) == "Kafka at kafka.site:9093 (SASL_SSL, SCRAM-SHA-512 as ingest)"


def test_sasl_ssl_without_a_password_is_refused_naming_the_settings() -> None:
    with pytest.raises(KafkaSecurityError, match="NEUROFLOW_BUS__PASSWORD_FILE"):
        client_security(BusSettings(kind="kafka", security_protocol="SASL_SSL", username="ingest"))


def test_both_a_password_and_a_password_file_are_refused_without_echoing_the_password(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("other")
    with pytest.raises(ValidationError) as refused:
        BusSettings(password=SecretStr(SECRET), password_file=tmp_path / "password")
    assert "bus.password and bus.password_file are both set" in str(refused.value)
    assert SECRET not in str(refused.value)


def test_mutual_tls_needs_both_the_certificate_and_its_key(tmp_path: Path) -> None:
    for name in ("client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    with pytest.raises(KafkaSecurityError, match=r"bus.cert_file and bus.key_file go together"):
        client_security(BusSettings(security_protocol="SSL", cert_file=tmp_path / "client.pem"))
    with pytest.raises(KafkaSecurityError, match="SSL authenticates by client certificate"):
        client_security(BusSettings(security_protocol="SSL"))
    config = client_security(BusSettings(security_protocol="SSL", cert_file=tmp_path / "client.pem",
                                         key_file=tmp_path / "client.key"))
    assert config["ssl.certificate.location"] == str(tmp_path / "client.pem")
    assert config["ssl.key.location"] == str(tmp_path / "client.key")
    assert "sasl.username" not in config


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KafkaSecurityError, match=r"bus.ca_file .*missing.pem is not a readable file"):
        client_security(BusSettings(security_protocol="SASL_SSL", username="u", password=SecretStr("p"),
                                    ca_file=tmp_path / "missing.pem"))


def test_plaintext_stays_the_default_for_the_embedded_runtime_and_is_flagged_off_this_host() -> None:
    assert client_security(BusSettings()) == {"security.protocol": "plaintext"}
    assert not unprotected_remote(BusSettings(bootstrap="127.0.0.1:19092,localhost:19093"))
    assert unprotected_remote(BusSettings(bootstrap="127.0.0.1:19092,kafka.site:9092"))
    assert not unprotected_remote(BusSettings(bootstrap="kafka.site:9093", security_protocol="SSL"))


def _allowed(service: str) -> set[AclRow]:
    return set(acl_rows(topics.service_access()[service]))


def test_only_the_orchestrator_may_write_task_topics() -> None:
    task = topics.task_topic(common_pb2.STAGE_PREPROCESS)
    writers = {service for service in topics.service_access() if AclRow("topic", task, "WRITE") in _allowed(service)}
    assert writers == {topics.ORCHESTRATOR}
    readers = {service for service in topics.service_access() if AclRow("topic", task, "READ") in _allowed(service)}
    assert readers == {"preprocess"}


def test_every_topic_has_a_producer_and_what_is_consumed_is_produced() -> None:
    access = topics.service_access()
    written = {topic for a in access.values() for topic in a.writes}
    read = {topic for a in access.values() for topic in a.reads}
    assert written == set(topics.all_topics())
    assert read <= written


def test_a_worker_joins_only_its_own_groups_and_the_monitor_only_looks() -> None:
    segmentation = _allowed("segmentation")
    assert AclRow("group", "neuroflow.segmentation.", "READ", prefixed=True) in segmentation
    assert not any(row.resource == "group" and row.name != "neuroflow.segmentation." for row in segmentation)
    monitor = _allowed(topics.MONITOR)
    assert {row.operation for row in monitor} == {"DESCRIBE"}
    kafka_group = topics.kafka_group_id(topics.STUDY_READY, topics.ORCHESTRATOR_GROUP)
    assert any(row.resource == "group" and row.prefixed and kafka_group.startswith(row.name) for row in monitor)
