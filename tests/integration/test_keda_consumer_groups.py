"""The chart's KEDA scalers watch consumer groups and topics that exist: real stage workers on a real broker
(tests/servers/kafka.py) consume their task topics, and every group and topic the rendered ScaledObjects
name is then in the broker's own lists (issue 11, defect 6: the chart watched ``neuroflow.<stage>`` while
the workers' Kafka groups are ``neuroflow.<stage>.<topic>``, so KEDA read no lag at all)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from neuroflow.core import topics
from neuroflow.core.kafka_bus import KafkaBus
from neuroflow.core.records import FolderRecordStore
from neuroflow.core.worker import StageOutput, StageWorker
from neuroflow.proto.neuroflow.v1 import tasks_pb2
from tests.deploy.test_helm_chart import example_values, of_kind, render
from tests.servers.kafka import KafkaServer

# Joining a group on a fresh broker takes a few seconds; a busy machine may need many times that.
GROUPS_APPEAR_WITHIN_S = 120.0


def never_called(task: tasks_pb2.TaskRequested) -> StageOutput:
    raise AssertionError(f"no task was published, yet the worker got {task.idempotency_key}")


def broker_groups(admin: AdminClient) -> set[str]:
    listed = admin.list_consumer_groups(request_timeout=10).result()
    return {group.group_id for group in listed.valid}


def test_every_consumer_group_and_topic_the_chart_scales_on_exists_on_a_broker_running_the_workers(
        kafka_server: KafkaServer, tmp_path: Path) -> None:
    scaled = of_kind(render(example_values("site-north"), release="north"), "ScaledObject")
    watched = {(t["metadata"]["consumerGroup"], t["metadata"]["topic"])
               for s in scaled for t in s["spec"]["triggers"] if t["type"] == "kafka"}
    assert len(scaled) == len(topics.STAGES) and len(watched) == 2 * len(topics.STAGES)

    bus = KafkaBus(kafka_server.bootstrap)
    workers = [StageWorker(bus, stage, never_called, FolderRecordStore(tmp_path / "records"), poll_timeout_s=0.2)
               for stage in topics.STAGES]
    threads = [threading.Thread(target=w.run, name=w.name, daemon=True) for w in workers]
    admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap})
    try:
        for thread in threads:
            thread.start()
        wanted = {group for group, _ in watched}
        deadline = time.monotonic() + GROUPS_APPEAR_WITHIN_S
        groups = broker_groups(admin)
        while not wanted <= groups and time.monotonic() < deadline:
            time.sleep(0.5)
            groups = broker_groups(admin)
        missing = sorted(wanted - groups)
        assert not missing, (f"the chart's ScaledObjects watch consumer groups the broker does not have: {missing}; "
                             f"the workers' groups are {sorted(g for g in groups if g.startswith('neuroflow.'))}")
        broker_topics = set(admin.list_topics(timeout=10).topics)
        assert {topic for _, topic in watched} <= broker_topics
        # Each group reads the topic the scaler pairs it with (a lag read on another topic would be 0).
        described = admin.describe_consumer_groups(sorted(wanted), request_timeout=10)
        for group, topic in watched:
            members = described[group].result().members
            assigned = {tp.topic for m in members for tp in m.assignment.topic_partitions}
            assert assigned == {topic}, f"group {group} reads {assigned}, the chart says {topic}"
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=30)
        bus.close()
