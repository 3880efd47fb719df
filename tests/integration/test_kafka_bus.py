"""What the Kafka bus adds to the bus contract (tests/contract/test_bus_contract.py), against the real
broker the tests start (tests/servers/kafka.py): partitions, topic creation, workers sharing a group,
and a clear error when the broker cannot be reached."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from neuroflow.core.bus import Message
from neuroflow.core.errors import BusUnavailable
from neuroflow.core.kafka_bus import KafkaBus
from neuroflow.devtools.ports import free_loopback_port
from tests.servers.kafka import KafkaServer, running_kafka, stop_kafka


@pytest.fixture
def bus(kafka_server: KafkaServer) -> Iterator[KafkaBus]:
    bus = KafkaBus(kafka_server.bootstrap)
    yield bus
    bus.close()


@pytest.fixture
def topic() -> str:
    return f"neuroflow.test.{uuid.uuid4().hex[:12]}"


def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return {name: len(topics[name].partitions) for name in names if name in topics}


def test_an_unreachable_broker_raises_bus_unavailable_naming_the_address_within_the_timeout() -> None:
    address = f"127.0.0.1:{free_loopback_port()}"
    started = time.monotonic()

    with pytest.raises(BusUnavailable, match=address):
        KafkaBus(address, timeout_s=1.5)

    assert time.monotonic() - started < 5


def test_while_the_broker_is_down_publish_and_poll_raise_bus_unavailable_instead_of_losing_or_hanging(
        tmp_path: Path, topic: str) -> None:
    with running_kafka(tmp_path / "kafka") as server:  # its own broker: this test stops it
        bus = KafkaBus(server.bootstrap, publish_timeout_s=2)
        try:
            bus.publish(topic, "study-a", b"before")
            assert [m.value for m in bus.poll(topic, "g", timeout_s=10)] == [b"before"]

            stop_kafka(server)

            started = time.monotonic()
            with pytest.raises(BusUnavailable, match=server.bootstrap):
                bus.publish(topic, "study-a", b"during")
            assert time.monotonic() - started < 5
            with pytest.raises(BusUnavailable, match=server.bootstrap):
                bus.poll(topic, "g", timeout_s=1)
        finally:
            bus.close()


def test_ensure_topics_creates_missing_topics_with_the_partitions_asked_and_leaves_existing_ones(
        bus: KafkaBus, kafka_server: KafkaServer, topic: str) -> None:
    existing = topic + ".existing"
    assert bus.ensure_topics([existing], partitions=2) == [existing]

    created = bus.ensure_topics([topic, existing], partitions=3)

    assert created == [topic]
    assert partition_counts(kafka_server.bootstrap, [topic, existing]) == {topic: 3, existing: 2}
    assert bus.ensure_topics([topic, existing], partitions=3) == []


def test_messages_of_one_study_stay_in_one_partition_in_order_while_studies_spread_over_partitions(
        bus: KafkaBus, topic: str) -> None:
    bus.ensure_topics([topic], partitions=4)
    studies, per_study = 12, 10
    for n in range(per_study):
        for s in range(studies):
            bus.publish(topic, f"study-{s}", f"{s}:{n}".encode())

    received: list[Message] = []
    deadline = time.monotonic() + 10
    while len(received) < studies * per_study and time.monotonic() < deadline:
        for message in bus.poll(topic, "g", max_messages=50, timeout_s=0.2):
            bus.commit(message, "g")
            received.append(message)

    assert len(received) == studies * per_study
    partitions_of = {f"study-{s}": {m.partition for m in received if m.key == f"study-{s}"} for s in range(studies)}
    assert all(len(partitions) == 1 for partitions in partitions_of.values())
    assert len(set.union(*partitions_of.values())) > 1
    for s in range(studies):
        assert [m.value for m in received if m.key == f"study-{s}"] == [f"{s}:{n}".encode() for n in range(per_study)]


def test_two_workers_in_one_group_split_the_partitions_and_together_receive_every_message_once(
        kafka_server: KafkaServer, topic: str) -> None:
    workers = [KafkaBus(kafka_server.bootstrap), KafkaBus(kafka_server.bootstrap)]
    workers[0].ensure_topics([topic], partitions=4)
    received: list[list[Message]] = [[], []]
    stop = threading.Event()

    def work(w: int) -> None:
        while not stop.is_set():
            for message in workers[w].poll(topic, "preprocess", max_messages=16, timeout_s=0.1):
                workers[w].commit(message, "preprocess")
                received[w].append(message)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20  # the second worker's join makes the first one rebalance
        while time.monotonic() < deadline:
            owned = [set(worker.assigned_partitions(topic, "preprocess")) for worker in workers]
            if all(owned) and owned[0] | owned[1] == {0, 1, 2, 3}:
                break
            time.sleep(0.1)
        assert all(owned) and owned[0].isdisjoint(owned[1]), f"partitions not split between workers: {owned}"

        expected = {f"{s}:{n}".encode() for s in range(20) for n in range(5)}
        for value in sorted(expected):
            workers[0].publish(topic, f"study-{value.split(b':')[0].decode()}", value)
        deadline = time.monotonic() + 20
        while sum(len(r) for r in received) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for worker in workers:
            worker.close()

    values = [m.value for r in received for m in r]
    assert sorted(values) == sorted(expected)  # every message, none twice
    for w in range(2):
        assert received[w], f"worker {w} received nothing"
        assert {m.partition for m in received[w]} <= owned[w]
