"""Message bus: publish protobuf messages to named topics, consume them with at-least-once delivery.

The embedded backend is in-process; the distributed one is Kafka. Both carry serialised protobuf bytes
keyed by a partition key (the study's pseudonymous key), so ordering per study is preserved."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    topic: str
    key: str
    value: bytes
    offset: int
    # Offsets count per partition: a backend with one log per topic (in memory) leaves it 0.
    partition: int = 0


class MessageBus(ABC):
    """At-least-once delivery: a message handed out by ``poll`` is handed out again to the same group
    until that group ``commit``s it, so a consumer that dies mid-way loses nothing."""

    @abstractmethod
    def publish(self, topic: str, key: str, value: bytes) -> None: ...

    @abstractmethod
    def poll(self, topic: str, group: str, max_messages: int = 1, timeout_s: float = 0.0) -> list[Message]: ...

    @abstractmethod
    def commit(self, message: Message, group: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook, most embedded backends hold nothing
        """Release connections; the default holds none."""


class InMemoryBus(MessageBus):
    """One process, many threads. Each (topic, group) has a committed offset and a set of messages
    handed out but not yet committed; uncommitted ones are redelivered after ``redeliver()``."""

    def __init__(self) -> None:
        self._log: dict[str, list[Message]] = defaultdict(list)
        self._next: dict[tuple[str, str], int] = defaultdict(int)
        self._pending: dict[tuple[str, str], deque[int]] = defaultdict(deque)
        self._done: dict[tuple[str, str], set[int]] = defaultdict(set)
        self._cond = threading.Condition()

    def publish(self, topic: str, key: str, value: bytes) -> None:
        with self._cond:
            log = self._log[topic]
            log.append(Message(topic, key, bytes(value), len(log)))
            self._cond.notify_all()

    def poll(self, topic: str, group: str, max_messages: int = 1, timeout_s: float = 0.0) -> list[Message]:
        slot = (topic, group)
        with self._cond:
            if not self._available(slot) and timeout_s > 0:
                self._cond.wait_for(lambda: self._available(slot), timeout=timeout_s)
            out: list[Message] = []
            pending = self._pending[slot]
            while pending and len(out) < max_messages:
                out.append(self._log[topic][pending.popleft()])
            while self._next[slot] < len(self._log[topic]) and len(out) < max_messages:
                out.append(self._log[topic][self._next[slot]])
                self._next[slot] += 1
            return out

    def commit(self, message: Message, group: str) -> None:
        with self._cond:
            self._done[(message.topic, group)].add(message.offset)

    def redeliver(self, topic: str, group: str) -> int:
        """Hand out again everything delivered to ``group`` but not committed (a consumer crashed)."""
        slot = (topic, group)
        with self._cond:
            pending = self._pending[slot]
            lost = [o for o in range(self._next[slot]) if o not in self._done[slot] and o not in pending]
            pending.extend(lost)
            self._cond.notify_all()
            return len(lost)

    def _available(self, slot: tuple[str, str]) -> bool:
        return bool(self._pending[slot]) or self._next[slot] < len(self._log[slot[0]])
