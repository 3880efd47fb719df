"""A pydicom decoder plugin for JPEG Extended (process 2 and 4) through imagecodecs' libjpeg-turbo 3.

12-bit JPEG Extended (lossy CT and NM in older archives) has no permissive pydicom plugin: pillow and the
python-gdcm build refuse 12-bit samples, and pylibjpeg-libjpeg is GPLv3. libjpeg-turbo 3 decodes 8- and
12-bit JPEG (imagecodecs, BSD-3-Clause; libjpeg-turbo: IJG/BSD-3-Clause/zlib). pixel_codecs registers this
module with pydicom's JPEG Extended decoder; the interface is pydicom's decoder-plugin one."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.uid import JPEGExtended12Bit

DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("imagecodecs",)}


def is_available(uid: str) -> bool:
    """Whether imagecodecs (with its JPEG 8/12-bit codec) is importable, for the syntaxes we decode."""
    if uid not in DECODER_DEPENDENCIES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG8.available)


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One frame's samples, native byte order, as pydicom's runner expects them."""
    import imagecodecs

    frame = np.asarray(imagecodecs.jpeg8_decode(src, colorspace=None, outcolorspace=None))
    if runner.samples_per_pixel > 1:
        runner.set_option("planar_configuration", 0)  # libjpeg returns colour by pixel
    bits = 8 if frame.dtype.itemsize == 1 else 16
    runner.set_option("bits_allocated", bits)
    return frame.astype(np.uint8 if bits == 8 else np.uint16, copy=False).tobytes()
