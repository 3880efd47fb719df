"""The whole glioma pipeline through the `neuroflow` CLI on real studies written as DICOM: a good
study gives a valid SEG and a complete report; every kind of bad input gives a clear error, exit
status 65 (bad input), a report that says why, and no seg.dcm."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from neuroflow.core.config import PipelineModels
from neuroflow.core.dicom_io import FolderDicomSource
from neuroflow.core.exit_codes import ExitCode
from neuroflow.core.handoff import OUTLINE_AGREEMENT_MIN
from neuroflow.core.labels import LEGACY_ENHANCING_LABEL, REGION_LABELS, TumourRegion
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.devtools.dicom_writer import WrittenStudy, load_volume, write_study
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.runtime.embedded import GLIOMA_STAGES
from neuroflow.segmentation.measure import dice

from .conftest import TCGA, CliRun, copy_study, run_cli, tcga_volumes

REQUIRED_REPORT_KEYS = {"study_instance_uid", "pipeline", "series", "timings_s", "volumes_ml", "model",
                        "warnings", "errors"}


def test_good_study_gives_seg_and_complete_report(tcga_siemens: WrittenStudy, tcga_siemens_run: CliRun) -> None:
    run = tcga_siemens_run
    assert run.returncode == 0, run.stderr
    report = run.report
    assert set(report) >= REQUIRED_REPORT_KEYS
    assert report["study_instance_uid"] == tcga_siemens.study_instance_uid
    assert report["pipeline"] == "glioma"
    assert report["errors"] == []
    assert set(GLIOMA_STAGES) | {"total"} == set(report["timings_s"])
    assert report["model"] == {"name": "glioma_unet", "version": PipelineModels().glioma.version}
    used = {s["series_instance_uid"]: s["used_as"] for s in report["series"]}
    assert used == {w.series_instance_uid: role.value for role, w in tcga_siemens.series.items()}
    assert all(s["reasons"] for s in report["series"])
    volumes = report["volumes_ml"]
    assert volumes["WT"] >= volumes["TC"] >= volumes["ET"] >= 0.0
    assert 900 < report["skull_strip"]["brain_volume_ml"] < 2000
    # The failure flag: its alarms counted as the risk score, judged against the site's threshold, in the summary.
    review = report["review"]
    assert review["risk_score"] == len(review["alarms"])
    assert review["needs_review"] == (review["risk_score"] > review["threshold"])
    assert "WT_left_right_dice" in review["disagreement"] and "WT_hyper_dice" in review["disagreement"]
    assert "Quality check: " in (run.out_dir / "summary.txt").read_text()
    # Every stage is shown as it runs.
    for stage in GLIOMA_STAGES:
        assert f"] {stage} done" in run.stderr


def test_non_dicom_files_are_skipped_with_a_warning(tcga_siemens_run: CliRun) -> None:
    warnings = " ".join(tcga_siemens_run.report["warnings"])
    assert "DICOMDIR.txt" in warnings and "Thumbs.db" in warnings
    assert "not a DICOM file" in warnings


def test_seg_is_valid_dicom_on_the_t1ce_series_with_model_identity(
    tcga_siemens: WrittenStudy, tcga_siemens_run: CliRun
) -> None:
    seg_path = tcga_siemens_run.out_dir / "seg.dcm"
    validator = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True)
    errors = [line for line in (validator.stdout + validator.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
    seg = hd.seg.segread(seg_path)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "glioma_unet"
    assert algorithm.AlgorithmVersion == str(PipelineModels().glioma.version)
    t1ce_sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                 for p in tcga_siemens.series[SeriesRole.T1CE].paths}
    referenced = {ref.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= t1ce_sops


def test_segmentation_lands_where_the_reference_tumour_is(tcga_siemens: WrittenStudy, tcga_siemens_run: CliRun) -> None:
    """Decode the SEG onto the T1CE grid and compare with the BraTS fusion reference: the whole tumour
    must overlap the reference well, and far better than its mirror image: proof that nothing on the
    way (DICOM, registration, resampling, SEG frames) flipped or shifted it. The tumour core too: what the
    radiologist receives, not only what the model scores on prepared arrays (EVALUATION.md)."""
    source = FolderDicomSource(tcga_siemens.folder)
    studies, _ = source.index()
    t1ce_uid = tcga_siemens.series[SeriesRole.T1CE].series_instance_uid
    t1ce_series = studies[tcga_siemens.study_instance_uid].series[t1ce_uid]
    instances = source.read_instances(t1ce_series)
    t1ce = series_to_volume(instances, study_key="test")
    seg = hd.seg.segread(tcga_siemens_run.out_dir / "seg.dcm")
    by_sop = {str(ds.SOPInstanceUID): k for k, ds in enumerate(_in_slice_order(instances))}
    segments = {int(s.SegmentNumber): np.zeros(t1ce.array.shape, dtype=bool) for s in seg.SegmentSequence}
    for frame, item in zip(seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None],
                           seg.PerFrameFunctionalGroupsSequence, strict=True):
        sop = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segments[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)][by_sop[sop]] |= frame > 0
    predicted = np.any(list(segments.values()), axis=0)
    reference = load_volume(TCGA / "seg_fusion_mav.nii.gz")
    assert reference.geometry.is_close(t1ce.geometry)
    whole = dice(predicted, np.asarray(reference.array) > 0)
    mirrored = dice(predicted[:, :, ::-1], np.asarray(reference.array) > 0)
    assert whole > mirrored, f"WT Dice {whole:.3f} vs {mirrored:.3f} when mirrored"
    # Measured 0.89 (WT) through DICOM, registration and deepbet; the model alone scores 0.899 (EVALUATION.md).
    assert whole > 0.8, f"WT Dice against the reference is {whole:.3f}"
    core_labels = REGION_LABELS[TumourRegion.TC]
    core = np.any([segments[int(label)] for label in core_labels if int(label) in segments], axis=0)
    reference_core = np.isin(np.asarray(reference.array), [*map(int, core_labels), LEGACY_ENHANCING_LABEL])
    # Measured 0.61; 0.36 while the skull-stripping outline's zero rim around this pre-stripped input was
    # z-scored as brain (preprocess/skull_strip.with_signal).
    assert dice(core, reference_core) > 0.5, f"TC Dice against the reference is {dice(core, reference_core):.3f}"


def _in_slice_order(instances: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Instances sorted along the slice normal, the order series_to_volume stacks them in."""

    def position(ds: pydicom.Dataset) -> float:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        return float(np.dot(np.cross(iop[:3], iop[3:]), np.asarray(ds.ImagePositionPatient, dtype=float)))

    return sorted(instances, key=position)


def test_ge_naming_and_oblique_thick_slices_are_handled(brats_ge_oblique: WrittenStudy, tmp_path: Path) -> None:
    run = run_cli("run", brats_ge_oblique.folder, out_dir=tmp_path / "out")
    assert run.returncode == 0, run.stderr
    roles = {s["used_as"] for s in run.report["series"] if s["used_as"]}
    assert roles == {r.value for r in GLIOMA_INPUT_ROLES}
    assert (run.out_dir / "seg.dcm").is_file()
    for role in ("T2", "FLAIR"):  # thick oblique slices still share the reference's outline once registered
        quality = run.report["registration"][role]
        assert quality["quality_measure"] == "outline Dice with the reference"
        assert quality["quality"] >= OUTLINE_AGREEMENT_MIN, quality
    assert not [w for w in run.report["warnings"] if "not aligned" in w]


def _assert_clean_failure(run: CliRun, *needles: str) -> None:
    assert run.returncode == ExitCode.BAD_INPUT, run.stderr
    assert not (run.out_dir / "seg.dcm").exists()
    report = run.report
    assert report["status"] == "failed" and report["errors"]
    assert report.get("volumes_ml") is None
    message = " ".join(report["errors"])
    for needle in needles:
        assert needle in message, message
    error_lines = [line for line in run.stderr.splitlines() if line.startswith("neuroflow: error:")]
    assert len(error_lines) == len(report["errors"])
    assert "Traceback" not in run.stderr


def test_missing_flair_and_t1ce_is_refused_naming_the_missing_sequences(tmp_path: Path) -> None:
    volumes = tcga_volumes()
    del volumes[SeriesRole.FLAIR], volumes[SeriesRole.T1CE]  # the shipped model needs one of them
    write_study(volumes, tmp_path / "in", vendor=Vendor.PHILIPS, seed="no-flair")
    _assert_clean_failure(run_cli("run", tmp_path / "in", out_dir=tmp_path / "out"), "FLAIR")


def test_truncated_file_is_refused_naming_the_file(tcga_siemens: WrittenStudy, tmp_path: Path) -> None:
    folder = copy_study(tcga_siemens, tmp_path / "in")
    victim = tcga_siemens.series[SeriesRole.T1CE].paths[70]
    target = folder / victim.relative_to(tcga_siemens.folder)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) - 20000])
    _assert_clean_failure(run_cli("run", folder, out_dir=tmp_path / "out"), target.name)


def test_series_with_a_missing_slice_is_refused(tcga_siemens: WrittenStudy, tmp_path: Path) -> None:
    folder = copy_study(tcga_siemens, tmp_path / "in")
    victim = tcga_siemens.series[SeriesRole.T2].paths[60]
    (folder / victim.relative_to(tcga_siemens.folder)).unlink()
    _assert_clean_failure(run_cli("run", folder, out_dir=tmp_path / "out"), "missing")


def test_mixed_studies_in_one_folder_are_refused_listing_them(tcga_siemens: WrittenStudy, tmp_path: Path) -> None:
    folder = copy_study(tcga_siemens, tmp_path / "in")
    volumes = tcga_volumes()
    write_study({SeriesRole.T1: volumes[SeriesRole.T1]}, folder / "other", vendor=Vendor.GE, seed="another-study")
    run = run_cli("run", folder, out_dir=tmp_path / "out")
    _assert_clean_failure(run, "2 studies", tcga_siemens.study_instance_uid, "--study")
    chosen = run_cli("run", folder, "--study", tcga_siemens.study_instance_uid, out_dir=tmp_path / "chosen")
    assert chosen.returncode == 0, chosen.stderr


def test_flipped_series_is_refused_not_segmented(tmp_path: Path) -> None:
    volumes = tcga_volumes()
    flair = volumes[SeriesRole.FLAIR]
    volumes[SeriesRole.FLAIR] = flair.with_array(np.ascontiguousarray(np.asarray(flair.array)[:, :, ::-1]))
    write_study(volumes, tmp_path / "in", vendor=Vendor.SIEMENS, seed="flipped")
    _assert_clean_failure(run_cli("run", tmp_path / "in", out_dir=tmp_path / "out"), "left/right", "FLAIR")


def test_earlier_result_is_removed_when_a_rerun_fails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "seg.dcm").write_bytes(b"stale result of an earlier run")
    (tmp_path / "empty").mkdir()
    _assert_clean_failure(run_cli("run", tmp_path / "empty", out_dir=out), "no DICOM study")


@pytest.mark.parametrize("missing", ["nowhere"])
def test_missing_input_folder_is_a_usage_error(tmp_path: Path, missing: str) -> None:
    run = run_cli("run", tmp_path / missing, out_dir=tmp_path / "out")
    assert run.returncode == 2
    assert "does not exist" in run.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)
