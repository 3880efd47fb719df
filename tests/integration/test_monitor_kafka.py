"""The monitor's Kafka probe against a real broker: the lag of a group on a topic is the messages published
and not yet committed by that group, summed over partitions (from the start for a group that never
committed); a broker that is away reads as Kafka down, not as an error."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from neuroflow.core.bus import Message
from neuroflow.core.kafka_bus import KafkaBus
from neuroflow.devtools.ports import free_loopback_port
from neuroflow.monitor.probes import ConsumerPair, KafkaProbe
from tests.servers.kafka import KafkaServer


@pytest.fixture
def bus(kafka_server: KafkaServer) -> Iterator[KafkaBus]:
    bus = KafkaBus(kafka_server.bootstrap)
    try:
        yield bus
    finally:
        bus.close()


def test_lag_is_what_the_group_has_not_committed(bus: KafkaBus, kafka_server: KafkaServer) -> None:
    topic, group, idle = f"lag-{uuid.uuid4().hex[:8]}", "monitor-test.busy", "monitor-test.idle"
    bus.ensure_topics([topic], partitions=2)
    for i in range(5):
        bus.publish(topic, f"key-{i}", b"task")
    probe = KafkaProbe(kafka_server.bootstrap, [ConsumerPair(group, topic), ConsumerPair(idle, topic)], 10.0,
                       "lag-site")
    taken: list[Message] = []
    while len(taken) < 2:
        taken += bus.poll(topic, group, max_messages=2 - len(taken), timeout_s=5.0)
    for message in taken:
        bus.commit(message, group)

    lags = probe.lags()
    assert lags[ConsumerPair(idle, topic)] == 5.0  # never committed: everything on the topic waits
    # Committed offsets are per partition; commits of the first messages leave the other three waiting.
    assert lags[ConsumerPair(group, topic)] == 3.0
    probe.run()
    assert REGISTRY.get_sample_value("neuroflow_kafka_up", {"site": "lag-site"}) == 1.0
    assert REGISTRY.get_sample_value("neuroflow_kafka_consumer_lag", {"group": idle, "topic": topic}) == 5.0


def test_broker_that_is_away_reads_as_kafka_down() -> None:
    probe = KafkaProbe(f"127.0.0.1:{free_loopback_port()}", [ConsumerPair("g", "t")], 1.0, "away-site")
    probe.run()
    assert REGISTRY.get_sample_value("neuroflow_kafka_up", {"site": "away-site"}) == 0.0
