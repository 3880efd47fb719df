"""The security settings every Kafka client of neuroflow passes to librdkafka, made from ``BusSettings`` in
this one place: the bus (core/kafka_bus.py), the readiness check, the monitor's lag probe and the tools.

``SASL_SSL``: TLS to the broker, whose certificate must chain to ``ca_file`` and name the host connected to
(librdkafka's ``https`` endpoint identification), and SCRAM authentication as ``username``. ``SSL``: TLS with
a client certificate (mTLS), the certificate's subject being the principal. A client certificate may be
given with ``SASL_SSL`` too (a broker that asks for one). The result holds the password: pass it to a
client, never to a log line (``describe`` is what may be logged)."""

from __future__ import annotations

from typing import Any

from neuroflow.core.config import BusSettings


class KafkaSecurityError(ValueError):
    """The bus settings cannot make a secure client (a missing credential or file); names the setting."""


def client_security(bus: BusSettings) -> dict[str, Any]:
    """librdkafka properties for ``bus``'s security (no bootstrap, no client id). Raises KafkaSecurityError
    naming what is missing, never a secret."""
    protocol = bus.security_protocol
    if protocol == "PLAINTEXT":
        return {"security.protocol": "plaintext"}
    config: dict[str, Any] = {
        "security.protocol": protocol.lower(),
        # Verify that the broker's certificate names the host connected to, not only that a CA signed it.
        "ssl.endpoint.identification.algorithm": "https",
    }
    for setting, path in (("bus.ca_file", bus.ca_file), ("bus.cert_file", bus.cert_file),
                          ("bus.key_file", bus.key_file)):
        if path is not None and not path.is_file():
            raise KafkaSecurityError(f"{setting} {path} is not a readable file")
    if bus.ca_file is not None:
        config["ssl.ca.location"] = str(bus.ca_file)
    if (bus.cert_file is None) != (bus.key_file is None):
        raise KafkaSecurityError("bus.cert_file and bus.key_file go together (the client certificate and its key)")
    if bus.cert_file is not None and bus.key_file is not None:
        config["ssl.certificate.location"] = str(bus.cert_file)
        config["ssl.key.location"] = str(bus.key_file)
    if protocol == "SSL" and bus.cert_file is None:
        raise KafkaSecurityError("bus.security_protocol SSL authenticates by client certificate: set "
                                 "bus.cert_file and bus.key_file (or use SASL_SSL with a username and password)")
    if protocol == "SASL_SSL":
        password = bus.password.get_secret_value()
        if not bus.username or not password:
            raise KafkaSecurityError("bus.security_protocol SASL_SSL needs bus.username and bus.password "
                                     "(NEUROFLOW_BUS__PASSWORD or NEUROFLOW_BUS__PASSWORD_FILE)")
        config.update({"sasl.mechanism": bus.sasl_mechanism, "sasl.username": bus.username,
                       "sasl.password": password})
    return config


def describe(bus: BusSettings) -> str:
    """How ``bus`` connects, for a log line: protocol, mechanism and principal, never the password."""
    if bus.security_protocol == "PLAINTEXT":
        return f"Kafka at {bus.bootstrap} (plaintext)"
    who = f"{bus.sasl_mechanism} as {bus.username}" if bus.security_protocol == "SASL_SSL" else "client certificate"
    return f"Kafka at {bus.bootstrap} ({bus.security_protocol}, {who})"


def unprotected_remote(bus: BusSettings) -> bool:
    """Whether ``bus`` talks PLAINTEXT to a broker that is not on this host (worth a warning at start)."""
    if bus.security_protocol != "PLAINTEXT":
        return False
    hosts = {address.rsplit(":", 1)[0].strip("[]") for address in bus.bootstrap.split(",") if address.strip()}
    return not hosts <= {"127.0.0.1", "localhost", "::1"}
