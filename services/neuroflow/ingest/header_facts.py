"""The facts routing reads from one series' DICOM header, read defensively.

Headers from the field are untidy: tags go missing, numbers arrive as junk strings, descriptions come
in odd character sets or as several values, vendors hide the b-value in private tags, enhanced
(multi-frame) objects keep the timing in functional groups. ``read_facts`` turns all of that into one
typed record and never raises on a header: a tag it cannot read is simply absent (``None`` or empty).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from neuroflow.core.private_tags import GE_B_VALUE, PHILIPS_B_VALUE, SIEMENS_B_VALUE, PrivateTag

# Vendor private tags holding the diffusion b-value, read through their private creator block (so a
# block placed elsewhere is still found, and another creator's element at the usual number is not read).
_PRIVATE_B_VALUE_TAGS: tuple[PrivateTag, ...] = (SIEMENS_B_VALUE, GE_B_VALUE, PHILIPS_B_VALUE)
_GE_B_VALUE_OFFSET = 1_000_000_000
# Siemens writes the b-value(s) into the sequence name: "*ep_b1000t", "*ep_b0_1000" (ADC).
_SEQUENCE_NAME_B_VALUES = re.compile(r"ep_b(\d+)(?:_(\d+))?")
# Enhanced MR keeps acquisition parameters in functional-group sequences instead of the top level.
_FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
_NO_AGENT = {"", "none", "no", "n/a", "na", "nil", "0", "-", "keine", "kein", "nein"}


@dataclass(frozen=True)
class HeaderFacts:
    """What routing needs to know about one series. Text is as written (stripped); numbers are in the
    DICOM units (ms, degrees, mm, s/mm², mL) or ``None`` when absent or unreadable."""

    series_instance_uid: str = ""
    series_number: int | None = None
    modality: str = ""
    manufacturer: str = ""
    station_name: str = ""
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    image_type: tuple[str, ...] = ()
    # Enhanced MR says magnitude or phase here (MAGNITUDE, PHASE, REAL, IMAGINARY, MIXED), not in ImageType.
    complex_image_component: str = ""
    photometric_interpretation: str = ""  # RGB, YBR_*, PALETTE COLOR: a colour image (fused or parametric map)
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    mr_acquisition_type: str = ""
    repetition_time_ms: float | None = None
    echo_time_ms: float | None = None
    inversion_time_ms: float | None = None
    flip_angle_deg: float | None = None
    slice_thickness_mm: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None  # (between rows, between columns)
    b_values: tuple[float, ...] = ()
    contrast_agent: str = ""
    contrast_route: str = ""
    contrast_volume_ml: float | None = None
    acquired_at: str = ""  # "YYYYMMDD HHMMSS.ffffff" (sortable) when date and time are known, else ""
    instance_count: int = 0

    @property
    def is_gradient_echo(self) -> bool:
        return "GR" in self.scanning_sequence

    @property
    def is_echo_planar(self) -> bool:
        return "EP" in self.scanning_sequence

    @property
    def is_inversion_recovery(self) -> bool:
        return "IR" in self.scanning_sequence or self.inversion_time_ms is not None


def read_facts(header: Dataset, instance_count: int, others: Sequence[Dataset] = ()) -> HeaderFacts:
    """The facts of a series from its representative (first) header.

    ``instance_count`` is the number of instances (files) in the series; an enhanced multi-frame object
    counts its frames instead. ``others`` are the remaining headers of the series, read only for what
    differs between instances (b-values: b0 and b1000 images often share one series). Never raises.
    """
    sequence_name = text(header, "SequenceName")
    b_values = sorted({b for ds in (header, *others) for b in _b_values(ds, sequence_name)})
    frames = _number(header, "NumberOfFrames")
    count = max(instance_count, int(frames)) if frames is not None and instance_count <= 1 else instance_count
    agent = text(header, "ContrastBolusAgent") or _nested_text(
        header, "ContrastBolusAgentSequence", "CodeMeaning"
    )
    return HeaderFacts(
        series_instance_uid=text(header, "SeriesInstanceUID"),
        series_number=_integer(header, "SeriesNumber"),
        modality=text(header, "Modality").upper(),
        manufacturer=text(header, "Manufacturer"),
        station_name=text(header, "StationName"),
        series_description=text(header, "SeriesDescription"),
        protocol_name=text(header, "ProtocolName"),
        sequence_name=sequence_name,
        image_type=_codes(header, "ImageType") or _codes_nested(header, "FrameType"),
        complex_image_component=(
            text(header, "ComplexImageComponent") or _nested_text(header, "ComplexImageComponent")
        ).upper(),
        photometric_interpretation=text(header, "PhotometricInterpretation").upper(),
        scanning_sequence=_codes(header, "ScanningSequence"),
        sequence_variant=_codes(header, "SequenceVariant"),
        mr_acquisition_type=(
            text(header, "MRAcquisitionType") or _nested_text(header, "MRAcquisitionType")
        ).upper(),
        repetition_time_ms=_positive(header, "RepetitionTime"),
        echo_time_ms=_positive(header, "EchoTime") or _positive_nested(header, "EffectiveEchoTime"),
        inversion_time_ms=_positive(header, "InversionTime") or _positive_nested(header, "InversionTimes"),
        flip_angle_deg=_positive(header, "FlipAngle"),
        slice_thickness_mm=_positive(header, "SliceThickness") or _positive_nested(header, "SliceThickness"),
        pixel_spacing_mm=_pixel_spacing(header),
        b_values=tuple(b_values),
        contrast_agent="" if agent.strip().lower() in _NO_AGENT else agent,
        contrast_route=text(header, "ContrastBolusRoute"),
        contrast_volume_ml=_positive(header, "ContrastBolusVolume"),
        acquired_at=_acquired_at(header),
        instance_count=count,
    )


def text(ds: Dataset, keyword: str) -> str:
    """A text attribute as one clean string: several values joined by spaces, bytes decoded as
    Latin-1 (it maps every byte), control characters and the replacement character dropped, ""
    when missing or unreadable."""
    return _clean(_get(ds, keyword))


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        parts: Iterable[Any] = [value]
    elif isinstance(value, Iterable):
        parts = value
    else:
        parts = [value]
    joined = " ".join(p.decode("latin-1") if isinstance(p, bytes) else str(p) for p in parts)
    return "".join(c for c in joined if c.isprintable() and c != "\ufffd").strip()


def _get(ds: Dataset, keyword: str) -> Any:
    # pydicom converts values lazily, so a damaged element raises on access, not on reading.
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _codes(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = _get(ds, keyword)
    if value is None:
        return ()
    raw = (
        [value] if isinstance(value, str | bytes) else list(value) if isinstance(value, Iterable) else [value]
    )
    codes: list[str] = []
    for item in raw:
        codes.extend(c.strip().upper() for c in re.split(r"[\\]", _clean(item)) if c.strip())
    return tuple(codes)


def _number_from(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        decoded = value.decode("latin-1").strip("\x00 ")
        if re.fullmatch(r"[-+0-9.eE\\ ]+", decoded or "x"):
            value = decoded
        elif len(value) == 4:  # a binary float (FL) read without a dictionary entry
            value = struct.unpack("<f", value)[0]
        else:
            return None
    if isinstance(value, str):
        match = re.search(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", value)
        return float(match.group()) if match else None
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Iterable):  # several values (multi-echo TE): the first readable one
        for item in value:
            found = _number_from(item)
            if found is not None:
                return found
    return None


def _number(ds: Dataset, keyword: str) -> float | None:
    try:
        return _number_from(_get(ds, keyword))
    except Exception:
        return None


def _positive(ds: Dataset, keyword: str) -> float | None:
    # Scanners write 0 for "not applicable" (InversionTime 0 on a spin echo): that is not a value.
    number = _number(ds, keyword)
    return number if number is not None and number > 0 else None


def _integer(ds: Dataset, keyword: str) -> int | None:
    number = _number(ds, keyword)
    return int(number) if number is not None else None


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing (top level, or an enhanced object's PixelMeasuresSequence), both values positive."""
    for item in (ds, *_walk_groups(ds)):
        try:
            value = _get(item, "PixelSpacing")
            rows, columns = (_number_from(v) for v in value) if value is not None else (None, None)
        except Exception:  # not two values
            continue
        if rows is not None and columns is not None and rows > 0 and columns > 0:
            return rows, columns
    return None


def _walk_groups(ds: Dataset) -> Iterable[Dataset]:
    """The first item of every functional-group macro of an enhanced object (shared first)."""
    for group_keyword in _FUNCTIONAL_GROUPS:
        groups = _get(ds, group_keyword)
        if not groups:
            continue
        try:
            first = groups[0]
            for element in first:
                if element.VR == "SQ" and element.value:
                    yield element.value[0]
        except Exception:
            continue


def _positive_nested(ds: Dataset, keyword: str) -> float | None:
    for item in _walk_groups(ds):
        number = _positive(item, keyword)
        if number is not None:
            return number
    return None


def _nested_text(ds: Dataset, keyword: str, inner: str | None = None) -> str:
    if inner is not None:  # a code sequence at the top level, e.g. ContrastBolusAgentSequence
        items = _get(ds, keyword)
        try:
            return _clean(items[0].get(inner)) if items else ""
        except Exception:
            return ""
    for item in _walk_groups(ds):
        found = text(item, keyword)
        if found:
            return found
    return ""


def _codes_nested(ds: Dataset, keyword: str) -> tuple[str, ...]:
    for item in _walk_groups(ds):
        found = _codes(item, keyword)
        if found:
            return found
    return ()


def _b_values(ds: Dataset, sequence_name: str) -> list[float]:
    found: list[float] = []
    public = _number(ds, "DiffusionBValue")
    if public is None:
        for item in _walk_groups(ds):
            public = _number(item, "DiffusionBValue")
            if public is not None:
                break
    if public is not None:
        found.append(public)
    for tag in _PRIVATE_B_VALUE_TAGS:
        try:
            value = _number_from(tag.value(ds))
        except Exception:
            value = None
        if value is not None:
            found.append(value % _GE_B_VALUE_OFFSET if tag is GE_B_VALUE else value)
    match = _SEQUENCE_NAME_B_VALUES.search(sequence_name.lower())
    if match:
        found.extend(float(g) for g in match.groups() if g is not None)
    return [b for b in found if 0 <= b < 100_000]


def _acquired_at(ds: Dataset) -> str:
    """When the series was acquired, as a sortable string: acquisition first (a reformat made later
    keeps it), then series, then content date and time."""
    for date_keyword, time_keyword in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("SeriesDate", "SeriesTime"),
        ("ContentDate", "ContentTime"),
    ):
        clock = _normalised_time(text(ds, time_keyword))
        if clock:
            date = re.sub(r"\D", "", text(ds, date_keyword) or text(ds, "StudyDate"))[:8]
            return f"{date or '00000000'} {clock}"
    datetime = re.sub(r"[^\d.]", "", text(ds, "AcquisitionDateTime"))
    if len(datetime) >= 12:
        return f"{datetime[:8]} {_normalised_time(datetime[8:])}"
    return ""


def _normalised_time(value: str) -> str:
    """DICOM TM ("HHMMSS.ffffff", older "HH:MM:SS", or truncated "HHMM") as fixed-width "HHMMSS.ffffff"."""
    match = re.fullmatch(r"(\d{2}):?(\d{2})?:?(\d{2})?(?:\.(\d{1,6}))?", value.strip())
    if not match:
        return ""
    hours, minutes, seconds, fraction = match.groups()
    return f"{hours}{minutes or '00'}{seconds or '00'}.{(fraction or '').ljust(6, '0')}"
