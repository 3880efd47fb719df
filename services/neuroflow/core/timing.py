"""Per-stage timing and progress: every stage is timed, shown as it runs, and named in the report."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressSink = Callable[[str], None]


class StageClock:
    """Times named stages; ``timings`` keeps them in the order they ran."""

    def __init__(self, stages: tuple[str, ...], progress: ProgressSink | None = None) -> None:
        self._stages = stages
        self._progress = progress
        self._start = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.current: str = ""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self._stages:
            raise ValueError(f"unknown stage {name!r}; stages are {self._stages}")
        self.current = name
        number = self._stages.index(name) + 1
        self._say(f"[{number:2d}/{len(self._stages)}] {name} ...")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            self.timings[name] = round(self.timings.get(name, 0.0) + elapsed, 3)
        self._say(f"[{number:2d}/{len(self._stages)}] {name} done in {elapsed:.1f} s")

    def credit(self, name: str, seconds: float) -> None:
        """Count ``seconds`` of work done for stage ``name`` before this clock started (by its caller) in that
        stage and in the total, so the report still says what the run cost."""
        if name not in self._stages:
            raise ValueError(f"unknown stage {name!r}; stages are {self._stages}")
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)
        self._start -= seconds

    def note(self, text: str) -> None:
        self._say(f"        {text}")

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)

    def _say(self, text: str) -> None:
        if self._progress is not None:
            self._progress(text)
