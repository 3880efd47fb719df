"""`neuroflow run` chooses series as ingest does (issue 14): two different FLAIR protocols too close to call
are refused as bad input naming both, not guessed; a phase map is never the T2, whether its header says phase
or its T2 verdict is under the confidence floor, and the refusal names them. Studies written by our writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroflow.core.exit_codes import ExitCode
from neuroflow.core.roles import SeriesRole
from tests.extra_series import DTI_PHASE, add_series, dti_phase_preset, preset, write_small_study

from .conftest import CliRun, run_cli

FLAIR_FS = preset(SeriesRole.FLAIR, series_description="t2_flair_fs_tra", protocol_name="t2_flair_fs_tra",
                  repetition_time_ms=11000.0, echo_time_ms=125.0, inversion_time_ms=2800.0, also_seen_as=())


def _refused_in_classify(run: CliRun) -> str:
    """The one error of a run refused as bad input while classifying, as report.json and stderr say it."""
    assert run.returncode == ExitCode.BAD_INPUT, run.stderr
    assert not (run.out_dir / "seg.dcm").exists()
    report = run.report
    assert report["status"] == "failed" and report.get("volumes_ml") is None
    (error,) = report["errors"]
    assert error.startswith("classify: "), error
    assert f"neuroflow: error: {error}" in run.stderr
    assert "Traceback" not in run.stderr
    return str(error)


def test_two_different_flair_protocols_are_refused_naming_both(tmp_path: Path) -> None:
    seed = "cli-ambiguous-flair"
    write_small_study(tmp_path / "in", seed=seed)
    add_series(tmp_path / "in", FLAIR_FS, seed=seed, series_number=20, minutes_after_start=30)
    error = _refused_in_classify(run_cli("run", tmp_path / "in", out_dir=tmp_path / "out"))
    assert "ambiguous FLAIR input, not guessed" in error
    assert "series 5 't2_tirm_tra_dark-fluid' (0.86, 2D)" in error  # Siemens numbers T1 2, T1CE 3, T2 4, FLAIR 5
    assert "series 20 't2_flair_fs_tra' (0.86, 2D)" in error
    assert "NF-DEMO" not in error  # no PatientID


def test_a_phase_map_is_never_the_t2_and_the_refusal_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # glioma_unet version 1 needs all four sequences, so the study without a real T2 is refused, naming the phase
    # map it would not take (the shipped version 2 runs without T2: the phase map is then simply unused).
    monkeypatch.setenv("NEUROFLOW_MODELS__GLIOMA", '{"name": "glioma_unet", "version": 1}')
    seed = "cli-dti-phase"
    write_small_study(tmp_path / "in", (SeriesRole.T1, SeriesRole.T1CE, SeriesRole.FLAIR), seed=seed)
    add_series(tmp_path / "in", dti_phase_preset(), seed=seed, series_number=9, minutes_after_start=30)
    add_series(tmp_path / "in", dti_phase_preset(series_description="S2MB2", image_type=("ORIGINAL", "PRIMARY")),
               seed=seed, series_number=10, minutes_after_start=34)
    run = run_cli("run", tmp_path / "in", out_dir=tmp_path / "out")
    error = _refused_in_classify(run)
    assert "no T2 series found" in error
    assert f"series 9 '{DTI_PHASE}' = other" in error
    assert "series 10 'S2MB2' = T2 (0.24, below floor)" in error
    entries = {s["series_number"]: s for s in run.report["series"]}
    assert entries[9]["role"] == "other" and entries[9]["used_as"] is None
    assert any(DTI_PHASE in reason for reason in entries[9]["reasons"])
    assert entries[10]["reasons"][0].startswith("below floor: T2 at confidence 0.24 (score 2.0)")
    assert "SeriesDescription 'S2MB2' and ProtocolName 'ep2d_S2MB2' match no known sequence pattern" in (
        entries[10]["reasons"])
