"""Haematoma expansion on non-contrast CT: the haematoma segmented at baseline and follow-up, measured,
and compared.

Segmentation (``segment`` stage), on each CT in Hounsfield units:

1. The intracranial soft tissue: voxels between ``SOFT_TISSUE_HU``, eroded by 3 mm so that the brain
   comes apart from the scalp at the skull-base openings, the largest component kept and grown back
   inside the soft tissue, holes filled. The skull (> 100 HU) encloses it; nothing else is assumed.
2. Blood: acute clot is 50-90 HU against 20-40 HU brain. Voxels in ``BLOOD_HU`` inside the brain
   (eroded 2 mm: the inner table's partial volume reaches the same values) of the lightly smoothed CT
   seed the search; 26-connected components of at least ``MIN_COMPONENT_ML`` are kept. The largest is
   the haematoma, the one expansion is judged on (as the expansion trials do); up to ``MAX_OTHER_REGIONS``
   others are measured too and reported by volume.
3. Its edge: the threshold is moved to half-way between the clot's own median HU and the tissue around
   it (the darkest 1 mm shell 1-4 mm out), and the haematoma re-grown from its seed at that level: a
   partial-volume edge is then counted by half, whatever the clot's density and the surroundings
   (brain, oedema) are.

An optional network (``PipelineModels.haematoma``, through the inference backend) adds its own voxels to
the seeds, and passes the same checks.

Measures (``measure`` stage): volume (mL), centroid, anteroposterior / left-right / craniocaudal
diameters (extent along the patient axes, mm), the main axis (first principal axis of the voxels, a
unit vector in patient coordinates) and the surface regularity index π^(1/3)(6V)^(2/3)/A (1.0 for a sphere,
lower for an irregular surface; the surface area A is ITK's Crofton estimate). Change: the follow-up is
rigidly registered onto the baseline (``register_pair`` stage) so that the centroid shift is measured in
one frame; expansion is a growth of at least 6 mL or 33 %."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from neuroflow.core.errors import StudyError
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.labels import HAEMATOMA_SEGMENT, OTHER_BLOOD_SEGMENT
from neuroflow.core.model_card import ModelRef
from neuroflow.core.timing import StageClock
from neuroflow.core.volume import Volume
from neuroflow.longitudinal.lesion_model import HAEMATOMA_LABEL, probability_mask
from neuroflow.preprocess.register import register_rigid

HAEMATOMA_STAGES: tuple[str, ...] = ("register_pair", "segment", "measure")
_STAGE = "haematoma_change"

# Haematoma expansion: an absolute growth of 6 mL or a relative growth of 33 % (the definition the
# expansion trials use, e.g. Dowlatshahi et al., Stroke 2011).
EXPANSION_ML = 6.0
EXPANSION_FRACTION = 0.33
# Intracranial soft tissue (brain, CSF, blood) and acute blood, in HU.
SOFT_TISSUE_HU = (-15.0, 100.0)
BLOOD_HU = (50.0, 90.0)
BONE_HU = 100.0
# Components of blood-density voxels smaller than this are not a haematoma (partial volume around
# calcifications, beam hardening near the skull base).
MIN_COMPONENT_ML = 0.5
# CT noise is 3-5 HU; smoothing by this (mm) before thresholding keeps isolated noisy voxels out.
SMOOTHING_MM = 1.0
# A head CT must hold at least this much intracranial soft tissue, or it is not a head CT.
MIN_BRAIN_ML = 200.0
# Blood-density regions besides the haematoma measured and reported (largest first); more are only counted.
MAX_OTHER_REGIONS = 5

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


def is_expansion(baseline_ml: float, followup_ml: float) -> bool:
    """Growth of at least ``EXPANSION_ML`` or ``EXPANSION_FRACTION`` (any growth from nothing counts)."""
    change = followup_ml - baseline_ml
    if change <= 0:
        return False
    relative = change / baseline_ml if baseline_ml > 0 else math.inf
    return change >= EXPANSION_ML or relative >= EXPANSION_FRACTION


@dataclass(frozen=True)
class Diameters:
    ap_mm: float
    lr_mm: float
    cc_mm: float


@dataclass(frozen=True)
class HaematomaMeasure:
    volume_ml: float
    centroid_mm: tuple[float, float, float]  # patient coordinates (LPS) on its own scan
    diameters: Diameters
    main_axis: tuple[float, float, float]  # unit vector, patient coordinates
    regularity: float  # π^(1/3)(6V)^(2/3)/A, 1.0 for a sphere


@dataclass
class HaematomaChange:
    baseline: HaematomaMeasure | None  # None: no haematoma found at baseline
    followup: HaematomaMeasure | None
    change_ml: float
    change_pct: float | None  # None when there was nothing at baseline
    expansion: bool
    centroid_shift_mm: float | None  # in the baseline's frame, after rigid registration
    diameter_change: Diameters | None
    # uint8 on each CT's own grid: HAEMATOMA_SEGMENT's number on the haematoma, OTHER_BLOOD_SEGMENT's on
    # the other blood-density regions, 0 elsewhere.
    baseline_mask: Volume
    followup_mask: Volume
    warnings: list[str] = field(default_factory=list)
    registration: dict[str, float] = field(default_factory=dict)
    # Volumes (mL) of the other blood-density regions of each CT, largest first (module doc, step 2).
    baseline_others_ml: list[float] = field(default_factory=list)
    followup_others_ml: list[float] = field(default_factory=list)


def measure_haematoma_change(
    baseline_ct: Volume,
    followup_ct: Volume,
    *,
    study_key: str,
    backend: InferenceBackend | None = None,
    clock: StageClock | None = None,
    model: ModelRef | None = None,
) -> HaematomaChange:
    """The haematoma of each CT, measured, and the change from ``baseline_ct`` to ``followup_ct`` (module
    doc). ``model``: the optional haematoma network served by ``backend`` (both needed to use it).

    Refuses with StudyError a CT that is not in Hounsfield units or holds no intracranial soft tissue
    (naming which timepoint)."""
    clock = clock or StageClock(HAEMATOMA_STAGES)
    warnings: list[str] = []
    with clock.stage("register_pair"):
        # Rigid registration of the follow-up onto the baseline, on the brain window (bone and air
        # clipped) so that soft tissue, not the skull alone, drives it.
        registration = register_rigid(_brain_window(baseline_ct), _brain_window(followup_ct))
    with clock.stage("segment"):
        net = model if backend is not None else None
        base_regions = segment_haematomas(baseline_ct, study_key=study_key, which="baseline", warnings=warnings,
                                          backend=backend, model=net)
        follow_regions = segment_haematomas(followup_ct, study_key=study_key, which="follow-up",
                                            warnings=warnings, backend=backend, model=net)
        base_mask, base_others, base_labels = _primary_and_others(base_regions, baseline_ct)
        follow_mask, follow_others, follow_labels = _primary_and_others(follow_regions, followup_ct)
    with clock.stage("measure"):
        base = measure(baseline_ct.with_array(base_mask.astype(np.uint8))) if base_mask.any() else None
        follow = measure(followup_ct.with_array(follow_mask.astype(np.uint8))) if follow_mask.any() else None
        base_ml = base.volume_ml if base else 0.0
        follow_ml = follow.volume_ml if follow else 0.0
        change_ml = follow_ml - base_ml
        change_pct = 100.0 * change_ml / base_ml if base_ml > 0 else None
        shift: float | None = None
        diameter_change: Diameters | None = None
        if base and follow:
            # The transform maps baseline points to follow-up points: its inverse brings the follow-up's
            # centroid into the baseline's frame.
            moved = registration.transform.GetInverse().TransformPoint(follow.centroid_mm)
            shift = round(float(np.linalg.norm(np.subtract(moved, base.centroid_mm))), 2)
            diameter_change = Diameters(
                round(follow.diameters.ap_mm - base.diameters.ap_mm, 1),
                round(follow.diameters.lr_mm - base.diameters.lr_mm, 1),
                round(follow.diameters.cc_mm - base.diameters.cc_mm, 1))
        if base is None:
            warnings.append("no haematoma found on the baseline CT")
        if follow is None:
            warnings.append("no haematoma found on the follow-up CT")
    return HaematomaChange(
        baseline=base, followup=follow, change_ml=round(change_ml, 2),
        change_pct=None if change_pct is None else round(change_pct, 1),
        expansion=is_expansion(base_ml, follow_ml), centroid_shift_mm=shift, diameter_change=diameter_change,
        baseline_mask=baseline_ct.with_array(base_labels), followup_mask=followup_ct.with_array(follow_labels),
        warnings=warnings, registration=registration.summary(),
        baseline_others_ml=base_others, followup_others_ml=follow_others,
    )


def _primary_and_others(regions: list[BoolArray], ct: Volume,
                        ) -> tuple[BoolArray, list[float], npt.NDArray[np.uint8]]:
    """The haematoma's mask (empty when there is none), the other regions' volumes in mL, and the label
    map of both (``HaematomaChange.baseline_mask``): where regions overlap, the haematoma wins."""
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    if not regions:
        return labels.astype(bool), [], labels
    for other in regions[1:]:
        labels[other] = OTHER_BLOOD_SEGMENT.number
    labels[regions[0]] = HAEMATOMA_SEGMENT.number
    voxel_ml = ct.voxel_volume_mm3 / 1000.0
    return regions[0], [round(float(r.sum()) * voxel_ml, 2) for r in regions[1:]], labels


def _brain_window(ct: Volume) -> Volume:
    return ct.with_array(np.clip(ct.array.astype(np.float32), -20.0, 120.0))


def intracranial_mask(ct: Volume, *, study_key: str, which: str) -> BoolArray:
    """The intracranial soft tissue of a head CT in HU (module doc, step 1)."""
    hu = ct.array.astype(np.float32)
    if float(hu.min()) > -500.0 or float(np.percentile(hu, 99.9)) < 300.0:
        raise StudyError(study_key, f"the {which} CT does not look like a head CT in Hounsfield units "
                                    f"(minimum {float(hu.min()):.0f}, 99.9th percentile "
                                    f"{float(np.percentile(hu, 99.9)):.0f}; air is -1000 and bone > 300)",
                         stage=_STAGE)
    spacing = np.array(ct.geometry.spacing[::-1])
    soft = (hu > SOFT_TISSUE_HU[0]) & (hu < SOFT_TISSUE_HU[1])
    core = _eroded(soft, 3.0, spacing)
    labels, count = ndimage.label(core)
    if count == 0:
        raise StudyError(study_key, f"the {which} CT holds no intracranial soft tissue", stage=_STAGE)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    brain = _dilated(labels == int(np.argmax(sizes)), 3.0, spacing) & soft
    brain = ndimage.binary_fill_holes(brain)
    if brain.sum() * ct.voxel_volume_mm3 / 1000.0 < MIN_BRAIN_ML:
        raise StudyError(study_key, f"the {which} CT holds less than {MIN_BRAIN_ML:g} mL of intracranial soft "
                                    "tissue: is it a head CT covering the brain?", stage=_STAGE)
    return np.asarray(brain)


def segment_haematomas(ct: Volume, *, study_key: str, which: str, warnings: list[str],
                       backend: InferenceBackend | None = None, model: ModelRef | None = None) -> list[BoolArray]:
    """The blood-density regions of one CT (module doc, steps 2-3), each a boolean mask on its grid with
    its edge refined: the haematoma (the largest) first, then up to ``MAX_OTHER_REGIONS`` others, largest
    first. Empty when there is none."""
    spacing = np.array(ct.geometry.spacing[::-1])
    brain = intracranial_mask(ct, study_key=study_key, which=which)
    smoothed = ndimage.gaussian_filter(ct.array.astype(np.float32), SMOOTHING_MM / spacing)
    inner = _eroded(brain, 2.0, spacing)
    seeds = inner & (smoothed >= BLOOD_HU[0]) & (smoothed <= BLOOD_HU[1])
    if backend is not None and model is not None:
        seeds |= probability_mask(backend, model, [ct.array.astype(np.float32)], inner, HAEMATOMA_LABEL)
    structure = np.ones((3, 3, 3), dtype=bool)
    labels, count = ndimage.label(seeds, structure=structure)
    if count == 0:
        return []
    voxel_ml = ct.voxel_volume_mm3 / 1000.0
    sizes = np.bincount(labels.ravel()).astype(np.float64) * voxel_ml
    sizes[0] = 0.0
    order = [int(i) for i in np.argsort(sizes)[::-1] if sizes[i] >= MIN_COMPONENT_ML]
    if len(order) > 1:
        beyond = len(order) - 1 - MAX_OTHER_REGIONS
        warnings.append(f"the {which} CT has {len(order) - 1} more blood-density region(s) besides the largest; "
                        "expansion is judged on the largest, the others are reported by volume"
                        + (f" ({beyond} smallest not measured)" if beyond > 0 else ""))
    regions = []
    for label in order[:1 + MAX_OTHER_REGIONS]:
        seed = labels == label
        # Everything after this looks at most 8 mm around the seed: work in that box.
        box = _box_around(seed, 8.0, spacing)
        region = np.zeros(brain.shape, dtype=bool)
        region[box] = _refine_edge(smoothed[box], ct.array[box].astype(np.float32), seed[box], brain[box],
                                   spacing)
        regions.append(region)
    return regions


def _refine_edge(smoothed: FloatArray, raw: FloatArray, seed: BoolArray, brain: BoolArray,
                 spacing: npt.NDArray[np.float64]) -> BoolArray:
    """The haematoma re-grown from ``seed`` at half-way between its own density and its surroundings',
    both read on the unsmoothed CT (medians: noise cancels, and smoothing would pull them together)."""
    # The tissue touching the clot (brain, or oedema around a clot that grew): the seed's edge (50 HU after
    # smoothing) lies inside the clot and the partial-volume edge spans 1-2 mm, so the surroundings are the
    # darkest of the 1 mm shells 1-4 mm out (median of each: robust to a vessel or the ventricle nearby).
    distance = ndimage.distance_transform_edt(~seed, sampling=spacing)
    clot = float(np.median(raw[seed]))
    shells = [raw[(distance > r) & (distance <= r + 1.0) & brain] for r in (1.0, 2.0, 3.0)]
    around = min((float(np.median(v)) for v in shells if v.size), default=30.0)
    level = min(max((clot + around) / 2.0, 35.0), BLOOD_HU[0])
    candidate = brain & (smoothed >= level) & (smoothed <= BLOOD_HU[1] + 10.0) & (distance <= 4.0)
    labels, _ = ndimage.label(candidate | seed, structure=np.ones((3, 3, 3), dtype=bool))
    keep = np.unique(labels[seed])
    return np.asarray(np.isin(labels, keep[keep > 0]))


def _box_around(mask: BoolArray, margin_mm: float, spacing: npt.NDArray[np.float64]) -> tuple[slice, ...]:
    where = np.argwhere(mask)
    pad = np.ceil(margin_mm / spacing).astype(int) + 1
    lo = np.maximum(where.min(axis=0) - pad, 0)
    hi = np.minimum(where.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def measure(mask: Volume) -> HaematomaMeasure:
    """Volume, centroid, diameters, main axis and regularity of a non-empty binary ``mask``."""
    g = mask.geometry
    k, j, i = np.nonzero(mask.array)
    points = (g.index_to_patient() @ np.stack([i, j, k, np.ones_like(i)]).astype(np.float64))[:3].T
    volume_mm3 = float(len(points)) * mask.voxel_volume_mm3
    centroid = points.mean(axis=0)
    # A voxel's own extent along each patient axis, added to the spread of voxel centres.
    voxel_extent = np.abs(g.direction_matrix() @ np.diag(g.spacing)).sum(axis=1)
    extent = points.max(axis=0) - points.min(axis=0) + voxel_extent
    if len(points) >= 3:
        _, vectors = np.linalg.eigh(np.cov((points - centroid).T))
        axis = vectors[:, -1]
    else:
        axis = np.array([0.0, 0.0, 1.0])
    axis = axis if axis[int(np.argmax(np.abs(axis)))] > 0 else -axis  # one sign, for stable reports
    area = _surface_area(mask)
    regularity = math.pi ** (1.0 / 3.0) * (6.0 * volume_mm3) ** (2.0 / 3.0) / area if area > 0 else 0.0
    return HaematomaMeasure(
        volume_ml=round(volume_mm3 / 1000.0, 3),
        centroid_mm=(round(float(centroid[0]), 2), round(float(centroid[1]), 2), round(float(centroid[2]), 2)),
        # LPS: x runs right to left (LR), y anterior to posterior (AP), z inferior to superior (CC).
        diameters=Diameters(round(float(extent[1]), 1), round(float(extent[0]), 1), round(float(extent[2]), 1)),
        main_axis=(round(float(axis[0]), 4), round(float(axis[1]), 4), round(float(axis[2]), 4)),
        regularity=round(float(regularity), 3),
    )


def _surface_area(mask: Volume) -> float:
    """Surface area (mm²) of the mask's object, ITK's Crofton estimate (unbiased for smooth surfaces,
    where counting voxel faces overestimates a sphere's area by half)."""
    image = sitk.Cast(mask.to_sitk() > 0, sitk.sitkUInt8)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputePerimeterOn()
    shape.Execute(image)
    return float(shape.GetPerimeter(1)) if shape.HasLabel(1) else 0.0


def _eroded(mask: BoolArray, radius_mm: float, spacing: npt.NDArray[np.float64]) -> BoolArray:
    """``mask`` eroded by a ball of ``radius_mm``, by a signed distance map (exact for any radius, and
    ITK's is multi-threaded, faster than scipy's on a head CT)."""
    return np.asarray(~_dilated(~mask, radius_mm, spacing))


def _dilated(mask: BoolArray, radius_mm: float, spacing: npt.NDArray[np.float64]) -> BoolArray:
    return np.asarray(_signed_distance(mask, spacing) <= radius_mm)


def _signed_distance(mask: BoolArray, spacing: npt.NDArray[np.float64]) -> FloatArray:
    """Distance (mm) of each voxel outside the mask to the nearest mask voxel (inside: <= 0)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return np.asarray(sitk.GetArrayFromImage(distance), dtype=np.float32)
