"""core/health: what /healthz and /readyz decide, on a clock the test moves (the endpoints on real servers
are tested in tests/integration/test_postgres_restart.py and tests/deploy/test_dockerfile.py)."""

from __future__ import annotations

import math
import threading

from neuroflow.core.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_that_stops_beating_is_not_alive_once_the_bound_has_passed() -> None:
    clock = Clock()
    health = Health(clock)
    health.beat("ingest")
    health.beat("orchestrator")
    clock.now += 100
    health.beat("orchestrator")
    assert health.liveness(stall_s=120).ok
    clock.now += 30  # ingest: 130 s without progress
    verdict = health.liveness(stall_s=120)
    assert not verdict.ok and verdict.status == 503
    assert verdict.details["orchestrator"] == "ok"
    assert "no progress for 130 s" in verdict.details["ingest"]
    health.beat("ingest")
    assert health.liveness(stall_s=120).ok


def test_a_loop_that_pauses_between_rounds_is_allowed_its_pause() -> None:
    clock = Clock()
    health = Health(clock)
    health.beat("monitor", pause_s=300)  # a round every 5 minutes, longer than the bound
    clock.now += 400
    assert health.liveness(stall_s=120).ok
    clock.now += 30
    assert not health.liveness(stall_s=120).ok


def test_a_long_task_keeps_its_loop_alive_until_its_deadline_then_the_bound() -> None:
    clock = Clock()
    health = Health(clock)
    health.beat("segmentation-worker")
    with health.busy("segmentation-worker", until=clock.now + 1800):  # a 30-minute CPU segmentation
        clock.now += 1799
        assert health.liveness(stall_s=120).ok
        clock.now += 100  # past the deadline, within the bound
        assert health.liveness(stall_s=120).ok
        clock.now += 50  # hung: 150 s past the deadline
        verdict = health.liveness(stall_s=120)
        assert not verdict.ok and "past its deadline" in verdict.details["segmentation-worker"]
    assert health.liveness(stall_s=120).ok  # the task ended: that is progress


def test_a_task_without_deadline_keeps_its_loop_alive() -> None:
    clock = Clock()
    health = Health(clock)
    with health.busy("results-worker", until=math.inf):
        clock.now += 10_000
        assert health.liveness(stall_s=120).ok


def test_a_process_whose_loops_never_started_is_not_alive_after_the_bound() -> None:
    clock = Clock()
    health = Health(clock)
    assert health.liveness(stall_s=120).ok  # starting
    clock.now += 121
    verdict = health.liveness(stall_s=120)
    assert not verdict.ok and "no service loop has made progress" in verdict.details["loops"]


def test_readiness_names_the_dependency_that_fails_and_the_one_that_hangs() -> None:
    health = Health()
    health.beat("orchestrator")
    release = threading.Event()
    calls = {"kafka": 0}

    def refused() -> None:
        raise ConnectionRefusedError("state database at 127.0.0.1:5432 refused")

    def hangs() -> None:
        calls["kafka"] += 1
        release.wait(30)

    health.add_check("state_db", refused)
    health.add_check("kafka", hangs)
    health.add_check("orthanc", lambda: None)
    verdict = health.readiness(timeout_s=0.2)
    assert not verdict.ok
    assert verdict.details["orthanc"] == "ok"
    assert "ConnectionRefusedError" in verdict.details["state_db"] and "refused" in verdict.details["state_db"]
    assert verdict.details["kafka"] == "no answer within 0.2 s"
    # The hung check is not started a second time beside itself.
    again = health.readiness(timeout_s=0.2)
    assert "previous check has not answered" in again.details["kafka"] and calls["kafka"] == 1
    release.set()


def test_readiness_waits_for_a_service_loop_to_start() -> None:
    health = Health()
    health.add_check("orthanc", lambda: None)
    assert not health.readiness(timeout_s=1).ok
    health.beat("ingest")
    verdict = health.readiness(timeout_s=1)
    assert verdict.ok and verdict.status == 200 and verdict.details == {"orthanc": "ok"}
