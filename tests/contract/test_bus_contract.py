"""Contract of neuroflow.core.bus.MessageBus, run against every backend.

Adding a backend is one entry in BACKENDS: a context manager taking the test's fixture request (to reach
a session server such as the real Kafka broker of tests/servers/kafka.py) and yielding a BusUnderTest.
Each test uses fresh topic names, so a backend with persistent topics needs no cleanup between tests.
Only what every backend promises is asserted: order per key, every group sees everything, at-least-once
delivery with redelivery of what a crashed consumer had not committed (commits in delivery order).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import pytest

from neuroflow.core.bus import InMemoryBus, Message, MessageBus
from neuroflow.core.kafka_bus import KafkaBus
from tests.servers.kafka import KafkaServer


@dataclass
class BusUnderTest:
    bus: MessageBus
    # What happens when the consumer of (topic, group) dies: what it had not committed becomes
    # deliverable again. In memory: redeliver(); Kafka: close that consumer and start a new one.
    crash_consumer: Callable[[str, str], None]


@contextlib.contextmanager
def in_memory_bus(request: pytest.FixtureRequest) -> Iterator[BusUnderTest]:
    bus = InMemoryBus()

    def crash_consumer(topic: str, group: str) -> None:
        bus.redeliver(topic, group)

    try:
        yield BusUnderTest(bus, crash_consumer)
    finally:
        bus.close()


@contextlib.contextmanager
def kafka_bus(request: pytest.FixtureRequest) -> Iterator[BusUnderTest]:
    """A KafkaBus on the session's real broker. A crash closes the consumer without committing; the next
    poll starts a new consumer in the same group, which resumes from the group's committed offsets."""
    server: KafkaServer = request.getfixturevalue("kafka_server")
    bus = KafkaBus(server.bootstrap)
    try:
        yield BusUnderTest(bus, bus.close_consumer)
    finally:
        bus.close()


BackendFactory = Callable[[pytest.FixtureRequest], AbstractContextManager[BusUnderTest]]
BACKENDS = [pytest.param(in_memory_bus, id="in-memory"), pytest.param(kafka_bus, id="kafka")]
# How long a poll may wait for a message that is known to be there (a networked backend needs a moment).
WAIT_S = 5.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[BusUnderTest]:
    factory: BackendFactory = request.param
    with factory(request) as under_test:
        yield under_test


@pytest.fixture
def topic() -> str:
    return f"neuroflow.test.{uuid.uuid4().hex[:12]}"


def receive(bus: MessageBus, topic: str, group: str, count: int, *, commit: bool = True) -> list[Message]:
    """Poll until ``count`` messages arrived (or WAIT_S passed), committing each when asked."""
    received: list[Message] = []
    deadline = time.monotonic() + WAIT_S
    while len(received) < count and time.monotonic() < deadline:
        batch = bus.poll(topic, group, max_messages=count - len(received), timeout_s=0.2)
        for message in batch:
            if commit:
                bus.commit(message, group)
        received.extend(batch)
    return received


def nothing_more(bus: MessageBus, topic: str, group: str) -> bool:
    return bus.poll(topic, group, max_messages=10, timeout_s=0.3) == []


def test_messages_of_one_key_arrive_in_publish_order_with_topic_key_and_value(
        backend: BusUnderTest, topic: str) -> None:
    for n in range(20):
        backend.bus.publish(topic, "study-a", f"m{n}".encode())

    received = receive(backend.bus, topic, "orchestrator", 20)

    assert [m.value for m in received] == [f"m{n}".encode() for n in range(20)]
    assert {(m.topic, m.key) for m in received} == {(topic, "study-a")}
    assert nothing_more(backend.bus, topic, "orchestrator")


def test_a_topic_delivers_only_its_own_messages(backend: BusUnderTest, topic: str) -> None:
    other = topic + ".other"
    backend.bus.publish(other, "k", b"elsewhere")
    backend.bus.publish(topic, "k", b"here")

    assert [m.value for m in receive(backend.bus, topic, "g", 1)] == [b"here"]
    assert nothing_more(backend.bus, topic, "g")


def test_a_group_reading_two_topics_gets_each_while_its_reader_of_the_other_sits_idle(
        backend: BusUnderTest, topic: str) -> None:
    other = topic + ".other"
    backend.bus.publish(other, "study-a", b"first")
    assert [m.value for m in receive(backend.bus, other, "orchestrator", 1)] == [b"first"]

    # The orchestrator now waits on `topic` only; nothing polls `other` for this group any more.
    backend.bus.publish(topic, "study-a", b"second")

    assert [m.value for m in receive(backend.bus, topic, "orchestrator", 1)] == [b"second"]


def test_each_consumer_group_receives_every_message(backend: BusUnderTest, topic: str) -> None:
    for n in range(5):
        backend.bus.publish(topic, "study-a", bytes([n]))

    orchestrator = receive(backend.bus, topic, "orchestrator", 5)
    monitor = receive(backend.bus, topic, "monitor", 5)

    assert [m.value for m in orchestrator] == [m.value for m in monitor] == [bytes([n]) for n in range(5)]


def test_uncommitted_messages_are_delivered_again_after_a_consumer_crash(
        backend: BusUnderTest, topic: str) -> None:
    for n in range(3):
        backend.bus.publish(topic, "study-a", bytes([n]))
    first = receive(backend.bus, topic, "worker", 3, commit=False)
    backend.bus.commit(first[0], "worker")  # the crash came while handling the second message

    backend.crash_consumer(topic, "worker")
    again = receive(backend.bus, topic, "worker", 2)

    assert [m.value for m in again] == [bytes([1]), bytes([2])]
    assert nothing_more(backend.bus, topic, "worker")


def test_committed_messages_are_not_delivered_again_after_a_consumer_crash(
        backend: BusUnderTest, topic: str) -> None:
    for n in range(3):
        backend.bus.publish(topic, "study-a", bytes([n]))
    assert len(receive(backend.bus, topic, "worker", 3, commit=True)) == 3

    backend.crash_consumer(topic, "worker")

    assert nothing_more(backend.bus, topic, "worker")
    backend.bus.publish(topic, "study-a", b"new")
    assert [m.value for m in receive(backend.bus, topic, "worker", 1)] == [b"new"]


def test_a_waiting_poll_returns_a_message_published_meanwhile(backend: BusUnderTest, topic: str) -> None:
    publisher = threading.Timer(0.2, backend.bus.publish, args=(topic, "study-a", b"late"))
    publisher.start()
    started = time.monotonic()
    received = backend.bus.poll(topic, "g", max_messages=1, timeout_s=WAIT_S)
    publisher.join()

    assert [m.value for m in received] == [b"late"]
    assert time.monotonic() - started < WAIT_S


def test_concurrent_producers_and_consumers_lose_nothing_and_keep_order_per_key(
        backend: BusUnderTest, topic: str) -> None:
    producers, per_producer, consumers = 4, 150, 2
    expected = {f"{p}:{n}".encode() for p in range(producers) for n in range(per_producer)}
    received_by: list[list[Message]] = [[] for _ in range(consumers)]
    done = threading.Event()

    def produce(p: int) -> None:
        for n in range(per_producer):
            backend.bus.publish(topic, f"study-{p}", f"{p}:{n}".encode())

    def consume(c: int) -> None:
        while not done.is_set():
            for message in backend.bus.poll(topic, "workers", max_messages=16, timeout_s=0.1):
                received_by[c].append(message)
                backend.bus.commit(message, "workers")

    threads = [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
    threads += [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while {m.value for r in received_by for m in r} != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    for thread in threads:
        thread.join()

    values = [m.value for r in received_by for m in r]
    assert set(values) == expected, f"lost {len(expected - set(values))} of {len(expected)} messages"
    for received in received_by:  # within one consumer, each key's messages come in publish order
        for p in range(producers):
            sequence = [int(m.value.split(b":")[1]) for m in received if m.key == f"study-{p}"]
            assert sequence == sorted(sequence)
