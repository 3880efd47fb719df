"""Fixtures every test folder may use: the real servers of the distributed runtime (tests/servers).
Each server starts only when a test asks for its fixture, once per session."""

from tests.servers.kafka import kafka_server
from tests.servers.orthanc import orthanc_servers, orthancs
from tests.servers.postgres import postgres_dsn, postgres_server
from tests.servers.triton import triton_server

__all__ = ["kafka_server", "orthanc_servers", "orthancs", "postgres_dsn", "postgres_server", "triton_server"]
