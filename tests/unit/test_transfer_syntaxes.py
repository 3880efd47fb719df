"""Series stored in every transfer syntax a PACS sends convert: lossless ones to exactly the voxels and
geometry of the uncompressed series, lossy ones within their stated error. Real scanner samples in those
syntaxes (pydicom's bundled test files, MIT) decode with the project's own dependencies. A codec that is
missing is refused naming the transfer syntax and the package that decodes it, and damaged compressed
data is still called damaged."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import UID, JPEGLosslessSV1, JPEGLSNearLossless, RLELossless, generate_uid

from neuroflow.core.dicom_io import FolderDicomSource, study_key
from neuroflow.core.errors import SeriesRejected
from neuroflow.core.pixel_codecs import DECODER_PACKAGES, missing_decoder, transfer_syntax
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Volume
from neuroflow.devtools.dicom_writer import load_volume, write_study
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.devtools.transfer_syntaxes import LOSSLESS, LOSSY, NEAR_LOSSLESS_ERROR, recompress

GLIOMA_T1C = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294" / "t1c_bet.nii.gz"
SLICES = 8


@pytest.fixture(scope="module")
def small_volume() -> Volume:
    """8 slices of 64 x 64 voxels through the real glioma T1 post-contrast."""
    full = load_volume(GLIOMA_T1C)
    return Volume.from_sitk(full.to_sitk()[90:154, 100:164, 70 : 70 + SLICES])


@pytest.fixture(scope="module")
def uncompressed(small_volume: Volume, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Volume]:
    folder = tmp_path_factory.mktemp("uncompressed")
    write_study({SeriesRole.T1CE: small_volume}, folder, vendor=Vendor.GE)
    return folder, _convert(folder)


def _series(folder: Path) -> tuple[list[pydicom.Dataset], str]:
    source = FolderDicomSource(folder)
    studies, skipped = source.index()
    assert skipped == []
    (study,) = studies.values()
    (series,) = study.series.values()
    return source.read_instances(series), study_key(study.study_instance_uid)


def _convert(folder: Path) -> Volume:
    datasets, key = _series(folder)
    return series_to_volume(datasets, study_key=key)


def _copy_in(folder: Path, syntax: UID, tmp_path: Path) -> Path:
    target = tmp_path / "series"
    shutil.copytree(folder, target)
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        recompress(path, syntax)
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    return target


@pytest.mark.parametrize("syntax", LOSSLESS, ids=[s.name for s in LOSSLESS])
def test_lossless_series_converts_to_the_uncompressed_voxels_and_geometry(
    syntax: UID, uncompressed: tuple[Path, Volume], tmp_path: Path
) -> None:
    folder, expected = uncompressed
    volume = _convert(_copy_in(folder, syntax, tmp_path))
    assert volume.geometry == expected.geometry
    np.testing.assert_array_equal(volume.array, expected.array)


@pytest.mark.parametrize("syntax", LOSSY, ids=[s.name for s in LOSSY])
def test_lossy_series_converts_with_the_same_geometry_and_close_voxels(
    syntax: UID, uncompressed: tuple[Path, Volume], tmp_path: Path
) -> None:
    folder, expected = uncompressed
    volume = _convert(_copy_in(folder, syntax, tmp_path))
    assert volume.geometry == expected.geometry
    error = np.abs(volume.array - expected.array)
    if syntax == JPEGLSNearLossless:
        assert float(error.max()) <= NEAR_LOSSLESS_ERROR
    else:  # JPEG 2000 at 8:1 keeps the image: small mean error, nothing wildly off
        assert float(error.mean()) < 0.02 * float(np.ptp(expected.array))
    assert not np.array_equal(volume.array, expected.array) or syntax == JPEGLSNearLossless


# The same 64 x 64 MR slice (pydicom's MR_small, a GE scan) as each syntax encodes it, losslessly.
MR_SMALL_PACKED = ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm")


def _stack_of(sample: str, folder: Path, slices: int = 3) -> Path:
    """Three slices of a real sample, 5 mm apart, the compressed pixel data kept byte for byte."""
    folder.mkdir()
    series_uid = generate_uid()
    for k in range(slices):
        ds = pydicom.dcmread(get_testdata_file(sample))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        position = [float(v) for v in ds.ImagePositionPatient]
        normal = np.cross([float(v) for v in ds.ImageOrientationPatient[:3]],
                          [float(v) for v in ds.ImageOrientationPatient[3:]])
        ds.ImagePositionPatient = [f"{p + 5.0 * k * n:.4f}" for p, n in zip(position, normal, strict=True)]
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    return folder


@pytest.mark.parametrize("sample", MR_SMALL_PACKED)
def test_real_compressed_mr_converts_to_the_same_voxels_as_the_uncompressed_original(
    sample: str, tmp_path: Path
) -> None:
    original = _convert(_stack_of("MR_small.dcm", tmp_path / "plain"))
    packed_folder = _stack_of(sample, tmp_path / "packed")
    assert transfer_syntax(pydicom.dcmread(next(packed_folder.iterdir()))).is_compressed  # type: ignore[union-attr]
    packed = _convert(packed_folder)
    assert packed.geometry == original.geometry
    np.testing.assert_array_equal(packed.array, original.array)


# One real file per compressed syntax in pydicom's test data: each decodes with our dependencies.
REAL_SAMPLES = {
    "JPEG Baseline (Process 1)": "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG Extended (Process 2 and 4)": "JPEG-lossy.dcm",
    "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])": "SC_rgb_jpeg_gdcm.dcm",
    "JPEG-LS Lossless Image Compression": "MR_small_jpeg_ls_lossless.dcm",
    "JPEG-LS Lossy (Near-Lossless) Image Compression": "JPEGLSNearLossless_16.dcm",
    "JPEG 2000 Image Compression (Lossless Only)": "MR_small_jp2klossless.dcm",
    "JPEG 2000 Image Compression": "693_J2KI.dcm",
    "RLE Lossless": "MR_small_RLE.dcm",
    "Deflated Explicit VR Little Endian": "image_dfl.dcm",
}


@pytest.mark.parametrize("name", sorted(REAL_SAMPLES))
def test_real_sample_of_each_syntax_decodes_with_the_project_dependencies(name: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(REAL_SAMPLES[name]))
    syntax = transfer_syntax(ds)
    assert syntax is not None and syntax.name == name
    assert missing_decoder(syntax) is None
    pixels = ds.pixel_array
    assert pixels.shape[:2] == (ds.Rows, ds.Columns) and np.ptp(pixels) > 0


def test_every_compressed_syntax_a_pacs_sends_has_an_installed_decoder() -> None:
    for syntax in DECODER_PACKAGES:  # HTJ2K included: pylibjpeg-openjpeg decodes it
        assert missing_decoder(syntax) is None, missing_decoder(syntax)


def test_a_syntax_nothing_decodes_is_refused_by_name(uncompressed: tuple[Path, Volume], tmp_path: Path) -> None:
    folder, _ = uncompressed
    target = tmp_path / "series"
    shutil.copytree(folder, target)
    part2 = UID("1.2.840.10008.1.2.4.92")  # JPEG 2000 Part 2 multi-component: no pydicom decoder exists
    for path in (p for p in target.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
        ds.file_meta.TransferSyntaxUID = part2
        ds.save_as(path, enforce_file_format=True)
    datasets, key = _series(target)
    with pytest.raises(SeriesRejected) as caught:
        series_to_volume(datasets, study_key=key)
    reason = caught.value.reason
    assert "JPEG 2000 Part 2 Multi-component" in reason and "1.2.840.10008.1.2.4.92" in reason
    assert "truncated" not in reason


def test_damaged_compressed_data_is_called_damaged_naming_the_syntax(
    uncompressed: tuple[Path, Volume], tmp_path: Path
) -> None:
    folder = _copy_in(uncompressed[0], RLELossless, tmp_path)
    datasets, key = _series(folder)
    victim = datasets[3]
    victim.PixelData = encapsulate([bytes(100)])  # a frame far too short: the data, not a codec, is wrong
    victim._pixel_array = None
    with pytest.raises(SeriesRejected) as caught:
        series_to_volume([copy.deepcopy(d) for d in datasets], study_key=key)
    assert "pixel data truncated or unreadable" in caught.value.reason
    assert "RLE Lossless (1.2.840.10008.1.2.5)" in caught.value.reason


def test_jpeg_lossless_without_gdcm_is_refused_naming_the_syntax_and_the_package(
    uncompressed: tuple[Path, Volume], tmp_path: Path
) -> None:
    """A real install without python-gdcm (the module made unimportable in a fresh interpreter): the
    JPEG Lossless SV1 series, the usual PACS archive syntax, is refused by name, not as unreadable."""
    folder = _copy_in(uncompressed[0], JPEGLosslessSV1, tmp_path)
    script = (
        "import sys; sys.modules['gdcm'] = None\n"
        "from pathlib import Path\n"
        "from neuroflow.core.dicom_io import FolderDicomSource\n"
        "from neuroflow.core.errors import SeriesRejected\n"
        "from neuroflow.core.series_volume import series_to_volume\n"
        f"source = FolderDicomSource(Path({str(folder)!r}))\n"
        "(study,) = source.index()[0].values()\n"
        "(series,) = study.series.values()\n"
        "try:\n"
        "    series_to_volume(source.read_instances(series), study_key='k')\n"
        "except SeriesRejected as error:\n"
        "    print(error.reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy(), check=True)
    reason = done.stdout.strip()
    assert "no decoder for JPEG Lossless, Non-Hierarchical, First-Order Prediction" in reason
    assert "(1.2.840.10008.1.2.4.70)" in reason and "install python-gdcm" in reason
    assert "truncated" not in reason
