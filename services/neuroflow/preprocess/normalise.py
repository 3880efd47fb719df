"""Intensity normalisation of MR volumes before segmentation.

The one definition of the normalisation named ``zscore_in_brain`` in model cards. The glioma model was
trained on arrays produced by exactly this function (``models/glioma_unet/synthesize.py`` imports it),
so the pipeline must call it, not a re-implementation, or the network sees inputs it never learned.
Pure numpy: importable where torch is not installed."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Model-card name of the normalisation implemented here.
ZSCORE_IN_BRAIN = "zscore_in_brain"
# z-scores are clipped to +-CLIP_SD so a few extreme voxels (vessels, a contrast bolus, a hot pixel)
# cannot dominate the input range; tumour contrast lies well within it.
CLIP_SD = 5.0
# Below this standard deviation a channel is treated as constant (blank or saturated series).
_MIN_STD = 1e-6


def zscore_in_mask(array: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """Z-score one channel over the voxels of ``mask``.

    Takes ``array`` (any shape, any float or integer dtype) and a boolean ``mask`` of the same shape
    (the brain). Returns float32 of the same shape: inside the mask ``(x - mean) / std`` with mean and
    std computed over the mask's voxels only, then clipped to [-CLIP_SD, CLIP_SD]; outside the mask 0.
    Mean and std are taken before clipping, so unclipped data have mean 0 and std 1 in the mask.

    Refuses (ValueError) a shape mismatch or an empty mask. A channel that is constant inside the mask
    becomes all zeros rather than dividing by zero: the caller decides whether such a series is usable.
    """
    values = np.asarray(array)
    brain = np.asarray(mask, dtype=bool)
    if values.shape != brain.shape:
        raise ValueError(f"image shape {values.shape} and mask shape {brain.shape} differ")
    if not brain.any():
        raise ValueError("brain mask is empty: nothing to normalise over")
    inside = values[brain].astype(np.float64)
    mean = float(inside.mean())
    std = float(inside.std())
    out = np.zeros(values.shape, dtype=np.float32)
    if std < _MIN_STD:
        return out
    out[brain] = np.clip((inside - mean) / std, -CLIP_SD, CLIP_SD).astype(np.float32)
    return out
