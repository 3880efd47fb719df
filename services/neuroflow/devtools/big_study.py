"""Large CT studies for the indexing bench and tests: a head-shaped phantom in Hounsfield units, written
by our writer as several axial series of one study (one file per slice), as a CT scanner exports a
thin-slice head with reformats. ``write_ct_study(out, [400] * 5)`` is the 2,000-instance study."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.devtools.dicom_writer import SeriesInfo, StudyInfo, write_series
from neuroflow.devtools.scanner_presets import PRESETS, Vendor


@dataclass(frozen=True)
class CtSeries:
    series_instance_uid: str
    volume: Volume
    paths: list[Path]


def ct_phantom(slices: int, matrix: int, *, slice_mm: float = 0.625, seed: int = 0) -> Volume:
    """An ellipsoidal head (skull ~1000 HU, brain ~35 HU, air -1000 HU) with noise, ``matrix`` square."""
    rng = np.random.default_rng(seed)
    j, i = np.ogrid[-1:1:matrix * 1j, -1:1:matrix * 1j]
    in_plane = (i / 0.8) ** 2 + (j / 0.9) ** 2
    hu = np.empty((slices, matrix, matrix), dtype=np.int16)
    for n, k in enumerate(np.linspace(-1, 1, slices)):  # slice by slice: a 512 x 512 x 400 study stays small
        radius2 = in_plane + (k / 1.2) ** 2
        plane = np.where(radius2 < 0.81, 35, np.where(radius2 < 1.0, 1000, -1000))
        hu[n] = plane + np.round(rng.normal(0.0, 5.0, plane.shape)).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((250.0 / matrix, 250.0 / matrix, slice_mm))
    image.SetOrigin((-125.0, -125.0, -slices * slice_mm / 2))
    return Volume.from_sitk(image)


def write_ct_study(out: Path, series_slices: Sequence[int], *, matrix: int = 512,
                   seed: str = "big-ct") -> list[CtSeries]:
    """One CT study with one axial series per entry of ``series_slices`` (that many slices each)."""
    return list(iter_ct_study(out, series_slices, matrix=matrix, seed=seed))


def iter_ct_study(out: Path, series_slices: Sequence[int], *, matrix: int = 512,
                  seed: str = "big-ct") -> Iterator[CtSeries]:
    """As write_ct_study, one series at a time (a caller that drops each keeps one volume in memory)."""
    study = StudyInfo.create(seed, vendor=Vendor.GE, description="CT HEAD WO CONTRAST")
    preset = PRESETS[Vendor.GE][SeriesRole.CT]
    for n, slices in enumerate(series_slices):
        series = SeriesInfo.create(study, preset, series_number=2 + n, minutes_after_study_start=float(n))
        volume = ct_phantom(slices, matrix, seed=n)
        paths = write_series(volume, out / f"SE{n + 2:04d}", study=study, series=series)
        yield CtSeries(series.series_instance_uid, volume, paths)
