"""The Image Pixel module's elements (PS3.3 C.7.6.3) by tag, for the code that reads them once per instance: a
keyword costs pydicom a dictionary look-up and a Tag on every access, a tag does not."""

from __future__ import annotations

from pydicom.tag import Tag

PIXEL_DATA = Tag("PixelData")
# Every element that can hold an image's pixels: integer, float and double float.
PIXEL_DATA_TAGS = (PIXEL_DATA, Tag("FloatPixelData"), Tag("DoubleFloatPixelData"))
ROWS, COLUMNS = Tag("Rows"), Tag("Columns")
NUMBER_OF_FRAMES = Tag("NumberOfFrames")
SAMPLES_PER_PIXEL = Tag("SamplesPerPixel")
PHOTOMETRIC_INTERPRETATION = Tag("PhotometricInterpretation")
BITS_ALLOCATED, BITS_STORED = Tag("BitsAllocated"), Tag("BitsStored")
PIXEL_REPRESENTATION = Tag("PixelRepresentation")
