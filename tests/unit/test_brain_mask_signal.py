"""The brain mask leaves out the reference series' empty background (a pre-stripped input's), and changes
nothing on an unstripped head or a blank series."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from neuroflow.core.volume import Geometry, Volume
from neuroflow.preprocess.normalise import zscore_in_mask
from neuroflow.preprocess.skull_strip import with_signal

GRID = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (40, 40, 40))


def _ball(radius: float) -> npt.NDArray[np.bool_]:
    z, y, x = np.mgrid[:40, :40, :40]
    inside: npt.NDArray[np.bool_] = ((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) <= radius**2
    return inside


def test_a_pre_stripped_reference_keeps_the_network_outline_to_its_signal() -> None:
    brain = _ball(12)
    rng = np.random.default_rng(0)
    stripped = np.where(brain, rng.normal(500.0, 50.0, brain.shape), 0.0).astype(np.float32)
    # The skull-stripping network's outline is smooth and a couple of voxels wider than the stripped data.
    network = ndimage.binary_dilation(brain, iterations=2).astype(np.uint8)
    mask = with_signal(Volume(network, GRID), Volume(stripped, GRID))
    assert mask.array.dtype == np.uint8 and mask.geometry == GRID
    np.testing.assert_array_equal(mask.array > 0, brain)
    # What the rim did: zeros counted as brain pull the z-scored tissue up and away from the training inputs'.
    assert abs(float(zscore_in_mask(stripped, mask.array > 0)[brain].mean())) < 1e-3
    assert float(zscore_in_mask(stripped, network > 0)[brain].mean()) > 0.3


def test_an_unstripped_head_keeps_the_whole_mask() -> None:
    head = _ball(18)
    rng = np.random.default_rng(1)
    image = np.where(head, rng.normal(400.0, 80.0, head.shape), rng.rayleigh(5.0, head.shape)).astype(np.float32)
    network = _ball(12).astype(np.uint8)
    np.testing.assert_array_equal(with_signal(Volume(network, GRID), Volume(image, GRID)).array, network)


def test_a_rescaled_background_is_found_by_its_value_and_a_dark_voxel_inside_stays() -> None:
    # A z-scored export written to DICOM with an intercept: the background is one value, not zero, and
    # tissue darker than it exists. A voxel inside the brain that holds the background's value is not
    # connected to the edge through it and stays brain.
    brain = _ball(12)
    rng = np.random.default_rng(2)
    background = np.float32(0.37)
    image = np.where(brain, rng.normal(0.0, 1.0, brain.shape), background).astype(np.float32)
    image[20, 20, 20] = background
    network = ndimage.binary_dilation(brain, iterations=2).astype(np.uint8)
    np.testing.assert_array_equal(with_signal(Volume(network, GRID), Volume(image, GRID)).array > 0, brain)


def test_a_blank_reference_leaves_the_mask_to_the_checks_that_refuse_it() -> None:
    network = _ball(12).astype(np.uint8)
    blank = np.zeros(network.shape, dtype=np.float32)
    np.testing.assert_array_equal(with_signal(Volume(network, GRID), Volume(blank, GRID)).array, network)
