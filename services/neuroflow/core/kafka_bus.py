"""Kafka backend of the message bus (confluent-kafka over librdkafka), for the distributed runtime.

Delivery is at-least-once, as ``MessageBus`` promises:

* ``publish`` returns only after the broker acknowledged the message with every in-sync replica
  (``acks=all``, idempotent producer, so a retried send is not written twice). A message that could
  not be acknowledged in time raises ``BusUnavailable``: nothing is silently dropped, and the caller
  may publish it again.
* ``poll`` reads through one consumer per (topic, group) held by this bus; offsets are never committed
  automatically. ``commit`` commits synchronously the offset after the message, so once it returns a
  later consumer of the group starts after that message. Kafka commits a position per partition:
  committing a message also commits the earlier messages of its partition, which is why the contract
  asks consumers to commit in delivery order.
* Each (topic, group) is its own Kafka consumer group, named by ``topics.kafka_group_id`` (what the
  Kafka tools show for consumer lag).
* A consumer that dies (``close_consumer``, or its process ends) leaves what it had not committed to
  the group's next consumer, which reads it again.

Keys are the study's pseudonymous key and choose the partition with Kafka's Java-compatible murmur2
hash, so one study's messages keep their order and land where a Java client would put them too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where it is defined; confluent_kafka.admin re-exports it untyped

from neuroflow.core.bus import Message, MessageBus
from neuroflow.core.errors import BusError, BusUnavailable
from neuroflow.core.topics import kafka_group_id

log = logging.getLogger(__name__)

# Commit answers that mean "this consumer no longer owns the partition": the group moved on (a
# rebalance) and the message will be delivered again to its new owner. Not a failure of the bus.
_OWNERSHIP_LOST = frozenset({
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID,
    # Local states of a consumer that left its group (a session timeout under load) and has not joined
    # again: only a poll makes it rejoin, so retrying the commit would wait for ever (the chaos run saw a
    # worker stuck so). The message goes again to the partition's owner; the handler's recorded answer
    # makes that a replay.
    KafkaError._WAIT_COORD,
    KafkaError._ASSIGNMENT_LOST,
})
# Answers that mean the broker cannot be reached or is not serving the request right now.
_UNREACHABLE = frozenset({
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
})

# Answers that mean the broker is there but will not talk to this client as configured.
_REFUSED = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED})


class KafkaBus(MessageBus):
    """The message bus on a Kafka cluster at ``bootstrap`` ("host:port[,host:port...]").

    Construction checks that the cluster answers within ``timeout_s`` and raises ``BusUnavailable``
    naming the address otherwise. ``publish_timeout_s`` bounds how long ``publish`` waits for the
    acknowledgement. ``session_timeout_s`` is how soon the group notices a consumer that vanished
    without leaving; ``max_poll_interval_s`` is how long a consumer may spend on one batch before the
    group gives its partitions to another consumer (longer than the slowest stage, or work is done
    twice). ``security``: the librdkafka security properties (``kafka_security.client_security``: TLS,
    SASL credentials); a broker that refuses them raises ``BusError`` naming the refusal. Safe to share
    between threads.
    """

    def __init__(self, bootstrap: str, *, client_id: str = "neuroflow", timeout_s: float = 10.0,
                 publish_timeout_s: float = 30.0, session_timeout_s: float = 6.0,
                 max_poll_interval_s: float = 900.0, security: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self._timeout_s = timeout_s
        self._publish_timeout_s = publish_timeout_s
        # Set when a client lost every broker; poll then checks the cluster before it waits on it.
        self._broker_down = threading.Event()
        # The last authentication or TLS failure a client reported: why a broker that is up does not answer.
        self._refusal: KafkaError | None = None
        # librdkafka's own log lines go to this module's logger, not straight to stderr.
        self._common: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": client_id, "logger": log,
                                        "error_cb": self._on_client_error, **(security or {})}
        self._session_timeout_ms = int(session_timeout_s * 1000)
        self._max_poll_interval_ms = int(max_poll_interval_s * 1000)
        self._admin = AdminClient(dict(self._common))
        try:
            self._admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            self._admin.poll(0)  # serves the error callbacks: an authentication or TLS refusal says why
            del self._admin  # stops its reconnect attempts now rather than at garbage collection
            if self._refusal is not None:
                raise BusError(f"Kafka at {bootstrap} refused this client: {self._refusal.str()}; check "
                               "bus.security_protocol, bus.username and its password, and bus.ca_file") from None
            raise BusUnavailable(f"Kafka at {bootstrap} did not answer within {timeout_s:g} s "
                                 f"({exc.args[0].str()}); is the broker running? "
                                 "(scripts/kafka.sh status)") from None
        self._producer = Producer({
            **self._common,
            "acks": "all",
            "enable.idempotence": True,
            # Each publish waits for its acknowledgement, so waiting to fill a batch only adds latency.
            "linger.ms": 0,
            "partitioner": "murmur2_random",
            # librdkafka retries a send until this passes, then reports it failed (never drops it quietly).
            "message.timeout.ms": int(publish_timeout_s * 1000),
        })
        self._consumers: dict[tuple[str, str], Consumer] = {}
        # Partitions each consumer owns, kept from its rebalance callbacks: asking librdkafka from another
        # thread (Consumer.assignment) blocks while a rebalance waits for the polling thread.
        self._owned: dict[tuple[str, str], set[int]] = {}
        self._lock = threading.Lock()
        self._closed = False

    # --- MessageBus ---------------------------------------------------------------------------------

    def publish(self, topic: str, key: str, value: bytes) -> None:
        """Append ``value`` under ``key`` to ``topic`` (created on first use); returns once the broker
        acknowledged it. Raises ``BusUnavailable`` when no acknowledgement came within
        ``publish_timeout_s``, ``BusError`` when the broker refused the message."""
        acknowledged = threading.Event()
        outcome: list[KafkaError | None] = []

        def on_delivery(error: KafkaError | None, _record: Any) -> None:
            outcome.append(error)
            acknowledged.set()

        deadline = time.monotonic() + self._publish_timeout_s + 5.0
        while True:
            try:
                self._producer.produce(topic, value=value, key=key.encode(), on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let deliveries drain, then try again
                self._producer.poll(0.05)
                if time.monotonic() > deadline:
                    raise BusUnavailable(f"Kafka at {self.bootstrap} takes no messages: the send queue "
                                         f"stayed full for {self._publish_timeout_s:.0f} s") from None
        # Delivery reports are served by whichever thread polls the producer; each publisher polls until
        # its own report arrived (possibly served by another thread).
        while not acknowledged.is_set():
            if time.monotonic() > deadline:
                raise BusUnavailable(f"Kafka at {self.bootstrap} did not acknowledge a message to {topic} "
                                     f"(key {key}) within {self._publish_timeout_s:.0f} s")
            self._producer.poll(0.01)
        error = outcome[0]
        if error is not None:
            raise _bus_error(error, f"publishing to {topic} (key {key}) on Kafka at {self.bootstrap}")

    def poll(self, topic: str, group: str, max_messages: int = 1, timeout_s: float = 0.0) -> list[Message]:
        """Up to ``max_messages`` messages of ``topic`` for ``group``, waiting up to ``timeout_s`` for the
        first. The first poll of a (topic, group) joins the group, which takes the broker a moment."""
        if self._broker_down.is_set():
            self._check_reachable(max(1.0, timeout_s))
        consumer = self._consumer(topic, group)
        deadline = time.monotonic() + timeout_s
        out: list[Message] = []
        # consume() waits until it has ``num_messages`` or the time is up; the contract returns as soon as
        # there is something. So: wait for one, then take what is already there without waiting.
        while not out:
            remaining = max(0.0, deadline - time.monotonic())
            out.extend(self._consume(consumer, 1, remaining, topic, group))
            if remaining <= 0.0:
                break
        if out and max_messages > 1:
            out.extend(self._consume(consumer, max_messages - 1, 0.0, topic, group))
        return out

    def commit(self, message: Message, group: str) -> None:
        """Commit ``message`` (and so the earlier ones of its partition) for ``group``, synchronously.

        If this bus's consumer no longer owns the partition (it was closed, or the group rebalanced),
        nothing is committed and a warning is logged: the message is delivered again to the partition's
        owner, which the idempotent handlers absorb. Raises ``BusUnavailable`` when the broker cannot
        take the commit."""
        with self._lock:
            consumer = self._consumers.get((message.topic, group))
        if consumer is None:
            log.warning("not committing %s[%d]@%d for group %s: its consumer was closed; it will be "
                        "delivered again (key %s)", message.topic, message.partition, message.offset, group,
                        message.key)
            return
        position = TopicPartition(message.topic, message.partition, message.offset + 1)
        try:
            answers = consumer.commit(offsets=[position], asynchronous=False)
        except KafkaException as exc:
            self._on_commit_error(exc.args[0], message, group)
            return
        for answer in answers or []:
            if answer.error is not None:
                self._on_commit_error(answer.error, message, group)

    def close(self) -> None:
        """Close every consumer (committing nothing more) and deliver what is still queued to send."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            consumers = list(self._consumers.values())
            self._consumers.clear()
            self._owned.clear()
        for consumer in consumers:
            consumer.close()
        unsent = self._producer.flush(self._timeout_s)
        if unsent:
            log.error("%d message(s) to Kafka at %s were not acknowledged before close", unsent, self.bootstrap)

    # --- Kafka-specific -----------------------------------------------------------------------------

    def close_consumer(self, topic: str, group: str) -> None:
        """Close this bus's consumer of (``topic``, ``group``) without committing anything more, as a
        crashed worker would: what it had not committed goes to the group's next consumer. The next
        ``poll`` of that pair starts a new consumer."""
        with self._lock:
            consumer = self._consumers.pop((topic, group), None)
            self._owned.pop((topic, group), None)
        if consumer is not None:
            consumer.close()

    def assigned_partitions(self, topic: str, group: str) -> list[int]:
        """The partitions of ``topic`` this bus's consumer for ``group`` owns now (empty before its first
        poll, while the group rebalances, or when other consumers of the group own them all)."""
        with self._lock:
            return sorted(self._owned.get((topic, group), ()))

    def ensure_topics(self, names: Iterable[str], partitions: int | None = None) -> list[str]:
        """Create each topic in ``names`` that does not exist yet, with ``partitions`` partitions (None:
        the cluster's ``num.partitions``) and the cluster's default replication; returns the names it
        created. Existing topics are left as they are (never shrunk or recreated). Raises
        ``BusUnavailable`` or ``BusError`` when the cluster cannot create them."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return []
        futures = self._admin.create_topics([NewTopic(name, num_partitions=-1 if partitions is None else partitions)
                                             for name in wanted],
                                            request_timeout=self._timeout_s)
        created: list[str] = []
        for name, future in futures.items():
            try:
                future.result(timeout=self._timeout_s)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise _bus_error(error, f"creating topic {name} on Kafka at {self.bootstrap}") from exc
            created.append(name)
        self._wait_until_visible(wanted)
        return created

    # --- internals ----------------------------------------------------------------------------------

    def _wait_until_visible(self, names: list[str]) -> None:
        """Return once the cluster's metadata lists every topic in ``names`` with a leader for each
        partition: a client asking sooner may be told the topic does not exist yet."""
        deadline = time.monotonic() + self._timeout_s
        missing = list(names)
        while missing:
            try:
                topics = self._admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
            except KafkaException as exc:
                raise _bus_error(exc.args[0], f"listing topics on Kafka at {self.bootstrap}") from exc
            missing = [name for name in missing
                       if name not in topics or topics[name].error is not None or not topics[name].partitions
                       or any(p.leader < 0 for p in topics[name].partitions.values())]
            if missing and time.monotonic() > deadline:
                raise BusUnavailable(f"Kafka at {self.bootstrap} did not show the topics {missing} within "
                                     f"{self._timeout_s:g} s of creating them")
            if missing:
                time.sleep(0.02)

    def _consumer(self, topic: str, group: str) -> Consumer:
        with self._lock:
            if self._closed:
                raise BusError(f"the bus to Kafka at {self.bootstrap} is closed")
            consumer = self._consumers.get((topic, group))
            if consumer is None:
                consumer = Consumer({
                    **self._common,
                    "group.id": kafka_group_id(topic, group),
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": self._session_timeout_ms,
                    "heartbeat.interval.ms": max(100, self._session_timeout_ms // 3),
                    "max.poll.interval.ms": self._max_poll_interval_ms,
                })
                # A consumer may start before the first publish. Subscribing to a topic that does not exist
                # yet would see it only at the next metadata refresh, seconds after the first publish.
                self.ensure_topics([topic])
                consumer.subscribe([topic], on_assign=self._on_assign(topic, group),
                                   on_revoke=self._on_revoke(topic, group), on_lost=self._on_revoke(topic, group))
                self._consumers[(topic, group)] = consumer
            return consumer

    def _on_client_error(self, error: KafkaError) -> None:
        """Errors librdkafka reports outside any one call (served on the thread that polls the client)."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._broker_down.set()
        if error.code() in _REFUSED:
            self._refusal = error
        log.warning("Kafka at %s: %s", self.bootstrap, error.str())

    def _check_reachable(self, timeout_s: float) -> None:
        """Clear the broker-down mark if the cluster answers within ``timeout_s``; BusUnavailable if not."""
        try:
            self._admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise BusUnavailable(f"Kafka at {self.bootstrap} is unreachable: no broker answered within "
                                 f"{timeout_s:g} s ({exc.args[0].str()})") from None
        self._broker_down.clear()

    # The classic group protocol with an eager assignor: each assignment is the whole new set and each
    # revocation takes everything. librdkafka assigns by itself after these callbacks return.
    def _on_assign(self, topic: str, group: str) -> Callable[[Consumer, list[TopicPartition]], None]:
        def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            with self._lock:
                self._owned[(topic, group)] = {tp.partition for tp in partitions if tp.topic == topic}
        return on_assign

    def _on_revoke(self, topic: str, group: str) -> Callable[[Consumer, list[TopicPartition]], None]:
        def on_revoke(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
            with self._lock:
                self._owned.pop((topic, group), None)
        return on_revoke

    def _consume(self, consumer: Consumer, count: int, timeout_s: float, topic: str, group: str) -> list[Message]:
        out: list[Message] = []
        for record in consumer.consume(num_messages=count, timeout=timeout_s):
            error = record.error()
            if error is not None:  # an event, not a message
                self._on_consumer_event(error, topic, group)
                continue
            record_topic, offset, partition = record.topic(), record.offset(), record.partition()
            if record_topic is None or offset is None or partition is None:  # only events lack these
                raise BusError(f"consumer of {topic} for group {group} got a record without a position")
            raw_key = record.key()
            out.append(Message(
                topic=record_topic,
                key=raw_key.decode(errors="replace") if isinstance(raw_key, bytes) else str(raw_key or ""),
                value=bytes(record.value() or b""),
                offset=offset,
                partition=partition,
            ))
        return out

    def _on_consumer_event(self, error: KafkaError, topic: str, group: str) -> None:
        """Errors reported among consumed records: most are informational and librdkafka recovers from
        them by itself; losing every broker and fatal client errors are raised."""
        if error.fatal():
            raise BusError(f"consumer of {topic} for group {group} on Kafka at {self.bootstrap} failed: "
                           f"{error.str()}")
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            raise BusUnavailable(f"lost every connection to Kafka at {self.bootstrap} while consuming {topic} "
                                 f"for group {group}; the consumer keeps reconnecting")
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            log.debug("topic %s does not exist yet; waiting for it (group %s)", topic, group)
            return
        log.warning("consumer of %s for group %s: %s", topic, group, error.str())

    def _on_commit_error(self, error: KafkaError, message: Message, group: str) -> None:
        where = f"{message.topic}[{message.partition}]@{message.offset} for group {group} (key {message.key})"
        if error.code() in _OWNERSHIP_LOST:
            log.warning("not committed %s: the consumer lost the partition (%s); it will be delivered again",
                        where, error.str())
            return
        raise _bus_error(error, f"committing {where} on Kafka at {self.bootstrap}")


def _bus_error(error: KafkaError, doing: str) -> BusError:
    """``BusUnavailable`` when the broker could not be reached or did not answer in time, else ``BusError``."""
    if error.code() in _UNREACHABLE or error.retriable():
        return BusUnavailable(f"{doing}: {error.str()}")
    return BusError(f"{doing}: {error.str()}")
