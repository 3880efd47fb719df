"""Cache the metastases model's probability map of held-out synthetic cases (and AURORA), once, under
``build/`` (never committed), so that a lesion-level filter can be tuned and scored without re-running the
network: per case an ``.npz`` with the probability (float16), the true brain mask, the z-scored T1CE and FLAIR,
the truth label map and the grid (spacing, origin, direction). Cases, and the probability, as ``evaluate.py``
makes them (the pipeline's default test-time mirrors averaged in).

    python -m models.metastases_unet.cache_probabilities --seeds 0-8 --out build/fp_cache
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from models.metastases_unet.evaluate import AURORA, REPOSITORY, probability_of
from neuroflow.core.config import PipelineModels, SegmentationSettings
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.volume import Volume
from neuroflow.devtools.dicom_writer import load_volume
from neuroflow.devtools.synthetic_metastases import random_case, real_backgrounds
from neuroflow.preprocess.normalise import zscore_in_mask


def _save(path: Path, stack: np.ndarray, brain: np.ndarray, grid: Volume, labels: np.ndarray | None,
          backend: OnnxRuntimeBackend, overlap: float) -> None:
    probability = probability_of(stack, brain, grid, backend, overlap, PipelineModels().metastases,
                                 SegmentationSettings().metastases_mirrors)
    geometry = grid.geometry
    np.savez_compressed(path, probability=probability.astype(np.float16), brain=brain,
                        t1ce=stack[0].astype(np.float16), flair=stack[1].astype(np.float16),
                        labels=np.zeros(brain.shape, np.uint16) if labels is None else labels,
                        spacing=np.asarray(geometry.spacing), origin=np.asarray(geometry.origin),
                        direction=np.asarray(geometry.direction), size=np.asarray(geometry.size))


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Cache the metastases model's probability maps.")
    parser.add_argument("--seeds", default="0-8")
    parser.add_argument("--aurora", action="store_true")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("build/fp_cache"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    backend = OnnxRuntimeBackend(REPOSITORY, intra_op_threads=args.threads)
    backgrounds = real_backgrounds()
    for seed in _seeds(args.seeds):
        path = args.out / f"seed{seed}.npz"
        if path.exists():
            continue
        started = time.perf_counter()
        background = backgrounds[seed % len(backgrounds)]
        case = random_case(background, seed)
        brain = np.asarray(background.brain_mask.array) > 0
        stack = np.stack([zscore_in_mask(np.asarray(case.t1ce.array), brain),
                          zscore_in_mask(np.asarray(case.flair.array), brain)])
        _save(path, stack, brain, case.t1ce, np.asarray(case.labels.array), backend, args.overlap)
        print(f"seed {seed} ({background.name}): {time.perf_counter() - started:.0f} s", flush=True)
    if args.aurora and not (args.out / "aurora.npz").exists():
        t1ce, flair = load_volume(AURORA / "t1c.nii.gz"), load_volume(AURORA / "flair.nii.gz")
        brain = (np.asarray(t1ce.array) > 0) & (np.asarray(flair.array) > 0)
        stack = np.stack([zscore_in_mask(np.asarray(t1ce.array), brain),
                          zscore_in_mask(np.asarray(flair.array), brain)])
        _save(args.out / "aurora.npz", stack, brain, t1ce, None, backend, args.overlap)
        print("aurora cached", flush=True)


if __name__ == "__main__":
    main()
