"""Preprocessing of the glioma inputs: from DICOM series to co-registered, skull-stripped,
normalised 1 mm volumes, as typed steps. Each step says what it takes, returns and refuses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from neuroflow.core.errors import OrientationMismatch
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, GLIOMA_REFERENCE_ROLE, SeriesRole
from neuroflow.core.volume import Geometry, Volume
from neuroflow.preprocess.convert import series_to_volume
from neuroflow.preprocess.normalise import zscore_in_mask
from neuroflow.preprocess.orientation import FlipCheck, check_left_right
from neuroflow.preprocess.register import RegistrationResult, isotropic_grid, register_rigid, resample
from neuroflow.preprocess.skull_strip import skull_strip


@dataclass
class CoRegistered:
    """Every input role on one isotropic grid (the reference series' field of view)."""

    grid: Geometry
    volumes: dict[SeriesRole, Volume]
    registration: dict[SeriesRole, RegistrationResult] = field(default_factory=dict)


def convert_inputs(instances: dict[SeriesRole, list[Dataset]], *, study_key: str) -> dict[SeriesRole, Volume]:
    """DICOM instances per role -> volumes with exact geometry. Refuses (SeriesRejected) a series with
    missing, duplicate or inconsistent slices."""
    return {role: series_to_volume(datasets, study_key=study_key) for role, datasets in instances.items()}


def check_orientation(volumes: dict[SeriesRole, Volume], *, study_key: str) -> dict[SeriesRole, FlipCheck]:
    """Compares every series with the reference for a left/right mirror. Refuses the study
    (OrientationMismatch) if any series fits the reference better mirrored than as it is."""
    reference = volumes[GLIOMA_REFERENCE_ROLE]
    checks = {role: check_left_right(reference, v) for role, v in volumes.items() if role != GLIOMA_REFERENCE_ROLE}
    flipped = [role for role, c in checks.items() if c.flipped]
    if flipped:
        details = "; ".join(
            f"{role} series {volumes[role].meta.get('series_instance_uid', '?')} fits the "
            f"{GLIOMA_REFERENCE_ROLE} better mirrored (NMI {checks[role].nmi_mirrored:.3f} vs "
            f"{checks[role].nmi_as_is:.3f} as is)" for role in flipped
        )
        raise OrientationMismatch(
            study_key,
            f"left/right flip suspected: {details}. Check how these series were exported or converted; "
            "the study was not processed rather than risk a wrong-side result.",
            stage="orientation",
        )
    return checks


def coregister(volumes: dict[SeriesRole, Volume], *, spacing_mm: float) -> CoRegistered:
    """Registers every role rigidly onto the reference (mutual information) and resamples all onto
    the reference's field of view at ``spacing_mm`` isotropic (linear interpolation)."""
    reference = volumes[GLIOMA_REFERENCE_ROLE]
    grid = isotropic_grid(reference.geometry, spacing_mm)
    fixed = resample(reference, grid)
    out = {GLIOMA_REFERENCE_ROLE: fixed}
    registration: dict[SeriesRole, RegistrationResult] = {}
    for role, moving in volumes.items():
        if role == GLIOMA_REFERENCE_ROLE:
            continue
        result = register_rigid(fixed, moving)
        registration[role] = result
        out[role] = resample(moving, grid, result.transform)
    return CoRegistered(grid=grid, volumes=out, registration=registration)


def brain_mask(
    coregistered: CoRegistered, backend: InferenceBackend, models: tuple[ModelRef, ModelRef], *, study_key: str
) -> Volume:
    """Brain mask on the common grid from the T1 (the contrast the skull-stripping network was trained
    on), falling back to the reference if the study has no plain T1."""
    source = coregistered.volumes.get(SeriesRole.T1, coregistered.volumes[GLIOMA_REFERENCE_ROLE])
    return skull_strip(source, backend, models, study_key=study_key)


def normalised_stack(coregistered: CoRegistered, mask: Volume) -> npt.NDArray[np.float32]:
    """(C, Z, Y, X) float32 in the model's channel order (``GLIOMA_INPUT_ROLES``), each channel
    z-scored over the brain and zero outside it."""
    inside = mask.array > 0
    return np.stack([zscore_in_mask(coregistered.volumes[r].array, inside) for r in GLIOMA_INPUT_ROLES])
