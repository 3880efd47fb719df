"""Lesion-wise evaluation of the exported metastases model on held-out synthetic cases, and its findings on the
unlabelled AURORA case.

Held-out cases: ``random_case`` with seeds 0.. (training uses seeds from ``train.TRAIN_SEED_BASE``), cycling
over ``real_backgrounds`` (Colin27 with enhancing veins drawn in, the two MS patients' real T1 post-contrast).
Each case is z-scored in its true brain mask (the pipeline's skull strip is not run here), segmented by the
pipeline's own code (``mirror_mean``: ONNX Runtime, sliding window, card patch size, mirrors), split into lesions
as the pipeline does (``lesions_on``: ``LESION_THRESHOLD``, ``MIN_LESION_MM3``, ``MAX_AXIS_RATIO``) and
scored with ``devtools.lesion_eval``: sensitivity and false positives per case by size bin, and the FROC over
the lesions' confidences. With
``--t1ce-only`` the FLAIR channel is zero (a study without FLAIR); ``--mirrors`` sets the test-time mirrors
averaged with the plain prediction (default: the pipeline's, ``segmentation.metastases_mirrors``).

AURORA (``../shared/data/metastasis-aurora``, skull-stripped, no labels): the lesions found (count, volumes,
diameters), for a reader to check against the images; nothing is scored.

    python -m models.metastases_unet.evaluate --cases 9 --json build/metastases_unet/evaluation.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np

from neuroflow.core.config import Mirror, PipelineModels, SegmentationSettings
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.lesions import LESION_THRESHOLD, Lesions, lesions_on
from neuroflow.core.model_card import ModelRef
from neuroflow.devtools.dicom_writer import load_volume
from neuroflow.devtools.lesion_eval import CaseMatch, froc, match_case, score, sensitivity_at
from neuroflow.devtools.longitudinal_phantoms import SHARED_DATA
from neuroflow.devtools.synthetic_metastases import random_case, real_backgrounds
from neuroflow.preprocess.normalise import zscore_in_mask
from neuroflow.segmentation.metastases import mirror_mean
from neuroflow.segmentation.mirrors import flip_array_axis

REPOSITORY = Path(__file__).resolve().parents[1] / "repository"
AURORA = SHARED_DATA / "metastasis-aurora"


def probability_of(stack: np.ndarray, brain: np.ndarray, grid: Any, backend: OnnxRuntimeBackend, overlap: float,
                   model: ModelRef, mirrors: Sequence[Mirror]) -> np.ndarray:
    """The metastasis probability of one case as the pipeline computes it (``mirrors`` averaged in)."""
    probability: np.ndarray = mirror_mean(stack, brain, backend, model, overlap=overlap, batch_size=1,
                                          mirror_axes=[flip_array_axis(grid.geometry, m) for m in mirrors])[0]
    return probability


def _lesions(stack: np.ndarray, brain: np.ndarray, grid: Any, backend: OnnxRuntimeBackend, overlap: float,
             model: ModelRef, mirrors: list[Mirror]) -> Lesions:
    probability = probability_of(stack, brain, grid, backend, overlap, model, mirrors)
    # The pipeline's own extraction (threshold, minimum size, shape filter) on the case's grid.
    return lesions_on(grid.with_array(probability), grid.geometry)


def evaluate_synthetic(cases: int, backend: OnnxRuntimeBackend, overlap: float, t1ce_only: bool,
                       model: ModelRef, first_seed: int, mirrors: list[Mirror]) -> dict[str, Any]:
    backgrounds = real_backgrounds()
    matches: list[CaseMatch] = []
    for seed in range(first_seed, first_seed + cases):
        background = backgrounds[seed % len(backgrounds)]
        case = random_case(background, seed)
        brain = np.asarray(background.brain_mask.array) > 0
        flair = np.zeros(brain.shape, np.float32) if t1ce_only else zscore_in_mask(np.asarray(case.flair.array), brain)
        stack = np.stack([zscore_in_mask(np.asarray(case.t1ce.array), brain), flair])
        started = time.perf_counter()
        found = _lesions(stack, brain, case.t1ce, backend, overlap, model, mirrors)
        match = match_case(case.labels, found)
        matches.append(match)
        hits = len(set().union(*match.finds)) if match.finds else 0
        print(f"seed {seed} ({background.name}): {len(case.truth)} lesions, {found.count} detections, "
              f"{hits} found, {time.perf_counter() - started:.0f} s", flush=True)
    bins = score(matches, LESION_THRESHOLD)
    points = froc(matches)
    return {
        "cases": cases, "seeds": [first_seed, first_seed + cases - 1], "t1ce_only": t1ce_only, "mirrors": mirrors,
        "threshold": LESION_THRESHOLD,
        "by_size": [{"bin": b.name, "found": b.found, "total": b.total, "sensitivity": b.sensitivity,
                     "false_positives": b.false_positives, "fp_per_case": round(b.false_positives_per_case, 2)}
                    for b in bins],
        "sensitivity_at_fp_per_case": {str(fp): round(sensitivity_at(points, fp), 3) for fp in (0.39, 1.0, 3.0)},
    }


def evaluate_aurora(backend: OnnxRuntimeBackend, overlap: float, model: ModelRef,
                    mirrors: list[Mirror]) -> dict[str, Any]:
    t1ce, flair = load_volume(AURORA / "t1c.nii.gz"), load_volume(AURORA / "flair.nii.gz")
    brain = (np.asarray(t1ce.array) > 0) & (np.asarray(flair.array) > 0)
    stack = np.stack([zscore_in_mask(np.asarray(t1ce.array), brain), zscore_in_mask(np.asarray(flair.array), brain)])
    found = _lesions(stack, brain, t1ce, backend, overlap, model, mirrors)
    return {"count": found.count, "total_volume_ml": round(found.total_volume_ml, 3),
            "lesions": [{"number": m.number, "volume_mm3": round(m.volume_ml * 1000.0, 1),
                         "longest_axial_diameter_mm": round(m.longest_axial_diameter_mm, 1),
                         "centroid_mm": [round(v, 1) for v in m.centroid_mm],
                         "confidence": None if m.confidence is None else round(m.confidence, 3)}
                        for m in found.lesions]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate the metastases model lesion-wise.")
    parser.add_argument("--cases", type=int, default=9)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="cases are seeds FIRST.. (0-8 the development cases; 20-28 held out for checks)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--t1ce-only", action="store_true")
    parser.add_argument("--skip-aurora", action="store_true")
    parser.add_argument("--mirrors", nargs="*", choices=get_args(Mirror),
                        default=list(SegmentationSettings().metastases_mirrors),
                        help="test-time mirrors averaged with the plain prediction (default: the pipeline's)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--version", type=int, default=None, help="model version (default: the pipeline's)")
    parser.add_argument("--repository", type=Path, default=REPOSITORY,
                        help="model repository (a candidate exported elsewhere by export.py --repository)")
    args = parser.parse_args()
    default = PipelineModels().metastases
    model = ModelRef(name=default.name, version=args.version if args.version is not None else default.version)
    backend = OnnxRuntimeBackend(args.repository, intra_op_threads=args.threads)
    result: dict[str, Any] = {"model": f"{model.name}:{model.version}", "synthetic": evaluate_synthetic(
        args.cases, backend, args.overlap, args.t1ce_only, model, args.first_seed, args.mirrors)}
    if not args.skip_aurora and AURORA.is_dir():
        result["aurora"] = evaluate_aurora(backend, args.overlap, model, args.mirrors)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
