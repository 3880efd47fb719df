"""Lesion by lesion: a binary lesion mask split into numbered lesions and each one measured as RANO-BM asks.

Brain metastases are counted and followed one by one, so the answer is a table, not a volume: per lesion
its volume (mL), its longest diameter on axial slices (RANO-BM measures the longest in-plane diameter on
axial images; a lesion is measurable from 10 mm), its centroid in patient coordinates (LPS, mm) and the
network's confidence (mean probability over its voxels); and the count and the total volume.

A lesion is a 26-connected component (as the RTSTRUCT's contours join diagonal touches). Lesions are
numbered largest first (ties by position), so "Met 1" is the largest in every object that names them
(label map, SEG segments, RTSTRUCT ROIs, SR rows).

Axial diameters: on a series whose slices are axial (within :data:`AXIAL_TOLERANCE_DEG`, e.g. a tilted
AC-PC acquisition) the lesion is measured on its own slices, as a radiologist measures on the images; a
sagittal or coronal series (a 3D T1 post-contrast is often sagittal) is reformatted to axial planes of its
finest spacing first. The diameter is the longest distance between two points of the lesion's outline in
one slice (marching squares through pixel-edge midpoints, :mod:`neuroflow.core.planar_contours`), so a
lesion of one voxel measures one voxel across."""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from neuroflow.core.planar_contours import mask_contours
from neuroflow.core.volume import Geometry, Volume, resample

# A slice plane this close to axial (angle between its normal and the patient's z axis) counts as axial.
AXIAL_TOLERANCE_DEG = 30.0
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LesionMeasurement:
    """One lesion: ``number`` is its value in the lesion label map (1 = the largest)."""

    number: int
    voxels: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_mm: tuple[float, float, float]  # patient coordinates, LPS
    confidence: float | None  # mean probability over the lesion's voxels; None without probabilities


@dataclass(frozen=True)
class Lesions:
    """The lesion label map (uint16 on the mask's grid: 0 = none, n = lesion n) and the lesions' measures."""

    labels: Volume
    lesions: tuple[LesionMeasurement, ...]

    @property
    def count(self) -> int:
        return len(self.lesions)

    @property
    def total_volume_ml(self) -> float:
        return sum(lesion.volume_ml for lesion in self.lesions)


def label_lesions(mask: Volume, *, probabilities: Volume | None = None, min_volume_mm3: float = 0.0) -> Lesions:
    """Split ``mask`` (non-zero = lesion) into 26-connected lesions of at least ``min_volume_mm3``, numbered
    largest first, and measure each (module doc). ``probabilities`` (same grid, 0..1) gives each lesion its
    confidence. Refuses (ValueError) probabilities on another grid or more lesions than uint16 can number."""
    if probabilities is not None and not probabilities.geometry.is_close(mask.geometry):
        raise ValueError("the probabilities are not on the lesion mask's grid")
    components, count = ndimage.label(np.asarray(mask.array) != 0, structure=_CONNECTIVITY)
    if count > np.iinfo(np.uint16).max:
        raise ValueError(f"{count} lesions: more than a uint16 label map can number")
    voxel_mm3 = mask.voxel_volume_mm3
    affine = mask.geometry.index_to_patient()
    found: list[tuple[int, FloatArray, int]] = []  # (voxels, centroid, component)
    for component, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        local = components[box] == component
        voxels = int(local.sum())
        if voxels * voxel_mm3 < min_volume_mm3:
            continue
        kji = np.argwhere(local).mean(axis=0) + np.array([s.start for s in box])
        found.append((voxels, (affine @ np.array([kji[2], kji[1], kji[0], 1.0]))[:3], component))
    # Largest first; equal sizes by position (z, y, x), so the numbering never depends on scan order.
    found.sort(key=lambda f: (-f[0], *(round(float(v), 3) for v in f[1][::-1])))
    lookup = np.zeros(count + 1, dtype=np.uint16)
    for number, (_, _, component) in enumerate(found, start=1):
        lookup[component] = number
    labels = mask.with_array(lookup[components])
    boxes = ndimage.find_objects(labels.array)
    measured = []
    for number, (voxels, centroid, _) in enumerate(found, start=1):
        box = boxes[number - 1]
        assert box is not None  # every number was given to a component
        confidence = None
        if probabilities is not None:
            confidence = float(np.asarray(probabilities.array)[box][labels.array[box] == number].mean())
        measured.append(LesionMeasurement(
            number=number, voxels=voxels, volume_ml=voxels * voxel_mm3 / 1000.0,
            longest_axial_diameter_mm=longest_axial_diameter_mm(labels.array == number, mask.geometry),
            centroid_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])), confidence=confidence))
    return Lesions(labels, tuple(measured))


@dataclass(frozen=True)
class LesionShape:
    """A lesion's extent along its principal axes: ``axes_mm`` are the standard deviations (mm) of its
    tissue along them, longest first (a solid or hollow sphere has three equal axes, a vessel one long axis,
    the dura one short axis)."""

    axes_mm: tuple[float, float, float]

    @property
    def axis_ratio(self) -> float:
        """Longest over shortest axis: 1 for a sphere; large for a tube (long over thin) or a plate
        (wide over thin)."""
        return self.axes_mm[0] / self.axes_mm[2]

    @property
    def elongation(self) -> float:
        return self.axes_mm[0] / self.axes_mm[1]

    @property
    def flatness(self) -> float:
        return self.axes_mm[1] / self.axes_mm[2]


def lesion_shape(mask: npt.NDArray[np.bool_], geometry: Geometry) -> LesionShape:
    """The principal axes of ``mask`` (one lesion, (k, j, i) on ``geometry``) in patient mm: the covariance
    of its voxels' centres plus that of one voxel's box (spacing^2 / 12 per axis), so a lesion of one voxel
    on an isotropic grid is a sphere, and a thick slice does not make a small lesion look flat or long."""
    kji = np.argwhere(mask)
    if not len(kji):
        raise ValueError("an empty lesion has no shape")
    to_mm = geometry.direction_matrix() @ np.diag(geometry.spacing)
    points = kji[:, ::-1].astype(np.float64) @ to_mm.T
    box = to_mm @ np.diag(np.full(3, 1.0 / 12.0)) @ to_mm.T
    spread = (np.cov(points, rowvar=False, bias=True) if len(points) > 1 else np.zeros((3, 3))) + box
    eigenvalues = np.sort(np.clip(np.linalg.eigvalsh(spread), 0.0, None))[::-1]
    axes = np.sqrt(eigenvalues)
    return LesionShape((float(axes[0]), float(axes[1]), float(axes[2])))


def longest_axial_diameter_mm(mask: npt.NDArray[np.bool_], geometry: Geometry) -> float:
    """The longest in-plane diameter (mm) of ``mask`` (one lesion, (k, j, i) on ``geometry``) over axial
    slices: the grid's own slices when they are axial, else axial planes it is reformatted onto."""
    if not mask.any():
        return 0.0
    normal = geometry.direction_matrix()[:, 2]
    if abs(float(normal[2])) < math.cos(math.radians(AXIAL_TOLERANCE_DEG)):
        mask, geometry = _reformatted_axially(mask, geometry)
    in_plane = geometry.direction_matrix()[:, :2] * np.asarray(geometry.spacing[:2])  # mm per (i, j) step
    longest = 0.0
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        points = np.concatenate(mask_contours(mask[k]))  # (row, column)
        longest = max(longest, _longest_chord(points[:, [1, 0]] @ in_plane.T))
    return longest


def _longest_chord(points_mm: FloatArray) -> float:
    """The largest distance between two of ``points_mm`` (N, 3), over their convex hull's vertices."""
    centred = points_mm - points_mm.mean(axis=0)
    # The points are planar: their two main axes span the plane (the hull is taken in 2D).
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    flat = centred @ axes[:2].T
    with contextlib.suppress(QhullError):  # collinear (a one-voxel-wide line): every point is on the "hull"
        flat = flat[ConvexHull(flat).vertices]
    return max((float(np.linalg.norm(a - b)) for a, b in itertools.combinations(flat, 2)), default=0.0)


def _reformatted_axially(mask: npt.NDArray[np.bool_], geometry: Geometry) -> tuple[npt.NDArray[np.bool_], Geometry]:
    """The lesion's neighbourhood resampled (nearest neighbour) onto an axial LPS grid of the finest spacing."""
    box = tuple(slice(max(0, int(idx.min()) - 1), int(idx.max()) + 2) for idx in np.nonzero(mask))
    offset = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)
    origin = geometry.index_to_patient() @ np.append(offset, 1.0)
    crop = mask[box]
    local = Geometry(geometry.spacing, (float(origin[0]), float(origin[1]), float(origin[2])), geometry.direction,
                     (crop.shape[2], crop.shape[1], crop.shape[0]))
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in local.size])))
    patient = (local.index_to_patient() @ np.c_[corners, np.ones(len(corners))].T).T[:, :3]
    step = min(geometry.spacing)
    low, high = patient.min(axis=0), patient.max(axis=0)
    size = tuple(math.ceil((h - lo) / step) + 1 for lo, h in zip(low, high, strict=True))
    axial = Geometry((step, step, step), (float(low[0]), float(low[1]), float(low[2])),
                     (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (size[0], size[1], size[2]))
    out = resample(Volume(crop.astype(np.uint8), local), axial, interpolator=sitk.sitkNearestNeighbor)
    return np.asarray(out.array) > 0, axial


# A voxel is lesion at this probability: the operating point evaluated in models/metastases_unet/EVALUATION.md.
LESION_THRESHOLD = 0.5
# A 2 mm metastasis is about 4 mm3; anything smaller is noise at 1 mm voxels.
MIN_LESION_MM3 = 3.0
# A component whose longest principal axis is over this many times its shortest (lesion_shape) is not a
# metastasis: metastases are round, solid or ring-enhancing (ratio near 1); enhancing vessels are tubes and
# the dura a plate. Chosen on the development cases (seeds 0-8, models/metastases_unet/EVALUATION.md "Shape
# filter"): found lesions of 6 mm or more reach 2.05, false positives spread from 1.3 to 6; there 2.2 took
# false positives from 4.9 to 2.6 per case for 3 of 65 lesions found (each reached by a 2-3 mm speck only). On held-out
# seeds 20-25, looked at once: 8.3 -> 3.0 false positives per case, none of the 32 lesions found lost.
MAX_AXIS_RATIO = 2.2


def lesions_on(probability: Volume, geometry: Geometry, *, threshold: float = LESION_THRESHOLD,
               min_volume_mm3: float = MIN_LESION_MM3, max_axis_ratio: float = MAX_AXIS_RATIO) -> Lesions:
    """The lesions of ``probability`` on ``geometry`` (the T1CE as acquired): linear resampling of the
    probability, then threshold and connected components, numbered largest first; a component longer or
    wider than round (:func:`lesion_shape`'s axis ratio over ``max_axis_ratio``: a vessel, the dura) is not
    a lesion."""
    on_grid = resample(probability, geometry, interpolator=sitk.sitkLinear)
    values: npt.NDArray[np.float32] = np.clip(np.asarray(on_grid.array, dtype=np.float32), 0.0, 1.0)
    on_grid = on_grid.with_array(values)
    found = label_lesions(on_grid.with_array((values >= threshold).astype(np.uint8)), probabilities=on_grid,
                          min_volume_mm3=min_volume_mm3)
    labels = np.asarray(found.labels.array)
    round_ = [number for number, box in enumerate(ndimage.find_objects(labels), start=1)
              if box is not None and lesion_shape(labels[box] == number, geometry).axis_ratio <= max_axis_ratio]
    if len(round_) == found.count:
        return found
    return label_lesions(found.labels.with_array(np.isin(labels, round_).astype(np.uint8)), probabilities=on_grid,
                         min_volume_mm3=min_volume_mm3)
