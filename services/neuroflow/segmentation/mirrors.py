"""Test-time mirrors: the network run on inputs mirrored along a patient axis, its output mirrored back onto the
plain grid. The glioma failure flag compares such members with the result (``review.py``); the metastases
pipeline averages them with the plain prediction (``metastases.py``). A mirror is named by patient axis, never
by array axis: the same name mirrors left and right on an axial and on a sagittal acquisition."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only, as in glioma.py: the inference part imports without pydantic or SimpleITK
    from neuroflow.core.config import Mirror
    from neuroflow.core.volume import Geometry

# Patient axes (DICOM LPS x, y, z) of the mirrors a site may run.
FLIP_PATIENT_AXES: dict[Mirror, int] = {"left_right": 0, "anterior_posterior": 1, "superior_inferior": 2}


def flip_array_axis(geometry: Geometry, flip: Mirror) -> int:
    """The array axis (0-2 of a (k, j, i) array) closest to the patient axis of ``flip``: a left-right mirror
    is one along patient x whatever the acquisition plane was."""
    columns = np.abs(geometry.direction_matrix()[FLIP_PATIENT_AXES[flip], :])  # index axes i, j, k
    return 2 - int(np.argmax(columns))
