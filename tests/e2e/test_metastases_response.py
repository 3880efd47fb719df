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

from neuroflow.core.roles import SeriesRole
from neuroflow.devtools.dicom_writer import PatientInfo, write_study
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.devtools.synthetic_metastases import colin27_background, metastases_followup_pair
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


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[CliRun, dict[str, tuple[float, float, float]]]:
    pair = metastases_followup_pair(colin27_background(axial_slices=SLAB), LESIONS, seed=11,
                                    rotation_deg=ROTATION_DEG, shift_mm=SHIFT_MM)
    folder = tmp_path_factory.mktemp("mets-pair-in")
    for date, volumes in (("20240105", {SeriesRole.T1CE: pair.prior.t1ce, SeriesRole.FLAIR: pair.prior.flair}),
                          ("20240412", {SeriesRole.T1CE: pair.followup_t1ce, SeriesRole.FLAIR: pair.followup_flair})):
        write_study({role: v.with_array(np.round(v.array).astype(np.int16)) for role, v in volumes.items()},
                    folder / date, patient=PATIENT, seed=f"mets-response-{date}", study_date=date,
                    vendor=Vendor.SIEMENS)
    out = tmp_path_factory.mktemp("mets-pair-out")
    env = {**os.environ, "NEUROFLOW_WINDOW_OVERLAP": "0.25"}  # as the metastases e2e: half the inference time
    proc = subprocess.run([sys.executable, "-m", "neuroflow.cli", "run", str(folder), "--out", str(out),
                           "--pipeline", "metastases"], capture_output=True, text=True, timeout=900, env=env)
    expected_now = {name: now for name, (_then, now, _sizes) in pair.expected.items()}
    return CliRun(proc.returncode, proc.stdout, proc.stderr, out), expected_now


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
