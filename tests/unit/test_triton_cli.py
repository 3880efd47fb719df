"""`neuroflow run --inference triton --triton-url HOST:PORT`: the settings it builds, and a clear refusal
when no Triton answers there (the run against a real Triton: tests/integration/test_triton_inference.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroflow.cli import _parser, _settings, main
from neuroflow.core.exit_codes import ExitCode
from neuroflow.devtools.ports import free_loopback_port


def test_the_run_options_choose_triton_and_its_address_over_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROFLOW_INFERENCE__TIMEOUT_S", "7")
    args = _parser().parse_args(["run", "in", "--out", "out", "--inference", "triton", "--triton-url", "h:9"])

    settings = _settings(args)

    assert (settings.inference.backend, settings.inference.triton_url) == ("triton", "h:9")
    assert settings.inference.timeout_s == 7.0  # the rest of the group still comes from the environment


def test_without_the_options_the_embedded_run_keeps_onnx_runtime() -> None:
    args = _parser().parse_args(["run", "in", "--out", "out"])

    assert _settings(args).inference.backend == "onnxruntime"


def test_a_run_against_an_address_where_no_triton_answers_stops_with_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there

    status = main(["run", str(tmp_path), "--out", str(tmp_path / "out"), "--inference", "triton",
                   "--triton-url", address])

    assert status == ExitCode.TEMPORARY  # retry later: the server may come back
    assert f"no ready Triton Inference Server at {address}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
