"""A test that waits on the local stack and times out names the stack's processes that died, each with the end
of its own log (Triton's log file, a service's under logs/), instead of leaving the cause to be guessed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from neuroflow.devtools.stack import exited_processes


def _finished_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()  # reaped: the PID names no process now
    return done.pid


def test_only_the_processes_that_exited_are_named_with_their_logs(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "tritonserver.log").write_text("started\nSignal (9) received.\n")
    (tmp_path / "logs" / "results-1.log").write_text("results ready\n")
    alive = subprocess.Popen(["sleep", "30"])
    try:
        stack = {"root": str(tmp_path), "processes": [
            {"name": "triton", "pid": _finished_pid()},
            {"name": "results-1", "pid": alive.pid},
            {"name": "preprocess-1", "pid": _finished_pid()},
        ]}
        exited = exited_processes(stack)
    finally:
        alive.kill()
        alive.wait()
    assert len(exited) == 2
    assert exited[0].startswith("triton (pid ") and exited[0].endswith("started\nSignal (9) received.")
    assert exited[1].startswith("preprocess-1 (pid ") and exited[1].endswith("(no log file)")
