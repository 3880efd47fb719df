"""The result objects of an embedded run as files in its output folder, the same objects the distributed
runtime stores in Orthanc: a name ending in .dcm is one object in one file, any other name a series, one
file per instance in a folder of that name."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset


def write_objects(datasets: Mapping[str, Sequence[Dataset]], folder: Path) -> list[Path]:
    """Writes every object (atomically, file by file) and returns the paths written, one per name."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, objects in datasets.items():
        if name.endswith(".dcm"):
            (dataset,) = objects
            written.append(save_atomically(dataset, folder / name))
            continue
        series_folder = folder / name
        series_folder.mkdir(parents=True, exist_ok=True)
        for dataset in objects:
            save_atomically(dataset, series_folder / f"IM{int(dataset.InstanceNumber):04d}.dcm")
        written.append(series_folder)
    return written


def save_atomically(dataset: Dataset, path: Path) -> Path:
    tmp = path.with_name(path.name + ".partial")
    dataset.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path


def remove_results(folder: Path, names: Iterable[str]) -> None:
    """An earlier run's objects must not pass for this run's: each name (file or series folder) goes."""
    for name in names:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def read_if_present(path: Path) -> Dataset | None:
    """The object at ``path``, or None when there is none or it cannot be read (a partial earlier write)."""
    try:
        return pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError):
        return None
