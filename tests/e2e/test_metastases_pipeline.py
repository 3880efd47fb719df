"""`neuroflow run DIR --out OUT --pipeline metastases` end to end (issue 15): synthetic metastases inserted into
Colin27 (a 20 mm ring-enhancing lesion with oedema, a 10 mm and a 6 mm solid one), written as a Siemens T1CE and
FLAIR; the objects are read back: one SEG segment and one RTSTRUCT ROI per reported lesion, "Met n" alike,
each ROI's contoured volume within 10 % of its segment's, the SR's count as the report's, every object
dciodvfy-clean, and the large lesion found where it was put, in the atlas region of its side. One run for the
module (a few minutes on 2 CPUs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.devtools.synthetic_metastases import (
    MetastasisSpec,
    MetastasisTruth,
    colin27_background,
    insert_metastases,
)
from neuroflow.results.rtstruct import roi_masks

from .conftest import CliRun

pytestmark = pytest.mark.skipif(not Path("/usr/share/mricron/templates/ch2.nii.gz").is_file(),
                                reason="Colin27 (Debian mricron-data) is not installed")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[CliRun, list[MetastasisTruth], Path]:
    case = insert_metastases(colin27_background(), [MetastasisSpec(20.0, "ring", oedema_mm=6.0),
                                                    MetastasisSpec(10.0), MetastasisSpec(6.0)], seed=7)
    folder = tmp_path_factory.mktemp("mets-in")
    written = write_study({SeriesRole.T1CE: case.t1ce, SeriesRole.FLAIR: case.flair}, folder, seed="mets-e2e")
    out = tmp_path_factory.mktemp("mets-out")
    # A coarser window overlap than the default halves the inference time; the objects are what is tested.
    env = {**os.environ, "NEUROFLOW_WINDOW_OVERLAP": "0.25"}
    proc = subprocess.run([sys.executable, "-m", "neuroflow.cli", "run", str(folder), "--out", str(out),
                           "--pipeline", "metastases", "-q"], capture_output=True, text=True, timeout=900, env=env)
    t1ce_folder = written.series[SeriesRole.T1CE].paths[0].parent
    return CliRun(proc.returncode, proc.stdout, proc.stderr, out), case.truth, t1ce_folder


def _dciodvfy_errors(path: Path) -> list[str]:
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy is not None, "dciodvfy not found: install dicom3tools (Debian package 'dicom3tools')"
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_the_run_reports_lesions_from_t1ce_and_flair(run: tuple[CliRun, list[MetastasisTruth], Path]) -> None:
    cli, truth, _ = run
    assert cli.returncode == 0, cli.stderr
    report = cli.report
    assert report["pipeline"] == "metastases" and report["status"] == "succeeded"
    assert {s["used_as"] for s in report["series"] if s["used_as"]} == {"T1CE", "FLAIR"}
    mets = report["metastases"]
    assert mets["count"] == len(mets["lesions"]) >= 1
    assert mets["total_volume_ml"] == pytest.approx(sum(m["volume_ml"] for m in mets["lesions"]), abs=1e-3)
    largest = truth[0]  # 20 mm: whatever else the model does, it must find this one where it is
    found = min(mets["lesions"], key=lambda m: float(np.linalg.norm(np.subtract(m["centroid_mm"],
                                                                               largest.centroid_mm))))
    distance = float(np.linalg.norm(np.subtract(found["centroid_mm"], largest.centroid_mm)))
    assert distance < 10.0, f"no lesion reported within 10 mm of the 20 mm metastasis (nearest {distance:.1f} mm)"
    # Its atlas location names the hemisphere its centroid is in (LPS: x > 0 is the patient's left).
    side = ("_L (AAL)", ", left (") if found["centroid_mm"][0] > 0 else ("_R (AAL)", ", right (")
    assert found["location"] != "outside atlas" and any(s in found["location"] for s in side), found
    summary = (cli.out_dir / "summary.txt").read_text()
    assert "Metastases:" in summary and found["location"] in summary
    # The shipped model is provisional: every result it gives says so, in the report and in what PACS shows.
    assert report["review"]["needs_review"] and "provisional model" in report["review"]["alarms"][0]
    for name in ("seg.dcm", "rtstruct.dcm", "sr.dcm"):
        assert str(pydicom.dcmread(cli.out_dir / name, stop_before_pixels=True).SeriesDescription).startswith(
            "NEEDS REVIEW"), name


def test_rtstruct_and_seg_name_the_same_lesions_and_agree_in_volume(
        run: tuple[CliRun, list[MetastasisTruth], Path]) -> None:
    cli, _, t1ce_folder = run
    count = cli.report["metastases"]["count"]
    seg = pydicom.dcmread(cli.out_dir / "seg.dcm")
    rtstruct = pydicom.dcmread(cli.out_dir / "rtstruct.dcm")
    names = [f"Met {n}" for n in range(1, count + 1)]
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == names
    assert [str(r.ROIName) for r in rtstruct.StructureSetROISequence] == names
    t1ce = sorted((pydicom.dcmread(p) for p in t1ce_folder.iterdir()), key=lambda d: int(d.InstanceNumber))
    assert rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == t1ce[0].FrameOfReferenceUID
    grid = series_to_volume(t1ce, study_key="test").geometry
    contoured = {name: int(mask.sum()) for name, mask in roi_masks(rtstruct, grid).items()}
    # SEG voxels per segment: each frame is one slice of one segment on the T1CE grid.
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    segmented = dict.fromkeys(names, 0)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        segmented[names[number - 1]] += int(frame.sum())
    for name in names:
        assert segmented[name] > 0
        assert abs(contoured[name] - segmented[name]) <= 0.1 * segmented[name], (name, contoured[name], segmented[name])
    mm3 = float(np.prod(grid.spacing))
    reported = {f"Met {m['number']}": m["volume_ml"] * 1000.0 for m in cli.report["metastases"]["lesions"]}
    for name in names:
        assert segmented[name] * mm3 == pytest.approx(reported[name], rel=1e-3)


def test_every_object_is_dciodvfy_clean_and_the_sr_counts_as_the_report(
        run: tuple[CliRun, list[MetastasisTruth], Path]) -> None:
    cli, _, _ = run
    overlay = sorted((cli.out_dir / "overlay_t1ce").iterdir())
    for path in (cli.out_dir / "seg.dcm", cli.out_dir / "rtstruct.dcm", cli.out_dir / "sr.dcm", overlay[0]):
        assert _dciodvfy_errors(path) == [], path.name
    sr = pydicom.dcmread(cli.out_dir / "sr.dcm")
    counts: list[float] = []

    def walk(items: list[pydicom.Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "NUM" and item.ConceptNameCodeSequence[0].get("CodeValue") == "LESION-COUNT":
                counts.append(float(item.MeasuredValueSequence[0].NumericValue))
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.ContentSequence))
    assert counts == [cli.report["metastases"]["count"]]
