"""DICOM source and sink. A source lists the studies it holds and hands out a series' instances; a
sink stores result objects. Embedded: a folder. Distributed: Orthanc (DICOMweb / REST)."""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from neuroflow.core.errors import SeriesRejected

log = logging.getLogger(__name__)


@dataclass
class SeriesInstances:
    """The instances of one series as found in a source: headers only until pixels are asked for."""

    study_instance_uid: str
    series_instance_uid: str
    headers: list[Dataset] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # where each instance lives in the source


@dataclass
class StudyIndex:
    study_instance_uid: str
    patient_id: str
    series: dict[str, SeriesInstances] = field(default_factory=dict)


@dataclass
class SkippedFile:
    path: str
    reason: str


class DicomSource(ABC):
    @abstractmethod
    def index(self) -> tuple[dict[str, StudyIndex], list[SkippedFile]]:
        """Every study in the source with its series (headers only), and the files that were skipped."""

    @abstractmethod
    def read_instances(self, series: SeriesInstances) -> list[Dataset]:
        """The series' instances with pixel data, in source order."""


class DicomSink(ABC):
    @abstractmethod
    def store(self, dataset: Dataset) -> str:
        """Store one object; storing the same SOPInstanceUID again replaces it (idempotent)."""

    @abstractmethod
    def stored(self) -> list[str]:
        """SOPInstanceUIDs held by the sink."""


def study_key(study_instance_uid: str) -> str:
    """The pseudonymous key used in logs and metrics: never the UID itself, which can identify."""
    return hashlib.sha256(study_instance_uid.encode()).hexdigest()[:12]


class FolderDicomSource(DicomSource):
    """A folder of DICOM files: any nesting, any names. Files that are not DICOM are skipped with a
    warning, never fatal; a file whose header cannot be read is skipped with the reason."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def index(self) -> tuple[dict[str, StudyIndex], list[SkippedFile]]:
        studies: dict[str, StudyIndex] = {}
        skipped: list[SkippedFile] = []
        for path in sorted(_walk(self._root)):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except InvalidDicomError:
                skipped.append(SkippedFile(path, "not a DICOM file"))
                continue
            except Exception as exc:  # pydicom raises many types on damaged files
                skipped.append(SkippedFile(path, f"unreadable DICOM header: {exc}"))
                continue
            study_uid = str(ds.get("StudyInstanceUID", ""))
            series_uid = str(ds.get("SeriesInstanceUID", ""))
            if not study_uid or not series_uid or "SOPInstanceUID" not in ds:
                skipped.append(SkippedFile(path, "DICOM file without Study/Series/SOP Instance UID"))
                continue
            study = studies.setdefault(study_uid, StudyIndex(study_uid, str(ds.get("PatientID", ""))))
            series = study.series.setdefault(series_uid, SeriesInstances(study_uid, series_uid))
            series.headers.append(ds)
            series.paths.append(path)
        for item in skipped:
            log.warning("skipped %s: %s", item.path, item.reason)
        return studies, skipped

    def read_instances(self, series: SeriesInstances) -> list[Dataset]:
        """Refuses (SeriesRejected naming the file) a file that can no longer be read as DICOM, so
        the error points at the file an imaging team would have to resend."""
        datasets: list[Dataset] = []
        for path in series.paths:
            try:
                datasets.append(pydicom.dcmread(path))
            except Exception as exc:  # pydicom raises many types on damaged files
                raise SeriesRejected(
                    study_key(series.study_instance_uid), f"unreadable DICOM file {path}: {exc}",
                    stage="convert", series_uid=series.series_instance_uid,
                ) from exc
        return datasets


class FolderDicomSink(DicomSink):
    """Writes each object as ``<root>/<SOPInstanceUID>.dcm``; atomic (write then rename), so a reader
    never sees half a file and a redelivered result replaces rather than duplicates."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def store(self, dataset: Dataset) -> str:
        uid = str(dataset.SOPInstanceUID)
        final = self._root / f"{uid}.dcm"
        tmp = final.with_suffix(".dcm.partial")
        dataset.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, final)
        return uid

    def stored(self) -> list[str]:
        return sorted(p.stem for p in self._root.glob("*.dcm"))


def _walk(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(os.path.join(dirpath, f) for f in files)
    return out
