"""The container build files (deploy/docker), checked offline against the rules hadolint would apply and the
ones we set ourselves: pinned base and dependencies, multi-stage, non-root, no build tools in the final image,
a health command that works."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from neuroflow.devtools.ports import free_loopback_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "cmake", "clang", "git", "curl", "wget")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "ARG" and not found:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            found.append(Stage(base, parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else ""))
        else:
            found[-1].instructions.append((keyword, rest))
    return args, found


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return stages(DOCKERFILE.read_text())[1]


def test_the_base_image_is_pinned_to_a_patch_release_or_digest(dockerfile: list[Stage]) -> None:
    for stage in dockerfile:
        if stage.base in {s.name for s in dockerfile}:
            continue
        tag = stage.base.partition(":")[2]
        assert "@sha256:" in stage.base or re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9.-]+)?", tag), (
            f"base {stage.base} is not pinned to a patch release or digest")


def test_the_build_is_multi_stage_and_the_final_image_only_copies_its_result(dockerfile: list[Stage]) -> None:
    assert len(dockerfile) >= 2
    final = dockerfile[-1]
    for keyword, rest in final.instructions:
        if keyword == "RUN":
            assert not re.search(r"\b(pip|apt-get|apk|yum|dnf)\b", rest), f"final stage installs: RUN {rest}"
        if keyword == "COPY" and "--from=" in rest:
            assert rest.split("--from=")[1].split()[0] in {s.name for s in dockerfile[:-1]}
    installed = " ".join(rest for stage in dockerfile for keyword, rest in stage.instructions if keyword == "RUN")
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(install[^&]*\s){re.escape(tool)}\b", installed), f"{tool} is installed"


def test_the_final_image_runs_as_a_numeric_non_root_user_with_a_health_command(dockerfile: list[Stage]) -> None:
    final = dict(dockerfile[-1].instructions)
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) >= 1000, f"USER {final['USER']}: not a numeric non-root user"
    assert "HEALTHCHECK" in final and "CMD" in final["HEALTHCHECK"]
    # Exec form (JSON) for ENTRYPOINT, CMD and HEALTHCHECK's command: signals reach the service (hadolint DL3025).
    assert final["ENTRYPOINT"].startswith("[")
    assert final["HEALTHCHECK"].split("CMD", 1)[1].strip().startswith("[")


def test_hadolint_rules_we_rely_on(dockerfile: list[Stage]) -> None:
    for stage in dockerfile:
        for keyword, rest in stage.instructions:
            assert keyword != "ADD", "COPY, not ADD (DL3020)"
            assert keyword != "MAINTAINER", "LABEL, not MAINTAINER (DL4000)"
            if keyword == "WORKDIR":
                assert rest.startswith("/"), "WORKDIR must be absolute (DL3000)"
            if keyword == "RUN":
                assert "sudo" not in rest.split(), "no sudo (DL3004)"
                assert not re.search(r"\bcd\s", rest), "WORKDIR, not cd (DL3003)"
                for command in re.split(r"&&|;", rest):
                    words = shlex.split(command)
                    if words[:2] == ["pip", "install"] or words[1:3] == ["-m", "pip"]:
                        assert "--no-cache-dir" in words, f"pip without --no-cache-dir (DL3042): {command}"
                        packages = [w for w in words[2:] if not w.startswith("-") and not w.startswith("/")]
                        packages = [p for p in packages if p not in {"-r"} and not p.endswith(".txt")]
                        for package in packages:
                            assert "==" in package, f"unpinned pip package {package} (DL3013)"


def test_every_runtime_dependency_is_pinned_in_the_lock_and_satisfies_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock: dict[str, str] = {}
    for line in (DOCKER / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{line}: not pinned with =="
            lock[canonicalize_name(name)] = version
    for dependency in pyproject["project"]["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement.name} is not in deploy/docker/requirements.txt (run lock_requirements.py)"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"{requirement.name}=={lock[name]} does not satisfy pyproject's {requirement.specifier}")


def test_the_build_context_holds_only_what_the_dockerfile_copies() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if line and not line.startswith("#"))] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    _, found = stages(DOCKERFILE.read_text())
    for stage in found:
        for keyword, rest in stage.instructions:
            if keyword == "COPY" and "--from=" not in rest:
                sources = [w for w in rest.split()[:-1] if not w.startswith("--")]
                for source in sources:
                    assert any(source == a or source.startswith(f"{a}/") for a in allowed), (
                        f"COPY {source}: excluded from the build context")
                    assert (ROOT / source).exists(), f"COPY {source}: no such path"


def run_entrypoint(*args: str, port: int) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "NEUROFLOW_METRICS_PORT": str(port)}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30)


def test_the_health_command_passes_while_the_service_loop_beats_and_fails_once_it_stalls() -> None:
    port = free_loopback_port()
    # A real status server, bound to every interface the way the image and the chart configure it, and a
    # service loop that beats until it is told (a line on stdin) to stall.
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, threading, time
        from neuroflow.core import health
        from neuroflow.core.config import HealthSettings
        from neuroflow.core.metrics import start_metrics_server
        start_metrics_server({port}, "0.0.0.0", HealthSettings(stall_s=2))
        stalled = threading.Event()
        def loop():
            while not stalled.is_set():
                health.beat("ingest")
                time.sleep(0.1)
        threading.Thread(target=loop, daemon=True).start()
        print("up", flush=True)
        sys.stdin.readline()
        stalled.set()
        time.sleep(60)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        healthy = run_entrypoint("health", port=port)
        assert healthy.returncode == 0, healthy.stderr
        assert server.stdin is not None
        server.stdin.write("stall\n")
        server.stdin.flush()
        deadline = time.monotonic() + 30
        while (stalled := run_entrypoint("health", port=port)).returncode == 0:
            assert time.monotonic() < deadline, "/healthz still passes 30 s after the loop stopped beating"
            time.sleep(0.5)
        assert "503" in stalled.stderr and "ingest" in stalled.stderr and "no progress" in stalled.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
    down = run_entrypoint("health", port=port)
    assert down.returncode != 0
    unset = run_entrypoint("health", port=0)
    assert unset.returncode != 0 and "NEUROFLOW_METRICS_PORT" in unset.stderr


def test_the_entrypoint_picks_the_service_from_its_argument() -> None:
    answer = run_entrypoint("no-such-service", port=0)
    assert answer.returncode == 2
    assert "invalid choice: 'no-such-service'" in answer.stderr
