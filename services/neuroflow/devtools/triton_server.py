"""NVIDIA Triton Inference Server started by neuroflow itself (tests, the local stack, benchmarks).

The server is the ``tritonserver`` binary that PyPI's ``nvidia-pytriton`` wheel bundles. The wheel is
never installed (it pins numpy<2 and protobuf<7, which would break our environment): ``fetch`` downloads
it once with pip into the neuroflow cache and unpacks it there, so CI downloads it once per machine.

On a machine without a GPU that build has only the Python backend. Its backend stub embeds the CPython
whose minor version it was built for and loads ``libpython3.X.so`` through ``LD_LIBRARY_PATH`` (we point
it at the library folder of the Python running neuroflow). The stub ignores ``PYTHONPATH``, so our
Python-backend models (models/triton/python_backend/model.py) add the folders named in
``NEUROFLOW_TRITON_SITE_PACKAGES`` to ``sys.path`` themselves to find numpy and onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, REPOSITORY_ROOT
from neuroflow.devtools.certificates import CertificateAuthority, IssuedCertificate
from neuroflow.devtools.ports import ChildServer, free_loopback_port, http_ok, wait_until_ports_free, wait_until_ready

PYTRITON_VERSION = "0.7.0"  # bundles Triton Inference Server 2.51.0
SITE_PACKAGES_VARIABLE = "NEUROFLOW_TRITON_SITE_PACKAGES"


class TritonStartFailed(RuntimeError):
    """tritonserver is missing, exited, or did not become ready in time; the message says which."""


def cache_dir() -> Path:
    return Path(os.environ.get("NEUROFLOW_CACHE", Path.home() / ".cache" / "neuroflow")) / "triton"


def server_dir(cache: Path | None = None) -> Path:
    """The unpacked ``pytriton/tritonserver`` folder (bin/, backends/) of the cached wheel."""
    return (cache or cache_dir()) / PYTRITON_VERSION / "pytriton" / "tritonserver"


def fetch(cache: Path | None = None) -> Path:
    """Download and unpack nvidia-pytriton into the cache unless already there; return ``server_dir``.
    Idempotent; an interrupted fetch leaves no half-unpacked folder behind (unpacked aside, then moved)."""
    cache = cache or cache_dir()
    target = server_dir(cache)
    stub = target / "backends" / "python" / "triton_python_backend_stub"
    if (target / "bin" / "tritonserver").is_file() and stub.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"))
    if not wheels:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(cache),
             f"nvidia-pytriton=={PYTRITON_VERSION}"],
            capture_output=True, text=True, check=False, timeout=900)
        wheels = sorted(cache.glob(f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"))
        if download.returncode != 0 or not wheels:
            raise TritonStartFailed(f"pip download nvidia-pytriton=={PYTRITON_VERSION} failed:\n{download.stderr}")
    staging = cache / f"{PYTRITON_VERSION}.partial.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    _unzip_with_modes(wheels[-1], staging)
    # The Python backend runs backends/python/triton_python_backend_stub; the wheel ships one stub per
    # CPython minor version, and pytriton itself copies the matching one there. The copy keeps the
    # stub's RUNPATH ($ORIGIN/../../../../nvidia_pytriton.libs) valid: both folders are 4 levels deep.
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    built = staging / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not built.is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise TritonStartFailed(f"nvidia-pytriton {PYTRITON_VERSION} has no Python backend stub for Python {version}")
    shutil.copy2(built, staging / "pytriton" / "tritonserver" / "backends" / "python" / built.name)
    final = cache / PYTRITON_VERSION
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return target


def _unzip_with_modes(wheel: Path, into: Path) -> None:
    # zipfile drops Unix permissions; the server and stub binaries must stay executable.
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            path = Path(archive.extract(member, into))
            mode = (member.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)
            elif path.is_file() and ("/bin/" in member.filename or member.filename.endswith("_stub")):
                path.chmod(path.stat().st_mode | stat.S_IXUSR)


def python_library_dir() -> Path:
    """The folder holding ``libpython3.X.so.1.0`` of the running Python (the stub embeds it)."""
    libdir = Path(str(sysconfig.get_config_var("LIBDIR") or ""))
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    if not (libdir / name).is_file():
        raise TritonStartFailed(f"{name} not found in {libdir}: the Triton Python backend needs a Python built "
                                "with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)")
    return libdir


def server_environment() -> dict[str, str]:
    """Environment of tritonserver: libpython for the stub, and where our model.py finds its packages."""
    libdir = str(python_library_dir())
    inherited = os.environ.get("LD_LIBRARY_PATH", "")
    paths = sysconfig.get_paths()
    packages = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    return {**os.environ, "LD_LIBRARY_PATH": f"{libdir}:{inherited}" if inherited else libdir,
            SITE_PACKAGES_VARIABLE: packages}


# Triton protocols only an operator uses (load/unload models, shared memory, tracing and log settings):
# refused unless a request carries the admin header. Inference, health and metadata stay open to clients.
RESTRICTED_GRPC = ("model-repository", "shared-memory", "trace", "logging")
# Over plain HTTP (Triton has no TLS there) everything but health is restricted: the port answers the
# probes of Kubernetes and of start_triton, and carries no tensor without the admin header.
RESTRICTED_HTTP = ("metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
                   "trace", "logging")
ADMIN_HEADER = "neuroflow-triton-admin"
# What a gRPC request carries: Triton prefixes the header named in --grpc-restricted-protocol with this.
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
CLIENT_NAME = "neuroflow-triton-client"  # the common name of the stack services' client certificate


@dataclass(frozen=True)
class TritonServerTls:
    """TLS of Triton's gRPC endpoint: the server's certificate and key, the CA whose client certificates it
    accepts when ``mutual``, and the value of the admin header (``ADMIN_HEADER``) restricted protocols need."""

    cert: Path
    key: Path
    ca: Path
    mutual: bool
    admin_key: str

    def arguments(self) -> list[str]:
        return [
            "--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}",
            f"--grpc-root-cert={self.ca}", *(["--grpc-use-ssl-mutual=true"] if self.mutual else []),
            f"--grpc-restricted-protocol={','.join(RESTRICTED_GRPC)}:{ADMIN_HEADER}={self.admin_key}",
            f"--http-restricted-api={','.join(RESTRICTED_HTTP)}:{ADMIN_HEADER}={self.admin_key}",
        ]


@dataclass
class TritonProcess(ChildServer):
    """A running tritonserver: where to reach it and how to stop it."""

    repository: Path
    grpc_port: int
    http_port: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    started_in_s: float  # from launch until every model was ready
    tls: TritonServerTls | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM by PID (SIGKILL after ``timeout_s``), then wait until its ports are free. Idempotent."""
        self._stop_process([self.grpc_port, self.http_port, self.metrics_port], timeout_s, "tritonserver")


def start_triton(
    repository: Path,
    log_path: Path,
    *,
    grpc_port: int | None = None,
    http_port: int | None = None,
    metrics_port: int | None = None,
    wait_s: float = 60.0,
    tls: TritonServerTls | None = None,
) -> TritonProcess:
    """Start tritonserver on loopback serving ``repository`` (built by neuroflow.core.triton_repository)
    and return once every model in it is ready. Ports None: free loopback ports are picked. ``tls``: gRPC
    over TLS with restricted protocols (None: plaintext and unrestricted, for tests of other things).
    TritonStartFailed, with the end of the log, when it exits or is not ready within ``wait_s``."""
    binary = fetch() / "bin" / "tritonserver"
    ports = [p or free_loopback_port() for p in (grpc_port, http_port, metrics_port)]
    while len(set(ports)) < 3:
        ports = [ports[0], *(free_loopback_port() for _ in range(2))]
    grpc_port, http_port, metrics_port = ports
    command = [
        str(binary), f"--model-repository={repository.resolve()}",
        f"--backend-directory={binary.parent.parent / 'backends'}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
        # Stop within seconds when told to: in-flight requests get 5 s, not Triton's default 30 s.
        "--exit-timeout-secs=5",
        # The Python backend moves tensors through shared memory that grows in steps (default 1 MB): a
        # 256^3 skull-stripping volume is 64 MB in, 128 MB out, so grow in 64 MB steps.
        "--backend-config=python,shm-growth-byte-size=67108864",
        "--log-verbose=0",
        *(tls.arguments() if tls else []),
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=server_environment())
    server = TritonProcess(repository, grpc_port, http_port, metrics_port, log_path, process, 0.0, tls)
    try:
        _wait_until_ready(server, wait_s)
    except BaseException:
        server.stop()
        raise
    server.started_in_s = time.monotonic() - started
    return server


def _wait_until_ready(server: TritonProcess, wait_s: float) -> None:
    url = f"http://{server.http_url}/v2/health/ready"
    wait_until_ready(server.process, lambda: http_ok(url), wait_s, what=f"tritonserver ({url}, log {server.log_path})",
                     log_tail=server.log_tail, error=TritonStartFailed, interval_s=0.1)


def start_stack_triton(folder: Path, models: Path, *, intra_op_threads: int = 1,
                       tls: TritonServerTls | None = None) -> TritonProcess:
    """The local stack's Triton: the CPU variant of every model in ``models`` built into
    ``folder/repository`` (rebuilt at every start, so it follows the model repository), log in ``folder``."""
    from neuroflow.core.triton_repository import ServingOptions, build_repository

    build_repository(models, folder / "repository", "cpu", options=ServingOptions(intra_op_threads=intra_op_threads))
    return start_triton(folder / "repository", folder / "tritonserver.log", wait_s=120.0, tls=tls)


def stack_triton_tls(folder: Path, ca: CertificateAuthority, *, mutual: bool = True) -> TritonServerTls:
    """Certificates of a local Triton signed by ``ca``, kept in ``folder/tls`` (reused when there, so a
    restarted server presents the same): the server's, one for its clients (``client_certificate``), and
    an admin key (the restricted protocols' header value) in a file only its owner reads."""
    tls = folder / "tls"
    server = IssuedCertificate(tls / "triton.crt", tls / "triton.key", tls / "triton.pem")
    if not server.private_key.is_file():
        server = ca.issue("triton", tls, hosts=("127.0.0.1", "localhost"))
        ca.issue(CLIENT_NAME, tls, client=True)
    admin = tls / "admin-key"
    if not admin.is_file():
        admin.touch(mode=0o600)
        admin.write_text(secrets.token_urlsafe(32))
    return TritonServerTls(server.certificate, server.private_key, ca.certificate, mutual, admin.read_text().strip())


def client_certificate(folder: Path) -> IssuedCertificate:
    """The client certificate ``stack_triton_tls`` made in ``folder`` (what the stack's services present)."""
    tls = folder / "tls"
    return IssuedCertificate(tls / f"{CLIENT_NAME}.crt", tls / f"{CLIENT_NAME}.key", tls / f"{CLIENT_NAME}.pem")


# --- command line (scripts/triton.sh): a server that outlives the command, recorded in <data-dir>/triton.json


def _recorded(data_dir: Path) -> dict[str, int] | None:
    """The record of the server started in ``data_dir`` while that process runs and is a tritonserver."""
    path = data_dir / "triton.json"
    if not path.is_file():
        return None
    record: dict[str, int] = json.loads(path.read_text())
    try:
        command = Path(f"/proc/{record['pid']}/cmdline").read_bytes()
    except OSError:
        return None
    return record if b"tritonserver" in command else None  # a recycled PID belongs to another program


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triton.sh", description="Triton Inference Server for development")
    parser.add_argument("action", choices=("fetch", "start", "stop", "status"))
    parser.add_argument("--models", type=Path, default=DEFAULT_MODEL_REPOSITORY, help="model repository (start)")
    parser.add_argument("--data-dir", type=Path, default=REPOSITORY_ROOT / ".neuroflow" / "triton")
    parser.add_argument("--grpc-port", type=int, default=None)
    parser.add_argument("--http-port", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model instance (start)")
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir.resolve()
    running = _recorded(data_dir)
    if args.action == "fetch":
        print(fetch())
        return 0
    if args.action == "status":
        print(f"tritonserver pid {running['pid']}, gRPC 127.0.0.1:{running['grpc']}" if running else "not running")
        return 0 if running else 3
    if args.action == "stop":
        if running:
            os.kill(running["pid"], signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _recorded(data_dir) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _recorded(data_dir):
                os.kill(running["pid"], signal.SIGKILL)
            wait_until_ports_free([running["grpc"], running["http"], running["metrics"]], 30, "tritonserver")
        return 0
    if running:
        print(f"already running: pid {running['pid']}, gRPC 127.0.0.1:{running['grpc']}", file=sys.stderr)
        return 1
    from neuroflow.core.triton_repository import ServingOptions, build_repository

    build_repository(args.models, data_dir / "repository", "cpu", options=ServingOptions(intra_op_threads=args.threads))
    server = start_triton(data_dir / "repository", data_dir / "tritonserver.log", grpc_port=args.grpc_port,
                          http_port=args.http_port, metrics_port=args.metrics_port, wait_s=120.0)
    record = {"pid": server.pid, "grpc": server.grpc_port, "http": server.http_port, "metrics": server.metrics_port}
    (data_dir / "triton.json").write_text(json.dumps(record) + "\n")
    print(server.grpc_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
