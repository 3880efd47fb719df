"""Lesion-level false-positive filter, measured on the cached probability maps of ``cache_probabilities``:
per detection its shape (principal axes of its voxels in mm), confidence, distance to the brain surface, FLAIR
support and its brightest T1CE voxel, whether it finds a true lesion (``devtools.lesion_eval.match_case``), and
the lesion-wise score before and after a filter. Tune on development seeds, report on held-out seeds.

    python -m models.metastases_unet.fp_filter_eval build/fp_cache --dump
    python -m models.metastases_unet.fp_filter_eval build/fp_cache_heldout
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from neuroflow.core.lesions import LESION_THRESHOLD, MIN_LESION_MM3, label_lesions, lesion_shape, lesions_on
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.lesion_eval import CaseMatch, froc, match_case, score, sensitivity_at


@dataclass(frozen=True)
class Detection:
    case: str
    number: int
    true: bool
    diameter_mm: float
    volume_mm3: float
    confidence: float
    elongation: float  # sqrt(l1 / l2)
    flatness: float  # sqrt(l2 / l3)
    axis_ratio: float  # sqrt(l1 / l3)
    surface_mm: float  # centroid's depth inside the brain mask
    flair: float  # mean z-scored FLAIR over the lesion
    t1ce_peak: float  # brightest z-scored T1CE voxel of the lesion


def load(path: Path) -> tuple[dict[str, Any], Geometry]:
    data = dict(np.load(path))
    geometry = Geometry(tuple(float(v) for v in data["spacing"]), tuple(float(v) for v in data["origin"]),  # type: ignore[arg-type]
                        tuple(float(v) for v in data["direction"]), tuple(int(v) for v in data["size"]))  # type: ignore[arg-type]
    return data, geometry


def analyse(path: Path) -> tuple[CaseMatch, list[Detection]]:
    data, geometry = load(path)
    probability = Volume(data["probability"].astype(np.float32), geometry)
    found = label_lesions(probability.with_array((probability.array >= LESION_THRESHOLD).astype(np.uint8)),
                          probabilities=probability, min_volume_mm3=MIN_LESION_MM3)
    match = match_case(Volume(data["labels"], geometry), found)
    depth = ndimage.distance_transform_edt(data["brain"], sampling=geometry.spacing[::-1])
    labels = np.asarray(found.labels.array)
    flair = data["flair"].astype(np.float32)
    t1ce = data["t1ce"].astype(np.float32)
    detections = []
    for lesion, finds in zip(found.lesions, match.finds, strict=True):
        voxels = labels == lesion.number
        shape = lesion_shape(voxels, geometry)
        kji = np.argwhere(voxels).mean(axis=0).round().astype(int)
        detections.append(Detection(
            path.stem, lesion.number, bool(finds), lesion.longest_axial_diameter_mm, lesion.volume_ml * 1000,
            lesion.confidence or 0.0, shape.elongation, shape.flatness, shape.axis_ratio,
            float(depth[tuple(kji)]), float(flair[voxels].mean()), float(t1ce[voxels].max())))
    return match, detections


def keep(d: Detection, rule: dict[str, float]) -> bool:
    return d.axis_ratio <= rule.get("max_axis_ratio", np.inf) and d.confidence >= rule.get("min_confidence", 0.0)


def subset(match: CaseMatch, kept: list[bool]) -> CaseMatch:
    pick = [n for n, k in enumerate(kept) if k]
    return replace(match, detection_diameters_mm=tuple(match.detection_diameters_mm[n] for n in pick),
                   confidences=tuple(match.confidences[n] for n in pick), finds=tuple(match.finds[n] for n in pick))


def report(matches: list[CaseMatch]) -> dict[str, Any]:
    bins = score(matches, LESION_THRESHOLD)
    points = froc(matches)
    return {"by_size": {b.name: f"{b.found}/{b.total} fp/case {b.false_positives_per_case:.2f}" for b in bins},
            "froc": {str(fp): round(sensitivity_at(points, fp), 3) for fp in (0.39, 1.0, 2.0, 2.5, 3.0)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache", type=Path)
    parser.add_argument("--rule", default="{}")
    parser.add_argument("--dump", action="store_true")
    args = parser.parse_args()
    rule = json.loads(args.rule)
    matches, after, everything = [], [], []
    for path in sorted(args.cache.glob("seed*.npz")):
        match, detections = analyse(path)
        matches.append(match)
        after.append(subset(match, [keep(d, rule) for d in detections]))
        everything.extend(detections)
    if args.dump:
        for d in sorted(everything, key=lambda d: (d.true, d.axis_ratio)):
            print(f"{d.case:7} {'TP' if d.true else 'fp'} diam {d.diameter_mm:5.1f} vol {d.volume_mm3:7.0f} "
                  f"conf {d.confidence:.2f} elong {d.elongation:4.2f} flat {d.flatness:4.2f} "
                  f"ratio {d.axis_ratio:4.2f} depth {d.surface_mm:5.1f} flair {d.flair:5.2f} "
                  f"t1ce peak {d.t1ce_peak:4.1f}")
    result: dict[str, Any] = {"cases": len(matches), "rule": rule, "before": report(matches),
                              "after": report(after)}
    aurora = args.cache / "aurora.npz"
    if aurora.exists():  # the pipeline's own lesions_on, with and without the shape filter
        data, geometry = load(aurora)
        probability = Volume(data["probability"].astype(np.float32), geometry)
        result["aurora"] = {name: [round(m.volume_ml * 1000) for m in found.lesions] for name, found in (
            ("before_mm3", lesions_on(probability, geometry, max_axis_ratio=float("inf"))),
            ("after_mm3", lesions_on(probability, geometry)))}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
