"""Is this process alive, and can it work? What ``/healthz`` and ``/readyz`` answer (core/status_server).

Liveness: every service loop of the process *beats* each time one of its iterations completes without
error (waiting for work counts: an empty poll is progress). A loop that reported no progress for longer
than the bound is stuck, or failing on every iteration (a dead connection it never replaces), and a
restart is what helps; so is a process none of whose loops ever got going. A loop running one long task
(a CPU segmentation may take half an hour) cannot beat: while the task runs, the loop counts as making
progress until the task's deadline (``busy``), after which the orchestrator has given the task to
another worker and a worker still inside it is hung.

Readiness: every dependency the process's services use (the state database, Kafka, Orthanc, the
inference server) answers a small request. Each check runs in a thread of its own with a deadline, so a
hung dependency reads as "no answer within N s", never as a hung probe; a check still stuck from an
earlier probe is not started again beside itself.

The registry is per process (``HEALTH``; the loops call the module's ``beat`` and ``busy``), as the
metrics registry is: the loops need no extra argument to be watched.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# A dependency's check: returns when the dependency answered, raises (with the reason) when not.
Check = Callable[[], object]


@dataclass(frozen=True)
class Verdict:
    """An endpoint's answer: ``ok`` and, per loop or dependency, "ok" or what is wrong."""

    ok: bool
    details: dict[str, str]

    @property
    def status(self) -> int:
        return 200 if self.ok else 503

    def body(self) -> bytes:
        return json.dumps({"status": "ok" if self.ok else "failing", "checks": self.details},
                          sort_keys=True).encode()


class Health:
    """Heartbeats of the process's loops and checks of its dependencies. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._beats: dict[str, float] = {}  # loop -> when it last made progress
        self._busy_until: dict[str, float] = {}  # loop -> the deadline of the task it is running
        self._checks: dict[str, Check] = {}
        self._in_flight: dict[str, tuple[threading.Thread, float]] = {}  # dependency -> check still running

    def beat(self, loop: str, pause_s: float = 0.0) -> None:
        """``loop`` completed an iteration (or waited for work) without error. ``pause_s``: it now sleeps
        that long before the next one (a sweep every 30 s), which is not a stall."""
        now = self._clock()
        with self._lock:
            self._beats[loop] = now + max(0.0, pause_s)

    @contextlib.contextmanager
    def busy(self, loop: str, until: float) -> Iterator[None]:
        """Around one task of ``loop``: it counts as making progress until ``until`` (this clock's time;
        ``math.inf`` for a task without a deadline), and beats when the task ends."""
        self.beat(loop)  # taking a task is progress too
        with self._lock:
            self._busy_until[loop] = until
        try:
            yield
        finally:
            with self._lock:
                self._busy_until.pop(loop, None)
            self.beat(loop)

    def add_check(self, dependency: str, check: Check) -> None:
        """Check ``dependency`` on every readiness probe (replacing a check of the same name)."""
        with self._lock:
            self._checks[dependency] = check

    def liveness(self, stall_s: float) -> Verdict:
        """Alive when every loop made progress within ``stall_s`` (or runs a task whose deadline has not
        passed), and some loop has beaten within ``stall_s`` of the process starting."""
        now = self._clock()
        with self._lock:
            beats = dict(self._beats)
            busy = dict(self._busy_until)
        details: dict[str, str] = {}
        if not beats:
            waited = now - self._started
            if waited > stall_s:
                return Verdict(False, {"loops": f"no service loop has made progress in the {waited:.0f} s "
                                                f"since the process started (bound {stall_s:g} s)"})
            return Verdict(True, {"loops": f"starting ({waited:.0f} s)"})
        for loop, last in sorted(beats.items()):
            until = busy.get(loop, -math.inf)
            if now <= until:
                details[loop] = "ok (running a task)"
            elif now - max(last, until) <= stall_s:
                details[loop] = "ok"
            else:
                details[loop] = (f"no progress for {now - max(last, until):.0f} s (bound {stall_s:g} s)"
                                 if until == -math.inf else
                                 f"still in a task {now - until:.0f} s past its deadline (bound {stall_s:g} s)")
        return Verdict(all(d.startswith("ok") for d in details.values()), details)

    def readiness(self, timeout_s: float) -> Verdict:
        """Ready when a service loop has started and every dependency answered within ``timeout_s`` (the
        checks run at once, so the probe takes at most about ``timeout_s``)."""
        with self._lock:
            checks = dict(self._checks)
            started = bool(self._beats)
        outcomes: dict[str, list[str]] = {name: [] for name in checks}
        threads: dict[str, threading.Thread] = {}
        details: dict[str, str] = {}
        for name, check in checks.items():
            with self._lock:
                stuck = self._in_flight.get(name)
                if stuck is not None and stuck[0].is_alive():
                    details[name] = f"its previous check has not answered for {self._clock() - stuck[1]:.0f} s"
                    continue
                thread = threading.Thread(target=_run_check, args=(check, outcomes[name]), daemon=True,
                                          name=f"readiness-{name}")
                self._in_flight[name] = (thread, self._clock())
            thread.start()
            threads[name] = thread
        deadline = self._clock() + timeout_s
        for name, thread in threads.items():
            thread.join(max(0.0, deadline - self._clock()))
            if thread.is_alive():
                details[name] = f"no answer within {timeout_s:g} s"
            else:
                with self._lock:
                    if self._in_flight.get(name, (None, 0.0))[0] is thread:
                        del self._in_flight[name]
                details[name] = outcomes[name][0] if outcomes[name] else "ok"
        if not started:
            details["loops"] = "the service has not started its loop yet"
        return Verdict(all(d == "ok" for d in details.values()), dict(sorted(details.items())))


def _run_check(check: Check, outcome: list[str]) -> None:
    try:
        check()
    except Exception as error:  # the dependency's failure is the answer
        outcome.append(f"{type(error).__name__}: {error}"[:300] or "failed")


HEALTH = Health()


def beat(loop: str, pause_s: float = 0.0) -> None:
    """``loop`` of this process made progress, and pauses ``pause_s`` before its next iteration."""
    HEALTH.beat(loop, pause_s)


def busy(loop: str, until: float) -> contextlib.AbstractContextManager[None]:
    """Around a long task of ``loop`` with deadline ``until`` (time.monotonic(); math.inf: none)."""
    return HEALTH.busy(loop, until)
