"""Where the metastases trainer centres a patch: which lesion a lesion-centred patch is centred on, and where a
bright non-lesion patch may be centred (no PyTorch here, so CI tests it)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage


def lesion_chances(voxels: npt.ArrayLike, small_bias: float) -> npt.NDArray[np.float64]:
    """The chance of each lesion of a case, proportional to (its voxels) ** -small_bias: 0 picks every lesion
    alike (version 2's sampler); 0.5 a lesion of 25 voxels 20 times as often as one of 10,000 (version 3's chunk),
    so the small metastases a radiosurgery screen is for are not a minority of what the network learns from."""
    sizes = np.asarray(voxels, dtype=np.float64)
    if sizes.ndim != 1 or not len(sizes) or (sizes <= 0).any():
        raise ValueError(f"lesion sizes must be positive voxel counts, got {sizes.tolist()}")
    chances = sizes ** -small_bias
    return np.asarray(chances / chances.sum(), dtype=np.float64)


def bright_negatives(t1ce_z: npt.NDArray[np.floating], labels: npt.NDArray[np.integer], *, min_z: float,
                     margin: int, at_most: int, rng: np.random.Generator) -> npt.NDArray[np.int16]:
    """Voxels (K, 3) of a case where the T1CE is as bright as a metastasis (z-score >= ``min_z``) but no lesion is
    within ``margin`` voxels: enhancing veins, dura, choroid plexus, and in the real post-contrast T1s the MS
    brains' own bright tissue. Version 3's false positives were small specks there; a patch centred on one
    teaches the network what is bright and not a metastasis. At most ``at_most``, drawn at random, to bound the
    pool's memory; none when the case has no such voxel."""
    near_lesion = labels > 0
    if margin > 0 and near_lesion.any():
        near_lesion = ndimage.binary_dilation(near_lesion, iterations=margin)
    found = np.argwhere((t1ce_z >= min_z) & ~near_lesion)
    if len(found) > at_most:
        found = found[rng.choice(len(found), at_most, replace=False)]
    return found.astype(np.int16)
