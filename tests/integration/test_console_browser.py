"""The console (`neuroflow serve console`) in a real browser: headless Chromium (Debian's, driven through
Debian's chromedriver by Selenium), against a real SQLite workflow state seeded as the orchestrator leaves
it, the console running as its own process on a free loopback port.

Proved here: a wrong password is refused; the worklist shows a seeded study with its NEEDS REVIEW flag and a
dead-lettered one with its reason; a radiologist's rejection is recorded (the study page and the worklist
show REJECTED, the audit trail has it, the acceptance metric counts it); a viewer cannot POST a review (403);
a POST without the CSRF token is refused (403); an operator replays a dead letter (its workflow is PENDING
again, the trail names the operator), cancels a study's workflow (CANCELLED, its pending delivery withheld) and
pauses and resumes a pipeline; a result accepted with a component removed owes its destinations the corrected
result (tests/integration/test_correction.py builds and sends it); every log-in, log-out and refused log-in is in
the audit trail."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import bcrypt
import pytest

from neuroflow.core.audit import OPERATIONS_CHAIN, SESSIONS_CHAIN
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.state import SqliteStateStore, WorkflowStatus, notice_workflow_id
from neuroflow.core.state_schedules import DeadLetterKind, DeadLetterRecord, DeliveryStatus, TimerKind
from neuroflow.devtools import stack
from neuroflow.devtools.ports import free_loopback_port
from neuroflow.results.report import (
    REPORT_FILE,
    ReportStatus,
    ReviewAssessment,
    SeriesEntry,
    StudyReport,
    TumourVolumes,
)
from tests.servers.browser import MISSING, chromium_installed, headless_chromium, log_in

pytestmark = pytest.mark.skipif(not chromium_installed(), reason=MISSING)
pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

REVIEWED_KEY = "a1" * 32  # pseudonymous study keys, as ingest makes them
FAILED_KEY = "b2" * 32
ARRIVING_KEY = "c3" * 32
CANCELLED_KEY = "d4" * 32
WAITING_KEY = "e5" * 32
CORRECTED_KEY = "f6" * 32
PASSWORDS = {"rad": ("radiologist", "rad-pass"), "op": ("operator", "op-pass"), "view": ("viewer", "view-pass")}
WAIT_S = 30.0
OIDC_SECRET = "client-secret-of-the-test"


@dataclass
class Running:
    url: str
    metrics_url: str
    state: SqliteStateStore
    reviewed_workflow: str
    failed_workflow: str
    letter_id: str
    reports: Path


def _seed(state: SqliteStateStore, reports: Path) -> tuple[str, str, str]:
    done, failed = "wf-reviewed-1", "wf-failed-1"
    state.create(done, REVIEWED_KEY, "glioma", "hash-1")
    for status, stage in ((WorkflowStatus.RUNNING, "preprocess"), (WorkflowStatus.RUNNING, "segmentation"),
                          (WorkflowStatus.SUCCEEDED, "results")):
        state.set_status(done, status, stage=stage)
    state.record_stage_timing(done, "segmentation", 42.0)
    # Its results wait for the PACS (the destination is down): the rejection must keep them at the site.
    state.enqueue_delivery(done, "PACS", study_key=REVIEWED_KEY, pipeline="glioma", stage="results",
                           sop_instance_uids=["1.2.826.0.1.3680043.8.498.3"], now=time.time() + 3600,
                           give_up_at=time.time() + 7200)
    # ... and had reached another destination already: the rejection must retract it there.
    state.enqueue_delivery(done, "VNA", study_key=REVIEWED_KEY, pipeline="glioma", stage="results",
                           sop_instance_uids=["1.2.826.0.1.3680043.8.498.3"], now=time.time(),
                           give_up_at=time.time() + 7200)
    (sent,) = state.claim_due_deliveries(time.time(), "replica-seed", 30.0)
    state.delivery_done(sent, "replica-seed", time.time())
    report = StudyReport(
        study_instance_uid="1.2.826.0.1.3680043.8.498.1", study_key=REVIEWED_KEY, pipeline="glioma",
        status=ReportStatus.SUCCEEDED, model=ModelRef(name="glioma-seg", version=3),
        series=[SeriesEntry(series_instance_uid="1.2.826.0.1.3680043.8.498.2", series_number=4,
                            description="AX FLAIR", role=SeriesRole.FLAIR, confidence=0.97,
                            reasons=["SeriesDescription says FLAIR", "TR/TE/TI fit FLAIR"], used_as=SeriesRole.FLAIR)],
        volumes_ml=TumourVolumes(WT=30.0, TC=12.0, ET=4.0),
        review=ReviewAssessment(needs_review=True, risk_score=2, threshold=1, alarms=["flipped inputs disagree"]))
    (reports / REVIEWED_KEY / done).mkdir(parents=True)
    (reports / REVIEWED_KEY / done / REPORT_FILE).write_text(report.model_dump_json())
    state.create(failed, FAILED_KEY, "glioma", "hash-2")
    state.set_status(failed, WorkflowStatus.RUNNING, stage="segmentation")
    state.set_status(failed, WorkflowStatus.DEAD_LETTERED, stage="segmentation", detail="retries exhausted")
    letter = DeadLetterRecord(letter_id="dl-0001", kind=DeadLetterKind.TASK, workflow_id=failed, study_key=FAILED_KEY,
                              pipeline="glioma", stage="segmentation", attempts=3, code="INFERENCE_UNAVAILABLE",
                              reason=f"study {FAILED_KEY}: the inference server did not answer", payload=b"",
                              created_at=time.time(), replayed_at=None)
    state.record_dead_letter(letter)
    return done, failed, letter.letter_id


class _Provider(http.server.BaseHTTPRequestHandler):
    """A minimal OpenID provider for the authorization-code flow: it logs in whoever asks, as dr.who with the
    radiologist role (the console's side of the flow is what is tested, not a provider)."""

    nonces: ClassVar[dict[str, str]] = {}

    @property
    def issuer(self) -> str:
        return f"http://localhost:{cast(tuple[str, int], self.server.server_address)[1]}"

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        issuer = self.issuer
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/.well-known/openid-configuration":
            self._json({"issuer": issuer, "authorization_endpoint": f"{issuer}/auth",
                        "token_endpoint": f"{issuer}/token"})
            return
        query = dict(urllib.parse.parse_qsl(url.query))
        code = f"code-{len(self.nonces)}"
        self.nonces[code] = query["nonce"]
        self.send_response(302)
        self.send_header("Location", f"{query['redirect_uri']}?code={code}&state={query['state']}")
        self.end_headers()

    def do_POST(self) -> None:
        form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
        if form.get("client_secret") != OIDC_SECRET or form.get("code") not in self.nonces:
            self.send_response(400)
            self.end_headers()
            return
        claims = {"iss": self.issuer, "aud": "neuroflow-console",
                  "exp": time.time() + 300, "nonce": self.nonces.pop(form["code"]), "sub": "u-1",
                  "preferred_username": "dr.who", "realm_access": {"roles": ["offline_access", "radiologist"]}}
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        self._json({"id_token": f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2lnbmF0dXJl", "token_type": "Bearer"})


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("console")
    state = SqliteStateStore(root / "state.sqlite3")
    done, failed, letter = _seed(state, root / "reports")
    # bcrypt at its lowest cost: the test checks the hashes are used, not how slow they are.
    users = [{"name": name, "role": role, "password_hash": bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()}
             for name, (role, pw) in PASSWORDS.items()]
    (root / "users.yaml").write_text(json.dumps({"users": users}))
    port, metrics_port = free_loopback_port(), free_loopback_port()
    provider = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    # The provider as "localhost", the console as 127.0.0.1: two sites, as a real provider and console are.
    oidc = {"NEUROFLOW_CONSOLE__OIDC__ISSUER": f"http://localhost:{provider.server_address[1]}",
            "NEUROFLOW_CONSOLE__OIDC__CLIENT_ID": "neuroflow-console",
            "NEUROFLOW_CONSOLE__OIDC__CLIENT_SECRET": OIDC_SECRET,
            "NEUROFLOW_CONSOLE__OIDC__ROLE_CLAIM": "realm_access.roles",
            "NEUROFLOW_CONSOLE__OIDC__REDIRECT_URL": f"http://127.0.0.1:{port}/oidc/callback"}
    env = {**os.environ, "NEUROFLOW_STATE__KIND": "sqlite", "NEUROFLOW_STATE__SQLITE_PATH": str(root / "state.sqlite3"),
           "NEUROFLOW_REPORTS_DIR": str(root / "reports"), "NEUROFLOW_RECORDS_ROOT": str(root / "records"),
           "NEUROFLOW_CONSOLE__PORT": str(port), "NEUROFLOW_CONSOLE__USERS_FILE": str(root / "users.yaml"),
           "NEUROFLOW_CONSOLE__REFRESH_S": "1", "NEUROFLOW_METRICS_PORT": str(metrics_port), "NEUROFLOW_SITE": "test",
           **oidc}
    log = (root / "console.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "neuroflow.cli", "serve", "console"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert process.poll() is None, (root / "console.log").read_text()
            try:
                urllib.request.urlopen(f"{url}/login", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the console did not answer"
                time.sleep(0.2)
        yield Running(url, f"http://127.0.0.1:{metrics_port}/metrics", state, done, failed, letter, root / "reports")
    finally:
        process.terminate()
        process.wait(timeout=30)
        provider.shutdown()
        log.close()
        state.close()
        # What the console logged names studies by key only: no UID of the seeded report.
        assert "1.2.826.0.1.3680043.8.498" not in (root / "console.log").read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium() as driver:
        yield driver


def _wait(condition: Any, what: str) -> Any:
    """``condition()`` once true. A page that is being replaced (a form was submitted) is not there yet: an element
    found on the old page goes stale before its text is read, or is missing from the new one until it loads."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            found = condition()
        except (StaleElementReferenceException, NoSuchElementException):
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _post(url: str, fields: dict[str, str], cookie: str | None) -> int:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                     headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _session(driver: Any) -> tuple[str, str]:
    """The browser's session cookie and the page's CSRF token, for a request made outside the browser."""
    cookie = driver.get_cookie("neuroflow_console")
    token = driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    return f"neuroflow_console={cookie['value']}", token


def _metric(url: str, decision: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    pattern = rf'^neuroflow_console_review_decisions_total\{{[^}}]*decision="{decision}"[^}}]*\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_wrong_password_is_refused(console: Running, browser: Any) -> None:
    log_in(browser, console.url, "rad", "not-the-password")
    assert "Wrong user name or password" in browser.find_element(By.ID, "login-error").text
    assert browser.current_url.endswith("/login")
    browser.get(f"{console.url}/")  # every page needs a log-in
    assert browser.current_url.endswith("/login")


def test_a_user_logs_in_through_the_oidc_provider(console: Running, browser: Any) -> None:
    browser.delete_all_cookies()
    browser.get(f"{console.url}/login")
    browser.find_element(By.LINK_TEXT, "Log in with the hospital account").click()
    who = _wait(lambda: browser.find_elements(By.ID, "who"), "the worklist after the OIDC log-in")
    assert who[0].text == "dr.who (radiologist)" and browser.current_url.rstrip("/") == console.url
    browser.get(f"{console.url}/oidc/callback?code=code-0&state=forged")  # a callback this browser did not start
    assert "not started here" in browser.find_element(By.TAG_NAME, "body").text
    sessions = [(r.action, r.actor, r.fields()["how"]) for r in console.state.audit_records(SESSIONS_CHAIN)]
    assert ("logged in", "console/dr.who", "oidc") in sessions and ("log-in refused", "console", "oidc") in sessions


def test_radiologist_rejects_a_result(console: Running, browser: Any) -> None:
    log_in(browser, console.url, "rad", "rad-pass")
    _wait(lambda: "radiologist" in browser.find_element(By.ID, "who").text if browser.find_elements(By.ID, "who")
          else None, "the worklist")
    rows = browser.find_element(By.ID, "worklist-rows").text
    assert REVIEWED_KEY[:16] in rows and "NEEDS REVIEW" in rows
    assert FAILED_KEY[:16] in rows and "the inference server did not answer" in rows
    # A study that arrives while the worklist is open shows up without a reload (live refresh).
    console.state.create("wf-arriving-1", ARRIVING_KEY, "glioma", "hash-3")
    console.state.set_status("wf-arriving-1", WorkflowStatus.RUNNING, stage="preprocess")
    _wait(lambda: ARRIVING_KEY[:16] in browser.find_element(By.ID, "worklist-rows").text, "the arriving study")
    assert "RUNNING (preprocess)" in browser.find_element(By.ID, "worklist-rows").text
    before = _metric(console.metrics_url, "rejected")
    browser.find_element(By.LINK_TEXT, REVIEWED_KEY[:16]).click()
    assert browser.find_element(By.ID, "viewer-link").get_attribute("href").endswith(f"/studies/{REVIEWED_KEY}/viewer")
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "AX FLAIR" in page and "SeriesDescription says FLAIR" in page  # the series chosen, and why
    assert "1.2.826.0.1.3680043" not in browser.page_source  # no UID on the page
    form = browser.find_element(By.CSS_SELECTOR, f"#workflow-{console.reviewed_workflow} form.review-form")
    form.find_element(By.CSS_SELECTOR, "input[value=rejected]").click()
    form.find_element(By.CSS_SELECTOR, "select[name=quality] option[value='2']").click()
    form.find_element(By.CSS_SELECTOR, "input[name=remove][value=ET]").click()
    form.find_element(By.NAME, "comment").send_keys("ET drawn on a vessel")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    section = _wait(lambda: browser.find_element(By.ID, f"workflow-{console.reviewed_workflow}").text
                    if "review recorded" in browser.page_source else None, "the decision")
    assert "REJECTED" in section and "rejected by rad" in section and "quality 2/5" in section
    assert "removed ET" in section and "ET drawn on a vessel" in section
    everything = console.state.audit_records(REVIEWED_KEY)
    assert ("viewed", "console/rad") in [(r.action, r.actor) for r in everything]  # reading is recorded too
    trail = [r for r in everything if r.action == "result reviewed"]
    assert [(r.actor, r.fields()["decision"], r.fields()["retracted"], r.fields()["deliveries_withheld"],
             r.fields()["retractions_owed"]) for r in trail] == [("console/rad", "rejected", True, ["PACS"], ["VNA"])]
    # The delivery loop of the results services sends it (tests/integration/test_retraction.py); until then:
    assert "Retraction notice to VNA: retraction pending" in section
    (delivery,) = [d for d in console.state.deliveries(workflow_id=console.reviewed_workflow)
                   if d.destination == "PACS"]
    assert delivery.status == DeliveryStatus.WITHHELD and "rejected by rad" in delivery.last_error
    assert "PACS: withheld: the result was rejected by rad" in section
    assert _metric(console.metrics_url, "rejected") == before + 1
    browser.get(f"{console.url}/?pipeline=glioma")
    _wait(lambda: "REJECTED" in browser.find_element(By.ID, "worklist-rows").text, "REJECTED on the worklist")


def test_viewer_may_not_review_and_csrf_is_required(console: Running, browser: Any) -> None:
    review = {"workflow_id": console.reviewed_workflow, "decision": "accepted"}
    target = f"{console.url}/studies/{REVIEWED_KEY}/review"
    log_in(browser, console.url, "view", "view-pass")
    _wait(lambda: browser.find_elements(By.ID, "worklist-rows"), "the worklist")
    cookie, token = _session(browser)
    assert _post(target, {**review, "csrf": token}, cookie) == 403  # the role
    log_in(browser, console.url, "rad", "rad-pass")
    _wait(lambda: browser.find_elements(By.ID, "worklist-rows"), "the worklist")
    cookie, token = _session(browser)
    assert _post(target, review, cookie) == 403  # no token
    assert _post(target, {**review, "csrf": token + "x"}, cookie) == 403  # a wrong one
    assert _post(target, {**review, "csrf": token}, None) == 403  # no session
    decisions = [r for r in console.state.audit_records(REVIEWED_KEY) if r.action == "result reviewed"]
    assert len(decisions) == 1  # none of the refused ones was recorded


def test_operator_replays_a_dead_letter(console: Running, browser: Any) -> None:
    log_in(browser, console.url, "op", "op-pass")
    _wait(lambda: browser.find_elements(By.ID, "worklist-rows"), "the worklist")
    browser.get(f"{console.url}/dead-letters")
    browser.find_element(By.CSS_SELECTOR, f"#letter-{console.letter_id} button").click()
    message = _wait(lambda: browser.find_elements(By.ID, "message"), "the replay's message")[0].text
    assert "scheduled again" in message
    record = console.state.get(console.failed_workflow)
    assert record is not None and record.status == WorkflowStatus.PENDING
    assert [r.actor for r in console.state.audit_records(FAILED_KEY) if r.action == "replayed"] == ["console/op"]


def test_the_stack_launches_the_console_with_its_dev_users(tmp_path: Path) -> None:
    """What `neuroflow stack up` does for the console (devtools/stack.py), on a SQLite state: one dev user per
    role with a random password (files only the owner reads), the console on its own port, recorded with it."""
    minimal: dict[str, Any] = {"root": str(tmp_path), "processes": [], "orthanc": {"site": {"passwords": {}}},
               "kafka": {"bootstrap": "127.0.0.1:9"}, "environment": {
                   "NEUROFLOW_STATE__SQLITE_PATH": str(tmp_path / "state.sqlite3"),
                   "NEUROFLOW_REPORTS_DIR": str(tmp_path / "reports")}}
    (tmp_path / "logs").mkdir()
    files = minimal["console"] = stack._console_users(tmp_path)
    record = stack._launch_service(minimal, "console", "console-1")
    try:
        passwords = json.loads(Path(files["passwords_file"]).read_text())
        assert set(passwords) == set(stack.CONSOLE_DEV_USERS)
        assert all(Path(f).stat().st_mode & 0o077 == 0 for f in files.values())
        url = f"http://127.0.0.1:{record['ports'][0]}"
        _wait(lambda: _answers(f"{url}/login"), "the stack's console")
        cookie_jar = urllib.request.HTTPCookieProcessor()
        opener = urllib.request.build_opener(cookie_jar)
        form = opener.open(f"{url}/login", timeout=10).read().decode()
        token = re.search(r'name="csrf" value="([^"]+)"', form)
        assert token is not None
        fields = {"csrf": token.group(1), "username": "admin", "password": passwords["admin"]}
        page = opener.open(f"{url}/login", data=urllib.parse.urlencode(fields).encode(), timeout=10)
        assert page.geturl().rstrip("/") == url and "admin (admin)" in page.read().decode()
    finally:
        stack.stop_process(record)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def test_operator_pauses_and_resumes_a_destination(console: Running, browser: Any) -> None:
    console.state.create("wf-queued-1", ARRIVING_KEY, "glioma", "hash-4")
    console.state.enqueue_delivery("wf-queued-1", "ARCHIVE", study_key=ARRIVING_KEY, pipeline="glioma",
                                   stage="results", sop_instance_uids=["2.25.9"], now=time.time(),
                                   give_up_at=time.time() + 60)
    log_in(browser, console.url, "op", "op-pass")
    _wait(lambda: browser.find_elements(By.ID, "worklist-rows"), "the worklist")
    browser.get(f"{console.url}/destinations")
    browser.find_element(By.CSS_SELECTOR, "#destination-ARCHIVE button").click()
    _wait(lambda: "ARCHIVE paused" in browser.page_source, "the pause")
    assert "PAUSED by console/op" in browser.find_element(By.ID, "destination-ARCHIVE").text
    claimed = console.state.claim_due_deliveries(time.time() + 3600, "replica-t", 30.0)
    assert "ARCHIVE" not in {d.destination for d in claimed}  # queued, not sent
    browser.find_element(By.CSS_SELECTOR, "#destination-ARCHIVE button").click()
    _wait(lambda: "ARCHIVE resumed" in browser.page_source, "the resumption")
    (queued,) = [d for d in console.state.claim_due_deliveries(time.time(), "replica-t", 30.0)
                 if d.destination == "ARCHIVE"]
    assert queued.workflow_id == "wf-queued-1" and queued.give_up_at > time.time() + 1000  # a full period again


def _get_status(url: str, cookie: str | None) -> int:
    """The status of a GET, redirects not followed (a 303 to the log-in page is the answer)."""
    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_the_viewer_is_mounted_behind_thelog_in(console: Running, browser: Any) -> None:
    """The console serves the viewer's pages and volumes only to a logged-in user: without a session the
    page and a volume send the browser to the log-in page; with one the request reaches the viewer (this
    console has no Orthanc, so it answers that the images cannot be read: 502, not 303)."""
    key = "0123456789ab"  # a study key as core.identity makes them (the seeded keys here are longer)
    page = f"{console.url}/studies/{key}/viewer"
    volume = f"{console.url}/viewer/studies/{key}/manifest.json"
    assert _get_status(page, None) == 303 and _get_status(volume, None) == 303
    log_in(browser, console.url, "view", "view-pass")
    _wait(lambda: browser.find_elements(By.ID, "worklist-rows"), "the worklist")
    cookie, _ = _session(browser)
    assert _get_status(volume, cookie) == 502


def test_every_log_in_log_out_and_refused_log_in_is_recorded(console: Running, browser: Any) -> None:
    before = len(console.state.audit_records(SESSIONS_CHAIN))
    log_in(browser, console.url, "view", "wrong-secret-1")
    _wait(lambda: browser.find_elements(By.ID, "login-error"), "the refusal")
    log_in(browser, console.url, "view", "view-pass")
    _wait(lambda: browser.find_elements(By.ID, "worklist-rows"), "the worklist")
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    _wait(lambda: browser.current_url.endswith("/login"), "the log-in page after logging out")
    records = console.state.audit_records(SESSIONS_CHAIN)[before:]
    assert [(r.action, r.actor, r.fields().get("user")) for r in records] == [
        ("log-in refused", "console", "view"), ("logged in", "console/view", None),
        ("logged out", "console/view", None)]
    assert not any("wrong-secret-1" in r.detail or "view-pass" in r.detail for r in records)  # never a password
    assert console.state.audit_verify(SESSIONS_CHAIN).intact


def test_operator_cancels_a_study_s_workflow(console: Running, browser: Any) -> None:
    """A workflow running again after a replay, its earlier failure notice still waiting for the PACS: the
    cancel ends the workflow and withholds the notice."""
    wid = "wf-cancel-1"
    console.state.create(wid, CANCELLED_KEY, "glioma", "hash-5")
    console.state.set_status(wid, WorkflowStatus.RUNNING, stage="segmentation")
    console.state.set_timer(wid, TimerKind.DEADLINE, "segmentation", 1, time.time() + 600)
    console.state.enqueue_delivery(notice_workflow_id(wid), "PACS", study_key=CANCELLED_KEY, pipeline="glioma",
                                   stage="results", sop_instance_uids=["2.25.77"], now=time.time() + 3600,
                                   give_up_at=time.time() + 7200)
    log_in(browser, console.url, "op", "op-pass")
    _wait(lambda: browser.find_elements(By.ID, "worklist-rows"), "the worklist")
    browser.get(f"{console.url}/studies/{CANCELLED_KEY}")
    browser.find_element(By.CSS_SELECTOR, f"#workflow-{wid} form.cancel-form button").click()
    message = _wait(lambda: browser.find_elements(By.ID, "message"), "the cancel's message")[0].text
    assert message == "cancelled: glioma"
    assert not browser.find_elements(By.CSS_SELECTOR, f"#workflow-{wid} form.cancel-form")  # nothing left to cancel
    record = console.state.get(wid)
    assert record is not None and record.status == WorkflowStatus.CANCELLED and console.state.timer(wid) is None
    (notice,) = console.state.deliveries(workflow_id=notice_workflow_id(wid))
    assert notice.status == DeliveryStatus.WITHHELD and "cancelled by console/op" in notice.last_error
    (last,) = console.state.audit_records(CANCELLED_KEY)[-2:-1]  # the last but the page's own reading
    assert (last.action, last.actor) == ("cancelled", "console/op") and "PACS withheld" in last.fields()["detail"]
    browser.get(f"{console.url}/?status=CANCELLED")
    rows = _wait(lambda: browser.find_element(By.ID, "worklist-rows").text, "the worklist")
    assert CANCELLED_KEY[:16] in rows and "CANCELLED" in rows


def test_operator_pauses_and_resumes_a_pipeline(console: Running, browser: Any) -> None:
    log_in(browser, console.url, "op", "op-pass")
    _wait(lambda: browser.find_elements(By.ID, "worklist-rows"), "the worklist")
    browser.get(f"{console.url}/pipelines")
    browser.find_element(By.CSS_SELECTOR, "#pipeline-glioma button").click()
    _wait(lambda: "glioma paused" in browser.page_source, "the pause")
    assert "PAUSED by console/op" in browser.find_element(By.ID, "pipeline-glioma").text
    # A study arriving now is held as the orchestrator holds it: PENDING on a due dispatch timer.
    console.state.create("wf-waiting-1", WAITING_KEY, "glioma", "hash-6")
    console.state.set_timer("wf-waiting-1", TimerKind.RETRY, "preprocess", 1, time.time())
    assert "wf-waiting-1" not in [t.workflow_id for t in console.state.claim_due_timers(time.time(), "r-t", 0.01)]
    browser.get(f"{console.url}/")
    _wait(lambda: "PIPELINE PAUSED" in browser.find_element(By.ID, "worklist-rows").text, "the held study's flag")
    browser.get(f"{console.url}/pipelines")
    waiting = [r.workflow_id for r in console.state.list(WorkflowStatus.PENDING) if r.pipeline == "glioma"]
    assert "wf-waiting-1" in waiting
    assert browser.find_element(By.CSS_SELECTOR, "#pipeline-glioma td:nth-child(3)").text == str(len(waiting))
    browser.find_element(By.CSS_SELECTOR, "#pipeline-glioma button").click()
    _wait(lambda: "glioma resumed" in browser.page_source, "the resumption")
    assert "wf-waiting-1" in [t.workflow_id for t in console.state.claim_due_timers(time.time(), "r-t", 0.01)]
    assert [(r.action, r.actor) for r in console.state.audit_records(OPERATIONS_CHAIN)] == [
        ("pipeline paused", "console/op"), ("pipeline resumed", "console/op")]


def test_radiologist_accepts_a_result_without_a_component(console: Running, browser: Any) -> None:
    """The result reached the PACS and waits for the VNA: the PACS is owed the corrected result, the VNA gets
    only the corrected one (the original is withheld there)."""
    wid, reports = "wf-corrected-1", console.reports
    console.state.create(wid, CORRECTED_KEY, "glioma", "hash-7")
    console.state.set_status(wid, WorkflowStatus.RUNNING, stage="results")
    console.state.set_status(wid, WorkflowStatus.SUCCEEDED, stage="results")
    for destination, due in (("PACS", time.time()), ("VNA", time.time() + 3600)):
        console.state.enqueue_delivery(wid, destination, study_key=CORRECTED_KEY, pipeline="glioma", stage="results",
                                       sop_instance_uids=["2.25.88"], now=due, give_up_at=time.time() + 7200)
    (sent,) = [d for d in console.state.claim_due_deliveries(time.time(), "replica-c", 30.0) if d.workflow_id == wid]
    console.state.delivery_done(sent, "replica-c", time.time())
    report = StudyReport(study_instance_uid="1.2.826.0.1.3680043.8.498.7", study_key=CORRECTED_KEY, pipeline="glioma",
                         status=ReportStatus.SUCCEEDED, model=ModelRef(name="glioma-seg", version=3),
                         volumes_ml=TumourVolumes(WT=20.0, TC=8.0, ET=2.0))
    (reports / CORRECTED_KEY / wid).mkdir(parents=True)
    (reports / CORRECTED_KEY / wid / REPORT_FILE).write_text(report.model_dump_json())
    log_in(browser, console.url, "rad", "rad-pass")
    _wait(lambda: browser.find_elements(By.ID, "worklist-rows"), "the worklist")
    browser.get(f"{console.url}/studies/{CORRECTED_KEY}")
    form = browser.find_element(By.CSS_SELECTOR, f"#workflow-{wid} form.review-form")
    form.find_element(By.CSS_SELECTOR, "input[value=accepted]").click()
    form.find_element(By.CSS_SELECTOR, "input[name=remove][value=ET]").click()
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(lambda: "review recorded" in browser.page_source, "the decision")
    (decision,) = [r for r in console.state.audit_records(CORRECTED_KEY) if r.action == "result reviewed"]
    assert (decision.fields()["decision"], decision.fields()["corrections_owed"],
            decision.fields()["deliveries_withheld"]) == ("accepted", ["PACS", "VNA"], ["VNA"])
    corrections = [d for d in console.state.deliveries(status=DeliveryStatus.PENDING)
                   if d.workflow_id.startswith(f"{wid}.correction.")]
    assert sorted((d.destination, d.stage) for d in corrections) == [("PACS", "correction"), ("VNA", "correction")]
    section = browser.find_element(By.ID, f"workflow-{wid}").text
    assert "Corrected result to PACS: pending" in section and "removed ET" in section
    # Rejected on second thoughts: the corrections not yet sent are withheld too, the PACS gets a retraction.
    form = browser.find_element(By.CSS_SELECTOR, f"#workflow-{wid} form.review-form")
    form.find_element(By.CSS_SELECTOR, "input[value=rejected]").click()
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(lambda: "Corrected result to PACS: withheld" in browser.find_element(By.ID, f"workflow-{wid}").text,
          "the corrections withheld")
    assert {d.status for d in console.state.corrections(workflow_id=wid)} == {DeliveryStatus.WITHHELD}
    assert [r.destination for r in console.state.retractions(workflow_id=wid)] == ["PACS"]
