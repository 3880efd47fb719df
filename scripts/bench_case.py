"""The study the inference benchmarks segment (scripts/bench_triton.py, scripts/bench_gpu.py): TCGA-DU-7294's four
skull-stripped 1 mm sequences in tests/data. Kept free of heavy imports: the GPU bench runs where SimpleITK is not."""

from __future__ import annotations

from pathlib import Path

from neuroflow.core.roles import SeriesRole

CASE = Path(__file__).resolve().parents[1] / "tests" / "data" / "glioma-tcga-du-7294"
CASE_FILES = {SeriesRole.T1: "t1_bet.nii.gz", SeriesRole.T1CE: "t1c_bet.nii.gz", SeriesRole.T2: "t2_bet.nii.gz",
              SeriesRole.FLAIR: "fla_bet.nii.gz"}
