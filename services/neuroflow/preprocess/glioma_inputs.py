"""Preprocessing of the glioma inputs: from DICOM series to co-registered, skull-stripped,
normalised 1 mm volumes, as typed steps. Each step says what it takes, returns and refuses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from neuroflow.core.errors import OrientationMismatch
from neuroflow.core.handoff import GeometrySummary, OrientationSummary, PreprocessSummary, RegistrationSummary
from neuroflow.core.identity import uid_key
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.sequence_subsets import glioma_reference_role
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.timing import StageClock
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.preprocess.normalise import zscore_in_mask
from neuroflow.preprocess.orientation import FlipCheck, check_left_right, coarse_reference
from neuroflow.preprocess.register import RegistrationResult, WorkingImage, isotropic_grid, register_rigid
from neuroflow.preprocess.skull_strip import skull_strip, with_signal


@dataclass
class CoRegistered:
    """Every input role on one isotropic grid (the reference series' field of view)."""

    grid: Geometry
    volumes: dict[SeriesRole, Volume]
    registration: dict[SeriesRole, RegistrationResult] = field(default_factory=dict)


def convert_inputs(
    instances: dict[SeriesRole, list[Dataset]], *, study_key: str, volumes: Mapping[SeriesRole, str] | None = None
) -> dict[SeriesRole, Volume]:
    """DICOM instances per role -> volumes with exact geometry; ``volumes`` names, per role, the volume
    of a series that holds several (SeriesInstances.volume). Refuses (SeriesRejected) a series with
    missing, duplicate or inconsistent slices."""
    chosen = volumes or {}
    return {role: series_to_volume(datasets, study_key=study_key, volume=chosen.get(role, ""))
            for role, datasets in instances.items()}


def check_orientation(volumes: dict[SeriesRole, Volume], *, study_key: str,
                      reference_role: SeriesRole | None = None) -> dict[SeriesRole, FlipCheck]:
    """Compares every series with the reference (``reference_role``, by default the first of the
    reference order the study has) for a left/right mirror. Refuses the study (OrientationMismatch) if any
    series fits the reference better mirrored than as it is."""
    reference_role = reference_role or glioma_reference_role(volumes)
    reference = volumes[reference_role]
    others = {role: v for role, v in volumes.items() if role != reference_role}
    # Made only when there is a series to check: a study of one series must reach the check that names what
    # it lacks, not fail here (a tiny volume cannot be smoothed).
    reference_coarse = coarse_reference(reference) if others else None
    checks = {role: check_left_right(reference, v, reference_coarse=reference_coarse) for role, v in others.items()}
    flipped = [role for role, c in checks.items() if c.flipped]
    if flipped:
        details = "; ".join(
            f"{role} series {uid_key(volumes[role].meta.get('series_instance_uid', '?'))} fits the "
            f"{reference_role} better mirrored (NMI {checks[role].nmi_mirrored:.3f} vs "
            f"{checks[role].nmi_as_is:.3f} as is)" for role in flipped
        )
        raise OrientationMismatch(
            study_key,
            f"left/right flip suspected: {details}. Check how these series were exported or converted; "
            "the study was not processed rather than risk a wrong-side result.",
            stage="orientation",
        )
    return checks


def coregister(volumes: dict[SeriesRole, Volume], *, spacing_mm: float,
               reference_role: SeriesRole | None = None) -> CoRegistered:
    """Registers every role rigidly onto the reference (``reference_role``, by default the first of the
    reference order the study has; mutual information) and resamples all onto the reference's field of
    view at ``spacing_mm`` isotropic (linear interpolation)."""
    reference_role = reference_role or glioma_reference_role(volumes)
    reference = volumes[reference_role]
    grid = isotropic_grid(reference.geometry, spacing_mm)
    fixed = resample(reference, grid)
    out = {reference_role: fixed}
    registration: dict[SeriesRole, RegistrationResult] = {}
    # Smoothed and downsampled once for every series registered onto it (none: nothing to make).
    fixed_working = WorkingImage.of(fixed) if len(volumes) > 1 else None
    for role, moving in volumes.items():
        if role == reference_role:
            continue
        result = register_rigid(fixed, moving, fixed_working=fixed_working)
        registration[role] = result
        out[role] = resample(moving, grid, result.transform)
    return CoRegistered(grid=grid, volumes=out, registration=registration)


def brain_mask(
    coregistered: CoRegistered, backend: InferenceBackend, models: tuple[ModelRef, ModelRef], *, study_key: str
) -> Volume:
    """Brain mask on the common grid from the T1 (the contrast the skull-stripping network was trained
    on), falling back to the reference (the first of the reference order the study has) without a plain T1."""
    reference = coregistered.volumes[glioma_reference_role(coregistered.volumes)]
    source = coregistered.volumes.get(SeriesRole.T1, reference)
    return with_signal(skull_strip(source, backend, models, study_key=study_key), reference)


def normalise(coregistered: CoRegistered, mask: Volume) -> dict[SeriesRole, Volume]:
    """Every input role z-scored over the brain and zero outside it (float32, on the common grid)."""
    inside = mask.array > 0
    return {role: v.with_array(zscore_in_mask(v.array, inside)) for role, v in coregistered.volumes.items()}


@dataclass
class PreprocessedStudy:
    """What preprocessing hands to segmentation (the volumes) and to the report (the checks)."""

    normalised: dict[SeriesRole, Volume]  # on the common isotropic grid
    brain_mask: Volume  # uint8, same grid
    reference_geometry: Geometry  # the reference series as acquired: results are drawn on it
    registration: dict[SeriesRole, RegistrationResult]
    flip_checks: dict[SeriesRole, FlipCheck]

    @property
    def brain_volume_ml(self) -> float:
        return float((self.brain_mask.array > 0).sum()) * self.brain_mask.voxel_volume_mm3 / 1000.0

    def summary(self, skull_strip_model: ModelRef, timings_s: dict[str, float]) -> PreprocessSummary:
        """What the report and the SEG need from preprocessing, in the form both runtimes hand on."""
        return PreprocessSummary(
            reference_geometry=GeometrySummary.of(self.reference_geometry),
            registration={role.value: RegistrationSummary(metric=r.metric, nmi=r.nmi, nmi_before=r.nmi_before,
                                                          outline_dice=r.outline_dice, attempts=r.attempts)
                          for role, r in self.registration.items()},
            orientation={role.value: OrientationSummary(verdict=c.verdict, nmi_as_is=c.nmi_as_is,
                                                        nmi_mirrored=c.nmi_mirrored)
                         for role, c in self.flip_checks.items()},
            brain_volume_ml=round(self.brain_volume_ml, 1),
            skull_strip_method=f"{skull_strip_model}",
            timings_s=dict(timings_s),
        )


def preprocess_glioma(
    instances: dict[SeriesRole, list[Dataset]],
    backend: InferenceBackend,
    skull_strip_models: tuple[ModelRef, ModelRef],
    *,
    spacing_mm: float,
    study_key: str,
    clock: StageClock,
    volumes_of: Mapping[SeriesRole, str] | None = None,
    reference_role: SeriesRole | None = None,
) -> PreprocessedStudy:
    """DICOM instances of the glioma input roles the study has (any subset) -> normalised, co-registered,
    skull-stripped 1 mm volumes of those roles only, timing each step on ``clock``; ``volumes_of`` as for
    ``convert_inputs``. Everything is registered onto ``reference_role`` (by default the first of
    GLIOMA_REFERENCE_ORDER the study has). Refuses with SeriesRejected (bad series) or OrientationMismatch
    (a mirrored series)."""
    reference_role = reference_role or glioma_reference_role(instances)
    with clock.stage("convert"):
        volumes = convert_inputs(instances, study_key=study_key, volumes=volumes_of)
    with clock.stage("orientation"):
        flip_checks = check_orientation(volumes, study_key=study_key, reference_role=reference_role)
    with clock.stage("register"):
        coregistered = coregister(volumes, spacing_mm=spacing_mm, reference_role=reference_role)
        for role, reg in coregistered.registration.items():
            clock.note(f"{role} -> {reference_role}: NMI {reg.nmi_before:.3f} -> {reg.nmi:.3f}")
    with clock.stage("skull_strip"):
        mask = brain_mask(coregistered, backend, skull_strip_models, study_key=study_key)
    with clock.stage("normalise"):
        normalised = normalise(coregistered, mask)
    result = PreprocessedStudy(normalised, mask, volumes[reference_role].geometry,
                               coregistered.registration, flip_checks)
    clock.note(f"brain volume {result.brain_volume_ml:.0f} mL")
    return result
