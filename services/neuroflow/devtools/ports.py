"""Loopback ports for servers the tests and the local stack start themselves."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

# Ports this process has handed out. The OS may offer a port again as soon as the probing socket closes,
# and a caller that asks for two before binding either (a broker's client and controller ports) then got
# the same port twice: Kafka refused to format its storage and a CI run lost its chaos tests.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _os_picked_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that this process has not handed out
    before (the OS picks it; another process could still take it before the caller binds, which on a
    developer machine is rare enough)."""
    with _handed_out_lock:
        while True:
            port = _os_picked_port()
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until_ports_free(ports: list[int], timeout_s: float, what: str) -> None:
    """Return once no port in ``ports`` accepts connections; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = [p for p in ports if port_is_listening(p)]
        if not busy:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: ports {busy} still in use {timeout_s:.0f} s after stopping")
        time.sleep(0.05)


def stop_child(process: subprocess.Popen[bytes], ports: list[int], timeout_s: float, what: str,
               stop_signal: signal.Signals = signal.SIGTERM) -> None:
    """``stop_signal`` to a child by PID (SIGKILL after ``timeout_s``), then wait until ``ports`` are free.
    Stopping a stopped child does nothing."""
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
    wait_until_ports_free(ports, timeout_s, what)


class ChildServer:
    """What every server we start as a child process has (a mixin for dataclasses with ``process`` and
    ``log_path``): its PID, whether it runs, a stop by PID that waits until its ports are free, and the
    end of its log for error messages."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def _stop_process(self, ports: list[int], timeout_s: float, what: str,
                      stop_signal: signal.Signals = signal.SIGTERM) -> None:
        """``stop_signal`` by PID (SIGKILL after ``timeout_s``), then wait until ``ports`` are free.
        Stopping a stopped server does nothing."""
        stop_child(self.process, ports, timeout_s, what, stop_signal)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def http_ok(url: str, headers: Mapping[str, str] | None = None, *, context: ssl.SSLContext | None = None) -> bool:
    """Whether ``url`` answers 200 within a second (a server's health or readiness endpoint); ``context``:
    how an https URL's certificate is verified."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers or {})), timeout=1.0,
                                    context=context) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool], wait_s: float, *, what: str,
                     log_tail: Callable[[], str], error: Callable[[str], Exception],
                     interval_s: float = 0.05) -> None:
    """Poll ``ready`` until it says yes. A server that exits first, or is not ready within ``wait_s``, raises
    ``error`` naming ``what`` and quoting the end of its log, so a failed start says why."""
    deadline = time.monotonic() + wait_s
    while True:
        if process.poll() is not None:
            raise error(f"{what} exited with status {process.returncode} while starting; its log ends:\n"
                        f"{log_tail()}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise error(f"{what} was not ready within {wait_s:.0f} s; its log ends:\n{log_tail()}")
        time.sleep(interval_s)


# Below Linux's ephemeral range (32768-60999): a port picked here cannot be taken by some process's
# outgoing connection in the seconds between picking it and a slow-starting server binding it.
_STABLE_RANGE = range(20100, 32000)


def free_stable_port(taken: set[int]) -> int:
    """A free loopback port outside the ephemeral range and not in ``taken`` (the caller records it)."""
    for port in _STABLE_RANGE:
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in {_STABLE_RANGE.start}-{_STABLE_RANGE.stop - 1}")
