"""How well the metastases follow-up (issue 15, RANO-BM) tells each lesion's fate on synthetic pairs with known truth.

Each pair: metastases drawn into a slab of Colin27 (devtools.synthetic_metastases.metastases_followup_pair), each
designed to grow (+35-80 % and >= 4 mm), shrink (to 30-60 % and by >= 4 mm), stay (within 3 %), resolve or
appear, and the patient moved between the visits (rotation up to 5 degrees about z, shift up to 6 mm per axis, 3 mm
along z).

* ``--mode truth``: the drawn label maps stand in for the segmentation, so what is measured is the registration,
  the matching and the per-lesion rules alone: the registration of the prior T1CE onto the moved follow-up (as the
  pipeline registers, skull-stripped by the drawn brain mask), then ``metastases_response``.
* ``--mode model``: the whole pipeline, ``neuroflow run --pipeline metastases`` on the pair written as DICOM (the
  provisional model detects and segments; missed and false lesions count against it).

A designed lesion is scored by the reported row nearest its expected place (within 5 mm): matched correctly (a
lesion present at both visits reported with a prior lesion, the others without), and its status as designed.
Prints one line per pair and the totals; nothing is written outside a temporary folder.

    PYTHONPATH=services python scripts/eval_metastases_followup.py --mode truth --pairs 30
    PYTHONPATH=services python scripts/eval_metastases_followup.py --mode model --pairs 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from neuroflow.core.lesions import label_lesions
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import resample
from neuroflow.devtools.benchmarks_md import write_section
from neuroflow.devtools.dicom_writer import PatientInfo, write_study
from neuroflow.devtools.synthetic_metastases import (
    Background,
    FollowUpPair,
    colin27_background,
    metastases_followup_pair,
)
from neuroflow.longitudinal.metastases_response import metastases_response, prior_on_followup
from neuroflow.preprocess.register import register_rigid

SLAB = (60, 135)
NEAR_MM = 5.0


def design(rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """3-5 lesions, each with a designed fate and its diameters (mm) at the prior and the follow-up."""
    lesions: dict[str, tuple[float, float]] = {}
    for n in range(int(rng.integers(3, 6))):
        fate = str(rng.choice(["growing", "shrinking", "stable", "resolved", "new"]))
        before = float(rng.uniform(6.0, 16.0))
        after = {"growing": max(before * rng.uniform(1.35, 1.8), before + 4.0),
                 "shrinking": max(2.0, min(before * rng.uniform(0.3, 0.6), before - 4.0)),
                 "stable": before * rng.uniform(0.97, 1.03),
                 "resolved": 0.0, "new": before}[fate]
        lesions[f"{fate}-{n}"] = (0.0 if fate == "new" else before, min(float(after), 26.0))
    return lesions


def truth_rows(pair: FollowUpPair, background: Background) -> list[dict[str, Any]]:
    """The follow-up table with the drawn lesions as the segmentation (registration and matching measured)."""
    prior = label_lesions(pair.prior.labels)
    current = label_lesions(pair.followup_labels)
    brain = resample(background.brain_mask, background.t1ce.geometry, pair.motion)
    fixed = pair.followup_t1ce.with_array(np.where(brain.array > 0, pair.followup_t1ce.array, 0.0))
    moving = pair.prior.t1ce.with_array(np.where(background.brain_mask.array > 0, pair.prior.t1ce.array, 0.0))
    registration = register_rigid(fixed, moving, fixed_mask=brain)
    response = metastases_response(prior, current, prior_on_followup(prior, fixed.geometry, registration.transform))
    return [row.model_dump(mode="json") for row in response.lesions]


def model_rows(pair: FollowUpPair, folder: Path) -> tuple[list[dict[str, Any]], str]:
    """The follow-up table of ``neuroflow run --pipeline metastases`` on the pair as DICOM, and the category."""
    patient = PatientInfo(patient_id="NF-EVAL-METS", name="EVAL^METS")
    for date, volumes in (("20240105", {SeriesRole.T1CE: pair.prior.t1ce, SeriesRole.FLAIR: pair.prior.flair}),
                          ("20240412", {SeriesRole.T1CE: pair.followup_t1ce, SeriesRole.FLAIR: pair.followup_flair})):
        write_study({role: v.with_array(np.round(v.array).astype(np.int16)) for role, v in volumes.items()},
                    folder / "in" / date, patient=patient, seed=f"eval-{folder.name}-{date}", study_date=date)
    env = {**os.environ, "NEUROFLOW_WINDOW_OVERLAP": "0.25"}
    proc = subprocess.run([sys.executable, "-m", "neuroflow.cli", "run", str(folder / "in"), "--out",
                           str(folder / "out"), "--pipeline", "metastases", "-q"], capture_output=True, text=True,
                          env=env, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    response = json.loads((folder / "out" / "report.json").read_text())["longitudinal"]["metastases_response"]
    return response["lesions"], response["rano_bm"]["category"]


def score(pair: FollowUpPair, rows: list[dict[str, Any]]) -> tuple[Counter[str], int]:
    """Per designed lesion: found, matched as designed, status as designed; and the rows no designed lesion took."""
    tally: Counter[str] = Counter()
    taken: set[int] = set()
    for name, (_then, now, sizes) in pair.expected.items():
        fate = name.split("-")[0]
        tally["lesions"] += 1
        distances = [float(np.linalg.norm(np.subtract(r["centroid_mm"], now))) for r in rows]
        if not rows or min(distances) > NEAR_MM:
            continue
        index = int(np.argmin(distances))
        taken.add(index)
        row = rows[index]
        tally["found"] += 1
        both = sizes[0] > 0 and sizes[1] > 0
        tally["matched_right"] += int((row["prior_number"] is not None and row["number"] is not None) == both)
        tally["status_right"] += int(row["status"] == fate)
        tally[f"{fate}_total"] += 1
        tally[f"{fate}_right"] += int(row["status"] == fate)
    return tally, len(rows) - len(taken)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("truth", "model"), default="truth")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--write", action="store_true", help="write the totals as this mode's BENCHMARKS.md section")
    args = parser.parse_args()
    background = colin27_background(axial_slices=SLAB)
    totals: Counter[str] = Counter()
    extra_rows = 0
    for n in range(args.pairs):
        rng = np.random.default_rng(args.seed + n)
        lesions = design(rng)
        rotation = float(rng.uniform(-5.0, 5.0))
        shift = (float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6)), float(rng.uniform(-3, 3)))
        try:
            pair = metastases_followup_pair(background, lesions, seed=args.seed + n, rotation_deg=rotation,
                                            shift_mm=shift)
        except ValueError as exc:  # no room for this many large lesions in the slab
            print(f"pair {n}: skipped ({exc})")
            continue
        category = ""
        if args.mode == "truth":
            rows = truth_rows(pair, background)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                rows, category = model_rows(pair, Path(tmp))
        tally, extra = score(pair, rows)
        totals.update(tally)
        extra_rows += extra
        print(f"pair {n}: {tally['lesions']} lesions, found {tally['found']}, matched right {tally['matched_right']}, "
              f"status right {tally['status_right']}, unexplained rows {extra}"
              f"{f', RANO-BM {category}' if category else ''}; motion {rotation:+.1f} deg, "
              f"{np.linalg.norm(shift):.1f} mm", flush=True)
    count = totals["lesions"]
    print(f"\n{args.mode}: {count} lesions in {args.pairs} pairs: found {totals['found']} "
          f"({100 * totals['found'] / max(count, 1):.1f} %), matched as designed {totals['matched_right']} "
          f"({100 * totals['matched_right'] / max(totals['found'], 1):.1f} % of found), status as designed "
          f"{totals['status_right']} ({100 * totals['status_right'] / max(totals['found'], 1):.1f} % of found); "
          f"rows no designed lesion explains: {extra_rows}")
    for fate in ("growing", "shrinking", "stable", "resolved", "new"):
        if totals[f"{fate}_total"]:
            print(f"  {fate:<9} {totals[f'{fate}_right']}/{totals[f'{fate}_total']}")
    if args.write:
        write_section(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", section(args, totals, extra_rows))
    return 0


def section(args: argparse.Namespace, totals: Counter[str], extra_rows: int) -> str:
    """This mode's BENCHMARKS.md section."""
    what = {"truth": "drawn lesions as the segmentation (registration, matching and rules alone)",
            "model": "the whole pipeline with the provisional metastases model"}[args.mode]
    found = max(totals["found"], 1)
    rows = [f"| {fate} | {totals[f'{fate}_right']}/{totals[f'{fate}_total']} |"
            for fate in ("growing", "shrinking", "stable", "resolved", "new") if totals[f"{fate}_total"]]
    return "\n".join([
        f"## Metastases follow-up (RANO-BM), synthetic pairs, {args.mode} "
        f"(`scripts/eval_metastases_followup.py --mode {args.mode} --pairs {args.pairs}`)", "",
        f"{args.pairs} pairs in a slab of Colin27, 3-5 lesions each with a designed fate, the patient moved between "
        "visits (up to 5 deg, 6 mm per axis), no noise and no enhancing vessels (easier than the model's held-out "
        f"evaluation); {what}.", "",
        f"Lesions {totals['lesions']}: found {totals['found']}, matched as designed {totals['matched_right']} "
        f"({100 * totals['matched_right'] / found:.1f} %), status as designed {totals['status_right']} "
        f"({100 * totals['status_right'] / found:.1f} %); reported rows no designed lesion explains: {extra_rows}.",
        "", "| designed fate | status right |", "| --- | ---: |", *rows, ""])


if __name__ == "__main__":
    raise SystemExit(main())
