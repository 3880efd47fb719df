"""Calibrate the segmentation's failure flag (``neuroflow.segmentation.review``) on real cases, as they are and
deliberately degraded, and print a per-case table: Dice per region against the reference, the alarms, the risk
score and whether the result would be flagged.

Cases (read in place, never copied):

* ``glioma-tcga-du-7294``: 4 sequences, reference ``seg_fusion_mav`` (fusion of BraTS algorithms).
* ``glioma-brats2013-flair-t1c/pat000{1,2,3}``: FLAIR and T1 post-contrast only, already z-scored in the
  brain, expert labels. EVALUATION ONLY (CC BY-NC-SA): never trained on. T1 and T2 are fed as zeros (the
  model needs four channels).
* ``glioma-brats-gli-00001-000``: 4 sequences, no labels: flag only.

Degraded versions of TCGA-DU-7294 (noise, the T1CE sent as the FLAIR, a strong bias field, the FLAIR shifted by
10 mm) and of BRATS pat0001 (FLAIR and T1CE swapped) should segment badly and be flagged.

Every member (left-right, anterior-posterior, superior-inferior mirror) is run, so the table can say what each
costs and buys; ``flagged`` uses the members and threshold given on the command line (default: the shipped
settings).

    PYTHONPATH=services python -m models.glioma_unet.review_calibration [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from neuroflow.core.config import PipelineModels, SegmentationSettings
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.preprocess.normalise import zscore_in_mask
from neuroflow.segmentation.glioma import predict_stack
from neuroflow.segmentation.mirrors import FLIP_PATIENT_AXES
from neuroflow.segmentation.postprocess import RegionMasks, from_label_map, postprocess, threshold_regions
from neuroflow.segmentation.review import assess

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
REPOSITORY = ROOT / "models" / "repository"
# The cases are in (Z, Y, X) = (S-I, A-P, L-R) array order once transposed from nibabel's (i, j, k).
ARRAY_AXIS = {"left_right": 2, "anterior_posterior": 1, "superior_inferior": 0}
assert set(ARRAY_AXIS) == set(FLIP_PATIENT_AXES)
Array = npt.NDArray[np.float32]


@dataclass
class Case:
    name: str
    channels: list[Array]  # T1, T1CE, T2, FLAIR, raw or z-scored
    brain: npt.NDArray[np.bool_]
    reference: RegionMasks | None


def _load(path: Path) -> Array:
    return np.ascontiguousarray(np.asarray(nib.load(path).dataobj, dtype=np.float32).transpose(2, 1, 0))


def _folder(name: str) -> Path:
    for base in (SHARED, ROOT / "tests" / "data"):
        if (base / name).is_dir():
            return base / name
    raise FileNotFoundError(name)


def tcga() -> Case:
    folder = _folder("glioma-tcga-du-7294")
    channels = [_load(folder / f"{n}.nii.gz") for n in ("t1_bet", "t1c_bet", "t2_bet", "fla_bet")]
    brain = np.any(np.stack([c > 0 for c in channels]), axis=0)
    return Case("TCGA-DU-7294", channels, brain,
                from_label_map(_load(folder / "seg_fusion_mav.nii.gz").astype(np.int16)))


def gli() -> Case:
    folder = _folder("glioma-brats-gli-00001-000")
    channels = [_load(folder / f"{n}.nii.gz") for n in ("t1n", "t1c", "t2w", "t2f")]
    return Case("BraTS-GLI-00001", channels, np.any(np.stack([c > 0 for c in channels]), axis=0), None)


def brats2013(patient: str) -> Case:
    folder = _folder("glioma-brats2013-flair-t1c") / patient
    brain = _load(folder / "brainmask.nii.gz") > 0
    flair, t1c = _load(folder / "Flair_subtrMeanDivStd.nii.gz"), _load(folder / "T1c_subtrMeanDivStd.nii.gz")
    zeros = np.zeros_like(flair)
    labels = _load(folder / "OTMultiClass.nii.gz").astype(np.int16)
    # BraTS 2013: 1 necrosis, 2 oedema, 3 non-enhancing core, 4 enhancing. WT 1-4, TC 1,3,4, ET 4.
    et = labels == 4
    tc = np.isin(labels, (1, 3, 4))
    return Case(f"BRATS2013-{patient}", [zeros, t1c, zeros, flair], brain, RegionMasks(labels > 0, tc, et))


# -- deliberate degradations (on raw channels; each returns a new list) --------------------------------------
def _noise(case: Case, rng: np.random.Generator) -> list[Array]:
    out = []
    for c in case.channels:
        sd = float(c[case.brain].std())
        out.append(c if sd == 0 else (c + rng.normal(0.0, 1.0 * sd, c.shape).astype(np.float32)) * case.brain)
    return out


def _wrong_sequence(case: Case, rng: np.random.Generator) -> list[Array]:
    t1, t1ce, t2, _ = case.channels
    return [t1, t1ce, t2, t1ce.copy()]  # the post-contrast T1 sent as the FLAIR


def _bias(case: Case, rng: np.random.Generator) -> list[Array]:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in case.brain.shape), indexing="ij")
    field = np.exp(1.2 * x + 0.8 * y - 0.6 * z)  # a factor of about e^2.6 = 13 across the head
    return [c * field if c.min() >= 0 else (c - c.min()) * field * case.brain for c in case.channels]


def _shift(case: Case, rng: np.random.Generator) -> list[Array]:
    t1, t1ce, t2, flair = case.channels
    return [t1, t1ce, t2, np.roll(flair, 10, axis=2) * case.brain]  # FLAIR 10 mm to the side


DEGRADATIONS: dict[str, Callable[[Case, np.random.Generator], list[Array]]] = {
    "noise": _noise, "wrong sequence": _wrong_sequence, "bias field": _bias, "shifted FLAIR": _shift}


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def run_case(case: Case, backend: OnnxRuntimeBackend, model: ModelRef, mirrors: list[str]) -> dict[str, object]:
    stack = np.stack([zscore_in_mask(c, case.brain) for c in case.channels]).astype(np.float32)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    probabilities = predict_stack(stack, case.brain, backend, model, overlap=0.5, batch_size=2)
    seconds["segment"] = time.perf_counter() - started
    result = postprocess(threshold_regions(probabilities), 1.0)
    members = {}
    for flip in mirrors:
        axis = ARRAY_AXIS[flip]
        started = time.perf_counter()
        mirrored = predict_stack(stack, case.brain, backend, model, overlap=0.5, batch_size=2, flip_axes=(axis,))
        members[flip] = postprocess(threshold_regions(mirrored), 1.0)
        seconds[flip] = time.perf_counter() - started
    started = time.perf_counter()
    found = assess(result, threshold_regions(probabilities), members, stack[3], case.brain, 1.0)
    seconds["checks"] = time.perf_counter() - started
    row: dict[str, object] = {"case": case.name, "alarms": found.alarms, "figures": found.figures,
                              "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    if case.reference is not None:
        ref = case.reference.by_region()
        row["dice"] = {r.value: dice(m, ref[r]) for r, m in result.by_region().items()}
    return row


def _kept(alarms: list[str], flips: list[str]) -> list[str]:
    """The alarms a run with only ``flips`` as members would raise."""
    dropped = [f.replace("_", "-") for f in ARRAY_AXIS if f not in flips]
    return [a for a in alarms if not any(f"under a {d} mirror" in a for d in dropped)]


def table(rows: list[dict[str, object]], flips: list[str], threshold: int) -> str:
    lines = ["| case | Dice WT | Dice TC | Dice ET | failed (WT Dice < 0.7) | risk | flagged | alarms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        d = row.get("dice")
        alarms = _kept(row["alarms"], flips)  # type: ignore[arg-type]
        cells = [("-" if not isinstance(d, dict) or d[r] is None else f"{d[r]:.2f}") for r in ("WT", "TC", "ET")]
        failed = "-" if not isinstance(d, dict) else ("yes" if (d["WT"] or 0.0) < 0.7 else "no")
        lines.append(f"| {row['case']} | {' | '.join(cells)} | {failed} | {len(alarms)} | "
                     f"{'NEEDS REVIEW' if len(alarms) > threshold else 'no'} | {'; '.join(alarms) or '-'} |")
    lines += ["", separation(rows, flips, threshold)]
    return "\n".join(lines)


def separation(rows: list[dict[str, object]], flips: list[str], threshold: int) -> str:
    """How well the flag separates results with WT Dice < 0.7 from the rest (and how many unlabelled it flags)."""
    counts = {"failed": [0, 0], "passed": [0, 0], "unlabelled": [0, 0]}  # [flagged, all]
    for row in rows:
        d = row.get("dice")
        group = "unlabelled" if not isinstance(d, dict) else ("failed" if (d["WT"] or 0.0) < 0.7 else "passed")
        counts[group][0] += len(_kept(row["alarms"], flips)) > threshold  # type: ignore[arg-type]
        counts[group][1] += 1
    return (f"flagged: {counts['failed'][0]} of {counts['failed'][1]} results with WT Dice < 0.7, "
            f"{counts['passed'][0]} of {counts['passed'][1]} with WT Dice >= 0.7, "
            f"{counts['unlabelled'][0]} of {counts['unlabelled'][1]} unlabelled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = SegmentationSettings()
    parser.add_argument("--flips", nargs="*", default=list(defaults.review_flips), choices=list(ARRAY_AXIS))
    parser.add_argument("--threshold", type=int, default=defaults.review_threshold)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--version", type=int, default=PipelineModels().glioma.version,
                        help="the glioma_unet version to calibrate on (default: the one a site runs)")
    parser.add_argument("--mirrors", nargs="*", default=list(ARRAY_AXIS), choices=list(ARRAY_AXIS),
                        help="the mirror members to compute (to measure what each costs and buys)")
    parser.add_argument("--resume", type=Path, default=None,
                        help="rows already computed (this script's output lines): their cases are not run again")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="re-tabulate a saved run")
    args = parser.parse_args()
    if args.from_json is not None:
        rows = json.loads(args.from_json.read_text())
    else:
        backend = OnnxRuntimeBackend(REPOSITORY, intra_op_threads=args.threads)
        model = ModelRef(name="glioma_unet", version=args.version)
        rng = np.random.default_rng(0)
        rows = []
        done = {}
        if args.resume is not None:
            done = {r["case"]: r for line in args.resume.read_text().splitlines() if line.startswith("{")
                    for r in [json.loads(line)]}

        def add(case: Case) -> None:
            rows.append(done.get(case.name) or run_case(case, backend, model, args.mirrors))
            print(json.dumps(rows[-1]), flush=True)

        for make in (tcga, lambda: brats2013("pat0001"), lambda: brats2013("pat0002"),
                     lambda: brats2013("pat0003"), gli):
            add(make())
        base = tcga()
        t1, t1ce, t2, flair = base.channels
        zeros = np.zeros_like(flair)
        # The subset a version with sequence dropout takes (missing sequences fed as zeros, as in the runtimes).
        add(Case(f"{base.name} FLAIR+T1CE only", [zeros, t1ce, zeros, flair], base.brain, base.reference))
        for label, degrade in DEGRADATIONS.items():
            add(Case(f"{base.name} + {label}", degrade(base, rng), base.brain, base.reference))
        base = brats2013("pat0001")
        t1, t1ce, t2, flair = base.channels
        add(Case(f"{base.name} + FLAIR/T1CE swapped", [t1, flair, t2, t1ce], base.brain, base.reference))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nmembers: {', '.join(args.flips) or 'none'}; needs review when risk > {args.threshold}\n")
    print(table(rows, args.flips, args.threshold))


if __name__ == "__main__":
    main()
