"""Orthanc servers started by neuroflow itself (tests, the local stack): no systemd, no shared state.

Each server gets its own folder (storage, index, config, log), loopback ports, generated credentials,
and the DICOMweb plugin; its configuration is ``deploy/orthanc/orthanc.json.template`` filled in. The
REST API answers loopback clients only (``RemoteAccessAllowed`` false: Orthanc 1.10 has no HTTP bind
address) and only with the generated credentials. The DICOM port listens on every interface (Orthanc
1.10 cannot bind it to one), which is why these servers are for development machines only.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from neuroflow.core.orthanc import DicomModality, OrthancEndpoint
from neuroflow.devtools.ports import ChildServer, free_loopback_port, http_ok, wait_until_ready

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
# Installed by the Debian package orthanc-dicomweb (dpkg -L orthanc-dicomweb).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CONFIG_TEMPLATE = Path(__file__).resolve().parents[3] / "deploy" / "orthanc" / "orthanc.json.template"
# The disk guard (Lua): refuses C-STORE with 0xA700 while free space is under min_free_bytes.
STORAGE_GUARD_SCRIPT = CONFIG_TEMPLATE.with_name("storage-guard.lua")


class OrthancStartFailed(RuntimeError):
    """Orthanc exited or did not answer in time; the message carries the end of its log."""


@dataclass
class OrthancProcess(ChildServer):
    """A running Orthanc: where to reach it, and how to stop it."""

    name: str
    endpoint: OrthancEndpoint
    storage_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    started_in_s: float  # from launch until /system answered
    modalities: dict[str, DicomModality] = field(default_factory=dict)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM by PID (SIGKILL after ``timeout_s``), then wait until both ports are free.
        Stopping a stopped server does nothing."""
        self._stop_process([self.endpoint.http_port, self.endpoint.dicom_port], timeout_s, f"Orthanc {self.name}")


def start_orthanc(
    name: str,
    storage_dir: Path,
    *,
    aet: str,
    http_port: int | None = None,
    dicom_port: int | None = None,
    modalities: Mapping[str, DicomModality] | None = None,
    stable_age_s: int = 60,
    scu_timeout_s: int = 10,
    accept_store_from_any_aet: bool = True,
    min_free_bytes: int = 0,
    guard_check_interval_s: int = 10,
    guarded_dirs: Sequence[Path] = (),
    wait_s: float = 30.0,
    template: Path = CONFIG_TEMPLATE,
) -> OrthancProcess:
    """Start ``/usr/sbin/Orthanc`` on loopback with its data in ``storage_dir`` (created; an existing
    one is reused, so a restart keeps the studies) and return once ``/system`` answers.

    ``http_port`` / ``dicom_port`` None: free loopback ports are picked. ``modalities``: the DICOM peers
    this Orthanc may C-STORE to (the destination PACS), by name. ``stable_age_s``: Orthanc's StableAge,
    the seconds without a new instance after which a study is reported stable (the wait window).
    ``scu_timeout_s``: how long a C-STORE to a peer may take to connect/answer before it fails.
    ``accept_store_from_any_aet`` False: only the declared ``modalities`` may C-STORE into it (a PACS
    that refuses strangers). ``min_free_bytes``: the disk guard's threshold (NEUROFLOW_MONITOR__MIN_FREE_BYTES
    for the monitor's alert): under it, C-STORE is refused with status 0xA700 (0: never), free space being
    read at most every ``guard_check_interval_s`` for the storage and each of ``guarded_dirs`` (e.g. the
    volume store, on a machine where Orthanc sees it).
    Refuses (ValueError) an AE title longer than 16 characters; OrthancStartFailed, with the log's
    end, if Orthanc exits or does not answer within ``wait_s``."""
    if not 0 < len(aet) <= 16:
        raise ValueError(f"AE title {aet!r} must have 1 to 16 characters")
    if not ORTHANC_BINARY.exists() or not DICOMWEB_PLUGIN.exists():
        raise OrthancStartFailed(f"{ORTHANC_BINARY} or {DICOMWEB_PLUGIN} missing: "
                                 "run scripts/install-system-deps.sh (Debian orthanc, orthanc-dicomweb)")
    storage_dir = storage_dir.resolve()
    storage_dir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_loopback_port()
    dicom_port = dicom_port or free_loopback_port()
    endpoint = OrthancEndpoint(
        url=f"http://127.0.0.1:{http_port}", username="neuroflow", password=secrets.token_urlsafe(18),
        aet=aet, dicom_host="127.0.0.1", dicom_port=dicom_port,
    )
    peers = dict(modalities or {})
    values = {
        "NAME": name,
        "STORAGE_DIRECTORY": str(storage_dir / "storage"),
        "INDEX_DIRECTORY": str(storage_dir / "index"),
        "PLUGINS": [str(DICOMWEB_PLUGIN)],
        "HTTP_PORT": http_port,
        "REGISTERED_USERS": {endpoint.username: endpoint.password},
        "DICOM_AET": aet,
        "DICOM_PORT": dicom_port,
        "DICOM_MODALITIES": {peer: [m.aet, m.host, m.port] for peer, m in peers.items()},
        "DICOM_SCU_TIMEOUT": scu_timeout_s,
        "STABLE_AGE": stable_age_s,
        "ALLOW_STORE_FROM_ANY_AET": accept_store_from_any_aet,
        "LUA_SCRIPTS": [str(STORAGE_GUARD_SCRIPT)],
        "MIN_FREE_BYTES": min_free_bytes,
        "GUARD_CHECK_INTERVAL": guard_check_interval_s,
        "GUARD_DIRECTORIES": [str(storage_dir / "storage"), *(str(Path(d).resolve()) for d in guarded_dirs)],
    }
    config = Template(template.read_text()).substitute({k: json.dumps(v) for k, v in values.items()})
    config_path = storage_dir / "orthanc.json"
    config_path.write_text(config)
    os.chmod(config_path, 0o600)  # it holds the password
    return _launch(name, endpoint, storage_dir, peers, wait_s)


def restart_orthanc(name: str, storage_dir: Path, endpoint: OrthancEndpoint, *, wait_s: float = 30.0) -> OrthancProcess:
    """Start again an Orthanc that ``start_orthanc`` configured in ``storage_dir`` (same config, ports,
    credentials and data), e.g. after it was stopped to test a destination that goes away."""
    return _launch(name, endpoint, storage_dir.resolve(), {}, wait_s)


def _launch(name: str, endpoint: OrthancEndpoint, storage_dir: Path, peers: dict[str, DicomModality],
            wait_s: float) -> OrthancProcess:
    """Run Orthanc on the config in ``storage_dir`` and return once it answers (stopped again if not)."""
    config_path = storage_dir / "orthanc.json"
    log_path = storage_dir / "orthanc.log"
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen([str(ORTHANC_BINARY), str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, env=_orthanc_environment())
    server = OrthancProcess(name, endpoint, storage_dir, config_path, log_path, process, 0.0, peers)
    try:
        _wait_until_answering(server, wait_s)
    except BaseException:
        server.stop()
        raise
    server.started_in_s = time.monotonic() - started
    return server


def _orthanc_environment() -> dict[str, str]:
    # DCMTK (Orthanc's DICOM layer) leaves Nagle's algorithm on unless TCP_NODELAY is set: every C-STORE
    # then waits out a delayed ACK, about 90 ms per instance on loopback (40 instances: 3.6 s, not 0.04 s).
    return {**os.environ, "TCP_NODELAY": "1"}


def _wait_until_answering(server: OrthancProcess, wait_s: float) -> None:
    endpoint = server.endpoint
    token = base64.b64encode(f"{endpoint.username}:{endpoint.password}".encode()).decode()
    wait_until_ready(server.process, lambda: http_ok(f"{endpoint.url}/system", {"Authorization": f"Basic {token}"}),
                     wait_s, what=f"Orthanc {server.name} ({endpoint.url})", log_tail=server.log_tail,
                     error=OrthancStartFailed)
