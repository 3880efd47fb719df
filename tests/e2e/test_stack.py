"""The distributed runtime as a hospital runs it: `neuroflow stack up` (PostgreSQL, site Orthanc,
destination PACS Orthanc, a Kafka broker, one process per service), a real study sent by C-STORE, and
the SEG arriving in the destination PACS with the same volumes as the embedded run on the same input.
Sending the study again (duplicate delivery) produces no second result. `stack down` frees every port."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest

from neuroflow.core import topics
from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.dicom_io import study_key
from neuroflow.core.errors import BusError
from neuroflow.core.inference_triton import TritonBackend, TritonTls
from neuroflow.core.kafka_bus import KafkaBus
from neuroflow.core.orthanc import OrthancClient, OrthancEndpoint
from neuroflow.devtools import stack
from neuroflow.devtools.cstore import send_folder
from neuroflow.devtools.dicom_writer import WrittenStudy, write_study
from neuroflow.devtools.port_probe import kafka_is_secured, probe_stack
from neuroflow.devtools.ports import port_is_listening
from neuroflow.devtools.scanner_presets import Vendor
from tests.servers.browser import MISSING, chromium_installed, headless_chromium, log_in

from .conftest import CliRun, tcga_volumes

WAIT_WINDOW_S = 3.0


@pytest.fixture(scope="module")
def running_stack() -> Iterator[dict[str, Any]]:
    with stack.temporary(stack.StackOptions(wait_window_s=WAIT_WINDOW_S)) as started:
        yield started
    ports = [p for proc in started["processes"] for p in proc["ports"]]
    assert not [p for p in ports if port_is_listening(p)], "stack down left ports open"


def _client(endpoint: dict[str, Any]) -> OrthancClient:
    return OrthancClient(OrthancEndpoint(endpoint["url"], endpoint["username"], endpoint["password"],
                                         ca_file=endpoint["ca_file"]))


def _seg_instances(pacs: OrthancClient) -> list[str]:
    found = pacs.post_json("/tools/find", {"Level": "Instance", "Query": {"Modality": "SEG"}})
    return [str(i) for i in found]


def _wait_for(condition: Any, timeout_s: float, what: str, running: dict[str, Any] | None = None) -> Any:
    """``condition``'s first true value within ``timeout_s``; on timeout, the stack's processes that are no
    longer running (``running``: the stack), each with the end of its log, are named in the failure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1.0)
    exited = stack.exited_processes(running) if running is not None else []
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                         + "".join(f"\n{e}" for e in exited))


def test_stack_writes_every_endpoint(running_stack: dict[str, Any]) -> None:
    written = json.loads((Path(running_stack["root"]) / "stack.json").read_text())
    for name in ("site", "pacs"):
        orthanc = written["orthanc"][name]
        assert {"url", "username", "password", "aet", "dicom_host", "dicom_port"} <= set(orthanc)
        assert _client(orthanc).system()["DicomAet"] == orthanc["aet"]
    assert written["kafka"]["bootstrap"].startswith("127.0.0.1:")
    # The workers' inference goes to this Triton: it must answer and have every pinned model ready.
    tls = TritonTls(Path(written["triton"]["ca_file"]), Path(written["triton"]["cert_file"]),
                    Path(written["triton"]["key_file"]))
    triton = TritonBackend(written["triton"]["grpc"], NeuroflowSettings().model_repository, tls=tls)
    assert not TritonBackend(written["triton"]["grpc"], NeuroflowSettings().model_repository).server_ready()
    assert written["triton"]["http"].startswith("127.0.0.1:") and triton.server_ready()
    models = NeuroflowSettings().models
    assert all(triton.ready(m) for m in (models.skull_strip_bbox, models.skull_strip, models.glioma))
    assert all(running for _, running, _ in stack.status(Path(running_stack["root"])))
    # The console: its log-in page answers; its dev users' passwords are in a file only the owner reads.
    with urllib.request.urlopen(written["console"]["url"] + "login", timeout=10) as page:
        assert page.status == 200 and b"Log in" in page.read()
    assert Path(written["console"]["passwords_file"]).stat().st_mode & 0o077 == 0


def test_stack_kafka_admits_only_logged_in_services_and_stack_json_holds_no_kafka_password(
        running_stack: dict[str, Any]) -> None:
    kafka = running_stack["kafka"]
    assert kafka["security_protocol"] == "SASL_SSL"
    with pytest.raises(BusError):
        KafkaBus(kafka["bootstrap"], timeout_s=4.0)  # plaintext, no login
    written = (Path(running_stack["root"]) / "stack.json").read_text()
    passwords = Path(kafka["security_dir"]) / "passwords"
    assert sorted(p.name for p in passwords.iterdir()) == sorted(["admin", "broker", *topics.service_access()])
    logs = "".join(log.read_text(errors="replace") for log in (Path(running_stack["root"]) / "logs").iterdir())
    for password in passwords.iterdir():
        assert oct(password.stat().st_mode & 0o777) == "0o600"
        assert password.read_text() not in written and password.read_text() not in logs
    # Each service process logs in as itself (its own ACLs), not as the operator of the stack's environment.
    preprocess = stack.process_record(running_stack, "preprocess-1")
    environ = Path(f"/proc/{preprocess['pid']}/environ").read_bytes().split(b"\0")
    assert b"NEUROFLOW_BUS__USERNAME=preprocess" in environ


def test_study_sent_by_cstore_arrives_as_seg_in_the_pacs_with_the_embedded_volumes(
    running_stack: dict[str, Any], tcga_siemens: WrittenStudy, tcga_siemens_run: CliRun
) -> None:
    site = running_stack["orthanc"]["site"]
    pacs = _client(running_stack["orthanc"]["pacs"])
    key = study_key(tcga_siemens.study_instance_uid)
    seen: dict[str, list[str]] = {}
    with _console_browser(running_stack) as browser:
        sent = send_folder(tcga_siemens.folder, site["dicom_host"], site["dicom_port"], site["aet"])
        assert sent == sum(len(s.paths) for s in tcga_siemens.series.values())
        (seg_id,) = _wait_for(lambda: (_worklist_statuses(browser, seen), _seg_instances(pacs))[1], 600,
                              "the SEG in the destination PACS")
        # The worklist, open in the browser since before the study was sent and never reloaded, showed it
        # arrive and run, then finish (issue 16): its live refresh, not a page load, brought each state.
        _wait_for(lambda: _worklist_statuses(browser, seen).get(key, [""])[-1] == "SUCCEEDED", 120,
                  "the worklist in the browser to show the study SUCCEEDED")
        assert len(seen[key]) >= 2 and seen[key][0] != "SUCCEEDED", seen[key]

    reports = list((Path(running_stack["root"]) / "reports").rglob("report.json"))
    assert len(reports) == 1
    distributed = json.loads(reports[0].read_text())
    embedded = tcga_siemens_run.report
    assert distributed["study_instance_uid"] == embedded["study_instance_uid"]
    for region in ("WT", "TC", "ET"):
        assert distributed["volumes_ml"][region] == pytest.approx(embedded["volumes_ml"][region], abs=0.05)
    # The console's worklist shows the study finished, by its pseudonymous key (issue 16).
    rows = _console_page(running_stack, "/worklist/rows")
    assert distributed["study_key"][:16] in rows and "SUCCEEDED" in rows
    assert embedded["study_instance_uid"] not in rows
    tags = pacs.get_json(f"/instances/{seg_id}/simplified-tags")
    embedded_seg = pydicom.dcmread(tcga_siemens_run.out_dir / "seg.dcm", stop_before_pixels=True)
    assert tags["SOPInstanceUID"] == embedded_seg.SOPInstanceUID  # the same object: idempotent across runtimes

    # Duplicate delivery: the scanner sends the whole study again. Same inputs: no second result.
    send_folder(tcga_siemens.folder, site["dicom_host"], site["dicom_port"], site["aet"])
    time.sleep(WAIT_WINDOW_S + 15)
    assert len(_seg_instances(pacs)) == 1
    assert len(list((Path(running_stack["root"]) / "reports").rglob("report.json"))) == 1


@contextmanager
def _console_browser(stack_info: dict[str, Any]) -> Iterator[Any]:
    """Headless Chromium logged in to the stack's console as its dev operator, on the worklist."""
    if not chromium_installed():
        pytest.skip(MISSING)
    url = stack_info["console"]["url"].rstrip("/")
    password = json.loads(Path(stack_info["console"]["passwords_file"]).read_text())["operator"]
    with headless_chromium() as driver:
        log_in(driver, url, "operator", password)
        driver.get(f"{url}/")
        yield driver


def _worklist_statuses(driver: Any, seen: dict[str, list[str]]) -> dict[str, list[str]]:
    """Add each study row's status, as the open page shows it now, to ``seen`` (by study key, each change
    once). The page refreshes its rows itself; nothing here reloads it."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#worklist-rows tr[data-study]')]"
        ".map(r => [r.dataset.study, r.querySelector('td.status').textContent.trim()]);")
    for key, status in rows:
        statuses = seen.setdefault(key, [])
        if not statuses or statuses[-1] != status:
            statuses.append(status)
    return seen


def _console_page(stack_info: dict[str, Any], path: str) -> str:
    """A console page as the stack's dev admin sees it (logged in through the form, with its CSRF token)."""
    url = stack_info["console"]["url"].rstrip("/")
    password = json.loads(Path(stack_info["console"]["passwords_file"]).read_text())["admin"]
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    form = opener.open(f"{url}/login", timeout=10).read().decode()
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    fields = {"csrf": token.group(1), "username": "admin", "password": password}
    opener.open(f"{url}/login", data=urllib.parse.urlencode(fields).encode(), timeout=10).close()
    page: str = opener.open(f"{url}{path}", timeout=10).read().decode()
    return page


def _seg_of_study(pacs: OrthancClient, study_uid: str) -> list[str]:
    found = pacs.post_json("/tools/find", {"Level": "Instance",
                                           "Query": {"Modality": "SEG", "StudyInstanceUID": study_uid}})
    return [str(i) for i in found]


def _process(stack_info: dict[str, Any], name: str) -> dict[str, Any]:
    (proc,) = [p for p in stack_info["processes"] if p["name"] == name]
    found: dict[str, Any] = proc
    return found


def _workflow_stage(stack_info: dict[str, Any], study_uid: str) -> tuple[str, str] | None:
    import psycopg

    with psycopg.connect(stack_info["postgresql"]["dsn"]) as db:
        row = db.execute("SELECT status, stage FROM workflows WHERE study_key = %s", (study_key(study_uid),)).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def test_worker_killed_mid_task_is_replaced_and_the_study_still_gives_one_result(
    running_stack: dict[str, Any], tmp_path: Path
) -> None:
    site = running_stack["orthanc"]["site"]
    pacs = _client(running_stack["orthanc"]["pacs"])
    written = write_study(tcga_volumes(), tmp_path / "study", vendor=Vendor.GE, seed="stack-killed-worker")
    send_folder(tmp_path / "study", site["dicom_host"], site["dicom_port"], site["aet"])
    _wait_for(lambda: _workflow_stage(running_stack, written.study_instance_uid) == ("RUNNING", "preprocess"),
              120, "preprocessing to start")
    time.sleep(3.0)  # well inside the ~25 s the stage takes
    victim = _process(running_stack, "preprocess-1")
    os.kill(victim["pid"], signal.SIGKILL)
    # The replacement stays: it is in stack.json, so the fixture's `stack down` stops it.
    stack.start_service(running_stack, "preprocess", "preprocess-2")
    _wait_for(lambda: _seg_of_study(pacs, written.study_instance_uid), 600, "the SEG after the worker was killed",
              running_stack)
    time.sleep(5.0)
    assert len(_seg_of_study(pacs, written.study_instance_uid)) == 1
    assert _workflow_stage(running_stack, written.study_instance_uid) == ("SUCCEEDED", "results")


def test_destination_down_for_a_while_gets_the_result_once_it_is_back(
    running_stack: dict[str, Any], tmp_path: Path
) -> None:
    site = running_stack["orthanc"]["site"]
    pacs_info = running_stack["orthanc"]["pacs"]
    pacs_process = _process(running_stack, "orthanc-pacs")
    written = write_study(tcga_volumes(), tmp_path / "study", vendor=Vendor.PHILIPS, seed="stack-pacs-down")
    stack.stop_process(pacs_process)
    try:
        send_folder(tmp_path / "study", site["dicom_host"], site["dicom_port"], site["aet"])
        # The delivery loop runs in the results and the longitudinal services: either may claim it.
        logs = [Path(running_stack["root"]) / "logs" / name for name in ("results-1.log", "longitudinal-1.log")]
        _wait_for(lambda: any("(attempt 1); again in" in log.read_text(errors="replace") for log in logs), 600,
                  "a delivery to the stopped PACS to fail")
    finally:
        restarted = stack.restart_orthanc(running_stack, "orthanc-pacs")
    pacs = _client(pacs_info)
    _wait_for(lambda: _seg_of_study(pacs, written.study_instance_uid), 300, "the SEG once the PACS is back",
              running_stack)
    assert len(_seg_of_study(pacs, written.study_instance_uid)) == 1
    assert restarted["pid"] != pacs_process["pid"]


def test_every_port_of_the_stack_refuses_a_stranger(
    running_stack: dict[str, Any], tcga_siemens: WrittenStudy,
) -> None:
    """Issue 12: each port the stack opens refuses a client without credentials (HTTP 401, TLS, SCRAM, a
    rejected DICOM association); the services' metrics ports speak TLS only, refuse /metrics and tell a
    stranger only the status of /healthz and /readyz; read with the scraper's login, they carry no
    identifier of the study the stack processed (test_study_sent_by_cstore... ran it through)."""
    first = pydicom.dcmread(next(iter(tcga_siemens.series.values())).paths[0], stop_before_pixels=True)
    identifiers = [tcga_siemens.study_instance_uid, str(first.PatientID), str(first.get("AccessionNumber", "")),
                   str(first.PatientName), str(first.SeriesInstanceUID), str(first.SOPInstanceUID)]
    assert kafka_is_secured(running_stack)
    verdicts = probe_stack(running_stack, identifiers=identifiers)
    print("\nports probed:\n" + "\n".join(f"  {v}" for v in verdicts))
    open_ports = [str(v) for v in verdicts if not v.refused]
    assert not open_ports, "ports that let a stranger in:\n" + "\n".join(open_ports)
    kinds = {v.kind for v in verdicts}
    assert {"postgresql", "orthanc-https", "orthanc-http", "dicom", "metrics", "kafka", "triton-grpc",
            "triton-http", "console"} <= kinds, stack.exited_processes(running_stack)
    # A worker killed by an earlier test stays in stack.json (its replacement runs under another name).
    services = {p["name"] for p in running_stack["processes"] if "service" in p and stack.is_running(p)}
    assert services <= {v.process for v in verdicts if v.kind == "metrics"}
