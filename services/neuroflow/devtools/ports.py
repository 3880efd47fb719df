"""Loopback ports for servers the tests and the local stack start themselves."""

from __future__ import annotations

import socket
import time


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it; another process could
    still take it before the caller binds, which on a developer machine is rare enough)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
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
