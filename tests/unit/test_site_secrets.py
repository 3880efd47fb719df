"""Pseudonymous keys are HMACs with the site's secret, the secret comes from the environment or a file and
is never shown (settings, their errors, start-up logs), the distributed runtime does not start without it,
and the dev stack's files of credentials are readable by their owner only."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.identity import DEV_KEY_SECRET, patient_key, study_key, use_site_secret
from neuroflow.core.site_secret import MissingSiteSecret, install_site_secret
from neuroflow.devtools import stack
from neuroflow.runtime.distributed import Backends

STUDY_UID = "1.2.826.0.1.3680043.8.498.12345"
PATIENT_ID = "NF-MS-0042"


def test_keys_are_keyed_with_the_site_secret_not_a_plain_hash() -> None:
    use_site_secret(SecretStr("site-a"))
    key_a, patient_a = study_key(STUDY_UID), patient_key(PATIENT_ID)
    assert study_key(STUDY_UID) == key_a and patient_key(f"{PATIENT_ID} ") == patient_a  # deterministic
    assert key_a != hashlib.sha256(STUDY_UID.encode()).hexdigest()[:12]  # not recoverable by hashing guesses
    assert patient_a != hashlib.sha256(PATIENT_ID.encode()).hexdigest()[:12]
    assert len(key_a) == 12 and patient_a is not None and len(patient_a) == 12
    use_site_secret(SecretStr("site-b"))
    assert study_key(STUDY_UID) != key_a and patient_key(PATIENT_ID) != patient_a
    assert patient_key("") is None and patient_key("NF*") is None  # an unusable PatientID has no key
    assert study_key("x") != patient_key("x")  # a study and a patient with equal strings: different keys


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> NeuroflowSettings:
    monkeypatch.delenv("NEUROFLOW_KEYS__SECRET", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return NeuroflowSettings()


def test_the_distributed_runtime_refuses_to_start_without_a_site_secret(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(MissingSiteSecret, match="NEUROFLOW_KEYS__SECRET_FILE"):
        Backends(_settings(monkeypatch))
    with pytest.raises(MissingSiteSecret, match="public development one"):
        Backends(_settings(monkeypatch, NEUROFLOW_KEYS__SECRET=DEV_KEY_SECRET.get_secret_value()))
    install_site_secret(_settings(monkeypatch), distributed=False)  # the embedded runtime: the dev secret
    use_site_secret(DEV_KEY_SECRET)
    dev_key = study_key(STUDY_UID)
    install_site_secret(_settings(monkeypatch), distributed=False)
    assert study_key(STUDY_UID) == dev_key


def test_the_secret_is_read_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("from-a-mounted-secret\n")
    settings = _settings(monkeypatch, NEUROFLOW_KEYS__SECRET_FILE=str(secret_file))
    assert settings.keys.secret == SecretStr("from-a-mounted-secret")
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("postgresql://neuroflow:pw-from-file@db/neuroflow")
    settings = _settings(monkeypatch, NEUROFLOW_STATE__DSN_FILE=str(dsn_file))
    assert settings.state.dsn.get_secret_value().endswith("pw-from-file@db/neuroflow")


def test_settings_and_their_errors_never_show_a_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {"NEUROFLOW_KEYS__SECRET": "key-secret-VALUE-1", "NEUROFLOW_DICOM__ORTHANC_PASSWORD": "orthanc-VALUE-2",
              "NEUROFLOW_STATE__DSN": "postgresql://u:dsn-VALUE-3@db/x"}
    settings = _settings(monkeypatch, **values)
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    for value in values.values():
        assert value not in shown
    (tmp_path / "key").write_text("other")
    monkeypatch.setenv("NEUROFLOW_KEYS__SECRET_FILE", str(tmp_path / "key"))  # both set: refused ...
    with pytest.raises(ValidationError) as refused:
        NeuroflowSettings()
    assert "keys.secret and keys.secret_file are both set" in str(refused.value)
    for value in values.values():  # ... without echoing what was set
        assert value not in str(refused.value)


def test_a_service_logs_no_secret_at_start(tmp_path: Path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("key-secret-VALUE-4")
    env = {**os.environ, "NEUROFLOW_KEYS__SECRET": "", "NEUROFLOW_KEYS__SECRET_FILE": str(secret_file),
           "NEUROFLOW_DICOM__ORTHANC_PASSWORD": "orthanc-VALUE-5", "NEUROFLOW_STATE__DSN": "postgresql://u:dsn-VALUE-6@x/y",
           "NEUROFLOW_STATE__SQLITE_PATH": str(tmp_path / "state.sqlite3"),
           "NEUROFLOW_RECORDS_ROOT": str(tmp_path / "records"), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "neuroflow.cli", "-v", "serve", "orchestrator"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "in-memory bus" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.5)
        time.sleep(2.0)  # what it logs once running
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    text = log.read_text()
    assert "in-memory bus" in text and "stopping orchestrator" in text
    for value in ("key-secret-VALUE-4", "orthanc-VALUE-5", "dsn-VALUE-6"):
        assert value not in text


def test_serve_without_a_site_secret_exits_with_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "NEUROFLOW_KEYS__SECRET": "", "NEUROFLOW_STATE__SQLITE_PATH": str(tmp_path / "s.sqlite3")}
    done = subprocess.run([sys.executable, "-m", "neuroflow.cli", "serve", "orchestrator"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 2 and "no site key secret" in done.stderr and "Traceback" not in done.stderr


def test_stack_json_and_the_stack_key_secret_are_readable_by_their_owner_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old = os.umask(0o022)  # a usual umask: a plain write would make 0644
    try:
        (tmp_path / "stack.json").write_text("{}")  # an older one, world-readable
        stack._write(tmp_path, {"postgresql": {"dsn": "postgresql://u:pw@h/db"}})
        monkeypatch.delenv("NEUROFLOW_KEYS__SECRET", raising=False)
        environment = stack._key_secret_environment(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "stack.json").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "stack.json").read_text())["postgresql"]["dsn"] == "postgresql://u:pw@h/db"
    secret_file = Path(environment["NEUROFLOW_KEYS__SECRET_FILE"])
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and len(secret_file.read_text()) == 64
    assert stack._key_secret_environment(tmp_path) == environment  # the same secret for a replacement process
    monkeypatch.setenv("NEUROFLOW_KEYS__SECRET", "the-caller's")
    assert stack._key_secret_environment(tmp_path) == {}  # the services inherit the caller's
