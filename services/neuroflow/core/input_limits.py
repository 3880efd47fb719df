"""Input limits, checked from DICOM headers before any pixel data is decoded.

A compressed file states its image size in its header and the decoder allocates what the header says: a
724-byte RLE file claiming 60000 x 60000 pixels makes pydicom allocate 6.7 GiB. Every series a worker
reads is therefore sized from its headers first (Rows*Columns*SamplesPerPixel*BitsAllocated/8 per frame,
times NumberOfFrames) against ``InputLimitSettings``, and refused (``InputLimitExceeded``, bad input, not
retryable) when it is over; a header whose sizes cannot be read is refused as ``SeriesRejected``. The
sources call :func:`check_series` in ``read_instances``, so both runtimes check before decoding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from neuroflow.core.config import InputLimitSettings
from neuroflow.core.errors import InputLimitExceeded, SeriesRejected

# The environment variable of each limit, named in refusals so an operator knows what to raise.
_ENV = "NEUROFLOW_LIMITS__"


def decoded_bytes(ds: Dataset, limits: InputLimitSettings, *, study_key: str, stage: str, source: str) -> int:
    """The size of ``ds``'s pixel data once decoded, from its header (0 for an object without an image).

    Refuses (InputLimitExceeded) a frame over ``max_pixels_per_frame`` and more frames than
    ``max_frames_per_instance``; refuses (SeriesRejected) sizes that are missing, negative or unreadable in an
    object that holds pixel data. ``source`` names the file or instance in the messages."""
    series_uid = _series_uid(ds)
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels and "Rows" not in ds and "Columns" not in ds:
        return 0

    def number(keyword: str, default: int | None) -> int:
        try:
            value: Any = ds.get(keyword)
            if value is None or value == "":
                if default is None:
                    raise ValueError("missing")
                return default
            result = int(value)
        except Exception as exc:  # pydicom converts lazily: a damaged element raises on access
            raise SeriesRejected(study_key, f"{source} has no readable {keyword} ({_brief(exc)}): its pixel "
                                            "data cannot be sized", stage=stage, series_uid=series_uid) from None
        if result < 0:
            raise SeriesRejected(study_key, f"{source} has {keyword} {result}: must not be negative",
                                 stage=stage, series_uid=series_uid)
        return result

    rows, columns = number("Rows", None), number("Columns", None)
    samples, bits = number("SamplesPerPixel", 1), number("BitsAllocated", None if has_pixels else 16)
    frames = number("NumberOfFrames", 1) or 1  # 0 and empty mean one frame, as pydicom reads them
    pixels = rows * columns
    if pixels > limits.max_pixels_per_frame:
        raise InputLimitExceeded(
            study_key, f"{source} claims {rows} x {columns} = {pixels} pixels per frame, over the limit of "
                       f"{limits.max_pixels_per_frame} ({_ENV}MAX_PIXELS_PER_FRAME)",
            limit="max_pixels_per_frame", stage=stage, series_uid=series_uid)
    if frames > limits.max_frames_per_instance:
        raise InputLimitExceeded(
            study_key, f"{source} claims {frames} frames, over the limit of {limits.max_frames_per_instance} "
                       f"({_ENV}MAX_FRAMES_PER_INSTANCE)",
            limit="max_frames_per_instance", stage=stage, series_uid=series_uid)
    return math.ceil(pixels * samples * bits * frames / 8)


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
