"""Overlap metrics of the glioma evaluation: voxel Dice and the BraTS 2023 lesion-wise Dice.

Lesion-wise Dice (BraTS 2023 challenge): the reference is split into connected components (26-
connectivity); each is dilated by ``DILATION`` voxels and every predicted component touching the
dilated lesion is matched to it; that lesion scores the Dice of the lesion against the union of its
matched predicted components (0 when none). Predicted components that touch no dilated lesion are
false positives and score 0. The lesion-wise Dice is the mean over lesions and false positives.
Components under ``MIN_VOXELS`` voxels are ignored on both sides, as in the challenge's code. Where
reference and prediction are both empty the result is None (the challenge scores 1; we report the
case as undefined rather than as a success)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

BoolArray = npt.NDArray[np.bool_]
DILATION = 3
MIN_VOXELS = 50
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def dice(prediction: BoolArray, reference: BoolArray) -> float | None:
    """Dice coefficient; None when both are empty (undefined, reported as such, never as 1)."""
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return None
    return 2.0 * int((prediction & reference).sum()) / total


def _components(mask: BoolArray) -> tuple[npt.NDArray[np.int32], list[int]]:
    labelled, count = ndimage.label(mask, structure=_CONNECTIVITY)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    return labelled.astype(np.int32), [i for i in range(1, count + 1) if sizes[i] >= MIN_VOXELS]


def lesion_wise_dice(prediction: BoolArray, reference: BoolArray) -> tuple[float | None, int, int]:
    """(lesion-wise Dice, reference lesions, false-positive components) as defined in the module doc."""
    ref_labels, lesions = _components(reference)
    pred_labels, predicted = _components(prediction)
    kept_pred = np.isin(pred_labels, predicted)
    matched: set[int] = set()
    scores: list[float] = []
    dilate = ndimage.generate_binary_structure(3, 2)
    for lesion in lesions:
        own = ref_labels == lesion
        grown = ndimage.binary_dilation(own, dilate, iterations=DILATION)
        hits = [int(v) for v in np.unique(pred_labels[grown & kept_pred]) if v]
        matched.update(hits)
        score = dice(np.isin(pred_labels, hits), own) if hits else 0.0
        scores.append(0.0 if score is None else score)
    false_positives = len([p for p in predicted if p not in matched])
    if not scores and not false_positives:
        return None, 0, 0
    return sum(scores) / (len(scores) + false_positives), len(lesions), false_positives
