"""Orthanc fixtures: a site Orthanc and a destination PACS Orthanc for the whole test session.

The site declares the destination as DICOM modality ``PACS_MODALITY``. Each test that asks for
``orthancs`` starts from two empty servers (everything is deleted first), so tests never see each
other's studies; the servers themselves start once (about 0.2 s each).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


@contextmanager
def site_and_pacs(root: Path, *, name: str, site_aet: str, pacs_aet: str, destination: str = PACS_MODALITY,
                  site_stable_age_s: int = 60, scu_timeout_s: int = 10,
                  pacs_knows_site: bool = False) -> Iterator[OrthancPair]:
    """A site Orthanc that knows the PACS as DICOM modality ``destination`` and a PACS Orthanc, stopped by
    PID on exit. The PACS declares the site: it takes C-STORE from declared AE titles only. With
    ``pacs_knows_site`` it may also send there (C-MOVE back to the site); otherwise the site is a sender only."""
    site_port, pacs_port = free_loopback_port(), free_loopback_port()
    site_peer = {"site": DicomModality(site_aet, "127.0.0.1", site_port)}
    pacs = start_orthanc(f"{name}-pacs", root / "pacs", aet=pacs_aet, dicom_port=pacs_port,
                         modalities=site_peer if pacs_knows_site else None,
                         senders=None if pacs_knows_site else site_peer)
    try:
        site = start_orthanc(f"{name}-site", root / "site", aet=site_aet, dicom_port=site_port,
                             stable_age_s=site_stable_age_s, scu_timeout_s=scu_timeout_s,
                             modalities={destination: DicomModality(pacs_aet, "127.0.0.1", pacs_port)})
    except BaseException:
        pacs.stop()
        raise
    try:
        yield OrthancPair(site, pacs, OrthancClient(site.endpoint), OrthancClient(pacs.endpoint))
    finally:
        site.stop()
        pacs.stop()


@pytest.fixture(scope="session")
def orthanc_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPair]:
    with site_and_pacs(tmp_path_factory.mktemp("orthanc"), name="neuroflow-test", site_aet="NFSITE",
                       pacs_aet="TESTPACS", site_stable_age_s=SITE_STABLE_AGE_S, scu_timeout_s=5) as pair:
        yield pair


@pytest.fixture
def orthancs(orthanc_servers: OrthancPair) -> OrthancPair:
    """The session's two Orthancs, emptied for this test."""
    for server in (orthanc_servers.site, orthanc_servers.pacs):
        if not server.running:
            raise RuntimeError(f"Orthanc {server.name} is no longer running; its log ends:\n{server.log_tail()}")
    orthanc_servers.site_client.delete_everything()
    orthanc_servers.pacs_client.delete_everything()
    return orthanc_servers
