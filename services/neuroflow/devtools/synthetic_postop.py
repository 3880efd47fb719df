"""Synthetic post-operative glioma studies: a resection cavity carved into a real brain (issue 15, seed S001).

No labelled post-operative study is available, so the cavity rules (segmentation/cavity.py) are set and tested
on cavities carved into real co-registered MR volumes: an irregular ellipsoid (radii perturbed by a smooth
random field) filled with the brain's own CSF signal (the median of its CSF-like voxels on each sequence, with
noise), a partial enhancing rim on T1CE (residual tumour at the margin), and a FLAIR-bright shell of gliosis
and oedema around it. The carved cavity and rim are the truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume, resample

Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class PostopCase:
    """The carved volumes (same roles and grid as the input), the cavity and its enhancing rim (truth)."""

    volumes: dict[SeriesRole, Volume]
    cavity: Mask
    rim: Mask

    @property
    def cavity_ml(self) -> float:
        volume = next(iter(self.volumes.values()))
        return float(self.cavity.sum()) * volume.voxel_volume_mm3 / 1000.0


def csf_signal(volumes: dict[SeriesRole, Volume], brain: Mask) -> dict[SeriesRole, float]:
    """Each sequence's CSF intensity: its median over the brain's CSF-like voxels (brightest 3 % on T2 or
    darkest 3 % on FLAIR when there is no T2, and darkest half on T1/T1CE)."""
    if SeriesRole.T2 in volumes:
        t2 = np.asarray(volumes[SeriesRole.T2].array, dtype=float)
        csf = brain & (t2 >= np.percentile(t2[brain], 97))
    else:
        flair = np.asarray(volumes[SeriesRole.FLAIR].array, dtype=float)
        csf = brain & (flair <= np.percentile(flair[brain], 3))
    for role in (SeriesRole.T1, SeriesRole.T1CE):
        if role in volumes:
            t1 = np.asarray(volumes[role].array, dtype=float)
            csf &= t1 <= np.percentile(t1[brain], 50)
    return {role: float(np.median(np.asarray(v.array, dtype=float)[csf])) for role, v in volumes.items()}


def carve_cavity(volumes: dict[SeriesRole, Volume], brain: Mask, centre: tuple[int, int, int],
                 radii_mm: tuple[float, float, float], *, seed: int, rim_fraction: float = 0.35,
                 rim_mm: float = 2.0, gliosis_mm: float = 5.0, noise_fraction: float = 0.08) -> PostopCase:
    """A cavity at ``centre`` (array index z, y, x) with ``radii_mm`` (z, y, x), its edge perturbed by a smooth
    field from ``seed``; kept 3 mm inside the brain. ``rim_fraction``: about that share of the ``rim_mm`` shell
    enhances on T1CE; FLAIR brightens in a ``gliosis_mm`` shell. The fluid carries Gaussian noise of
    ``noise_fraction`` of the brain's median signal."""
    rng = np.random.default_rng(seed)
    first = next(iter(volumes.values()))
    spacing = np.asarray(first.geometry.spacing[::-1], dtype=float)
    grid: tuple[npt.NDArray[np.intp], ...] = tuple(np.indices(brain.shape, sparse=True))
    radius = sum((((axis - c) * s) / r) ** 2 for axis, c, s, r in zip(grid, centre, spacing, radii_mm, strict=True))
    field = ndimage.gaussian_filter(rng.standard_normal(brain.shape), sigma=6.0)
    field /= field.std() or 1.0
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    cavity: Mask = (np.sqrt(radius) + 0.12 * field <= 1.0) & (depth > 3.0)
    labels, count = ndimage.label(cavity)
    if count > 1:  # one cavity: the component at the centre (or the largest)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        cavity = labels == int(np.argmax(sizes))
    outside = ndimage.distance_transform_edt(~cavity, sampling=spacing)
    side = ndimage.gaussian_filter(rng.standard_normal(brain.shape), sigma=5.0)
    side_threshold = np.quantile(side[(outside > 0) & (outside <= rim_mm)], 1.0 - rim_fraction)
    rim: Mask = (outside > 0) & (outside <= rim_mm) & brain & (side >= side_threshold)
    gliosis = (outside > 0) & (outside <= gliosis_mm) & brain
    csf = csf_signal(volumes, brain)
    # Partial volume: the wall is a 1 mm blur between tissue and fluid, not a step.
    fluid_share = ndimage.gaussian_filter(cavity.astype(np.float32), sigma=1.0)
    carved: dict[SeriesRole, Volume] = {}
    for role, volume in volumes.items():
        array = np.asarray(volume.array, dtype=np.float32).copy()
        in_brain = array[brain]
        noise = noise_fraction * float(np.median(in_brain))
        array = (1.0 - fluid_share) * array + fluid_share * (csf[role] + rng.normal(0.0, noise, array.shape))
        if role is SeriesRole.T1CE:
            array[rim] = np.percentile(in_brain, 99.5) + rng.normal(0.0, noise, int(rim.sum()))
        if role is SeriesRole.FLAIR:
            bright = float(np.percentile(in_brain, 95))
            weight = np.clip(1.0 - outside[gliosis] / gliosis_mm, 0.0, 1.0)
            array[gliosis] = (1 - weight) * array[gliosis] + weight * bright
        carved[role] = volume.with_array(array.astype(volume.array.dtype, copy=False)
                                         if np.issubdtype(volume.array.dtype, np.floating)
                                         else np.round(array).astype(volume.array.dtype))
    return PostopCase(carved, cavity, rim)


def another_session(volume: Volume, *, frame_shift_mm: tuple[float, float, float] = (40.0, -25.0, 15.0),
                    rotation_deg: tuple[float, float, float] = (4.0, 0.0, 2.0),
                    motion_mm: tuple[float, float, float] = (3.0, -4.0, 0.0)) -> tuple[Volume, sitk.Euler3DTransform]:
    """``volume`` as a later session would scan it: its frame of reference ``frame_shift_mm`` away (two sessions
    need not share one) and the head turned by ``rotation_deg`` (about x, y, z) and moved ``motion_mm`` besides.
    Returns the new session's image on a grid of the same size and spacing, and the transform from its points to
    ``volume``'s (what a registration of the two must find)."""
    grid = volume.geometry
    origin = np.asarray(grid.origin) + np.asarray(frame_shift_mm)
    moved = Geometry(grid.spacing, (float(origin[0]), float(origin[1]), float(origin[2])), grid.direction, grid.size)
    centre = np.asarray(moved.index_to_patient() @ np.array([*(np.asarray(grid.size) / 2.0), 1.0]))[:3]
    to_before = sitk.Euler3DTransform()
    to_before.SetCenter(tuple(float(c) for c in centre))
    to_before.SetRotation(*(float(np.radians(a)) for a in rotation_deg))
    to_before.SetTranslation(tuple(float(v) for v in np.asarray(motion_mm) - np.asarray(frame_shift_mm)))
    return resample(volume, moved, to_before), to_before
