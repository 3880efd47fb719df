"""PostgreSQL admits only TLS connections with a SCRAM password, and neuroflow verifies the server (issue 12,
item 3), on the real PostgreSQL 15 the stack and the tests run (devtools/postgres_server.py)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from neuroflow.core.config import NeuroflowSettings, StateSettings
from neuroflow.core.errors import NeuroflowError
from neuroflow.core.state_postgres import PostgresStateStore
from neuroflow.devtools.certificates import make_authority
from neuroflow.devtools.postgres_server import PostgresProcess


def with_changes(dsn: str, **changes: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, **changes)


def test_a_wrong_password_is_refused_and_passwords_are_stored_as_scram(postgres_server: PostgresProcess) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(with_changes(postgres_server.dsn(), password="not-the-password"))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(with_changes(postgres_server.dsn(), password=""))
    with psycopg.connect(postgres_server.dsn()) as db:
        (stored,) = db.execute("SELECT rolpassword FROM pg_authid WHERE rolname = current_user").fetchone() or ("",)
        (method,) = db.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchone() or ("",)
        (ssl_on,) = db.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() or (False,)
    assert str(stored).startswith("SCRAM-SHA-256$")
    assert method == "scram-sha-256"  # never trust
    assert ssl_on


def test_a_connection_without_tls_is_refused(postgres_server: PostgresProcess) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(with_changes(postgres_server.dsn(), sslmode="disable"))


def test_the_client_verifies_the_server_against_the_sites_ca(postgres_server: PostgresProcess,
                                                              tmp_path: Path) -> None:
    stranger = make_authority(tmp_path / "other-ca", "another CA")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(with_changes(postgres_server.dsn(), sslrootcert=str(stranger.certificate)))


def test_settings_add_verify_full_and_the_ca_to_a_dsn_without_them(postgres_server: PostgresProcess,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bare = (f"host=127.0.0.1 port={postgres_server.port} user={postgres_server.user} "
            f"password={postgres_server.password} dbname=postgres")
    assert "sslmode=verify-full" in StateSettings(dsn=bare).connection_dsn()  # the default
    # An operator's own sslmode in the DSN is kept.
    assert "sslmode=require" in StateSettings(dsn=bare + " sslmode=require").connection_dsn()
    monkeypatch.setenv("NEUROFLOW_STATE__KIND", "postgres")
    monkeypatch.setenv("NEUROFLOW_STATE__DSN", bare)
    monkeypatch.setenv("NEUROFLOW_STATE__SSLROOTCERT", str(postgres_server.ca_file))
    settings = NeuroflowSettings()
    PostgresStateStore(settings.state.connection_dsn()).close()  # verified against the CA: connects
    monkeypatch.setenv("NEUROFLOW_STATE__SSLROOTCERT", "/nonexistent/ca.crt")
    with pytest.raises(NeuroflowError, match="unavailable"):
        PostgresStateStore(NeuroflowSettings().state.connection_dsn(), connect_timeout_s=3)
