"""The table of each service's Orthanc rights (core/orthanc_rights.py): every service that may talk to Orthanc
has a user, and the rule matching (the same as deploy/orthanc/service-rights.lua's, which
tests/integration/test_orthanc_security.py checks on a real Orthanc) allows by method and path segments."""

from __future__ import annotations

from neuroflow.core.orthanc_rights import ADMIN_USER, SERVICE_USERS, allowed
from neuroflow.devtools.stack import SERVICES


def test_every_service_of_the_runtime_has_its_own_orthanc_user() -> None:
    # The console (its image viewer) reads the site Orthanc too, with read rights only.
    assert set(SERVICES) | {"console"} == set(SERVICE_USERS)
    assert ADMIN_USER not in SERVICE_USERS


def test_rules_match_whole_segments_and_any_one_segment_for_a_star() -> None:
    assert allowed("results", "POST", "/modalities/pacs/store")
    assert not allowed("results", "POST", "/modalities/pacs/move")
    assert not allowed("results", "POST", "/modalities/pacs")
    assert allowed("ingest", "GET", "/studies/abc/instances?expand")
    assert not allowed("ingest", "GET", "/studiesx")  # a prefix of a segment is not the segment
    assert not allowed("ingest", "DELETE", "/studies/abc")
    assert allowed("monitor", "DELETE", "/studies/abc")
    assert not allowed("monitor", "DELETE", "/patients/abc")
    assert allowed(ADMIN_USER, "DELETE", "/patients/abc")
    assert not allowed("nobody", "GET", "/system")
    assert not allowed("orchestrator", "GET", "/studies")
    assert allowed("console", "GET", "/instances/abc/file")
    assert not allowed("console", "POST", "/instances")
    assert not allowed("console", "DELETE", "/studies/abc")


def test_ingest_may_look_up_the_patients_earlier_results_for_the_post_operative_check() -> None:
    # ingest.postoperative.prior_tumour_in_orthanc: without this right every glioma hand-on was refused (403)
    # and retried for ever on a stack with per-service users.
    assert allowed("ingest", "POST", "/tools/find")
    assert allowed("ingest", "GET", "/instances/abc/file")
    assert not allowed("ingest", "POST", "/instances")  # it still stores nothing
