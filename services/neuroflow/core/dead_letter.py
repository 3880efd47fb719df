"""Parking a message on a stage's dead-letter topic, with the reason, for an operator to inspect and replay.

Used by the orchestrator (retries exhausted, a failure that is not retryable, a deadline passed on the
last attempt) and by workers (a message that cannot be decoded: poison). The parked bytes are kept
unchanged inside a ``tasks_pb2.DeadLetter``, so a replay sends exactly what was parked.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from neuroflow.core import topics
from neuroflow.core.bus import MessageBus
from neuroflow.proto.neuroflow.v1 import common_pb2, tasks_pb2

log = logging.getLogger(__name__)

# Partition key of dead letters whose study is unknown (undecodable bytes).
UNKNOWN_STUDY_KEY = "unknown"


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The current time as a protobuf Timestamp (UTC)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


def publish_dead_letter(
    bus: MessageBus,
    stage: common_pb2.Stage.ValueType,
    payload: bytes,
    reason: common_pb2.FailureReason,
    *,
    source_topic: str,
    task: tasks_pb2.TaskRequested | None = None,
    attempts: int = 0,
) -> tasks_pb2.DeadLetter:
    """Publish ``payload`` (the parked message's bytes) with ``reason`` to ``stage``'s dead-letter topic,
    keyed by the study's pseudonymous key when ``task`` (the decoded payload) is given. Returns what was
    published. Logs the parking with the study key and the reason (never UIDs)."""
    letter = tasks_pb2.DeadLetter(
        schema_version=topics.SCHEMA_VERSION, source_topic=source_topic, payload=payload, reason=reason,
        stage=stage, attempts=attempts, dead_lettered_at=now_timestamp(),
    )
    key = UNKNOWN_STUDY_KEY
    if task is not None:
        letter.workflow_id = task.workflow_id
        letter.study.CopyFrom(task.study)
        letter.pipeline = task.pipeline
        key = task.study.study_key or UNKNOWN_STUDY_KEY
    bus.publish(topics.dead_letter_topic(stage), key, letter.SerializeToString())
    log.warning("dead-lettered %s task of study %s (workflow %s) after %d attempt(s): %s: %s",
                topics.stage_name(stage), key, letter.workflow_id or "-", attempts,
                common_pb2.FailureReason.Code.Name(reason.code), reason.message)
    return letter
