"""De-identify a folder of DICOM files into another (``neuroflow deidentify IN_DIR --out OUT_DIR``): what a
site does before images leave it (a research export, a training set from corrected results)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from neuroflow.deid.deidentify import DeidentificationRefused, Deidentifier

log = logging.getLogger(__name__)


@dataclass
class ExportSummary:
    """What one export wrote, and each input file it did not, with why."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def deidentify_folder(in_dir: Path, out_dir: Path, deidentifier: Deidentifier) -> ExportSummary:
    """Every DICOM file under ``in_dir``, de-identified, as ``out_dir/<patient pseudonym>/<study UID>/<series
    UID>/<SOP UID>.dcm`` (the de-identified UIDs). Files that are not DICOM, or that the profile refuses,
    are skipped with the reason; nothing in ``out_dir`` names an original identifier."""
    if out_dir.resolve().is_relative_to(in_dir.resolve()):
        raise ValueError(f"the output folder {out_dir} lies inside the input folder {in_dir}")
    summary = ExportSummary()
    for path in sorted(p for p in in_dir.rglob("*") if p.is_file()):
        try:
            dataset = pydicom.dcmread(path)
        except (InvalidDicomError, OSError) as exc:
            summary.skipped.append((path, f"not a readable DICOM file: {exc}"))
            continue
        try:
            clean = deidentifier.deidentify(dataset)
        except DeidentificationRefused as exc:
            summary.skipped.append((path, str(exc)))
            continue
        target = out_dir / str(clean.PatientID) / str(clean.get("StudyInstanceUID", "no-study")) / str(
            clean.get("SeriesInstanceUID", "no-series")) / f"{clean.get('SOPInstanceUID', path.name)}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        clean.save_as(partial, enforce_file_format=True)
        os.replace(partial, target)
        summary.written.append(target)
    return summary
