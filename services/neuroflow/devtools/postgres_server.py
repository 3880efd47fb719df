"""A PostgreSQL server started by neuroflow itself (tests, the local stack): Debian's binaries, a
private data folder, TCP on 127.0.0.1 only, no Unix socket, no systemd.

PostgreSQL refuses to run as root: started by root, the server runs as the ``postgres`` user (the data
folder is handed to it, so its parent folders must be ones that user can enter). Authentication is
``trust`` for loopback connections: a development server, never one that holds patient data.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

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
    host: str = "127.0.0.1"
    user: str = SUPERUSER

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string for ``database`` on this server."""
        return f"host={self.host} port={self.port} user={self.user} dbname={database} connect_timeout=5"

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
        self.process = start_postgres(self.data_dir, self.port, wait_s=wait_s).process

    def restart(self, wait_s: float = 30.0) -> None:
        """Fast shutdown (every open session is ended) and start again on the same port and data."""
        self.stop()
        self.start(wait_s)


def start_postgres(data_dir: Path, port: int | None = None, *, wait_s: float = 30.0) -> PostgresProcess:
    """Start PostgreSQL 15 with its cluster in ``data_dir`` (initdb first when the folder holds none; an
    existing cluster is reused) on ``127.0.0.1:port`` (a free port when None), and return once it accepts
    connections as the superuser ``neuroflow``. PostgresStartFailed, with the log's end, otherwise."""
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
    if not (data_dir / "PG_VERSION").exists():
        initdb = subprocess.run(
            [str(POSTGRES_BIN / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
             "--no-locale", "--no-sync"],
            user=run_as, capture_output=True, text=True, check=False, cwd="/",
        )
        if initdb.returncode != 0:
            raise PostgresStartFailed(f"initdb {data_dir} failed: {initdb.stderr.strip()[-2000:]}")
    port = port or free_loopback_port()
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(binary), "-D", str(data_dir), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "max_connections=200"],
            user=run_as, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/",
            start_new_session=True,
        )
    server = PostgresProcess(data_dir, port, log_path, process, 0.0)
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
    """Delete a stopped server's data folder and log."""
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.parent.joinpath(f"{data_dir.name}.log").unlink(missing_ok=True)


def _psql(server: PostgresProcess, statement: str) -> None:
    # psql rather than a driver: this module must work before the Python dependencies are installed.
    result = subprocess.run([str(POSTGRES_BIN / "psql"), server.dsn(), "-v", "ON_ERROR_STOP=1", "-q", "-c", statement],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PostgresStartFailed(f"{statement!r} failed: {result.stderr.strip()}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
