"""`neuroflow run DIR --pipeline metastases` on two studies of one patient (issue 15, lesion-wise follow-up, RANO-BM):
synthetic metastases drawn into a slab of Colin27 at positions kept between the visits: at the prior a 12 mm
(grows to 20 mm), a 16 mm (shrinks to 8 mm) and a 10 mm one (resolves); at the follow-up a new 14 mm one, and the
patient moved (3 degrees and 5 mm) between the visits, so the lesions are found again only through the
registration. The report, the summary and the SR (read back, dciodvfy-clean) must say which lesion did what, the
sum of longest diameters and the category (an unequivocal new lesion: PD), and NEEDS REVIEW (the model is
provisional). One run for the module (two segmentations on a slab: about 2 minutes on 2 CPUs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume, resample
from neuroflow.devtools.dicom_writer import PatientInfo, Vendor, write_study
from neuroflow.devtools.synthetic_metastases import MetastasisSpec, colin27_background, insert_metastases
from neuroflow.results.dicom_sr import sr_texts

from .conftest import CliRun

pytestmark = pytest.mark.skipif(not Path("/usr/share/mricron/templates/ch2.nii.gz").is_file(),
                                reason="Colin27 (Debian mricron-data) is not installed")

PATIENT = PatientInfo(patient_id="NF-METS-0002", name="DEMO^METS")
SLAB = (60, 135)  # axial slices of Colin27: the lateral ventricles to the upper convexity
# The patient's motion between the visits: follow-up points -> where the same tissue was at the prior.
ROTATION_DEG, SHIFT_MM = 3.0, (4.0, -3.0, 0.0)
# name -> (prior diameter, follow-up diameter) in mm; 0 = absent.
LESIONS = {"growing": (12.0, 20.0), "shrinking": (16.0, 8.0), "resolved": (10.0, 0.0), "new": (0.0, 14.0)}
FOUND_WITHIN_MM = 5.0  # a reported lesion this close to a drawn one is that lesion


def _motion(centre: tuple[float, float, float]) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetRotation(0.0, 0.0, float(np.radians(ROTATION_DEG)))
    transform.SetTranslation(SHIFT_MM)
    return transform


def _moved(volume: Volume, motion: sitk.Transform) -> Volume:
    out = resample(volume, volume.geometry, motion, interpolator=sitk.sitkLinear, default=0.0)
    return out.with_array(np.round(out.array).astype(np.int16))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[CliRun, dict[str, tuple[float, float, float]]]:
    background = colin27_background(axial_slices=SLAB)
    # Where the four lesions go: placed once at their largest, so none touches another at either visit.
    layout = insert_metastases(background, [MetastasisSpec(max(sizes)) for sizes in LESIONS.values()], seed=11)
    at = {name: next(t.centroid_mm for t in layout.truth if t.spec.diameter_mm == max(sizes))
          for name, sizes in LESIONS.items()}
    prior = insert_metastases(background, [MetastasisSpec(sizes[0], at_mm=at[name])
                                           for name, sizes in LESIONS.items() if sizes[0]], seed=1)
    followup = insert_metastases(background, [MetastasisSpec(sizes[1], at_mm=at[name])
                                              for name, sizes in LESIONS.items() if sizes[1]], seed=2)
    geometry = background.t1ce.geometry
    centre = tuple(float(v) for v in geometry.index_to_patient() @ np.array([*(np.array(geometry.size) / 2), 1.0]))
    motion = _motion(centre[:3])  # type: ignore[arg-type]
    moved = {SeriesRole.T1CE: _moved(followup.t1ce, motion), SeriesRole.FLAIR: _moved(followup.flair, motion)}
    inverse = motion.GetInverse()
    expected_now = {name: tuple(inverse.TransformPoint(point)) for name, point in at.items()}
    folder = tmp_path_factory.mktemp("mets-pair-in")
    for date, volumes in (("20240105", {SeriesRole.T1CE: prior.t1ce, SeriesRole.FLAIR: prior.flair}),
                          ("20240412", moved)):
        write_study({role: v.with_array(np.round(v.array).astype(np.int16)) for role, v in volumes.items()},
                    folder / date, patient=PATIENT, seed=f"mets-response-{date}", study_date=date,
                    vendor=Vendor.SIEMENS)
    out = tmp_path_factory.mktemp("mets-pair-out")
    env = {**os.environ, "NEUROFLOW_WINDOW_OVERLAP": "0.25"}  # as the metastases e2e: half the inference time
    proc = subprocess.run([sys.executable, "-m", "neuroflow.cli", "run", str(folder), "--out", str(out),
                           "--pipeline", "metastases"], capture_output=True, text=True, timeout=900, env=env)
    return CliRun(proc.returncode, proc.stdout, proc.stderr, out), expected_now  # type: ignore[return-value]


def _near(lesions: list[dict[str, Any]], point: tuple[float, float, float]) -> dict[str, Any]:
    nearest = min(lesions, key=lambda e: float(np.linalg.norm(np.subtract(e["centroid_mm"], point))))
    distance = float(np.linalg.norm(np.subtract(nearest["centroid_mm"], point)))
    assert distance < FOUND_WITHIN_MM, f"no lesion reported within {FOUND_WITHIN_MM} mm of {point}: {lesions}"
    return nearest


def test_each_lesion_is_followed_through_the_patients_motion_and_the_category_is_pd(
        run: tuple[CliRun, dict[str, tuple[float, float, float]]]) -> None:
    cli, expected = run
    assert cli.returncode == 0, cli.stderr
    report = cli.report
    assert report["pipeline"] == "longitudinal" and report["status"] == "succeeded"
    section = report["longitudinal"]
    assert section["pipelines"] == ["metastases_response"]
    response = section["metastases_response"]
    lesions = response["lesions"]
    for name in LESIONS:
        entry = _near(lesions, expected[name])
        assert entry["status"] == name, (name, entry)
    grown = _near(lesions, expected["growing"])
    assert grown["prior_number"] is not None and grown["number"] is not None and grown["target"]
    assert grown["diameter_mm"] - grown["prior_diameter_mm"] >= 5.0
    assert _near(lesions, expected["new"])["prior_number"] is None
    # The registration found the motion (3 degrees, 5 mm) that the matching relied on.
    assert response["registration"]["rotation_deg"] == pytest.approx(ROTATION_DEG, abs=1.0)
    assert response["registration"]["translation_mm"] > 2.0
    rano = response["rano_bm"]
    targets = [e for e in lesions if e["target"]]
    assert rano["target_count"] == len(targets) >= 2
    assert rano["sld_prior_mm"] == pytest.approx(sum(e["prior_diameter_mm"] for e in targets), abs=0.2)
    assert rano["sld_mm"] == pytest.approx(sum(e["diameter_mm"] for e in targets), abs=0.2)
    assert rano["category"] == "PD" and rano["unequivocal_new"] >= 1
    assert any("corticosteroid" in caveat for caveat in rano["caveats"])
    # Every result of the provisional model is flagged, in the report and in the summary.
    assert report["review"]["needs_review"] and response["review"]["needs_review"]
    summary = (cli.out_dir / "summary.txt").read_text()
    assert "NEEDS REVIEW" in summary and "RANO-BM (imaging only): PD" in summary and "corticosteroid" in summary


def test_the_sr_carries_the_lesion_table_and_the_category_and_is_dciodvfy_clean(
        run: tuple[CliRun, dict[str, tuple[float, float, float]]]) -> None:
    cli, _ = run
    assert cli.returncode == 0, cli.stderr
    path = cli.out_dir / "metastases_response_sr.dcm"
    sr = pydicom.dcmread(path)
    assert sr.SeriesDescription.startswith("NEEDS REVIEW")
    texts = sr_texts(sr)
    response = cli.report["longitudinal"]["metastases_response"]
    assert "RANO-BM PD from imaging only" in texts
    statuses = [e["status"] for e in response["lesions"]]
    assert sum(f": {status}, " in " ".join(texts) for status in set(statuses)) == len(set(statuses))
    lesion_rows = [t for t in texts if " -> " in t and "mm LPS on the follow-up" in t]
    assert len(lesion_rows) == len(response["lesions"])
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy is not None, "dciodvfy not found: install dicom3tools (Debian package 'dicom3tools')"
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors
