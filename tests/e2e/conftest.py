"""Real glioma studies written out as DICOM series with realistic tags, and a runner for the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.devtools.dicom_writer import WrittenStudy, load_volume, reslice_oblique_thick, write_study
from neuroflow.devtools.scanner_presets import Vendor

DATA = Path(__file__).resolve().parents[1] / "data"
TCGA = DATA / "glioma-tcga-du-7294"
BRATS = DATA / "glioma-brats-gli-00001-000"
TCGA_FILES = {SeriesRole.T1: "t1_bet.nii.gz", SeriesRole.T1CE: "t1c_bet.nii.gz",
              SeriesRole.T2: "t2_bet.nii.gz", SeriesRole.FLAIR: "fla_bet.nii.gz"}
BRATS_FILES = {SeriesRole.T1: "t1n.nii.gz", SeriesRole.T1CE: "t1c.nii.gz",
               SeriesRole.T2: "t2w.nii.gz", SeriesRole.FLAIR: "t2f.nii.gz"}


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    out_dir: Path

    @property
    def report(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.out_dir / "report.json").read_text())
        return loaded


def run_cli(*args: str | Path, out_dir: Path) -> CliRun:
    proc = subprocess.run(
        [sys.executable, "-m", "neuroflow.cli", *map(str, args), "--out", str(out_dir)],
        capture_output=True, text=True, timeout=600,
    )
    return CliRun(proc.returncode, proc.stdout, proc.stderr, out_dir)


def tcga_volumes() -> dict[SeriesRole, Volume]:
    return {role: load_volume(TCGA / name) for role, name in TCGA_FILES.items()}


@pytest.fixture(scope="session")
def tcga_siemens(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """TCGA-DU-7294 as a Siemens study, with non-DICOM clutter beside the images."""
    folder = tmp_path_factory.mktemp("tcga-siemens")
    written = write_study(tcga_volumes(), folder / "DICOM", vendor=Vendor.SIEMENS, seed="tcga-du-7294")
    (folder / "DICOMDIR.txt").write_text("exported by a CD burner\n")
    (folder / "DICOM" / "Thumbs.db").write_bytes(b"\x00\x01not dicom at all")
    return WrittenStudy(written.study_instance_uid, folder, written.series)


@pytest.fixture(scope="session")
def tcga_siemens_run(tcga_siemens: WrittenStudy, tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    return run_cli("run", tcga_siemens.folder, out_dir=tmp_path_factory.mktemp("tcga-siemens-out"))


@pytest.fixture(scope="session")
def brats_ge_oblique(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """BraTS GLI-00001 as a GE study whose T2 and FLAIR are oblique (15°) 2D acquisitions with 4 mm slices."""
    volumes = {role: load_volume(BRATS / name) for role, name in BRATS_FILES.items()}
    for role in (SeriesRole.T2, SeriesRole.FLAIR):
        volumes[role] = reslice_oblique_thick(volumes[role], tilt_deg=15.0, slice_thickness_mm=4.0)
    folder = tmp_path_factory.mktemp("brats-ge")
    return write_study(volumes, folder, vendor=Vendor.GE, seed="brats-gli-00001")


def copy_study(study: WrittenStudy, dest: Path) -> Path:
    shutil.copytree(study.folder, dest)
    return dest
