"""Write several volumes into one series, the three ways scanners do it.

* ``write_multi_volume_series``: single-frame images, each volume's slices telling their volume by
  echo number and time, temporal position, acquisition number, b-value and gradient direction (public
  tags, or Siemens' private ones in their creator block);
* ``write_enhanced_series``: one Enhanced MR multi-frame object with per-frame functional groups
  (stack, echo, temporal position, diffusion) and a dimension index;
* ``write_mosaic_series``: Siemens MOSAIC, one image per volume holding every slice as a tile, with
  NumberOfImagesInMosaic and a CSA image header (SliceNormalVector).

Geometry and values are written as ``dicom_writer`` writes them (one int16 encoding for the whole
series, so every volume reads back with the same slope), so each volume read back equals the one
written."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID, EnhancedMRImageStorage

from neuroflow.core.mosaic import write_csa_image_header
from neuroflow.core.volume import Volume
from neuroflow.devtools.dicom_writer import (
    SeriesInfo,
    StudyInfo,
    _anonymous_name,
    _checked_axes,
    _ds,
    _encode_int16,
    _Int16Encoding,
    _series_header,
    _uid,
)

_SIEMENS_MR_HEADER = "SIEMENS MR HEADER"


@dataclass(frozen=True)
class VolumeTags:
    """What tells one volume of a series from the others (None: not written)."""

    echo_number: int | None = None
    echo_time_ms: float | None = None
    temporal_position: int | None = None
    acquisition_number: int | None = None
    b_value: float | None = None
    gradient: tuple[float, float, float] | None = None
    stack_id: str | None = None  # enhanced objects only
    siemens_private_diffusion: bool = False  # b-value and direction in (0019,xx0C/0E), not (0018,9087/9089)


def write_multi_volume_series(
    volumes: Sequence[tuple[Volume, VolumeTags]], out_dir: Path, *, study: StudyInfo, series: SeriesInfo
) -> list[list[Path]]:
    """Every volume as single-frame images of one series (instance numbers running on across the
    volumes); returns the paths per volume, in slice order. The volumes must share a grid size."""
    encoding = _encode_int16(np.concatenate([np.asarray(v.array) for v, _ in volumes]))
    header = _series_header(volumes[0][0], study, series, encoding)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[list[Path]] = []
    instance = 0
    for index, (volume, tags) in enumerate(volumes):
        row_dir, col_dir, slice_dir = _checked_axes(volume.geometry)
        origin = np.asarray(volume.geometry.origin, dtype=np.float64)
        stored = _stored(encoding, volumes, index)
        paths: list[Path] = []
        for k in range(volume.geometry.size[2]):
            instance += 1
            position = origin + k * volume.geometry.spacing[2] * slice_dir
            ds = copy.deepcopy(header)
            sop_uid = _uid(series.series_instance_uid, "instance", str(index), str(k))
            ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = instance
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.SliceLocation = _ds(float(position @ np.cross(row_dir, col_dir)))
            _tag_volume(ds, tags)
            ds.PixelData = stored[k].astype("<i2").tobytes()
            path = out_dir / _anonymous_name("IM", sop_uid)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        written.append(paths)
    return written


def write_enhanced_series(
    volumes: Sequence[tuple[Volume, VolumeTags]], out_dir: Path, *, study: StudyInfo, series: SeriesInfo
) -> Path:
    """Every volume as frames of one Enhanced MR Image object (frames volume by volume, slice by slice),
    with the dimension index (StackID or EffectiveEchoTime or TemporalPositionIndex, then
    InStackPositionNumber) that enhanced exports carry."""
    encoding = _encode_int16(np.concatenate([np.asarray(v.array) for v, _ in volumes]))
    ds = _series_header(volumes[0][0], study, series, encoding)
    for keyword in ("ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept", "RescaleType",
                    "SliceThickness", "EchoTime", "EchoNumbers"):
        if keyword in ds:
            delattr(ds, keyword)
    sop_uid = _uid(series.series_instance_uid, "enhanced")
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]

    first = volumes[0][0].geometry
    row_dir, col_dir, _ = _checked_axes(first)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds(first.spacing[1]), _ds(first.spacing[0])]
    measures.SliceThickness = _ds(first.spacing[2])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    if encoding.slope is not None:
        transform = Dataset()
        transform.RescaleIntercept = encoding.intercept
        transform.RescaleSlope = encoding.slope
        transform.RescaleType = "US"
        shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    by_volume = _dimension(volumes)
    dimension = Dataset()
    dimension.DimensionIndexPointer = Tag(by_volume[0])
    dimension.FunctionalGroupPointer = Tag(by_volume[1])
    in_stack = Dataset()
    in_stack.DimensionIndexPointer = Tag("InStackPositionNumber")
    in_stack.FunctionalGroupPointer = Tag("FrameContentSequence")
    ds.DimensionIndexSequence = DicomSequence([dimension, in_stack])

    frames: list[Dataset] = []
    pixels: list[bytes] = []
    for index, (volume, tags) in enumerate(volumes):
        _, _, slice_dir = _checked_axes(volume.geometry)
        origin = np.asarray(volume.geometry.origin, dtype=np.float64)
        stored = _stored(encoding, volumes, index)
        for k in range(volume.geometry.size[2]):
            frame = Dataset()
            position = Dataset()
            position.ImagePositionPatient = [_ds(v) for v in origin + k * volume.geometry.spacing[2] * slice_dir]
            frame.PlanePositionSequence = DicomSequence([position])
            content = Dataset()
            content.StackID = tags.stack_id or "1"
            content.InStackPositionNumber = k + 1
            if tags.temporal_position is not None:
                content.TemporalPositionIndex = tags.temporal_position
            content.DimensionIndexValues = [index + 1, k + 1]
            frame.FrameContentSequence = DicomSequence([content])
            if tags.echo_time_ms is not None:
                echo = Dataset()
                echo.EffectiveEchoTime = tags.echo_time_ms
                frame.MREchoSequence = DicomSequence([echo])
            if tags.b_value is not None:
                frame.MRDiffusionSequence = DicomSequence([_enhanced_diffusion(tags)])
            frames.append(frame)
            pixels.append(stored[k].astype("<i2").tobytes())
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = b"".join(pixels)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / _anonymous_name("EN", sop_uid)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_mosaic_series(
    volumes: Sequence[Volume], out_dir: Path, *, study: StudyInfo, series: SeriesInfo
) -> list[Path]:
    """Each volume (a time point) as one Siemens MOSAIC image: slices as tiles of a ceil(sqrt(n))
    grid filled row by row, ImagePositionPatient the mosaic's corner as Siemens writes it (so slice 0
    lies half the unused tiles in from it), NumberOfImagesInMosaic in (0019,xx0A) and the slice normal
    in the CSA image header (0029,xx10). The slice axis may run either way along the plane normal."""
    geometry = volumes[0].geometry
    row_dir, col_dir, slice_dir = _checked_axes(geometry)
    columns, rows, slices = geometry.size
    grid = math.ceil(math.sqrt(slices))
    encoding = _encode_int16(np.concatenate([np.asarray(v.array) for v in volumes]))
    header = _series_header(volumes[0], study, series, encoding)
    header.Rows, header.Columns = rows * grid, columns * grid
    header.ImageType = list(series.preset.image_type)
    mr_header = header.private_block(0x0019, _SIEMENS_MR_HEADER, create=True)
    mr_header.add_new(0x0A, "US", slices)
    csa = header.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa.add_new(0x10, "OB", write_csa_image_header(
        {"NumberOfImagesInMosaic": [float(slices)], "SliceNormalVector": [float(v) for v in slice_dir]}))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for t, volume in enumerate(volumes):
        stored = _stored(encoding, [(v, VolumeTags()) for v in volumes], t)
        mosaic = np.zeros((rows * grid, columns * grid), dtype=np.int16)
        for k in range(slices):
            r, c = divmod(k, grid)
            mosaic[r * rows : (r + 1) * rows, c * columns : (c + 1) * columns] = stored[k]
        corner = (
            np.asarray(volume.geometry.origin, dtype=np.float64)
            - row_dir * (grid * columns - columns) / 2 * geometry.spacing[0]
            - col_dir * (grid * rows - rows) / 2 * geometry.spacing[1]
        )
        ds = copy.deepcopy(header)
        sop_uid = _uid(series.series_instance_uid, "mosaic", str(t))
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = t + 1
        ds.AcquisitionNumber = t + 1
        ds.ImagePositionPatient = [_ds(v) for v in corner]
        ds.PixelData = mosaic.astype("<i2").tobytes()
        path = out_dir / _anonymous_name("MO", sop_uid)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _stored(encoding: _Int16Encoding, volumes: Sequence[tuple[Volume, VolumeTags]], index: int) -> np.ndarray:
    start = sum(v.geometry.size[2] for v, _ in volumes[:index])
    return encoding.stored[start : start + volumes[index][0].geometry.size[2]]


def _tag_volume(ds: Dataset, tags: VolumeTags) -> None:
    if tags.echo_number is not None:
        ds.EchoNumbers = str(tags.echo_number)
    if tags.echo_time_ms is not None:
        ds.EchoTime = _ds(tags.echo_time_ms)
    if tags.temporal_position is not None:
        ds.TemporalPositionIdentifier = tags.temporal_position
    if tags.acquisition_number is not None:
        ds.AcquisitionNumber = tags.acquisition_number
    if tags.b_value is None:
        return
    if tags.siemens_private_diffusion:
        block = ds.private_block(0x0019, _SIEMENS_MR_HEADER, create=True)
        block.add_new(0x0C, "IS", str(int(tags.b_value)))
        if tags.gradient is not None:
            block.add_new(0x0E, "FD", list(tags.gradient))
        if "DiffusionBValue" in ds:
            del ds.DiffusionBValue
        return
    ds.DiffusionBValue = tags.b_value
    if tags.gradient is not None:
        ds.DiffusionGradientOrientation = list(tags.gradient)


def _enhanced_diffusion(tags: VolumeTags) -> Dataset:
    diffusion = Dataset()
    diffusion.DiffusionBValue = tags.b_value
    diffusion.DiffusionDirectionality = "DIRECTIONAL" if tags.gradient is not None else "NONE"
    if tags.gradient is not None:
        direction = Dataset()
        direction.DiffusionGradientOrientation = list(tags.gradient)
        diffusion.DiffusionGradientDirectionSequence = DicomSequence([direction])
    return diffusion


def _dimension(volumes: Sequence[tuple[Volume, VolumeTags]]) -> tuple[str, str]:
    """The (index pointer, functional group) of the dimension that tells the volumes apart."""
    tags = [t for _, t in volumes]
    if len({t.stack_id for t in tags}) > 1:
        return "StackID", "FrameContentSequence"
    if len({t.echo_time_ms for t in tags}) > 1:
        return "EffectiveEchoTime", "MREchoSequence"
    if len({t.b_value for t in tags}) > 1:
        return "DiffusionBValue", "MRDiffusionSequence"
    return "TemporalPositionIndex", "FrameContentSequence"
