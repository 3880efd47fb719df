"""Ingest on a real Orthanc chooses series as the embedded run does (issue 14): two different FLAIR protocols
too close to call give a RoutingFailed AMBIGUOUS_ROLE naming both, never a guess; a repeat of one protocol
is decided by the latest series; a phase map is never the T2, whether its header says phase or its T2 verdict
is under the confidence floor (the study lacks a T2 and the refusal names both)."""

from __future__ import annotations

from pathlib import Path

from neuroflow.core import topics
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import GLIOMA_PIPELINE, PipelineModels
from neuroflow.core.roles import SeriesRole
from neuroflow.devtools.dicom_writer import WrittenStudy
from neuroflow.ingest.service import IngestService, IngestSettings
from neuroflow.ingest.window_store import SqliteWindowStore
from neuroflow.proto.neuroflow.v1 import events_pb2
from tests.extra_series import DTI_PHASE, add_series, dti_phase_preset, preset, write_small_study
from tests.servers.orthanc import OrthancPair

WINDOW_S = 1.0
# A second, different FLAIR protocol (fat-saturated, longer TR/TE/TI) next to the Siemens dark-fluid one.
FLAIR_FS = preset(SeriesRole.FLAIR, series_description="t2_flair_fs_tra", protocol_name="t2_flair_fs_tra",
                  repetition_time_ms=11000.0, echo_time_ms=125.0, inversion_time_ms=2800.0, also_seen_as=())


def _ingest(orthancs: OrthancPair, tmp_path: Path, bus: InMemoryBus) -> IngestService:
    settings = IngestSettings(site="test-site", pipelines=[GLIOMA_PIPELINE],
                              models={GLIOMA_PIPELINE: PipelineModels().glioma}, wait_window_s=WINDOW_S, lease_s=2.0)
    return IngestService(orthancs.site_client, SqliteWindowStore(tmp_path / "windows.sqlite"), bus, settings)


def _upload(orthancs: OrthancPair, folder: Path) -> None:
    for path in sorted(folder.rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())


def _hand_on(orthancs: OrthancPair, ingest: IngestService, folder: Path, at: float) -> list[events_pb2.StudyReady]:
    _upload(orthancs, folder)
    ingest.poll_changes(now=at)
    return ingest.trigger_due(now=at + WINDOW_S + 0.1)


def _failed(bus: InMemoryBus) -> list[events_pb2.RoutingFailed]:
    return [events_pb2.RoutingFailed.FromString(m.value) for m in bus.poll(topics.ROUTING_FAILED, "test", 100)]


def _series_number(study: WrittenStudy, role: SeriesRole) -> int:
    return 2 + list(study.series).index(role)  # the Siemens preset numbers series 2, 3, ... in write order


def test_two_different_flair_protocols_give_routing_failed_ambiguous_role_naming_both(
    orthancs: OrthancPair, tmp_path: Path
) -> None:
    bus = InMemoryBus()
    ingest = _ingest(orthancs, tmp_path, bus)
    seed = "ingest-ambiguous-flair"
    study = write_small_study(tmp_path / "study", seed=seed)
    add_series(tmp_path / "study", FLAIR_FS, seed=seed, series_number=20, minutes_after_start=30)
    assert _hand_on(orthancs, ingest, tmp_path / "study", at=1000.0) == []
    (failure,) = _failed(bus)
    assert failure.reason == events_pb2.RoutingFailed.AMBIGUOUS_ROLE
    assert failure.pipeline == GLIOMA_PIPELINE
    flair = _series_number(study, SeriesRole.FLAIR)
    assert f"series {flair} 't2_tirm_tra_dark-fluid'" in failure.message
    assert "series 20 't2_flair_fs_tra'" in failure.message
    assert "NF-DEMO" not in failure.message and "DEMO^GLIOMA" not in failure.message  # no patient identifier


def test_a_repeated_flair_protocol_is_decided_by_the_latest_series(orthancs: OrthancPair, tmp_path: Path) -> None:
    bus = InMemoryBus()
    ingest = _ingest(orthancs, tmp_path, bus)
    seed = "ingest-repeated-flair"
    write_small_study(tmp_path / "study", seed=seed)
    repeat = add_series(tmp_path / "study", preset(SeriesRole.FLAIR), seed=seed, series_number=21,
                        minutes_after_start=40)
    (ready,) = _hand_on(orthancs, ingest, tmp_path / "study", at=2000.0)
    assert {s.role: s.series_instance_uid for s in ready.series}[SeriesRole.FLAIR.value] == repeat
    assert _failed(bus) == []


def test_a_phase_map_is_never_the_t2_and_the_refusal_names_it(orthancs: OrthancPair, tmp_path: Path) -> None:
    bus = InMemoryBus()
    ingest = _ingest(orthancs, tmp_path, bus)
    seed = "ingest-dti-phase"
    write_small_study(tmp_path / "study", (SeriesRole.T1, SeriesRole.T1CE, SeriesRole.FLAIR), seed=seed)
    add_series(tmp_path / "study", dti_phase_preset(), seed=seed, series_number=9, minutes_after_start=30)
    # The same map where neither the ImageType nor the name says phase: T2 and DWI evidence tie (0.24, the
    # confidence it was once used as the T2 with), under the floor.
    add_series(tmp_path / "study", dti_phase_preset(series_description="S2MB2", image_type=("ORIGINAL", "PRIMARY")),
               seed=seed, series_number=10, minutes_after_start=34)
    assert _hand_on(orthancs, ingest, tmp_path / "study", at=3000.0) == []
    (failure,) = _failed(bus)
    assert failure.reason == events_pb2.RoutingFailed.MISSING_SEQUENCE
    assert failure.message.startswith("no T2 series found")
    assert f"series 9 '{DTI_PHASE}' = other" in failure.message
    assert "series 10 'S2MB2' = T2 (0.24, below floor)" in failure.message
