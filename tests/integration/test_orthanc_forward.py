"""Results travel from the site's Orthanc to the destination PACS by C-STORE, and the site's change
feed tells ingest what arrived; against real Orthanc servers the tests start (tests/servers/orthanc.py).

Proved here: a real MR series stored at the site arrives in the PACS with identical pixel data and
geometry; a PACS that is down, or connects and never answers, fails the forward as DestinationUnavailable
within the timeout (retry later), a PACS that refuses our objects as DestinationRejected (dead-letter);
the change feed lists every new instance, and StableStudy once the wait window has passed.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from neuroflow.core.errors import DestinationRejected, DestinationUnavailable
from neuroflow.core.orthanc import Change, OrthancClient, OrthancDicomSink, OrthancDicomSource
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.devtools.dicom_writer import SeriesInfo, StudyInfo, load_volume, write_series
from neuroflow.devtools.orthanc_server import start_orthanc
from neuroflow.devtools.scanner_presets import PRESETS, Vendor
from tests.servers.orthanc import PACS_MODALITY, SITE_STABLE_AGE_S, OrthancPair

BRATS_T1 = Path(__file__).resolve().parents[1] / "data" / "glioma-brats-gli-00001-000" / "t1n.nii.gz"


@pytest.fixture(scope="module")
def series_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A real T1 cropped to 96 x 96 x 12 around the brain's centre, written as a Siemens series."""
    full = load_volume(BRATS_T1)
    image = full.to_sitk()
    cx, cy, cz = (s // 2 for s in image.GetSize())
    cropped = Volume.from_sitk(image[cx - 48:cx + 48, cy - 48:cy + 48, cz - 6:cz + 6])
    study = StudyInfo.create("orthanc-forward-test")
    series = SeriesInfo.create(study, PRESETS[Vendor.SIEMENS][SeriesRole.T1], series_number=2)
    return write_series(cropped, tmp_path_factory.mktemp("series"), study=study, series=series)


def upload(client: OrthancClient, files: list[Path]) -> None:
    for path in files:
        client.upload(path.read_bytes())


def feed_end(client: OrthancClient) -> int:
    """The sequence number of the newest change (read the feed to its end)."""
    since, done = 0, False
    while not done:
        _, since, done = client.changes(since, limit=1000)
    return since


def test_a_series_stored_at_the_site_arrives_in_the_pacs_with_identical_pixels(
        orthancs: OrthancPair, series_files: list[Path]) -> None:
    originals = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in series_files)}
    upload(orthancs.site_client, series_files)

    OrthancDicomSink(orthancs.site_client).forward(sorted(originals), PACS_MODALITY, timeout_s=30)

    study_uid = next(iter(originals.values())).StudyInstanceUID
    index, skipped = OrthancDicomSource(orthancs.pacs_client).index_study(study_uid)
    assert index is not None and skipped == []
    [series] = index.series.values()
    received = OrthancDicomSource(orthancs.pacs_client).read_instances(series)
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(originals)
    for ds in received:
        original = originals[str(ds.SOPInstanceUID)]
        assert ds.PixelData == original.PixelData  # byte for byte
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                        "RescaleSlope", "RescaleIntercept", "SeriesDescription", "PatientID"):
            assert ds.get(keyword) == original.get(keyword), keyword


@pytest.fixture
def site_modality(orthancs: OrthancPair) -> Iterator[tuple[OrthancClient, list[str]]]:
    """Declare extra DICOM peers on the session's site Orthanc for one test, removed afterwards."""
    declared: list[str] = []
    yield orthancs.site_client, declared
    for name in declared:
        orthancs.site_client.request("DELETE", f"/modalities/{name}", what=f"remove modality {name}")


def declare(site: tuple[OrthancClient, list[str]], name: str, aet: str, port: int) -> None:
    client, declared = site
    body = json.dumps({"AET": aet, "Host": "127.0.0.1", "Port": port}).encode()
    client.request("PUT", f"/modalities/{name}", body=body, content_type="application/json",
                   what=f"declare modality {name}")
    declared.append(name)


def test_forwarding_to_a_stopped_pacs_fails_fast_as_destination_unavailable(
        orthancs: OrthancPair, series_files: list[Path], site_modality: tuple[OrthancClient, list[str]],
        tmp_path: Path) -> None:
    down = start_orthanc("neuroflow-test-down", tmp_path / "down", aet="DOWNPACS")
    declare(site_modality, "down", "DOWNPACS", down.endpoint.dicom_port)
    down.stop()
    upload(orthancs.site_client, series_files[:1])
    uid = str(pydicom.dcmread(series_files[0], stop_before_pixels=True).SOPInstanceUID)

    started = time.monotonic()
    with pytest.raises(DestinationUnavailable, match=r"destination down unavailable.*connecting to AET \"DOWNPACS\""):
        OrthancDicomSink(orthancs.site_client).forward([uid], "down", timeout_s=5)
    assert time.monotonic() - started < 2.0  # a refused connection is known at once


def test_a_pacs_that_never_answers_fails_as_destination_unavailable_after_the_timeout(
        orthancs: OrthancPair, series_files: list[Path], site_modality: tuple[OrthancClient, list[str]]) -> None:
    with socket.socket() as mute:  # accepts the connection, never speaks DICOM
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        declare(site_modality, "mute", "MUTEPACS", mute.getsockname()[1])
        upload(orthancs.site_client, series_files[:1])
        uid = str(pydicom.dcmread(series_files[0], stop_before_pixels=True).SOPInstanceUID)

        started = time.monotonic()
        with pytest.raises(DestinationUnavailable, match=r"destination mute unavailable.*timeout"):
            OrthancDicomSink(orthancs.site_client).forward([uid], "mute", timeout_s=2)
        assert 1.5 < time.monotonic() - started < 6.0


def test_a_pacs_that_refuses_our_objects_is_destination_rejected(
        orthancs: OrthancPair, series_files: list[Path], site_modality: tuple[OrthancClient, list[str]],
        tmp_path: Path) -> None:
    # A PACS that accepts C-STORE only from the AE titles it knows, and does not know ours.
    strict = start_orthanc("neuroflow-test-strict", tmp_path / "strict", aet="STRICTPACS",
                           accept_store_from_any_aet=False)
    try:
        declare(site_modality, "strict", "STRICTPACS", strict.endpoint.dicom_port)
        upload(orthancs.site_client, series_files[:1])
        uid = str(pydicom.dcmread(series_files[0], stop_before_pixels=True).SOPInstanceUID)

        with pytest.raises(DestinationRejected, match="destination strict refused the objects"):
            OrthancDicomSink(orthancs.site_client).forward([uid], "strict", timeout_s=5)
        assert OrthancDicomSink(OrthancClient(strict.endpoint)).stored() == []
    finally:
        strict.stop()


def test_the_change_feed_reports_each_new_instance_then_the_stable_study_after_the_wait_window(
        orthancs: OrthancPair, series_files: list[Path]) -> None:
    client = orthancs.site_client
    since = feed_end(client)
    upload(client, series_files)
    last_upload = time.monotonic()
    study_uid = str(pydicom.dcmread(series_files[0], stop_before_pixels=True).StudyInstanceUID)
    [study_id] = [r["ID"] for r in client.lookup(study_uid) if r["Type"] == "Study"]

    seen: list[Change] = []
    stable_after: float | None = None
    while stable_after is None and time.monotonic() - last_upload < SITE_STABLE_AGE_S + 10:
        changes, since, _ = client.changes(since, limit=100)
        seen.extend(changes)
        if any(c.change_type == "StableStudy" and c.resource_id == study_id for c in changes):
            stable_after = time.monotonic() - last_upload
        time.sleep(0.1)

    instances = {c.resource_id for c in seen if c.change_type == "NewInstance"}
    assert len(instances) == len(series_files)
    assert [c.resource_id for c in seen if c.change_type == "NewStudy"] == [study_id]
    assert stable_after is not None, "no StableStudy within the wait window + 10 s"
    # Orthanc checks stability about once a second: not before the window, and soon after it.
    assert SITE_STABLE_AGE_S - 0.5 <= stable_after <= SITE_STABLE_AGE_S + 3
    assert [c.seq for c in seen] == sorted(c.seq for c in seen)
