"""Everything a pipeline reads ships in the image (issue 11, defect 10: the image could not run ms_change, whose
atlases it never installed). For each pipeline the chart's examples enable, every file the pipeline reads
under the settings its pods start with (runtime/pipeline_files.py: model cards, ONNX files, deepbet, atlases)
is in the image's file list. No container engine runs here, so the list is derived from deploy/docker/Dockerfile:
COPY from the build context gives the repository's tracked files under the source that .dockerignore lets in;
COPY --from a stage gives what that stage installed with apt-get, each package pinned and its file list read
from this machine's dpkg database, where the same version is installed (make system-deps)."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from unittest import mock

import pytest

from neuroflow.core import topics
from neuroflow.core.config import CHANGE_PIPELINES, GLIOMA_PIPELINE, MS_CHANGE_PIPELINE, NeuroflowSettings
from neuroflow.runtime.distributed import pipelines
from neuroflow.runtime.pipeline_files import pipeline_files
from tests.deploy.test_dockerfile import DOCKER, DOCKERFILE, Stage, stages
from tests.deploy.test_helm_chart import (
    SITE_EXAMPLES,
    Manifest,
    component,
    example_values,
    of_kind,
    pod_environment,
    render,
)

ROOT = Path(__file__).resolve().parents[2]


def context_files() -> set[PurePosixPath]:
    """The build context: the repository's tracked files that Dockerfile.dockerignore lets in."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    tracked = [PurePosixPath(p) for p in listed.decode().split("\0") if p]
    allowed: list[str] = []
    excluded: list[str] = []
    for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "*":
            continue
        (allowed if line.startswith("!") else excluded).append(line.lstrip("!").rstrip("/"))
    return {p for p in tracked
            if any(p == PurePosixPath(a) or PurePosixPath(a) in p.parents for a in allowed)
            and not any(fnmatch.fnmatch(str(p), pattern) or fnmatch.fnmatch(f"x/{p}", pattern)
                        or any(fnmatch.fnmatch(part, pattern.removeprefix("**/")) for part in p.parts)
                        for pattern in excluded)}


def installed_debian_files(stage: Stage) -> set[PurePosixPath]:
    """The files of every Debian package ``stage`` installs with apt-get (each must be pinned)."""
    files: set[PurePosixPath] = set()
    for keyword, rest in stage.instructions:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            words = shlex.split(command)
            if words[:2] != ["apt-get", "install"]:
                continue
            for package in (w for w in words[2:] if not w.startswith("-")):
                name, _, version = package.partition("=")
                assert version, f"apt-get install {package}: not pinned to a version (hadolint DL3008)"
                here = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True,
                                      check=False).stdout
                assert here == version, (f"the image installs {name} {version}; this machine has {here or 'none'}: "
                                         "run make system-deps (the same Debian release) to check its files")
                listed = subprocess.run(["dpkg-query", "-L", name], capture_output=True, text=True,
                                        check=True).stdout
                files |= {PurePosixPath(line) for line in listed.splitlines() if line.startswith("/")}
    return files


def copied(available: Iterable[PurePosixPath], source: str, destination: str) -> set[PurePosixPath]:
    """What ``COPY source destination`` puts in the image from ``available`` (a file, or a folder's content)."""
    src, dest = PurePosixPath(source), PurePosixPath(destination)
    result: set[PurePosixPath] = set()
    for path in available:
        if path == src:
            result.add(dest / path.name if destination.endswith("/") else dest)
        elif src in path.parents:
            result.add(dest / path.relative_to(src))
    return result


def image_files() -> set[PurePosixPath]:
    """Every file the final stage of the Dockerfile copies in (COPY from the context or from a stage)."""
    _, found = stages(DOCKERFILE.read_text())
    by_name = {stage.name: stage for stage in found}
    files: set[PurePosixPath] = set()
    context = context_files()
    for keyword, rest in found[-1].instructions:
        if keyword != "COPY":
            continue
        words = rest.split()
        options = [w for w in words if w.startswith("--")]
        *sources, destination = [w for w in words if not w.startswith("--")]
        stage = next((o.partition("=")[2] for o in options if o.startswith("--from=")), None)
        available = context if stage is None else installed_debian_files(by_name[stage])
        for source in sources:
            files |= copied(available, source, destination)
    return files


def image_env() -> dict[str, str]:
    """The ENV of the final stage: what every container of the image starts with."""
    _, found = stages(DOCKERFILE.read_text())
    env: dict[str, str] = {}
    for keyword, rest in found[-1].instructions:
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    return env


def pod_settings(objects: list[Manifest], deployment: Manifest) -> NeuroflowSettings:
    """The settings a pod of ``deployment`` runs with: the image's ENV, then the chart's environment."""
    env = {**image_env(), **next(pod_environment(objects, deployment))}
    env.pop("NEUROFLOW_SITE_RULES", None)  # a mounted file; not a file a pipeline reads
    for name in [name for name in env if name.endswith(("PASSWORD_FILE", "SECRET_FILE"))]:
        env.pop(name)  # mounted Secrets, read when the settings load: not here, and not pipeline files
    with mock.patch.dict(os.environ, env, clear=True):
        return NeuroflowSettings()


@pytest.fixture(scope="module")
def files_in_image() -> set[PurePosixPath]:
    return image_files()


ENABLED = [(example, pipeline) for example in SITE_EXAMPLES
           for pipeline in example_values(example)["site"]["pipelines"]]


def test_the_chart_examples_enable_ms_change_so_its_atlases_are_checked() -> None:
    assert MS_CHANGE_PIPELINE in {pipeline for _, pipeline in ENABLED}


@pytest.mark.parametrize(("example", "pipeline"), ENABLED)
def test_every_file_an_enabled_pipeline_reads_is_in_the_image(
        files_in_image: set[PurePosixPath], example: str, pipeline: str) -> None:
    objects = render(example_values(example), release=example)
    for deployment in of_kind(objects, "Deployment"):
        if component(deployment) == "orthanc":
            continue
        settings = pod_settings(objects, deployment)
        runs = {topics.stage_name(stage) for stage in pipelines(settings)[pipeline].stages}
        if component(deployment) not in runs:
            continue
        needed = pipeline_files(pipeline, settings)
        assert needed, f"{pipeline} reads no file?"
        missing = [str(path) for path in needed if PurePosixPath(path) not in files_in_image]
        assert not missing, (f"{example}: {pipeline} in the {component(deployment)} pod reads {missing}, which "
                             "deploy/docker/Dockerfile does not put in the image")


def test_the_image_ships_the_atlases_under_their_licence(files_in_image: set[PurePosixPath]) -> None:
    assert PurePosixPath("/usr/share/doc/mricron-data/copyright") in files_in_image


@pytest.mark.parametrize("pipeline", [GLIOMA_PIPELINE, *CHANGE_PIPELINES])
def test_every_file_a_pipeline_reads_is_on_this_machine_with_default_settings(pipeline: str) -> None:
    with mock.patch.dict(os.environ, {}, clear=True):
        settings = NeuroflowSettings()
    missing = [str(p) for p in pipeline_files(pipeline, settings) if not p.is_file()]
    assert not missing, f"{pipeline} reads {missing}: run make system-deps"


def test_missing_atlases_are_reported_with_the_setting_that_moves_them(tmp_path: Path) -> None:
    from neuroflow.core.atlas import default_locator

    with pytest.raises(FileNotFoundError, match="NEUROFLOW_LONGITUDINAL__ATLAS_DIR") as refused:
        default_locator(tmp_path)
    assert str(tmp_path / "ch2bet.nii.gz") in str(refused.value)
