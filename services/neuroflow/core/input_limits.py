"""Input limits, checked from DICOM headers before any pixel data is decoded.

A compressed file states its image size in its header and the decoder allocates what the header says: a
724-byte RLE file claiming 60000 x 60000 pixels makes pydicom allocate 6.7 GiB. Every series a worker
reads is therefore sized from its headers first (Rows*Columns*SamplesPerPixel*BitsAllocated/8 per frame,
times NumberOfFrames) against ``InputLimitSettings``, and refused (``InputLimitExceeded``, bad input, not
retryable) when it is over; a header whose sizes cannot be read is refused as ``SeriesRejected``. The
sources call :func:`check_series` in ``read_instances``, so both runtimes check before decoding."""

from __future__ import annotations

import math
import struct
import threading
import zlib
from collections.abc import Sequence
from typing import Any, BinaryIO

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels.utils import _get_jpg_parameters
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)
from pydicom.valuerep import VR

from neuroflow.core import image_pixel_tags as tags
from neuroflow.core.config import InputLimitSettings
from neuroflow.core.errors import InputLimitExceeded, SeriesRejected
from neuroflow.core.pixel_codecs import missing_decoder

# The environment variable of each limit, named in refusals so an operator knows what to raise.
_ENV = "NEUROFLOW_LIMITS__"
_INFLATE_STEP = 4 * 1024**2
_META_START = 132  # the 128-byte preamble and "DICM"
_MAX_META_ELEMENT_BYTES = 64 * 1024  # a file meta group holds a few hundred bytes
_KNOWN_VRS = frozenset(vr.value for vr in VR)
# Explicit VRs whose length takes 4 bytes after 2 reserved ones (PS3.5 7.1.2); the others' takes 2.
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_JPEG_SYNTAXES = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes)
_J2K_SYNTAXES = frozenset(JPEG2000TransferSyntaxes)
_SOI, _SOC, _SIZ = b"\xff\xd8", b"\xff\x4f", b"\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def decoded_bytes(ds: Dataset, limits: InputLimitSettings, *, study_key: str, stage: str, source: str) -> int:
    """The size of ``ds``'s pixel data once decoded, from its header (0 for an object without an image).

    Refuses (InputLimitExceeded) a frame over ``max_pixels_per_frame`` and more frames than
    ``max_frames_per_instance``; refuses (SeriesRejected) sizes that are missing, negative or unreadable in an
    object that holds pixel data. ``source`` names the file or instance in the messages."""
    # By tag (image_pixel_tags): this runs twice for every instance read.
    has_pixels = any(tag in ds for tag in tags.PIXEL_DATA_TAGS)
    if not has_pixels and tags.ROWS not in ds and tags.COLUMNS not in ds:
        return 0

    def number(tag: int, default: int | None) -> int:
        try:
            value: Any = ds[tag].value if tag in ds else None
            if value is None or value == "":
                if default is None:
                    raise ValueError("missing")
                return default
            result = int(value)
        except Exception as exc:  # pydicom converts lazily: a damaged element raises on access
            raise SeriesRejected(
                study_key, f"{source} has no readable {keyword_for_tag(tag)} ({_brief(exc)}): its pixel data cannot be "
                           "sized", stage=stage, series_uid=_series_uid(ds)) from None
        if result < 0:
            raise SeriesRejected(study_key, f"{source} has {keyword_for_tag(tag)} {result}: must not be negative",
                                 stage=stage, series_uid=_series_uid(ds))
        return result

    rows, columns = number(tags.ROWS, None), number(tags.COLUMNS, None)
    samples, bits = number(tags.SAMPLES_PER_PIXEL, 1), number(tags.BITS_ALLOCATED, None if has_pixels else 16)
    frames = number(tags.NUMBER_OF_FRAMES, 1) or 1  # 0 and empty mean one frame, as pydicom reads them
    pixels = rows * columns
    if pixels > limits.max_pixels_per_frame:
        raise InputLimitExceeded(
            study_key, f"{source} claims {rows} x {columns} = {pixels} pixels per frame, over the limit of "
                       f"{limits.max_pixels_per_frame} ({_ENV}MAX_PIXELS_PER_FRAME)",
            limit="max_pixels_per_frame", stage=stage, series_uid=_series_uid(ds))
    if frames > limits.max_frames_per_instance:
        raise InputLimitExceeded(
            study_key, f"{source} claims {frames} frames, over the limit of {limits.max_frames_per_instance} "
                       f"({_ENV}MAX_FRAMES_PER_INSTANCE)",
            limit="max_frames_per_instance", stage=stage, series_uid=_series_uid(ds))
    problem = _codestream_problem(ds, rows, columns, frames)
    if problem is not None:
        raise SeriesRejected(study_key, f"pixel data in {source} cannot be decoded safely: {problem}", stage=stage,
                             series_uid=_series_uid(ds))
    return math.ceil(pixels * samples * bits * frames / 8)


def _codestream_problem(ds: Dataset, rows: int, columns: int, frames: int) -> str | None:
    """Why the compressed frames of ``ds`` do not match its header (None when they do, or are not JPEG).

    A JPEG, JPEG-LS or JPEG 2000 decoder sizes its output from the codestream's own header, not the DICOM
    one, and GDCM aborts the whole process (SIGABRT, no exception) when the two disagree: so each frame's
    codestream header is read first and must state the header's Rows and Columns."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID", "") if meta is not None else ""
    syntax = value if isinstance(value, UID) else UID(str(value))  # pydicom reads it as a UID already
    if (syntax not in _JPEG_SYNTAXES and syntax not in _J2K_SYNTAXES) or tags.PIXEL_DATA not in ds:
        return None
    if missing_decoder(syntax) is not None:  # no decoder will see it: conversion refuses it naming the syntax
        return None
    try:
        fragments = list(generate_fragments(ds.PixelData))
    except Exception as exc:
        return f"encapsulated pixel data unreadable ({_brief(exc)})"
    starts = 0
    for fragment in fragments:
        size: tuple[int, int] | None
        if syntax in _JPEG_SYNTAXES and fragment[:2] == _SOI:
            info = _get_jpg_parameters(fragment)
            size = (info["height"], info["width"]) if info else None
        elif syntax in _J2K_SYNTAXES and (fragment[:2] == _SOC or fragment[:12] == _JP2_SIGNATURE):
            size = _j2k_size(fragment)
        else:
            continue  # a frame's continuation fragment
        starts += 1
        if size is None:
            return "a frame's codestream header cannot be read"
        if size != (rows, columns):
            return f"a frame's codestream is {size[0]} x {size[1]} pixels, the header says {rows} x {columns}"
    if starts < frames:
        return f"{starts} of {frames} frames start a {syntax.name} codestream"
    return None


def _j2k_size(fragment: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG 2000 codestream's SIZ segment (inside a JP2 file, too)."""
    start = fragment.find(_SOC + _SIZ)
    if start < 0 or len(fragment) < start + 24:
        return None
    width, height, x_offset, y_offset = struct.unpack(">IIII", fragment[start + 8:start + 24])
    return height - y_offset, width - x_offset


def max_dataset_bytes(limits: InputLimitSettings) -> int:
    """The most one series may take in memory as read (its files, deflated datasets inflated): a series'
    worth of pixel data and room for the headers."""
    return limits.max_series_bytes + 16 * 1024**2


class ReadBudget:
    """What is left of :func:`max_dataset_bytes` while one series is read. Thread-safe (the Orthanc source
    downloads in parallel)."""

    def __init__(self, limits: InputLimitSettings) -> None:
        self.limit = max_dataset_bytes(limits)
        self._used = 0
        self._lock = threading.Lock()

    def remaining(self) -> int:
        with self._lock:
            return max(0, self.limit - self._used)

    def take(self, nbytes: int) -> bool:
        """Counts ``nbytes``; False when the series is now over its budget."""
        with self._lock:
            self._used += nbytes
            return self._used <= self.limit


def dataset_bytes(fp: BinaryIO, limit: int) -> tuple[int, bool]:
    """(bytes the Part-10 file ``fp`` takes once read, whether it is deflated); leaves ``fp`` at its start.

    pydicom inflates a deflated dataset whole before reading any of it (even headers only), so a small file
    can hold a zip bomb: 1 MB deflated takes 1 GB. Its size is measured by inflating in steps, never more than
    a few MiB at a time, and counting stops past ``limit`` (the count is then ``limit + 1``). Any other file
    takes its length. A file whose meta information cannot be read is left to pydicom to refuse."""
    length = fp.seek(0, 2)
    fp.seek(0)
    try:
        syntax = _meta_transfer_syntax(fp)
        if syntax is not None and syntax != DeflatedExplicitVRLittleEndian:
            return length, False  # the common case, read from the bytes: pydicom's meta parse costs more
        fp.seek(0)
        if read_preamble(fp, False) is None:
            return length, False
        if _read_file_meta_info(fp).get("TransferSyntaxUID", "") != DeflatedExplicitVRLittleEndian:
            return length, False
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = fp.tell()
        while pending := fp.read(_INFLATE_STEP):
            while pending and inflated <= limit:  # at most one step of output held at a time
                inflated += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
            if inflated > limit:
                return limit + 1, True
        return inflated, True
    except Exception:
        return length, False  # meta information or deflate data pydicom cannot read either: it refuses the file
    finally:
        fp.seek(0)


def _meta_transfer_syntax(fp: BinaryIO) -> str | None:
    """The transfer syntax UID of a Part-10 file's meta information, read element by element from the bytes as
    pydicom reads them (explicit VR little endian, while the group is 0002); None, for pydicom to read it, when the
    file does not look so (no "DICM", an unknown VR, a truncated or implausibly long element) or names none."""
    if fp.read(_META_START)[128:] != b"DICM":
        return None
    syntax: str | None = None
    while len(start := fp.read(8)) == 8:
        group, element = struct.unpack("<HH", start[:4])
        if group != 0x0002:
            break
        vr = start[4:6].decode("ascii", "replace")
        if vr not in _KNOWN_VRS:
            return None
        if vr in _LONG_LENGTH_VRS:
            extra = fp.read(4)
            if len(extra) < 4:
                return None
            (length,) = struct.unpack("<I", extra)
        else:
            (length,) = struct.unpack("<H", start[6:8])
        if length > _MAX_META_ELEMENT_BYTES:
            return None
        value = fp.read(length)
        if len(value) < length:
            return None
        if element == 0x0010:
            syntax = value.rstrip(b"\0 ").decode("ascii", "replace")
    return syntax


def check_series(headers: Sequence[Dataset], limits: InputLimitSettings, *, study_key: str, stage: str,
                 sources: Sequence[str] | None = None) -> int:
    """Checks every instance of one series (:func:`decoded_bytes`) and their decoded total against
    ``max_series_bytes``; returns the total. ``sources`` name the instances (paths, URLs) in messages."""
    total = 0
    last: Dataset | None = None
    for index, ds in enumerate(headers):
        source = sources[index] if sources is not None and index < len(sources) else _source_of(ds)
        total += decoded_bytes(ds, limits, study_key=study_key, stage=stage, source=source)
        last = ds
    if total > limits.max_series_bytes and last is not None:
        raise InputLimitExceeded(
            study_key, f"the series' {len(headers)} instances decode to {_gib(total)} GiB of pixel data "
                       f"({total} bytes), over the limit of {limits.max_series_bytes} bytes "
                       f"({_ENV}MAX_SERIES_BYTES)",
            limit="max_series_bytes", stage=stage, series_uid=_series_uid(last))
    return total


def check_study_size(study_key: str, instance_count: int, limits: InputLimitSettings, *, stage: str) -> None:
    """Refuses (InputLimitExceeded) a study of more than ``max_instances_per_study`` instances."""
    if instance_count > limits.max_instances_per_study:
        raise InputLimitExceeded(
            study_key, f"the study holds {instance_count} instances, over the limit of "
                       f"{limits.max_instances_per_study} ({_ENV}MAX_INSTANCES_PER_STUDY)",
            limit="max_instances_per_study", stage=stage)


def _series_uid(ds: Dataset) -> str | None:
    try:
        return str(ds.get("SeriesInstanceUID", "")) or None
    except Exception:
        return None


def _source_of(ds: Dataset) -> str:
    filename = getattr(ds, "filename", None)
    if isinstance(filename, str) and filename:
        return f"file {filename}"
    try:
        return f"instance {ds.get('SOPInstanceUID', '(no SOP Instance UID)')}"
    except Exception:
        return "an instance without a readable SOP Instance UID"


def _brief(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f}"
