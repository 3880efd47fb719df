"""Orthanc servers started by neuroflow itself (tests, the local stack): no systemd, no shared state.

Each server gets its own folder (storage, index, config, log), loopback ports, generated credentials,
and the DICOMweb plugin; its configuration is ``deploy/orthanc/orthanc.json.template`` filled in. The
REST API answers loopback clients only (``RemoteAccessAllowed`` false: Orthanc 1.10 has no HTTP bind
address), with HTTPS when given a certificate, and only with the generated credentials: an ``admin`` user
and one user per neuroflow service, each allowed only its own requests (core/orthanc_rights.py). Only
declared DICOM peers (AE title and host) may associate. The DICOM port listens on every interface
(Orthanc 1.10 cannot bind it to one), which is why these servers are for development machines only.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from neuroflow.core.orthanc import DicomModality, OrthancEndpoint, client_ssl_context
from neuroflow.core.orthanc_rights import ADMIN_USER, SERVICE_RIGHTS, SERVICE_USERS
from neuroflow.devtools.certificates import CertificateAuthority
from neuroflow.devtools.cstore import SCANNER_AET
from neuroflow.devtools.ports import ChildServer, free_loopback_port, http_ok, stop_child, wait_until_ready

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
# Installed by the Debian package orthanc-dicomweb (dpkg -L orthanc-dicomweb).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CONFIG_TEMPLATE = Path(__file__).resolve().parents[3] / "deploy" / "orthanc" / "orthanc.json.template"
# The disk guard (Lua): refuses C-STORE with 0xA700 while free space is under min_free_bytes.
STORAGE_GUARD_SCRIPT = CONFIG_TEMPLATE.with_name("storage-guard.lua")
# Least rights per user (IncomingHttpRequestFilter): 403 for a request its user may not send.
SERVICE_RIGHTS_SCRIPT = CONFIG_TEMPLATE.with_name("service-rights.lua")
# In an Orthanc's folder when it serves HTTPS: how its TLS terminator runs (so a restart starts it again).
HTTPS_FILE = "https.json"
# The development scanner: the AE title devtools.cstore sends as, from loopback. Declared in every Orthanc
# started here, since only declared peers may store (DicomAlwaysAllowStore false).
DEV_SCANNER = {"scanner": DicomModality(SCANNER_AET, "127.0.0.1", 104)}


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
    passwords: dict[str, str] = field(default_factory=dict)  # by user: admin and one per service
    # With HTTPS: the TLS terminator clients connect to (devtools/tls_proxy.py), and Orthanc's own
    # loopback HTTP port behind it; without, None and the endpoint's port.
    https_proxy: subprocess.Popen[bytes] | None = None
    orthanc_http_port: int = 0

    def service_endpoint(self, user: str) -> OrthancEndpoint:
        """The endpoint as ``user`` (a service of core/orthanc_rights.py) reaches it, with that user's rights."""
        return dataclasses.replace(self.endpoint, username=user, password=self.passwords[user])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM by PID (SIGKILL after ``timeout_s``), then wait until its ports are free (the HTTPS
        terminator's first). Stopping a stopped server does nothing."""
        if self.https_proxy is not None:
            stop_child(self.https_proxy, [self.endpoint.http_port], timeout_s, f"HTTPS of Orthanc {self.name}")
        self._stop_process([self.orthanc_http_port or self.endpoint.http_port, self.endpoint.dicom_port], timeout_s,
                           f"Orthanc {self.name}")


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
    senders: Mapping[str, DicomModality] | None = None,
    accept_store_from_any_aet: bool = False,
    overwrite_instances: bool = False,
    tls: tuple[CertificateAuthority, Path] | None = None,
    client_certificates: bool = False,
    dicom_tls: bool = False,
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
    ``senders``: DICOM peers that only send to it (default: the development scanner, AE ``NFSCANNER``
    on loopback). Only declared peers (``modalities`` and ``senders``, AE title and host) may associate
    at all, unless ``accept_store_from_any_aet`` (any AE may then associate and store: never at a site).
    ``overwrite_instances``: an instance sent again replaces the stored one (default: it is kept).
    ``tls`` (the CA, a folder for the server's certificate): HTTPS on ``http_port``, its certificate
    signed by that CA, the endpoint carrying the CA file clients verify it with (devtools/tls_proxy.py
    terminates it: Orthanc itself then listens on another loopback port, plain HTTP, credentials still
    required). ``client_certificates``: with ``tls``, only HTTPS clients with a certificate of that CA
    connect. ``dicom_tls``: with ``tls``, the DICOM port speaks TLS only and wants a client certificate
    of that CA. ``min_free_bytes``: the disk guard's threshold (NEUROFLOW_MONITOR__MIN_FREE_BYTES
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
    orthanc_http_port = free_loopback_port() if tls else http_port
    dicom_port = dicom_port or free_loopback_port()
    passwords = {user: secrets.token_urlsafe(18) for user in (ADMIN_USER, *SERVICE_USERS)}
    certificate = tls[0].issue(f"orthanc-{name}", tls[1]) if tls else None
    # The admin's own client certificate, when the server asks for one.
    client = tls[0].issue(f"orthanc-{name}-client", tls[1], client=True) if tls and client_certificates else None
    endpoint = OrthancEndpoint(
        url=f"{'https' if tls else 'http'}://127.0.0.1:{http_port}", username=ADMIN_USER,
        password=passwords[ADMIN_USER], aet=aet, dicom_host="127.0.0.1", dicom_port=dicom_port,
        ca_file=str(tls[0].certificate) if tls else "",
        client_cert=str(client.certificate) if client else "", client_key=str(client.private_key) if client else "",
    )
    peers = dict(modalities or {})
    declared = {**(DEV_SCANNER if senders is None else senders), **peers}
    ca_file = str(tls[0].certificate) if tls else ""
    values = {
        "NAME": name,
        "STORAGE_DIRECTORY": str(storage_dir / "storage"),
        "INDEX_DIRECTORY": str(storage_dir / "index"),
        "PLUGINS": [str(DICOMWEB_PLUGIN)],
        "HTTP_PORT": orthanc_http_port,
        "REGISTERED_USERS": passwords,
        "SERVICE_RIGHTS": {user: list(rules) for user, rules in SERVICE_RIGHTS.items()},
        "DICOM_AET": aet,
        "DICOM_PORT": dicom_port,
        "DICOM_MODALITIES": {peer: {"AET": m.aet, "Host": m.host, "Port": m.port, "UseDicomTls": dicom_tls}
                             for peer, m in declared.items()},
        "DICOM_TLS_ENABLED": bool(tls) and dicom_tls,
        "DICOM_TLS_CERTIFICATE": str(certificate.certificate) if certificate and dicom_tls else "",
        "DICOM_TLS_PRIVATE_KEY": str(certificate.private_key) if certificate and dicom_tls else "",
        "DICOM_TLS_TRUSTED_CERTIFICATES": ca_file if dicom_tls else "",
        "OVERWRITE_INSTANCES": overwrite_instances,
        "DICOM_SCU_TIMEOUT": scu_timeout_s,
        "STABLE_AGE": stable_age_s,
        "ALLOW_STORE_FROM_ANY_AET": accept_store_from_any_aet,
        "LUA_SCRIPTS": [str(SERVICE_RIGHTS_SCRIPT), str(STORAGE_GUARD_SCRIPT)],
        "MIN_FREE_BYTES": min_free_bytes,
        "GUARD_CHECK_INTERVAL": guard_check_interval_s,
        "GUARD_DIRECTORIES": [str(storage_dir / "storage"), *(str(Path(d).resolve()) for d in guarded_dirs)],
    }
    config = Template(template.read_text()).substitute({k: json.dumps(v) for k, v in values.items()})
    config_path = storage_dir / "orthanc.json"
    config_path.write_text(config)
    os.chmod(config_path, 0o600)  # it holds the password
    https = storage_dir / HTTPS_FILE
    if certificate is not None:
        https.write_text(json.dumps({"listen": http_port, "target": orthanc_http_port,
                                     "certificate": str(certificate.combined),
                                     "client_ca": ca_file if client_certificates else None}))
    else:
        https.unlink(missing_ok=True)
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
    config = json.loads(config_path.read_text())
    server = OrthancProcess(name, endpoint, storage_dir, config_path, log_path, process, 0.0, peers,
                            config.get("RegisteredUsers", {}), orthanc_http_port=int(config["HttpPort"]))
    try:
        if (storage_dir / HTTPS_FILE).exists():
            server.https_proxy = _start_https_proxy(json.loads((storage_dir / HTTPS_FILE).read_text()),
                                                    storage_dir / "https-proxy.log")
        _wait_until_answering(server, wait_s)
    except BaseException:
        server.stop()
        raise
    server.started_in_s = time.monotonic() - started
    return server


def _start_https_proxy(options: dict[str, Any], log_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "neuroflow.devtools.tls_proxy", "--listen", str(options["listen"]),
               "--target", str(options["target"]), "--certificate", options["certificate"]]
    if options.get("client_ca"):
        command += ["--client-ca", options["client_ca"]]
    with log_path.open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _orthanc_environment() -> dict[str, str]:
    # DCMTK (Orthanc's DICOM layer) leaves Nagle's algorithm on unless TCP_NODELAY is set: every C-STORE
    # then waits out a delayed ACK, about 90 ms per instance on loopback (40 instances: 3.6 s, not 0.04 s).
    return {**os.environ, "TCP_NODELAY": "1"}


def _wait_until_answering(server: OrthancProcess, wait_s: float) -> None:
    endpoint = server.endpoint
    token = base64.b64encode(f"{endpoint.username}:{endpoint.password}".encode()).decode()
    context = client_ssl_context(endpoint)
    wait_until_ready(server.process, lambda: http_ok(f"{endpoint.url}/system", {"Authorization": f"Basic {token}"},
                                                     context=context),
                     wait_s, what=f"Orthanc {server.name} ({endpoint.url})", log_tail=server.log_tail,
                     error=OrthancStartFailed)
