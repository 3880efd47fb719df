"""Lesion-wise scoring of new and enlarging MS lesions against an expert change mask (issue 18's rule).

The reference is a binary mask of lesion *change* between two visits on a common grid (the Ljubljana
longitudinal database's ``gt``). Its connected components of at least 12 mm³ are the candidate reference
lesions; a component counts as new or enlarging when the follow-up FLAIR is brighter there than the
baseline FLAIR (both on the common grid, each relative to the tissue just around the component, so a
bias field or a global intensity change does not decide the direction); the others shrank and are
not reference lesions.

A reported lesion is given by its centroid already mapped into the common space:

* it *finds* a reference lesion when it lies within ``HIT_MM`` (3 mm) of one of that lesion's voxels;
* it is a *false positive* when it lies more than ``FALSE_POSITIVE_MM`` (5 mm) from every reference lesion
  (between the two it is neither: near a lesion, not on it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from neuroflow.core.volume import Volume

MIN_REFERENCE_MM3 = 12.0
HIT_MM = 3.0
FALSE_POSITIVE_MM = 5.0
# The tissue a component is compared with, per visit: a shell this wide around it.
SHELL_MM = 4.0
# Size bins (mm³) for the sensitivity table: upper bounds, the last open.
SIZE_BINS: tuple[tuple[float, float], ...] = ((12.0, 50.0), (50.0, 200.0), (200.0, float("inf")))


@dataclass(frozen=True)
class ReferenceLesion:
    label: int  # its component number in the change mask
    volume_mm3: float
    points_mm: npt.NDArray[np.float64]  # (N, 3) voxel centres, common-space physical coordinates (LPS)
    contrast_change: float  # follow-up minus baseline, relative to the tissue around it (> 0: new/enlarging)

    @property
    def growing(self) -> bool:
        return self.contrast_change > 0.0

    def distance_mm(self, point: Sequence[float]) -> float:
        return float(np.sqrt(((self.points_mm - np.asarray(point, dtype=np.float64)) ** 2).sum(axis=1).min()))


@dataclass(frozen=True)
class Detection:
    centroid_mm: tuple[float, float, float]  # in the common space
    volume_mm3: float


@dataclass
class PairScore:
    reference: list[ReferenceLesion]  # new or enlarging, >= 12 mm³
    shrinking: list[ReferenceLesion]  # >= 12 mm³, set aside by direction
    found: dict[int, list[Detection]] = field(default_factory=dict)  # reference label -> detections on it
    false_positives: list[Detection] = field(default_factory=list)
    near_misses: list[Detection] = field(default_factory=list)  # 3-5 mm from a reference lesion

    @property
    def hits(self) -> int:
        return len(self.found)

    @property
    def total(self) -> int:
        return len(self.reference)

    def sensitivity_in(self, low: float, high: float) -> tuple[int, int]:
        """(found, total) among the reference lesions of ``low`` <= volume < ``high`` mm³."""
        within = [r for r in self.reference if low <= r.volume_mm3 < high]
        return sum(1 for r in within if r.label in self.found), len(within)

    @property
    def true_positive_detections(self) -> int:
        return sum(len(d) for d in self.found.values())

    @property
    def f1(self) -> float:
        """Lesion-wise F1: recall over reference lesions, precision over the detections that were judged
        (found or false; a near miss is neither)."""
        recall = self.hits / max(1, self.total)
        judged = self.true_positive_detections + len(self.false_positives)
        precision = self.true_positive_detections / judged if judged else 0.0
        return 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    @property
    def reference_volume_mm3(self) -> float:
        return sum(r.volume_mm3 for r in self.reference)

    @property
    def detected_volume_mm3(self) -> float:
        """The volume reported on reference lesions (false positives left out)."""
        return sum(d.volume_mm3 for ds in self.found.values() for d in ds)

    def found_volume_ratios(self) -> list[float]:
        """Reported over reference volume, per found lesion (several detections on one lesion add up)."""
        by_label = {r.label: r.volume_mm3 for r in self.reference}
        return [sum(d.volume_mm3 for d in ds) / by_label[label] for label, ds in self.found.items()]


def reference_lesions(change: Volume, baseline: Volume, followup: Volume, *, min_mm3: float = MIN_REFERENCE_MM3,
                      ) -> tuple[list[ReferenceLesion], list[ReferenceLesion]]:
    """The change mask's components of at least ``min_mm3``, split into (new or enlarging, shrinking) by
    comparing ``followup`` with ``baseline`` (both FLAIR, resampled onto ``change``'s grid)."""
    mask = np.asarray(change.array) > 0
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    spacing_kji = np.asarray(change.geometry.spacing[::-1], dtype=np.float64)
    voxel_mm3 = float(np.prod(spacing_kji))
    affine = change.geometry.index_to_patient()
    base = np.asarray(baseline.array, dtype=np.float64)
    follow = np.asarray(followup.array, dtype=np.float64)
    shell_voxels = np.maximum(1, np.round(SHELL_MM / spacing_kji)).astype(int)
    growing: list[ReferenceLesion] = []
    shrinking: list[ReferenceLesion] = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        padded = tuple(slice(max(0, b.start - int(p)), min(n, b.stop + int(p)))
                       for b, p, n in zip(box, shell_voxels, labels.shape, strict=True))
        local = labels[padded] == label
        volume = float(local.sum()) * voxel_mm3
        if volume < min_mm3:
            continue
        # An anisotropic dilation by SHELL_MM along each axis; other change voxels are not "around" tissue.
        around = ndimage.binary_dilation(local, structure=_box_structure(shell_voxels)) & ~(labels[padded] > 0)
        contrast = _relative(follow[padded], local, around) - _relative(base[padded], local, around)
        kji = np.argwhere(local) + np.array([p.start for p in padded])
        points = (affine @ np.c_[kji[:, ::-1], np.ones(len(kji))].T).T[:, :3]
        lesion = ReferenceLesion(label, volume, points, contrast)
        (growing if lesion.growing else shrinking).append(lesion)
    return growing, shrinking


def score_pair(reference: list[ReferenceLesion], shrinking: list[ReferenceLesion],
               detections: Sequence[Detection]) -> PairScore:
    """Each detection judged against the reference lesions by the module's rule."""
    score = PairScore(reference, shrinking)
    for detection in detections:
        distances = [(r.distance_mm(detection.centroid_mm), r.label) for r in reference]
        nearest = min(distances, default=(float("inf"), -1))
        if nearest[0] <= HIT_MM:
            score.found.setdefault(nearest[1], []).append(detection)
        elif nearest[0] > FALSE_POSITIVE_MM:
            score.false_positives.append(detection)
        else:
            score.near_misses.append(detection)
    return score


def _relative(values: npt.NDArray[np.float64], inside: npt.NDArray[np.bool_], around: npt.NDArray[np.bool_]) -> float:
    reference = float(np.median(values[around])) if around.any() else float(np.median(values))
    return float(values[inside].mean()) / max(reference, 1e-6)


def _box_structure(radius_kji: npt.NDArray[np.int_]) -> npt.NDArray[np.bool_]:
    k, j, i = (int(r) for r in radius_kji)
    z, y, x = np.ogrid[-k:k + 1, -j:j + 1, -i:i + 1]
    return np.asarray((z / max(k, 1)) ** 2 + (y / max(j, 1)) ** 2 + (x / max(i, 1)) ** 2 <= 1.0)
