"""Brain metastases lesion by lesion against the prior, and the RANO-BM response (issue 15).

Input: the metastases found on the prior and on the follow-up (``core.lesions``: each measured on its own study's
T1CE, as a radiologist measures each scan on its own images) and the rigid transform from the follow-up's patient
coordinates to the prior's (``preprocess.register``: the prior T1CE registered onto the follow-up's). Output: the
report's ``MetastasesResponse``.

1. **Prior onto follow-up**: the prior's lesion label map is resampled onto the follow-up grid through the
   transform (nearest neighbour: lesion numbers stay numbers) and each prior centroid is mapped likewise.
2. **Matching** (one to one, greedy): a prior and a follow-up lesion may match when, after registration, they
   overlap by at least one voxel or their centroids lie within :func:`match_distance_mm` of each other; the
   pairs that overlap most match first, then the closest. Overlap is the natural test for a lesion that stays
   where it was; the distance catches one that shrank away from its former outline (after radiosurgery a lesion
   often shrinks eccentrically) or a small one that moved by the registration's residual. The allowed distance
   is half the larger lesion's longest diameter (a centroid stays inside the lesion however it grows or shrinks)
   plus :data:`MATCH_MARGIN_MM`: the rigid registration's target error is under 0.5 mm on a known motion
   (preprocess.register), and brain shift between sessions (oedema resolving, mass effect) adds 1-2 mm; 3 mm
   covers both yet keeps two distinct 3 mm metastases 8 mm apart from being taken for one. A prior lesion left
   over is *resolved*; a follow-up lesion left over is *new*. Lesions that merge or split are matched to one
   partner only (the others are reported resolved or new): a reader sees them in the table.
3. **Per-lesion status** from the longest axial diameter (mm), in RANO-BM's terms (Lin et al., "Response assessment
   criteria for brain metastases: proposal from the RANO group", Lancet Oncol 2015;16:e270-8). RANO-BM judges the
   sum over target lesions, not single lesions; a single lesion's status here uses the same relative thresholds
   (+20 % progression, -30 % partial response) with an absolute floor of :data:`LESION_ABSOLUTE_CHANGE_MM`, because a
   diameter measured on a segmentation varies by about a voxel at each edge (2 mm at 1 mm voxels): 20 % of a 5 mm
   lesion is 1 mm, which is noise. 3 mm is the smallest change beyond two voxels of measurement error.
4. **RANO-BM** (the paper's Table): target lesions are up to :data:`MAX_TARGETS` measurable lesions (longest
   diameter >= 10 mm, or twice the slice thickness when slices are thicker than 5 mm) chosen on the prior, the
   largest first (the paper: "based on size and those that can be measured reproducibly"). The sum of their
   longest diameters (SLD) is compared between the timepoints:

   * CR: every lesion (target and non-target) gone and no new lesion;
   * PR: SLD at least 30 % below the baseline's, and no new lesion;
   * PD: SLD at least 20 % above the nadir *and* at least one target lesion grown by 5 mm or more (the paper: "in
     addition to the relative increase of 20 %, at least one lesion must increase by an absolute value of 5 mm or
     more"), or an unequivocal new lesion;
   * SD: neither.

   The nadir is the prior's SLD: only the pair is known here (the smallest SLD "on study" may be earlier).
   A new lesion is unequivocal at the measurable size (10 mm); a smaller one is what the paper calls equivocal
   ("for example, because of its small size"): it does not make PD by itself, it is listed to be confirmed on the
   next scan ("progression should be declared using the date of the initial scan showing the new lesion").
   Without a target lesion at baseline the category is CR, PD or NE (not evaluable: the paper's
   PR and SD need target lesions). Corticosteroid dose and clinical status, which RANO-BM also requires, and the
   confirmation of a response after 4 weeks, are unknown to the software: the report says so (:data:`CAVEATS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from neuroflow.core.lesions import LesionMeasurement, Lesions
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.results.report import (
    LesionFollowUpEntry,
    LesionStatus,
    MetastasesResponse,
    RanoBmAssessment,
    RanoBmCategory,
)

# Matching: the registration's residual and brain shift between sessions (module doc, 2).
MATCH_MARGIN_MM = 3.0
# Per lesion (module doc, 3): RANO-BM's relative thresholds with an absolute floor above measurement error.
LESION_GROWTH_PCT = 20.0
LESION_SHRINK_PCT = 30.0
LESION_ABSOLUTE_CHANGE_MM = 3.0
# RANO-BM (Lin et al. 2015).
MEASURABLE_MM = 10.0  # longest diameter of a measurable lesion (slices of 5 mm or less)
MAX_TARGETS = 5
PR_DECREASE_PCT = 30.0  # from the baseline SLD
PD_INCREASE_PCT = 20.0  # from the nadir SLD
PD_LESION_INCREASE_MM = 5.0  # at least one lesion must grow by this much as well
CAVEATS = (
    "RANO-BM also requires the corticosteroid dose (CR: none; PR and SD: stable or decreased) and the clinical "
    "status (stable or improved; clinical worsening is PD): neither is known to the software",
    "CR and PR must be confirmed after at least 4 weeks; an equivocal new lesion confirmed on the next scan is "
    "progression dated from the scan that first showed it",
    "non-target lesions are listed but unequivocal progression of them is for the reader to judge",
)

Point = tuple[float, float, float]


@dataclass(frozen=True)
class PriorOnFollowUp:
    """The prior's lesions brought onto the follow-up: their label map on the follow-up grid and, by prior
    lesion number (index 0 = Met 1), each centroid in the follow-up's patient coordinates."""

    labels: Volume
    centroids_mm: tuple[Point, ...]


@dataclass(frozen=True)
class Match:
    prior: int | None  # prior lesion number
    current: int | None  # follow-up lesion number
    by: str | None  # "overlap", "distance", None
    distance_mm: float | None


def prior_on_followup(prior: Lesions, followup_grid: Geometry, to_prior: sitk.Transform) -> PriorOnFollowUp:
    """``prior``'s label map and centroids on ``followup_grid``; ``to_prior`` maps follow-up points to prior
    points (as ``register_rigid(fixed=follow-up, moving=prior)`` returns it)."""
    labels = resample(prior.labels, followup_grid, to_prior, interpolator=sitk.sitkNearestNeighbor)
    inverse = to_prior.GetInverse()
    centroids = tuple(_point(inverse.TransformPoint(lesion.centroid_mm)) for lesion in prior.lesions)
    return PriorOnFollowUp(labels, centroids)


def match_distance_mm(prior_diameter_mm: float, current_diameter_mm: float) -> float:
    """How far apart (mm) two registered centroids may be for the lesions to be one (module doc, 2)."""
    return max(prior_diameter_mm, current_diameter_mm) / 2.0 + MATCH_MARGIN_MM


def match_lesions(prior: Lesions, current: Lesions, on_followup: PriorOnFollowUp) -> list[Match]:
    """One-to-one matches of ``prior`` and ``current`` lesions (module doc, 2), then the unmatched of each:
    matched pairs in follow-up lesion order, resolved prior lesions, new follow-up lesions."""
    if not on_followup.labels.geometry.is_close(current.labels.geometry):
        raise ValueError("the prior's lesions are not on the follow-up's grid")
    overlap = _overlaps(np.asarray(on_followup.labels.array), np.asarray(current.labels.array))
    candidates: list[tuple[int, float, int, int]] = []  # (-overlap, distance, prior, current)
    for p in prior.lesions:
        for c in current.lesions:
            distance = float(np.linalg.norm(np.subtract(on_followup.centroids_mm[p.number - 1], c.centroid_mm)))
            shared = overlap.get((p.number, c.number), 0)
            if shared or distance <= match_distance_mm(p.longest_axial_diameter_mm, c.longest_axial_diameter_mm):
                candidates.append((-shared, distance, p.number, c.number))
    taken_prior: dict[int, Match] = {}
    taken_current: set[int] = set()
    for negative_overlap, distance, p_number, c_number in sorted(candidates):
        if p_number in taken_prior or c_number in taken_current:
            continue
        taken_prior[p_number] = Match(p_number, c_number, "overlap" if negative_overlap else "distance", distance)
        taken_current.add(c_number)
    matched = sorted(taken_prior.values(), key=lambda m: m.current or 0)
    resolved = [Match(p.number, None, None, None) for p in prior.lesions if p.number not in taken_prior]
    new = [Match(None, c.number, None, None) for c in current.lesions if c.number not in taken_current]
    return [*matched, *resolved, *new]


def lesion_status(prior_mm: float | None, current_mm: float | None) -> LesionStatus:
    """The status of one lesion from its longest diameters (None: absent at that timepoint; module doc, 3)."""
    if prior_mm is None and current_mm is None:
        raise ValueError("a lesion is present at one timepoint at least")
    if prior_mm is None:
        return LesionStatus.NEW
    if current_mm is None:
        return LesionStatus.RESOLVED
    change = current_mm - prior_mm
    if prior_mm > 0 and change >= LESION_ABSOLUTE_CHANGE_MM and 100.0 * change / prior_mm >= LESION_GROWTH_PCT:
        return LesionStatus.GROWING
    if prior_mm > 0 and -change >= LESION_ABSOLUTE_CHANGE_MM and -100.0 * change / prior_mm >= LESION_SHRINK_PCT:
        return LesionStatus.SHRINKING
    return LesionStatus.STABLE


def measurable_mm(slice_thickness_mm: float | None) -> float:
    """The smallest measurable longest diameter: 10 mm, or twice the slice thickness when slices are thicker
    than 5 mm (RANO-BM asks for 5 mm or thinner; a lesion must show on at least two slices)."""
    return max(MEASURABLE_MM, 2.0 * (slice_thickness_mm or 0.0))


def target_lesions(prior: Lesions, *, slice_thickness_mm: float | None = None) -> list[int]:
    """The prior's target lesion numbers: up to five measurable ones, the largest diameters first."""
    floor = measurable_mm(slice_thickness_mm)
    measurable = [m for m in prior.lesions if m.longest_axial_diameter_mm >= floor]
    measurable.sort(key=lambda m: (-m.longest_axial_diameter_mm, m.number))
    return [m.number for m in measurable[:MAX_TARGETS]]


def metastases_response(prior: Lesions, current: Lesions, on_followup: PriorOnFollowUp, *,
                        slice_thickness_mm: float | None = None) -> MetastasesResponse:
    """The lesion table, the counts by status and the RANO-BM assessment of the pair (module doc).
    ``slice_thickness_mm``: the prior T1CE's (measurability)."""
    by_prior = {m.number: m for m in prior.lesions}
    by_current = {m.number: m for m in current.lesions}
    targets = set(target_lesions(prior, slice_thickness_mm=slice_thickness_mm))
    entries: list[LesionFollowUpEntry] = []
    for match in match_lesions(prior, current, on_followup):
        before = by_prior.get(match.prior) if match.prior is not None else None
        after = by_current.get(match.current) if match.current is not None else None
        entries.append(_entry(match, before, after, on_followup, targets))
    counts = {status.value: sum(e.status is status for e in entries) for status in LesionStatus}
    return MetastasesResponse(
        lesions=entries, counts=counts,
        rano_bm=rano_bm(entries, slice_thickness_mm=slice_thickness_mm),
        match_rule=(f"after rigid registration of the prior T1CE onto the follow-up's: overlap, else centroids within "
                    f"half the larger longest diameter + {MATCH_MARGIN_MM:g} mm; one to one, largest overlap first"))


def rano_bm(entries: Sequence[LesionFollowUpEntry], *, slice_thickness_mm: float | None = None) -> RanoBmAssessment:
    """The RANO-BM category of a lesion table (module doc, 4)."""
    targets = [e for e in entries if e.target]
    sld_prior = round(sum(e.prior_diameter_mm for e in targets), 1)
    sld = round(sum(e.diameter_mm for e in targets), 1)
    change = round(100.0 * (sld - sld_prior) / sld_prior, 1) if sld_prior > 0 else None
    floor = measurable_mm(slice_thickness_mm)
    new = [e for e in entries if e.status is LesionStatus.NEW]
    unequivocal = [e for e in new if e.diameter_mm >= floor]
    remaining = [e for e in entries if e.status is not LesionStatus.RESOLVED]
    reasons: list[str] = []
    grown = [e for e in targets if e.change_mm >= PD_LESION_INCREASE_MM]
    if unequivocal:
        reasons.append(f"{len(unequivocal)} new lesion(s) of {floor:g} mm or more")
    if change is not None and change >= PD_INCREASE_PCT and grown:
        reasons.append(f"sum of longest diameters {change:+.1f} % from the nadir ({sld_prior:g} -> {sld:g} mm), "
                       f"{len(grown)} target lesion(s) grown by {PD_LESION_INCREASE_MM:g} mm or more")
    elif change is not None and change >= PD_INCREASE_PCT:
        reasons.append(f"sum of longest diameters {change:+.1f} % from the nadir, but no target lesion grew by "
                       f"{PD_LESION_INCREASE_MM:g} mm: not progression")
    progression_by_sld = change is not None and change >= PD_INCREASE_PCT and bool(grown)
    if unequivocal or progression_by_sld:
        category = RanoBmCategory.PD
    elif entries and not remaining:
        category = RanoBmCategory.CR
        reasons.append("every lesion resolved, no new lesion")
    elif not targets:
        category = RanoBmCategory.NE
        reasons.append("no measurable (target) lesion on the prior: RANO-BM's PR and SD need one"
                       if entries else "no metastasis on either study")
    elif change is not None and change <= -PR_DECREASE_PCT and not new:
        category = RanoBmCategory.PR
        reasons.append(f"sum of longest diameters {change:+.1f} % from the prior ({sld_prior:g} -> {sld:g} mm)")
    else:
        category = RanoBmCategory.SD
        reasons.append(f"sum of longest diameters {change:+.1f} % from the prior ({sld_prior:g} -> {sld:g} mm)"
                       + ("; a decrease to PR, but new lesion(s) to confirm" if new and change is not None
                          and change <= -PR_DECREASE_PCT else ""))
    equivocal = len(new) - len(unequivocal)
    if equivocal:
        reasons.append(f"{equivocal} new lesion(s) under {floor:g} mm: equivocal, confirm on the next scan")
    return RanoBmAssessment(category=category, reasons=reasons, target_count=len(targets), sld_prior_mm=sld_prior,
                            sld_mm=sld, sld_change_pct=change, nadir_mm=sld_prior, unequivocal_new=len(unequivocal),
                            equivocal_new=equivocal, caveats=list(CAVEATS))


def _entry(match: Match, before: LesionMeasurement | None, after: LesionMeasurement | None,
           on_followup: PriorOnFollowUp, targets: set[int]) -> LesionFollowUpEntry:
    prior_mm = round(before.longest_axial_diameter_mm, 1) if before is not None else None
    current_mm = round(after.longest_axial_diameter_mm, 1) if after is not None else None
    change = (current_mm or 0.0) - (prior_mm or 0.0)
    if after is not None:
        centroid = after.centroid_mm
    else:
        assert match.prior is not None
        centroid = on_followup.centroids_mm[match.prior - 1]
    return LesionFollowUpEntry(
        number=match.current, prior_number=match.prior, status=lesion_status(prior_mm, current_mm),
        prior_diameter_mm=prior_mm or 0.0, diameter_mm=current_mm or 0.0, change_mm=round(change, 1),
        change_pct=round(100.0 * change / prior_mm, 1) if prior_mm else None,
        prior_volume_ml=round(before.volume_ml, 5) if before is not None else 0.0,
        volume_ml=round(after.volume_ml, 5) if after is not None else 0.0,
        centroid_mm=_point(centroid, 2), target=match.prior in targets,
        confidence=round(after.confidence, 4) if after is not None and after.confidence is not None else None,
        matched_by=match.by, match_distance_mm=round(match.distance_mm, 1) if match.distance_mm is not None else None)


Labels = npt.NDArray[np.integer]


def _overlaps(prior_labels: Labels, current_labels: Labels) -> dict[tuple[int, int], int]:
    """(prior number, current number) -> voxels they share on the follow-up grid."""
    both = (prior_labels > 0) & (current_labels > 0)
    if not both.any():
        return {}
    pairs, counts = np.unique(np.stack([prior_labels[both], current_labels[both]]).astype(np.int64), axis=1,
                              return_counts=True)
    return {(int(p), int(c)): int(n) for (p, c), n in zip(pairs.T, counts, strict=True)}


def _point(values: Sequence[float], digits: int | None = None) -> Point:
    x, y, z = (float(v) if digits is None else round(float(v), digits) for v in values)
    return x, y, z
