"""A study whose T2 is the second echo of a dual-echo (PD + T2) series, stored in a real Orthanc: ingest
classifies the series volume by volume from Orthanc's DICOMweb metadata and routes the T2 as
"<series uid>#echo=2"; the preprocess worker's path (find_series, the instances from Orthanc, conversion)
gives exactly that echo. Before multi-volume series were split, the series was one "T2" whose slices
shared positions, and conversion refused it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuroflow.core import topics
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import GLIOMA_PIPELINE, PipelineModels
from neuroflow.core.dicom_io import find_series
from neuroflow.core.orthanc import OrthancDicomSource
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import SeriesInfo, StudyInfo, load_volume, write_study
from neuroflow.devtools.multi_volume_writer import VolumeTags, write_multi_volume_series
from neuroflow.devtools.scanner_presets import MULTI_VOLUME_PRESETS, Vendor
from neuroflow.ingest.service import IngestService, IngestSettings
from neuroflow.ingest.window_store import SqliteWindowStore
from neuroflow.preprocess.glioma_inputs import convert_inputs
from neuroflow.proto.neuroflow.v1 import events_pb2
from tests.servers.orthanc import OrthancPair

DATA = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294"
FILES = {SeriesRole.T1: "t1_bet.nii.gz", SeriesRole.T1CE: "t1c_bet.nii.gz", SeriesRole.FLAIR: "fla_bet.nii.gz"}
WINDOW_S = 1.0
SEED = "multi-volume-ingest"


def _crop(name: str) -> Volume:
    """A 30-slice slab of the real volume (same geometry): enough for routing, quick to upload."""
    volume = load_volume(DATA / name)
    g = volume.geometry
    x, y, z = volume.to_sitk().TransformIndexToPhysicalPoint([0, 0, 60])
    return Volume(volume.array[60:90].copy(), Geometry(g.spacing, (x, y, z), g.direction, (g.size[0], g.size[1], 30)))


def test_the_second_echo_of_a_dual_echo_series_is_routed_and_converted_as_the_t2(
    orthancs: OrthancPair, tmp_path: Path
) -> None:
    settings = IngestSettings(site="test-site", pipelines=[GLIOMA_PIPELINE],  # type: ignore[arg-type]
                              models={GLIOMA_PIPELINE: PipelineModels().glioma}, wait_window_s=WINDOW_S, lease_s=2.0)
    bus = InMemoryBus()  # the service follows the change feed from its end: started before the upload
    ingest = IngestService(orthancs.site_client, SqliteWindowStore(tmp_path / "windows.sqlite"), bus, settings)
    write_study({role: _crop(name) for role, name in FILES.items()}, tmp_path / "study", vendor=Vendor.SIEMENS,
                seed=SEED)
    t2 = _crop("t2_bet.nii.gz")
    proton_density = t2.with_array((np.asarray(t2.array, dtype=np.float64) * 0.6 + 40).astype(np.int16))
    study = StudyInfo.create(SEED)
    series = SeriesInfo.create(study, MULTI_VOLUME_PRESETS["pd_t2"], series_number=5)
    write_multi_volume_series(
        [(proton_density, VolumeTags(echo_number=1, echo_time_ms=12.0)),
         (t2, VolumeTags(echo_number=2, echo_time_ms=96.0))],
        tmp_path / "study" / "pdt2", study=study, series=series)
    for path in sorted((tmp_path / "study").rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())

    ingest.poll_changes(now=1000.0)
    handed_on = ingest.trigger_due(now=1000.0 + WINDOW_S + 0.1)
    failed = [events_pb2.RoutingFailed.FromString(m.value) for m in bus.poll(topics.ROUTING_FAILED, "test", 10)]
    assert not failed, failed
    (ready,) = handed_on
    routed = {s.role: s for s in ready.series}
    assert routed[SeriesRole.T2.value].series_instance_uid == f"{series.series_instance_uid}#echo=2"
    assert routed[SeriesRole.T2.value].instance_count == 30
    assert "[echo=2]" in routed[SeriesRole.T2.value].description

    source = OrthancDicomSource(orthancs.site_client)
    found = find_series(source, ready.study, ready.series, stage="preprocess")
    assert found[SeriesRole.T2].volume == "echo=2"
    volumes = convert_inputs({role: source.read_instances(s) for role, s in found.items()},
                             study_key=ready.study.study_key, volumes={role: s.volume for role, s in found.items()})
    np.testing.assert_array_equal(volumes[SeriesRole.T2].array, np.asarray(t2.array, dtype=np.float32))
    assert volumes[SeriesRole.T2].geometry.is_close(t2.geometry, tol_mm=1e-3)
    assert volumes[SeriesRole.T2].meta["series_instance_uid"] == f"{series.series_instance_uid}#echo=2"
