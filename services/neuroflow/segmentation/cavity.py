"""The resection cavity of a post-operative glioma study: a rule-based estimate, not a trained model (no
labelled post-operative data was available), so every result that carries it is marked for review.

A resection cavity is fluid: dark on T1 and T1 post-contrast, dark on FLAIR (fluid-suppressed), bright on
T2. The glioma network was trained on studies before surgery and calls such a region necrotic core, or
nothing; here the fluid is found by intensity, separated from the CSF a brain always holds (ventricles,
sulci), and tied to the tumour bed:

1. fluid voxels: on the z-scores in the brain (the network's inputs), the mean over the present sequences of
   the z-score signed towards fluid (-T1, -T1CE, -FLAIR, +T2), smoothed over ``smooth_mm``, above
   ``fluid_score``; and FLAIR below ``flair_max_z`` (oedema and tumour are FLAIR-bright), T2 above
   ``t2_min_z``. FLAIR or T2 is needed: dark on T1 alone is also oedema and tumour;
2. not the subarachnoid CSF: voxels within ``surface_mm`` of the brain mask's edge are dropped, then a
   morphological opening (ball of ``opening_mm``) removes fluid thinner than about twice that (sulci, the
   CSF film over the cortex) and cuts thin bridges between a cavity and the ventricles;
3. not the ventricles: a fluid component reaching within ``central_mm`` of the brain's centre and lying on
   both sides of the midline (``central_min_ml`` more than 3 mm left and right of the centre: the third
   ventricle and what joins it), or one whose mirror image across the midline falls on fluid for at least
   ``mirror_fraction`` of its voxels (the lateral ventricles are a pair; a cavity's mirror image is healthy
   brain), is ventricular. A cavity that opened widely into a ventricle joins it and is lost (a limit);
4. at the tumour bed: of what is left, the components within ``bed_mm`` of the tumour the network drew or
   of the prior's tumour (registered onto this grid); with neither, the largest component (the study is
   known to be post-operative) if at least ``min_ml``;
5. the kept components grow back by the opening's radius and 1 mm more (the opening rounds corners off, the
   wall is blurred by partial volume) into voxels at least ``wall_score`` fluid-like, and their enclosed
   holes are filled (debris, blood products).

The thresholds were set on synthetic cavities carved into real brains (tests/unit/test_postop_cavity.py,
scripts/postop_cavity_eval.py); on real post-operative studies they are unvalidated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from neuroflow.core.handoff import CavityFinding
from neuroflow.core.labels import REGION_LABELS, RESECTION_CAVITY_LABEL, TumourRegion
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume

Mask = npt.NDArray[np.bool_]
_MM3_PER_ML = 1000.0
_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)  # 6-connected: a diagonal touch does not join fluid


@dataclass(frozen=True)
class CavityRules:
    """The thresholds of the rules (module docstring), in z-scores of the brain and millimetres."""

    fluid_score: float = 1.0  # mean over the present sequences of the z-score, signed towards fluid
    smooth_mm: float = 1.0
    wall_score: float = 0.5  # rule 5 grows the cavity into voxels this fluid-like (the wall's partial volume)
    flair_max_z: float = -0.3  # FLAIR must be suppressed ...
    t2_min_z: float = 0.5  # ... and T2 bright, whatever the mean says
    surface_mm: float = 2.0
    opening_mm: float = 2.0
    central_mm: float = 18.0
    central_min_ml: float = 0.05  # this much on each side of the midline makes a central component ventricular
    mirror_fraction: float = 0.4
    mirror_tolerance_mm: float = 3.0  # the fluid its mirror image is looked for in, grown by this (head tilt)
    bed_mm: float = 10.0
    min_ml: float = 0.5

    def describe(self) -> str:
        return (f"rule-based estimate (not a trained model): fluid-like on the present sequences (mean z signed "
                f"towards fluid > {self.fluid_score:g}, FLAIR z < {self.flair_max_z:g}, T2 z > {self.t2_min_z:g}), "
                f"deeper than {self.surface_mm:g} mm in the brain, "
                f"opened by a {self.opening_mm:g} mm ball, not the ventricles (within {self.central_mm:g} mm of "
                f"the brain's centre and across the midline, or mirrored across it onto fluid for "
                f"{self.mirror_fraction:.0%} of the region), grown {self.opening_mm + 1:g} mm into voxels "
                f"{self.wall_score:g} fluid-like, within {self.bed_mm:g} mm of the tumour bed, at least "
                f"{self.min_ml:g} mL; tumour inside it removed from WT/TC/ET")


DEFAULT_RULES = CavityRules()


@dataclass(frozen=True)
class CavityResult:
    """The cavity mask on the label map's grid and how it was located (``CavityFinding.located_by``)."""

    mask: Mask
    located_by: str


def fluid_mask(normalised: dict[SeriesRole, Volume], brain: Mask, rules: CavityRules = DEFAULT_RULES, *,
               score_above: float | None = None) -> Mask | None:
    """Rule 1: voxels fluid-like on the present sequences (``score_above``: another threshold of the mean
    signed z-score than ``fluid_score``); None when neither FLAIR nor T2 is present."""
    if SeriesRole.FLAIR not in normalised and SeriesRole.T2 not in normalised:
        return None
    signs = {SeriesRole.T1CE: -1.0, SeriesRole.T1: -1.0, SeriesRole.FLAIR: -1.0, SeriesRole.T2: 1.0}
    present = [role for role in signs if role in normalised]
    score = sum(signs[role] * np.asarray(normalised[role].array, dtype=np.float32) for role in present) / len(present)
    # Smoothed over ~1 mm: a fluid voxel is judged with its neighbours, as a reader does, not by its noise.
    fluid: Mask = brain & (ndimage.gaussian_filter(np.asarray(score, dtype=np.float32), sigma=rules.smooth_mm)
                           > (rules.fluid_score if score_above is None else score_above))
    if SeriesRole.FLAIR in normalised:  # oedema and tumour are bright on FLAIR: the fluid must be suppressed
        fluid &= np.asarray(normalised[SeriesRole.FLAIR].array) < rules.flair_max_z
    if SeriesRole.T2 in normalised:
        fluid &= np.asarray(normalised[SeriesRole.T2].array) > rules.t2_min_z
    return fluid


def find_cavity(normalised: dict[SeriesRole, Volume], brain_mask: Volume, tumour: Mask,
                prior_tumour: Mask | None = None, rules: CavityRules = DEFAULT_RULES) -> CavityResult | None:
    """The resection cavity (rules 1-5 of the module docstring) on ``brain_mask``'s grid; ``tumour``: the whole
    tumour the network drew there, ``prior_tumour``: the prior study's, registered onto the grid (or None).
    None when the sequences cannot show it (neither FLAIR nor T2); an empty mask when none was found."""
    brain = np.asarray(brain_mask.array) > 0
    fluid = fluid_mask(normalised, brain, rules)
    if fluid is None:
        return None
    spacing = np.asarray(brain_mask.geometry.spacing[::-1], dtype=float)  # array axes (z, y, x)
    voxel_ml = float(np.prod(spacing)) / _MM3_PER_ML
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    deep_fluid = fluid & (depth > rules.surface_mm)
    opened = ndimage.binary_opening(deep_fluid, structure=_ball(rules.opening_mm, spacing))
    components, count = ndimage.label(opened, structure=_CONNECTIVITY)
    empty = CavityResult(np.zeros_like(brain), "none found")
    if count == 0:
        return empty
    sizes = np.bincount(components.ravel(), minlength=count + 1).astype(float) * voxel_ml
    keep = sizes >= rules.min_ml
    keep[0] = False
    keep &= ~_ventricular(components, count, brain_mask, spacing, rules, voxel_ml)
    keep &= ~_mirrored_fluid(components, count, deep_fluid, brain_mask, spacing, rules)
    bed, located_by = _tumour_bed(tumour, prior_tumour)
    if bed is not None:
        near = ndimage.distance_transform_edt(~bed, sampling=spacing) <= rules.bed_mm
        touching = np.zeros(count + 1, dtype=bool)
        touching[np.unique(components[near & (components > 0)])] = True
        keep &= touching
    elif keep.any():  # no tumour bed to tie it to: the largest candidate of a study known to be post-operative
        largest = int(np.argmax(np.where(keep, sizes, -1.0)))
        keep[:] = False
        keep[largest] = True
        located_by = "largest non-ventricular fluid region (no tumour bed)"
    if not keep.any():
        return empty
    cavity = keep[components]
    # Rule 5: grow back into the fluid what the opening rounded off, then fill enclosed holes.
    # The wall is a partial-volume blur: the growth takes voxels at least half as fluid-like (``wall_score``).
    wall = fluid_mask(normalised, brain, rules, score_above=rules.wall_score)
    assert wall is not None
    grow = ndimage.binary_dilation(cavity, structure=_ball(rules.opening_mm + 1.0, spacing)) & wall
    cavity = ndimage.binary_fill_holes(cavity | grow) & brain
    return CavityResult(cavity, located_by)


def with_cavity(labels: Volume, cavity: Mask) -> tuple[Volume, float]:
    """``labels`` with the cavity's voxels set to RESECTION_CAVITY_LABEL (whatever tumour label they had: the
    cavity is never counted as tumour), and the millilitres of tumour so removed."""
    array = np.asarray(labels.array).copy()
    tumour = np.isin(array, [int(label) for label in REGION_LABELS[TumourRegion.WT]])
    removed_ml = float((tumour & cavity).sum()) * labels.voxel_volume_mm3 / _MM3_PER_ML
    array[cavity] = RESECTION_CAVITY_LABEL
    return labels.with_array(array.astype(np.uint8)), removed_ml


def postoperative_labels(labels: Volume, normalised: dict[SeriesRole, Volume], brain_mask: Volume, *,
                         evidence: list[str], prior_tumour: Mask | None = None, prior_tumour_note: str = "",
                         rules: CavityRules = DEFAULT_RULES) -> Volume:
    """The post-operative step of ``glioma_postop`` (both runtimes): the network's label map with the cavity
    carved in, the :class:`CavityFinding` attached to its meta (``evidence``: why the study is post-operative;
    ``prior_tumour``: the prior's tumour on this grid, ``prior_tumour_note`` what became of it)."""
    tumour = np.isin(np.asarray(labels.array), [int(label) for label in REGION_LABELS[TumourRegion.WT]])
    found = find_cavity(normalised, brain_mask, tumour, prior_tumour, rules)
    if found is None:
        finding = CavityFinding(evidence=evidence, assessable=False, method=rules.describe(),
                                why_not="the cavity is found as fluid on FLAIR or T2, and the study has neither",
                                prior_tumour=prior_tumour_note)
        return finding.attach(labels)
    carved, removed_ml = with_cavity(labels, found.mask)
    return CavityFinding(evidence=evidence, located_by=found.located_by, tumour_removed_ml=round(removed_ml, 3),
                         method=rules.describe(), prior_tumour=prior_tumour_note).attach(carved)


def _ventricular(components: npt.NDArray[np.int32], count: int, brain_mask: Volume,
                 spacing: npt.NDArray[np.float64], rules: CavityRules, voxel_ml: float) -> npt.NDArray[np.bool_]:
    """Rule 3, per component label (index 0 the background): those reaching within ``central_mm`` of the
    brain's centre of mass with ``central_min_ml`` more than 3 mm on each side of the midline (the left-right
    array axis is the one the geometry's direction points most along patient x)."""
    brain = np.asarray(brain_mask.array) > 0
    centre = np.asarray(ndimage.center_of_mass(brain))
    grid: tuple[npt.NDArray[np.intp], ...] = tuple(np.indices(brain.shape, sparse=True))
    distance_sq = sum(((axis - c) * s) ** 2 for axis, c, s in zip(grid, centre, spacing, strict=True))
    central = np.bincount(components[distance_sq <= rules.central_mm ** 2].ravel(), minlength=count + 1) > 0
    lr_axis = _lr_axis(brain_mask)
    offset = (grid[lr_axis] - centre[lr_axis]) * spacing[lr_axis]
    sides = []
    for side in (offset < -3.0, offset > 3.0):
        in_side = np.broadcast_to(side, brain.shape)
        sides.append(np.bincount(components[in_side].ravel(), minlength=count + 1).astype(float) * voxel_ml
                     >= rules.central_min_ml)
    out: npt.NDArray[np.bool_] = central & sides[0] & sides[1]
    out[0] = False
    return out


def _lr_axis(brain_mask: Volume) -> int:
    """The array axis (z, y, x order) that runs most nearly left-right (patient x): index axis c of the
    geometry's direction is array axis 2 - c."""
    direction = brain_mask.geometry.direction
    return 2 - int(np.argmax([abs(direction[c]) for c in range(3)]))


def _mirrored_fluid(components: npt.NDArray[np.int32], count: int, fluid: Mask, brain_mask: Volume,
                    spacing: npt.NDArray[np.float64], rules: CavityRules) -> npt.NDArray[np.bool_]:
    """Rule 3's pair test, per component label: the share of its voxels whose mirror image across the brain's
    midline (its centre of mass along the left-right axis) lies in ``fluid`` grown by ``mirror_tolerance_mm``
    is at least ``mirror_fraction``."""
    brain = np.asarray(brain_mask.array) > 0
    axis = _lr_axis(brain_mask)
    centre = float(ndimage.center_of_mass(brain)[axis])
    grown = ndimage.binary_dilation(fluid, structure=_ball(rules.mirror_tolerance_mm, spacing))
    coords = list(np.nonzero(components))
    labels = components[tuple(coords)]
    mirrored = np.rint(2.0 * centre - coords[axis]).astype(np.intp)
    inside = (mirrored >= 0) & (mirrored < brain.shape[axis])
    coords[axis] = np.clip(mirrored, 0, brain.shape[axis] - 1)
    on_fluid = grown[tuple(coords)] & inside
    total = np.bincount(labels, minlength=count + 1).astype(float)
    hits = np.bincount(labels[on_fluid], minlength=count + 1).astype(float)
    out: npt.NDArray[np.bool_] = hits >= rules.mirror_fraction * np.maximum(total, 1.0)
    out[0] = False
    return out


def _tumour_bed(tumour: Mask, prior_tumour: Mask | None) -> tuple[Mask | None, str]:
    """Where the cavity must lie near: the tumour drawn now and the prior's; None when neither holds a voxel."""
    parts = [(tumour, "tumour bed"), *([(prior_tumour, "prior tumour")] if prior_tumour is not None else [])]
    present = [(mask, name) for mask, name in parts if mask.any()]
    if not present:
        return None, ""
    bed = np.logical_or.reduce([mask for mask, _ in present])
    return bed, " and ".join(name for _, name in present)


def _ball(radius_mm: float, spacing: npt.NDArray[np.float64]) -> Mask:
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    grid = np.indices([2 * h + 1 for h in half], dtype=float)
    distance_sq = sum(((g - h) * s) ** 2 for g, h, s in zip(grid, half, spacing, strict=True))
    ball: Mask = distance_sq <= radius_mm ** 2 + 1e-9
    return ball
