"""The metastases RTSTRUCT and SEG (issue 15): valid per dciodvfy, one ROI / segment "Met n" per lesion, contours
that fill back to the lesion label map and to the SEG's segment on the source grid (volume within 10 %, here
exact), in the right place in patient coordinates (a lesion on the patient's left has x > 0 in LPS), each on
the source slice it references, on an axial and on a double-oblique T1CE series written to DICOM and read
back as the pipeline reads it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.errors import StudyError
from neuroflow.core.model_card import ModelRef
from neuroflow.core.planar_contours import (
    even_odd_area,
    fill_contours,
    mask_contours,
    pixel_edge_contours,
    polygon_area,
)
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import SeriesInfo, StudyInfo, write_series
from neuroflow.devtools.scanner_presets import PRESETS, Vendor
from neuroflow.results.dicom_seg import build_metastases_seg
from neuroflow.results.rtstruct import METASTASES_RTSTRUCT_DESCRIPTION, build_metastases_rtstruct, roi_masks

MODEL = ModelRef(name="metastases-unet", version=1)
SIZE = (48, 40, 14)  # (columns, rows, slices): columns != rows so a transposed slice cannot pass
SPACING = (0.9, 1.1, 2.0)


def _geometry(oblique: bool, flipped: bool = False) -> Geometry:
    """Axial (identity direction), or flipped in-plane as NIfTI-born series often are (columns run to the
    patient's right, rows anterior), or double-oblique."""
    direction = np.diag([-1.0, -1.0, 1.0]) if flipped else np.eye(3)
    if oblique:
        a, b = np.deg2rad(18.0), np.deg2rad(-11.0)
        rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        direction = rot_z @ rot_x
    # Centred on the origin, so index column > centre is the patient's left (x > 0) in the axial case.
    half = direction @ (np.array(SPACING) * (np.array(SIZE) - 1) / 2.0)
    return Geometry(SPACING, tuple(float(v) for v in -half), tuple(float(d) for d in direction.ravel()), SIZE)


def _ball(shape: tuple[int, int, int], centre_kji: tuple[float, float, float], radius_mm: float
          ) -> npt.NDArray[np.bool_]:
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    sk, sj, si = SPACING[2], SPACING[1], SPACING[0]
    c = centre_kji
    return np.asarray(((k - c[0]) * sk) ** 2 + ((j - c[1]) * sj) ** 2 + ((i - c[2]) * si) ** 2 <= radius_mm**2)


def _lesions(shape: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    """Met 1: 6 mm radius on the patient's left (high column index); Met 2: 3.5 mm on the right; Met 3:
    a single voxel (a 1 mm lesion); Met 4: a ring-like lesion with a hole on one slice."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[_ball(shape, (6.0, 18.0, 36.0), 6.0)] = 1
    labels[_ball(shape, (5.0, 24.0, 10.0), 3.5)] = 2
    labels[11, 6, 6] = 3
    labels[9:11, 30:37, 20:28] = 4
    labels[10, 32:35, 22:26] = 0
    return labels


def _written_series(tmp: Path, oblique: bool, flipped: bool = False) -> tuple[Volume, list[Dataset]]:
    geometry = _geometry(oblique, flipped)
    rng = np.random.default_rng(3)
    image = Volume(rng.normal(500.0, 40.0, tuple(reversed(SIZE))).astype(np.float32), geometry)
    study = StudyInfo.create(f"rtstruct-{oblique}")
    series = SeriesInfo.create(study, PRESETS[Vendor.SIEMENS][SeriesRole.T1CE], series_number=7)
    paths = write_series(image, tmp, study=study, series=series)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in reversed(paths)]  # not in slice order
    volume = series_to_volume([pydicom.dcmread(p) for p in paths], study_key="k")
    return volume, headers


@pytest.fixture(scope="module", params=[False, True], ids=["axial", "oblique"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[Volume, list[Dataset], Path]:
    volume, headers = _written_series(tmp_path_factory.mktemp("t1ce"), bool(request.param))
    labels = volume.with_array(_lesions(volume.array.shape))
    rtstruct = build_metastases_rtstruct(labels, headers, model=MODEL, input_hash="h1")
    assert rtstruct is not None
    path = tmp_path_factory.mktemp("rtstruct") / "rtstruct.dcm"
    rtstruct.save_as(path, enforce_file_format=True)
    return labels, headers, path


def _contours_by_roi(ds: Dataset) -> dict[str, list[Dataset]]:
    names = {int(item.ROINumber): str(item.ROIName) for item in ds.StructureSetROISequence}
    return {names[int(item.ReferencedROINumber)]: list(item.get("ContourSequence", []))
            for item in ds.ROIContourSequence}


def _points(contour: Dataset) -> npt.NDArray[np.float64]:
    return np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)


def test_rtstruct_passes_dciodvfy_without_errors(case: tuple[Volume, list[Dataset], Path]) -> None:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.fail("dciodvfy not found: install dicom3tools (scripts/install-system-deps.sh)")
    result = subprocess.run([dciodvfy, str(case[2])], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)


def test_one_roi_per_lesion_named_met_n_unapproved_ai_output(case: tuple[Volume, list[Dataset], Path]) -> None:
    ds = pydicom.dcmread(case[2])
    assert ds.Modality == "RTSTRUCT" and ds.ApprovalStatus == "UNAPPROVED"
    assert [str(item.ROIName) for item in ds.StructureSetROISequence] == ["Met 1", "Met 2", "Met 3", "Met 4"]
    assert ds.SeriesNumber == ResultObjectSettings().metastases_rtstruct_series_number
    assert ds.SeriesDescription == METASTASES_RTSTRUCT_DESCRIPTION
    assert ds.StudyInstanceUID == case[1][0].StudyInstanceUID
    assert all(item.ROIGenerationAlgorithm == "AUTOMATIC" for item in ds.StructureSetROISequence)


def test_references_point_at_the_source_series_and_frame(case: tuple[Volume, list[Dataset], Path]) -> None:
    _, headers, path = case
    ds = pydicom.dcmread(path)
    source_uids = {str(h.SOPInstanceUID) for h in headers}
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in series.ContourImageSequence} == source_uids
    assert all(item.ReferencedFrameOfReferenceUID == headers[0].FrameOfReferenceUID
               for item in ds.StructureSetROISequence)


def test_each_contour_lies_in_the_plane_of_the_slice_it_references(case: tuple[Volume, list[Dataset], Path]) -> None:
    _, headers, path = case
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    for contours in _contours_by_roi(pydicom.dcmread(path)).values():
        for contour in contours:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            source = by_uid[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            orientation = np.asarray([float(v) for v in source.ImageOrientationPatient]).reshape(2, 3)
            normal = np.cross(orientation[0], orientation[1])
            offsets = (_points(contour) - np.asarray([float(v) for v in source.ImagePositionPatient])) @ normal
            np.testing.assert_allclose(offsets, 0.0, atol=1e-3)


def _on_grid(labels: Volume, contours: list[Dataset]) -> dict[int, list[npt.NDArray[np.float64]]]:
    """The contours in (row, column) pixel index, by the slice k their points lie on."""
    to_index = np.linalg.inv(labels.geometry.index_to_patient())
    by_slice: dict[int, list[npt.NDArray[np.float64]]] = {}
    for contour in contours:
        ijk = (to_index @ np.c_[_points(contour), np.ones(len(_points(contour)))].T).T[:, :3]
        k = round(float(ijk[0, 2]))
        np.testing.assert_allclose(ijk[:, 2], k, atol=1e-3)
        by_slice.setdefault(k, []).append(ijk[:, [1, 0]])  # (row, column)
    return by_slice


def test_contours_fill_back_to_each_lesion_and_hold_its_volume(case: tuple[Volume, list[Dataset], Path]) -> None:
    labels, _, path = case
    ds = pydicom.dcmread(path)
    filled = roi_masks(ds, labels.geometry)
    for n, (name, contours) in enumerate(sorted(_contours_by_roi(ds).items()), start=1):
        assert name == f"Met {n}"
        mask = labels.array == n
        np.testing.assert_array_equal(filled[name], mask, err_msg=name)
        # The planning system's volume (polygon area, holes subtracted, x slice spacing) is the SEG's,
        # the smallest lesions included: the contours follow the pixel edges.
        pixels = sum(even_odd_area(polygons) for polygons in _on_grid(labels, contours).values())
        assert pixels == pytest.approx(float(mask.sum()), abs=1e-3), name


def test_contour_centroid_lies_where_the_lesion_is_in_patient_coordinates(
        case: tuple[Volume, list[Dataset], Path]) -> None:
    labels, _, path = case
    affine = labels.geometry.index_to_patient()
    for n, (_, contours) in enumerate(sorted(_contours_by_roi(pydicom.dcmread(path)).items()), start=1):
        kji = np.argwhere(labels.array == n).mean(axis=0)
        expected = (affine @ np.array([kji[2], kji[1], kji[0], 1.0]))[:3]
        points = np.concatenate([_points(c) for c in contours])
        np.testing.assert_allclose(points.mean(axis=0), expected, atol=1.0)


@pytest.mark.parametrize("flipped", [False, True], ids=["columns-to-left", "columns-to-right"])
def test_a_lesion_on_the_patients_left_has_positive_x(tmp_path: Path, flipped: bool) -> None:
    """Met 1 sits at a high column index: on the patient's left (x > 0) when the row direction is (1, 0, 0),
    on the right when it is (-1, 0, 0); Met 2, at a low column index, on the other side."""
    volume, headers = _written_series(tmp_path, oblique=False, flipped=flipped)
    labels = volume.with_array(_lesions(volume.array.shape))
    ds = build_metastases_rtstruct(labels, headers, model=MODEL)
    assert ds is not None
    contours = _contours_by_roi(ds)
    left, right = ("Met 2", "Met 1") if flipped else ("Met 1", "Met 2")
    assert all(_points(c)[:, 0].min() > 0 for c in contours[left])
    assert all(_points(c)[:, 0].max() < 0 for c in contours[right])


def test_no_lesion_gives_no_rtstruct_and_a_rerun_the_same_uids(tmp_path: Path) -> None:
    volume, headers = _written_series(tmp_path, oblique=False)
    assert build_metastases_rtstruct(volume.with_array(np.zeros(volume.array.shape, np.uint8)), headers,
                                     model=MODEL) is None
    labels = volume.with_array(_lesions(volume.array.shape))
    first = build_metastases_rtstruct(labels, headers, model=MODEL, input_hash="a")
    again = build_metastases_rtstruct(labels, list(reversed(headers)), model=MODEL, input_hash="a")
    other = build_metastases_rtstruct(labels, headers, model=MODEL, input_hash="b")
    assert first is not None and again is not None and other is not None
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID


def test_refuses_source_instances_off_the_label_grid(tmp_path: Path) -> None:
    volume, headers = _written_series(tmp_path, oblique=False)
    labels = volume.with_array(_lesions(volume.array.shape))
    with pytest.raises(StudyError, match="no source instance for slices"):
        build_metastases_rtstruct(labels, headers[1:], model=MODEL)


def test_marching_squares_contours_fill_back_to_any_mask() -> None:
    """Random masks (diagonal touches, holes, border pixels): filling the contours gives the mask back."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((11, 13)) < 0.45
        np.testing.assert_array_equal(fill_contours(mask_contours(mask), mask.shape), mask)


def test_pixel_edge_contours_fill_back_to_any_mask_and_enclose_its_pixel_count() -> None:
    """Random masks (diagonal touches, holes, border pixels): the stepped contours fill back to the mask,
    and their oriented areas (holes run the other way) add up to its pixel count."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random((9, 12)) < rng.uniform(0.2, 0.7)
        contours = pixel_edge_contours(mask)
        np.testing.assert_array_equal(fill_contours(contours, mask.shape), mask)
        oriented = sum(float(np.dot(c[:, 0], np.roll(c[:, 1], -1)) - np.dot(c[:, 1], np.roll(c[:, 0], -1))) / 2.0
                       for c in contours)
        assert abs(oriented) == pytest.approx(float(mask.sum()))


def test_polygon_area_in_patient_space_matches_the_pixel_area_times_pixel_size() -> None:
    """The shoelace area of a contour's 3D points (a planner's area) equals its pixel area scaled."""
    geometry = _geometry(oblique=True)
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:8, 3:10] = True
    (contour,) = mask_contours(mask)
    affine = geometry.index_to_patient()
    patient = (affine @ np.c_[contour[:, 1], contour[:, 0], np.full(len(contour), 4.0), np.ones(len(contour))].T).T
    assert polygon_area(patient[:, :3]) == pytest.approx(polygon_area(contour) * SPACING[0] * SPACING[1])
    assert even_odd_area([contour]) == pytest.approx(42.0 - 4 * 0.125)


@pytest.fixture(scope="module")
def seg_path(case: tuple[Volume, list[Dataset], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels, headers, _ = case
    seg = build_metastases_seg(labels, headers, model=MODEL, input_hash="h1")
    assert seg is not None
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    return path


def test_seg_passes_dciodvfy_and_names_each_lesion_as_the_rtstruct_does(
        case: tuple[Volume, list[Dataset], Path], seg_path: Path) -> None:
    result = subprocess.run([shutil.which("dciodvfy") or "dciodvfy", str(seg_path)], capture_output=True, text=True,
                            timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)
    seg = hd.seg.segread(seg_path)
    rtstruct = pydicom.dcmread(case[2])
    rois = {int(i.ROINumber): str(i.ROIName) for i in rtstruct.StructureSetROISequence}
    colours = {int(i.ReferencedROINumber): list(i.ROIDisplayColor) for i in rtstruct.ROIContourSequence}
    for segment in seg.SegmentSequence:
        number = int(segment.SegmentNumber)
        assert segment.SegmentLabel == rois[number]
        lab = hd.color.CIELabColor.from_rgb(*colours[number]).value
        assert tuple(int(v) for v in segment.RecommendedDisplayCIELabValue) == lab
    assert seg.SeriesNumber == ResultObjectSettings().metastases_seg_series_number


def test_rtstruct_contours_hold_each_seg_segments_volume_within_10_percent(
        case: tuple[Volume, list[Dataset], Path], seg_path: Path) -> None:
    labels, headers, path = case
    by_slice = {str(h.SOPInstanceUID): h for h in headers}
    order = sorted(by_slice, key=lambda uid: labels.geometry.direction_matrix()[:, 2]
                   @ np.asarray([float(v) for v in by_slice[uid].ImagePositionPatient]))
    segments = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        source_sop_instance_uids=order, combine_segments=True, skip_overlap_checks=True)
    for name, filled in roi_masks(pydicom.dcmread(path), labels.geometry).items():
        number = int(name.split()[1])
        seg_voxels = int((segments == number).sum())
        assert int(filled.sum()) == pytest.approx(seg_voxels, rel=0.10), name
        np.testing.assert_array_equal(filled, segments == number, err_msg=name)


def test_seg_refuses_lesion_numbers_with_gaps(tmp_path: Path) -> None:
    volume, headers = _written_series(tmp_path, oblique=False)
    labels = _lesions(volume.array.shape)
    labels[labels == 2] = 0
    with pytest.raises(ValueError, match="without gaps"):
        build_metastases_seg(volume.with_array(labels), headers, model=MODEL)


def test_reading_back_refuses_a_contour_between_slices(case: tuple[Volume, list[Dataset], Path]) -> None:
    labels, _, path = case
    ds = pydicom.dcmread(path)
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    normal = labels.geometry.direction_matrix()[:, 2] * labels.geometry.spacing[2]
    contour.ContourData = [f"{v:.4f}" for v in (_points(contour) + 0.5 * normal).ravel()]
    with pytest.raises(ValueError, match="lies on no slice"):
        roi_masks(ds, labels.geometry)
