"""Rigid co-registration by mutual information, and resampling onto a common isotropic grid.

Every glioma input is registered onto the reference series (T1 post-contrast) and resampled onto that
series' field of view at 1 mm isotropic, keeping the reference's direction: the grid never changes
handedness, so nothing can be mirrored on the way."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from neuroflow.core.handoff import OUTLINE_AGREEMENT_MIN
from neuroflow.core.volume import Geometry, Volume, downsample, resample


@dataclass(frozen=True)
class RegistrationResult:
    """A rigid transform mapping reference (fixed) points to moving points, with quality figures.

    ``nmi`` is the normalised mutual information (H(F)+H(M))/H(F,M) of the reference and the
    registered moving image over the reference's foreground: 1.0 means independent images; well
    aligned brain MR of different contrasts reach about 1.1-1.3. ``metric`` is the optimiser's final
    Mattes mutual information (negative, lower is better)."""

    transform: sitk.Transform
    metric: float
    nmi: float
    nmi_before: float
    translation_mm: float
    rotation_deg: float
    iterations: int
    outline_dice: float = 1.0  # outline_agreement of the result
    attempts: int = 1  # 2 when the outlines disagreed and the registration started again

    def summary(self) -> dict[str, float]:
        return {
            "mattes_mi": round(self.metric, 4),
            "nmi": round(self.nmi, 4),
            "nmi_before": round(self.nmi_before, 4),
            "translation_mm": round(self.translation_mm, 2),
            "rotation_deg": round(self.rotation_deg, 2),
            "outline_dice": round(self.outline_dice, 3),
            "attempts": self.attempts,
        }


WORKING_SPACING_MM = 2.0  # the grid the optimiser works on (register_rigid's docstring says why)


@dataclass(frozen=True)
class WorkingImage:
    """A fixed volume smoothed and resampled to a working spacing, as :func:`register_rigid` works on it: a
    caller registering several series onto one reference makes it once (a quarter of a second for a 1 mm
    head) and passes it to each registration."""

    volume: Volume
    spacing_mm: float
    image: sitk.Image

    @classmethod
    def of(cls, volume: Volume, spacing_mm: float = WORKING_SPACING_MM) -> WorkingImage:
        return cls(volume, spacing_mm, downsample(volume, spacing_mm))


def isotropic_grid(reference: Geometry, spacing_mm: float) -> Geometry:
    """The reference's field of view at ``spacing_mm`` isotropic, same origin corner and direction."""
    extent = [n * s for n, s in zip(reference.size, reference.spacing, strict=True)]
    size = tuple(max(1, math.ceil(e / spacing_mm - 1e-6)) for e in extent)
    # Keep the physical corner of the first voxel (its outer edge) where it was, so the grid covers
    # the same box: origin moves by half the change of voxel size along each axis.
    shift = np.array([(spacing_mm - s) / 2.0 for s in reference.spacing])
    origin = np.array(reference.origin) + reference.direction_matrix() @ shift
    return Geometry(
        spacing=(spacing_mm, spacing_mm, spacing_mm),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=reference.direction,
        size=(int(size[0]), int(size[1]), int(size[2])),
    )


def register_rigid(
    fixed: Volume,
    moving: Volume,
    *,
    working_spacing_mm: float = WORKING_SPACING_MM,
    shrink: tuple[int, ...] = (2, 1),
    sampling: float = 0.1,
    iterations: int = 100,
    seed: int = 20261123,
    fixed_mask: Volume | None = None,
    min_outline_agreement: float = OUTLINE_AGREEMENT_MIN,
    fixed_working: WorkingImage | None = None,
) -> RegistrationResult:
    """Rigid (6 degrees of freedom) registration of ``moving`` onto ``fixed`` by Mattes mutual
    information, multi-resolution. Starts from the scanner geometry (both series share the frame of
    reference), so only patient motion between series is left to find.

    Both images are first smoothed and resampled to ``working_spacing_mm`` (2 mm: the median target
    error on a known 5° / 8 mm motion stays under 0.5 mm, and it is 3x faster than letting the
    registration build its pyramid from the 1 mm images). The quality figures are computed at full
    resolution on the fixed grid. ``fixed_mask`` (non-zero = use; on ``fixed``'s grid), when given, limits the
    metric to that region, e.g. the brain: scalp, neck and a field of view that differs between sessions then
    do not pull on the brain's alignment.

    ``sampling`` is the fraction of the mask's voxels the metric samples; ``shrink`` are the resolution levels
    (factors of the working grid), each smoothed by half its factor, the finest level unsmoothed. More samples and
    smoothed levels were tried against false optima (``scripts/bench_registration.py``): they
    mended one skull-stripped T2 and broke another, whose false optimum the whole-mask metric prefers to the truth;
    the defaults stay a local search from the scanner's alignment.

    When the result leaves the two outlines agreeing less than ``min_outline_agreement`` (0: never), the registration
    starts again from the foregrounds' centres of mass aligned with a local search and keeps the result whose
    outline agrees better; ``outline_dice`` and ``attempts`` say what happened.

    ``fixed_working``: :meth:`WorkingImage.of` ``fixed`` at ``working_spacing_mm``, made once by a caller that
    registers several series onto the same reference."""
    if fixed_working is None:
        f = downsample(fixed, working_spacing_mm)
    elif fixed_working.volume is fixed and fixed_working.spacing_mm == working_spacing_mm:
        f = fixed_working.image
    else:
        raise ValueError(f"the fixed image's working copy is of another volume or spacing "
                         f"({fixed_working.spacing_mm} mm, registering at {working_spacing_mm} mm)")
    m = downsample(moving, working_spacing_mm)
    initial = sitk.CenteredTransformInitializer(
        f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    # GEOMETRY centring would move images whose fields of view differ; keep the scanner alignment and
    # only use the centre as the rotation centre.
    scanner = sitk.Euler3DTransform()
    scanner.SetCenter(sitk.Euler3DTransform(initial).GetCenter())
    if fixed_mask is None:
        metric_mask = sitk.Cast(f > _foreground_threshold(sitk.GetArrayViewFromImage(f)), sitk.sitkUInt8)
    else:
        metric_mask = sitk.Resample(sitk.Cast(fixed_mask.to_sitk() > 0, sitk.sitkUInt8), f, sitk.Transform(),
                                    sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

    def optimise(start: sitk.Euler3DTransform) -> tuple[sitk.Euler3DTransform, float, int]:
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.5,
            gradientMagnitudeTolerance=1e-6,
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel(list(shrink))
        method.SetSmoothingSigmasPerLevel([s / 2.0 if s > 1 else 0.0 for s in shrink])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        method.SetInitialTransform(start, inPlace=False)
        method.SetMetricFixedMask(metric_mask)
        method.SetMetricSamplingPercentage(sampling, seed)
        found = method.Execute(f, m)
        return (sitk.Euler3DTransform(sitk.CompositeTransform(found).GetNthTransform(0)),
                float(method.GetMetricValue()), int(method.GetOptimizerIteration()))

    nmi_before = normalised_mutual_information(fixed, resample(moving, fixed.geometry))
    final, metric, steps = optimise(scanner)
    outline = outline_agreement(f, m, final)
    attempts = 1
    if outline < min_outline_agreement:
        # The outlines disagree: the metric led to a false optimum. Skull-stripped T2s against T1CEs showed them
        # about 15 mm away, where NMI hardly differs and the whole-mask Mattes metric can even be better than at
        # the true alignment (so the metric cannot choose). Start again from the foregrounds' centres of mass
        # aligned, and keep whichever of the two results and the scanner's own alignment has the outline that
        # agrees best with the reference's (below the threshold still, the report says so).
        again, again_metric, again_steps = optimise(_centres_aligned(f, m, scanner))
        attempts = 2
        for candidate, candidate_metric, candidate_steps in ((again, again_metric, again_steps),
                                                             (scanner, _metric_at(f, m, metric_mask, scanner), 0)):
            candidate_outline = outline_agreement(f, m, candidate)
            if candidate_outline > outline:
                final, metric, steps, outline = candidate, candidate_metric, candidate_steps, candidate_outline
    registered = resample(moving, fixed.geometry, final)
    angles = np.degrees(np.abs([final.GetAngleX(), final.GetAngleY(), final.GetAngleZ()]))
    return RegistrationResult(
        transform=final,
        metric=metric,
        nmi=normalised_mutual_information(fixed, registered),
        nmi_before=nmi_before,
        translation_mm=float(np.linalg.norm(final.GetTranslation())),
        rotation_deg=float(angles.max()),
        iterations=steps,
        outline_dice=outline,
        attempts=attempts,
    )


def centre_aligned(moving: Volume, fixed: Volume) -> Volume:
    """``moving`` with its origin shifted so its intensity centre of mass meets ``fixed``'s: two sessions
    need not share a frame of reference, and the rigid registration starts from the scanner geometry."""
    shift = _centre_of_mass(fixed) - _centre_of_mass(moving)
    if float(np.linalg.norm(shift)) < 10.0:
        return moving
    g = moving.geometry
    origin = np.asarray(g.origin) + shift
    moved = Geometry(g.spacing, (float(origin[0]), float(origin[1]), float(origin[2])), g.direction, g.size)
    return Volume(moving.array, moved, dict(moving.meta))


def _centre_of_mass(volume: Volume) -> npt.NDArray[np.float64]:
    weights = np.clip(volume.array.astype(np.float32), 0.0, None)
    k, j, i = ndimage.center_of_mass(weights)
    point = volume.geometry.index_to_patient() @ np.array([i, j, k, 1.0])
    return np.asarray(point[:3], dtype=np.float64)


def register_sessions(fixed: Volume, moving: Volume, *, fixed_mask: Volume | None = None) -> RegistrationResult:
    """``moving``, a series of another session of the patient, rigidly onto ``fixed``: two sessions need not share
    a frame of reference, so ``moving`` is first centred on ``fixed`` (:func:`centre_aligned`), then registered
    (:func:`register_rigid`, ``fixed_mask`` limiting the metric). The transform maps ``fixed`` points to
    ``moving``'s own patient coordinates: the centring is folded back into it."""
    aligned = centre_aligned(moving, fixed)
    result = register_rigid(fixed, aligned, fixed_mask=fixed_mask)
    # register_rigid maps fixed points into the centred copy; undo the centring: p_moving = T(p) - shift.
    shift = np.subtract(aligned.geometry.origin, moving.geometry.origin)
    to_moving = sitk.Euler3DTransform(result.transform)
    translation = np.subtract(to_moving.GetTranslation(), shift)
    to_moving.SetTranslation(tuple(float(v) for v in translation))
    return replace(result, transform=to_moving, translation_mm=float(np.linalg.norm(translation)))


def outline_agreement(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Dice of the two images' foregrounds (head, or brain when skull-stripped) once ``moving`` is resampled through
    ``transform`` onto ``fixed``'s grid, counted where both fields of view reach. Sequences of one session share
    their outline, so a registration that leaves it under OUTLINE_AGREEMENT_MIN has failed, whatever NMI says."""
    outside = -1e30
    # A copy: a view of the temporary resampled image would outlive its memory.
    moved = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, outside, sitk.sitkFloat32))
    values = sitk.GetArrayViewFromImage(fixed)
    both = moved > outside / 2
    a = (values > _foreground_threshold(values)) & both
    b = (moved > _foreground_threshold(sitk.GetArrayViewFromImage(moving))) & both
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(a & b) / total)


def _metric_at(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, transform: sitk.Transform) -> float:
    """The Mattes metric at ``transform`` over every voxel of ``mask`` (no sampling; lower is better)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetMetricFixedMask(mask)
    method.SetInitialTransform(transform)
    return float(method.MetricEvaluate(fixed, moving))


def _centres_aligned(fixed: sitk.Image, moving: sitk.Image, scanner: sitk.Euler3DTransform) -> sitk.Euler3DTransform:
    """``scanner`` (its rotation centre), translated so the foregrounds' centres of mass meet."""
    def centre(image: sitk.Image) -> npt.NDArray[np.float64]:
        values = sitk.GetArrayViewFromImage(image)
        k, j, i = np.argwhere(values > _foreground_threshold(values)).mean(axis=0)
        return np.array(image.TransformContinuousIndexToPhysicalPoint([float(i), float(j), float(k)]))

    start = sitk.Euler3DTransform(scanner)
    start.SetTranslation([float(x) for x in centre(moving) - centre(fixed)])
    return start


def normalised_mutual_information(a: Volume, b: Volume, bins: int = 32) -> float:
    """(H(A)+H(B))/H(A,B) over voxels where ``a`` is foreground; both on the same grid."""
    if a.array.shape != b.array.shape:
        raise ValueError("normalised_mutual_information needs two volumes on the same grid")
    mask = a.array > _foreground_threshold(a.array)
    if mask.sum() < 100:
        return 1.0
    x = a.array[mask].astype(np.float64)
    y = b.array[mask].astype(np.float64)
    joint, _, _ = np.histogram2d(x, y, bins=bins)
    p = joint / joint.sum()
    px, py = p.sum(axis=1), p.sum(axis=0)
    return float((_entropy(px) + _entropy(py)) / max(_entropy(p.ravel()), 1e-12))


def _entropy(p: npt.NDArray[np.float64]) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def _foreground_threshold(array: npt.NDArray[np.generic]) -> float:
    """A threshold that separates head/brain from air: 10% of the robust maximum."""
    values = np.asarray(array, dtype=np.float32)
    return float(np.percentile(values, 99.5)) * 0.1
