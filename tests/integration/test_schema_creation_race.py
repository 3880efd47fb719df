"""Services starting at once on a fresh PostgreSQL database each create the tables they need: ``CREATE TABLE IF
NOT EXISTS`` alone races there (the loser fails with a unique violation in ``pg_type``; seen when the local
stack's monitor and ingest started together). Every store creates its tables under the schema's advisory lock."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from neuroflow.ingest.window_store import PostgresWindowStore
from neuroflow.longitudinal.priors import PostgresTimepointStore


@pytest.mark.parametrize("store", [PostgresWindowStore, PostgresTimepointStore], ids=["windows", "priors"])
def test_eight_stores_created_at_once_on_a_fresh_database_all_start(
        postgres_dsn: str, store: Callable[[str], object]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        try:
            store(postgres_dsn)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
