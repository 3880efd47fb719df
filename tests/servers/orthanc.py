"""Orthanc fixtures: a site Orthanc and a destination PACS Orthanc for the whole test session.

The site declares the destination as DICOM modality ``PACS_MODALITY``. Each test that asks for
``orthancs`` starts from two empty servers (everything is deleted first), so tests never see each
other's studies; the servers themselves start once (about 0.2 s each).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from neuroflow.core.orthanc import DicomModality, OrthancClient
from neuroflow.devtools.orthanc_server import OrthancProcess, start_orthanc
from neuroflow.devtools.ports import free_loopback_port

PACS_MODALITY = "pacs"
# The wait window the session's site Orthanc reports StableStudy after: short, for tests.
SITE_STABLE_AGE_S = 2


@dataclass(frozen=True)
class OrthancPair:
    site: OrthancProcess
    pacs: OrthancProcess
    site_client: OrthancClient
    pacs_client: OrthancClient


@pytest.fixture(scope="session")
def orthanc_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPair]:
    root = tmp_path_factory.mktemp("orthanc")
    pacs_dicom_port = free_loopback_port()
    pacs = start_orthanc("neuroflow-test-pacs", root / "pacs", aet="TESTPACS", dicom_port=pacs_dicom_port)
    try:
        site = start_orthanc(
            "neuroflow-test-site", root / "site", aet="NFSITE", stable_age_s=SITE_STABLE_AGE_S, scu_timeout_s=5,
            modalities={PACS_MODALITY: DicomModality("TESTPACS", "127.0.0.1", pacs_dicom_port)},
        )
    except BaseException:
        pacs.stop()
        raise
    try:
        yield OrthancPair(site, pacs, OrthancClient(site.endpoint), OrthancClient(pacs.endpoint))
    finally:
        site.stop()
        pacs.stop()


@pytest.fixture
def orthancs(orthanc_servers: OrthancPair) -> OrthancPair:
    """The session's two Orthancs, emptied for this test."""
    for server in (orthanc_servers.site, orthanc_servers.pacs):
        if not server.running:
            raise RuntimeError(f"Orthanc {server.name} is no longer running; its log ends:\n{server.log_tail()}")
    orthanc_servers.site_client.delete_everything()
    orthanc_servers.pacs_client.delete_everything()
    return orthanc_servers
