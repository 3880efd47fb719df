"""A PostgreSQL server started by neuroflow itself (tests, the local stack): Debian's binaries, a
private data folder, TCP on 127.0.0.1 only, no Unix socket, no systemd.

PostgreSQL refuses to run as root: started by root, the server runs as the ``postgres`` user (the data
folder is handed to it, so its parent folders must be ones that user can enter).

Secured as a site's server should be (issue 12): TLS only (``hostssl`` lines in pg_hba.conf, no ``host``
line, so a plain connection is refused) with a certificate signed by the given CA (or one made beside the
data folder), and SCRAM-SHA-256 passwords (a generated superuser password, kept beside the data folder,
readable by its owner only). ``dsn()`` gives ``sslmode=verify-full`` with the CA as ``sslrootcert``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from neuroflow.devtools.certificates import CertificateAuthority, make_authority, write_private
from neuroflow.devtools.ports import ChildServer, free_loopback_port, wait_until_ready

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "neuroflow"


class PostgresStartFailed(RuntimeError):
    """initdb or the server failed, or the server did not accept connections in time."""


@dataclass
class PostgresProcess(ChildServer):
    data_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    started_in_s: float  # launch (after initdb) until the server accepted a connection
    password: str = ""  # the superuser's
    ca_file: Path | None = None  # the CA its certificate is signed by (clients' sslrootcert)
    host: str = "127.0.0.1"
    user: str = SUPERUSER

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string for ``database`` on this server: the superuser's password, TLS with the
        server's certificate and host name verified against the CA."""
        return (f"host={self.host} port={self.port} user={self.user} password={_quoted(self.password)} "
                f"dbname={database} connect_timeout=5 sslmode=verify-full sslrootcert={_quoted(str(self.ca_file))}")

    def create_database(self, name: str) -> str:
        """Create database ``name`` (letters, digits, underscores) and return its DSN."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and underscores only")
        _psql(self, f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        _psql(self, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown by PID (SIGINT: open sessions are ended, data is flushed), SIGKILL after
        ``timeout_s``; returns once the port is free. Stopping a stopped server does nothing."""
        self._stop_process([self.port], timeout_s, "PostgreSQL", signal.SIGINT)

    def start(self, wait_s: float = 30.0) -> None:
        """Start the stopped server again, on the same port and data folder (what a restarted pod or a
        failover looks like to its clients: the same address, every session gone)."""
        if self.running:
            raise PostgresStartFailed(f"PostgreSQL on port {self.port} is running: stop it first")
        self.process = start_postgres(self.data_dir, self.port, wait_s=wait_s).process  # same password and CA

    def restart(self, wait_s: float = 30.0) -> None:
        """Fast shutdown (every open session is ended) and start again on the same port and data."""
        self.stop()
        self.start(wait_s)


def start_postgres(data_dir: Path, port: int | None = None, *, wait_s: float = 30.0,
                   authority: CertificateAuthority | None = None) -> PostgresProcess:
    """Start PostgreSQL 15 with its cluster in ``data_dir`` (initdb first when the folder holds none; an
    existing cluster is reused, with its password and certificate) on ``127.0.0.1:port`` (a free port when
    None), TLS and SCRAM only (see the module doc; ``authority``: the CA to sign its certificate, default
    one of its own beside the data folder), and return once it accepts connections as the superuser
    ``neuroflow``. PostgresStartFailed, with the log's end, otherwise."""
    binary = POSTGRES_BIN / "postgres"
    if not binary.exists():
        raise PostgresStartFailed(f"{binary} missing: run scripts/install-system-deps.sh (Debian postgresql)")
    run_as = "postgres" if os.geteuid() == 0 else None
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if run_as:
        account = pwd.getpwnam(run_as)
        os.chown(data_dir, account.pw_uid, account.pw_gid)
    data_dir.chmod(0o700)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    password_file = data_dir.parent / f"{data_dir.name}.password"
    tls_dir = data_dir.parent / f"{data_dir.name}-tls"
    if not (data_dir / "PG_VERSION").exists():
        write_private(password_file, secrets.token_urlsafe(24).encode())
        _initdb(data_dir, password_file.read_text(), run_as)
        authority = authority or make_authority(tls_dir)
        _install_certificate(data_dir, authority, tls_dir, run_as)
    password = password_file.read_text()
    ca_file = data_dir.parent / f"{data_dir.name}-ca.crt"
    port = port or free_loopback_port()
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(binary), "-D", str(data_dir), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "max_connections=200",
             "-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key",
             "-c", "ssl_min_protocol_version=TLSv1.2", "-c", "password_encryption=scram-sha-256"],
            user=run_as, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/",
            start_new_session=True,
        )
    server = PostgresProcess(data_dir, port, log_path, process, 0.0, password, ca_file)
    def accepting() -> bool:
        command = [str(POSTGRES_BIN / "pg_isready"), "-h", server.host, "-p", str(port), "-q"]
        return subprocess.run(command, check=False).returncode == 0

    try:
        wait_until_ready(process, accepting, wait_s, what=f"PostgreSQL on port {port} (log {log_path})",
                         log_tail=lambda: _tail(log_path), error=PostgresStartFailed)
    except PostgresStartFailed:
        server.stop()
        raise
    server.started_in_s = time.monotonic() - started
    return server


def remove_cluster(data_dir: Path) -> None:
    """Delete a stopped server's data folder, log, password and certificates."""
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(data_dir.parent / f"{data_dir.name}-tls", ignore_errors=True)
    for suffix in (".log", ".password", "-ca.crt"):
        data_dir.parent.joinpath(f"{data_dir.name}{suffix}").unlink(missing_ok=True)


def _initdb(data_dir: Path, password: str, run_as: str | None) -> None:
    """A new cluster whose superuser has a SCRAM password, reachable over TLS only."""
    with tempfile.NamedTemporaryFile("w", dir=data_dir.parent, prefix=".pwfile-") as pwfile:
        pwfile.write(password + "\n")
        pwfile.flush()
        if run_as:
            account = pwd.getpwnam(run_as)
            os.chown(pwfile.name, account.pw_uid, account.pw_gid)
        initdb = subprocess.run(
            [str(POSTGRES_BIN / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth=scram-sha-256",
             f"--pwfile={pwfile.name}", "-E", "UTF8", "--no-locale", "--no-sync"],
            user=run_as, capture_output=True, text=True, check=False, cwd="/",
        )
    if initdb.returncode != 0:
        raise PostgresStartFailed(f"initdb {data_dir} failed: {initdb.stderr.strip()[-2000:]}")
    # TLS and a SCRAM password for every connection: no "host" (plain) line, no trust.
    (data_dir / "pg_hba.conf").write_text("# neuroflow development server: TLS and SCRAM only\n"
                                          "hostssl all all 127.0.0.1/32 scram-sha-256\n")


def _install_certificate(data_dir: Path, authority: CertificateAuthority, tls_dir: Path, run_as: str | None) -> None:
    """The server's certificate and key in the data folder (PostgreSQL wants the key private to its user),
    and a copy of the CA beside the data folder (what clients verify with: the data folder is private)."""
    issued = authority.issue("postgresql", tls_dir)
    shutil.copyfile(issued.certificate, data_dir / "server.crt")
    write_private(data_dir / "server.key", issued.private_key.read_bytes())
    if run_as:
        account = pwd.getpwnam(run_as)
        for name in ("server.crt", "server.key", "pg_hba.conf"):
            os.chown(data_dir / name, account.pw_uid, account.pw_gid)
    shutil.copyfile(authority.certificate, data_dir.parent / f"{data_dir.name}-ca.crt")


def _quoted(value: str) -> str:
    """A libpq connection-string value, quoted when it holds spaces, quotes or backslashes."""
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _psql(server: PostgresProcess, statement: str) -> None:
    # psql rather than a driver: this module must work before the Python dependencies are installed.
    result = subprocess.run([str(POSTGRES_BIN / "psql"), server.dsn(), "-v", "ON_ERROR_STOP=1", "-q", "-c", statement],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PostgresStartFailed(f"{statement!r} failed: {result.stderr.strip()}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
