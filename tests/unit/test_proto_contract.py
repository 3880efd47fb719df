"""The message contract: generated code matches proto/, every message survives the wire, and a consumer
built from this revision keeps working with a producer built from a newer one."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import Message

from neuroflow.core import topics
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
GEN_PROTO = REPOSITORY_ROOT / "scripts" / "gen_proto.py"
CONTRACT_MODULES = (common_pb2, events_pb2, tasks_pb2)
V = topics.SCHEMA_VERSION


def _study() -> common_pb2.StudyRef:
    return common_pb2.StudyRef(study_instance_uid="1.2.826.0.1.3680043.8.498.1", study_key="3f2a9c1b7d4e",
                               patient_key="p-8c1e", site="site-a", accession="ACC0042")


def _series(role: str, n: int) -> common_pb2.SeriesRef:
    return common_pb2.SeriesRef(series_instance_uid=f"1.2.3.{n}", role=role, description=f"{role} axial",
                                instance_count=150 + n)


def _volume(name: str) -> common_pb2.VolumeRef:
    return common_pb2.VolumeRef(uri=f"file:///volumes/3f2a9c1b7d4e/wf-1/{name}.json", sha256="ab" * 32)


def _time(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=125_000_000)


MODEL = common_pb2.ModelRef(name="glioma_unet", version=2)

def _failure() -> tasks_pb2.FailureNotice:
    return tasks_pb2.FailureNotice(failed_stage="preprocess", retryable=True,
                                   reason="study 3f2a: preprocess failed: a slice is missing")


# One fully populated example of every message of the contract (nested payloads included).
EXAMPLES: dict[str, Callable[[], Message]] = {
    "StudyRef": _study,
    "SeriesRef": lambda: _series("FLAIR", 4),
    "VolumeRef": lambda: _volume("t1ce"),
    "ModelRef": lambda: MODEL,
    "FailureReason": lambda: common_pb2.FailureReason(
        code=common_pb2.FailureReason.STORAGE_UNAVAILABLE,
        message="study 3f2a9c1b7d4e series 1.2.3.4: DICOM source did not answer", retryable=True,
        series_instance_uid="1.2.3.4"),
    "StudyReady": lambda: events_pb2.StudyReady(
        schema_version=V, study=_study(), pipeline="glioma",
        series=[_series(r, i) for i, r in enumerate(("T1", "T1CE", "T2", "FLAIR"))], input_hash="c0ffee" * 8,
        study_version=2, priority=common_pb2.PRIORITY_URGENT, ready_at=_time(1_700_000_000),
        baseline_study_instance_uid="1.2.826.0.1.3680043.8.498.0", prior_wait_expired=True),
    "RoutingFailed": lambda: events_pb2.RoutingFailed(
        schema_version=V, study=_study(), reason=events_pb2.RoutingFailed.AMBIGUOUS_ROLE,
        message="study 3f2a9c1b7d4e: two series qualify as FLAIR", pipeline="glioma",
        series_instance_uid="1.2.3.9", failed_at=_time(1_700_000_001)),
    "ResultsStored": lambda: events_pb2.ResultsStored(
        schema_version=V, study=_study(), pipeline="glioma", workflow_id="wf-1",
        sop_instance_uids=["1.2.9.1", "1.2.9.2"], destination="orthanc-site-a", model=MODEL,
        stored_at=_time(1_700_000_100)),
    "PreprocessInput": lambda: tasks_pb2.PreprocessInput(series=[_series("T1", 1)], reference_role="T1CE",
                                                         prior_study_instance_uid="1.2.8"),
    "PreprocessOutput": lambda: tasks_pb2.PreprocessOutput(volumes={"T1": _volume("t1")},
                                                           brain_mask=_volume("mask"),
                                                           prior_tumour=_volume("prior_tumour")),
    "SegmentationInput": lambda: tasks_pb2.SegmentationInput(volumes={"T1CE": _volume("t1ce")},
                                                             brain_mask=_volume("mask"), model=MODEL,
                                                             prior_tumour=_volume("prior_tumour")),
    "SegmentationOutput": lambda: tasks_pb2.SegmentationOutput(label_map=_volume("labels"),
                                                               region_volumes_ml={"WT": 41.25, "ET": 7.5},
                                                               model=MODEL),
    "ResultsInput": lambda: tasks_pb2.ResultsInput(
        label_map=_volume("labels"), referenced_series=[_series("T1CE", 2)], region_volumes_ml={"TC": 12.0},
        model=MODEL, destination="orthanc-site-a", failure=_failure()),
    "FailureNotice": _failure,
    "ResultsOutput": lambda: tasks_pb2.ResultsOutput(sop_instance_uids=["1.2.9.1"],
                                                     destination="orthanc-site-a"),
    "LongitudinalInput": lambda: tasks_pb2.LongitudinalInput(
        series=[_series("FLAIR", 4)], baseline_study_instance_uid="1.2.826.0.1.3680043.8.498.0",
        prior_wait_expired=True, destination="pacs"),
    "LongitudinalOutput": lambda: tasks_pb2.LongitudinalOutput(
        outcome=tasks_pb2.LongitudinalOutput.WAITING_FOR_PRIOR, sop_instance_uids=["1.2.9.3"], destination="pacs",
        baseline_study_instance_uid="1.2.826.0.1.3680043.8.498.0", waiting_until=_time(1_700_086_400),
        reason="the study has an empty PatientID (0010,0020)"),
    "TaskRequested": lambda: tasks_pb2.TaskRequested(
        schema_version=V, workflow_id="wf-1", stage=common_pb2.STAGE_SEGMENTATION, attempt=2,
        idempotency_key="wf-1/segmentation", deadline=_time(1_700_000_900), study=_study(), pipeline="glioma",
        priority=common_pb2.PRIORITY_ROUTINE,
        segmentation=tasks_pb2.SegmentationInput(volumes={"FLAIR": _volume("flair")}, model=MODEL)),
    "TaskDone": lambda: tasks_pb2.TaskDone(
        schema_version=V, workflow_id="wf-1", stage=common_pb2.STAGE_RESULTS, attempt=1,
        idempotency_key="wf-1/results", study=_study(), pipeline="glioma", finished_at=_time(1_700_000_950),
        duration_s=12.5, results=tasks_pb2.ResultsOutput(sop_instance_uids=["1.2.9.1"], destination="pacs"),
        worker="results-worker/host-1-abc123"),
    "TaskFailed": lambda: tasks_pb2.TaskFailed(
        schema_version=V, workflow_id="wf-1", stage=common_pb2.STAGE_PREPROCESS, attempt=3,
        idempotency_key="wf-1/preprocess", study=_study(), pipeline="glioma",
        reason=common_pb2.FailureReason(code=common_pb2.FailureReason.INFERENCE_UNAVAILABLE,
                                        message="model deepbet:1 not ready", retryable=True),
        failed_at=_time(1_700_000_960)),
    "DeadLetter": lambda: tasks_pb2.DeadLetter(
        schema_version=V, source_topic="neuroflow.v1.task.results", payload=b"\x0a\x01garbled",
        reason=common_pb2.FailureReason(code=common_pb2.FailureReason.DESTINATION_UNAVAILABLE,
                                        message="PACS did not answer after 3 attempts", retryable=True),
        workflow_id="wf-1", stage=common_pb2.STAGE_RESULTS, attempts=3, study=_study(), pipeline="glioma",
        dead_lettered_at=_time(1_700_001_000)),
}
# Messages published on a topic, as opposed to parts of them.
TOP_LEVEL = ("StudyReady", "RoutingFailed", "ResultsStored", "TaskRequested", "TaskDone", "TaskFailed",
             "DeadLetter")


def _contract_messages() -> list[str]:
    return sorted(name for module in CONTRACT_MODULES for name in module.DESCRIPTOR.message_types_by_name)


def _load_gen_proto() -> Any:  # the script's module, with its constants and functions
    spec = importlib.util.spec_from_file_location("gen_proto", GEN_PROTO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_is_what_the_protos_generate() -> None:
    result = subprocess.run([sys.executable, str(GEN_PROTO), "--check"], capture_output=True, text=True,
                            check=False, cwd=REPOSITORY_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_freshness_check_fails_with_a_diff_when_generated_code_was_edited(tmp_path: Path) -> None:
    gen_proto = _load_gen_proto()
    copy = tmp_path / "proto"
    shutil.copytree(gen_proto.OUTPUT_ROOT, copy)
    stub = copy / "neuroflow" / "v1" / "events_pb2.pyi"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    (copy / "neuroflow" / "v1" / "retired_pb2.py").write_text("# left over from a removed .proto\n")
    gen_proto.OUTPUT_ROOT = copy
    assert gen_proto.main(["--check"]) == 1
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    problems = "\n".join(gen_proto.check(fresh, gen_proto.generate(fresh)))
    assert "differs: neuroflow/v1/events_pb2.pyi" in problems
    assert "-# edited by hand" in problems  # the diff shows what the committed file has in excess
    assert "stale (no .proto generates it): neuroflow/v1/retired_pb2.py" in problems


def test_generated_modules_import_under_the_neuroflow_package() -> None:
    assert events_pb2.StudyReady.__module__ == "neuroflow.proto.neuroflow.v1.events_pb2"
    # The wire names are those of proto/, untouched by the import rewrite.
    assert events_pb2.StudyReady.DESCRIPTOR.full_name == "neuroflow.v1.StudyReady"
    reason = tasks_pb2.TaskFailed.DESCRIPTOR.fields_by_name["reason"]
    assert reason.message_type is common_pb2.FailureReason.DESCRIPTOR


def test_every_message_has_a_round_trip_example() -> None:
    assert sorted(EXAMPLES) == _contract_messages()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_message_survives_serialisation_unchanged(name: str) -> None:
    original = EXAMPLES[name]()
    wire = original.SerializeToString(deterministic=True)
    parsed = type(original).FromString(wire)
    assert parsed == original
    assert parsed.SerializeToString(deterministic=True) == wire
    # Every field of the example is populated, so the round trip covered the whole message.
    unset = [f.name for f in original.DESCRIPTOR.fields
             if f.containing_oneof is None and f.name not in {d.name for d, _ in original.ListFields()}]
    assert unset == [], f"{name} example leaves fields unset: {unset}"


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_every_published_message_carries_schema_version_as_field_1(name: str) -> None:
    example = EXAMPLES[name]()
    field = example.DESCRIPTOR.fields_by_name["schema_version"]
    assert field.number == 1
    assert field.type == field.TYPE_UINT32
    assert getattr(example, "schema_version") == topics.SCHEMA_VERSION >= 1  # noqa: B009 - typed as Message


def test_task_payload_oneof_names_match_the_stages() -> None:
    stages = {topics.stage_name(s) for s in topics.STAGES}
    for message in (tasks_pb2.TaskRequested, tasks_pb2.TaskDone):
        oneof = message.DESCRIPTOR.oneofs[0]
        assert {f.name for f in oneof.fields} <= stages


def _newer_events_pool() -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding a NEWER revision of events.proto: StudyReady gains field 99 and
    RoutingFailed.Reason gains a value 99, as a later neuroflow would publish."""
    pool = descriptor_pool.DescriptorPool()
    for module in (timestamp_pb2, common_pb2, events_pb2):
        proto = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        if module is events_pb2:
            study_ready = next(m for m in proto.message_type if m.name == "StudyReady")
            study_ready.field.add(name="scanner_software", number=99,
                                  type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            routing_failed = next(m for m in proto.message_type if m.name == "RoutingFailed")
            routing_failed.enum_type[0].value.add(name="CONTRAST_TIMING", number=99)
        pool.Add(proto)
    return pool


def test_consumer_keeps_working_on_a_message_from_a_newer_schema() -> None:
    pool = _newer_events_pool()
    newer: Any = message_factory.GetMessageClass(pool.FindMessageTypeByName("neuroflow.v1.StudyReady"))
    produced = newer(schema_version=V + 1, pipeline="glioma", input_hash="abc", study_version=3,
                     scanner_software="syngo MR XA60")
    produced.study.study_key = "3f2a9c1b7d4e"

    consumed = events_pb2.StudyReady.FromString(produced.SerializeToString())

    assert (consumed.pipeline, consumed.input_hash, consumed.study_version) == ("glioma", "abc", 3)
    assert consumed.study.study_key == "3f2a9c1b7d4e"
    assert consumed.schema_version == V + 1
    # The unknown field is kept: a consumer that forwards the message does not strip it.
    forwarded = newer.FromString(consumed.SerializeToString())
    assert forwarded.scanner_software == "syngo MR XA60"


def test_consumer_keeps_an_unknown_enum_value_from_a_newer_schema() -> None:
    pool = _newer_events_pool()
    newer: Any = message_factory.GetMessageClass(pool.FindMessageTypeByName("neuroflow.v1.RoutingFailed"))
    produced = newer(reason=99, message="study 3f2a9c1b7d4e: contrast timing unknown")

    consumed = events_pb2.RoutingFailed.FromString(produced.SerializeToString())

    assert consumed.message == "study 3f2a9c1b7d4e: contrast timing unknown"
    assert consumed.reason == 99  # open enum: readable, and not a value this revision names
    assert 99 not in events_pb2.RoutingFailed.Reason.values()


def test_topic_names_are_versioned_by_the_contract_package_and_unique() -> None:
    names = topics.all_topics()
    assert len(names) == len(set(names))
    assert all(name.startswith("neuroflow.v1.") for name in names)
    assert events_pb2.DESCRIPTOR.package + "." == topics.PREFIX


def test_every_stage_has_its_own_task_and_dead_letter_topic() -> None:
    assert topics.task_topic(common_pb2.STAGE_SEGMENTATION) == "neuroflow.v1.task.segmentation"
    assert topics.dead_letter_topic(common_pb2.STAGE_RESULTS) == "neuroflow.v1.dead-letter.results"
    per_stage = {topic(s) for s in topics.STAGES for topic in (topics.task_topic, topics.dead_letter_topic)}
    assert len(per_stage) == 2 * len(common_pb2.Stage.values()) - 2  # every stage but STAGE_UNSPECIFIED


@pytest.mark.parametrize("stage", [common_pb2.STAGE_UNSPECIFIED, 42])
def test_no_topic_for_an_unspecified_or_unknown_stage(stage: int) -> None:
    with pytest.raises(ValueError, match="no topics for stage"):
        topics.task_topic(stage)  # type: ignore[arg-type]
