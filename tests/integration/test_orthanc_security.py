"""The site Orthanc admits no one it does not know (issue 12, item 2), on a real Orthanc 1.10: HTTPS verified
against the stack's CA, credentials on every request, one user per service with only its own requests
(deploy/orthanc/service-rights.lua), DICOM associations only from declared AE titles on their declared hosts,
DICOM over TLS as an option, and no overwriting of an instance already stored."""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE

from neuroflow.core.errors import OrthancRequestFailed, OrthancUnavailable
from neuroflow.core.orthanc import OrthancClient, OrthancEndpoint
from neuroflow.core.orthanc_rights import SERVICE_USERS, allowed
from neuroflow.devtools.certificates import CertificateAuthority, make_authority
from neuroflow.devtools.cstore import SCANNER_AET
from neuroflow.devtools.orthanc_server import OrthancProcess, start_orthanc

AET = "NFSECURE"


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, authority: CertificateAuthority) -> Iterator[OrthancProcess]:
    root = tmp_path_factory.mktemp("secure-orthanc")
    server = start_orthanc("nf-secure", root / "orthanc", aet=AET, tls=(authority, root / "tls"))
    try:
        yield server
    finally:
        server.stop()


def instance(study_uid: str | None = None, sop_uid: str | None = None, value: int = 1) -> Dataset:
    """A tiny MR instance (4 x 4 pixels of ``value``)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "SECURITY-TEST"
    ds.Modality = "MR"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((4, 4), value, dtype=np.uint16).tobytes()
    return ds


def status_of(url: str, *, context: ssl.SSLContext, method: str = "GET",
              credentials: tuple[str, str] | None = None) -> int:
    headers = {}
    if credentials:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=10,
                                    context=context) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def verified(authority: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(authority.certificate))


def c_store(orthanc: OrthancProcess, ds: Dataset, *, calling: str = SCANNER_AET, called: str = AET,
            source: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> int | None:
    """The C-STORE status, or None when the association was not accepted."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", orthanc.endpoint.dicom_port, ae_title=called, bind_address=(source, 0),
                         tls_args=(tls, "127.0.0.1") if tls else None)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def test_the_rest_api_refuses_requests_without_valid_credentials(orthanc: OrthancProcess,
                                                                   authority: CertificateAuthority) -> None:
    url = f"{orthanc.endpoint.url}/system"
    context = verified(authority)
    assert status_of(url, context=context) == 401
    assert status_of(url, context=context, credentials=("admin", "wrong")) == 401
    assert status_of(url, context=context, credentials=("ingest", orthanc.passwords["results"])) == 401
    assert status_of(url, context=context, credentials=("admin", orthanc.passwords["admin"])) == 200


def test_each_service_user_may_send_only_its_own_requests(orthanc: OrthancProcess) -> None:
    admin = OrthancClient(orthanc.endpoint)
    study = admin.upload(_part10(instance()))
    study_id = admin.get_json(f"/instances/{study}/study")["ID"]
    results = OrthancClient(orthanc.service_endpoint("results"), retries=0)
    ingest = OrthancClient(orthanc.service_endpoint("ingest"), retries=0)
    monitor = OrthancClient(orthanc.service_endpoint("monitor"), retries=0)

    assert ingest.get_json(f"/studies/{study_id}")["ID"] == study_id  # reading is ingest's work
    assert ingest.changes(0)[0]
    for client, method, path in ((results, "DELETE", f"/studies/{study_id}"),  # only the monitor's retention
                                 (ingest, "POST", "/modalities/pacs/store"),  # ingest never sends DICOM
                                 (ingest, "POST", "/instances"),
                                 (ingest, "PUT", "/modalities/evil"),
                                 (monitor, "POST", "/instances"),
                                 (results, "POST", "/tools/execute-script")):
        with pytest.raises(OrthancRequestFailed) as refused:
            client.request(method, path, body=b"{}")
        assert refused.value.status == 403, (client.endpoint.username, method, path)
        assert not allowed(client.endpoint.username, method, path)  # the table agrees with the Lua filter
    for user in SERVICE_USERS:
        with pytest.raises(OrthancRequestFailed) as refused:
            OrthancClient(orthanc.service_endpoint(user), retries=0).request("POST", "/tools/execute-script",
                                                                             body=b"print(1)")
        assert refused.value.status == 403, user
    monitor.request("DELETE", f"/studies/{study_id}")  # retention may
    assert admin.get_json("/studies") == []


def test_ingest_refused_a_right_keeps_the_study_due_and_does_not_spin(
        orthanc: OrthancProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Ingest running as a user without ``POST /tools/find`` (the glioma post-operative check needs it): the 403
    is a missing right, not an outage. The study is neither handed on nor dropped, the refusal is counted and
    logged with the request to grant, the next tick does not ask again within the claim's lease, and once the
    right is there the same study goes on."""
    from prometheus_client import REGISTRY

    from neuroflow.core.bus import InMemoryBus
    from neuroflow.core.config import GLIOMA_PIPELINE, PipelineModels
    from neuroflow.core.dicom_io import study_key
    from neuroflow.core.topics import ROUTING_FAILED, STUDY_READY
    from neuroflow.ingest.service import IngestService, IngestSettings
    from neuroflow.ingest.window_store import SqliteWindowStore

    site = "rights-test"
    settings = IngestSettings(site=site, pipelines=[GLIOMA_PIPELINE], models={GLIOMA_PIPELINE: PipelineModels().glioma},
                              wait_window_s=1.0, lease_s=60.0)
    windows, bus = SqliteWindowStore(tmp_path / "windows.sqlite"), InMemoryBus()
    without_find = OrthancClient(orthanc.service_endpoint("preprocess"), retries=0)  # reads, may not find
    assert not allowed("preprocess", "POST", "/tools/find")
    ingest = IngestService(without_find, windows, bus, settings)  # follows the feed from now on
    ds = instance()
    OrthancClient(orthanc.endpoint).upload(_part10(ds))
    assert ingest.poll_changes(now=1000.0)

    def refusals() -> float:
        return REGISTRY.get_sample_value("neuroflow_ingest_orthanc_refusals_total", {"site": site}) or 0.0

    with caplog.at_level("ERROR", logger="neuroflow.ingest.service"):
        assert ingest.trigger_due(now=1002.0) == []
    assert refusals() == 1.0
    assert "POST /tools/find" in caplog.text and "HTTP 403" in caplog.text
    assert ds.PatientID not in caplog.text
    assert ingest.trigger_due(now=1010.0) == []  # within the lease: not asked again
    assert refusals() == 1.0
    assert bus.poll(STUDY_READY, "t", 10) == [] and bus.poll(ROUTING_FAILED, "t", 10) == []

    granted = IngestService(OrthancClient(orthanc.service_endpoint("ingest"), retries=0), windows, bus, settings)
    granted.trigger_due(now=1063.0)  # the lease ran out: tried again, this time with the right
    (failed,) = bus.poll(ROUTING_FAILED, "t", 10)  # one 4x4 MR image is no glioma study: it is routed, and refused
    assert failed.key == study_key(ds.StudyInstanceUID)
    assert refusals() == 1.0


def test_https_is_verified_against_the_stacks_ca(orthanc: OrthancProcess, tmp_path: Path) -> None:
    assert orthanc.endpoint.url.startswith("https://")
    assert OrthancClient(orthanc.endpoint).system()["DicomAet"] == AET
    # Another CA's bundle (or the system's CAs) cannot vouch for the server: no request is sent at all.
    stranger = make_authority(tmp_path / "other-ca", "another CA")
    for ca_file in (str(stranger.certificate), ""):
        impostor_check = OrthancEndpoint(orthanc.endpoint.url, "admin", orthanc.passwords["admin"], ca_file=ca_file)
        with pytest.raises(OrthancUnavailable, match="certificate is not trusted"):
            OrthancClient(impostor_check, retries=0).system()
    # Plain HTTP on the HTTPS port gets no answer.
    plain = OrthancEndpoint(orthanc.endpoint.url.replace("https:", "http:"), "admin", orthanc.passwords["admin"])
    with pytest.raises(OrthancUnavailable):
        OrthancClient(plain, retries=0, timeout_s=5).system()


def test_client_certificates_are_required_where_the_site_asks_for_them(
        authority: CertificateAuthority, tmp_path: Path) -> None:
    server = start_orthanc("nf-mtls", tmp_path / "orthanc", aet="NFMTLS", tls=(authority, tmp_path / "tls"),
                           client_certificates=True)
    try:
        assert OrthancClient(server.endpoint).system()["DicomAet"] == "NFMTLS"  # with its client certificate
        without = OrthancEndpoint(server.endpoint.url, "admin", server.passwords["admin"],
                                  ca_file=server.endpoint.ca_file)
        with pytest.raises(OrthancUnavailable):
            OrthancClient(without, retries=0, timeout_s=5).system()
    finally:
        server.stop()


def test_only_a_declared_ae_on_its_declared_host_may_store(orthanc: OrthancProcess) -> None:
    admin = OrthancClient(orthanc.endpoint)
    admin.delete_everything()
    assert c_store(orthanc, instance(), calling="INTRUDER") is None  # an AE title nobody declared
    assert c_store(orthanc, instance(), source="127.0.0.2") is None  # the scanner's AE title, another host
    assert c_store(orthanc, instance(), called="NOTORTHANC") is None  # calling some other AE than this one
    assert admin.get_json("/instances") == []
    assert c_store(orthanc, instance()) == 0x0000  # the declared scanner, from its host


def test_an_instance_sent_again_does_not_replace_the_stored_one(orthanc: OrthancProcess) -> None:
    """OverwriteInstances is off unless the site allows it: a sender cannot alter what was received. A re-send
    and a late series of the same study are still taken (the re-send answered as already stored)."""
    admin = OrthancClient(orthanc.endpoint)
    admin.delete_everything()
    first = instance(value=1)
    assert c_store(orthanc, first) == 0x0000
    altered = instance(study_uid=first.StudyInstanceUID, sop_uid=first.SOPInstanceUID, value=7)
    altered.SeriesInstanceUID = first.SeriesInstanceUID
    assert c_store(orthanc, altered) == 0x0000  # not an error for the modality's queue
    late = instance(study_uid=first.StudyInstanceUID, value=3)
    assert c_store(orthanc, late) == 0x0000
    (stored_id,) = [r["ID"] for r in admin.lookup(first.SOPInstanceUID) if r["Type"] == "Instance"]
    stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(admin.instance_file(stored_id)))
    assert stored.pixel_array.max() == 1  # the original, not the altered copy
    assert len(admin.get_json("/instances")) == 2


def test_dicom_over_tls_takes_only_clients_with_a_certificate_of_the_ca(
        authority: CertificateAuthority, tmp_path: Path) -> None:
    server = start_orthanc("nf-dicomtls", tmp_path / "orthanc", aet="NFDICOMTLS", tls=(authority, tmp_path / "tls"),
                           dicom_tls=True)
    try:
        scanner = authority.issue("scanner", tmp_path / "scanner", client=True)
        context = verified(authority)
        context.load_cert_chain(str(scanner.certificate), str(scanner.private_key))
        assert c_store(server, instance(), called="NFDICOMTLS", tls=context) == 0x0000
        assert c_store(server, instance(), called="NFDICOMTLS") is None  # plain DICOM
        no_certificate = verified(authority)
        assert c_store(server, instance(), called="NFDICOMTLS", tls=no_certificate) is None
        assert len(OrthancClient(server.endpoint).get_json("/instances")) == 1
    finally:
        server.stop()


def _part10(ds: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
