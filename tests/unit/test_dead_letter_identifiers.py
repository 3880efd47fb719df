"""A parked task carries no UID and no accession number (they would stay in dead-letter topics and rows for
as long as an operator keeps them); the keys, the stage, the attempt and what a replay looks at stay."""

from __future__ import annotations

from neuroflow.core import topics
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.dead_letter import publish_dead_letter
from neuroflow.proto.neuroflow.v1 import common_pb2, tasks_pb2

STUDY_UID, SERIES_UID, BASELINE_UID, ACCESSION = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3", "ACC-771"


def _task() -> tasks_pb2.TaskRequested:
    study = common_pb2.StudyRef(study_instance_uid=STUDY_UID, study_key="k1", patient_key="p1", site="north",
                                accession=ACCESSION)
    series = common_pb2.SeriesRef(series_instance_uid=SERIES_UID, role="T1", description="AX T1")
    return tasks_pb2.TaskRequested(
        workflow_id="w1", stage=common_pb2.STAGE_LONGITUDINAL, attempt=3, idempotency_key="i1", study=study,
        pipeline="ms_change", longitudinal=tasks_pb2.LongitudinalInput(series=[series],
                                                                       baseline_study_instance_uid=BASELINE_UID))


def test_a_dead_lettered_task_is_parked_without_uids_and_accession() -> None:
    bus = InMemoryBus()
    task = _task()
    # The reason names the series at fault by UID, as a worker's FailureReason does.
    reason = common_pb2.FailureReason(code=common_pb2.FailureReason.SERIES_REJECTED, message="study k1: blank",
                                      series_instance_uid=SERIES_UID)
    letter = publish_dead_letter(bus, task.stage, task.SerializeToString(), reason, source_topic="t", task=task,
                                 attempts=3)
    (message,) = bus.poll(topics.dead_letter_topic(task.stage), "reader", max_messages=10)
    for parked in (letter.SerializeToString(), message.value):
        for identifier in (STUDY_UID, SERIES_UID, BASELINE_UID, ACCESSION):
            assert identifier.encode() not in parked
    kept = tasks_pb2.TaskRequested.FromString(letter.payload)
    assert (kept.workflow_id, kept.attempt, kept.idempotency_key, kept.study.study_key, kept.study.patient_key) == (
        "w1", 3, "i1", "k1", "p1")
    assert kept.longitudinal.series[0].role == "T1" and letter.study.study_key == "k1"
    assert task.study.study_instance_uid == STUDY_UID  # the caller's task is left as it was
    assert letter.reason.message == "study k1: blank" and reason.series_instance_uid == SERIES_UID
