"""`neuroflow run` on folders holding several studies of one patient, written as DICOM from phantoms
with known truth made from a real brain (Colin27): an MS pair (new lesions found where they were
inserted, SEG and overlay written and decodable), a haematoma pair and three CT timepoints (expansion
flag and volumes right per pair), and bad input (a prior without a date, a missing FLAIR, a 2D FLAIR with
thick slices, studies without a PatientID) that gives a report saying why.

The phantoms are made at 1 mm and written at 2 mm (CT: 2 x 2 x 4 mm) to keep the test within budget."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import SimpleITK as sitk

from neuroflow.core.dicom_io import study_key
from neuroflow.core.exit_codes import ExitCode
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.devtools.dicom_writer import PatientInfo, WrittenStudy, write_study
from neuroflow.devtools.longitudinal_phantoms import (
    Brain,
    HaematomaPair,
    MsPair,
    colin27,
    ct_from_anatomy,
    make_haematoma_pair,
    make_ms_pair,
)
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.results.longitudinal_results import CHANGE_LEGEND
from neuroflow.results.overlay import BANNER, annotation_layer

from .conftest import CliRun, run_cli

MS_PATIENT = PatientInfo(patient_id="NF-MS-0001", name="DEMO^MS")
ICH_PATIENT = PatientInfo(patient_id="NF-ICH-0001", name="DEMO^ICH")
CENTROID_TOLERANCE_MM = 4.0
HAEMATOMA_VOLUME_TOLERANCE = 0.05  # relative: the goal, met on 2 x 2 x 4 mm voxels


def _regrid(volume: Volume, spacing: tuple[float, float, float]) -> Volume:
    """``volume`` on a coarser grid over the same field of view (linear), values rounded for DICOM."""
    g = volume.geometry
    size = tuple(max(3, int(n * s / t)) for n, s, t in zip(g.size, g.spacing, spacing, strict=True))
    out = resample(volume, Geometry(spacing, g.origin, g.direction, (size[0], size[1], size[2])),
                   interpolator=sitk.sitkLinear, default=float(np.min(volume.array)))
    return out.with_array(np.round(out.array).astype(np.int16))


@dataclass
class Written:
    folder: Path
    studies: list[WrittenStudy]


def _write(volumes_by_date: list[tuple[str, dict[SeriesRole, Volume]]], folder: Path, patient: PatientInfo,
           seed: str) -> Written:
    studies = [write_study(volumes, folder / date, patient=patient, seed=f"{seed}-{date}", study_date=date,
                           vendor=Vendor.SIEMENS)
               for date, volumes in volumes_by_date]
    return Written(folder, studies)


@pytest.fixture(scope="module")
def brain() -> Brain:
    return colin27()


@pytest.fixture(scope="module")
def ms_pair(brain: Brain) -> MsPair:
    return make_ms_pair(brain, new_volumes_mm3=(60.0, 150.0, 400.0), enlarging=(), stable_volumes_mm3=(150.0,),
                        seed=3)


@pytest.fixture(scope="module")
def ms_run(ms_pair: MsPair, tmp_path_factory: pytest.TempPathFactory) -> tuple[Written, CliRun]:
    written = _write([("20230115", {SeriesRole.FLAIR: _regrid(ms_pair.baseline, (2.0, 2.0, 2.0))}),
                      ("20240120", {SeriesRole.FLAIR: _regrid(ms_pair.followup, (2.0, 2.0, 2.0))})],
                     tmp_path_factory.mktemp("ms-in"), MS_PATIENT, "ms")
    return written, run_cli("run", written.folder, out_dir=tmp_path_factory.mktemp("ms-out"))


@pytest.fixture(scope="module")
def haematoma_pairs(brain: Brain) -> tuple[HaematomaPair, HaematomaPair]:
    """Two pairs from one CT with the clot in one place (same seed and largest volume): 20 -> 31 mL and
    30 -> 31 mL. Timepoints 20 mL, 30 mL (both unmoved) and 31 mL (moved) give one expansion (+10 mL)
    and one stable pair (+1 mL, +3 %)."""
    ct = ct_from_anatomy(brain, seed=1)
    return (make_haematoma_pair(brain, baseline_ml=20.0, followup_ml=31.0, seed=1, ct=ct),
            make_haematoma_pair(brain, baseline_ml=30.0, followup_ml=31.0, seed=1, ct=ct))


@pytest.fixture(scope="module")
def ct_three_timepoints(haematoma_pairs: tuple[HaematomaPair, HaematomaPair],
                        tmp_path_factory: pytest.TempPathFactory) -> tuple[Written, CliRun]:
    first, second = haematoma_pairs
    grid = (2.0, 2.0, 4.0)
    written = _write([("20240301", {SeriesRole.CT: _regrid(first.baseline, grid)}),
                      ("20240302", {SeriesRole.CT: _regrid(second.baseline, grid)}),
                      ("20240305", {SeriesRole.CT: _regrid(second.followup, grid)})],
                     tmp_path_factory.mktemp("ct-in"), ICH_PATIENT, "ich")
    return written, run_cli("run", written.folder, out_dir=tmp_path_factory.mktemp("ct-out"))


def test_ms_pair_reports_the_inserted_new_lesions_at_their_positions(ms_pair: MsPair,
                                                                    ms_run: tuple[Written, CliRun]) -> None:
    written, run = ms_run
    assert run.returncode == 0, run.stderr
    report = run.report
    assert report["pipeline"] == "longitudinal" and report["status"] == "succeeded"
    section = report["longitudinal"]
    assert section["baseline_study_instance_uid"] == written.studies[0].study_instance_uid
    assert section["followup_study_instance_uid"] == written.studies[1].study_instance_uid
    assert report["study_instance_uid"] == written.studies[1].study_instance_uid
    assert section["pipelines"] == ["ms_change"]
    lesions = section["new_lesions"]
    assert section["new_lesion_count"] == len(lesions) and section["new_activity"] is True
    assert all(set(lesion) >= {"centroid_mm", "volume_mm3", "location"} for lesion in lesions)
    found = [np.asarray(lesion["centroid_mm"]) for lesion in lesions]
    for truth in ms_pair.detectable:
        distances = [float(np.linalg.norm(c - np.asarray(truth.centroid_mm))) for c in found]
        assert min(distances) < CENTROID_TOLERANCE_MM, (truth, lesions)
    # Nothing where no lesion was inserted (the stable lesion is not new).
    assert len(lesions) == len(ms_pair.detectable), lesions
    assert "MS new activity: YES" in (run.out_dir / "summary.txt").read_text()


def test_ms_seg_and_overlay_are_written_valid_and_on_the_followup_flair(ms_pair: MsPair,
                                                                       ms_run: tuple[Written, CliRun]) -> None:
    written, run = ms_run
    assert run.returncode == 0, run.stderr
    seg_path = run.out_dir / "ms_new_lesions_seg.dcm"
    validator = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True, timeout=60)
    assert [line for line in (validator.stdout + validator.stderr).splitlines() if line.startswith("Error")] == []
    seg = hd.seg.segread(seg_path)
    flair = written.studies[1].series[SeriesRole.FLAIR]
    follow_sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in flair.paths}
    referenced = [ref.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert referenced and set(referenced) <= set(follow_sops)
    # Every inserted lesion's centre slice carries a SEG frame.
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=referenced, segment_numbers=[1])
    marked_z = [float(pydicom.dcmread(follow_sops[uid], stop_before_pixels=True).ImagePositionPatient[2])
                for uid, frame in zip(referenced, frames, strict=True) if frame.any()]
    for truth in ms_pair.detectable:
        assert min(abs(z - truth.centroid_mm[2]) for z in marked_z) <= 2.0

    overlay = sorted((run.out_dir / "ms_overlay").glob("*.dcm"))
    assert len(overlay) == len(flair.paths)
    first = pydicom.dcmread(overlay[0])
    assert first.PhotometricInterpretation == "RGB" and first.FrameOfReferenceUID == pydicom.dcmread(
        flair.paths[0], stop_before_pixels=True).FrameOfReferenceUID
    marked = [p for p in overlay if _has_vermillion(pydicom.dcmread(p).pixel_array)]
    assert marked, "no slice of the overlay shows a new lesion in vermillion"
    assert first.BurnedInAnnotation == "YES"
    assert {"ms_new_lesions_seg.dcm", "ms_new_lesions_sr.dcm", "ms_overlay"} <= set(run.report["outputs"])
    # The SR says what the report says: the count and each lesion's volume, and it is valid DICOM.
    sr_path = run.out_dir / "ms_new_lesions_sr.dcm"
    validator = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True)
    assert [line for line in (validator.stdout + validator.stderr).splitlines() if line.startswith("Error")] == []
    numbers = _sr_numbers(pydicom.dcmread(sr_path))
    lesions = run.report["longitudinal"]["new_lesions"]
    assert numbers["NEW-LESION-COUNT"] == [float(len(lesions))]
    assert sorted(numbers["118565006"]) == sorted(lesion["volume_mm3"] for lesion in lesions)


def _sr_numbers(sr: pydicom.Dataset) -> dict[str, list[float]]:
    """Concept code -> the values of the SR's NUM items so coded."""
    found: dict[str, list[float]] = {}

    def walk(items: list[pydicom.Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "NUM":
                found.setdefault(item.ConceptNameCodeSequence[0].CodeValue, []).append(
                    float(item.MeasuredValueSequence[0].NumericValue))
            walk(list(item.get("ContentSequence", [])))

    walk([sr])
    return found


def _has_vermillion(rgb: npt.NDArray[np.uint8]) -> bool:
    """A new lesion's colour blended over the image, outside the burned-in banner and legend."""
    _, annotated = annotation_layer(rgb.shape[0], rgb.shape[1], BANNER, CHANGE_LEGEND)
    pixels = rgb.astype(int)
    return bool(np.any((pixels[..., 0] > pixels[..., 1] + 50) & (pixels[..., 0] > pixels[..., 2] + 80) & ~annotated))


def test_three_ct_timepoints_give_two_pairs_with_the_right_expansion_flags(
    haematoma_pairs: tuple[HaematomaPair, HaematomaPair], ct_three_timepoints: tuple[Written, CliRun]
) -> None:
    written, run = ct_three_timepoints
    assert run.returncode == 0, run.stderr
    section = run.report["longitudinal"]
    pairs = section["pairs"]
    uids = [s.study_instance_uid for s in written.studies]
    assert [(p["baseline_study_instance_uid"], p["followup_study_instance_uid"]) for p in pairs] == [
        (uids[0], uids[1]), (uids[1], uids[2])]
    assert (section["baseline_study_instance_uid"], section["followup_study_instance_uid"]) == (uids[1], uids[2])
    first, second = (pair.truth for pair in haematoma_pairs)
    truths = [(first.baseline_ml, second.baseline_ml, True), (second.baseline_ml, second.followup_ml, False)]
    for pair, (before, after, expansion) in zip(pairs, truths, strict=True):
        measured = pair["haematoma"]
        assert set(measured) >= {"baseline_ml", "followup_ml", "change_ml", "change_pct", "expansion",
                                 "centroid_shift_mm", "diameters", "regularity"}
        assert measured["expansion"] is expansion, measured
        assert measured["baseline_ml"] == pytest.approx(before, rel=HAEMATOMA_VOLUME_TOLERANCE)
        assert measured["followup_ml"] == pytest.approx(after, rel=HAEMATOMA_VOLUME_TOLERANCE)
        assert measured["change_ml"] == pytest.approx(measured["followup_ml"] - measured["baseline_ml"], abs=0.02)
        # The clot grows in place (the follow-up moved with the patient): its centroid moves by millimetres.
        assert measured["centroid_shift_mm"] < 5.0, measured
    for number in (1, 2):
        for name in ("haematoma_baseline_seg.dcm", "haematoma_followup_seg.dcm"):
            assert (run.out_dir / f"pair{number}" / name).is_file()
    assert "expansion: YES" in (run.out_dir / "summary.txt").read_text()


def test_a_prior_without_a_date_fails_naming_it(ms_run: tuple[Written, CliRun], tmp_path: Path) -> None:
    written, _ = ms_run
    folder = tmp_path / "in"
    shutil.copytree(written.folder, folder)
    undated = written.studies[0].study_instance_uid
    for path in folder.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path)
            if ds.StudyInstanceUID == undated:
                for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
                    if keyword in ds:
                        delattr(ds, keyword)
                ds.save_as(path)
    run = run_cli("run", folder, out_dir=tmp_path / "out")
    assert run.returncode == ExitCode.BAD_INPUT
    assert run.report["status"] == "failed" and "no StudyDate" in run.report["errors"][0]
    assert study_key(undated) in run.report["errors"][0] and run.report["study_instance_uid"] == undated
    assert not (tmp_path / "out" / "ms_new_lesions_seg.dcm").exists()


def test_a_missing_flair_at_one_timepoint_says_why_nothing_was_compared(ms_pair: MsPair, tmp_path: Path) -> None:
    t1_only = _regrid(ms_pair.baseline_t1 or ms_pair.baseline, (3.0, 3.0, 3.0))
    written = _write([("20230115", {SeriesRole.T1: t1_only}),
                      ("20240120", {SeriesRole.FLAIR: _regrid(ms_pair.followup, (3.0, 3.0, 3.0))})],
                     tmp_path / "in", MS_PATIENT, "ms-missing")
    run = run_cli("run", written.folder, out_dir=tmp_path / "out")
    assert run.returncode == ExitCode.BAD_INPUT
    error = run.report["errors"][0]
    assert "ms_change" in error and "baseline" in error and "FLAIR" in error


def test_a_2d_flair_with_thick_slices_is_refused_with_the_reason(ms_pair: MsPair, tmp_path: Path) -> None:
    thick = (2.0, 2.0, 6.0)
    written = _write([("20230115", {SeriesRole.FLAIR: _regrid(ms_pair.baseline, thick)}),
                      ("20240120", {SeriesRole.FLAIR: _regrid(ms_pair.followup, thick)})],
                     tmp_path / "in", MS_PATIENT, "ms-thick")
    run = run_cli("run", written.folder, out_dir=tmp_path / "out")
    assert run.returncode == ExitCode.BAD_INPUT
    assert "5 mm" in run.report["errors"][0] or any("5 mm" in w for w in run.report["warnings"])


def test_studies_of_different_patients_keep_the_choose_one_error(ms_run: tuple[Written, CliRun],
                                                                 ct_three_timepoints: tuple[Written, CliRun],
                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(ms_run[0].studies[1].folder, folder / "ms")
    shutil.copytree(ct_three_timepoints[0].studies[0].folder, folder / "ct")
    run = run_cli("run", folder, out_dir=tmp_path / "out")
    assert run.returncode == ExitCode.BAD_INPUT
    assert "--study" in run.report["errors"][0]


def test_two_studies_without_a_patient_id_in_one_folder_are_not_compared(ms_pair: MsPair, tmp_path: Path) -> None:
    """An empty PatientID is no patient: two such studies are not one patient's timepoints, whatever they hold."""
    grid = (3.0, 3.0, 3.0)
    written = _write([("20230115", {SeriesRole.FLAIR: _regrid(ms_pair.baseline, grid)}),
                      ("20240120", {SeriesRole.FLAIR: _regrid(ms_pair.followup, grid)})],
                     tmp_path / "in", PatientInfo(patient_id="", name="DEMO^NOID"), "ms-no-id")
    run = run_cli("run", written.folder, out_dir=tmp_path / "out")
    assert run.returncode == ExitCode.BAD_INPUT
    assert run.report["status"] == "failed" and run.report.get("longitudinal") is None
    error = run.report["errors"][0]
    assert "empty PatientID" in error and "--study" in error
    assert all(s.study_instance_uid in error for s in written.studies)
    assert not (tmp_path / "out" / "ms_new_lesions_seg.dcm").exists()
