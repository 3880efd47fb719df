"""Surviving a lost database connection, written once for every SQL store (workflow state, wait windows,
timepoints): a PostgreSQL restart, a failover or a dropped network path ends every open connection, and
a store that kept using its dead connection would fail every call from then on.

The rule each store follows:

* a statement that fails because the connection is gone (not because the statement is wrong) discards
  that connection: the next call opens a new one;
* the call is tried once more, on a new connection, when that cannot apply it twice: the connection was
  lost before COMMIT was sent (the server rolls an unfinished transaction back, so nothing was applied),
  or the statement is idempotent (applying it twice leaves what applying it once leaves);
* otherwise (lost during COMMIT: it may or may not have been applied), or when the second try fails too,
  ``StoreUnavailable``: retryable, and it says whether the statement may have been applied.

Connections are opened with a connect timeout and TCP keepalives, so a database that stays down, or a
network path that silently drops packets, ends in ``StoreUnavailable`` within about a minute instead of
a call that hangs. psycopg is imported only when a PostgreSQL store is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from neuroflow.core.errors import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# A peer that stops answering is given up after about a minute: on an idle connection after keepalive
# probes (idle + interval * count seconds), on one waiting for an answer when what it sent stays
# unacknowledged (tcp_user_timeout, ms). Neither limits a statement the server is working on.
_DEAD_PEER: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                              "keepalives_count": 3, "tcp_user_timeout": 60_000}


class ConnectionLost(Exception):
    """Raised inside a store when its connection went away during one attempt (the connection has already
    been discarded). ``maybe_applied``: the loss came while committing, so the attempt's writes may be in
    the database. Never leaves the store: :func:`retry_once` turns it into a retry or StoreUnavailable."""

    def __init__(self, database: str, cause: BaseException, *, maybe_applied: bool) -> None:
        self.database = database
        self.maybe_applied = maybe_applied
        super().__init__(f"lost the connection to {database}: {cause}")


def retry_once(attempt: Callable[[], T], *, idempotent: bool, what: str) -> T:
    """Run ``attempt``; when it raises ConnectionLost, run it once more (on a new connection) if that
    cannot apply its work twice (see the module doc). StoreUnavailable otherwise. ``what`` says what the
    call does, for the error message."""
    try:
        return attempt()
    except ConnectionLost as lost:
        if lost.maybe_applied and not idempotent:
            raise StoreUnavailable(f"{what}: {lost}; it may or may not have been applied, so it was not "
                                   "run again (try again once the database is back)") from lost
        log.warning("%s: %s; trying once more on a new connection", what, lost)
    try:
        return attempt()
    except ConnectionLost as lost:
        raise StoreUnavailable(f"{what}: {lost} (again on a new connection; "
                               f"{'it may have been applied' if lost.maybe_applied else 'nothing was applied'})"
                               ) from lost


def connect_postgres(dsn: str, *, connect_timeout_s: float, role: str = "state database", **options: Any) -> Any:
    """A new autocommit psycopg connection (the stores open their transactions explicitly), with a
    connect timeout and TCP keepalives. StoreUnavailable, naming the database (``role``, then the DSN
    without its password), when it cannot be reached."""
    import psycopg  # deferred: only the distributed runtime needs it

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, round(connect_timeout_s)),
                               **_DEAD_PEER, **options)
    except psycopg.OperationalError as error:
        raise StoreUnavailable(f"{role} unavailable ({safe_dsn(dsn)}): {error}") from error


def postgres_connection_lost(error: BaseException, connection: Any) -> bool:
    """Whether ``error`` means the connection is gone (the server ended it, the network dropped it), not
    that the statement was refused: psycopg marks a connection it lost as closed."""
    import psycopg

    return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError) and bool(connection.closed)


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    import psycopg

    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())
