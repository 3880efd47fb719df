"""`make bench`: new and enlarging MS lesions on real pairs with an expert reference (issue 18).

The Ljubljana longitudinal MS database (``ms-longitudinal-ljubljana/patientNN``: two visits of 2D FLAIR,
about 0.7 x 0.7 x 3 mm, whole head; ``gt`` = expert mask of lesion change on a common grid; each FLAIR's
ITK affine onto that grid) is scored the way a site would meet it:

1. each visit's FLAIR is written out as a DICOM study (realistic tags, the NIfTI geometry kept exactly:
   ``devtools.dicom_writer``), the two as one patient a year apart;
2. ``neuroflow run``'s code path (``runtime.embedded.run_embedded``, ONNX backend) compares them;
3. each reported lesion's follow-up centroid is mapped into the common space (the inverse of the
   follow-up's transform: ITK's transform maps common-space points to the scan, which is what resampling
   the scan onto the common grid needs) and scored lesion-wise (``devtools.lesion_change_scoring``):
   found within 3 mm of a new or enlarging reference lesion of >= 12 mm³, false positive beyond 5 mm of
   every one; the direction of each reference component decided from the two FLAIRs on the common grid.

Both patients here are development data (the method's choices were checked on them); the figure that
counts is on pairs nobody tuned on. Without the data folder the script says so and leaves BENCHMARKS.md
as it is. The section between the markers is written into BENCHMARKS.md (other scripts own the others)."""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from neuroflow.core.config import NeuroflowSettings
from neuroflow.devtools.benchmarks_md import write_section
from neuroflow.devtools.lesion_change_scoring import (
    FALSE_POSITIVE_MM,
    HIT_MM,
    MIN_REFERENCE_MM3,
    SIZE_BINS,
    PairScore,
)
from neuroflow.devtools.ms_real_pairs import (
    DATA,
    GAIN_SHARE,
    PatientResult,
    gaining_hyperintensity,
    patients,
    run_patient,
)

ROOT = Path(__file__).resolve().parents[1]
# Which development patient informed which choice of ms_lesions (issue 18: say it, and prefer the problem's
# physics to fits to these two).
DECISION_LOG = (
    "What informed the method (both patients are development data):",
    "",
    "- brain-masked registration metric: patient03 (whole-head registration 1.3 mm median from the database's own"
    " transforms, 1.1 mm with the metric inside the follow-up's brain; patient01 0.33 -> 0.24 mm);",
    "- seed threshold from a per-voxel noise model (scan noise plus residual misalignment times the baseline's "
    "gradient, half a slice across 2D slices): the physics of subtraction error; it cut false positives at cortex"
    " and posterior-fossa edges on both patients;",
    "- follow-up sent through the baseline's grid and back (same interpolation blur on both): patient03 (3.3 mm "
    "slices tilted ~10° against 3 mm ones at follow-up); it raised patient01 from 2 to 3 found.",
    "- why patient03 found 0 of 30 (diagnosed on patient03, issue 18): not the registration (ours lies 1.0 mm "
    "median from the database's transforms, and the difference image is as wide with theirs: 0.91 against 0.95 "
    "brain spreads), not the brain mask (every reference lesion inside it, 99 % of their voxels inside the seeds'"
    " eroded core), not the intensity matching (brain medians and spreads equal to 1 % after N4 and quantile "
    "matching), and not the reference direction (deciding it on intensity-matched visits moved 1 of the 30 to "
    "shrinking; left as it was). It is signal against noise: the two visits differ in protocol (0.57 x 0.57 x 3.3"
    " mm at baseline, 0.72 x 0.72 x 3 mm at follow-up, slabs ~10° apart), so the difference's spread is 0.58 "
    "brain spreads (patient01: 0.24), and at 26 of the 30 reference lesions the follow-up-minus-baseline stays "
    "under 3 of those spreads at its 90th percentile (several are darker at follow-up after matching); seeds at 5"
    " spreads reached 1. patient01's 4 misses are likewise not hyperintense at follow-up (two lie below white "
    "matter on both visits).",
    "- hence seeds at 4 spreads instead of 5 (patient03), with lesion-wise checks taking over from the seed level"
    " (4, not lower: pure noise passes 4 spreads in about 3 of 100,000 voxels, a few seeds per brain, and 3.5 let"
    " a 17 mm³ noise 'lesion' through at the falx of the e2e Colin27 pair): a candidate's own contrast (upper "
    "quartile of its core) must reach the faintest lesion's, 1.2 brain spreads (patient01: at 3.5 spreads its "
    "quiet pair seeded partial-volume rims of old lesions, contrast 1.0-1.2, 6 false positives before the slab "
    "change below), and a candidate more than a third of whose border was CSF at baseline is dropped (patient03: "
    "bright CSF inflow at the skull base and in the interpeduncular cistern at follow-up, ringed 34-47 % by CSF; "
    "its found juxtaventricular lesions at most 24 %).",
    "- the slab in the noise model is the thicker of the two visits' (half of it across slices): patient01's "
    "baseline has 4 mm slices against 3 mm at follow-up, and the partial volume of its old lesions' edges seeded "
    "'enlarging' rims; it took patient01 from 2 false positives to 1 (patient03, 3.3 against 3 mm, unchanged).",
    "- tried and dropped: seeds at 3.5 (patient03 2/30 found, patient01 1 false positive, the e2e synthetic pair "
    "1) and at 3.0 (patient03 4/30, 1 false positive; patient01 2), 1.0 mm smoothing (fewer found on both, the "
    "synthetic 12 mm³ lesion missed), a contrast floor of 1.3 (patient01's false positives gone, but they are "
    "enlarging rims that look like the synthetic bench's enlarging lesion, contrast 1.27, which it then missed), "
    "direction on matched intensities (above).",
    "- earlier, tried and dropped: a 1 mm (not 3-voxel) neighbourhood for the baseline's brightest neighbour "
    "(more false positives on both), lower HYPERINTENSE (no gain).",
    "- the goal is met for false positives (none on either pair), not for sensitivity (4/37): on patient03 the "
    "FLAIR difference at most reference lesions is within that pair's noise, so no FLAIR-subtraction threshold "
    "reaches 0.8 there without many false positives; what could: a lesion network trained on synthetic pairs and "
    "the cross-sectional masks (none ships yet).",
    "- the visits' T2W, tried and dropped (issue 18, 2026-12-04; both patients): the same subtraction run on the "
    "T2W pair instead of the FLAIR pair found 2/30 on patient03 with 9 false positives (FLAIR: 1/30, none) and "
    "1/7 on patient01 with 2 (FLAIR: 3/7, none). patient03's T2W difference is quieter (faintest detectable "
    "change 1.37 robust spreads against FLAIR's 2.12), but its reference lesions barely change on T2W either "
    "(median local signal-to-noise of the change at the lesions 2.35 on T2W, 1.72 on FLAIR; patient01 1.41 "
    "and 5.33), and CSF is bright on T2W; an OR of the two channels would at best add a few lesions on "
    "patient03 at the cost of false positives on both, so no T2W channel was built.",
    "- tried and dropped (2026-12-04): the baseline mapped onto the follow-up by the conditional median of the "
    "follow-up given the baseline's intensity (the joint histogram, 64 bins) instead of matching quantiles: "
    "patient03 4/30 found but 2 false positives, faintest detectable change 2.08 (quantiles: 1/30, none, 2.16); "
    "patient01 unchanged (3/7). The difference's noise does not come from the intensity mapping.",
    "- the faintest detectable change is now stated per pair (4 times the difference's typical expected spread "
    "inside the brain), and the reader is warned when it exceeds the faintest lesion's 1.2 robust spreads: "
    "'no new lesion' from such a pair is not evidence of no new activity. The rule follows from the detector's "
    "own thresholds, not from these pairs; it warns on both (patient01 at 1.24-1.25 across runs, just above, "
    "where 4 of 7 are missed; patient03 at 2.12-2.16), and on none of the clean synthetic pairs (0.6-0.84).",
    "- held-out check on the cross-sectional database (patients 07 and 26, 3D FLAIR with consensus masks; used "
    "for nothing else): none of their 37 consensus lesions of >= 12 mm³ is ringed by CSF beyond a third of its "
    "border (at most 27 %), so the CSF check would drop none; but 11 of them stand less than 1.2 brain spreads "
    "above their surroundings, so the contrast floor would miss faint lesions like them if they were new.",
    "- synthetic bench (tests/unit/test_ms_lesions.py and scripts/bench_longitudinal.py --brains 1 --seeds 2): "
    "TCGA seed 5 8/8 found, Colin27 seeds 1 and 2 6/8 and 7/8 (the enlarging lesion, and seed 1's 12 mm³ one, "
    "missed as before this change), 0 false positives and the quiet pair quiet, before and after; where the two "
    "disagree the real pairs win (issue 18).",
    "- the synthetic bench's fall from 0.969 to 0.792 with the changes above, diagnosed on all its 12 cases "
    "(2026-12-05): of the 20 misses, 6 are the 12 enlarging lesions (on Colin27 never seeded: at the old "
    "lesion's edge the noise model's misalignment term sets the seed level above the growth; elsewhere too faint"
    " by the contrast floor), 7 are 12 mm³ periventricular lesions (a lesion that small keeps about 0.8 of its "
    "contrast after partial volume and smoothing, under the floor, or is not hyperintense at a ventricle's edge),"
    " 3 larger faint ones, 2 juxtacortical 20 mm³ ones never seeded, and 2 large ones dropped as ringed by CSF. "
    "Of those two, AURORA's 500 mm³ one was painted partly into a ventricle, which no real lesion fills: the "
    "phantoms now paint parenchyma only (devtools/longitudinal_phantoms.py; 77/96 with it, a periventricular "
    "80 mm³ lesion painted over CSF before now found), and that lesion, flattened against the ventricle with 37 % "
    "of its border CSF, is still dropped (real juxtaventricular lesions seen: at most 27 %). The other, TCGA's "
    "300 mm³ one, lay in white matter: see N4 below.",
    "- N4 fitted on normal-appearing tissue (2026-12-05): voxels brighter than 2 robust spreads above the brain's "
    "median on either scan, and one voxel around them, are left out of both scans' N4 fit. Fitted over the whole "
    "brain, a new 300 mm³ synthetic lesion stood in a baseline left 0.8 spreads darker than the follow-up around "
    "it and was dropped as ringed by CSF. Both patients unchanged (3/7 and 1/30 found, no false positive); the "
    "synthetic bench 78/96 against 77/96. At 1.2 spreads instead of 2 (the hyperintensity level, which takes in "
    "much of the cortex) patient03's faintest detectable change rose from 2.16 to 2.33 and its one found lesion "
    "was lost: the level was chosen on patient03.",
    "- tried and dropped (2026-12-05), aimed at the synthetic misses above, each run on both patients: the "
    "contrast floor for enlarging candidates only; the floor lowered for lesions too small for a plateau (by the "
    "peak a blurred sphere of their volume keeps); the in-plane misalignment term taken on the baseline capped at"
    " BASELINE_CAP, as the brightest-neighbour test is. Each found the same lesions on both patients and added "
    "one false positive on patient01.",
    "- probed and not pursued (2026-12-05, `scripts/ms_real_probe.py --scales 0.6,1.0,1.5,2.0 --volumes`): "
    "coarser smoothing does not reach patient03's lesions: the detector's own seed rule at 1.0, 1.5 and 2.0 mm "
    "seeds 1, 1 and 0 of its 30 (0.6 mm: 1) while the faintest detectable change falls only from 2.11 to 1.46 "
    "spreads, since the pair's noise is correlated, not white (patient01: 3, 1 and 1 of 7). A lesion-level "
    "comparison instead (each hyperintense component's volume at baseline and at follow-up) ranks patient03's "
    "reference lesions behind new hyperintensity the experts did not mark: of 235 components, the first "
    "reference lesion comes 20th by volume gained, the fourth 48th (with N4 over the whole brain: 2 among the 16 "
    "largest gains, 6 among 20, of 252).",
    "- the brain mask without the follow-up FLAIR's empty background (2026-12-05, preprocess/skull_strip."
    "with_signal, made for the glioma pipeline, where a pre-stripped input's zero rim inside the network's "
    "outline halved the delivered tumour core): taken over for the same exposure on a pre-stripped pair. Both "
    "patients (whose FLAIRs have a zeroed background) and the synthetic bench unchanged to the figure: 3/7 and "
    "1/30 with the same volumes and detectable change, 78/96 with no false positive. No case informed it.",
    "- an established lesion segmenter instead of the subtraction, tried (2026-12-05, `scripts/ms_samseg_probe.py`; "
    "both patients): SAMSEG with its lesion model (Cerri et al. 2021/2023, MIT; the one MS lesion segmenter "
    "found whose weights ship inside a registry package: lst-ai's and wmh-seg's wheels carry none; it needs "
    "numpy<2 and TensorFlow, so it runs from an environment of its "
    "own), FLAIR only, default lesion threshold, the database's own transforms (its best case). Each visit "
    "segmented and compared (`--mode cross`, 6 min a visit on 2 cores): patient01 2/7 found, no false positive "
    "(the subtraction: 3/7), patient03 4/30 with 1 (the subtraction: 1/30, none); the two find different lesions "
    "(together 8/37, 1 false positive). Both visits segmented jointly (`--mode long`, 22 min): patient03 4/30 "
    "with 7 false positives (patient01 not run: 22 minutes, and worse than per visit on patient03). Control on "
    "the cross-sectional "
    "database (`--mode control`; used for nothing else): it finds 13 of the 37 consensus lesions of >= 12 mm³ "
    "(patient07 5/24, patient26 8/13) with no false positive, so on FLAIR alone it misses most lesions outright "
    "and a pair built on it cannot reach 0.8 either. Not adopted: +2 lesions over two pairs for a TensorFlow "
    "environment and 12 minutes a pair.",
    "- what the reference marks, measured on the detector's own prepared scans (2026-12-05, `scripts/ms_real_probe"
    ".py --signal`): the mask sits on the scans (the mean follow-up signal over its voxels is highest with the mask"
    " in place, moving it by up to 2 slices or 8 voxels lowers it), but of patient03's 30 reference lesions 10 are"
    " lesion-bright (above the detector's lesion level over half their voxels) at baseline already, and 18 of "
    "the other 20 stay below that level at follow-up; 2 turn lesion-bright. patient01: 3 of 7 "
    "turn lesion-bright; the other 4 stay below the level at follow-up (three of them below the brain's median on "
    "both visits). The table's 'gaining FLAIR hyperintensity' column counts them: a share at least 0.5 higher at "
    "follow-up than at baseline. That rule was written after seeing this per-lesion table, so it is a description"
    " of these two pairs, not a tuned figure; the other plain reading (lesion-bright over half its voxels at "
    "follow-up and under half at baseline) picks the same 5 lesions. The detector finds 4 of those 5 (patient03's"
    " other one, 34 mm³, changes by 1.4 robust spreads against that pair's faintest detectable change of 2.1),"
    " and every lesion it finds is one of them. The other 32 are changes the experts marked that FLAIR does not"
    " show as new "
    "hyperintensity at this resolution; the issue's goal on them needs other evidence than these FLAIRs.",
)
HEADING = "## MS new lesions on real pairs: Ljubljana longitudinal database (`scripts/bench_ms_real.py`)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--patients", nargs="*", help="only these patient folders (e.g. patient01)")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"bench_ms_real: {args.data} is absent: real MS pairs not scored, BENCHMARKS.md left as it is")
        return
    folders = [p for p in patients(args.data) if not args.patients or p.name in args.patients]
    if not folders:
        print(f"bench_ms_real: no patientNN folder with gt.nii.gz in {args.data}", file=sys.stderr)
        sys.exit(1)
    settings = NeuroflowSettings()
    results: list[PatientResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-ms-real-") as tmp:
        for folder in folders:
            result = run_patient(folder, settings, Path(tmp))
            result.gaining = gaining_hyperintensity(folder, settings)
            results.append(result)
            s = result.score
            print(f"{result.name}: {s.hits}/{s.total} found ({result.gaining_found}/{len(result.gaining)} of those "
                  f"gaining FLAIR hyperintensity), {len(s.false_positives)} FP ({len(s.near_misses)} near), "
                  f"F1 {s.f1:.2f}, {result.seconds:.0f} s", flush=True)
    write_section(args.out, render(results))


def render(results: list[PatientResult]) -> str:
    def bin_cell(score: PairScore, low: float, high: float) -> str:
        hits, total = score.sensitivity_in(low, high)
        return f"{hits}/{total}" if total else "-"

    def bin_name(low: float, high: float) -> str:
        return f"{low:g}-{high:g} mm³" if high != float("inf") else f">= {low:g} mm³"

    lines = [
        HEADING,
        "",
        "Two real MS patients scanned twice (2D FLAIR about 0.7 x 0.7 x 3 mm, whole head; Lesjak et al. 2016, "
        "CC BY), each visit written as a DICOM study and compared by `neuroflow run`'s embedded code path. "
        f"Reference: the expert change mask's components of >= {MIN_REFERENCE_MM3:g} mm³ that are brighter at "
        f"follow-up (new or enlarging); found = the reported centroid, mapped into the common space, within "
        f"{HIT_MM:g} mm of one; false positive = more than {FALSE_POSITIVE_MM:g} mm from every one. "
        "**Both patients are development data** (see the decision log in the commit history and "
        "`services/neuroflow/longitudinal/ms_lesions.py`); goal: sensitivity >= 0.8 with <= 1 FP per pair "
        "(MSSEG-2 best F1 ~0.54). *Gaining FLAIR hyperintensity*: the reference lesions of which a share of at "
        f"least {GAIN_SHARE:g} more voxels lies above the detector's lesion level at follow-up than at baseline, on"
        " the detector's own prepared scans (`ms_real_pairs.gaining_hyperintensity`): what a FLAIR comparison can"
        " see; the others were lesion-bright at both visits or at neither (`scripts/ms_real_probe.py --signal`).",
        "",
        "| patient | sensitivity | " + " | ".join(bin_name(lo, hi) for lo, hi in SIZE_BINS)
        + " | gaining FLAIR hyperintensity: found | FP | near (3-5 mm) | F1 "
        "| volume found/reference (found lesions) | shrinking set aside "
        "| faintest detectable change (reader warned) | time |",
        "| --- | --- | " + " | ".join("---" for _ in SIZE_BINS) + " | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        s = r.score
        ratios = s.found_volume_ratios()
        ratio = f"{statistics.median(ratios):.2f} median" if ratios else "n/a"
        lines.append(
            f"| {r.name} | {s.hits}/{s.total} = {s.hits / max(1, s.total):.2f} | "
            + " | ".join(bin_cell(s, lo, hi) for lo, hi in SIZE_BINS)
            + f" | {r.gaining_found}/{len(r.gaining)} | {len(s.false_positives)} | {len(s.near_misses)} "
            f"| {s.f1:.2f} | {ratio} "
            f"({s.detected_volume_mm3:.0f} / {s.reference_volume_mm3:.0f} mm³ in all) | {len(s.shrinking)} "
            f"| {r.detectable_change:.2f} ({'yes' if r.sensitivity_limited else 'no'}) | {r.seconds:.0f} s |")
    hits = sum(r.score.hits for r in results)
    total = sum(r.score.total for r in results)
    fps = sum(len(r.score.false_positives) for r in results)
    gaining_found = sum(r.gaining_found for r in results)
    gaining = sum(len(r.gaining) for r in results)
    lines += [
        f"| all | {hits}/{total} = {hits / max(1, total):.2f} | "
        + " | ".join(_pooled_bin(results, lo, hi) for lo, hi in SIZE_BINS)
        + f" | {gaining_found}/{gaining} | {fps / max(1, len(results)):.1f} per pair | | | | | | |",
        "",
        *DECISION_LOG,
        "",
        f"Machine: {platform.processor() or platform.machine()}, 2 cores shared with other work. Reproduce: "
        "`.venv/bin/python scripts/bench_ms_real.py --out BENCHMARKS.md` (part of `make bench`; skipped "
        "with a message when `../shared/data/ms-longitudinal-ljubljana` is absent).",
    ]
    return "\n".join(lines)


def _pooled_bin(results: list[PatientResult], low: float, high: float) -> str:
    pairs = [r.score.sensitivity_in(low, high) for r in results]
    hits, total = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return f"{hits}/{total}" if total else "-"


if __name__ == "__main__":
    main()
