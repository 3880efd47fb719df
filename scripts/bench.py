"""`make bench`: times every stage of the glioma pipeline on a real 4-sequence study (TCGA-DU-7294
written out as DICOM), several runs, each in a fresh process, and writes the medians, the peak memory
and the comparison with the published pipeline to BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREPROCESS_STAGES = ("read", "classify", "read_series", "convert", "orientation", "register", "skull_strip",
                     "normalise")
# The published pipeline (paper 001 in the team's papers): ~6 min preprocessing, ~10 min per case.
PUBLISHED_PREPROCESS_S = 6 * 60.0
PUBLISHED_TOTAL_S = 10 * 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="neuroflow-bench-") as tmp:
        study = Path(tmp) / "study"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_study.py"), str(study)], check=True,
                       stdout=subprocess.DEVNULL)
        runs = []
        peaks = []
        for i in range(args.runs):
            out = Path(tmp) / f"out{i}"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "neuroflow.cli", "run", str(study), "--out", str(out),
                                   "--quiet"], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"bench run {i} failed:\n{proc.stderr}")
            report = json.loads((out / "report.json").read_text())
            runs.append({**report["timings_s"], "process_wall": wall})
            # ru_maxrss of children is the largest any finished child reached (KiB on Linux).
            peaks.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0)
            print(f"run {i + 1}/{args.runs}: total {report['timings_s']['total']:.1f} s", file=sys.stderr)
        volumes = report["volumes_ml"]

    stages = [k for k in runs[0] if k not in ("total", "process_wall")]
    median = {k: statistics.median(r[k] for r in runs) for k in [*stages, "total", "process_wall"]}
    pre = sum(median[s] for s in PREPROCESS_STAGES if s in median)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) on "
        f"{platform.machine()} with {_cpus()} CPUs, Python {platform.python_version()}.",
        "Absolute times are noisy on this shared machine; compare the ratios and the per-stage breakdown.",
        "",
        f"## Glioma pipeline, embedded (ONNX Runtime, CPU), real 4-sequence study, median of {len(runs)} runs",
        "",
        "Study: TCGA-DU-7294 (240x240x155, 1 mm, 4 sequences), written as DICOM by `scripts/make_demo_study.py`.",
        "",
        "| stage | median s | share |",
        "| --- | ---: | ---: |",
        *[f"| {s} | {median[s]:.2f} | {median[s] / median['total']:.0%} |" for s in stages],
        f"| **total (in process)** | **{median['total']:.2f}** | 100% |",
        f"| process wall time (incl. interpreter start and imports) | {median['process_wall']:.2f} | |",
        "",
        f"- Preprocessing (read to normalised): **{pre:.1f} s** (goal < 30 s); the published pipeline took "
        f"~{PUBLISHED_PREPROCESS_S:.0f} s: **{PUBLISHED_PREPROCESS_S / pre:.0f}x faster**.",
        f"- Whole run: **{median['total']:.1f} s** (goal < 90 s); published ~{PUBLISHED_TOTAL_S:.0f} s: "
        f"**{PUBLISHED_TOTAL_S / median['total']:.0f}x faster**.",
        f"- Peak memory (max RSS of a run's process): **{max(peaks):.0f} MiB** (goal < 4096 MiB).",
        f"- Volumes found (mL): WT {volumes['WT']:.1f}, TC {volumes['TC']:.1f}, ET {volumes['ET']:.1f}.",
        "",
        "Reproduce: `make bench`.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
