"""Virtual environments for the tools neuroflow is benchmarked against (``scripts/bench_peers.py``).

Each peer gets its own environment under ``build/peers/<name>/``, installed from the package registries
by pip, so that a peer's pins (an old numpy, a CUDA torch) never reach the project's environment and a
broken peer costs only its own row. A peer whose install fails is reported with the reason pip gave."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

# pip's own "ERROR:" lines say why an install failed; the tail of its output is the fallback.
_REASON_LINES = 6


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: tuple[str, ...]
    pip_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class PeerEnv:
    peer: Peer
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name


@dataclass(frozen=True)
class PeerUnavailable:
    peer: Peer
    reason: str


def _stamp(peer: Peer) -> str:
    """What the environment was built from: a change of requirements rebuilds it."""
    text = "\n".join((sys.version, *peer.requirements, *peer.pip_args))
    return hashlib.sha256(text.encode()).hexdigest()


def install_reason(output: str) -> str:
    """The part of pip's output that says why it failed: its ERROR lines, else its last lines."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    chosen = errors[-_REASON_LINES:] if errors else lines[-_REASON_LINES:]
    return " / ".join(chosen) or "pip failed without output"


def ensure_peer(build: Path, peer: Peer, *, timeout_s: float = 1800.0) -> PeerEnv | PeerUnavailable:
    """The peer's environment under ``build/peers/<name>``, created and installed unless it is already
    installed from the same requirements; PeerUnavailable with pip's reason when the install fails."""
    root = build / "peers" / peer.name
    root.parent.mkdir(parents=True, exist_ok=True)
    # Two benches installing the same peer at once would clear each other's half-installed environment.
    with (root.parent / f".{peer.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_peer_locked(root, peer, timeout_s)


def _ensure_peer_locked(root: Path, peer: Peer, timeout_s: float) -> PeerEnv | PeerUnavailable:
    stamp = root / ".installed"
    env = PeerEnv(peer, root)
    if stamp.exists() and stamp.read_text() == _stamp(peer) and env.python.exists():
        return env
    # No pip of its own (ensurepip takes half a minute on a busy machine): this Python's pip installs into it.
    venv.EnvBuilder(with_pip=False, clear=True).create(root)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(env.python), "install", "--no-input", "--progress-bar", "off",
             *peer.pip_args, *peer.requirements],
            capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return PeerUnavailable(peer, f"pip install did not finish within {timeout_s:.0f} s")
    if done.returncode != 0:
        return PeerUnavailable(peer, install_reason(done.stdout + "\n" + done.stderr))
    stamp.write_text(_stamp(peer))
    return env
