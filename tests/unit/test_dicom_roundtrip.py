"""Volumes written as DICOM series by the dev writer and converted back keep their voxels and their
geometry exactly, whatever the file names, file order, slice handedness or obliquity; the written
files are valid DICOM (dciodvfy) and say in their tags what the geometry is."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from neuroflow.core.dicom_io import FolderDicomSource, study_key
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import (
    SeriesInfo,
    StudyInfo,
    load_volume,
    reslice_oblique_thick,
    write_series,
    write_study,
)
from neuroflow.devtools.scanner_presets import PRESETS, Vendor

DATA = Path(__file__).resolve().parents[1] / "data"
GLIOMA_T1C = DATA / "glioma-tcga-du-7294" / "t1c_bet.nii.gz"
THICK_SLAB = DATA / "lesion-pyradiomics-brain1" / "image.nrrd"
GEOMETRY_TOL_MM = 1e-4


@pytest.fixture(scope="module")
def glioma_t1c() -> Volume:
    return load_volume(GLIOMA_T1C)


@pytest.fixture(scope="module")
def glioma_crop(glioma_t1c: Volume) -> Volume:
    """A 96 x 80 x 40 block through the tumour region: enough anatomy, a fraction of the cost."""
    return _crop(glioma_t1c, i=(70, 166), j=(80, 160), k=(50, 90))


def _crop(volume: Volume, *, i: tuple[int, int], j: tuple[int, int], k: tuple[int, int]) -> Volume:
    # SimpleITK slicing moves the origin to the first kept voxel, so the crop keeps its patient position.
    return Volume.from_sitk(volume.to_sitk()[i[0] : i[1], j[0] : j[1], k[0] : k[1]], volume.meta)


def _read_back(folder: Path) -> tuple[Volume, list[pydicom.Dataset], str]:
    """The one series under ``folder`` as the pipeline reads it: folder source, then the converter."""
    studies, skipped = FolderDicomSource(folder).index()
    assert skipped == []
    assert len(studies) == 1
    (study,) = studies.values()
    assert len(study.series) == 1
    (series,) = study.series.values()
    datasets = FolderDicomSource(folder).read_instances(series)
    key = study_key(study.study_instance_uid)
    return series_to_volume(datasets, study_key=key), datasets, key


def _assert_same_geometry(actual: Geometry, expected: Geometry) -> None:
    assert actual.size == expected.size
    np.testing.assert_allclose(actual.spacing, expected.spacing, atol=GEOMETRY_TOL_MM)
    np.testing.assert_allclose(actual.origin, expected.origin, atol=GEOMETRY_TOL_MM)
    np.testing.assert_allclose(actual.direction, expected.direction, atol=1e-6)


def _write_one(
    volume: Volume, folder: Path, role: SeriesRole = SeriesRole.T1CE, **kwargs: object
) -> list[Path]:
    written = write_study({role: volume}, folder, **kwargs)  # type: ignore[arg-type]
    return written.series[role].paths


def test_real_glioma_volume_round_trips_with_identical_voxels_and_geometry(
    glioma_t1c: Volume, tmp_path: Path
) -> None:
    _write_one(glioma_t1c, tmp_path)
    volume, _, _ = _read_back(tmp_path)
    _assert_same_geometry(volume.geometry, glioma_t1c.geometry)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, glioma_t1c.array.astype(np.float32))
    assert volume.meta["series_description"] == "t1_mprage_sag_p2_iso_Gd"
    assert volume.meta["modality"] == "MR"


def test_thick_slice_left_handed_clinical_volume_round_trips_exactly(tmp_path: Path) -> None:
    slab = load_volume(THICK_SLAB)
    # 0.78 x 0.78 x 6.5 mm stored with rows running anterior: a left-handed grid, kept as it is.
    assert np.linalg.det(slab.geometry.direction_matrix()) < 0
    _write_one(slab, tmp_path, role=SeriesRole.FLAIR, vendor=Vendor.PHILIPS)
    volume, datasets, _ = _read_back(tmp_path)
    _assert_same_geometry(volume.geometry, slab.geometry)
    np.testing.assert_array_equal(volume.array, slab.array.astype(np.float32))
    assert float(datasets[0].SpacingBetweenSlices) == pytest.approx(6.5)


def test_oblique_thick_slice_variant_round_trips_exactly(glioma_crop: Volume, tmp_path: Path) -> None:
    oblique = reslice_oblique_thick(glioma_crop, tilt_deg=15.0, slice_thickness_mm=5.0)
    tilt = math.degrees(math.acos(oblique.geometry.direction_matrix()[2, 2]))
    assert tilt == pytest.approx(15.0)
    assert oblique.geometry.spacing[2] == 5.0
    _write_one(oblique, tmp_path, role=SeriesRole.FLAIR, vendor=Vendor.SIEMENS)
    volume, datasets, _ = _read_back(tmp_path)
    _assert_same_geometry(volume.geometry, oblique.geometry)
    np.testing.assert_array_equal(volume.array, oblique.array.astype(np.float32))
    assert datasets[0].MRAcquisitionType == "2D"
    assert float(datasets[0].SliceThickness) == 5.0


def test_oblique_thick_variant_keeps_anatomy_where_it_was(glioma_crop: Volume) -> None:
    # A bright 5 mm cube at a known patient position must sit at that position in the tilted grid too
    # (to within half a slab), on the same side of the patient.
    marked = np.array(glioma_crop.array, copy=True)
    target_lps = np.array([110.0, -120.0, 70.0])
    to_index = np.linalg.inv(glioma_crop.geometry.index_to_patient())
    i, j, k = np.round(to_index @ (*target_lps, 1.0))[:3].astype(int)
    marked[k - 2 : k + 3, j - 2 : j + 3, i - 2 : i + 3] = 30000
    oblique = reslice_oblique_thick(glioma_crop.with_array(marked), tilt_deg=15.0, slice_thickness_mm=5.0)
    k2, j2, i2 = np.unravel_index(int(np.argmax(oblique.array)), oblique.array.shape)
    found_lps = (oblique.geometry.index_to_patient() @ np.array([i2, j2, k2, 1]))[:3]
    assert np.linalg.norm(found_lps - target_lps) < 3.0
    assert oblique.array.max() > 15000  # the slab average keeps a cube as thick as the slab bright


@pytest.mark.parametrize(
    "direction",
    [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),  # LPS-aligned axial
        (1, 0, 0, 0, -1, 0, 0, 0, 1),  # rows run anterior (left-handed, as NRRD from RAS tools)
        (-1, 0, 0, 0, 1, 0, 0, 0, 1),  # columns run to the patient's right (left-handed)
        (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # RAS-like axial
        (1, 0, 0, 0, 0, -1, 0, 1, 0),  # coronal
    ],
    ids=["lps", "anterior-rows", "rightward-columns", "ras-like", "coronal"],
)
def test_marker_on_patient_left_comes_back_on_patient_left(
    glioma_crop: Volume, direction: tuple[int, ...], tmp_path: Path
) -> None:
    base = _crop(glioma_crop, i=(20, 60), j=(20, 52), k=(10, 22))
    spacing, size = base.geometry.spacing, base.geometry.size
    # Centre the block near the patient-space origin so it has voxels on both sides of the midline.
    half_extent = np.asarray(direction, dtype=float).reshape(3, 3) @ (np.multiply(spacing, size) / 2)
    origin = tuple(float(v) for v in (0.3, -20.7, 10.2) - half_extent)
    geometry = Geometry(spacing, origin, tuple(map(float, direction)), size)  # type: ignore[arg-type]
    array = np.array(base.array, copy=True)
    volume = Volume(array, geometry)
    # The patient's left is +x in LPS; put one bright voxel there and remember where it is.
    marker_index = next(
        (i, j, k)
        for k in range(4, 8)
        for j in range(5, 25)
        for i in range(5, 35)
        if (geometry.index_to_patient() @ (i, j, k, 1))[0] > 5.0
    )
    marker_lps = (geometry.index_to_patient() @ (*marker_index, 1))[:3]
    array[marker_index[2], marker_index[1], marker_index[0]] = 30000
    _write_one(volume, tmp_path, role=SeriesRole.T2)
    back, _, _ = _read_back(tmp_path)
    k, j, i = np.unravel_index(int(np.argmax(back.array)), back.array.shape)
    found_lps = (back.geometry.index_to_patient() @ np.array([i, j, k, 1]))[:3]
    np.testing.assert_allclose(found_lps, marker_lps, atol=GEOMETRY_TOL_MM)
    assert found_lps[0] > 5.0  # still the patient's left


def test_file_names_and_file_order_do_not_decide_slice_order(glioma_crop: Volume, tmp_path: Path) -> None:
    paths = _write_one(glioma_crop, tmp_path / "written")
    assert sorted(paths) != paths  # names are hashes, not slice numbers
    shuffled = tmp_path / "shuffled"
    order = list(range(len(paths)))
    random.Random(7).shuffle(order)
    for n, index in enumerate(order):
        target = shuffled / f"d{n % 3}" / f"{n:05d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[index], target)
    volume, datasets, key = _read_back(shuffled)
    _assert_same_geometry(volume.geometry, glioma_crop.geometry)
    np.testing.assert_array_equal(volume.array, glioma_crop.array.astype(np.float32))
    random.Random(8).shuffle(datasets)
    again = series_to_volume(datasets, study_key=key)
    np.testing.assert_array_equal(again.array, volume.array)


def test_instance_numbers_do_not_order_slices_they_only_pick_the_first_end(
    glioma_crop: Volume, tmp_path: Path
) -> None:
    _write_one(glioma_crop, tmp_path)
    reference, datasets, key = _read_back(tmp_path)
    by_number = {int(ds.InstanceNumber): ds for ds in datasets}
    # Two swapped numbers in the middle (a scanner's interleaved numbering): same volume.
    by_number[10].InstanceNumber, by_number[20].InstanceNumber = 20, 10
    swapped = series_to_volume(datasets, study_key=key)
    np.testing.assert_array_equal(swapped.array, reference.array)
    _assert_same_geometry(swapped.geometry, reference.geometry)
    # Numbered from the other end (acquired head to feet): the same patient-space volume, slice 0 at
    # the other end, the slice axis reversed.
    n = len(datasets)
    for ds in datasets:
        ds.InstanceNumber = n + 1 - int(ds.InstanceNumber)
    reversed_volume = series_to_volume(datasets, study_key=key)
    np.testing.assert_array_equal(reversed_volume.array, reference.array[::-1])
    expected_origin = reference.geometry.index_to_patient() @ (0, 0, n - 1, 1)
    np.testing.assert_allclose(reversed_volume.geometry.origin, expected_origin[:3], atol=GEOMETRY_TOL_MM)
    np.testing.assert_allclose(
        reversed_volume.geometry.direction_matrix()[:, 2], -reference.geometry.direction_matrix()[:, 2]
    )


def test_float_volume_is_rescaled_into_int16_within_one_quantisation_step(
    glioma_crop: Volume, tmp_path: Path
) -> None:
    values = glioma_crop.array.astype(np.float32)
    normalised = glioma_crop.with_array((values - values.mean()) / values.std())
    _write_one(normalised, tmp_path, role=SeriesRole.ADC)
    volume, datasets, _ = _read_back(tmp_path)
    slope = float(datasets[0].RescaleSlope)
    assert 0 < slope < 1e-3
    error = np.asarray(volume.array, dtype=np.float64) - np.asarray(normalised.array, dtype=np.float64)
    assert np.max(np.abs(error)) <= slope * 0.5 + 1e-5


def test_integer_volume_is_stored_without_rescale(glioma_crop: Volume, tmp_path: Path) -> None:
    paths = _write_one(glioma_crop, tmp_path)
    ds = pydicom.dcmread(paths[0])
    assert "RescaleSlope" not in ds
    assert ds.PixelRepresentation == 1
    np.testing.assert_array_equal(ds.pixel_array, glioma_crop.array[0])


def test_written_tags_state_the_geometry_for_an_independent_reader(tmp_path: Path) -> None:
    # Anisotropic in-plane spacing and a non-square slice expose any swap of rows and columns; the
    # files are read back with GDCM (through SimpleITK), which shares no code with our converter.
    rng = np.random.default_rng(3)
    array = rng.integers(0, 1000, size=(6, 20, 30), dtype=np.int16)
    tilt = math.radians(20.0)
    direction = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt), 0.0, math.sin(tilt), math.cos(tilt))
    volume = Volume(array, Geometry((0.5, 0.8, 3.0), (-12.5, 40.25, -7.0), direction, (30, 20, 6)))
    paths = _write_one(volume, tmp_path, role=SeriesRole.T2, vendor=Vendor.GE)
    first = pydicom.dcmread(paths[0])
    assert [float(v) for v in first.PixelSpacing] == [0.8, 0.5]  # [between rows (j), between columns (i)]
    # ImageOrientationPatient = the i and j columns of the direction matrix (stored row-major).
    orientation = [float(v) for v in first.ImageOrientationPatient]
    np.testing.assert_allclose(orientation, [*direction[0::3], *direction[1::3]], atol=1e-12)
    assert (first.Rows, first.Columns) == (20, 30)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(paths[0].parent)))
    image = reader.Execute()
    np.testing.assert_allclose(image.GetSpacing(), volume.geometry.spacing, atol=GEOMETRY_TOL_MM)
    np.testing.assert_allclose(image.GetOrigin(), volume.geometry.origin, atol=GEOMETRY_TOL_MM)
    np.testing.assert_allclose(image.GetDirection(), direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


def test_rerunning_the_writer_gives_the_same_uids_and_another_seed_does_not(
    glioma_crop: Volume, tmp_path: Path
) -> None:
    small = _crop(glioma_crop, i=(0, 16), j=(0, 16), k=(0, 4))

    def uids(folder: Path, seed: str) -> set[tuple[str, str, str]]:
        paths = _write_one(small, folder, seed=seed)
        return {
            (str(d.StudyInstanceUID), str(d.SeriesInstanceUID), str(d.SOPInstanceUID))
            for d in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)
        }

    first, again = uids(tmp_path / "a", "case-1"), uids(tmp_path / "b", "case-1")
    other = uids(tmp_path / "c", "case-2")
    assert first == again
    assert len(first) == 4
    assert not {u for t in first for u in t} & {u for t in other for u in t}


def test_every_vendor_names_the_glioma_roles_and_the_other_modalities() -> None:
    for vendor in Vendor:
        presets = PRESETS[vendor]
        for role in (*GLIOMA_INPUT_ROLES, SeriesRole.ADC, SeriesRole.DWI, SeriesRole.SWI, SeriesRole.CT):
            assert presets[role].role == role
        # Only the post-contrast series says a contrast agent was given; FLAIR is an inversion recovery.
        assert presets[SeriesRole.T1CE].contrast_agent
        assert all(p.contrast_agent is None for r, p in presets.items() if r != SeriesRole.T1CE)
        assert "IR" in presets[SeriesRole.FLAIR].scanning_sequence
        assert presets[SeriesRole.FLAIR].inversion_time_ms is not None
        assert presets[SeriesRole.CT].modality == "CT"
        descriptions = [p.series_description for p in presets.values()]
        assert len(set(descriptions)) == len(descriptions)


@pytest.mark.parametrize(
    ("vendor", "role", "as_float"),
    [
        (Vendor.SIEMENS, SeriesRole.T1CE, False),
        (Vendor.GE, SeriesRole.FLAIR, True),
        (Vendor.PHILIPS, SeriesRole.DWI, False),
        (Vendor.SIEMENS, SeriesRole.CT, False),
    ],
)
def test_written_file_passes_dciodvfy_without_errors(
    glioma_crop: Volume, vendor: Vendor, role: SeriesRole, as_float: bool, tmp_path: Path
) -> None:
    volume = _crop(glioma_crop, i=(0, 32), j=(0, 32), k=(0, 3))
    if as_float:
        volume = volume.with_array(volume.array.astype(np.float32) / 7.0)
    paths = _write_one(volume, tmp_path, role=role, vendor=vendor)
    result = subprocess.run(["/usr/bin/dciodvfy", str(paths[1])], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    expected_iod = "CTImage" if role == SeriesRole.CT else "MRImage"
    assert expected_iod in report
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report


def test_write_series_takes_explicit_study_and_series_information(
    glioma_crop: Volume, tmp_path: Path
) -> None:
    study = StudyInfo.create("explicit", vendor=Vendor.PHILIPS, study_date="20230102", study_time="101500")
    series = SeriesInfo.create(
        study,
        PRESETS[Vendor.PHILIPS][SeriesRole.T2],
        series_number=401,
        minutes_after_study_start=12,
        slice_thickness_mm=0.8,
    )
    small = _crop(glioma_crop, i=(0, 16), j=(0, 16), k=(0, 3))
    paths = write_series(small, tmp_path, study=study, series=series)
    ds = pydicom.dcmread(paths[2], stop_before_pixels=True)
    assert ds.Manufacturer == "Philips Medical Systems"
    assert ds.SeriesDescription == "T2W_TSE"
    assert ds.SeriesNumber == 401
    assert ds.InstanceNumber == 3
    assert ds.SeriesTime == "102700"
    assert ds.StudyInstanceUID == study.study_instance_uid
    assert ds.FrameOfReferenceUID == study.frame_of_reference_uid
    assert float(ds.SliceThickness) == 0.8
    assert float(ds.SpacingBetweenSlices) == 1.0
    assert ds.PatientAge == "057Y"


def test_load_volume_gives_lps_geometry_matching_the_nifti_affine() -> None:
    volume = load_volume(GLIOMA_T1C)
    ras_affine = nib.load(GLIOMA_T1C).affine  # type: ignore[attr-defined]
    # NIfTI stores RAS; LPS negates the first two patient axes.
    lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras_affine
    np.testing.assert_allclose(volume.geometry.index_to_patient(), lps_affine, atol=1e-5)
    assert volume.geometry.origin == (0.0, -239.0, 0.0)
    assert volume.array.shape == (155, 240, 240)
