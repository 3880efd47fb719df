"""Lesion-wise measures (issue 15, RANO-BM) on analytic shapes: a sphere of radius r has 4/3 pi r^3 of volume
and an axial diameter of 2r; an ellipsoid long craniocaudally is measured across its axial section, on an
axial and on a sagittal grid alike; lesions are numbered largest first with their centroids in LPS."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from neuroflow.core.lesions import MAX_AXIS_RATIO, label_lesions, lesion_shape, lesions_on, longest_axial_diameter_mm
from neuroflow.core.volume import Geometry, Volume

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Sagittal: columns run posterior -> anterior (-y), rows superior -> inferior (-z), slices right -> left (+x).
SAGITTAL = (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def _grid(direction: tuple[float, ...], spacing: tuple[float, float, float], size: tuple[int, int, int]) -> Geometry:
    d = np.asarray(direction).reshape(3, 3)
    half = d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2.0)
    return Geometry(spacing, tuple(float(v) for v in -half), direction, size)


def _ellipsoid(geometry: Geometry, centre_mm: tuple[float, float, float],
               semi_axes_mm: tuple[float, float, float]) -> npt.NDArray[np.uint8]:
    """Voxels whose centres lie in an ellipsoid with axes along patient x, y, z (LPS)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in geometry.size], indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    xyz = (geometry.index_to_patient() @ index)[:3].T - np.asarray(centre_mm)
    inside = ((xyz / np.asarray(semi_axes_mm)) ** 2).sum(axis=1) <= 1.0
    return inside.reshape(i.shape).transpose(2, 1, 0).astype(np.uint8)  # (i, j, k) -> (k, j, i)


@pytest.mark.parametrize("radius", [3.0, 6.0, 12.0])
def test_a_sphere_has_its_analytic_volume_and_an_axial_diameter_of_2r(radius: float) -> None:
    geometry = _grid(AXIAL, (0.9, 0.9, 1.0), (64, 64, 36))
    mask = Volume(_ellipsoid(geometry, (1.3, -2.1, 0.4), (radius,) * 3), geometry)
    (lesion,) = label_lesions(mask).lesions
    assert lesion.volume_ml == pytest.approx(4.0 / 3.0 * math.pi * radius**3 / 1000.0, rel=0.06)
    assert lesion.longest_axial_diameter_mm == pytest.approx(2.0 * radius, abs=0.9)
    np.testing.assert_allclose(lesion.centroid_mm, (1.3, -2.1, 0.4), atol=0.3)


@pytest.mark.parametrize("direction", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_an_ellipsoid_long_craniocaudally_is_measured_across_its_axial_section(direction: tuple[float, ...]) -> None:
    """Semi-axes x 4, y 7, z 13 mm: the longest axial diameter is 14 mm (not the 26 mm craniocaudal
    length), on a sagittal acquisition as on an axial one."""
    geometry = _grid(direction, (1.0, 0.8, 1.2), (48, 48, 40))
    mask = Volume(_ellipsoid(geometry, (0.0, 0.0, 0.0), (4.0, 7.0, 13.0)), geometry)
    diameter = longest_axial_diameter_mm(mask.array > 0, geometry)
    assert diameter == pytest.approx(14.0, abs=1.2)


def test_lesions_are_numbered_largest_first_with_count_total_and_confidence() -> None:
    geometry = _grid(AXIAL, (1.0, 1.0, 1.0), (60, 50, 40))
    big = _ellipsoid(geometry, (15.0, 0.0, 0.0), (8.0, 8.0, 8.0))  # on the patient's left (x > 0)
    small = _ellipsoid(geometry, (-15.0, 5.0, 0.0), (3.0, 3.0, 3.0))  # on the right
    mask = Volume(big + small, geometry)
    probabilities = mask.with_array(np.where(big > 0, 0.9, np.where(small > 0, 0.6, 0.0)).astype(np.float32))
    found = label_lesions(mask, probabilities=probabilities)
    assert found.count == 2
    first, second = found.lesions
    assert (first.number, second.number) == (1, 2)
    assert first.voxels > second.voxels and first.centroid_mm[0] > 0 > second.centroid_mm[0]
    assert (first.confidence, second.confidence) == (pytest.approx(0.9), pytest.approx(0.6))
    assert found.total_volume_ml == pytest.approx((big.sum() + small.sum()) / 1000.0)
    assert (found.labels.array[big > 0] == 1).all() and (found.labels.array[small > 0] == 2).all()


def test_a_diagonal_touch_is_one_lesion_and_specks_below_the_minimum_are_dropped() -> None:
    geometry = _grid(AXIAL, (1.0, 1.0, 1.0), (10, 10, 10))
    array = np.zeros((10, 10, 10), dtype=np.uint8)
    array[4, 4, 4] = array[5, 5, 5] = 1  # touching at a corner: one lesion (26-connected)
    array[1, 1, 1] = 1
    assert label_lesions(Volume(array, geometry)).count == 2
    assert label_lesions(Volume(array, geometry), min_volume_mm3=2.0).count == 1
    single = np.zeros_like(array)
    single[2, 3, 4] = 1
    (lesion,) = label_lesions(Volume(single, geometry)).lesions
    assert lesion.longest_axial_diameter_mm == pytest.approx(1.0)  # one voxel across
    assert label_lesions(Volume(np.zeros_like(array), geometry)).count == 0


def test_probabilities_on_another_grid_are_refused() -> None:
    geometry = _grid(AXIAL, (1.0, 1.0, 1.0), (10, 10, 10))
    other = _grid(AXIAL, (1.0, 1.0, 2.0), (10, 10, 10))
    with pytest.raises(ValueError, match="grid"):
        label_lesions(Volume(np.zeros((10, 10, 10), np.uint8), geometry),
                      probabilities=Volume(np.zeros((10, 10, 10), np.float32), other))


def _tube(geometry: Geometry, length_mm: float, radius_mm: float) -> npt.NDArray[np.uint8]:
    """A vessel: a cylinder of ``radius_mm`` along the oblique direction (1, 1, 0.5), ``length_mm`` long."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in geometry.size], indexing="ij")
    xyz = (geometry.index_to_patient() @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)]))[:3].T
    axis = np.array([1.0, 1.0, 0.5]) / 1.5
    along = xyz @ axis
    across = np.linalg.norm(xyz - np.outer(along, axis), axis=1)
    inside = (np.abs(along) <= length_mm / 2) & (across <= radius_mm)
    return inside.reshape(i.shape).transpose(2, 1, 0).astype(np.uint8)


def test_spheres_solid_or_ring_enhancing_are_round_and_vessels_and_dura_are_not() -> None:
    geometry = _grid(AXIAL, (1.0, 1.0, 1.0), (48, 48, 48))
    sphere = _ellipsoid(geometry, (0.3, -0.2, 0.1), (6.0, 6.0, 6.0)) > 0
    ring = sphere & ~(_ellipsoid(geometry, (0.3, -0.2, 0.1), (4.0, 4.0, 4.0)) > 0)  # necrotic centre removed
    small = _ellipsoid(geometry, (0.0, 0.0, 0.0), (1.6, 1.6, 1.6)) > 0  # a 3 mm metastasis: a few voxels
    tube = _tube(geometry, 24.0, 1.2) > 0
    plate = _ellipsoid(geometry, (0.0, 0.0, 0.0), (14.0, 12.0, 1.0)) > 0  # a patch of dura, 2-3 voxels thick
    for name, mask in (("sphere", sphere), ("ring", ring), ("small", small)):
        assert lesion_shape(mask, geometry).axis_ratio < 1.2, name
        assert lesion_shape(mask, geometry).axis_ratio <= MAX_AXIS_RATIO, name
    assert lesion_shape(tube, geometry).elongation > 3.0
    assert lesion_shape(plate, geometry).flatness > 3.0
    for name, mask in (("tube", tube), ("plate", plate)):
        assert lesion_shape(mask, geometry).axis_ratio > MAX_AXIS_RATIO, name


def test_lesions_on_keeps_round_lesions_and_rejects_a_vessel_and_a_dural_plate() -> None:
    geometry = _grid(AXIAL, (1.0, 1.0, 1.0), (64, 64, 64))
    probability = np.zeros((64, 64, 64), np.float32)
    probability[_ellipsoid(geometry, (-15.0, -15.0, 0.0), (6.0, 6.0, 6.0)) > 0] = 0.9
    ring = (_ellipsoid(geometry, (15.0, 15.0, 0.0), (7.0, 7.0, 7.0)) > 0) & \
        ~(_ellipsoid(geometry, (15.0, 15.0, 0.0), (4.5, 4.5, 4.5)) > 0)
    probability[ring] = 0.8
    probability[np.roll(_tube(geometry, 30.0, 1.2) > 0, (0, 0, -18), axis=(0, 1, 2))] = 0.95
    probability[_ellipsoid(geometry, (15.0, -15.0, 20.0), (14.0, 12.0, 1.0)) > 0] = 0.95
    volume = Volume(probability, geometry)
    found = lesions_on(volume, geometry)
    assert found.count == 2
    kept = sorted(round(lesion.centroid_mm[0]) for lesion in found.lesions)
    assert kept == [-15, 15]
    assert lesions_on(volume, geometry, max_axis_ratio=float("inf")).count == 4
