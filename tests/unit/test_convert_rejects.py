"""A series whose slices do not form one regular, readable stack is rejected with a reason that names
the series and says what is wrong; harmless variation (position jitter, multi-frame storage) is not."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedMRImage

from neuroflow.core.dicom_io import FolderDicomSource, SeriesInstances, study_key
from neuroflow.core.errors import SeriesRejected
from neuroflow.core.identity import uid_key
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import load_volume, write_study

GLIOMA_T1C = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294" / "t1c_bet.nii.gz"
SLICES = 20


@pytest.fixture(scope="module")
def small_volume() -> Volume:
    """20 slices of 64 x 64 mm (1 mm) through the real glioma T1 post-contrast."""
    full = load_volume(GLIOMA_T1C)
    return Volume.from_sitk(full.to_sitk()[90:154, 100:164, 60 : 60 + SLICES])


@pytest.fixture
def written(small_volume: Volume, tmp_path: Path) -> tuple[list[Path], str, str]:
    """(paths in slice order, study key, series UID) of the volume written as a series."""
    study = write_study({SeriesRole.T1CE: small_volume}, tmp_path)
    series = study.series[SeriesRole.T1CE]
    return series.paths, study_key(study.study_instance_uid), series.series_instance_uid


def _series_in(folder: Path) -> SeriesInstances:
    studies, _ = FolderDicomSource(folder).index()
    (study,) = studies.values()
    (series,) = study.series.values()
    return series


def _datasets(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def _rejection(datasets: list[pydicom.Dataset], key: str) -> SeriesRejected:
    with pytest.raises(SeriesRejected) as caught:
        series_to_volume(datasets, study_key=key)
    return caught.value


def test_missing_middle_slice_is_rejected_naming_which_slice(
    written: tuple[list[Path], str, str], tmp_path: Path
) -> None:
    paths, key, series_uid = written
    paths[7].unlink()  # the 8th slice
    source = FolderDicomSource(tmp_path)
    datasets = source.read_instances(_series_in(tmp_path))
    error = _rejection(datasets, key)
    assert "slice 8 of 20 missing: gap of 2.0 mm where spacing is 1.0 mm" in error.reason
    assert error.series_uid == series_uid
    assert error.study_key == key
    # The text names the series by its key, never its UID (error texts end in logs and dead letters).
    assert uid_key(series_uid) in str(error) and key in str(error) and series_uid not in str(error)


def test_several_missing_slices_are_all_named(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    datasets = _datasets([p for n, p in enumerate(paths) if n not in (3, 4, 12)])
    assert "slices 4, 5, 13 of 20 missing" in _rejection(datasets, key).reason


def test_truncated_pixel_data_is_rejected_naming_the_file(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    victim = paths[5]
    pixel_bytes = 64 * 64 * 2
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - pixel_bytes // 2])  # cut the pixel data in half
    datasets = _datasets(paths)  # the header still reads; the pixels do not
    error = _rejection(datasets, key)
    assert "pixel data truncated or unreadable" in error.reason
    assert str(victim) in error.reason


def test_unreadable_file_is_rejected_naming_the_file(written: tuple[list[Path], str, str]) -> None:
    paths, _, _ = written
    source = FolderDicomSource(paths[0].parent)
    studies, _ = source.index()
    series = next(iter(next(iter(studies.values())).series.values()))
    paths[2].write_bytes(b"not dicom at all")  # damaged after it was indexed
    with pytest.raises(SeriesRejected, match="unreadable DICOM file") as caught:
        source.read_instances(series)
    assert str(paths[2]) in caught.value.reason


def test_instances_disagreeing_on_orientation_are_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    datasets = _datasets(paths)
    tilt = np.radians(5.0)
    datasets[11].ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt))]
    assert "instances disagree on ImageOrientationPatient" in _rejection(datasets, key).reason


def test_slices_of_different_size_are_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    datasets = _datasets(paths)
    datasets[4].Rows = 32
    assert "rows/columns differ" in _rejection(datasets, key).reason


def test_slices_with_different_pixel_spacing_are_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    datasets = _datasets(paths)
    datasets[4].PixelSpacing = [0.9, 0.9]
    assert "disagree on PixelSpacing" in _rejection(datasets, key).reason


def test_duplicate_slice_positions_are_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    datasets = _datasets(paths)
    second_echo = copy.deepcopy(datasets[9])  # e.g. a second echo stored in the same series
    second_echo.SOPInstanceUID = hd.UID()
    second_echo.InstanceNumber = 99
    error = _rejection([*datasets, second_echo], key)
    assert "duplicate slice positions" in error.reason


def test_fewer_than_three_slices_are_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    assert "fewer than 3 slices (2)" in _rejection(_datasets(paths[:2]), key).reason


def test_irregular_gap_that_is_not_a_missing_slice_is_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    datasets = _datasets(paths)
    x, y, z = (float(v) for v in datasets[6].ImagePositionPatient)
    datasets[6].ImagePositionPatient = [x, y, z + 0.4]
    assert "irregular slice spacing" in _rejection(datasets, key).reason


def test_slices_drifting_in_plane_are_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    datasets = _datasets(paths)
    for n, ds in enumerate(datasets):  # a gantry-tilted CT stack: each slice shifted along y
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.3 * n, z]
    assert "drift in-plane" in _rejection(datasets, key).reason


def test_instances_of_two_series_are_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    datasets = _datasets(paths)
    datasets[0].SeriesInstanceUID = hd.UID()
    assert "2 different series" in _rejection(datasets, key).reason


def test_slice_without_position_is_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    datasets = _datasets(paths)
    del datasets[3].ImagePositionPatient
    error = _rejection(datasets, key)
    assert "no valid ImagePositionPatient" in error.reason
    assert str(paths[3]) in error.reason


def test_position_jitter_below_tolerance_is_accepted(
    written: tuple[list[Path], str, str], small_volume: Volume
) -> None:
    paths, key, _ = written
    datasets = _datasets(paths)
    rng = np.random.default_rng(5)
    for ds in datasets:  # scanners' decimal strings wobble by micrometres
        ds.ImagePositionPatient = [
            f"{float(v) + rng.uniform(-0.004, 0.004):.4f}" for v in ds.ImagePositionPatient
        ]
    volume = series_to_volume(datasets, study_key=key)
    np.testing.assert_array_equal(volume.array, small_volume.array.astype(np.float32))
    assert volume.geometry.spacing[2] == pytest.approx(1.0, abs=1e-3)


def test_multi_frame_enhanced_mr_gives_the_same_volume_as_single_frames(
    written: tuple[list[Path], str, str], small_volume: Volume, tmp_path: Path
) -> None:
    paths, key, _ = written
    enhanced = LegacyConvertedEnhancedMRImage(
        _datasets(paths),
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    volume = series_to_volume([pydicom.dcmread(tmp_path / "enhanced.dcm")], study_key=key)
    # The frame order is the converter's (highdicom's) choice, and decides which end is slice 0:
    # compare in patient space, with the slice axis turned to match where it runs the other way.
    if volume.geometry.direction_matrix()[:, 2] @ small_volume.geometry.direction_matrix()[:, 2] < 0:
        volume = _slice_axis_reversed(volume)
    assert volume.geometry.is_close(small_volume.geometry, tol_mm=1e-4)
    np.testing.assert_array_equal(volume.array, small_volume.array.astype(np.float32))


def _slice_axis_reversed(volume: Volume) -> Volume:
    geometry = volume.geometry
    direction = geometry.direction_matrix() @ np.diag([1.0, 1.0, -1.0])
    origin = (geometry.index_to_patient() @ (0, 0, geometry.size[2] - 1, 1))[:3]
    flipped = Geometry(
        geometry.spacing,
        (float(origin[0]), float(origin[1]), float(origin[2])),
        tuple(float(v) for v in direction.ravel()),
        geometry.size,
    )
    return Volume(volume.array[::-1], flipped, volume.meta)


def test_multi_frame_without_per_frame_positions_is_rejected(written: tuple[list[Path], str, str]) -> None:
    paths, key, _ = written
    ds = pydicom.dcmread(paths[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    others = _datasets(paths[1:3])
    assert "no per-frame functional groups" in _rejection([ds, *others], key).reason
