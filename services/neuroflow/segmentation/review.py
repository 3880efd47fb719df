"""The failure flag of a glioma segmentation: checks that look at the result from another side, each raising
one readable alarm when it disagrees. The number of alarms is the risk score; above the site's threshold
(``NEUROFLOW_SEGMENTATION__REVIEW_THRESHOLD``) the result is marked *needs review*.

* Ensemble of test-time mirrors: the network on the mirrored inputs, mirrored back, post-processed like
  the result; a region whose Dice with the result is low is one the network is unsure of.
* An independent second method for the whole tumour: the FLAIR (or T2) hyperintensity inside the brain
  (robust z-score over the brain, connected components that overlap the prediction), compared with the
  predicted WT by Dice and by volume.
* Sanity: nothing found beside a large hyperintensity, regions not nested before post-processing, a tumour
  lying mostly on the brain mask's edge, an implausible volume.

The limits below were set on the real cases and the deliberately degraded inputs of
``models/glioma_unet/review_calibration.py`` (EVALUATION.md, "Failure flag")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from neuroflow.core import metrics
from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.handoff import RegistrationSummary, ReviewSummary
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.segmentation.glioma import predict_regions
from neuroflow.segmentation.measure import dice
from neuroflow.segmentation.mirrors import flip_array_axis
from neuroflow.segmentation.postprocess import RegionMasks, from_label_map, postprocess, threshold_regions

Mask = npt.NDArray[np.bool_]

METHOD = ("test-time mirrors ({flips}) as ensemble members, FLAIR/T2 hyperintensity as an independent "
          "whole-tumour estimate, sanity checks; risk score = number of alarms")
# A region smaller than this in both the result and a member is not compared (Dice of a few voxels is noise).
MIN_COMPARED_ML = 1.0
FLIP_DICE_MIN = 0.8  # a mirror member agreeing less than this with the result raises an alarm
HYPER_Z = 3.0  # robust z-score (median, MAD) over the brain above which FLAIR counts as hyperintense
_HYPER_EDGE_MM = 3.0  # the brain edge is left out of the estimate: skull-strip remnants and cortex are bright
HYPER_DICE_MIN = 0.5  # WT against the hyperintensity estimate
HYPER_RATIO_RANGE = (0.5, 2.0)  # WT volume / estimate volume outside this range raises an alarm
LARGE_HYPER_ML = 10.0  # "nothing found" while a hyperintense component this large exists
NOTHING_ML = 0.1  # a WT below this counts as nothing found
NESTING_OUTSIDE_MAX = 0.5  # fraction of a raw region outside its parent before post-processing
EDGE_MM = 3.0
EDGE_FRACTION_MAX = 0.4  # of WT within EDGE_MM of the brain mask's edge
MAX_WT_ML = 250.0  # larger than any glioma
MAX_WT_BRAIN_FRACTION = 0.25


@dataclass
class Findings:
    """What the checks found: the alarms and the figures behind them."""

    alarms: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    def figure(self, name: str, value: float) -> float:
        self.figures[name] = round(float(value), 4)
        return value


def assess(
    result: RegionMasks,
    raw: RegionMasks,
    members: dict[str, RegionMasks],
    hyper_source: npt.NDArray[np.floating] | None,
    brain: Mask,
    voxel_mm3: float,
) -> Findings:
    """Every check on one result. ``result``: the post-processed regions; ``raw``: thresholded, before
    post-processing; ``members``: the post-processed regions of each mirror member by name;
    ``hyper_source``: the FLAIR (or T2) on the same grid, None when the study has neither."""
    found = Findings()
    ml = voxel_mm3 / 1000.0
    wt_ml = found.figure("WT_ml", result.wt.sum() * ml)
    for name, member in members.items():
        _flip_alarms(found, name, result, member, ml)
    if hyper_source is not None:
        _hyperintensity_alarms(found, result.wt, hyper_source, brain, voxel_mm3)
    _nesting_alarms(found, raw, ml)
    _edge_alarm(found, result.wt, brain, voxel_mm3)
    brain_ml = brain.sum() * ml
    if wt_ml > MAX_WT_ML or (brain_ml > 0 and wt_ml > MAX_WT_BRAIN_FRACTION * brain_ml):
        found.alarms.append(f"implausible whole-tumour volume: {wt_ml:.0f} mL in a brain of {brain_ml:.0f} mL")
    return found


def _flip_alarms(found: Findings, name: str, result: RegionMasks, member: RegionMasks, ml: float) -> None:
    for region, mask in result.by_region().items():
        other = member.by_region()[region]
        score = found.figure(f"{region.value}_{name}_dice", dice(mask, other))
        if max(mask.sum(), other.sum()) * ml >= MIN_COMPARED_ML and score < FLIP_DICE_MIN:
            found.alarms.append(f"{region.value} unstable under a {name.replace('_', '-')} mirror: Dice {score:.2f} "
                                f"between the result ({mask.sum() * ml:.1f} mL) and the mirrored prediction "
                                f"({other.sum() * ml:.1f} mL)")


def hyperintensity(image: npt.NDArray[np.floating], brain: Mask, voxel_mm3: float) -> Mask:
    """Voxels of ``image`` hyperintense within the brain: robust z-score (median and MAD over the brain)
    above HYPER_Z, away from the brain's edge, opened once to drop speckle."""
    values = np.asarray(image[brain], dtype=np.float64)
    if values.size == 0:
        return np.zeros(brain.shape, dtype=bool)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826 or 1.0
    edge = max(1, round(_HYPER_EDGE_MM / voxel_mm3 ** (1 / 3)))
    inner = ndimage.binary_erosion(brain, iterations=edge)
    bright: Mask = ndimage.binary_opening((image - median) / mad > HYPER_Z, iterations=1) & inner
    return bright


def _hyperintensity_alarms(found: Findings, wt: Mask, image: npt.NDArray[np.floating], brain: Mask,
                           voxel_mm3: float) -> None:
    ml = voxel_mm3 / 1000.0
    bright = hyperintensity(image, brain, voxel_mm3)
    labels, n = ndimage.label(bright, structure=ndimage.generate_binary_structure(3, 3))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    largest_ml = found.figure("hyper_largest_ml", sizes.max() * ml if n else 0.0)
    wt_ml = wt.sum() * ml
    if wt_ml < NOTHING_ML:
        if largest_ml >= LARGE_HYPER_ML:
            found.alarms.append(f"no tumour found, but the FLAIR shows a hyperintense region of {largest_ml:.0f} mL")
        return
    touched = np.unique(labels[wt & (labels > 0)])
    estimate = np.isin(labels, touched[touched > 0])
    estimate_ml = found.figure("hyper_ml", estimate.sum() * ml)
    score = found.figure("WT_hyper_dice", dice(wt, estimate))
    ratio = found.figure("WT_hyper_volume_ratio", wt_ml / estimate_ml if estimate_ml > 0 else float("inf"))
    if max(wt_ml, estimate_ml) < MIN_COMPARED_ML:
        return
    if score < HYPER_DICE_MIN:
        found.alarms.append(f"WT disagrees with the FLAIR hyperintensity it lies in: Dice {score:.2f} "
                            f"({wt_ml:.1f} mL predicted, {estimate_ml:.1f} mL hyperintense)")
    elif not HYPER_RATIO_RANGE[0] <= ratio <= HYPER_RATIO_RANGE[1]:
        # Dice already low says the volumes differ too: one alarm for one disagreement.
        found.alarms.append(f"WT volume {wt_ml:.1f} mL is {ratio:.2f} times the FLAIR hyperintensity it lies in "
                            f"({estimate_ml:.1f} mL)")


def _nesting_alarms(found: Findings, raw: RegionMasks, ml: float) -> None:
    for inner_name, inner, outer_name, outer in (("ET", raw.et, "TC", raw.tc), ("TC", raw.tc, "WT", raw.wt)):
        size = inner.sum()
        outside = found.figure(f"{inner_name}_outside_{outer_name}", (inner & ~outer).sum() / size if size else 0.0)
        if size * ml >= MIN_COMPARED_ML and outside > NESTING_OUTSIDE_MAX:
            found.alarms.append(f"regions not nested: {outside:.0%} of the predicted {inner_name} lies outside "
                                f"the predicted {outer_name} (before post-processing)")


def _edge_alarm(found: Findings, wt: Mask, brain: Mask, voxel_mm3: float) -> None:
    size = wt.sum()
    if size * voxel_mm3 / 1000.0 < MIN_COMPARED_ML:
        return
    edge = max(1, round(EDGE_MM / voxel_mm3 ** (1 / 3)))
    shell = brain & ~ndimage.binary_erosion(brain, iterations=edge)
    fraction = found.figure("WT_on_brain_edge", (wt & shell).sum() / size)
    if fraction > EDGE_FRACTION_MAX:
        found.alarms.append(f"{fraction:.0%} of the whole tumour lies on the brain mask's edge "
                            f"(within {EDGE_MM:.0f} mm): skull-strip or registration failure?")


def review_segmentation(
    normalised: dict[SeriesRole, Volume],
    mask: Volume,
    probabilities: npt.NDArray[np.float32],
    labels: Volume,
    backend: InferenceBackend,
    model: ModelRef,
    settings: NeuroflowSettings,
    *,
    study_key: str,
    registration: Mapping[str, RegistrationSummary],
) -> ReviewSummary:
    """The failure flag of one segmentation (``probabilities`` from :func:`predict_regions`, ``labels`` its
    post-processed label map), the same in both runtimes. ``registration``: how preprocessing registered each
    series (by role); one left misaligned with the reference is an alarm (the network saw shifted inputs)."""
    flips = settings.segmentation.review_flips
    members: dict[str, RegionMasks] = {}
    for flip in flips:
        mirrored = predict_regions(normalised, mask, backend, model, overlap=settings.window_overlap,
                                   batch_size=settings.window_batch_size, study_key=study_key,
                                   flip_axes=(flip_array_axis(mask.geometry, flip),))
        members[flip] = postprocess(threshold_regions(mirrored), mask.voxel_volume_mm3)
    source = normalised.get(SeriesRole.FLAIR, normalised.get(SeriesRole.T2))
    found = assess(from_label_map(labels.array), threshold_regions(probabilities), members,
                   None if source is None else source.array, mask.array > 0, mask.voxel_volume_mm3)
    found.alarms.extend(reg.misalignment(role) for role, reg in registration.items() if reg.misaligned)
    return ReviewSummary(alarms=found.alarms, disagreement=found.figures,
                         method=METHOD.format(flips=", ".join(flips) or "none"),
                         threshold=settings.segmentation.review_threshold)


def record_review(review: ReviewSummary, *, site: str, pipeline: str, model: ModelRef) -> None:
    """Counts the assessed result, and the flag when raised (bounded labels: site, pipeline, model)."""
    labels = (site or metrics.UNKNOWN, pipeline or metrics.UNKNOWN, f"{model.name}/{model.version}")
    metrics.REVIEWS_ASSESSED.labels(*labels).inc()
    flags = metrics.REVIEW_FLAGS.labels(*labels)  # exported at 0 too: the alert's rate needs the series
    if review.needs_review:
        flags.inc()
