"""Which compressed transfer syntaxes this installation decodes, and what to say when it cannot.

pydicom 3 picks a decoder plugin per transfer syntax from what is installed; neuroflow's dependencies
(pyproject.toml) bring one for every syntax a PACS sends. When one is missing anyway (a trimmed install,
a broken wheel) the refusal must name the transfer syntax and the package that decodes it, so nobody
mistakes a missing codec for a damaged file.
"""

from __future__ import annotations

from contextlib import suppress

from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

# The package(s) among neuroflow's dependencies that decode each compressed syntax, first choice first.
# Licences (all permissive; pylibjpeg-libjpeg is GPLv3 and deliberately not used): python-gdcm (GDCM,
# BSD-3-Clause; the wheel says Apache-2.0), pylibjpeg (MIT), pylibjpeg-openjpeg (MIT; OpenJPEG BSD-2-Clause),
# pylibjpeg-rle (MIT), pyjpegls (MIT; CharLS BSD-3-Clause), pillow (MIT-CMU), imagecodecs (BSD-3-Clause;
# libjpeg-turbo IJG/BSD-3-Clause/zlib), which decodes 12-bit JPEG Extended through our plugin (jpeg12_decoder).
DECODER_PACKAGES: dict[UID, tuple[str, ...]] = {
    JPEGBaseline8Bit: ("python-gdcm", "pillow"),
    JPEGExtended12Bit: ("imagecodecs (12-bit)", "python-gdcm (8-bit)"),
    JPEGLossless: ("python-gdcm",),
    JPEGLosslessSV1: ("python-gdcm",),
    JPEGLSLossless: ("pyjpegls", "python-gdcm"),
    JPEGLSNearLossless: ("pyjpegls", "python-gdcm"),
    JPEG2000Lossless: ("pylibjpeg with pylibjpeg-openjpeg", "python-gdcm"),
    JPEG2000: ("pylibjpeg with pylibjpeg-openjpeg", "python-gdcm"),
    HTJ2KLossless: ("pylibjpeg with pylibjpeg-openjpeg",),
    HTJ2KLosslessRPCL: ("pylibjpeg with pylibjpeg-openjpeg",),
    HTJ2K: ("pylibjpeg with pylibjpeg-openjpeg",),
    RLELossless: ("pydicom (built in)", "pylibjpeg with pylibjpeg-rle"),
}


_PLUGIN = "neuroflow-imagecodecs"
_PYDICOM_PLUGINS = {"gdcm": ("pydicom.pixels.decoders.gdcm", "_decode_frame"),
                    "pillow": ("pydicom.pixels.decoders.pillow", "_decode_frame")}


def register_plugins() -> None:
    """Put our JPEG Extended plugin first in pydicom's decoder for that syntax (idempotent): the only
    permissive one that decodes 12-bit, and tried first so pydicom does not log the others' refusals."""
    decoder = get_decoder(JPEGExtended12Bit)
    if _PLUGIN in decoder.available_plugins:
        return
    others = {name: _PYDICOM_PLUGINS[name] for name in decoder.available_plugins if name in _PYDICOM_PLUGINS}
    for name in others:
        decoder.remove_plugin(name)
    with suppress(ValueError):  # registered before and unavailable (no imagecodecs): pydicom keeps it as missing
        decoder.add_plugin(_PLUGIN, ("neuroflow.core.jpeg12_decoder", "decode_frame"))
    for name, path in others.items():
        decoder.add_plugin(name, path)


def transfer_syntax(ds: Dataset) -> UID | None:
    """The dataset's transfer syntax as read (None for a dataset that was never a file)."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(value)) if value else None


def describe(uid: UID) -> str:
    """'JPEG Lossless, ... (1.2.840.10008.1.2.4.70)': the name a person knows, and the UID to look up."""
    return f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)


def missing_decoder(uid: UID | None) -> str | None:
    """None when pixel data in ``uid`` can be decoded here; otherwise why not, naming the transfer syntax
    and what would decode it. Uncompressed and deflated syntaxes need no codec (deflate is undone on read)."""
    if uid is None or not uid.is_compressed or uid == DeflatedExplicitVRLittleEndian:
        return None
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"{describe(uid)} is a transfer syntax no installed decoder supports (pydicom has no decoder for it)"
    if decoder.is_available:
        return None
    packages = " or ".join(DECODER_PACKAGES.get(uid, ("a pydicom decoder plugin",)))
    return f"no decoder for {describe(uid)} is installed: install {packages}"


register_plugins()
