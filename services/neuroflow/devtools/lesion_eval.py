"""Lesion-wise evaluation of metastasis detection (issue 15): sensitivity and false positives per case by size
bin, and the FROC from per-lesion confidences, as the anchor reports it (95.8 % sensitivity at 0.39 false
positives per patient, Neuro-Oncology 2022; older methods found about 70 % of lesions under 6 mm).

The MS change scoring (``lesion_change_scoring``) judges centroids against a change mask; metastases are
judged on masks, since the segmentation is what a planner contours:

* a detected lesion *finds* a reference lesion when it overlaps it by at least one voxel, or its
  centroid lies within :data:`HIT_MM` of one of the reference lesion's voxels (a 2 mm lesion segmented
  one voxel off is still found);
* a detected lesion that finds none is a *false positive*; one that finds several finds them all
  (the reference lesions are found; no extra false positive);
* size bins go by the longest axial diameter (RANO-BM): the reference lesion's for sensitivity, the
  detection's own for false positives.

The matching does not depend on the confidence threshold, so one match per case serves the whole FROC."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from neuroflow.core.lesions import Lesions, label_lesions
from neuroflow.core.volume import Volume

HIT_MM = 2.0
# Upper bounds (mm, longest axial diameter) of the size bins, the last open.
SIZE_BINS_MM: tuple[tuple[str, float, float], ...] = (
    ("<3", 0.0, 3.0), ("3-6", 3.0, 6.0), ("6-10", 6.0, 10.0), ("10-20", 10.0, 20.0), (">20", 20.0, float("inf")))
ALL = "all"


def size_bin(diameter_mm: float) -> str:
    return next(name for name, low, high in SIZE_BINS_MM if low <= diameter_mm < high)


@dataclass(frozen=True)
class CaseMatch:
    """One case, matched once: per reference lesion its diameter; per detection its diameter, confidence and
    the reference lesions (indices into ``reference_diameters_mm``) it finds."""

    reference_diameters_mm: tuple[float, ...]
    detection_diameters_mm: tuple[float, ...]
    confidences: tuple[float, ...]
    finds: tuple[frozenset[int], ...]


def match_case(reference: Volume, detected: Lesions) -> CaseMatch:
    """Match ``detected`` (from :func:`label_lesions`, with probabilities for confidences; without, every
    detection counts as confidence 1) against ``reference`` (a lesion mask or label map on the same grid;
    its 26-connected components are the reference lesions)."""
    if not reference.geometry.is_close(detected.labels.geometry):
        raise ValueError("the reference and the detections are not on one grid")
    truth = label_lesions(reference)
    affine = reference.geometry.index_to_patient()
    spacing_kji = np.asarray(reference.geometry.spacing[::-1])
    truth_labels = np.asarray(truth.labels.array)
    if truth.count:
        # Distance (mm) from every voxel to the nearest reference voxel, and which lesion that voxel is.
        distance, nearest = ndimage.distance_transform_edt(truth_labels == 0, sampling=spacing_kji,
                                                           return_indices=True)
        nearest_label = truth_labels[tuple(nearest)]
    to_index = np.linalg.inv(affine)
    finds = []
    for lesion in detected.lesions:
        overlap = np.unique(truth_labels[(detected.labels.array == lesion.number) & (truth_labels > 0)])
        found = {int(v) - 1 for v in overlap}
        i, j, k = (to_index @ np.append(lesion.centroid_mm, 1.0))[:3]
        kji = tuple(int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip((k, j, i), truth_labels.shape, strict=True))
        if truth.count and float(distance[kji]) <= HIT_MM:
            found.add(int(nearest_label[kji]) - 1)
        finds.append(frozenset(found))
    return CaseMatch(
        reference_diameters_mm=tuple(t.longest_axial_diameter_mm for t in truth.lesions),
        detection_diameters_mm=tuple(d.longest_axial_diameter_mm for d in detected.lesions),
        confidences=tuple(1.0 if d.confidence is None else d.confidence for d in detected.lesions),
        finds=tuple(finds))


@dataclass(frozen=True)
class BinScore:
    name: str  # a size bin, or "all"
    found: int
    total: int
    false_positives: int
    cases: int

    @property
    def sensitivity(self) -> float | None:
        return self.found / self.total if self.total else None

    @property
    def false_positives_per_case(self) -> float:
        return self.false_positives / self.cases if self.cases else 0.0


def score(cases: Sequence[CaseMatch], threshold: float = 0.5) -> list[BinScore]:
    """Sensitivity and false positives per case, per size bin and over all lesions ("all", last), keeping the
    detections of confidence >= ``threshold``."""
    found: dict[str, int] = {}
    total: dict[str, int] = {}
    false: dict[str, int] = {}
    for case in cases:
        kept = [n for n, c in enumerate(case.confidences) if c >= threshold]
        hit = set().union(*(case.finds[n] for n in kept)) if kept else set()
        for index, diameter in enumerate(case.reference_diameters_mm):
            for name in (size_bin(diameter), ALL):
                total[name] = total.get(name, 0) + 1
                found[name] = found.get(name, 0) + (index in hit)
        for n in kept:
            if not case.finds[n]:
                for name in (size_bin(case.detection_diameters_mm[n]), ALL):
                    false[name] = false.get(name, 0) + 1
    return [BinScore(name, found.get(name, 0), total.get(name, 0), false.get(name, 0), len(cases))
            for name in (*(b[0] for b in SIZE_BINS_MM), ALL)]


@dataclass(frozen=True)
class FrocPoint:
    threshold: float
    sensitivity: float
    false_positives_per_case: float


def froc(cases: Sequence[CaseMatch]) -> list[FrocPoint]:
    """The FROC: one point per distinct confidence (as threshold, highest first), then sensitivity over all
    reference lesions against false positives per case, both rising as the threshold falls."""
    thresholds = sorted({c for case in cases for c in case.confidences}, reverse=True)
    points = []
    for threshold in thresholds:
        overall = score(cases, threshold)[-1]
        points.append(FrocPoint(threshold, overall.sensitivity or 0.0, overall.false_positives_per_case))
    return points


def sensitivity_at(points: Sequence[FrocPoint], false_positives_per_case: float) -> float:
    """The highest sensitivity the FROC reaches at no more than ``false_positives_per_case`` (0 if none):
    what to set against the anchor's 95.8 % at 0.39."""
    return max((p.sensitivity for p in points if p.false_positives_per_case <= false_positives_per_case),
               default=0.0)
