"""Bus topic names: the one place they are spelled. Services call these, never type a topic string.

Every name starts with the contract's protobuf package (``neuroflow.v1.``), so a future incompatible
contract (``neuroflow.v2``) gets its own topics and both can run side by side during a migration.
Each topic carries exactly one message type of ``proto/neuroflow/v1``, named beside it below.
"""

from __future__ import annotations

from dataclasses import dataclass

from neuroflow.proto.neuroflow.v1 import common_pb2

# The protobuf package of the contract ("neuroflow.v1"), which versions the topic names too.
CONTRACT_PACKAGE: str = common_pb2.DESCRIPTOR.package
PREFIX = f"{CONTRACT_PACKAGE}."
# The contract revision producers write into every message's ``schema_version``: the newest one.
SCHEMA_VERSION: int = max(common_pb2.SchemaVersion.values())

STUDY_READY = f"{PREFIX}study-ready"  # events_pb2.StudyReady
ROUTING_FAILED = f"{PREFIX}routing-failed"  # events_pb2.RoutingFailed
RESULTS_STORED = f"{PREFIX}results-stored"  # events_pb2.ResultsStored
TASK_DONE = f"{PREFIX}task-done"  # tasks_pb2.TaskDone, every stage (its `stage` field says which)
TASK_FAILED = f"{PREFIX}task-failed"  # tasks_pb2.TaskFailed, every stage

# Every stage that has a worker; STAGE_UNSPECIFIED has no topics.
STAGES: tuple[common_pb2.Stage.ValueType, ...] = tuple(
    value for value in common_pb2.Stage.values() if value != common_pb2.STAGE_UNSPECIFIED
)


def stage_name(stage: common_pb2.Stage.ValueType) -> str:
    """The short lower-case name of ``stage`` used in topic names (STAGE_PREPROCESS -> "preprocess").

    Refuses STAGE_UNSPECIFIED and values this revision of the contract does not know (ValueError)."""
    if stage not in STAGES:
        raise ValueError(f"no topics for stage {stage!r}: expected one of "
                         f"{[common_pb2.Stage.Name(s) for s in STAGES]}")
    return common_pb2.Stage.Name(stage).removeprefix("STAGE_").lower()


def task_topic(stage: common_pb2.Stage.ValueType) -> str:
    """Topic the orchestrator publishes ``tasks_pb2.TaskRequested`` of ``stage`` to, and its workers read."""
    return f"{PREFIX}task.{stage_name(stage)}"


def urgent_task_topic(stage: common_pb2.Stage.ValueType) -> str:
    """Topic for ``tasks_pb2.TaskRequested`` of ``stage`` whose priority is PRIORITY_URGENT. Workers read it
    before ``task_topic``: a separate topic rather than a priority field, because a Kafka partition is a
    queue in arrival order and cannot let an urgent message overtake routine ones already in it."""
    return f"{task_topic(stage)}.urgent"


def task_topics_by_priority(stage: common_pb2.Stage.ValueType) -> tuple[str, str]:
    """The task topics of ``stage`` in the order a worker reads them: urgent first, then routine."""
    return urgent_task_topic(stage), task_topic(stage)


def dead_letter_topic(stage: common_pb2.Stage.ValueType) -> str:
    """Topic where ``tasks_pb2.DeadLetter`` of ``stage`` go (the parked TaskRequested, or undecodable bytes,
    with the reason) when retries are exhausted or the failure is not retryable, for an operator to inspect
    and replay. One per stage so a flood of one stage's failures does not bury another's."""
    return f"{PREFIX}dead-letter.{stage_name(stage)}"


# Consumer groups: the group is what makes several copies of a service share its topics' messages.
ORCHESTRATOR_GROUP = "neuroflow.orchestrator"
# What the orchestrator consumes (in ORCHESTRATOR_GROUP).
# ROUTING_FAILED: a study refused for a pipeline that files a failure notice gets one (orchestrator.py).
ORCHESTRATOR_READS = (STUDY_READY, TASK_DONE, TASK_FAILED, ROUTING_FAILED)


def worker_group(stage: common_pb2.Stage.ValueType) -> str:
    """Bus consumer group of ``stage``'s workers ("neuroflow.preprocess"): every copy joins it, so each task
    goes to one of them. On Kafka each of its topics has its own group (``kafka_group_id``)."""
    return f"neuroflow.{stage_name(stage)}"


def kafka_group_id(topic: str, group: str) -> str:
    """The Kafka consumer group behind bus group ``group`` reading ``topic``: one per pair. A service reads
    several topics under one bus group; were they one Kafka group, a rebalance on any topic would wait for
    the consumers of every topic to poll again, and a topic polled rarely would stall the others. This is
    the name the broker lists, Kafka's tools show lag for and the chart's KEDA scalers watch."""
    return f"{group}.{topic}"


def worker_kafka_groups(stage: common_pb2.Stage.ValueType) -> dict[str, str]:
    """The Kafka consumer group of ``stage``'s workers on each of its task topics, by topic, urgent first."""
    return {topic: kafka_group_id(topic, worker_group(stage)) for topic in task_topics_by_priority(stage)}


def all_topics() -> list[str]:
    """Every topic neuroflow uses, e.g. to create them on a Kafka cluster at deployment."""
    per_stage = [topic(stage) for stage in STAGES
                 for topic in (task_topic, urgent_task_topic, dead_letter_topic)]
    return [STUDY_READY, ROUTING_FAILED, RESULTS_STORED, TASK_DONE, TASK_FAILED, *per_stage]


# --- Who may use which topic: the broker's ACLs per service principal are made from this (core/kafka_acl.py,
# the dev stack's broker, the chart's KafkaUser objects through files/topics.yaml). A topic's owners are its
# producers: a service writes only what it produces and reads only what is addressed to it.
INGEST = "ingest"
ORCHESTRATOR = "orchestrator"
MONITOR = "monitor"


@dataclass(frozen=True)
class TopicAccess:
    """What one service does on the bus: topics it produces to, topics it consumes, and the bus groups it
    consumes them in (Kafka groups ``kafka_group_id(topic, group)``, so every one starts with ``group + "."``).
    ``describes``: topics and groups it only looks at (the monitor's consumer lag)."""

    writes: tuple[str, ...]
    reads: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    describes: tuple[str, ...] = ()
    describes_groups: tuple[str, ...] = ()


def _worker_access(stage: common_pb2.Stage.ValueType, *also_writes: str) -> TopicAccess:
    return TopicAccess(writes=(TASK_DONE, TASK_FAILED, dead_letter_topic(stage), *also_writes),
                       reads=task_topics_by_priority(stage), groups=(worker_group(stage),))


def service_access() -> dict[str, TopicAccess]:
    """Each service's use of the bus, by service name (the stage workers are named after their stage)."""
    workers = {stage_name(stage): _worker_access(stage) for stage in STAGES}
    # results announces what it stored; longitudinal too, and it publishes StudyReady again when a prior arrives.
    workers[stage_name(common_pb2.STAGE_RESULTS)] = _worker_access(common_pb2.STAGE_RESULTS, RESULTS_STORED)
    workers[stage_name(common_pb2.STAGE_LONGITUDINAL)] = _worker_access(common_pb2.STAGE_LONGITUDINAL,
                                                                        RESULTS_STORED, STUDY_READY)
    orchestrator_reads = ORCHESTRATOR_READS
    watched = [(ORCHESTRATOR_GROUP, orchestrator_reads),
               *((worker_group(stage), task_topics_by_priority(stage)) for stage in STAGES)]
    return {
        INGEST: TopicAccess(writes=(STUDY_READY, ROUTING_FAILED)),
        ORCHESTRATOR: TopicAccess(
            writes=tuple(topic for stage in STAGES
                         for topic in (*task_topics_by_priority(stage), dead_letter_topic(stage))),
            reads=orchestrator_reads, groups=(ORCHESTRATOR_GROUP,)),
        **workers,
        MONITOR: TopicAccess(writes=(), describes=tuple(t for _, ts in watched for t in ts),
                             describes_groups=tuple(group for group, _ in watched)),
    }
