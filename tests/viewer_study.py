"""A small synthetic patient for the viewer's tests: a follow-up FLAIR with a bright marker on the patient's LEFT
and the new-lesion SEG the change pipeline writes on it (results/longitudinal_results.py), and a baseline
FLAIR of the same patient without it. Small (48 x 40 x 12 voxels) so conversion and drawing take a moment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from neuroflow.core.labels import ChangeLabel
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import PatientInfo, write_study
from neuroflow.results.longitudinal_results import ms_lesion_seg

COLUMNS, ROWS, SLICES = 48, 40, 12
SPACING_MM = 3.0
# Axial, identity direction: i runs to the patient's left (+x in LPS), j to posterior, k to superior.
GEOMETRY = Geometry(spacing=(SPACING_MM, SPACING_MM, SPACING_MM), origin=(-72.0, -60.0, -18.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size=(COLUMNS, ROWS, SLICES))
# The marker: columns 34-41 (x from +30 to +51 mm: the patient's left), rows 16-23, slices 5-7.
MARKER = (slice(5, 8), slice(16, 24), slice(34, 42))  # (k, j, i)
PATIENT = PatientInfo(patient_id="NF-VIEWER-0001", name="TEST^VIEWER")


@dataclass(frozen=True)
class ViewerStudy:
    followup_uid: str
    baseline_uid: str
    files: list[Path]  # every DICOM file: both studies' FLAIRs and the SEG


def flair(marker: bool) -> Volume:
    """A head-like ellipse of grey, with (``marker``) a bright block on the patient's left."""
    _k, j, i = np.mgrid[0:SLICES, 0:ROWS, 0:COLUMNS]
    inside = ((i - COLUMNS / 2) / (COLUMNS * 0.45)) ** 2 + ((j - ROWS / 2) / (ROWS * 0.45)) ** 2 <= 1.0
    array = np.where(inside, 300.0, 0.0).astype(np.float32)
    if marker:
        array[MARKER] = 900.0
    return Volume(array, GEOMETRY)


def marker_labels() -> Volume:
    labels = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    labels[MARKER] = int(ChangeLabel.NEW_LESION)
    return Volume(labels, GEOMETRY)


def write_viewer_study(folder: Path) -> ViewerStudy:
    """Both studies and the SEG as DICOM files under ``folder``."""
    baseline = write_study({SeriesRole.FLAIR: flair(marker=False)}, folder / "baseline", patient=PATIENT,
                           seed="viewer-baseline", study_date="20250102")
    followup = write_study({SeriesRole.FLAIR: flair(marker=True)}, folder / "followup", patient=PATIENT,
                           seed="viewer-followup", study_date="20260102")
    sources: list[Dataset] = [pydicom.dcmread(p) for p in followup.series[SeriesRole.FLAIR].paths]
    seg = ms_lesion_seg(marker_labels(), sources, input_hash="viewer-test")
    assert seg is not None
    seg_path = folder / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    files = [*baseline.series[SeriesRole.FLAIR].paths, *followup.series[SeriesRole.FLAIR].paths, seg_path]
    return ViewerStudy(followup.study_instance_uid, baseline.study_instance_uid, files)
