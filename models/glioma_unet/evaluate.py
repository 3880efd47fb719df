"""Evaluate an exported glioma model on every labelled real case there is.

Runs ``models/repository/glioma_unet/<version>/model.onnx`` through the pipeline's own pieces - the
ONNX Runtime backend, ``neuroflow.segmentation.sliding_window`` and ``neuroflow.segmentation
.postprocess`` - on arrays prepared as the pipeline prepares them: (Z, Y, X) order, 1 mm, each channel
z-scored over the brain with ``neuroflow.preprocess.normalise.zscore_in_mask``, a missing sequence fed
as an all-zero channel (the contract of models trained with sequence dropout).

* ``glioma-tcga-du-7294`` (``tests/data``): 4 sequences, and again with only FLAIR and T1CE. Reference
  ``seg_fusion_mav`` (majority vote of five BraTS-2020 algorithms, labels 1/2/4; no enhancing tumour).
* ``glioma-brats2013-flair-t1c/pat000{1,2,3}`` (the shared data folder, read in place: **evaluation
  only**, CC BY-NC-SA, never copied into the project, never trained on): FLAIR and T1CE only, already
  z-scored in ``brainmask`` (z-scored again here, which changes nothing but keeps one code path); T1 and
  T2 are zero. Expert labels ``OTMultiClass``: WT = 1-4, TC = 1, 3, 4, ET = 4.
* ``glioma-brats-gli-00001-000`` (``tests/data``): no labels; predicted volumes only.

Per region (WT, TC, ET): voxel Dice and the BraTS 2023 lesion-wise Dice (``metrics.py``), on the
pipeline's post-processed output and on the thresholded probabilities. Cases whose files are absent
are skipped with a note. Needs only the pipeline's dependencies (no torch).

    python -m models.glioma_unet.evaluate --version 2 --json build/glioma_unet/evaluation_v2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from models.glioma_unet.metrics import dice, lesion_wise_dice
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.labels import TUMOUR_REGIONS, TumourRegion
from neuroflow.core.model_card import ModelRef
from neuroflow.preprocess.normalise import zscore_in_mask
from neuroflow.segmentation.postprocess import (
    RegionMasks,
    bounding_box,
    enforce_nesting,
    postprocess,
    threshold_regions,
)
from neuroflow.segmentation.sliding_window import sigmoid, sliding_window_inference

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "models" / "repository"
DATA = ROOT / "tests" / "data"
# The team's shared real-data folder beside the repository (or NEUROFLOW_SHARED_DATA).
SHARED_DATA = Path(os.environ.get("NEUROFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))
BRATS2013 = "glioma-brats2013-flair-t1c"


@dataclass(frozen=True)
class RealCase:
    """One evaluation run: ``files`` in GLIOMA_INPUT_ROLES order (T1, T1CE, T2, FLAIR), None for a
    sequence fed as zeros; ``regions`` the reference labels of WT, TC, ET; ``mask`` a brain mask file
    (else the voxels where any sequence is > 0)."""

    name: str
    folder: Path
    files: tuple[str | None, str | None, str | None, str | None]
    reference: str | None = None
    regions: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = ((1, 2, 4), (1, 4), (4,))
    mask: str | None = None
    in_median: bool = True  # False for a second run of a case (other sequences): one vote per patient


def real_cases(shared: Path = SHARED_DATA) -> list[RealCase]:
    tcga = DATA / "glioma-tcga-du-7294"
    cases = [
        RealCase("tcga-du-7294", tcga, ("t1_bet", "t1c_bet", "t2_bet", "fla_bet"), "seg_fusion_mav"),
        RealCase("tcga-du-7294 FLAIR+T1CE only", tcga, (None, "t1c_bet", None, "fla_bet"), "seg_fusion_mav",
                 in_median=False),
    ]
    for patient in ("pat0001", "pat0002", "pat0003"):
        cases.append(RealCase(f"brats2013-{patient} FLAIR+T1CE", shared / BRATS2013 / patient,
                              (None, "T1c_subtrMeanDivStd", None, "Flair_subtrMeanDivStd"), "OTMultiClass",
                              ((1, 2, 3, 4), (1, 3, 4), (4,)), "brainmask"))
    cases.append(RealCase("brats-gli-00001-000 (no labels)", DATA / "glioma-brats-gli-00001-000",
                          ("t1n", "t1c", "t2w", "t2f")))
    return cases


def _load_zyx(path: Path) -> npt.NDArray[np.float32]:
    """A NIfTI volume as the pipeline holds it: array axes (k, j, i), i.e. reversed from nibabel's."""
    return np.ascontiguousarray(np.asarray(nib.load(path).dataobj, dtype=np.float32).transpose(2, 1, 0))


def _window(stack: npt.NDArray[np.float32], backend: OnnxRuntimeBackend, model: ModelRef, patch: int,
            overlap: float, axes: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Region probabilities of ``stack`` (C, Z, Y, X), mirrored along the array ``axes`` before inference and back
    after (none: the plain prediction)."""
    flipped = tuple(1 + a for a in axes)
    image = np.ascontiguousarray(np.flip(stack, axis=flipped)) if axes else stack
    out = sliding_window_inference(image, backend, model, patch=(patch, patch, patch),
                                   out_channels=len(TUMOUR_REGIONS), overlap=overlap, batch_size=1,
                                   activation=sigmoid)
    return np.ascontiguousarray(np.flip(out, axis=flipped)) if axes else out


def evaluate_case(case: RealCase, backend: OnnxRuntimeBackend, model: ModelRef, patch: int,
                  overlap: float, mirrors: tuple[int, ...] = ()) -> dict[str, object]:
    """``mirrors``: test-time augmentation, the mean of the plain prediction and one mirrored along each of these
    array axes (0-2; the pipeline's left-right is axis 2 of these NIfTI volumes)."""
    raw = [None if name is None else _load_zyx(case.folder / f"{name}.nii.gz") for name in case.files]
    present = [c for c in raw if c is not None]
    if case.mask is not None:
        brain = _load_zyx(case.folder / f"{case.mask}.nii.gz") > 0.5
    else:
        brain = np.any(np.stack([c > 0 for c in present]), axis=0)
    stack = np.stack([np.zeros(brain.shape, np.float32) if c is None else zscore_in_mask(c, brain) for c in raw])
    box = bounding_box(brain)
    if box is None:
        raise ValueError(f"{case.name}: the brain mask is empty")
    started = time.monotonic()
    probabilities = np.zeros((len(TUMOUR_REGIONS), *brain.shape), dtype=np.float32)
    cropped = np.ascontiguousarray(stack[(slice(None), *box)])
    members = [_window(cropped, backend, model, patch, overlap, axes) for axes in ((), *((a,) for a in mirrors))]
    probabilities[(slice(None), *box)] = np.mean(members, axis=0)
    seconds = time.monotonic() - started
    probabilities *= brain[None]
    outputs = {"postprocessed": postprocess(threshold_regions(probabilities), 1.0),
               "thresholded": enforce_nesting(threshold_regions(probabilities))}
    result: dict[str, object] = {"case": case.name, "in_median": case.in_median,
                                 "inference_seconds": round(seconds, 1), "mirrors": list(mirrors),
                                 "sequences": [r for r, f in zip(("T1", "T1CE", "T2", "FLAIR"), case.files,
                                                                 strict=True) if f is not None],
                                 "brain_ml": round(float(brain.sum()) / 1000, 1)}
    for tag, masks in outputs.items():
        result[f"predicted_ml_{tag}"] = {r.value: round(float(m.sum()) / 1000, 2)
                                         for r, m in masks.by_region().items()}
    if case.reference is not None:
        labels = _load_zyx(case.folder / f"{case.reference}.nii.gz").round().astype(np.int16)
        reference = {region: np.isin(labels, values) for region, values in zip(TUMOUR_REGIONS, case.regions,
                                                                               strict=True)}
        result["reference_ml"] = {r.value: round(float(m.sum()) / 1000, 2) for r, m in reference.items()}
        for tag, masks in outputs.items():
            result[f"dice_{tag}"], result[f"lesion_dice_{tag}"] = region_scores(masks, reference)
    return result


def region_scores(prediction: RegionMasks, reference: dict[TumourRegion, npt.NDArray[np.bool_]]
            ) -> tuple[dict[str, float | None], dict[str, float | None]]:
    voxel: dict[str, float | None] = {}
    lesion: dict[str, float | None] = {}
    for region, mask in prediction.by_region().items():
        d = dice(mask, reference[region])
        voxel[region.value] = None if d is None else round(d, 3)
        lw = lesion_wise_dice(mask, reference[region])[0]
        lesion[region.value] = None if lw is None else round(lw, 3)
    return voxel, lesion


def summary_table(results: list[dict[str, object]], tag: str = "postprocessed") -> str:
    """A Markdown table: per labelled case voxel / lesion-wise Dice of WT, TC, ET, and the median of
    each over the patients where it is defined (TCGA has no ET: undefined there; its FLAIR+T1CE-only
    run is shown but not counted again)."""
    lines = ["| case | WT Dice / lesion-wise | TC | ET | volumes WT/TC/ET predicted (reference) ml |",
             "| --- | --- | --- | --- | --- |"]
    columns: dict[str, list[float]] = {}
    for r in results:
        if f"dice_{tag}" not in r:
            continue
        voxel, lesion = r[f"dice_{tag}"], r[f"lesion_dice_{tag}"]
        assert isinstance(voxel, dict) and isinstance(lesion, dict)
        cells = []
        for region in TUMOUR_REGIONS:
            v, lw = voxel[region.value], lesion[region.value]
            cells.append(f"{_fmt(v)} / {_fmt(lw)}")
            for key, value in ((f"{region.value} voxel", v), (f"{region.value} lesion", lw)):
                if value is not None and r.get("in_median", True):
                    columns.setdefault(key, []).append(float(value))
        predicted, reference = r[f"predicted_ml_{tag}"], r["reference_ml"]
        assert isinstance(predicted, dict) and isinstance(reference, dict)
        volumes = " ".join(f"{predicted[k]:.1f} ({reference[k]:.1f})" for k in predicted)
        lines.append(f"| {r['case']} | {' | '.join(cells)} | {volumes} |")
    medians = [f"{_fmt(_median(columns.get(f'{g.value} voxel')))} / {_fmt(_median(columns.get(f'{g.value} lesion')))}"
               for g in TUMOUR_REGIONS]
    lines.append(f"| **median over patients** | {' | '.join(medians)} | |")
    return "\n".join(lines)


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate the glioma ONNX model on the real cases.")
    parser.add_argument("--table-from", type=Path, default=None,
                        help="only print the tables of an earlier --json (no inference)")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--labelled-only", action="store_true", help="skip the case without a reference")
    parser.add_argument("--mirrors", type=int, nargs="*", default=[], choices=[0, 1, 2],
                        help="test-time augmentation: also predict mirrored along these array axes, and average")
    args = parser.parse_args()
    if args.table_from is not None:
        earlier = json.loads(args.table_from.read_text())
        for tag in ("postprocessed", "thresholded"):
            print(f"{args.table_from.name}, {tag} (voxel Dice / lesion-wise Dice):")
            print(summary_table(earlier, tag))
        return
    backend = OnnxRuntimeBackend(args.repository, intra_op_threads=args.threads)
    model = ModelRef(name="glioma_unet", version=args.version)
    results = []
    for case in real_cases(args.shared_data):
        if args.labelled_only and case.reference is None:
            continue
        if not case.folder.is_dir():
            print(f"skipped {case.name}: {case.folder} not found", flush=True)
            continue
        results.append(evaluate_case(case, backend, model, args.patch, args.overlap, tuple(args.mirrors)))
        print(json.dumps(results[-1]), flush=True)
    for tag in ("postprocessed", "thresholded"):
        print(f"glioma_unet version {args.version}{f', mirrors {args.mirrors}' if args.mirrors else ''}, {tag} "
              "(voxel Dice / lesion-wise Dice):")
        print(summary_table(results, tag))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
