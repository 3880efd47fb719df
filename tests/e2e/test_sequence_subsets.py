"""`neuroflow run` on glioma studies that lack some sequences (issue 13, section 2): with a model card that
declares ``min_roles_any`` (the temporary repository of tests/subset_model_repository.py), a study with only
FLAIR and T1 post-contrast, or only FLAIR, is segmented; the report lists the sequences used and missing and
which sub-regions could not be assessed, and the SEG holds no segment for those. With the shipped card (v1,
trained on complete studies) the same study is still refused, and a study with neither FLAIR nor T1CE is
refused with either card, naming the study and what it lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from neuroflow.core.dicom_io import study_key
from neuroflow.core.exit_codes import ExitCode
from neuroflow.core.roles import SeriesRole
from neuroflow.devtools.dicom_writer import WrittenStudy
from tests.subset_model_repository import subset_model_repository

from .conftest import CliRun, copy_study


@pytest.fixture(scope="module")
def subset_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return subset_model_repository(tmp_path_factory.mktemp("subset-models"))


def _only(study: WrittenStudy, roles: set[SeriesRole], dest: Path) -> WrittenStudy:
    """``study`` copied to ``dest`` with the series of every other role deleted."""
    folder = copy_study(study, dest)
    for role, series in study.series.items():
        if role not in roles:
            for path in series.paths:
                (folder / path.relative_to(study.folder)).unlink()
    return WrittenStudy(study.study_instance_uid, folder, {r: s for r, s in study.series.items() if r in roles})


def _run(folder: Path, out_dir: Path, repository: Path | None, **settings: str) -> CliRun:
    env = {**os.environ, **settings}
    if repository is not None:
        env["NEUROFLOW_MODEL_REPOSITORY"] = str(repository)
    proc = subprocess.run([sys.executable, "-m", "neuroflow.cli", "run", str(folder), "--out", str(out_dir)],
                          capture_output=True, text=True, timeout=900, env=env)
    return CliRun(proc.returncode, proc.stdout, proc.stderr, out_dir)


@pytest.fixture(scope="module")
def flair_t1ce(tcga_siemens: WrittenStudy, tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    return _only(tcga_siemens, {SeriesRole.FLAIR, SeriesRole.T1CE}, tmp_path_factory.mktemp("flair-t1ce") / "in")


def _used(report: dict[str, Any]) -> dict[str, str]:
    return {s["series_instance_uid"]: s["used_as"] for s in report["series"] if s["used_as"] is not None}


def _seg_references(seg_path: Path) -> set[str]:
    seg = pydicom.dcmread(seg_path)
    return {ref.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}


def _sops(study: WrittenStudy, role: SeriesRole) -> set[str]:
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study.series[role].paths}


def test_a_flair_and_t1ce_study_is_segmented_when_the_card_allows_and_the_report_names_the_missing_sequences(
    flair_t1ce: WrittenStudy, subset_repo: Path, tmp_path: Path,
) -> None:
    run = _run(flair_t1ce.folder, tmp_path / "out", subset_repo)
    assert run.returncode == 0, run.stderr
    report = run.report
    assert _used(report) == {flair_t1ce.series[r].series_instance_uid: r.value for r in (SeriesRole.FLAIR,
                                                                                         SeriesRole.T1CE)}
    assert report["sequences_missing"] == ["T1", "T2"]
    assert report["not_assessable"] == {}  # FLAIR shows the whole tumour, T1CE the core and enhancement
    assert set(report["registration"]) == {"FLAIR"}  # registered onto the T1CE, the usual reference
    summary = (run.out_dir / "summary.txt").read_text()
    assert "Sequences missing: T1, T2" in summary and "not assessable" not in summary
    volumes = report["volumes_ml"]
    assert volumes["WT"] > 0, "the real tumour of TCGA-DU-7294 is found from FLAIR and T1CE"
    assert _seg_references(run.out_dir / "seg.dcm") <= _sops(flair_t1ce, SeriesRole.T1CE)


def test_a_card_without_min_roles_any_refuses_a_study_without_t1_and_t2(
        flair_t1ce: WrittenStudy, tmp_path: Path) -> None:
    # glioma_unet version 1 was trained with every sequence present: its card requires all four.
    run = _run(flair_t1ce.folder, tmp_path / "out", None,
               NEUROFLOW_MODELS__GLIOMA='{"name": "glioma_unet", "version": 1}')
    assert run.returncode == ExitCode.BAD_INPUT, run.stderr
    (error,) = run.report["errors"]
    assert "no T1 or T2 series found (required: T1, T1CE, T2, FLAIR)" in error
    assert not (run.out_dir / "seg.dcm").exists()


def test_a_flair_only_study_is_segmented_on_the_flair_and_core_and_enhancement_are_not_assessable(
    tcga_siemens: WrittenStudy, subset_repo: Path, tmp_path: Path,
) -> None:
    flair = _only(tcga_siemens, {SeriesRole.FLAIR}, tmp_path / "in")
    run = _run(flair.folder, tmp_path / "out", subset_repo)
    assert run.returncode == 0, run.stderr
    report = run.report
    assert _used(report) == {flair.series[SeriesRole.FLAIR].series_instance_uid: "FLAIR"}
    assert report["sequences_missing"] == ["T1", "T1CE", "T2"]
    assert report["not_assessable"] == {
        "TC": "the tumour core cannot be assessed without T1 post-contrast",
        "ET": "enhancing tumour cannot be assessed without T1 post-contrast"}
    summary = (run.out_dir / "summary.txt").read_text()
    assert "Enhancing tumour (ET)    not assessable (enhancing tumour cannot be assessed without T1 " in summary
    assert report["volumes_ml"]["WT"] > 0
    # The SEG is drawn on the FLAIR (the reference when there is no T1CE), as one whole-tumour segment.
    seg_path = run.out_dir / "seg.dcm"
    assert _seg_references(seg_path) <= _sops(flair, SeriesRole.FLAIR)
    seg = hd.seg.segread(seg_path)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["Whole tumour (core not assessable)"]
    validator = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True)
    assert [line for line in (validator.stdout + validator.stderr).splitlines() if line.startswith("Error")] == []


def test_a_study_with_neither_flair_nor_t1ce_is_refused_naming_the_study_and_what_it_lacks(
    tcga_siemens: WrittenStudy, subset_repo: Path, tmp_path: Path,
) -> None:
    t1_t2 = _only(tcga_siemens, {SeriesRole.T1, SeriesRole.T2}, tmp_path / "in")
    run = _run(t1_t2.folder, tmp_path / "out", subset_repo)
    assert run.returncode == ExitCode.BAD_INPUT, run.stderr
    report = json.loads((run.out_dir / "report.json").read_text())
    (error,) = report["errors"]
    assert "no T1CE or FLAIR series found (required: at least one of T1CE, FLAIR" in error
    assert report["study_key"] == study_key(t1_t2.study_instance_uid)
    assert report["study_key"] in run.stderr and "T1CE or FLAIR" in run.stderr
