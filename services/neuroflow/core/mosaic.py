"""Siemens MOSAIC: one image holding all slices of a volume as tiles of a grid.

Siemens stores EPI (fMRI, DWI, perfusion) this way: ImageType contains MOSAIC, the private
NumberOfImagesInMosaic (0019,xx0A, "SIEMENS MR HEADER") says how many tiles hold slices, the grid is
ceil(sqrt(n)) tiles square, filled row by row. ImagePositionPatient is the corner of the whole mosaic
as if it were one slice, so each slice's position is corrected as dcm2niix does: the first slice lies
at ipp + row_dir * (mosaic columns - columns) / 2 * column spacing + col_dir * (mosaic rows - rows) / 2
* row spacing, and slice k at that + k * slice spacing * slice normal (SliceNormalVector from the CSA
image header when present, else row_dir x col_dir)."""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from neuroflow.core.private_tags import SIEMENS_MR_CREATORS, private_numbers, private_value

_CSA_IMAGE_HEADER = (0x0029, ("SIEMENS CSA HEADER",), 0x10)  # CSA Image Header Info


@dataclass(frozen=True)
class MosaicLayout:
    """How a MOSAIC image holds its slices."""

    slices: int  # NumberOfImagesInMosaic
    grid: int  # tiles per side
    rows: int  # of one slice
    columns: int
    slice_normal: npt.NDArray[np.float64] | None  # from the CSA header, when it says


def is_mosaic(ds: Dataset) -> bool:
    try:
        image_type = ds.get("ImageType") or []
        values = [image_type] if isinstance(image_type, str) else list(image_type)
    except Exception:
        return False
    return any(str(v).strip().upper() == "MOSAIC" for v in values)


def mosaic_layout(ds: Dataset) -> MosaicLayout | str:
    """The layout of a MOSAIC image, or why it cannot be unpacked (a sentence)."""
    csa = csa_image_values(ds)
    count = private_numbers(ds, 0x0019, SIEMENS_MR_CREATORS, 0x0A, binary="<H") or csa.get(
        "NumberOfImagesInMosaic", []
    )
    if not count or count[0] < 1 or count[0] != int(count[0]):
        return "a MOSAIC image without NumberOfImagesInMosaic (0019,xx0A or the CSA header)"
    slices = int(count[0])
    grid = math.ceil(math.sqrt(slices))
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows % grid or columns % grid:
        return f"a MOSAIC of {slices} images whose {rows}x{columns} pixels do not divide into a {grid}x{grid} grid"
    normal = csa.get("SliceNormalVector", [])
    unit = np.asarray(normal, dtype=np.float64) if len(normal) == 3 else None
    if unit is not None and abs(float(np.linalg.norm(unit)) - 1) > 1e-2:
        unit = None
    return MosaicLayout(slices, grid, rows // grid, columns // grid, unit / np.linalg.norm(unit) if unit is not None
                        else None)


def tile_positions(
    layout: MosaicLayout,
    mosaic_position: npt.NDArray[np.float64],
    orientation: npt.NDArray[np.float64],
    pixel_spacing: tuple[float, float],
    slice_spacing: float,
) -> list[npt.NDArray[np.float64]]:
    """ImagePositionPatient of each slice, from the mosaic's ImagePositionPatient (dcm2niix's
    correction); ``pixel_spacing`` is (between rows, between columns)."""
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = layout.slice_normal if layout.slice_normal is not None else np.cross(row_dir, col_dir)
    mosaic_rows, mosaic_columns = layout.rows * layout.grid, layout.columns * layout.grid
    first = (
        mosaic_position
        + row_dir * (mosaic_columns - layout.columns) / 2 * pixel_spacing[1]
        + col_dir * (mosaic_rows - layout.rows) / 2 * pixel_spacing[0]
    )
    return [first + k * slice_spacing * normal for k in range(layout.slices)]


def tile(pixels: npt.NDArray[np.generic], layout: MosaicLayout, index: int) -> npt.NDArray[np.generic]:
    """Slice ``index`` of a mosaic's pixel array (tiles fill the grid row by row)."""
    r, c = divmod(index, layout.grid)
    return pixels[r * layout.rows : (r + 1) * layout.rows, c * layout.columns : (c + 1) * layout.columns]


def mosaic_slice_spacing(ds: Dataset) -> float | None:
    """The distance between a mosaic's slices: SpacingBetweenSlices, else SliceThickness."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(keyword))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            return value
    return None


def csa_image_values(ds: Dataset) -> dict[str, list[float]]:
    """The numeric elements of the Siemens CSA image header (SV10 "CSA2" layout, or the older one),
    by name; {} when absent or unreadable. Only numbers are kept: that is all the geometry needs."""
    group, creators, offset = _CSA_IMAGE_HEADER
    raw = private_value(ds, group, creators, offset)
    if not isinstance(raw, bytes):
        return {}
    try:
        return _parse_csa(raw)
    except (struct.error, ValueError, UnicodeDecodeError):
        return {}


def _parse_csa(raw: bytes) -> dict[str, list[float]]:
    position = 8 if raw[:4] == b"SV10" else 0
    count, _ = struct.unpack_from("<2I", raw, position)
    position += 8
    if not 0 < count <= 512:
        raise ValueError("implausible CSA element count")
    found: dict[str, list[float]] = {}
    for _ in range(count):
        name = raw[position : position + 64].split(b"\x00", 1)[0].decode("latin-1")
        items = struct.unpack_from("<i", raw, position + 76)[0]  # after name, VM, VR and SyngoDT
        position += 84  # name 64, vm 4, vr 4, syngodt 4, nitems 4, xx 4
        values: list[float] = []
        for _item in range(items):
            length = struct.unpack_from("<4i", raw, position)[1]
            position += 16
            text = raw[position : position + length].split(b"\x00", 1)[0].decode("latin-1").strip()
            position += (length + 3) // 4 * 4
            if text:
                with contextlib.suppress(ValueError):  # a text item (a name): not geometry
                    values.append(float(text))
        if values:
            found[name] = values
    return found


def write_csa_image_header(values: dict[str, list[float]]) -> bytes:
    """A CSA2 image header holding ``values`` (for writing test MOSAICs the way Siemens does)."""
    out = bytearray(b"SV10\x04\x03\x02\x01")
    out += struct.pack("<2I", len(values), 77)
    for name, numbers in values.items():
        out += name.encode("latin-1").ljust(64, b"\x00")
        out += struct.pack("<i4s3i", len(numbers), b"FD\x00\x00", 0, len(numbers), 77)
        for number in numbers:
            text = f"{number:.8f}".encode() + b"\x00"
            out += struct.pack("<4i", len(text), len(text), 77, len(text))
            out += text.ljust((len(text) + 3) // 4 * 4, b"\x00")
    return bytes(out)
