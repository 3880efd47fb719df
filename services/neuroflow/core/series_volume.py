"""DICOM series to Volume, with the geometry the slices state and nothing assumed.

Slice order comes from where each slice lies (ImagePositionPatient projected on the slice normal),
never from file names or instance numbers, and every irregularity that would make the voxel grid a
lie (a missing slice, a duplicate, slices that disagree on orientation or size, unreadable pixels)
rejects the series with a reason naming the series and what is wrong. A series that holds several
volumes (echoes, time points, acquisitions, stacks, diffusion b-values and directions: ``split_volumes``)
is several stacks, each converted on its own; a diffusion series also gives a trace per b-value and an
ADC map (``dwi``); Siemens MOSAIC images are unpacked into their slices (``mosaic``).

Cost: each slice's geometry is read once, into floats; each instance is decoded once, straight into the
preallocated float32 volume, and its decoded pixels are not kept (on the instances or here) unless the series
holds several volumes that share instances (multi-frame, MOSAIC), so a big CT peaks at about the volume plus
the instances as read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array
from pydicom.tag import Tag

from neuroflow.core import dwi_volumes as dwi
from neuroflow.core import mosaic
from neuroflow.core.errors import SeriesRejected
from neuroflow.core.native_pixels import native_pixels
from neuroflow.core.pixel_codecs import describe, missing_decoder, transfer_syntax
from neuroflow.core.split_volumes import (
    FrameLocation,
    Split,
    frame_keys,
    functional_group,
    split_frames,
)
from neuroflow.core.sub_series import sub_series_uid
from neuroflow.core.volume import Geometry, Volume

STAGE = "convert"
MIN_SLICES = 3
# Scanners write positions as decimal strings rounded to a few micrometres, and some jitter by more;
# anything below this is the same position, anything above it is a real gap.
POSITION_TOLERANCE_MM = 0.01
POSITION_TOLERANCE_FRACTION = 0.01  # ... or this fraction of the slice spacing, if larger
ORIENTATION_TOLERANCE = 1e-4  # direction cosines
PIXEL_SPACING_TOLERANCE = 1e-4  # relative

# Builds the SeriesRejected for the series being converted, from a reason.
_Reject = Callable[[str], SeriesRejected]
# An instance's stored pixel values (decoded, checked against its header).
_Pixels = Callable[[Dataset], npt.NDArray[np.generic]]
# The decimal-string geometry tags read straight from their bytes (_raw_decimals), by keyword.
_DECIMAL_TAGS = {keyword: Tag(keyword)
                 for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")}
# Integers this large or larger are no longer all exact in float32 (24-bit significand).
_FLOAT32_EXACT = 2**24


@dataclass(frozen=True)
class _Plane:
    """One 2D slice: a single-frame instance, or one frame of a multi-frame instance."""

    dataset: Dataset
    frame: int | None  # index into a multi-frame instance's frames; None for single-frame
    position: npt.NDArray[np.float64]  # ImagePositionPatient, LPS mm
    orientation: npt.NDArray[np.float64]  # ImageOrientationPatient: row cosines, column cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    columns: int
    slope: float
    intercept: float
    # (InstanceNumber, frame): the scanner's storage order. It only decides which end of the stack is
    # slice 0 (so a volume written head-first reads back head-first); the order itself is positions'.
    storage_order: tuple[int, int] | None
    source: str  # the file (or instance) and frame, for messages
    keys: Mapping[str, str] = field(default_factory=dict)  # what tells its volume apart (split_volumes)
    mosaic_tile: tuple[mosaic.MosaicLayout, int] | None = None  # a MOSAIC's slice: the layout and tile index


def series_to_volume(instances: Sequence[Dataset], *, study_key: str, volume: str = "") -> Volume:
    """Build the float32 volume (values after RescaleSlope/Intercept) of one series, or of one volume
    (``volume``: its label, as ``series_volumes`` names it, e.g. "echo=2", "b=1000", "adc") of a
    series that holds several.

    Takes the instances of one series in any order: single-frame images, multi-frame (enhanced)
    instances whose per-frame functional groups give each frame's position, or Siemens MOSAIC images
    (unpacked into their slices). Returns a Volume whose
    geometry is the slices' own: origin = ImagePositionPatient of slice 0; direction columns = row
    direction, column direction, and the slice normal signed so that slice index runs from slice 0 to
    the last slice (the scanner's storage order decides which end is slice 0, so a left-handed grid is
    kept as written); spacing = (PixelSpacing[1], PixelSpacing[0], slice spacing measured from the
    positions, never SliceThickness). ``meta`` holds series_instance_uid (with "#<volume>" for one
    volume of several), volume, modality, series_description and frame_of_reference_uid.

    Refuses (SeriesRejected, naming the series) fewer than 3 slices; instances of several series;
    instances disagreeing on ImageOrientationPatient, PixelSpacing or rows/columns; colour images;
    duplicate slice positions that no echo, time point, acquisition, stack, b-value or gradient
    direction explains; a series of several volumes without ``volume`` (or with one it does not hold);
    positions that drift in-plane (a sheared stack); a missing slice or any other irregular gap; and
    pixel data that is truncated or cannot be decoded (naming the file). Position jitter below 0.01 mm
    or 1% of the slice spacing is tolerated."""
    series = _Series.of(instances, study_key)
    if not series.split.is_split and not series.diffusion:
        if volume:
            raise series.reject(f"has no volume {volume!r}: the series is one volume")
        return series.build("")
    labels = series.labels()
    if not volume:
        raise series.reject(f"holds {series.describe()}: name one (e.g. '{labels[0]}')")
    if volume not in labels:
        raise series.reject(f"has no volume {volume!r}; it holds {series.describe()}")
    return series.build(volume)


def series_volumes(instances: Sequence[Dataset], *, study_key: str) -> list[Volume]:
    """Every volume of a series (one, for most series): each echo, time point, acquisition or stack;
    for a diffusion series b=0, a trace per b-value and the computed ADC. Refuses as
    ``series_to_volume`` does."""
    series = _Series.of(instances, study_key)
    if not series.split.is_split and not series.diffusion:
        return [series.build("")]
    return [series.build(label) for label in series.labels()]


@dataclass
class _Series:
    """One series' planes, and the volumes they make."""

    planes: list[_Plane]
    split: Split
    diffusion: list[dwi.DiffusionVolume]
    study_key: str
    series_uid: str | None
    head: Dataset
    built: dict[str, Volume] = field(default_factory=dict)
    # Decoded pixels by id(dataset), kept only while several volumes may draw on one instance.
    decoded: dict[int, npt.NDArray[np.generic]] = field(default_factory=dict)

    @classmethod
    def of(cls, instances: Sequence[Dataset], study_key: str) -> _Series:
        if not instances:
            raise SeriesRejected(study_key, "series has no instances", stage=STAGE)
        series_uid = str(instances[0].get("SeriesInstanceUID", "")) or None

        def reject(reason: str) -> SeriesRejected:
            return SeriesRejected(study_key, reason, stage=STAGE, series_uid=series_uid)

        uids = Counter(str(ds.get("SeriesInstanceUID", "")) for ds in instances)
        if len(uids) > 1:
            raise reject(f"instances belong to {len(uids)} different series: {sorted(uids)}")
        planes = [plane for ds in instances for plane in _readable_planes_of(ds, reject)]
        split = split_frames(
            [FrameLocation((float(p.position[0]), float(p.position[1]), float(p.position[2])),
                           tuple(float(v) for v in p.orientation), p.keys) for p in planes]
        )
        return cls(planes, split, dwi.diffusion_volumes(split), study_key, series_uid, instances[0])

    def reject(self, reason: str) -> SeriesRejected:
        return SeriesRejected(self.study_key, reason, stage=STAGE, series_uid=self.series_uid)

    def labels(self) -> list[str]:
        return [d.label for d in self.diffusion] or [v.label for v in self.split.volumes]

    def describe(self) -> str:
        if not self.diffusion:
            return self.split.describe()
        return f"{len(self.diffusion)} diffusion volumes: " + ", ".join(d.describe() for d in self.diffusion)

    def build(self, label: str) -> Volume:
        if label not in self.built:
            self.built[label] = self._build(label)
        return self.built[label]

    def _build(self, label: str) -> Volume:
        derived = next((d for d in self.diffusion if d.label == label), None)
        if derived is None:
            return self._acquired(label)
        if derived.derivation == dwi.Derivation.ADC:  # from the b=0 and trace volumes, built first
            traces = {b: self.build(f"b={b:g}") for b in derived.b_values}
            reference = next(iter(traces.values()))
            array = dwi.adc_map({b: v.array for b, v in traces.items()})
        else:
            sources = [self._acquired(source) for source in derived.sources]
            reference = sources[0]
            for other in sources[1:]:
                if not other.geometry.is_close(reference.geometry, tol_mm=POSITION_TOLERANCE_MM):
                    raise self.reject(f"the volumes {', '.join(derived.sources)} of one b-value do not share a grid")
            array = dwi.geometric_mean([s.array for s in sources]) if len(sources) > 1 else reference.array
        meta = {**reference.meta, "volume": label,
                "series_instance_uid": sub_series_uid(self.series_uid or "", label),
                "derivation": derived.describe()}
        return Volume(array, reference.geometry, meta)

    def _acquired(self, label: str) -> Volume:
        acquired = next(v for v in self.split.volumes if v.label == label)
        planes = [self.planes[i] for i in acquired.frames]
        return _stack_volume(planes, self.head, self.series_uid, label, self.reject, self.pixels)

    def pixels(self, ds: Dataset) -> npt.NDArray[np.generic]:
        """``ds``'s decoded pixels: decoded again on each call for a one-volume series (each instance is
        asked for once), kept for a series of several volumes (a multi-frame or MOSAIC instance feeds them all)."""
        if not self.split.is_split and not self.diffusion:
            return _decoded_pixels(ds, self.study_key, self.series_uid)
        key = id(ds)  # the planes hold the datasets, so an id is not reused while this series lives
        if key not in self.decoded:
            self.decoded[key] = _decoded_pixels(ds, self.study_key, self.series_uid)
        return self.decoded[key]


def _stack_volume(
    planes: list[_Plane], head: Dataset, series_uid: str | None, label: str, reject: _Reject, pixels: _Pixels
) -> Volume:
    """One regular stack of planes as a Volume (see series_to_volume for the geometry)."""
    where = f" (volume {label})" if label else ""
    if len(planes) < MIN_SLICES:
        raise reject(
            f"fewer than {MIN_SLICES} slices ({len(planes)}){where}: not a volume (a localizer or a single image?)"
        )
    row_dir, col_dir = _common_in_plane_geometry(planes, reject)
    normal = np.cross(row_dir, col_dir)
    ordered, slice_spacing = _stack(planes, normal, row_dir, col_dir, reject)

    first, last = ordered[0].position, ordered[-1].position
    slice_dir = normal if float((last - first) @ normal) > 0 else -normal
    array = np.empty((len(ordered), planes[0].rows, planes[0].columns), dtype=np.float32)
    _fill(array, ordered, pixels)
    direction = np.column_stack([row_dir, col_dir, slice_dir])
    row_spacing, column_spacing = planes[0].pixel_spacing
    geometry = Geometry(
        spacing=(column_spacing, row_spacing, slice_spacing),
        origin=(float(first[0]), float(first[1]), float(first[2])),
        direction=tuple(float(v) + 0.0 for v in direction.ravel()),  # + 0.0: no "-0.0" in logs
        size=(planes[0].columns, planes[0].rows, len(ordered)),
    )
    meta = {
        "series_instance_uid": sub_series_uid(series_uid or "", label),
        "modality": str(head.get("Modality", "")),
        "series_description": str(head.get("SeriesDescription", "")),
        "frame_of_reference_uid": str(head.get("FrameOfReferenceUID", "")),
    }
    if label:
        meta["volume"] = label
    return Volume(array, geometry, meta)


def _readable_planes_of(ds: Dataset, reject: _Reject) -> list[_Plane]:
    """``_planes_of``, refusing (naming the file) a header whose values cannot be read: pydicom converts
    values lazily, so a malformed element (a number that is text, a vector that is one value) raises on
    access, as any exception type."""
    try:
        return _planes_of(ds, reject)
    except SeriesRejected:
        raise
    except Exception as exc:
        raise reject(f"unreadable header value in {_source_of(ds)}: {type(exc).__name__}: {exc}") from exc


def _planes_of(ds: Dataset, reject: _Reject) -> list[_Plane]:
    source = _source_of(ds)
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if rows is None or columns is None:
        raise reject(f"{source} has no Rows/Columns: not an image")
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        raise reject(f"{source} is a colour image (SamplesPerPixel {samples}), not a scalar volume")
    instance_number = ds.get("InstanceNumber")
    number = int(instance_number) if instance_number is not None else None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if frames > 1:
            raise reject(
                f"{source} has {frames} frames but no per-frame functional groups, so the frames' "
                "positions are unknown"
            )
        plane = _Plane(
            dataset=ds,
            frame=None,
            position=_decimals(ds, "ImagePositionPatient", 3, source, reject),
            orientation=_decimals(ds, "ImageOrientationPatient", 6, source, reject),
            pixel_spacing=_pixel_spacing(ds, source, reject),
            rows=int(rows),
            columns=int(columns),
            slope=float(ds.get("RescaleSlope", 1.0)),
            intercept=float(ds.get("RescaleIntercept", 0.0)),
            storage_order=(number, 0) if number is not None else None,
            source=source,
            keys=frame_keys(ds),
        )
        return _mosaic_tiles(plane, reject) if mosaic.is_mosaic(ds) else [plane]
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
    planes: list[_Plane] = []
    for index, per_frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        where = f"frame {index + 1} of {source}"

        def group(keyword: str, per_frame: Dataset = per_frame) -> Dataset:
            return functional_group(per_frame, shared, keyword)

        transform = group("PixelValueTransformationSequence")
        planes.append(
            _Plane(
                dataset=ds,
                frame=index,
                position=_vector(group("PlanePositionSequence"), "ImagePositionPatient", 3, where, reject),
                orientation=_vector(
                    group("PlaneOrientationSequence"), "ImageOrientationPatient", 6, where, reject
                ),
                pixel_spacing=_pixel_spacing(group("PixelMeasuresSequence"), where, reject),
                rows=int(rows),
                columns=int(columns),
                slope=float(transform.get("RescaleSlope", 1.0)),
                intercept=float(transform.get("RescaleIntercept", 0.0)),
                storage_order=(number or 0, index),
                source=where,
                keys=frame_keys(ds, group, index),
            )
        )
    return planes


def _mosaic_tiles(plane: _Plane, reject: _Reject) -> list[_Plane]:
    """The slices of a MOSAIC image, each at its own position (see ``mosaic``). Each image of a
    MOSAIC series is one volume (a time point), which the image key tells apart."""
    layout = mosaic.mosaic_layout(plane.dataset)
    if isinstance(layout, str):
        raise reject(f"{plane.source} is {layout}")
    spacing = mosaic.mosaic_slice_spacing(plane.dataset)
    if spacing is None:
        raise reject(f"{plane.source} is a MOSAIC without SpacingBetweenSlices or SliceThickness")
    positions = mosaic.tile_positions(layout, plane.position, plane.orientation, plane.pixel_spacing, spacing)
    number = plane.storage_order[0] if plane.storage_order is not None else 0
    image_key = {"image": str(number)}
    return [
        replace(plane, position=position, rows=layout.rows, columns=layout.columns, mosaic_tile=(layout, k),
                storage_order=(number, k), source=f"slice {k + 1} of the MOSAIC {plane.source}",
                keys={**plane.keys, **image_key})
        for k, position in enumerate(positions)
    ]


def _common_in_plane_geometry(
    planes: list[_Plane], reject: _Reject
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The row and column unit vectors all planes share; refuses planes that differ in-plane."""
    sizes = Counter((p.rows, p.columns) for p in planes)
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} in {n}" for (r, c), n in sizes.most_common())
        raise reject(f"rows/columns differ between slices ({listed} slices)")
    first = planes[0]
    for plane in planes[1:]:
        if np.max(np.abs(plane.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise reject(
                "instances disagree on ImageOrientationPatient: "
                f"{_fmt(first.orientation)} in {first.source} vs {_fmt(plane.orientation)} in {plane.source}"
            )
        spacing_a, spacing_b = np.array(first.pixel_spacing), np.array(plane.pixel_spacing)
        if np.max(np.abs(spacing_a - spacing_b) / spacing_a) > PIXEL_SPACING_TOLERANCE:
            raise reject(
                f"instances disagree on PixelSpacing: {_fmt(spacing_a)} in {first.source} vs "
                f"{_fmt(spacing_b)} in {plane.source}"
            )
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    lengths_ok = abs(np.linalg.norm(row_dir) - 1) < 1e-3 and abs(np.linalg.norm(col_dir) - 1) < 1e-3
    if not lengths_ok or abs(float(row_dir @ col_dir)) > 1e-3:
        raise reject(f"ImageOrientationPatient {_fmt(first.orientation)} is not two orthogonal unit vectors")
    # Renormalise away the rounding of the decimal strings, so the direction matrix is orthonormal.
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir - (col_dir @ row_dir) * row_dir
    return row_dir, col_dir / np.linalg.norm(col_dir)


def _stack(
    planes: list[_Plane],
    normal: npt.NDArray[np.float64],
    row_dir: npt.NDArray[np.float64],
    col_dir: npt.NDArray[np.float64],
    reject: _Reject,
) -> tuple[list[_Plane], float]:
    """The planes in slice order and the slice spacing; refuses anything but a regular stack."""
    along = np.array([float(p.position @ normal) for p in planes])
    ascending = np.argsort(along, kind="stable")
    ordered = [planes[i] for i in ascending]
    distances = along[ascending]
    gaps = np.diff(distances)
    spacing = float(np.median(gaps))
    tolerance = max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * spacing)

    duplicates = np.flatnonzero(gaps <= tolerance)
    if duplicates.size:
        a, b = ordered[duplicates[0]], ordered[duplicates[0] + 1]
        raise reject(
            f"duplicate slice positions: {duplicates.size} of {len(planes)} slices share a position with "
            f"another (e.g. {a.source} and {b.source} at {distances[duplicates[0]]:.2f} mm along the slice "
            "normal), and neither echo, time point, acquisition, stack, b-value nor gradient direction tells them apart"
        )

    start = ordered[0].position
    in_plane = np.array(
        [[float((p.position - start) @ row_dir), float((p.position - start) @ col_dir)] for p in ordered]
    )
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    drift_tolerance = max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * min(planes[0].pixel_spacing))
    if drift > drift_tolerance:
        raise reject(
            f"slice positions drift in-plane by up to {drift:.3f} mm along the stack (gantry tilt or a "
            "sheared stack): the slices do not form a rectangular grid"
        )

    if _stored_descending(ordered):
        ordered.reverse()
        distances = distances[::-1]
    irregular = np.flatnonzero(np.abs(np.abs(np.diff(distances)) - spacing) > tolerance)
    if irregular.size:
        raise reject(_describe_gaps(distances, irregular, spacing, tolerance))
    measured = abs(float(distances[-1] - distances[0])) / (len(ordered) - 1)
    return ordered, measured


def _stored_descending(ordered: list[_Plane]) -> bool:
    """Whether the scanner stored the slices in the opposite order to ascending along the normal
    (most consecutive pairs ordered the other way by (InstanceNumber, frame)). Without a complete
    storage order, ascending it is."""
    keys = [p.storage_order for p in ordered]
    known = [k for k in keys if k is not None]
    if len(known) < len(keys):
        return False
    pairs = list(pairwise(known))
    decreasing = sum(1 for a, b in pairs if a > b)
    return decreasing > len(pairs) - decreasing


def _describe_gaps(
    distances: npt.NDArray[np.float64], irregular: npt.NDArray[np.intp], spacing: float, tolerance: float
) -> str:
    """Say which slices are missing (gaps of whole multiples of the spacing) or which gap is odd."""
    total = round(abs(float(distances[-1] - distances[0])) / spacing) + 1
    missing: list[int] = []
    for g in irregular:
        gap = abs(float(distances[g + 1] - distances[g]))
        multiple = round(gap / spacing)
        if multiple < 2 or abs(gap - multiple * spacing) > tolerance:
            return (
                f"irregular slice spacing: gap of {gap:.2f} mm between slices {g + 1} and {g + 2} where "
                f"spacing is {spacing:.2f} mm"
            )
        start = round(abs(float(distances[g] - distances[0])) / spacing) + 1
        missing.extend(range(start + 1, start + multiple))
    gap = abs(float(distances[irregular[0] + 1] - distances[irregular[0]]))
    shown = ", ".join(str(n) for n in missing[:5])
    if len(missing) > 5:
        shown += f" and {len(missing) - 5} more"
    noun = "slice" if len(missing) == 1 else "slices"
    return f"{noun} {shown} of {total} missing: gap of {gap:.1f} mm where spacing is {spacing:.1f} mm"


def _fill(out: npt.NDArray[np.float32], ordered: list[_Plane], pixels: _Pixels) -> None:
    """Writes each plane's values (stored value * slope + intercept) into its slice of ``out``, decoding
    each instance once however many of the planes it holds (frames, MOSAIC tiles). Instances are decoded
    in the order of their first plane, so of several unreadable files the first in slice order is named."""
    slices_of: dict[int, list[int]] = {}
    for k, plane in enumerate(ordered):
        slices_of.setdefault(id(plane.dataset), []).append(k)
    scratch = np.empty(out.shape[1:], dtype=np.float64)
    for slices in slices_of.values():
        decoded = pixels(ordered[slices[0]].dataset)
        for k in slices:
            plane = ordered[k]
            frame = decoded if plane.frame is None else decoded[plane.frame]
            if plane.mosaic_tile is not None:
                frame = mosaic.tile(frame, *plane.mosaic_tile)
            _rescale_into(out[k], frame, plane.slope, plane.intercept, scratch)
        del decoded  # a one-volume series keeps no decoded instance beyond its slices in ``out``


def _rescale_into(
    out: npt.NDArray[np.float32], stored: npt.NDArray[np.generic], slope: float, intercept: float,
    scratch: npt.NDArray[np.float64],
) -> None:
    """``out[...] = float32(float64(stored) * slope + intercept)``, bit for bit, without a new array per slice.
    Stored integers of 16 bits or fewer with slope 1 and a whole intercept (CT's -1024) are added in float32:
    every operand and sum is a whole number below 2**24, exact in float32 as in float64, so the result is the
    same value."""
    small_integers = stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2
    if small_integers and slope == 1.0 and intercept.is_integer() and abs(intercept) < _FLOAT32_EXACT // 2:
        out[...] = stored
        if intercept != 0.0:
            out += np.float32(intercept)
        return
    scratch[...] = stored
    scratch *= slope
    scratch += intercept
    out[...] = scratch


def _decoded_pixels(ds: Dataset, study_key: str, series_uid: str | None) -> npt.NDArray[np.generic]:
    """The instance's stored pixel values (pydicom caches the decoded array on the dataset)."""
    source = _source_of(ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise SeriesRejected(study_key, f"no pixel data in {source}", stage=STAGE, series_uid=series_uid)
    syntax = transfer_syntax(ds)
    missing = missing_decoder(syntax)
    if missing is not None:  # a codec missing here is no fault of the file: say which, not "unreadable"
        raise SeriesRejected(study_key, f"cannot decode the pixel data in {source}: {missing}", stage=STAGE,
                             series_uid=series_uid)
    try:
        # As ``ds.pixel_array`` decodes, without keeping the array on the caller's dataset; plain uncompressed
        # greyscale straight from its bytes (the same values, without pydicom's per-instance decode runner).
        native = native_pixels(ds)
        pixels: npt.NDArray[np.generic] = native if native is not None else pixel_array(ds)
    except BaseException as exc:  # truncated data, unsupported compression, inconsistent header
        # A decoder written in Rust (pylibjpeg-rle) panics on some damaged data with pyo3's PanicException, a
        # BaseException: it must not end the worker either. Interrupts and exits pass.
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        packed = f" ({describe(syntax)})" if syntax is not None and syntax.is_compressed else ""
        raise SeriesRejected(
            study_key,
            f"pixel data truncated or unreadable in {source}{packed}: {exc}",
            stage=STAGE,
            series_uid=series_uid,
        ) from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = (int(ds.Rows), int(ds.Columns)) if frames == 1 else (frames, int(ds.Rows), int(ds.Columns))
    if pixels.shape != expected:
        raise SeriesRejected(
            study_key,
            f"pixel data in {source} has shape {pixels.shape}, header says {expected}",
            stage=STAGE,
            series_uid=series_uid,
        )
    return pixels


def _vector(ds: Dataset, keyword: str, length: int, source: str, reject: _Reject) -> npt.NDArray[np.float64]:
    value = ds.get(keyword)
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        vector = None
    if vector is None or vector.shape != (length,) or not np.all(np.isfinite(vector)):
        raise reject(f"{source} has no valid {keyword} (found {value!r})")
    return vector


def _decimals(ds: Dataset, keyword: str, length: int, source: str, reject: _Reject) -> npt.NDArray[np.float64]:
    """``_vector`` of a decimal-string geometry tag, from its bytes when they hold ``length`` finite numbers."""
    values = _raw_decimals(ds, keyword, length)
    return values if values is not None else _vector(ds, keyword, length, source, reject)


def _raw_decimals(ds: Dataset, keyword: str, length: int) -> npt.NDArray[np.float64] | None:
    """The values of a decimal string (DS) element pydicom has not yet converted, parsed from its bytes: its
    on-access conversion builds and validates a DSfloat per value, most of the time a slice's geometry took.
    Python's float() parses each value as DSfloat does. None (the caller then reads it the checked way,
    with its messages) when the element is absent or converted already, not DS, or not ``length`` finite numbers."""
    raw = ds.get_item(_DECIMAL_TAGS[keyword])
    if not isinstance(raw, RawDataElement) or raw.VR not in ("DS", None) or not isinstance(raw.value, bytes):
        return None
    try:
        values = np.array([float(v) for v in raw.value.decode("ascii").split("\\")], dtype=np.float64)
    except (UnicodeDecodeError, ValueError):
        return None
    return values if values.shape == (length,) and bool(np.all(np.isfinite(values))) else None


def _pixel_spacing(ds: Dataset, source: str, reject: _Reject) -> tuple[float, float]:
    spacing = _decimals(ds, "PixelSpacing", 2, source, reject)
    if np.any(spacing <= 0):
        raise reject(f"{source} has PixelSpacing {_fmt(spacing)}: must be positive")
    return float(spacing[0]), float(spacing[1])


def _source_of(ds: Dataset) -> str:
    filename = getattr(ds, "filename", None)
    if isinstance(filename, str | Path) and str(filename):
        return f"file {filename}"
    return f"instance {ds.get('SOPInstanceUID', '(no SOP Instance UID)')}"


def _fmt(values: npt.NDArray[np.float64]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
