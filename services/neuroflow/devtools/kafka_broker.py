"""The secured development broker: scripts/kafka.sh with ``--security DIR``, prepared here.

For one broker (a stack's, or a test's) this makes, in DIR:

* a certificate authority (``ca.pem``, what clients trust) and the broker's certificate for 127.0.0.1 and
  localhost, signed by it (``broker.pem``: key and chain, readable by the owner only), and a client certificate
  per principal (``clients/<user>.crt`` and ``.key``, CN = the user) for the optional mutual-TLS listener;
* a SCRAM-SHA-512 password per principal (``passwords/<user>``, owner only): ``admin`` (the operator, a super
  user), ``broker`` (the broker's own inter-broker login) and one per service;
* ``scram.args``: the ``--add-scram`` options that create those users when kafka.sh formats the storage (KRaft
  keeps SCRAM credentials in its metadata), read by the JVM from that file, never on a command line;
* ``broker.properties``: TLS (PEM key and trust stores), SASL/SCRAM, the controller listener on TLS with a
  required client certificate, and the StandardAuthorizer denying whatever no ACL allows.

``start_secure_kafka`` then starts the broker, waits until the operator can log in, and creates every
service's ACLs (core/kafka_acl.py). A restart reuses DIR: same CA, same passwords, ACLs kept in the metadata.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroflow.core.config import REPOSITORY_ROOT, BusSettings
from neuroflow.core.kafka_acl import grant_service_acls
from neuroflow.core.kafka_security import client_security
from neuroflow.core.topics import service_access
from neuroflow.devtools.certificates import make_authority, write_private

KAFKA_SCRIPT = REPOSITORY_ROOT / "scripts" / "kafka.sh"
OPERATOR = "admin"
BROKER_USER = "broker"
BROKER_SUBJECT = "neuroflow-kafka-broker"  # CN of the broker certificate: its principal on the controller listener
MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class BrokerSecurity:
    """What clients of a secured development broker need: the CA to trust and where each password is."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def password_file(self, user: str) -> Path:
        return self.directory / "passwords" / user

    def client_certificate(self, user: str) -> tuple[Path, Path]:
        """(certificate, key) of ``user`` for the mutual-TLS listener."""
        return self.directory / "clients" / f"{user}.crt", self.directory / "clients" / f"{user}.key"

    def mtls_settings(self, bootstrap: str, user: str) -> BusSettings:
        """Settings of a client authenticating as ``user`` by its certificate (the mutual-TLS listener)."""
        cert, key = self.client_certificate(user)
        return BusSettings(kind="kafka", bootstrap=bootstrap, security_protocol="SSL", ca_file=self.ca_file,
                           cert_file=cert, key_file=key)

    def bus_settings(self, bootstrap: str, user: str = OPERATOR) -> BusSettings:
        """Settings of a client logging in as ``user`` (a service name, or ``admin``)."""
        return BusSettings(kind="kafka", bootstrap=bootstrap, security_protocol="SASL_SSL", username=user,
                           password_file=self.password_file(user), ca_file=self.ca_file)

    def environment(self, user: str = OPERATOR) -> dict[str, str]:
        """The NEUROFLOW_BUS__* settings of a process logging in as ``user`` (files, not the secret)."""
        return {"NEUROFLOW_BUS__SECURITY_PROTOCOL": "SASL_SSL", "NEUROFLOW_BUS__SASL_MECHANISM": MECHANISM,
                "NEUROFLOW_BUS__USERNAME": user, "NEUROFLOW_BUS__PASSWORD_FILE": str(self.password_file(user)),
                "NEUROFLOW_BUS__CA_FILE": str(self.ca_file)}


def prepare_broker_security(directory: Path, services: list[str] | None = None) -> BrokerSecurity:
    """Make (or keep, when already there) the CA, broker certificate, passwords and broker settings in
    ``directory``; ``services``: the principals besides admin and broker (default: every service)."""
    security = BrokerSecurity(directory)
    (directory / "passwords").mkdir(parents=True, exist_ok=True, mode=0o700)
    users = [OPERATOR, BROKER_USER, *(services if services is not None else service_access())]
    if not security.ca_file.exists():
        _write_certificates(directory, users)
    for user in users:
        if not security.password_file(user).exists():
            write_private(security.password_file(user), secrets.token_urlsafe(24).encode())
    password = {user: security.password_file(user).read_text() for user in users}
    write_private(directory / "scram.args", "".join(
        f"--add-scram\n{MECHANISM}=[name={user},password={password[user]}]\n" for user in users).encode())
    write_private(directory / "broker.properties", _broker_properties(directory, password[BROKER_USER]).encode())
    return security


def start_secure_kafka(data_dir: Path, *, port: int, controller_port: int, partitions: int,
                       security: BrokerSecurity, mtls_port: int | None = None, timeout_s: float = 120.0) -> str:
    """Start the broker of ``data_dir`` with ``security`` (kafka.sh start), wait until the operator logs in
    over SASL_SSL, and grant every service its ACLs. ``mtls_port``: also a mutual-TLS listener there (the
    client certificate's CN is the principal). Returns the SASL_SSL bootstrap address; RuntimeError with the
    script's explanation when it does not start."""
    mtls = ["--mtls-port", str(mtls_port)] if mtls_port is not None else []
    started = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "start", "--port", str(port), "--controller-port", str(controller_port),
         "--data-dir", str(data_dir), "--partitions", str(partitions), "--security", str(security.directory),
         *mtls],
        capture_output=True, text=True, timeout=timeout_s, check=False)
    if started.returncode != 0:
        raise RuntimeError(f"scripts/kafka.sh start failed:\n{started.stderr}")
    bootstrap = started.stdout.strip()
    admin = operator_admin(security, bootstrap)
    _wait_until_operator_served(admin, bootstrap, timeout_s)
    grant_service_acls(admin)
    return bootstrap


def operator_admin(security: BrokerSecurity, bootstrap: str) -> Any:
    """An AdminClient logged in as the operator (a super user)."""
    from confluent_kafka.admin import AdminClient

    # Reconnect quickly: it is made while the broker is still starting, and librdkafka's default backoff grows to
    # 10 s between tries.
    return AdminClient({"bootstrap.servers": bootstrap, "client.id": "neuroflow-operator",
                        "reconnect.backoff.max.ms": 500, **client_security(security.bus_settings(bootstrap))})


def _wait_until_operator_served(admin: Any, bootstrap: str, timeout_s: float) -> None:
    """Until the operator's metadata request and a group-coordinator lookup succeed (the lookup makes the
    broker create its offsets topic now, so the first consumer group does not wait for it)."""
    deadline = time.monotonic() + timeout_s
    problem: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=5)
            admin.describe_consumer_groups(["neuroflow-probe"], request_timeout=5)["neuroflow-probe"].result()
            return
        except Exception as exc:  # not ready yet: keep asking until the deadline
            problem = exc
            time.sleep(0.5)
    raise RuntimeError(f"the secured Kafka at {bootstrap} did not serve the operator within {timeout_s:g} s: "
                       f"{problem}")


def _broker_properties(directory: Path, broker_password: str) -> str:
    return f"""
# --- Security (devtools/kafka_broker.py): SASL_SSL for clients, TLS with client certificates for the controller.
ssl.keystore.type=PEM
ssl.keystore.location={directory / "broker.pem"}
ssl.truststore.type=PEM
ssl.truststore.location={directory / "ca.pem"}
listener.name.controller.ssl.client.auth=required
listener.name.mtls.ssl.client.auth=required
# A certificate's principal is its CN (User:ingest for CN=ingest), the name its SCRAM login would have.
ssl.principal.mapping.rules=RULE:^CN=([a-zA-Z0-9._-]+)$/$1/,DEFAULT
sasl.enabled.mechanisms={MECHANISM}
sasl.mechanism.inter.broker.protocol={MECHANISM}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \\
  required username="{BROKER_USER}" password="{broker_password}";
# Nothing is allowed without an ACL; the operator and the broker itself are super users.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{OPERATOR};User:{BROKER_USER};User:{BROKER_SUBJECT}
"""


def _write_certificates(directory: Path, users: list[str]) -> None:
    """The stack's CA (devtools/certificates.py; ``ca.pem`` is its certificate), a broker certificate for
    127.0.0.1 and localhost (server and client authentication: the broker presents it to its own controller
    listener), and a client certificate per user."""
    authority = make_authority(directory / "ca")
    broker = authority.issue(BROKER_SUBJECT, directory / "broker", also_client=True)
    (directory / "ca.pem").write_bytes(authority.certificate.read_bytes())
    # Kafka reads a PEM key store as a PKCS#8 key followed by the certificate chain.
    write_private(directory / "broker.pem", broker.private_key.read_bytes() + broker.certificate.read_bytes()
                  + authority.certificate.read_bytes())
    (directory / "clients").mkdir(exist_ok=True, mode=0o700)
    for user in users:
        authority.issue(user, directory / "clients", client=True)
