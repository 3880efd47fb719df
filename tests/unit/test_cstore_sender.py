"""The C-STORE sender against a real DICOM storage SCP (pynetdicom, in this process): an instance whose
answer comes too late is sent again on a new association and the folder still arrives whole; an
instance that is never answered, or is refused, fails naming the file and why."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from neuroflow.devtools.cstore import CStoreFailed, send_folder
from neuroflow.devtools.ports import free_loopback_port

AET = "TESTSCP"


def _write_instances(folder: Path, count: int) -> list[str]:
    folder.mkdir()
    uids = []
    for index in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = ds.SeriesInstanceUID = "1.2.3"
        ds.InstanceNumber = index + 1
        ds.Modality = "MR"
        pydicom.dcmwrite(folder / f"IM{index:03d}", ds, enforce_file_format=True)
        uids.append(str(ds.SOPInstanceUID))
    (folder / "README.txt").write_text("not DICOM: skipped")
    return uids


class StorageScp:
    """Records every C-STORE it receives; ``answer(n)`` gives the delay and status for the n-th one."""

    def __init__(self, answer: Callable[[int], tuple[float, int]]) -> None:
        self.received: list[str] = []
        self._answer = answer
        self._lock = threading.Lock()
        self.port = free_loopback_port()
        ae = AE(ae_title=AET)
        ae.supported_contexts = AllStoragePresentationContexts
        server = ae.start_server(("127.0.0.1", self.port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        assert server is not None  # block=False always returns the server
        self._server = server

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
            delay, status = self._answer(len(self.received))
        time.sleep(delay)
        return status

    def shutdown(self) -> None:
        self._server.shutdown()


@pytest.fixture
def scp_factory() -> Iterator[Callable[[Callable[[int], tuple[float, int]]], StorageScp]]:
    started: list[StorageScp] = []

    def start(answer: Callable[[int], tuple[float, int]]) -> StorageScp:
        started.append(StorageScp(answer))
        return started[-1]

    yield start
    for scp in started:
        scp.shutdown()


def test_a_late_answer_is_sent_again_on_a_new_association_and_the_folder_arrives_whole(
    tmp_path: Path, scp_factory: Callable[..., StorageScp]
) -> None:
    uids = _write_instances(tmp_path / "study", 4)
    scp = scp_factory(lambda n: (1.5 if n == 2 else 0.0, 0x0000))  # the second instance answers too late
    sent = send_folder(tmp_path / "study", "127.0.0.1", scp.port, AET, dimse_timeout_s=0.5, attempts=3)
    assert sent == 4
    assert set(scp.received) == set(uids)
    assert scp.received.count(uids[1]) == 2  # sent again once, not skipped


def test_an_instance_never_answered_fails_naming_the_file_after_every_attempt(
    tmp_path: Path, scp_factory: Callable[..., StorageScp]
) -> None:
    _write_instances(tmp_path / "study", 2)
    scp = scp_factory(lambda n: (1.0, 0x0000))
    with pytest.raises(CStoreFailed, match=r"IM000: no answer within 0 s, 2 attempts"):
        send_folder(tmp_path / "study", "127.0.0.1", scp.port, AET, dimse_timeout_s=0.3, attempts=2)
    assert len(scp.received) == 2


def test_a_refusal_is_final_and_names_the_file_and_status(tmp_path: Path,
                                                          scp_factory: Callable[..., StorageScp]) -> None:
    _write_instances(tmp_path / "study", 3)
    scp = scp_factory(lambda n: (0.0, 0xA700 if n == 2 else 0x0000))  # A700: out of resources
    with pytest.raises(CStoreFailed, match=r"TESTSCP@127\.0\.0\.1:\d+ did not store .*IM001: status 0xA700"):
        send_folder(tmp_path / "study", "127.0.0.1", scp.port, AET, dimse_timeout_s=5, attempts=3)
    assert len(scp.received) == 2  # refused once, not retried, nothing after it


def test_warning_statuses_count_as_stored(tmp_path: Path, scp_factory: Callable[..., StorageScp]) -> None:
    _write_instances(tmp_path / "study", 2)
    scp = scp_factory(lambda n: (0.0, 0xB000))  # coercion of data elements: stored
    assert send_folder(tmp_path / "study", "127.0.0.1", scp.port, AET) == 2
    assert len(scp.received) == 2


def test_nobody_listening_fails_naming_the_node(tmp_path: Path) -> None:
    _write_instances(tmp_path / "study", 1)
    port = free_loopback_port()
    with pytest.raises(CStoreFailed, match=rf"association with {AET}@127\.0\.0\.1:{port} was not established"):
        send_folder(tmp_path / "study", "127.0.0.1", port, AET)
