"""The one readiness wait every dev server launcher uses: a server that dies or never gets ready fails
its start with a message naming it and quoting its log, instead of hanging or passing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from neuroflow.devtools.ports import wait_until_ready


class StartFailed(RuntimeError):
    pass


def _python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_server_that_exits_while_starting_fails_naming_it_and_quoting_its_log() -> None:
    process = _python("raise SystemExit(3)")
    process.wait()
    with pytest.raises(StartFailed, match=r"(?s)demo server exited with status 3.*port already in use"):
        wait_until_ready(process, lambda: False, 5.0, what="demo server", log_tail=lambda: "port already in use",
                         error=StartFailed)


def test_a_server_never_ready_fails_after_the_wait_and_one_that_gets_ready_returns() -> None:
    process = _python("import time; time.sleep(30)")
    try:
        with pytest.raises(StartFailed, match="not ready within 0 s"):
            wait_until_ready(process, lambda: False, 0.2, what="slow server", log_tail=lambda: "", error=StartFailed)
        answers = iter([False, False, True])
        wait_until_ready(process, lambda: next(answers), 5.0, what="server", log_tail=lambda: "", error=StartFailed)
    finally:
        process.kill()
        process.wait()
