"""The study report: every promised key in report.json, consistent outcomes, a readable summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from neuroflow.core.dicom_io import study_key
from neuroflow.core.labels import BratsLabel
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume
from neuroflow.results.report import (
    DISCLAIMER,
    OrientationCheck,
    RegistrationQuality,
    ReportStatus,
    SeriesEntry,
    SkullStrip,
    StudyReport,
    TumourVolumes,
    render_summary,
    write_report,
    write_summary,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
REQUIRED_KEYS = {
    "study_instance_uid", "study_key", "pipeline", "status", "series", "timings_s", "volumes_ml", "model",
    "registration", "orientation_check", "skull_strip", "warnings", "errors", "outputs", "generated_at",
    "neuroflow_version", "disclaimer",
}
SERIES_KEYS = {"series_instance_uid", "series_number", "description", "role", "confidence", "reasons",
               "used_as"}


def _series() -> list[SeriesEntry]:
    return [
        SeriesEntry(series_instance_uid="1.2.3.5", series_number=5, description="AX T1 POST GD",
                    role=SeriesRole.T1CE, confidence=0.97, reasons=["contrast agent tagged"],
                    used_as=SeriesRole.T1CE),
        SeriesEntry(series_instance_uid="1.2.3.9", series_number=9, description="LOCALIZER",
                    role=SeriesRole.OTHER, confidence=0.9, reasons=["localizer image type"]),
    ]


def _succeeded() -> StudyReport:
    return StudyReport(
        study_instance_uid=STUDY_UID, study_key=study_key(STUDY_UID), pipeline="glioma",
        status=ReportStatus.SUCCEEDED, series=_series(),
        timings_s={"preprocess": 12.5, "segmentation": 30.25, "results": 1.0},
        volumes_ml=TumourVolumes(WT=42.34, TC=12.0, ET=8.06),
        model=ModelRef(name="glioma-unet", version=3),
        registration={SeriesRole.FLAIR: RegistrationQuality(
            metric="mattes_mutual_information", metric_value=-0.61, quality=0.93,
            quality_measure="brain-mask Dice with the reference")},
        orientation_check=OrientationCheck(passed=True, detail="all series agree"),
        skull_strip=SkullStrip(brain_volume_ml=1234.56, method="deepbet"),
        warnings=["FLAIR slice thickness 5 mm: oedema boundary coarse"],
        outputs=["seg.dcm", "report.json", "summary.txt"],
    )


def _failed() -> StudyReport:
    return StudyReport(
        study_instance_uid=STUDY_UID, study_key=study_key(STUDY_UID), pipeline="glioma",
        status=ReportStatus.FAILED, series=_series(), timings_s={"preprocess": 2.0},
        errors=["no FLAIR series in the study"],
    )


def _minimal(status: ReportStatus, **fields: Any) -> StudyReport:
    return StudyReport(study_instance_uid=STUDY_UID, study_key="k", pipeline="glioma", status=status,
                       **fields)


def test_report_json_holds_every_required_key(tmp_path: Path) -> None:
    path = write_report(_succeeded(), tmp_path)
    assert path == tmp_path / "report.json"
    data = json.loads(path.read_text())
    assert data.keys() >= REQUIRED_KEYS
    assert all(entry.keys() >= SERIES_KEYS for entry in data["series"])
    assert data["volumes_ml"] == pytest.approx(
        {"WT": 42.34, "TC": 12.0, "ET": 8.06, "oedema": 30.34, "necrotic_core": 3.94})
    assert data["timings_s"]["total"] == pytest.approx(43.75)
    assert data["model"] == {"name": "glioma-unet", "version": 3}
    assert data["registration"]["FLAIR"]["quality"] == 0.93
    assert data["skull_strip"]["brain_volume_ml"] == 1234.56
    assert data["disclaimer"] == DISCLAIMER
    assert data["status"] == "succeeded"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


def test_report_json_reads_back_to_the_same_report(tmp_path: Path) -> None:
    report = _succeeded()
    again = StudyReport.model_validate_json(write_report(report, tmp_path).read_text())
    assert again == report


def test_failure_report_has_errors_and_no_volumes(tmp_path: Path) -> None:
    data = json.loads(write_report(_failed(), tmp_path).read_text())
    assert data["status"] == "failed"
    assert data["errors"] == ["no FLAIR series in the study"]
    assert data["volumes_ml"] is None
    with pytest.raises(ValidationError, match="must not carry volumes"):
        _minimal(ReportStatus.FAILED, errors=["x"], volumes_ml=TumourVolumes(WT=1, TC=0, ET=0))
    with pytest.raises(ValidationError, match="must say why"):
        _minimal(ReportStatus.FAILED)


def test_given_total_time_is_kept_not_replaced_by_the_sum() -> None:
    report = _minimal(ReportStatus.SUCCEEDED, timings_s={"segmentation": 3.0, "total": 4.5})
    assert report.timings_s["total"] == 4.5


def test_volumes_that_do_not_nest_are_refused() -> None:
    with pytest.raises(ValidationError, match="must nest"):
        TumourVolumes(WT=1.0, TC=2.0, ET=0.5)


def test_volumes_from_label_map_use_the_voxel_size() -> None:
    labels = np.zeros((4, 10, 10), dtype=np.uint8)
    labels[0, :5, :] = BratsLabel.OEDEMA  # 50 voxels
    labels[1, :2, :] = BratsLabel.NECROTIC_CORE  # 20
    labels[2, :3, :] = BratsLabel.ENHANCING  # 30
    geometry = Geometry(spacing=(1.0, 2.0, 5.0), origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size=(10, 10, 4))
    volumes = TumourVolumes.from_label_map(Volume(labels, geometry))  # 10 mm3 per voxel
    assert pytest.approx((1.0, 0.5, 0.3)) == (volumes.WT, volumes.TC, volumes.ET)
    assert (volumes.oedema, volumes.necrotic_core) == pytest.approx((0.5, 0.2))


def test_summary_mentions_series_volumes_warnings_and_disclaimer(tmp_path: Path) -> None:
    text = render_summary(_succeeded())
    # The study by its key: a summary is copied into tickets and mails; report.json keeps the UID.
    assert f"Study:     key {study_key(STUDY_UID)}" in text and STUDY_UID not in text
    assert 'T1CE: series 5 "AX T1 POST GD" (97%)' in text
    assert "LOCALIZER" in text  # unused series are listed too
    for value in ("42.3", "12.0", "8.1", "30.3", "3.9"):
        assert value in text
    assert "1234.6 mL" in text
    assert "FLAIR slice thickness 5 mm" in text
    assert DISCLAIMER in text
    assert write_summary(_succeeded(), tmp_path).read_text() == text


def test_summary_of_a_study_without_tumour_says_so() -> None:
    report = _minimal(ReportStatus.SUCCEEDED, volumes_ml=TumourVolumes(WT=0.0, TC=0.0, ET=0.0))
    assert "No tumour detected." in render_summary(report)


def test_summary_of_a_failed_study_gives_the_reason_and_no_volumes() -> None:
    text = render_summary(_failed())
    assert "no FLAIR series in the study" in text
    assert "Tumour volumes" not in text
    assert DISCLAIMER in text
