"""Parking a message on a stage's dead-letter topic, with the reason, for an operator to inspect and replay.

Used by the orchestrator (retries exhausted, a failure that is not retryable, a deadline passed on the
last attempt) and by workers (a message that cannot be decoded: poison). A parked task is kept inside a
``tasks_pb2.DeadLetter`` without its UIDs and accession number (``without_identifiers``): dead letters are
read by operators and kept long after the study, and a replay needs none of them (it dispatches the stage
again from the workflow's own records). Undecodable bytes are parked unchanged.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

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


def _identifying(field: FieldDescriptor) -> bool:
    """DICOM UIDs (study, series, instance, the baseline's) and the accession number; the pseudonymous
    keys (study_key, patient_key) stay, they name the study to an operator."""
    return field.type == FieldDescriptor.TYPE_STRING and (
        field.name.endswith(("_uid", "_uids")) or field.name == "accession")


def without_identifiers(message: Message) -> None:
    """Clear, in place and in every nested message, the fields that identify (``_identifying``)."""
    for field, value in message.ListFields():
        if _identifying(field):
            message.ClearField(field.name)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:  # a map: its values may be messages
                mapped = entry.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE
                items = list(value.values()) if mapped else []
            else:
                items = list(value) if field.is_repeated else [value]
            for item in items:
                without_identifiers(item)


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
    keyed by the study's pseudonymous key when ``task`` (the decoded payload) is given; then ``task``
    without its identifiers is parked instead of ``payload``. Returns what was published. Logs the parking
    with the study key and the reason (never UIDs)."""
    if task is not None:
        parked = tasks_pb2.TaskRequested()
        parked.CopyFrom(task)
        without_identifiers(parked)
        task, payload = parked, parked.SerializeToString()
    # The reason may name the series at fault by UID (FailureReason.series_instance_uid): not in a dead letter.
    parked_reason = common_pb2.FailureReason()
    parked_reason.CopyFrom(reason)
    without_identifiers(parked_reason)
    letter = tasks_pb2.DeadLetter(
        schema_version=topics.SCHEMA_VERSION, source_topic=source_topic, payload=payload, reason=parked_reason,
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
