"""Re-encode files our writer made into the transfer syntaxes a PACS sends, with real encoders, so tests
convert series packed the way hospitals store them: RLE (pydicom), JPEG-LS (pyjpegls / CharLS), JPEG 2000
(pylibjpeg-openjpeg / OpenJPEG), HTJ2K lossless (imagecodecs / OpenJPH), JPEG Lossless processes 14 and 14 SV1
(GDCM) and deflate (zlib)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

LOSSLESS = (RLELossless, JPEGLSLossless, JPEG2000Lossless, HTJ2KLossless, JPEGLossless, JPEGLosslessSV1,
            DeflatedExplicitVRLittleEndian)
LOSSY = (JPEGLSNearLossless, JPEG2000)
NEAR_LOSSLESS_ERROR = 2  # JPEG-LS NEAR: no stored value moves by more than this
J2K_COMPRESSION_RATIO = 8.0


def recompress(path: Path, syntax: UID) -> None:
    """Rewrite the file at ``path`` in ``syntax`` (one of LOSSLESS or LOSSY), in place."""
    if syntax in (JPEGLossless, JPEGLosslessSV1):
        _gdcm_recompress(path, syntax)
        return
    ds = pydicom.dcmread(path)
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == JPEGLSNearLossless:
        ds.compress(syntax, jls_error=NEAR_LOSSLESS_ERROR)
    elif syntax == JPEG2000:
        ds.compress(syntax, j2k_cr=[J2K_COMPRESSION_RATIO])
    elif syntax == HTJ2KLossless:  # pydicom has no HTJ2K encoder; OpenJPH (imagecodecs) writes the codestream
        import imagecodecs

        ds.PixelData = encapsulate([bytes(imagecodecs.htj2k_encode(ds.pixel_array, reversible=True))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)


def _gdcm_recompress(path: Path, syntax: UID) -> None:
    import gdcm  # python-gdcm: the one maintained permissive JPEG Lossless encoder

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise ValueError(f"GDCM cannot read {path}")
    target = {JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
              JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1}[syntax]
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(target))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise ValueError(f"GDCM cannot encode {path} as {syntax.name}")
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(path))
    if not writer.Write():
        raise ValueError(f"GDCM cannot write {path}")
