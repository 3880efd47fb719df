"""What a commit failure means for a worker (our logic over librdkafka's error codes): a consumer that left
its group (a session timeout on a starved machine) must not retry the commit for ever, since only its next
poll makes it rejoin; the chaos run saw a worker stuck on "Waiting for coordinator" so. A broker that cannot
take the commit is still an error the worker retries."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from neuroflow.core.bus import Message
from neuroflow.core.errors import BusError
from neuroflow.core.kafka_bus import KafkaBus

MESSAGE = Message(topic="neuroflow.v1.task.preprocess", key="k", value=b"", offset=5, partition=0)


def _bus() -> KafkaBus:
    bus = object.__new__(KafkaBus)  # no broker needed: only the error handling is under test
    bus.bootstrap = "127.0.0.1:9"
    return bus


@pytest.mark.parametrize("code", [KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION,
                                  KafkaError.REBALANCE_IN_PROGRESS, KafkaError._WAIT_COORD,
                                  KafkaError._ASSIGNMENT_LOST])
def test_a_consumer_out_of_its_group_gives_the_commit_up_so_its_next_poll_rejoins(code: int) -> None:
    _bus()._on_commit_error(KafkaError(code), MESSAGE, "neuroflow.preprocess")  # no exception: not retried


def test_a_commit_the_broker_cannot_take_is_still_an_error_the_worker_retries() -> None:
    with pytest.raises(BusError):
        _bus()._on_commit_error(KafkaError(KafkaError.REQUEST_TIMED_OUT), MESSAGE, "neuroflow.preprocess")
