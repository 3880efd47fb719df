"""The converter's fast path (geometry parsed from the tags' bytes, each instance decoded once into a
preallocated float32 volume) gives exactly what the straightforward reading gives: each slice decoded by
pydicom, float64(stored) * its own RescaleSlope + its own RescaleIntercept, rounded to float32, stacked in
the order of the positions; and the geometry GDCM (SimpleITK) reads from the same files."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from neuroflow.core.dicom_io import FolderDicomSource, study_key
from neuroflow.core.errors import SeriesRejected
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.devtools.scanner_presets import Vendor

# Per slice (in storage order): CT's usual (1, -1024), identity, fractional slopes (a float path
# that must round as float64-then-float32 does), a whole intercept with a fraction of a slope.
RESCALES = [("1", "-1024"), ("1", "0"), ("0.5", "3.25"), ("0.0025", "-7"), ("1.7", "0"), ("1", "100"), ("2", "-1.5")]


def _read(folder: Path) -> tuple[Volume, list[pydicom.Dataset]]:
    source = FolderDicomSource(folder)
    (study,) = source.index()[0].values()
    (series,) = study.series.values()
    datasets = source.read_instances(series)
    return series_to_volume(datasets, study_key=study_key(study.study_instance_uid)), datasets


@pytest.fixture(scope="module")
def per_slice_rescaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A tilted, anisotropic series whose every slice has its own slope and intercept, files shuffled."""
    rng = np.random.default_rng(11)
    array = rng.integers(-2000, 3000, size=(len(RESCALES), 20, 30), dtype=np.int16)
    tilt = math.radians(15.0)
    direction = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt), 0.0, math.sin(tilt), math.cos(tilt))
    volume = Volume(array, Geometry((0.5, 0.8, 2.5), (-12.5, 40.25, -7.0), direction, (30, 20, len(RESCALES))))
    folder = tmp_path_factory.mktemp("rescaled")
    paths = write_study({SeriesRole.T2: volume}, folder, vendor=Vendor.GE).series[SeriesRole.T2].paths
    for path, (slope, intercept) in zip(paths, RESCALES, strict=True):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(path, enforce_file_format=True)
    names = [f"{n:03d}.dcm" for n in range(len(paths))]
    random.Random(5).shuffle(names)  # file names say nothing of the order
    renamed = [path.rename(path.with_name(name)) for path, name in zip(paths, names, strict=True)]
    return renamed[0].parent, renamed


def test_per_slice_rescaled_series_equals_the_plain_per_slice_reading_bit_for_bit(
    per_slice_rescaled: tuple[Path, list[Path]],
) -> None:
    folder, paths = per_slice_rescaled
    volume, _ = _read(folder)
    reference = [pydicom.dcmread(p) for p in paths]
    normal = np.cross(*np.reshape([float(v) for v in reference[0].ImageOrientationPatient], (2, 3)))
    reference.sort(key=lambda ds: float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal))
    expected = np.stack([
        (ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)
        for ds in reference
    ])
    assert volume.array.dtype == np.float32
    assert volume.array.tobytes() == expected.tobytes()  # bit for bit, -0.0 and all
    slopes = sorted({float(ds.RescaleSlope) for ds in reference})
    assert len(slopes) == 5  # the slices really differ in rescale


def test_geometry_and_values_agree_with_gdcm(per_slice_rescaled: tuple[Path, list[Path]]) -> None:
    folder, _ = per_slice_rescaled
    volume, _ = _read(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetOutputPixelType(sitk.sitkFloat64)
    image = reader.Execute()
    np.testing.assert_allclose(image.GetSpacing(), volume.geometry.spacing, atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), volume.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), volume.geometry.direction, atol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), volume.array, rtol=1e-6, atol=1e-4)


def test_conversion_leaves_no_decoded_pixels_on_the_callers_datasets(
    per_slice_rescaled: tuple[Path, list[Path]],
) -> None:
    """pydicom's ``pixel_array`` keeps the decoded array on the dataset: a converted series would then be
    held twice (stored and decoded) for as long as the caller keeps its instances."""
    _, datasets = _read(per_slice_rescaled[0])
    assert all(getattr(ds, "_pixel_array", None) is None for ds in datasets)


def test_a_position_tag_of_two_values_read_from_the_file_is_still_refused_naming_it(
    per_slice_rescaled: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """The geometry read from the tags' bytes falls back to the checked reading, with its message."""
    _, paths = per_slice_rescaled
    for path in paths:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    victim = tmp_path / paths[2].name
    ds = pydicom.dcmread(victim)
    ds.ImagePositionPatient = ["1.5", "2"]
    ds.save_as(victim, enforce_file_format=True)
    with pytest.raises(SeriesRejected) as refused:
        _read(tmp_path)
    assert "no valid ImagePositionPatient" in refused.value.reason and str(victim) in refused.value.reason
