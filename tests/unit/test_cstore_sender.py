"""The C-STORE sender against a real DICOM storage SCP (pynetdicom, in this process): an instance whose
answer comes too late is sent again on a new association and the folder still arrives whole; an
instance that is never answered, or is refused, fails naming the file and why."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from neuroflow.devtools.cstore import CStoreFailed, ReactorGate, _associate, send_folder
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


def test_the_sender_turns_nagle_off_so_instances_do_not_wait_for_delayed_acks(
    scp_factory: Callable[..., StorageScp]
) -> None:
    # With Nagle on, every C-STORE waited out the receiver's delayed ACK: ~50 ms per instance, 17
    # instances/s into Orthanc or storescp (scripts/bench_peers.py); with TCP_NODELAY, 110/s and more.
    scp = scp_factory(lambda n: (0.0, 0x0000))
    ae = AE(ae_title="NFSCANNER")
    ae.add_requested_context(MRImageStorage)
    assoc = _associate(ae, "127.0.0.1", scp.port, AET, "test node")
    try:
        assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
        assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


class _Reactor:
    """pynetdicom's association reactor loop in miniature: raise the paused flag, wait on the checkpoint, lower
    the flag, take any message off the queue. ``hold`` stops it once just past the wait, where a thread may be
    descheduled on a loaded machine: the flag still says paused, yet the reactor is about to read the queue."""

    def __init__(self, checkpoint: threading.Event | ReactorGate) -> None:
        self.checkpoint = checkpoint
        self.paused = False
        self.stolen: list[str] = []
        self.queue: queue.Queue[str] = queue.Queue()
        self.past_wait = threading.Event()
        self.resume = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        held = False
        while not self._stop:
            self.paused = True
            self.checkpoint.wait(1.0)
            if not held:
                held = True
                self.past_wait.set()
                self.resume.wait(5.0)
            self.paused = False
            with contextlib.suppress(queue.Empty):
                self.stolen.append(self.queue.get_nowait())
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop = True
        self.checkpoint.set()
        self._thread.join(5.0)


def test_pynetdicoms_own_pause_lets_a_reactor_just_past_its_wait_take_the_answer() -> None:
    # Why the gate exists: clear() then "wait until paused" passes at once on a stale flag.
    reactor = _Reactor(threading.Event())
    reactor.checkpoint.set()
    try:
        assert reactor.past_wait.wait(5.0)
        reactor.checkpoint.clear()
        assert reactor.paused  # send_c_store would go ahead now
        reactor.queue.put("C-STORE-RSP")
        reactor.resume.set()
        deadline = time.monotonic() + 5.0
        while not reactor.stolen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reactor.stolen == ["C-STORE-RSP"]
    finally:
        reactor.stop()


def test_the_gate_returns_only_once_the_reactor_is_blocked_so_the_answer_reaches_the_sender() -> None:
    gate = ReactorGate()
    reactor = _Reactor(gate)
    received: list[str] = []

    def send() -> None:
        assert gate.park_reactor(5.0)
        reactor.queue.put("C-STORE-RSP")  # the answer arrives at once, as on loopback with TCP_NODELAY
        time.sleep(0.05)  # a reactor that was not parked would take it meanwhile
        received.append(reactor.queue.get(timeout=1.0))
        gate.set()

    try:
        assert reactor.past_wait.wait(5.0)
        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.05)
        assert not received  # the sender waits: the reactor is past the wait, not parked
        reactor.resume.set()
        sender.join(5.0)
        assert received == ["C-STORE-RSP"] and reactor.stolen == []
    finally:
        reactor.stop()


def test_many_instances_into_an_instant_receiver_are_each_answered_once(
    tmp_path: Path, scp_factory: Callable[..., StorageScp], caplog: pytest.LogCaptureFixture
) -> None:
    # With TCP_NODELAY the answers come back fast enough to meet pynetdicom's race often; none may be lost.
    uids = _write_instances(tmp_path / "study", 300)
    scp = scp_factory(lambda n: (0.0, 0x0000))
    assert send_folder(tmp_path / "study", "127.0.0.1", scp.port, AET, dimse_timeout_s=10.0) == 300
    assert sorted(scp.received) == sorted(uids)
    assert "unexpected" not in caplog.text and "no answer" not in caplog.text
