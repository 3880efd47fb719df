"""Intensity normalisation inside the brain: what the glioma model was trained on, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from neuroflow.preprocess.normalise import zscore_in_mask


def test_brain_voxels_have_zero_mean_unit_spread_and_background_is_zero() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(500.0, 80.0, size=(20, 30, 40)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[5:15, 5:25, 5:35] = True
    image[~mask] = 3000.0  # skull and fat must not move the brain's statistics
    out = zscore_in_mask(image, mask)
    assert out.dtype == np.float32
    assert abs(float(out[mask].mean())) < 1e-3
    assert float(out[mask].std()) == pytest.approx(1.0, abs=1e-2)
    assert (out[~mask] == 0).all()


def test_outliers_are_clipped() -> None:
    image = np.ones((4, 4, 4), dtype=np.float32)
    image[0, 0, 0] = 1e6
    image[1, 1, 1] = 0.0
    out = zscore_in_mask(image, np.ones(image.shape, dtype=bool))
    assert float(out.max()) <= 5.0 and float(out.min()) >= -5.0


def test_empty_mask_is_refused() -> None:
    with pytest.raises(ValueError):
        zscore_in_mask(np.ones((3, 3, 3), dtype=np.float32), np.zeros((3, 3, 3), dtype=bool))
