"""The glioma DICOM SEG: valid per dciodvfy, frames on the right source slices, idempotent UIDs."""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

import neuroflow
from neuroflow.core.errors import StudyError
from neuroflow.core.labels import GLIOMA_SEGMENTS, SEGMENT_BRATS_LABEL, BratsLabel
from neuroflow.core.model_card import ModelRef
from neuroflow.core.volume import Geometry, Volume
from neuroflow.results.dicom_seg import SERIES_DESCRIPTION, build_glioma_seg

MODEL = ModelRef(name="glioma-unet", version=3)
N_COLUMNS, N_ROWS, N_SLICES = 32, 30, 16  # columns != rows so a transposed frame cannot pass
SPACING = (0.9, 1.1, 2.5)  # (column, row, slice) mm, all different so a swapped spacing cannot pass


@dataclass
class SourceSeries:
    geometry: Geometry
    instances: list[Dataset]  # shuffled: NOT in slice order
    uid_of_slice: list[str]  # SOPInstanceUID of slice k, the truth the SEG must reproduce


def _oblique_geometry() -> Geometry:
    """Rotated about two axes (a double-oblique acquisition), normal = row x column as in DICOM."""
    a, b = np.deg2rad(20.0), np.deg2rad(-12.0)
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rotation = rot_z @ rot_x
    row_dir, col_dir = rotation[:, 0], rotation[:, 1]
    direction = np.column_stack([row_dir, col_dir, np.cross(row_dir, col_dir)])
    return Geometry(spacing=SPACING, origin=(-14.2, -20.5, 31.0),
                    direction=tuple(float(d) for d in direction.ravel()),
                    size=(N_COLUMNS, N_ROWS, N_SLICES))


def _source_series(geometry: Geometry, seed: int = 7) -> SourceSeries:
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    affine = geometry.index_to_patient()
    direction = geometry.direction_matrix()
    rng = np.random.default_rng(seed)
    instances = []
    for k in range(N_SLICES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = "Test^Glioma", "NF0001"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 5, k + 1
        ds.SeriesDescription = "AX T1 POST GD"
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*direction[:, 0], *direction[:, 1])]
        ds.ImagePositionPatient = [round(float(v), 6) for v in (affine @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # DICOM: row spacing, then column spacing
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = N_ROWS, N_COLUMNS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4000, (N_ROWS, N_COLUMNS), dtype=np.uint16).tobytes()
        instances.append(ds)
    uid_of_slice = [str(ds.SOPInstanceUID) for ds in instances]
    random.Random(seed).shuffle(instances)
    assert [str(ds.SOPInstanceUID) for ds in instances] != uid_of_slice
    return SourceSeries(geometry, instances, uid_of_slice)


def _label_map(geometry: Geometry) -> Volume:
    """A cube of each BraTS label, at different places and slice ranges, so any slice or axis mix-up
    moves some label."""
    labels = np.zeros((N_SLICES, N_ROWS, N_COLUMNS), dtype=np.uint8)
    labels[2:9, 4:14, 3:15] = BratsLabel.OEDEMA
    labels[4:7, 6:11, 5:10] = BratsLabel.NECROTIC_CORE
    labels[10:14, 18:26, 20:29] = BratsLabel.ENHANCING
    labels[11, 20, 22] = BratsLabel.NECROTIC_CORE
    return Volume(labels, geometry)


@pytest.fixture(scope="module")
def source() -> SourceSeries:
    return _source_series(_oblique_geometry())


@pytest.fixture(scope="module")
def label_map(source: SourceSeries) -> Volume:
    return _label_map(source.geometry)


@pytest.fixture(scope="module")
def seg_path(source: SourceSeries, label_map: Volume, tmp_path_factory: pytest.TempPathFactory) -> Path:
    seg = build_glioma_seg(label_map, source.instances, model=MODEL)
    assert seg is not None
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    return path


def test_seg_passes_dciodvfy_without_errors(seg_path: Path) -> None:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.fail("dciodvfy not found: install dicom3tools (Debian package 'dicom3tools')")
    result = subprocess.run([dciodvfy, str(seg_path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(lines)


def test_seg_frames_reconstruct_the_label_map_on_the_source_grid(
    seg_path: Path, source: SourceSeries, label_map: Volume
) -> None:
    seg = hd.seg.segread(seg_path)
    segment_numbers = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source.uid_of_slice,  # slice k's instance, in volume order
        combine_segments=True,
        assert_missing_frames_are_empty=True,  # empty slices were omitted, not lost
    )
    reconstructed = np.zeros_like(label_map.array)
    for number, brats_label in SEGMENT_BRATS_LABEL.items():
        reconstructed[segment_numbers == number] = brats_label
    for label in (BratsLabel.NECROTIC_CORE, BratsLabel.OEDEMA, BratsLabel.ENHANCING):
        np.testing.assert_array_equal(reconstructed == label, label_map.array == label, err_msg=label.name)


def test_seg_frame_positions_are_those_of_the_referenced_source_slices(
    seg_path: Path, source: SourceSeries
) -> None:
    seg = pydicom.dcmread(seg_path)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source.instances}
    shared = seg.SharedFunctionalGroupsSequence[0]
    reference = source.instances[0]
    assert seg.FrameOfReferenceUID == reference.FrameOfReferenceUID
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               reference.ImageOrientationPatient, atol=1e-6)
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, reference.PixelSpacing)
    assert (seg.Rows, seg.Columns) == (N_ROWS, N_COLUMNS)
    non_empty_slices = {k for k in range(N_SLICES) if _label_map(source.geometry).array[k].any()}
    referenced = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                   by_uid[uid].ImagePositionPatient, atol=1e-4)
        referenced.add(source.uid_of_slice.index(uid))
    assert referenced == non_empty_slices


def test_seg_identifies_the_model_and_marks_itself_as_ai_output(seg_path: Path) -> None:
    seg = hd.seg.segread(seg_path)
    assert seg.number_of_segments == len(GLIOMA_SEGMENTS)
    for definition in GLIOMA_SEGMENTS:
        description = seg.get_segment_description(definition.number)
        assert description.segment_label == definition.label
        assert description.segmented_property_type.value == definition.type_code[0]
        assert description.algorithm_identification is not None
        algorithm = description.algorithm_identification[0]
        assert algorithm.AlgorithmName == MODEL.name
        assert algorithm.AlgorithmVersion == str(MODEL.version)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesDescription == SERIES_DESCRIPTION
    assert "not a diagnosis" in seg.ContentDescription
    assert seg.Manufacturer == "neuroflow"
    assert seg.SoftwareVersions == neuroflow.__version__


def _rgb_close(a: tuple[float, ...], b: tuple[int, ...]) -> bool:
    return bool(np.allclose(a, b, atol=2))


def test_seg_segments_carry_the_colours_of_the_label_definitions(seg_path: Path) -> None:
    seg = hd.seg.segread(seg_path)
    for definition in GLIOMA_SEGMENTS:
        lab = seg.get_segment_description(definition.number).RecommendedDisplayCIELabValue
        rgb = hd.color.CIELabColor.from_dicom_value(tuple(lab)).to_rgb()
        assert _rgb_close(rgb, definition.rgb), (definition.label, rgb)


def test_same_input_twice_gives_the_same_uids(source: SourceSeries, label_map: Volume) -> None:
    first = build_glioma_seg(label_map, source.instances, model=MODEL, input_hash="abc")
    again = build_glioma_seg(label_map, list(reversed(source.instances)), model=MODEL, input_hash="abc")
    other_model = build_glioma_seg(label_map, source.instances, model=ModelRef(name=MODEL.name, version=4),
                                   input_hash="abc")
    assert first is not None and again is not None and other_model is not None
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert first.SOPInstanceUID != first.SeriesInstanceUID
    assert other_model.SOPInstanceUID != first.SOPInstanceUID


def test_empty_label_map_gives_no_seg(source: SourceSeries) -> None:
    empty = Volume(np.zeros((N_SLICES, N_ROWS, N_COLUMNS), dtype=np.uint8), source.geometry)
    assert build_glioma_seg(empty, source.instances, model=MODEL) is None


def test_label_map_on_another_grid_is_refused(source: SourceSeries, label_map: Volume) -> None:
    g = source.geometry
    shifted = Geometry(g.spacing, (g.origin[0], g.origin[1], g.origin[2] + 1.0), g.direction, g.size)
    with pytest.raises(StudyError, match="lies on no slice"):
        build_glioma_seg(Volume(label_map.array, shifted), source.instances, model=MODEL)


def test_series_with_a_missing_slice_is_refused(source: SourceSeries, label_map: Volume) -> None:
    incomplete = [ds for ds in source.instances if ds.SOPInstanceUID != source.uid_of_slice[5]]
    with pytest.raises(StudyError, match=r"no source instance for slices \[5\]"):
        build_glioma_seg(label_map, incomplete, model=MODEL)


def test_label_outside_brats_labels_is_refused(source: SourceSeries, label_map: Volume) -> None:
    legacy = label_map.array.copy()
    legacy[legacy == BratsLabel.ENHANCING] = 4  # the pre-2021 enhancing label must be mapped upstream
    with pytest.raises(ValueError, match=r"\[4\]"):
        build_glioma_seg(label_map.with_array(legacy), source.instances, model=MODEL)
