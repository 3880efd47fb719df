"""Several volumes in one series: which frames belong to which volume.

Scanners put echoes, dynamics, diffusion b-values and gradient directions, repeated acquisitions and
stacks into one series. Their slices then share positions, and a series is one volume only when no two
frames lie at one place. ``split_frames`` looks at what tells the frames apart (``frame_keys``: echo
number and time, temporal position, acquisition number, stack, b-value, gradient direction, an enhanced
object's dimension index values) and splits on the keys that vary *and* explain the shared positions,
dropping every key the split does not need (a Siemens DWI numbers each volume's acquisition too; the
b-value and direction say more). A series nothing explains stays one group, for conversion to refuse
as duplicate slice positions."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from neuroflow.core import mosaic
from neuroflow.core.private_tags import SIEMENS_MR_CREATORS, PrivateBlocks

# What may tell one volume's frames from another's, most meaningful first: that order decides which of
# several redundant keys names the volumes, and the labels ("b=1000,dir=2", "echo=2").
SPLIT_KEYS = ("b", "dir", "echo", "te", "stack", "time", "image", "acq")
KEY_NAMES = {
    "b": "b-value",
    "dir": "diffusion gradient direction",
    "echo": "echo number",
    "te": "echo time",
    "stack": "stack",
    "time": "temporal position",
    "acq": "acquisition number",
    "image": "mosaic image",
}
# Dimension index pointers that order frames within one volume rather than tell volumes apart.
_WITHIN_VOLUME_DIMENSIONS = {"InStackPositionNumber", "ImagePositionPatient", "SliceLocation"}
# An enhanced object's dimensions, named as the classic key that means the same.
_DIMENSION_KEYS = {
    "StackID": "stack",
    "TemporalPositionIndex": "time",
    "TemporalPositionIdentifier": "time",
    "EffectiveEchoTime": "te",
    "EchoNumbers": "echo",
    "DiffusionBValue": "b",
    "DiffusionGradientOrientation": "dir",
}
_GE_B_VALUE_OFFSET = 1_000_000_000
_POSITION_TOLERANCE_MM = 0.01
_POSITION_TOLERANCE_FRACTION = 0.01
_ORIENTATION_DECIMALS = 3


@dataclass(frozen=True)
class FrameLocation:
    """Where one frame (slice) lies and what tells its volume apart."""

    position: tuple[float, float, float]  # ImagePositionPatient, LPS mm
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosines, column cosines
    keys: Mapping[str, str]  # SPLIT_KEYS -> value as text ("" or absent: not stated)


@dataclass(frozen=True)
class AcquiredVolume:
    """One volume of a series: the frames (indices into what ``split_frames`` was given) and the
    values of the keys the series was split on."""

    label: str  # "echo=2", "b=1000,dir=1"; "" when the series is one volume
    keys: Mapping[str, str]
    frames: tuple[int, ...]


@dataclass(frozen=True)
class Split:
    keys: tuple[str, ...]  # the keys split on; () when the series is one volume (or nothing explains it)
    volumes: tuple[AcquiredVolume, ...]

    @property
    def is_split(self) -> bool:
        return bool(self.keys)

    def describe(self) -> str:
        """'3 volumes by echo number: echo=1, echo=2, echo=3'."""
        names = " and ".join(KEY_NAMES[k] for k in self.keys)
        return f"{len(self.volumes)} volumes by {names}: " + ", ".join(v.label for v in self.volumes)


def split_frames(frames: Sequence[FrameLocation]) -> Split:
    """The volumes ``frames`` make: one when no two frames share a position and all share one
    orientation; else one per combination of the fewest keys that leave each volume a single stack."""
    everything = Split((), (AcquiredVolume("", {}, tuple(range(len(frames)))),))
    if one_volume(frames):
        return everything
    tolerance = _tolerance(frames)
    varying = [k for k in SPLIT_KEYS if len({f.keys.get(k, "") for f in frames}) > 1]
    if not varying or not _explains(frames, varying, tolerance):
        return everything
    chosen = list(varying)
    for key in reversed(SPLIT_KEYS):
        if key not in chosen or (key == "b" and "dir" in chosen):  # a direction means nothing without its b
            continue
        trial = [k for k in chosen if k != key]
        if trial and _explains(frames, trial, tolerance):
            chosen = trial
    return Split(tuple(chosen), _volumes(frames, chosen))


def frame_keys(ds: Dataset, groups: Callable[[str], Dataset] | None = None, frame: int | None = None) -> dict[str, str]:
    """The split keys of one frame: of a single-frame instance (``groups`` None), or of frame ``frame``
    of an enhanced instance, whose functional group items ``groups(keyword)`` returns (per-frame,
    else shared). Never raises; what is absent is left out."""
    keys: dict[str, str] = {}
    if groups is None:
        _put(keys, "echo", _number(ds, "EchoNumbers"), "{:g}")
        _put(keys, "te", _number(ds, "EchoTime"), "{:.2f}")
        _put(keys, "time", _number(ds, "TemporalPositionIdentifier"), "{:g}")
        _put(keys, "acq", _number(ds, "AcquisitionNumber"), "{:g}")
        _put(keys, "b", diffusion_b_value(ds), "{:.0f}")
        keys.update(_direction_key(diffusion_direction(ds)))
        return keys
    content = groups("FrameContentSequence")
    _put(keys, "stack", _text(content, "StackID"), "{}")
    _put(keys, "time", _number(content, "TemporalPositionIndex"), "{:g}")
    _put(keys, "te", _number(groups("MREchoSequence"), "EffectiveEchoTime"), "{:.2f}")
    diffusion = groups("MRDiffusionSequence")
    _put(keys, "b", _number(diffusion, "DiffusionBValue"), "{:.0f}")
    keys.update(_direction_key(_enhanced_direction(diffusion)))
    for name, value in _dimension_values(ds, content).items():
        keys.setdefault(name, value)
    return keys


def functional_group(per_frame: Dataset, shared: Dataset, keyword: str) -> Dataset:
    """A functional group's item, per-frame if there, else shared; empty if in neither."""
    for groups in (per_frame, shared):
        try:
            if keyword in groups and len(groups[keyword].value) > 0:
                item: Dataset = groups[keyword].value[0]
                return item
        except Exception:  # a damaged sequence: as if absent
            continue
    return Dataset()


def diffusion_b_value(ds: Dataset) -> float | None:
    """The b-value (s/mm²) of a single-frame image: DiffusionBValue (0018,9087), else the vendor's
    private tag read through its creator (Siemens, GE, Philips)."""
    public = _number(ds, "DiffusionBValue")
    if public is not None:
        return public
    blocks = PrivateBlocks(ds)
    for group, creators, offset, binary in (
        (0x0019, SIEMENS_MR_CREATORS, 0x0C, ""),
        (0x0043, ("GEMS_PARM_01",), 0x39, ""),
        (0x2001, ("Philips Imaging DD 001",), 0x03, "<f"),
    ):
        numbers = blocks.numbers(group, creators, offset, binary=binary)
        if numbers:
            b = numbers[0] % _GE_B_VALUE_OFFSET if group == 0x0043 else numbers[0]
            return b if 0 <= b < 100_000 else None
    return None


def diffusion_direction(ds: Dataset) -> tuple[float, float, float] | None:
    """The diffusion gradient direction of a single-frame image: DiffusionGradientOrientation
    (0018,9089), else Siemens' DiffusionGradientDirection (0019,xx0E), GE's (0019,xxBB..BD) or
    Philips' (2005,xxB0..B2), each read through its private creator. It tells volumes apart: the
    vendors' own axis orders (Philips: AP, FH, RL) are kept as written."""
    public = _numbers(ds, "DiffusionGradientOrientation")
    if len(public) == 3:
        return (public[0], public[1], public[2])
    blocks = PrivateBlocks(ds)
    siemens = blocks.numbers(0x0019, SIEMENS_MR_CREATORS, 0x0E, binary="<d")
    if len(siemens) == 3:
        return (siemens[0], siemens[1], siemens[2])
    for group, creator, offsets, binary in (
        (0x0019, "GEMS_ACQU_01", (0xBB, 0xBC, 0xBD), ""),  # DS each
        (0x2005, "Philips MR Imaging DD 005", (0xB0, 0xB1, 0xB2), "<f"),  # FL each
    ):
        parts = [blocks.numbers(group, (creator,), offset, binary=binary) for offset in offsets]
        if all(len(v) == 1 for v in parts):
            return (parts[0][0], parts[1][0], parts[2][0])
    return None


# --- splitting --------------------------------------------------------------------------------------


def _tolerance(frames: Sequence[FrameLocation]) -> float:
    """Positions closer than this are one position: 0.01 mm, or 1% of the typical slice gap."""
    along = np.sort(np.array([f.position for f in frames]) @ _normal(frames[0].orientation))
    gaps = np.diff(along)
    real = gaps[gaps > _POSITION_TOLERANCE_MM]
    return max(_POSITION_TOLERANCE_MM, _POSITION_TOLERANCE_FRACTION * float(np.median(real))) if real.size else \
        _POSITION_TOLERANCE_MM


def _one_stack(frames: Sequence[FrameLocation], members: Sequence[int] | range, tolerance: float) -> bool:
    orientations = {tuple(round(v, _ORIENTATION_DECIMALS) + 0.0 for v in frames[i].orientation) for i in members}
    if len(orientations) > 1:
        return False
    along = np.sort(np.array([frames[i].position for i in members]) @ _normal(frames[members[0]].orientation))
    return bool(np.all(np.diff(along) > tolerance))


def _explains(frames: Sequence[FrameLocation], keys: Sequence[str], tolerance: float) -> bool:
    return all(_one_stack(frames, members, tolerance) for members in _groups(frames, keys).values())


def _groups(frames: Sequence[FrameLocation], keys: Sequence[str]) -> dict[tuple[str, ...], list[int]]:
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, frame in enumerate(frames):
        groups.setdefault(tuple(frame.keys.get(k, "") for k in keys), []).append(index)
    return groups


def _volumes(frames: Sequence[FrameLocation], keys: Sequence[str]) -> tuple[AcquiredVolume, ...]:
    groups = _groups(frames, keys)
    directions = sorted({frames[i].keys.get("dir", "") for members in groups.values() for i in members} - {""})
    volumes: list[AcquiredVolume] = []
    for values in sorted(groups, key=lambda vs: tuple(_sortable(v) for v in vs)):
        named = {k: v for k, v in zip(keys, values, strict=True)}
        shown = {k: str(directions.index(v) + 1) if k == "dir" else v for k, v in named.items() if v}
        label = ",".join(f"{k}={v}" for k, v in shown.items()) or "none"
        volumes.append(AcquiredVolume(label, named, tuple(groups[values])))
    return tuple(volumes)


def _sortable(value: str) -> tuple[float, str]:
    try:
        return (float(value), value)
    except ValueError:
        return (math.inf, value)


def _normal(orientation: Sequence[float]) -> npt.NDArray[np.float64]:
    vector = np.asarray(orientation, dtype=np.float64)
    return np.cross(vector[:3], vector[3:])


# --- reading keys -----------------------------------------------------------------------------------


def _put(keys: dict[str, str], key: str, value: float | str | None, form: str) -> None:
    if value is None or value == "":
        return
    keys[key] = form.format(value + 0.0 if isinstance(value, float) else value)


def _get(ds: Dataset, keyword: str) -> Any:
    try:  # pydicom converts lazily: a damaged element raises on access
        return ds.get(keyword)
    except Exception:
        return None


def _numbers(ds: Dataset, keyword: str) -> list[float]:
    value = _get(ds, keyword)
    if value is None or isinstance(value, bytes):
        return []
    items = [value] if isinstance(value, str | int | float) else list(value)
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        return []
    return numbers if all(math.isfinite(n) for n in numbers) else []


def _number(ds: Dataset, keyword: str) -> float | None:
    numbers = _numbers(ds, keyword)
    return numbers[0] if numbers else None


def _text(ds: Dataset, keyword: str) -> str:
    value = _get(ds, keyword)
    return "" if value is None else str(value).strip()


def _direction_key(direction: tuple[float, float, float] | None) -> dict[str, str]:
    if direction is None or not any(abs(v) > 1e-6 for v in direction):
        return {}  # b=0 frames carry no direction, or (0, 0, 0): not a direction
    return {"dir": "/".join(f"{v + 0.0:.3f}" for v in direction)}


def _enhanced_direction(diffusion: Dataset) -> tuple[float, float, float] | None:
    try:
        item = diffusion.DiffusionGradientDirectionSequence[0]
    except (AttributeError, IndexError, KeyError):
        return None
    vector = _numbers(item, "DiffusionGradientOrientation")
    return (vector[0], vector[1], vector[2]) if len(vector) == 3 else None


def _dimension_values(ds: Dataset, content: Dataset) -> dict[str, str]:
    """An enhanced object's DimensionIndexValues of one frame, named by what each dimension indexes
    (as a split key where one means the same), leaving out the dimensions within a volume."""
    values = _numbers(content, "DimensionIndexValues")
    dimensions = _get(ds, "DimensionIndexSequence")
    if not values or not dimensions:
        return {}
    named: dict[str, str] = {}
    try:
        for item, value in zip(dimensions, values, strict=False):
            keyword = keyword_for_tag(int(item.DimensionIndexPointer)) or f"{int(item.DimensionIndexPointer):08X}"
            if keyword in _WITHIN_VOLUME_DIMENSIONS:
                continue
            named[_DIMENSION_KEYS.get(keyword, "")] = f"{value:g}"
    except Exception:  # a damaged dimension index: use what the functional groups say
        return {}
    named.pop("", None)  # a dimension neuroflow has no name for
    return named


def one_volume(frames: Sequence[FrameLocation]) -> bool:
    """Whether the frames form one stack (one orientation, no shared position): nothing to split,
    and their keys need not be read."""
    return not frames or _one_stack(frames, range(len(frames)), _tolerance(frames))


def header_frames(headers: Sequence[Dataset], *, with_keys: bool = True) -> list[tuple[int, FrameLocation]] | None:
    """Every frame of a series' headers (no pixel data needed) with the index of its header: the
    slices of single-frame images, the frames of enhanced objects, the tiles of MOSAIC images. None
    when a frame's position or orientation cannot be read (conversion will say why). Never raises."""
    out: list[tuple[int, FrameLocation]] = []
    try:
        for index, ds in enumerate(headers):
            if "PerFrameFunctionalGroupsSequence" in ds:
                shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
                for number, per_frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
                    def group(keyword: str, per_frame: Dataset = per_frame, shared: Dataset = shared) -> Dataset:
                        return functional_group(per_frame, shared, keyword)

                    location = _location(group("PlanePositionSequence"), group("PlaneOrientationSequence"),
                                         frame_keys(ds, group, number) if with_keys else {})
                    if location is None:
                        return None
                    out.append((index, location))
                continue
            location = _location(ds, ds, frame_keys(ds) if with_keys else {})
            if location is None:
                return None
            if not mosaic.is_mosaic(ds):
                out.append((index, location))
                continue
            layout = mosaic.mosaic_layout(ds)
            spacing = mosaic.mosaic_slice_spacing(ds)
            spacing_rc = _numbers(ds, "PixelSpacing")
            if isinstance(layout, str) or spacing is None or len(spacing_rc) != 2:
                return None
            tiles = mosaic.tile_positions(layout, np.asarray(location.position), np.asarray(location.orientation),
                                          (spacing_rc[0], spacing_rc[1]), spacing)
            keys = {**location.keys, "image": f"{_number(ds, 'InstanceNumber') or 0:g}"}
            out.extend((index, FrameLocation((float(p[0]), float(p[1]), float(p[2])), location.orientation, keys))
                       for p in tiles)
    except Exception:  # a damaged header: no split here; conversion names the problem
        return None
    return out


def _location(position_item: Dataset, orientation_item: Dataset, keys: dict[str, str]) -> FrameLocation | None:
    position = _numbers(position_item, "ImagePositionPatient")
    orientation = _numbers(orientation_item, "ImageOrientationPatient")
    if len(position) != 3 or len(orientation) != 6:
        return None
    return FrameLocation((position[0], position[1], position[2]), tuple(orientation), keys)
