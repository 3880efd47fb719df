"""Score what the radiologist receives: each labelled real case of ``evaluate.py`` written as a DICOM study, run
through ``neuroflow run`` (the embedded runtime, as a site runs it), its SEG decoded onto the reference labels'
grid and compared with them.

``evaluate.py`` scores the model on arrays prepared with the data set's own brain mask; this scores the product:
DICOM reading, the orientation check, registration, the skull-stripping network's mask, normalisation,
post-processing and the SEG's encoding. The two differ where the product's steps cost accuracy (on
2026-12-05 a pre-stripped input's background counted as brain halved TCGA-DU-7294's tumour-core Dice).

The BRATS 2013 cases are read in place and written as DICOM into a temporary folder that is deleted afterwards
(evaluation only: never copied into the project). Needs only the pipeline's dependencies.

    python -m models.glioma_unet.evaluate_pipeline --json build/glioma_unet/evaluation_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom

from models.glioma_unet.evaluate import SHARED_DATA, RealCase, real_cases, region_scores, summary_table
from neuroflow.console.viewer.seg_labels import seg_label_volume
from neuroflow.core.labels import TUMOUR_REGIONS
from neuroflow.core.roles import GLIOMA_INPUT_ROLES
from neuroflow.devtools.dicom_writer import load_volume, write_study
from neuroflow.segmentation.postprocess import from_label_map


def evaluate_case(case: RealCase, work: Path) -> dict[str, object]:
    """One case through ``neuroflow run`` in a fresh process; Dice of the SEG's regions against the reference."""
    assert case.reference is not None
    volumes = {role: load_volume(case.folder / f"{name}.nii.gz")
               for role, name in zip(GLIOMA_INPUT_ROLES, case.files, strict=True) if name is not None}
    study, out = work / "study", work / "out"
    write_study(volumes, study / "DICOM", seed=case.name)
    run = subprocess.run([sys.executable, "-m", "neuroflow.cli", "run", str(study), "--out", str(out)],
                         capture_output=True, text=True, timeout=900, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{case.name}: neuroflow run exited {run.returncode}: {run.stderr[-2000:]}")
    reference_volume = load_volume(case.folder / f"{case.reference}.nii.gz")
    labels = np.asarray(reference_volume.array).round().astype(np.int16)
    reference = {region: np.isin(labels, values) for region, values in zip(TUMOUR_REGIONS, case.regions, strict=True)}
    delivered = seg_label_volume(pydicom.dcmread(out / "seg.dcm"), reference_volume.geometry)
    prediction = from_label_map(np.asarray(delivered.array))
    report = json.loads((out / "report.json").read_text())
    voxel, lesion = region_scores(prediction, reference)
    ml = reference_volume.voxel_volume_mm3 / 1000.0
    return {"case": case.name, "in_median": case.in_median,
            "sequences": [r.value for r in volumes],
            "brain_ml": report.get("skull_strip", {}).get("brain_volume_ml"),
            "needs_review": report.get("review", {}).get("needs_review"),
            "predicted_ml_postprocessed": {r.value: round(float(m.sum()) * ml, 2)
                                           for r, m in prediction.by_region().items()},
            "reference_ml": {r.value: round(float(m.sum()) * ml, 2) for r, m in reference.items()},
            "dice_postprocessed": voxel, "lesion_dice_postprocessed": lesion}


def main() -> None:
    parser = argparse.ArgumentParser(description="Score neuroflow run's SEG on the labelled real glioma cases.")
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for case in real_cases(args.shared_data):
        if case.reference is None:
            continue
        if not case.folder.is_dir():
            print(f"skipped {case.name}: {case.folder} not found", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix="neuroflow-eval-") as work:
            results.append(evaluate_case(case, Path(work)))
        print(json.dumps(results[-1]), flush=True)
    print("neuroflow run, the SEG as delivered (voxel Dice / lesion-wise Dice):")
    print(summary_table(results, "postprocessed"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
