"""Issue 11, defect 11: a scheduler tells "retry" from "bad input" by `neuroflow`'s exit code alone (65 bad
input, 75 temporary failure, 70 internal error, defined once in core/exit_codes); `classify --json` prints
JSON; -v/-q are taken after the subcommand too. Each command runs as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuroflow.cli import _parser
from neuroflow.core.dicom_io import study_key
from neuroflow.core.exit_codes import ExitCode
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import WrittenStudy, write_study
from neuroflow.devtools.ports import free_loopback_port
from neuroflow.runtime.embedded import GLIOMA_STAGES

# glioma_unet version 1, trained with all four sequences: it refuses a study without T1, T1CE and T2.
VERSION_1 = {"NEUROFLOW_MODELS__GLIOMA": '{"name": "glioma_unet", "version": 1}'}


def _neuroflow(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "neuroflow.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture
def flair_only(tmp_path: Path) -> WrittenStudy:
    """A small study with one blank FLAIR series (refused: version 1 needs T1, T1CE and T2 too, and version 2 finds
    no brain in it)."""
    array = np.full((3, 20, 24), 100, dtype=np.int16)
    volume = Volume(array, Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), size=(24, 20, 3)), {})
    return write_study({SeriesRole.FLAIR: volume}, tmp_path / "in", seed="exit-codes")


def test_a_refused_study_exits_65(flair_only: WrittenStudy, tmp_path: Path) -> None:
    # With glioma_unet version 1 (all four sequences required) the FLAIR-only study is refused at classification.
    run = _neuroflow("run", flair_only.folder, "--out", tmp_path / "out", env=VERSION_1)
    assert run.returncode == ExitCode.BAD_INPUT == 65, run.stderr
    assert "T1" in run.stderr and "Traceback" not in run.stderr


def test_a_study_over_the_input_limits_exits_65_naming_the_study_and_the_limit(
        flair_only: WrittenStudy, tmp_path: Path) -> None:
    run = _neuroflow("run", flair_only.folder, "--out", tmp_path / "out",
                     env={"NEUROFLOW_LIMITS__MAX_INSTANCES_PER_STUDY": "2"})
    assert run.returncode == ExitCode.BAD_INPUT, run.stderr
    assert "NEUROFLOW_LIMITS__MAX_INSTANCES_PER_STUDY" in run.stderr
    assert study_key(flair_only.study_instance_uid) in run.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and report["retryable"] is False


def test_an_unreachable_triton_exits_75_so_the_scheduler_retries(flair_only: WrittenStudy, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there
    run = _neuroflow("run", flair_only.folder, "--out", tmp_path / "out", "--inference", "triton",
                     "--triton-url", address)
    assert run.returncode == ExitCode.TEMPORARY == 75, run.stderr
    assert f"no ready Triton Inference Server at {address}" in run.stderr


def test_the_exit_codes_are_listed_in_the_help() -> None:
    run = _neuroflow("run", "--help")
    assert run.returncode == 0
    for code in ExitCode:
        assert f"{code.value:>3}  " in run.stdout


def test_classify_json_parses_and_names_each_series_role(flair_only: WrittenStudy) -> None:
    run = _neuroflow("classify", flair_only.folder, "--json")
    assert run.returncode == ExitCode.OK, run.stderr
    out = json.loads(run.stdout)
    (study,) = out["studies"]
    assert study["study_key"] == study_key(flair_only.study_instance_uid)
    (series,) = study["series"]
    assert series["role"] == "FLAIR" and series["instance_count"] == 3 and 0 <= series["confidence"] <= 1
    assert out["skipped"] == []


def test_classify_json_of_a_folder_without_dicom_still_parses_and_exits_65(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    run = _neuroflow("classify", tmp_path / "empty", "--json")
    assert run.returncode == ExitCode.BAD_INPUT
    assert json.loads(run.stdout) == {"studies": [], "skipped": [
        {"path": str(tmp_path / "empty" / "notes.txt"), "reason": "not a DICOM file"}]}


@pytest.mark.parametrize(("argv", "verbose", "quiet"), [
    (["run", "d", "--out", "o", "-v"], True, False),
    (["-v", "run", "d", "--out", "o"], True, False),  # before the subcommand: not overwritten by its default
    (["run", "d", "--out", "o", "-q"], False, True),
    (["classify", "d", "--verbose"], True, False),
    (["serve", "all", "--quiet"], False, True),
    (["run", "d", "--out", "o"], False, False),
])
def test_v_and_q_are_taken_before_or_after_the_subcommand(argv: list[str], verbose: bool, quiet: bool) -> None:
    args = _parser().parse_args(argv)
    assert (getattr(args, "verbose", False), getattr(args, "quiet", False)) == (verbose, quiet)


def test_verbose_after_the_subcommand_logs_at_info_and_quiet_hides_the_progress(
        flair_only: WrittenStudy, tmp_path: Path) -> None:
    loud = _neuroflow("classify", flair_only.folder, "-v")
    plain = _neuroflow("classify", flair_only.folder)
    quiet = _neuroflow("run", flair_only.folder, "--out", tmp_path / "out", "-q")
    normal = _neuroflow("run", flair_only.folder, "--out", tmp_path / "out2")
    assert loud.returncode == plain.returncode == ExitCode.OK
    assert "INFO neuroflow.cli: indexed" in loud.stderr and "INFO" not in plain.stderr
    first = f"[ 1/{len(GLIOMA_STAGES)}] read"
    assert first in normal.stderr and first not in quiet.stderr
    assert quiet.returncode == normal.returncode == ExitCode.BAD_INPUT


def test_an_unforeseen_error_exits_70_and_a_retryable_one_75(
        flair_only: WrittenStudy, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuroflow import cli
    from neuroflow.core.errors import OrthancUnavailable

    def broken(self: object) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(cli.FolderDicomSource, "index", broken)
    assert cli.main(["classify", str(flair_only.folder)]) == ExitCode.INTERNAL == 70

    def unavailable(self: object) -> None:
        raise OrthancUnavailable("http://127.0.0.1:1 refused the connection")

    monkeypatch.setattr(cli.FolderDicomSource, "index", unavailable)
    assert cli.main(["classify", str(flair_only.folder)]) == ExitCode.TEMPORARY
