"""Series that hold several volumes (echoes, dynamics, diffusion b-values and directions, enhanced
stacks and echoes, Siemens MOSAIC) convert into one volume each, with exact geometry, and are
classified volume by volume; a series whose shared positions nothing explains is still refused."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from neuroflow.core.dicom_io import FolderDicomSource, SeriesInstances, study_key
from neuroflow.core.errors import SeriesRejected
from neuroflow.core.identity import input_hash
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume, series_volumes
from neuroflow.core.split_volumes import diffusion_b_value, diffusion_direction
from neuroflow.core.sub_series import volume_identity
from neuroflow.core.volume import Geometry, Volume
from neuroflow.core.volume_members import volume_instances
from neuroflow.devtools.dicom_writer import SeriesInfo, StudyInfo, load_volume, write_series
from neuroflow.devtools.multi_volume_writer import (
    VolumeTags,
    write_enhanced_series,
    write_mosaic_series,
    write_multi_volume_series,
)
from neuroflow.devtools.scanner_presets import MULTI_VOLUME_PRESETS, PRESETS, Vendor
from neuroflow.ingest.classify import classify_study

GLIOMA_T1C = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294" / "t1c_bet.nii.gz"
SLICES = 20
# The phantom's diffusivity (mm²/s) along the three gradient directions: the trace is their mean.
DIFFUSIVITY = (1.2e-3, 0.6e-3, 0.6e-3)
DIRECTIONS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def small_volume() -> Volume:
    """20 axial slices of 64 x 64 mm (1 mm) through the real glioma T1 post-contrast (integers)."""
    full = load_volume(GLIOMA_T1C)
    return Volume.from_sitk(full.to_sitk()[90:154, 100:164, 60 : 60 + SLICES])


@pytest.fixture(scope="module")
def study() -> StudyInfo:
    return StudyInfo.create("multi-volume-test")


def _series(study: StudyInfo, preset_name: str, number: int) -> SeriesInfo:
    return SeriesInfo.create(study, MULTI_VOLUME_PRESETS[preset_name], series_number=number)


def _read(folder: Path) -> SeriesInstances:
    studies, _ = FolderDicomSource(folder).index()
    (one,) = studies.values()
    (series,) = one.series.values()
    return series


def _datasets(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def _scaled(volume: Volume, factor: float) -> Volume:
    return volume.with_array(np.round(np.asarray(volume.array, dtype=np.float64) * factor).astype(np.int16))


def test_multi_echo_gre_gives_one_volume_per_echo_with_exact_geometry(
    small_volume: Volume, study: StudyInfo, tmp_path: Path
) -> None:
    echo2 = _scaled(small_volume, 0.7)
    write_multi_volume_series(
        [(small_volume, VolumeTags(echo_number=1, echo_time_ms=4.92)),
         (echo2, VolumeTags(echo_number=2, echo_time_ms=7.38))],
        tmp_path, study=study, series=_series(study, "field_map", 5),
    )
    datasets = _datasets(tmp_path)
    volumes = series_volumes(datasets, study_key="k")
    assert [v.meta["volume"] for v in volumes] == ["echo=1", "echo=2"]
    uid = str(datasets[0].SeriesInstanceUID)
    assert [v.meta["series_instance_uid"] for v in volumes] == [f"{uid}#echo=1", f"{uid}#echo=2"]
    for volume, written in zip(volumes, (small_volume, echo2), strict=True):
        assert volume.geometry.is_close(small_volume.geometry, tol_mm=1e-3)
        np.testing.assert_array_equal(volume.array, np.asarray(written.array, dtype=np.float32))
    again = series_to_volume(list(reversed(datasets)), study_key="k", volume="echo=2")
    np.testing.assert_array_equal(again.array, volumes[1].array)


def test_a_series_of_several_volumes_needs_the_volume_named(
    small_volume: Volume, study: StudyInfo, tmp_path: Path
) -> None:
    write_multi_volume_series(
        [(small_volume, VolumeTags(echo_number=1, echo_time_ms=4.92)),
         (small_volume, VolumeTags(echo_number=2, echo_time_ms=7.38))],
        tmp_path, study=study, series=_series(study, "field_map", 5),
    )
    with pytest.raises(SeriesRejected) as caught:
        series_to_volume(_datasets(tmp_path), study_key="k")
    assert "holds 2 volumes by echo number: echo=1, echo=2" in caught.value.reason
    with pytest.raises(SeriesRejected) as caught:
        series_to_volume(_datasets(tmp_path), study_key="k", volume="echo=3")
    assert "has no volume 'echo=3'" in caught.value.reason


def test_dynamic_series_gives_one_volume_per_temporal_position(
    small_volume: Volume, study: StudyInfo, tmp_path: Path
) -> None:
    # Siemens numbers each dynamic's acquisition too: the temporal position names the volumes.
    phases = [_scaled(small_volume, f) for f in (1.0, 1.3, 1.1)]
    write_multi_volume_series(
        [(v, VolumeTags(temporal_position=t + 1, acquisition_number=t + 1)) for t, v in enumerate(phases)],
        tmp_path, study=study, series=_series(study, "dynamic", 6),
    )
    volumes = series_volumes(_datasets(tmp_path), study_key="k")
    assert [v.meta["volume"] for v in volumes] == ["time=1", "time=2", "time=3"]
    for volume, written in zip(volumes, phases, strict=True):
        assert volume.geometry.is_close(small_volume.geometry, tol_mm=1e-3)
        np.testing.assert_array_equal(volume.array, np.asarray(written.array, dtype=np.float32))


def _dwi_phantom(small_volume: Volume) -> tuple[Volume, list[Volume], np.ndarray]:
    """b=0 and one b=1000 volume per direction from S = S0 exp(-b D_direction) inside the brain."""
    s0 = np.asarray(small_volume.array, dtype=np.float64)
    inside = s0 > 200
    b0 = small_volume.with_array(np.where(inside, s0 + 1000, 0).astype(np.int16))
    weighted = [
        small_volume.with_array(np.round(np.asarray(b0.array) * math.exp(-1000 * d)).astype(np.int16))
        for d in DIFFUSIVITY
    ]
    return b0, weighted, inside


@pytest.mark.parametrize("private", [False, True], ids=["public-tags", "siemens-private-tags"])
def test_dwi_gives_b0_trace_and_computed_adc_matching_the_phantom(
    small_volume: Volume, study: StudyInfo, tmp_path: Path, private: bool
) -> None:
    b0, weighted, inside = _dwi_phantom(small_volume)
    write_multi_volume_series(
        [(b0, VolumeTags(b_value=0.0, acquisition_number=1, siemens_private_diffusion=private)),
         *((v, VolumeTags(b_value=1000.0, gradient=g, acquisition_number=i + 2, siemens_private_diffusion=private))
           for i, (v, g) in enumerate(zip(weighted, DIRECTIONS, strict=True)))],
        tmp_path, study=study, series=_series(study, "dwi_directions", 7),
    )
    datasets = _datasets(tmp_path)
    if private:
        assert "DiffusionBValue" not in datasets[0]
    volumes = {v.meta["volume"]: v for v in series_volumes(datasets, study_key="k")}
    assert list(volumes) == ["b=0", "b=1000", "adc"]
    for volume in volumes.values():
        assert volume.geometry.is_close(small_volume.geometry, tol_mm=1e-3)
    np.testing.assert_array_equal(volumes["b=0"].array, np.asarray(b0.array, dtype=np.float32))
    expected_trace = np.asarray(b0.array, dtype=np.float64) * math.exp(-1000 * np.mean(DIFFUSIVITY))
    np.testing.assert_allclose(volumes["b=1000"].array[inside], expected_trace[inside], rtol=0.01, atol=1.0)
    adc = volumes["adc"].array
    assert adc.dtype == np.float32
    truth = float(np.mean(DIFFUSIVITY))
    assert np.all(np.abs(adc[inside] - truth) <= 0.05 * truth)
    assert np.all(adc[~inside] == 0)  # no signal, no ADC
    assert "ADC computed from b = 0, 1000" in volumes["adc"].meta["derivation"]


def test_enhanced_mr_with_two_stacks_and_with_two_echoes_splits_by_its_functional_groups(
    small_volume: Volume, study: StudyInfo, tmp_path: Path
) -> None:
    second = _scaled(small_volume, 0.5)
    stacks = write_enhanced_series(
        [(small_volume, VolumeTags(stack_id="1")), (second, VolumeTags(stack_id="2"))],
        tmp_path / "stacks", study=study, series=_series(study, "dynamic", 8),
    )
    echoes = write_enhanced_series(
        [(small_volume, VolumeTags(echo_time_ms=4.92)), (second, VolumeTags(echo_time_ms=7.38))],
        tmp_path / "echoes", study=study, series=_series(study, "field_map", 9),
    )
    for path, labels in ((stacks, ["stack=1", "stack=2"]), (echoes, ["te=4.92", "te=7.38"])):
        dataset = pydicom.dcmread(path)
        assert int(dataset.NumberOfFrames) == 2 * SLICES
        volumes = series_volumes([dataset], study_key="k")
        assert [v.meta["volume"] for v in volumes] == labels
        for volume, written in zip(volumes, (small_volume, second), strict=True):
            assert volume.geometry.is_close(small_volume.geometry, tol_mm=1e-3)
            np.testing.assert_array_equal(volume.array, np.asarray(written.array, dtype=np.float32))


def _dcm2niix_tile_positions(mosaic: pydicom.Dataset, slices: int) -> np.ndarray:
    """The reference: dcm2niix's correction of a mosaic's ImagePositionPatient, written out here."""
    grid = math.ceil(math.sqrt(slices))
    rows, columns = int(mosaic.Rows) // grid, int(mosaic.Columns) // grid
    iop = np.array([float(v) for v in mosaic.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in mosaic.PixelSpacing)
    ipp = np.array([float(v) for v in mosaic.ImagePositionPatient])
    shift = np.array([(int(mosaic.Columns) - columns) / 2 * column_spacing,
                      (int(mosaic.Rows) - rows) / 2 * row_spacing])
    first = ipp + np.column_stack([iop[:3], iop[3:]]) @ shift
    normal = np.cross(iop[:3], iop[3:])
    return np.array([first + k * float(mosaic.SpacingBetweenSlices) * normal for k in range(slices)])


@pytest.mark.parametrize("flipped", [False, True], ids=["slices-along-normal", "slices-against-normal"])
def test_mosaic_unpacks_to_the_volume_the_single_frame_series_gives(
    small_volume: Volume, study: StudyInfo, tmp_path: Path, flipped: bool
) -> None:
    volume = _reversed_slices(small_volume) if flipped else small_volume
    (path,) = write_mosaic_series([volume], tmp_path / "mosaic", study=study,
                                  series=_series(study, "bold_mosaic", 10))
    single = SeriesInfo.create(study, PRESETS[Vendor.SIEMENS][SeriesRole.T2], series_number=11)
    write_series(volume, tmp_path / "single", study=study, series=single)
    mosaic = pydicom.dcmread(path)
    assert (int(mosaic.Rows), int(mosaic.Columns)) == (5 * 64, 5 * 64)  # 20 slices in a 5 x 5 grid
    unpacked = series_to_volume([mosaic], study_key="k")
    reference = series_to_volume(_datasets(tmp_path / "single"), study_key="k")
    np.testing.assert_array_equal(unpacked.array, reference.array)
    assert unpacked.geometry.is_close(reference.geometry, tol_mm=1e-3)
    positions = np.array([(unpacked.geometry.index_to_patient() @ (0, 0, k, 1))[:3] for k in range(SLICES)])
    expected = _dcm2niix_tile_positions(mosaic, SLICES)
    if flipped:  # the CSA header's SliceNormalVector runs against row x column: tile k lies the other way
        expected = expected[0] - (expected - expected[0])
    np.testing.assert_allclose(positions, expected, atol=1e-3)


def test_mosaic_time_series_gives_one_volume_per_image(small_volume: Volume, study: StudyInfo, tmp_path: Path) -> None:
    frames = [_scaled(small_volume, f) for f in (1.0, 0.9, 1.1)]
    write_mosaic_series(frames, tmp_path, study=study, series=_series(study, "bold_mosaic", 10))
    volumes = series_volumes(_datasets(tmp_path), study_key="k")
    assert [v.meta["volume"] for v in volumes] == ["image=1", "image=2", "image=3"]
    for volume, written in zip(volumes, frames, strict=True):
        np.testing.assert_array_equal(volume.array, np.asarray(written.array, dtype=np.float32))
        assert volume.geometry.is_close(small_volume.geometry, tol_mm=1e-3)


def test_duplicate_positions_nothing_explains_are_still_refused(
    small_volume: Volume, study: StudyInfo, tmp_path: Path
) -> None:
    series = SeriesInfo.create(study, PRESETS[Vendor.SIEMENS][SeriesRole.T2], series_number=12)
    paths = write_series(small_volume, tmp_path, study=study, series=series)
    datasets = [pydicom.dcmread(p) for p in paths]
    copies = []
    for ds in datasets[:5]:  # the same slices sent twice under new instance UIDs, nothing else differs
        again = copy.deepcopy(ds)
        again.SOPInstanceUID = generate_uid()
        copies.append(again)
    with pytest.raises(SeriesRejected) as caught:
        series_to_volume([*datasets, *copies], study_key=study_key(study.study_instance_uid))
    reason = caught.value.reason
    assert reason.startswith("duplicate slice positions: 5 of 25 slices share a position")
    assert "neither echo, time point, acquisition, stack, b-value nor gradient direction tells them apart" in reason
    assert caught.value.series_uid == series.series_instance_uid


def test_each_volume_is_classified_on_its_own(small_volume: Volume, study: StudyInfo, tmp_path: Path) -> None:
    b0, weighted, _ = _dwi_phantom(small_volume)
    write_multi_volume_series(
        [(b0, VolumeTags(b_value=0.0)),
         *((v, VolumeTags(b_value=1000.0, gradient=g)) for v, g in zip(weighted, DIRECTIONS, strict=True))],
        tmp_path / "dwi", study=study, series=_series(study, "dwi_directions", 7),
    )
    write_multi_volume_series(
        [(small_volume, VolumeTags(echo_number=1, echo_time_ms=4.92)),
         (small_volume, VolumeTags(echo_number=2, echo_time_ms=7.38))],
        tmp_path / "gre", study=study, series=_series(study, "field_map", 5),
    )
    studies, _ = FolderDicomSource(tmp_path).index()
    (one,) = studies.values()
    classified = {c.description: c for c in classify_study(list(one.series.values()))}
    assert set(classified) == {
        "gre_field_mapping [echo=1]", "gre_field_mapping [echo=2]",
        "ep2d_diff_mddw_3dir_p2 [b=0]", "ep2d_diff_mddw_3dir_p2 [b=1000]", "ep2d_diff_mddw_3dir_p2 [ADC computed]",
    }
    adc = classified["ep2d_diff_mddw_3dir_p2 [ADC computed]"]
    assert adc.role == SeriesRole.ADC
    assert adc.series_instance_uid.endswith("#adc")
    assert classified["ep2d_diff_mddw_3dir_p2 [b=1000]"].role == SeriesRole.DWI
    assert "b=1000 trace (geometric mean of 3 directions)" in classified["ep2d_diff_mddw_3dir_p2 [b=1000]"].reasons[1]
    assert classified["gre_field_mapping [echo=2]"].instance_count == SLICES


def _reversed_slices(volume: Volume) -> Volume:
    geometry = volume.geometry
    direction = geometry.direction_matrix() @ np.diag([1.0, 1.0, -1.0])
    origin = (geometry.index_to_patient() @ (0, 0, geometry.size[2] - 1, 1))[:3]
    flipped = Geometry(geometry.spacing, (float(origin[0]), float(origin[1]), float(origin[2])),
                       tuple(float(v) for v in direction.ravel()), geometry.size)
    return Volume(np.ascontiguousarray(volume.array[::-1]), flipped, volume.meta)


def test_keys_that_vary_without_explaining_the_shared_positions_do_not_split(
    small_volume: Volume, study: StudyInfo, tmp_path: Path
) -> None:
    series = SeriesInfo.create(study, PRESETS[Vendor.SIEMENS][SeriesRole.T2], series_number=13)
    datasets = [pydicom.dcmread(p) for p in write_series(small_volume, tmp_path, study=study, series=series)]
    resent = []
    for k, ds in enumerate(datasets[:4]):
        again = copy.deepcopy(ds)
        again.SOPInstanceUID = generate_uid()
        again.AcquisitionNumber = 1 + k % 2  # varies, but both copies of slice 0 and 2 share acquisition 1
        resent.append(again)
    with pytest.raises(SeriesRejected) as caught:
        series_to_volume([*datasets, *resent], study_key="k")
    assert caught.value.reason.startswith("duplicate slice positions")


def test_a_private_b_value_is_read_only_under_its_creator() -> None:
    siemens, other = pydicom.Dataset(), pydicom.Dataset()
    siemens.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "1000")
    # Another creator owns the block at the same element numbers: its (0019,100C) is not a b-value.
    other.private_block(0x0019, "SOME OTHER VENDOR", create=True).add_new(0x0C, "IS", "1000")
    assert diffusion_b_value(siemens) == 1000.0
    assert diffusion_b_value(other) is None
    moved = pydicom.Dataset()  # the creator in another slot (0019,0011): elements (0019,11xx)
    moved.private_block(0x0019, "SOME OTHER VENDOR", create=True).add_new(0x01, "LO", "x")
    moved.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "500")
    assert 0x0019110C in moved
    assert diffusion_b_value(moved) == 500.0


def test_an_enhanced_object_splits_by_its_dimension_index_when_the_frames_say_nothing_else(
    small_volume: Volume, study: StudyInfo, tmp_path: Path
) -> None:
    path = write_enhanced_series(
        [(small_volume, VolumeTags(temporal_position=1)),
         (_scaled(small_volume, 0.5), VolumeTags(temporal_position=2))],
        tmp_path, study=study, series=_series(study, "dynamic", 8),
    )
    dataset = pydicom.dcmread(path)
    for frame in dataset.PerFrameFunctionalGroupsSequence:  # only DimensionIndexValues tell the volumes apart
        del frame.FrameContentSequence[0].TemporalPositionIndex
    assert dataset.DimensionIndexSequence[0].DimensionIndexPointer == 0x00209128  # TemporalPositionIndex
    volumes = series_volumes([dataset], study_key="k")
    assert [v.meta["volume"] for v in volumes] == ["time=1", "time=2"]
    np.testing.assert_array_equal(volumes[1].array, np.asarray(_scaled(small_volume, 0.5).array, dtype=np.float32))


def test_a_result_on_one_volume_references_only_that_volume_s_instances(
    small_volume: Volume, study: StudyInfo, tmp_path: Path
) -> None:
    written = write_multi_volume_series(
        [(small_volume, VolumeTags(echo_number=1, echo_time_ms=4.92)),
         (small_volume, VolumeTags(echo_number=2, echo_time_ms=7.38))],
        tmp_path, study=study, series=_series(study, "field_map", 5),
    )
    datasets = _datasets(tmp_path)
    echo2 = volume_instances(datasets, study_key="k", volume="echo=2")
    assert sorted(str(ds.filename) for ds in echo2) == sorted(str(p) for p in written[1])
    assert volume_instances(datasets, study_key="k") == datasets
    with pytest.raises(SeriesRejected):
        volume_instances(datasets, study_key="k", volume="echo=7")


def test_another_volume_of_the_same_instances_is_other_work() -> None:
    model = ModelRef(name="glioma", version=1)
    sops = ["1.2.3.1", "1.2.3.2"]
    assert volume_identity("1.2.3") == []
    echo1, echo2 = ({"T2": [*sops, *volume_identity(f"1.2.3#echo={n}")]} for n in (1, 2))
    assert input_hash(echo1, model) != input_hash(echo2, model)
    assert input_hash({"T2": sops}, model) == input_hash({"T2": [*sops, *volume_identity("1.2.3")]}, model)


def test_the_computed_adc_is_not_a_candidate_beside_the_scanner_s_adc(
    small_volume: Volume, study: StudyInfo, tmp_path: Path
) -> None:
    b0, weighted, _ = _dwi_phantom(small_volume)
    write_multi_volume_series(
        [(b0, VolumeTags(b_value=0.0)),
         *((v, VolumeTags(b_value=1000.0, gradient=g)) for v, g in zip(weighted, DIRECTIONS, strict=True))],
        tmp_path / "dwi", study=study, series=_series(study, "dwi_directions", 7),
    )
    scanner_adc = SeriesInfo.create(study, PRESETS[Vendor.SIEMENS][SeriesRole.ADC], series_number=8)
    write_series(small_volume, tmp_path / "adc", study=study, series=scanner_adc)
    studies, _ = FolderDicomSource(tmp_path).index()
    (one,) = studies.values()
    classified = {c.description: c for c in classify_study(list(one.series.values()))}
    computed = classified["ep2d_diff_mddw_3dir_p2 [ADC computed]"]
    assert classified[scanner_adc.preset.series_description].role == SeriesRole.ADC
    assert computed.role == SeriesRole.OTHER
    assert computed.main_reason.startswith("computed ADC not used: the scanner sent an ADC (series 8")


def test_vendor_gradient_directions_are_read_through_their_creators() -> None:
    philips = pydicom.Dataset()
    block = philips.private_block(0x2005, "Philips MR Imaging DD 005", create=True)
    for offset, value in zip((0xB0, 0xB1, 0xB2), (0.0, 0.6, 0.8), strict=True):
        block.add_new(offset, "FL", value)
    assert diffusion_direction(philips) == pytest.approx((0.0, 0.6, 0.8))
    impostor = pydicom.Dataset()  # the same elements under another creator are not a direction
    other = impostor.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    for offset in (0xB0, 0xB1, 0xB2):
        other.add_new(offset, "FL", 1.0)
    assert diffusion_direction(impostor) is None
