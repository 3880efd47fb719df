"""Ingest against a real Orthanc, with a Philips export as the scanner sends it: a Raw Data Storage object
under each image series' UID and a presentation state in a series of its own. The study is routed with
only the images in each series (the raw objects never reach the workers), and the lone presentation
state is no series of the study."""

from __future__ import annotations

from pathlib import Path

import pydicom

from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import GLIOMA_PIPELINE, PipelineModels
from neuroflow.core.identity import input_hash
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.devtools.non_image_objects import write_non_image, write_raw_data
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.ingest.service import IngestService
from neuroflow.ingest.window_store import SqliteWindowStore
from tests.integration.test_ingest import FILES, WINDOW_S, _crop, _ready, _settings
from tests.servers.orthanc import OrthancPair


def test_philips_raw_objects_are_not_routed_with_the_images(orthancs: OrthancPair, tmp_path: Path) -> None:
    bus = InMemoryBus()
    ingest = IngestService(orthancs.site_client, SqliteWindowStore(tmp_path / "w.sqlite"), bus, _settings())
    written = write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.PHILIPS, seed="ingest-raw")
    files = [p for s in written.series.values() for p in s.paths]
    for n, series in enumerate(written.series.values()):
        files.append(write_raw_data(series.paths[0], tmp_path / "raw" / f"XX_{n:04d}"))
    first = next(iter(written.series.values())).paths[0]
    files.append(write_non_image(first, tmp_path / "ps" / "XX_0001", "presentation state", series_number=9001))
    for path in files:
        orthancs.site_client.upload(path.read_bytes())

    ingest.poll_changes(now=1000.0)
    (event,) = ingest.trigger_due(now=1000.0 + WINDOW_S + 0.1)

    assert {s.role: s.series_instance_uid for s in event.series} == {
        r.value: w.series_instance_uid for r, w in written.series.items()}
    assert all(s.instance_count == 40 for s in event.series)
    # The same work as the images alone: the raw objects' UIDs are not among the inputs.
    uids = {r.value: [_sop_uid(p) for p in w.paths] for r, w in written.series.items()}
    assert event.input_hash == input_hash(uids, PipelineModels().glioma)
    assert len(_ready(bus)) == 1
    assert event.pipeline == GLIOMA_PIPELINE


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
