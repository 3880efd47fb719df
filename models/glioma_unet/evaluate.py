"""Evaluate the exported glioma model on the real cases bundled in ``tests/data``.

Runs ``models/repository/glioma_unet/<version>/model.onnx`` through the pipeline's own pieces - the
ONNX Runtime backend, ``neuroflow.segmentation.sliding_window`` and ``neuroflow.segmentation
.postprocess`` - on arrays prepared as the pipeline prepares them: (Z, Y, X) order, 1 mm, each channel
z-scored over the brain with ``neuroflow.preprocess.normalise.zscore_in_mask``. The cases are already
skull-stripped, so the brain mask is the voxels where any sequence is > 0.

* ``glioma-tcga-du-7294``: Dice per region (WT, TC, ET) against ``seg_fusion_mav.nii.gz`` (a majority
  vote of five BraTS-2020 algorithms, labels 1/2/4; a reference, not expert ground truth).
* ``glioma-brats-gli-00001-000``: no labels; predicted volumes only.

Needs only the pipeline's dependencies (no torch). Writes a JSON report with ``--json``.

    python -m models.glioma_unet.evaluate --json build/glioma_unet/evaluation.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.labels import TUMOUR_REGIONS
from neuroflow.core.model_card import ModelRef
from neuroflow.preprocess.normalise import zscore_in_mask
from neuroflow.segmentation.postprocess import (
    RegionMasks,
    enforce_nesting,
    from_label_map,
    postprocess,
    threshold_regions,
)
from neuroflow.segmentation.sliding_window import sigmoid, sliding_window_inference

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "models" / "repository"
DATA = ROOT / "tests" / "data"


@dataclass(frozen=True)
class RealCase:
    name: str
    files: tuple[str, str, str, str]  # in GLIOMA_INPUT_ROLES order: T1, T1CE, T2, FLAIR
    reference: str | None


CASES = (
    RealCase("glioma-tcga-du-7294", ("t1_bet", "t1c_bet", "t2_bet", "fla_bet"), "seg_fusion_mav"),
    RealCase("glioma-brats-gli-00001-000", ("t1n", "t1c", "t2w", "t2f"), None),
)


def _load_zyx(path: Path) -> npt.NDArray[np.float32]:
    """A NIfTI volume as the pipeline holds it: array axes (k, j, i), i.e. reversed from nibabel's."""
    return np.ascontiguousarray(np.asarray(nib.load(path).dataobj, dtype=np.float32).transpose(2, 1, 0))


def dice(prediction: npt.NDArray[np.bool_], reference: npt.NDArray[np.bool_]) -> float | None:
    """Dice coefficient; None when both are empty (undefined, reported as such, never as 1)."""
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return None
    return 2.0 * int((prediction & reference).sum()) / total


def evaluate_case(case: RealCase, backend: OnnxRuntimeBackend, model: ModelRef, patch: int,
                  overlap: float) -> dict[str, object]:
    folder = DATA / case.name
    raw = [_load_zyx(folder / f"{name}.nii.gz") for name in case.files]
    brain = np.any(np.stack([c > 0 for c in raw]), axis=0)
    stack = np.stack([zscore_in_mask(c, brain) for c in raw])
    box = tuple(slice(int(np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))[0]),
                      int(np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))[-1]) + 1)
                for ax in range(3))
    started = time.monotonic()
    probabilities = np.zeros((len(TUMOUR_REGIONS), *brain.shape), dtype=np.float32)
    probabilities[(slice(None), *box)] = sliding_window_inference(
        np.ascontiguousarray(stack[(slice(None), *box)]), backend, model, patch=(patch, patch, patch),
        out_channels=len(TUMOUR_REGIONS), overlap=overlap, batch_size=1, activation=sigmoid)
    seconds = time.monotonic() - started
    probabilities *= brain[None]
    raw_masks = enforce_nesting(threshold_regions(probabilities))
    post_masks = postprocess(threshold_regions(probabilities), 1.0)
    result: dict[str, object] = {"case": case.name, "inference_seconds": round(seconds, 1),
                                 "brain_ml": round(float(brain.sum()) / 1000, 1)}
    for tag, masks in (("thresholded", raw_masks), ("postprocessed", post_masks)):
        result[f"predicted_ml_{tag}"] = {r.value: round(float(m.sum()) / 1000, 2)
                                         for r, m in masks.by_region().items()}
    if case.reference is not None:
        reference = from_label_map(_load_zyx(folder / f"{case.reference}.nii.gz").astype(np.int16))
        result["reference_ml"] = {r.value: round(float(m.sum()) / 1000, 2)
                                  for r, m in reference.by_region().items()}
        for tag, masks in (("thresholded", raw_masks), ("postprocessed", post_masks)):
            result[f"dice_{tag}"] = _dice_by_region(masks, reference)
    return result


def _dice_by_region(prediction: RegionMasks, reference: RegionMasks) -> dict[str, float | None]:
    ref = reference.by_region()
    return {r.value: (None if (d := dice(m, ref[r])) is None else round(d, 3))
            for r, m in prediction.by_region().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate the glioma ONNX model on the bundled real cases.")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    backend = OnnxRuntimeBackend(args.repository, intra_op_threads=args.threads)
    model = ModelRef(name="glioma_unet", version=args.version)
    results = [evaluate_case(case, backend, model, args.patch, args.overlap) for case in CASES]
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
