"""`neuroflow run` writes what PACS gets (issue 13, section 4): on a real glioma the SEG, the SR, the colour
overlays on T1CE and FLAIR, each dciodvfy-clean and saying what report.json says; on a study that cannot be
processed the notice SR and image saying why; a rerun gives the same UIDs, and a run into a folder holding
the result of other inputs is the next version of the result, its SR naming the one it supersedes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from neuroflow.core.roles import SeriesRole
from neuroflow.core.uids import derived_uid
from neuroflow.devtools.dicom_writer import WrittenStudy
from neuroflow.results.dicom_sr import SR_DISCLAIMER, sr_texts

from .conftest import CliRun, copy_study, run_cli


def _dciodvfy_errors(path: Path) -> list[str]:
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy is not None, "dciodvfy not found: install dicom3tools (Debian package 'dicom3tools')"
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _volumes_in(sr: Dataset) -> dict[str, float]:
    """Tracking identifier -> the volume (mL) its group measures."""
    found: dict[str, float] = {}

    def walk(items: list[Dataset], group: str) -> None:
        for item in items:
            code = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
            if code == "112039":
                group = str(item.TextValue)
            if item.get("ValueType") == "NUM" and code == "118565006":
                found[group] = float(item.MeasuredValueSequence[0].NumericValue)
            walk(list(item.get("ContentSequence", [])), group)

    walk([sr], "")
    return found


def test_run_writes_seg_sr_and_overlays_that_say_what_the_report_says(tcga_siemens: WrittenStudy,
                                                                       tcga_siemens_run: CliRun) -> None:
    run = tcga_siemens_run
    assert run.returncode == 0, run.stderr
    out, report = run.out_dir, run.report
    assert {"seg.dcm", "sr.dcm", "overlay_t1ce", "overlay_flair"} <= set(report["outputs"])
    overlays = {folder: sorted((out / folder).glob("*.dcm")) for folder in ("overlay_t1ce", "overlay_flair")}
    for path in (out / "seg.dcm", out / "sr.dcm", *(files[len(files) // 2] for files in overlays.values())):
        assert _dciodvfy_errors(path) == [], path
    sr = pydicom.dcmread(out / "sr.dcm")
    volumes = _volumes_in(sr)
    for key, label in (("WT", "Whole tumour (WT)"), ("TC", "Tumour core (TC)"), ("ET", "Enhancing tumour (ET)"),
                       ("oedema", "Oedema (WT - TC)"), ("necrotic_core", "Necrotic core (TC - ET)")):
        assert abs(volumes[label] - report["volumes_ml"][key]) < 0.01, key
    assert SR_DISCLAIMER in sr_texts(sr)
    assert sr.StudyInstanceUID == tcga_siemens.study_instance_uid
    t1ce = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in tcga_siemens.series[SeriesRole.T1CE].paths}
    first = pydicom.dcmread(overlays["overlay_t1ce"][0])
    assert first.BurnedInAnnotation == "YES" and str(first.SourceImageSequence[0].ReferencedSOPInstanceUID) in t1ce
    assert len(overlays["overlay_t1ce"]) == len(t1ce)


def test_a_study_that_cannot_be_processed_gets_a_notice_saying_why(tcga_siemens: WrittenStudy,
                                                                   tmp_path: Path) -> None:
    folder = copy_study(tcga_siemens, tmp_path / "in")
    (folder / tcga_siemens.series[SeriesRole.T2].paths[60].relative_to(tcga_siemens.folder)).unlink()
    run = run_cli("run", folder, out_dir=tmp_path / "out")
    assert run.returncode == 65, run.stderr
    assert {"notice_sr.dcm", "notice.dcm"} <= set(run.report["outputs"])
    assert not (run.out_dir / "seg.dcm").exists() and not (run.out_dir / "sr.dcm").exists()
    for name in ("notice_sr.dcm", "notice.dcm"):
        assert _dciodvfy_errors(run.out_dir / name) == [], name
    texts = " ".join(sr_texts(pydicom.dcmread(run.out_dir / "notice_sr.dcm")))
    assert "could not be processed" in texts and "missing" in texts
    image = pydicom.dcmread(run.out_dir / "notice.dcm")
    assert image.StudyInstanceUID == tcga_siemens.study_instance_uid and image.BurnedInAnnotation == "YES"


def test_a_rerun_gives_the_same_uids_and_supersedes_an_earlier_result_of_other_inputs_as_version_2(
        tcga_siemens: WrittenStudy, tcga_siemens_run: CliRun, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    earlier = pydicom.dcmread(tcga_siemens_run.out_dir / "sr.dcm")
    # The earlier result as an earlier model would have left it: the same study, another SR.
    earlier.SOPInstanceUID = earlier.file_meta.MediaStorageSOPInstanceUID = derived_uid("1.2.999.", "earlier")
    earlier.save_as(out / "sr.dcm", enforce_file_format=True)
    run = run_cli("run", tcga_siemens.folder, out_dir=out)
    assert run.returncode == 0, run.stderr
    sr = pydicom.dcmread(out / "sr.dcm")
    # The same input gives the same UIDs (a PACS replaces rather than duplicates) ...
    assert sr.SOPInstanceUID == pydicom.dcmread(tcga_siemens_run.out_dir / "sr.dcm").SOPInstanceUID
    first_seg = pydicom.dcmread(tcga_siemens_run.out_dir / "seg.dcm", stop_before_pixels=True)
    assert pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True).SOPInstanceUID == first_seg.SOPInstanceUID
    # ... and the SR of other inputs found in the folder is the version this one supersedes.
    assert sr.SeriesDescription.endswith(" v2")
    assert pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True).SeriesDescription.endswith(" v2")
    named = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert named.ReferencedSOPInstanceUID == earlier.SOPInstanceUID
    assert any("replaces an earlier one" in w for w in run.report["warnings"])
    assert _dciodvfy_errors(out / "sr.dcm") == []
