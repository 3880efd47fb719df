"""Kafka ACLs of each service principal, made from ``topics.service_access`` (who produces and who consumes
which topic): a service may write only the topics it produces, read only those addressed to it, and join only
its own consumer groups. Everything not granted is denied (the broker's StandardAuthorizer with
``allow.everyone.if.no.acl.found=false``); the operator's principal is a super user.

``acl_rows`` is the plain description (also what the chart renders for Strimzi's KafkaUser);
``grant_service_acls`` creates them on a broker through an admin client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuroflow.core.topics import TopicAccess, service_access


@dataclass(frozen=True)
class AclRow:
    """Allow ``operation`` on ``resource`` (``topic`` or ``group``) ``name``, a literal name or, with
    ``prefixed``, every name starting with it."""

    resource: str
    name: str
    operation: str  # READ, WRITE, CREATE, DESCRIBE (Kafka's names)
    prefixed: bool = False


def acl_rows(access: TopicAccess) -> list[AclRow]:
    """What one service's principal is allowed. CREATE on its own topics: the services create the topics they
    use when missing (KafkaBus.ensure_topics); an existing topic is left as it is."""
    rows: list[AclRow] = []
    for topic in access.writes:
        rows += [AclRow("topic", topic, op) for op in ("WRITE", "DESCRIBE", "CREATE")]
    for topic in access.reads:
        rows += [AclRow("topic", topic, op) for op in ("READ", "DESCRIBE", "CREATE")]
    # Each bus group reads each topic in its own Kafka group, "<group>.<topic>" (topics.kafka_group_id).
    rows += [AclRow("group", f"{group}.", "READ", prefixed=True) for group in access.groups]
    rows += [AclRow("topic", topic, "DESCRIBE") for topic in access.describes if topic not in access.reads]
    rows += [AclRow("group", f"{group}.", "DESCRIBE", prefixed=True) for group in access.describes_groups]
    return list(dict.fromkeys(rows))


def principal(service: str) -> str:
    """The Kafka principal of ``service`` as the broker names a SCRAM user: ``User:<service>``."""
    return f"User:{service}"


def grant_service_acls(admin: Any, services: dict[str, str] | None = None, timeout_s: float = 30.0) -> int:
    """Create the ACLs of every service on the cluster ``admin`` (a confluent_kafka AdminClient of a super
    user) reaches; ``services``: username by service (default: the service's name). Returns how many
    bindings it asked for; creating one that exists is harmless. Raises the broker's error otherwise."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    bindings = []
    for service, access in service_access().items():
        user = (services or {}).get(service, service)
        for row in acl_rows(access):
            bindings.append(AclBinding(
                ResourceType[row.resource.upper()], row.name,
                ResourcePatternType.PREFIXED if row.prefixed else ResourcePatternType.LITERAL,
                principal(user), "*", AclOperation[row.operation], AclPermissionType.ALLOW))
    for future in admin.create_acls(bindings, request_timeout=timeout_s).values():
        future.result(timeout=timeout_s)
    return len(bindings)
