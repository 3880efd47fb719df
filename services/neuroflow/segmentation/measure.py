"""Overlap measures for evaluating segmentations against a reference."""

from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Sørensen-Dice overlap of two masks; 1.0 when both are empty (nothing to find, nothing found)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * float(np.count_nonzero(a & b)) / total
