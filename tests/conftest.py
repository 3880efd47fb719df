"""Fixtures every test folder may use: the real servers of the distributed runtime (tests/servers).
Each server starts only when a test asks for its fixture, once per session.

The site key secret of every test: set in the environment (so the services a test spawns inherit it) and
installed in this process (so a test computes the same study and patient keys as those services), and
installed again after every test: building the distributed runtime's backends in process installs the secret
of the settings it is given, and a later test would then key with that one."""

import os
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from neuroflow.core.identity import use_site_secret
from tests.servers.kafka import kafka_server
from tests.servers.orthanc import orthanc_servers, orthancs
from tests.servers.postgres import postgres_dsn, postgres_server
from tests.servers.triton import triton_server

TEST_KEY_SECRET = "neuroflow-test-site-key-secret"
os.environ.setdefault("NEUROFLOW_KEYS__SECRET", TEST_KEY_SECRET)
SESSION_SECRET = SecretStr(os.environ["NEUROFLOW_KEYS__SECRET"])
use_site_secret(SESSION_SECRET)


@pytest.fixture(autouse=True)
def session_site_secret() -> Iterator[None]:
    yield
    use_site_secret(SESSION_SECRET)


__all__ = ["kafka_server", "orthanc_servers", "orthancs", "postgres_dsn", "postgres_server", "triton_server"]
