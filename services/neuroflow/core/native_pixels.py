"""Uncompressed greyscale pixel data as an array, straight from its bytes.

pydicom's ``pixel_array`` builds a decode runner per instance: it reads some twenty Image Pixel attributes,
validates its options and the buffer, and copies the result, about a third of the time a series took to
convert. For the common case (little-endian native syntax, one sample, 8, 16 or 32 bits allocated, MONOCHROME)
the array is a view of the bytes with the header's type, which is what pydicom returns for it, unused high bits
corrected as pydicom corrects them. Anything else (compressed, big endian, colour, 1-bit, float pixels, a
length that does not match the header) is left to pydicom: :func:`native_pixels` answers None and the caller
decodes it the usual way, with pydicom's checks and messages."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from neuroflow.core import image_pixel_tags as tags

# Deflated datasets are inflated when read: their pixel data lies in memory as explicit little endian does.
_NATIVE_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})


def native_pixels(ds: Dataset) -> npt.NDArray[np.generic] | None:
    """``ds``'s stored values, shaped (rows, columns) or (frames, rows, columns) as pydicom shapes them, when its
    pixel data is uncompressed little-endian greyscale whose length the header accounts for; else None. The array
    may be a read-only view of the dataset's bytes."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in _NATIVE_LITTLE_ENDIAN:
        return None
    try:
        data = ds[tags.PIXEL_DATA].value if tags.PIXEL_DATA in ds else None
        rows, columns = _int(ds, tags.ROWS), _int(ds, tags.COLUMNS)
        frames = _int(ds, tags.NUMBER_OF_FRAMES, default=1) or 1
        samples = _int(ds, tags.SAMPLES_PER_PIXEL, default=1)
        photometric = (str(ds[tags.PHOTOMETRIC_INTERPRETATION].value).strip()
                       if tags.PHOTOMETRIC_INTERPRETATION in ds else "")
        allocated, stored = _int(ds, tags.BITS_ALLOCATED), _int(ds, tags.BITS_STORED)
        signed = _int(ds, tags.PIXEL_REPRESENTATION)
    except (KeyError, TypeError, ValueError):  # missing or unreadable: pydicom says what is wrong
        return None
    if (not isinstance(data, bytes) or samples != 1 or photometric not in _MONOCHROME
            or allocated not in (8, 16, 32) or not 1 <= stored <= allocated or signed not in (0, 1)
            or rows <= 0 or columns <= 0):
        return None
    count = rows * columns * frames
    if len(data) not in (count * allocated // 8, count * allocated // 8 + 1):  # + 1: the odd length's padding
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    array = np.frombuffer(data, dtype=dtype, count=count).reshape((rows, columns) if frames == 1
                                                                   else (frames, rows, columns))
    if stored < allocated:
        # As pydicom: the unused high bits are not data (PS3.5 8.1.1); shifting them out and back sign-extends a
        # signed value and clears them in an unsigned one.
        shift = allocated - stored
        array = np.right_shift(np.left_shift(array, shift), shift)
    return array


def _int(ds: Dataset, tag: int, default: int | None = None) -> int:
    value: Any = ds[tag].value if tag in ds else None
    if value is None or value == "":
        if default is None:
            raise KeyError(tag)
        return default
    return int(value)
