"""PostgreSQL fixtures: one server for the test session, one fresh database per test; and
``private_postgres`` for a test that stops or restarts its server (never the shared one)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from neuroflow.devtools.postgres_server import PostgresProcess, start_postgres

_database_numbers = count()


@contextlib.contextmanager
def private_postgres() -> Iterator[PostgresProcess]:
    """A server of its own, in a temporary folder, stopped and removed afterwards."""
    # Not under pytest's tmp_path: run by root, the server runs as the postgres user, who cannot enter
    # pytest's private (0700, root-owned) folders.
    root = Path(tempfile.mkdtemp(prefix="neuroflow-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
    try:
        server = start_postgres(root / "data")
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresProcess]:
    with private_postgres() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresProcess) -> Iterator[str]:
    """The DSN of an empty database on the session's server, dropped after the test."""
    name = f"nf_test_{os.getpid()}_{next(_database_numbers)}"
    dsn = postgres_server.create_database(name)
    try:
        yield dsn
    finally:
        postgres_server.drop_database(name)
