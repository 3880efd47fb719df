"""Uncompressed greyscale pixel data read straight from its bytes gives exactly what pydicom's decoder gives
(values, type and shape), unused high bits included, and everything else is left to pydicom. Files are written
and read back, as a source hands them over."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from neuroflow.core.native_pixels import native_pixels

ROWS, COLUMNS = 5, 7


def _image(allocated: int, stored: int, signed: int, *, frames: int = 1, photometric: str = "MONOCHROME2",
           samples: int = 1, seed: int = 0) -> Dataset:
    """An image whose every byte is random, unused high bits included (PS3.5 8.1.1: they are not data)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, stored, stored - 1, signed
    if frames > 1:
        ds.NumberOfFrames = frames
    size = ROWS * COLUMNS * frames * samples * allocated // 8
    data = np.random.default_rng(seed).integers(0, 256, size + size % 2, dtype=np.uint8).tobytes()
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    return ds


def _read_back(ds: Dataset, syntax: UID = ExplicitVRLittleEndian) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian],
                         ids=["explicit", "implicit", "deflated"])
@pytest.mark.parametrize(("allocated", "stored", "signed"), [
    (16, 16, 1), (16, 16, 0), (16, 12, 1), (16, 12, 0), (8, 8, 0), (8, 7, 1), (32, 32, 1), (32, 20, 0), (32, 24, 1),
])
def test_the_values_are_pydicoms(syntax: UID, allocated: int, stored: int, signed: int) -> None:
    ds = _read_back(_image(allocated, stored, signed), syntax)
    ours, theirs = native_pixels(ds), pixel_array(ds)
    assert ours is not None
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == (ROWS, COLUMNS)
    assert np.array_equal(ours, theirs)
    if stored < allocated:  # the random high bits were set somewhere, so the correction did something
        raw = np.frombuffer(ds.PixelData, dtype=ours.dtype, count=ROWS * COLUMNS).reshape(ROWS, COLUMNS)
        assert not np.array_equal(ours, raw)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_frames_and_the_odd_length_padding(photometric: str) -> None:
    """Three frames of 5 x 7 bytes: 105 bytes, padded to 106 in the file."""
    ds = _read_back(_image(8, 8, 0, frames=3, photometric=photometric))
    assert len(ds.PixelData) == ROWS * COLUMNS * 3 + 1
    ours, theirs = native_pixels(ds), pixel_array(ds)
    assert ours is not None and ours.shape == theirs.shape == (3, ROWS, COLUMNS)
    assert np.array_equal(ours, theirs)


def test_what_it_leaves_to_pydicom() -> None:
    assert native_pixels(_read_back(_image(16, 16, 1), ExplicitVRBigEndian)) is None
    assert native_pixels(_read_back(_image(8, 8, 0, samples=3, photometric="RGB"))) is None
    truncated = _read_back(_image(16, 16, 1))
    truncated.PixelData = truncated.PixelData[:-10]
    assert native_pixels(truncated) is None
    with pytest.raises(ValueError):  # pydicom's decoder refuses it with its own message
        pixel_array(truncated)
    no_bits_stored = _read_back(_image(16, 16, 1))
    del no_bits_stored.BitsStored
    assert native_pixels(no_bits_stored) is None
    rle = _read_back(_image(16, 16, 1))
    rle.file_meta.TransferSyntaxUID = RLELossless
    rle.PixelData = encapsulate([b"\x00" * 64])
    assert native_pixels(rle) is None
    never_a_file = _image(16, 16, 1)
    del never_a_file.file_meta
    assert native_pixels(never_a_file) is None
