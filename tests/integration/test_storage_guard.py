"""The disk guard on a real Orthanc (issue 11, defect 9): while the free space of the site Orthanc's storage is
under the threshold, a scanner's C-STORE is refused with 0xA700 (out of resources, which a modality retries)
and nothing is stored, the monitor sets the alert's metric (neuroflow_storage_guard_tripped), and results
neuroflow stores through the REST API are still taken; with the threshold under the free space, C-STORE is
accepted again and the metric clears. The free space is the machine's real one: the threshold moves, not
the disk."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from neuroflow.core.orthanc import OrthancClient
from neuroflow.devtools.cstore import CStoreFailed, send_folder
from neuroflow.devtools.orthanc_server import OrthancProcess, start_orthanc
from neuroflow.monitor.probes import OrthancStorageProbe, StorageProbe
from neuroflow.monitor.service import GUARDED_ROLES

AET = "NFGUARD"


def _write_instance(folder: Path) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "GUARD-1", "MR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _start(root: Path, min_free_bytes: int) -> OrthancProcess:
    # Started again on the same folder: same studies, new configuration (the threshold).
    return start_orthanc("neuroflow-guard", root, aet=AET, min_free_bytes=min_free_bytes, guard_check_interval_s=1)


def _guard_metric() -> float | None:
    return REGISTRY.get_sample_value("neuroflow_storage_guard_tripped", {"path_role": "orthanc"})


def test_cstore_is_refused_with_out_of_resources_while_free_space_is_under_the_threshold_then_accepted(
        tmp_path: Path) -> None:
    orthanc_root = tmp_path / "orthanc"
    orthanc_root.mkdir()
    scan = tmp_path / "scan-1"
    _write_instance(scan)
    free = shutil.disk_usage(orthanc_root).free
    over_free, under_free = free + 1024**4, 1024**2  # 1 TiB more than there is; 1 MiB

    server = _start(orthanc_root, over_free)
    try:
        client = OrthancClient(server.endpoint)
        storage = server.storage_dir / "storage"
        probe = StorageProbe({"orthanc": storage}, 5.0, min_free_bytes=over_free, guarded=GUARDED_ROLES)
        probe.run()
        assert _guard_metric() == 1.0

        with pytest.raises(CStoreFailed, match="status 0xA700"):
            send_folder(scan, "127.0.0.1", server.endpoint.dicom_port, AET, attempts=1)
        assert client.get_json("/instances") == [], "a refused instance must not be stored"
        # neuroflow's own results (REST) still go in: they finish studies already received.
        client.upload(_write_instance(tmp_path / "result"))
        assert len(client.get_json("/instances")) == 1
        assert "refusing C-STORE" in server.log_tail()
        # The monitor's view of what Orthanc stores, where its volume is not mounted in the monitor.
        OrthancStorageProbe(lambda: client.get_json("/statistics"), "guard-test").run()
        stored = REGISTRY.get_sample_value("neuroflow_orthanc_disk_size_bytes", {"site": "guard-test"})
        assert stored is not None and stored > 0
    finally:
        server.stop()

    server = _start(orthanc_root, under_free)
    try:
        client = OrthancClient(server.endpoint)
        assert send_folder(scan, "127.0.0.1", server.endpoint.dicom_port, AET, attempts=1) == 1
        assert len(client.get_json("/instances")) == 2
        probe = StorageProbe({"orthanc": server.storage_dir / "storage"}, 5.0, min_free_bytes=under_free,
                             guarded=GUARDED_ROLES)
        probe.run()
        assert _guard_metric() == 0.0
    finally:
        server.stop()


def test_a_nearly_full_volume_store_the_guard_watches_also_refuses_cstore(tmp_path: Path) -> None:
    """Where Orthanc sees neuroflow's volume store (the local stack), the guard watches it too: the threshold
    lies between the volume store's free space (a smaller tmpfs here) and the Orthanc storage's."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shutil.disk_usage(shm).free >= shutil.disk_usage(tmp_path).free:
        pytest.skip("needs /dev/shm as a filesystem with less free space than the test's folder")
    volume_store = Path(tempfile.mkdtemp(prefix="neuroflow-guard-volumes-", dir=shm))
    try:
        threshold = (shutil.disk_usage(volume_store).free + shutil.disk_usage(tmp_path).free) // 2
        server = start_orthanc("neuroflow-guard-volumes", tmp_path / "orthanc", aet=AET, min_free_bytes=threshold,
                               guard_check_interval_s=1, guarded_dirs=[volume_store])
        try:
            _write_instance(tmp_path / "scan")
            with pytest.raises(CStoreFailed, match="status 0xA700"):
                send_folder(tmp_path / "scan", "127.0.0.1", server.endpoint.dicom_port, AET, attempts=1)
        finally:
            server.stop()
    finally:
        shutil.rmtree(volume_store, ignore_errors=True)
