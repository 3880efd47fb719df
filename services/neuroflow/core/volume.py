"""A volume with its geometry. Geometry is always in DICOM patient coordinates (LPS, millimetres),
so nothing is ever converted to RAS and back: the one place left and right could silently swap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    """Where voxel (i, j, k) lies in patient space: origin + direction @ (spacing * (i, j, k)).

    ``spacing`` and ``origin`` are (x, y, z) in mm; ``direction`` is a 3x3 matrix whose columns are the
    patient-space (LPS) unit vectors of the i, j and k axes (ITK convention, row-major tuple of 9)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    size: tuple[int, int, int]  # (i, j, k) = (columns, rows, slices)

    def direction_matrix(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_patient(self) -> npt.NDArray[np.float64]:
        """4x4 affine from (i, j, k, 1) to LPS (x, y, z, 1)."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix() @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def is_close(self, other: Geometry, tol_mm: float = 1e-3) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol_mm)
            and np.allclose(self.origin, other.origin, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )


@dataclass
class Volume:
    """Voxel data in SimpleITK/NumPy order (k, j, i) = (slice, row, column) with its geometry."""

    # Any dtype: images are int16/float32, masks uint8/bool; steps check what they need.
    array: npt.NDArray[Any]
    geometry: Geometry
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = tuple(reversed(self.geometry.size))
        if self.array.shape != expected:
            raise ValueError(f"array shape {self.array.shape} does not match geometry size (k, j, i) {expected}")

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.geometry.spacing)
        image.SetOrigin(self.geometry.origin)
        image.SetDirection(self.geometry.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, meta: dict[str, str] | None = None) -> Volume:
        return cls(sitk.GetArrayFromImage(image), geometry_of(image), dict(meta or {}))

    def with_array(self, array: npt.NDArray[Any]) -> Volume:
        """The same geometry with other voxel data (e.g. a mask or a normalised image)."""
        return Volume(array, self.geometry, dict(self.meta))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.geometry.spacing))


def geometry_of(image: sitk.Image) -> Geometry:
    sx, sy, sz = image.GetSpacing()
    ox, oy, oz = image.GetOrigin()
    ni, nj, nk = image.GetSize()
    return Geometry(
        spacing=(float(sx), float(sy), float(sz)),
        origin=(float(ox), float(oy), float(oz)),
        direction=tuple(float(d) for d in image.GetDirection()),
        size=(int(ni), int(nj), int(nk)),
    )


def resample(
    volume: Volume,
    grid: Geometry,
    transform: sitk.Transform | None = None,
    *,
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
) -> Volume:
    """``volume`` sampled on ``grid``; ``transform`` maps grid points to points of ``volume`` (identity:
    the scanner geometry alone). Nearest-neighbour keeps the voxel type (label maps stay labels);
    every other interpolator returns float32."""
    ref = sitk.Image(list(grid.size), sitk.sitkUInt8)
    ref.SetSpacing(grid.spacing)
    ref.SetOrigin(grid.origin)
    ref.SetDirection(grid.direction)
    out = sitk.Resample(
        volume.to_sitk(),
        ref,
        transform if transform is not None else sitk.Transform(),
        interpolator,
        default,
        sitk.sitkFloat32 if interpolator != sitk.sitkNearestNeighbor else sitk.sitkUnknown,
    )
    return Volume.from_sitk(out, volume.meta)


def downsample(volume: Volume, spacing_mm: float) -> sitk.Image:
    """``volume`` as float32 on a grid of ``spacing_mm`` covering the same box in the same direction,
    Gaussian-smoothed first (sigma = half the new spacing along axes that get coarser) so the coarse
    image does not alias."""
    g = volume.geometry
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    size = [max(8, round(n * s / spacing_mm)) for n, s in zip(g.size, g.spacing, strict=True)]
    spacing = [n * s / m for n, s, m in zip(g.size, g.spacing, size, strict=True)]
    # Keep the outer corner of the box: the first voxel centre moves by half the change of size.
    shift = np.array([(new - old) / 2.0 for new, old in zip(spacing, g.spacing, strict=True)])
    origin = np.asarray(g.origin) + g.direction_matrix() @ shift
    smoothed = sitk.SmoothingRecursiveGaussian(image, [max(0.01, new / 2.0) if new > old else 0.01
                                                       for new, old in zip(spacing, g.spacing, strict=True)])
    return sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, tuple(origin.tolist()), spacing,
                         g.direction, 0.0, sitk.sitkFloat32)
