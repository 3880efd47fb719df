"""`make bench`: times every stage of the glioma pipeline on a real 4-sequence study (TCGA-DU-7294
written out as DICOM), several runs, each in a fresh process, and writes the medians, the peak memory
and the comparison with the published pipeline to BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from neuroflow.devtools.benchmarks_md import write_header, write_section

ROOT = Path(__file__).resolve().parents[1]
PREPROCESS_STAGES = ("read", "classify", "read_series", "convert", "orientation", "register", "skull_strip",
                     "normalise")
# The published pipeline (paper 001 in the team's papers): ~6 min preprocessing, ~10 min per case.
PUBLISHED_PREPROCESS_S = 6 * 60.0
PUBLISHED_TOTAL_S = 10 * 60.0
# Headings without run counts: write_section finds a section by its heading.
GLIOMA_HEADING = "## Glioma pipeline, embedded (ONNX Runtime, CPU), real 4-sequence study"
METASTASES_HEADING = "## Metastases pipeline, embedded (ONNX Runtime, CPU), real AURORA case"
HUGEPAGES_HEADING = "## Transparent huge pages: numpy's default against neuroflow's, glioma run"
HUGEPAGE_STAGES = ("convert", "register", "skull_strip", "segment", "review", "write_results")
VMSTAT_EVENTS = ("thp_fault_alloc", "thp_fault_fallback", "compact_stall")  # huge pages faulted in, refused, waited on
AURORA = ROOT.parent / "shared" / "data" / "metastasis-aurora"  # real brain metastases, read in place


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="neuroflow-bench-") as tmp:
        study = Path(tmp) / "study"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_study.py"), str(study)], check=True,
                       stdout=subprocess.DEVNULL)
        runs, peaks, report = timed_runs(study, Path(tmp) / "glioma", args.runs)
        volumes = report["volumes_ml"]
        metastases = metastases_section(Path(tmp), args.runs)
        hugepages = hugepages_section(study, Path(tmp) / "hugepages", args.runs)

    median = medians(runs)
    pre = sum(median[s] for s in PREPROCESS_STAGES if s in median)
    header = [
        "# Benchmarks",
        "",
        f"Written by `make bench` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) on "
        f"{platform.machine()} with {_cpus()} CPUs, Python {platform.python_version()}.",
        "Absolute times are noisy on this shared machine; compare the ratios and the per-stage breakdown.",
    ]
    glioma = [
        GLIOMA_HEADING,
        "",
        f"Median of {len(runs)} runs. Study: TCGA-DU-7294 (240x240x155, 1 mm, 4 sequences), written as DICOM by "
        "`scripts/make_demo_study.py`.",
        "",
        *stage_table(median),
        "",
        f"- Preprocessing (read to normalised): **{pre:.1f} s** (goal < 30 s); the published pipeline took "
        f"~{PUBLISHED_PREPROCESS_S:.0f} s: **{PUBLISHED_PREPROCESS_S / pre:.0f}x faster**.",
        f"- Whole run: **{median['total']:.1f} s** (goal < 90 s); published ~{PUBLISHED_TOTAL_S:.0f} s: "
        f"**{PUBLISHED_TOTAL_S / median['total']:.0f}x faster**.",
        f"- Peak memory (max RSS of a run's process): **{max(peaks):.0f} MiB** (goal < 4096 MiB).",
        f"- Volumes found (mL): WT {volumes['WT']:.1f}, TC {volumes['TC']:.1f}, ET {volumes['ET']:.1f}.",
        "",
        "Reproduce: `make bench`.",
    ]
    # Its own sections and the file's header only: run alone, it keeps every other script's sections.
    write_header(args.out, "\n".join(header))
    for section in (glioma, metastases, hugepages):
        if section:
            write_section(args.out, "\n".join(section))
    lines = [*header, "", *glioma, "", *metastases, "", *hugepages]
    print("\n".join(lines))


def timed_runs(study: Path, out_root: Path, runs: int, *extra: str, env: dict[str, str] | None = None) -> tuple[
        list[dict[str, float]], list[float], dict[str, Any]]:
    """``runs`` of `neuroflow run STUDY ...extra` in fresh processes (``env`` added to this one's environment):
    each run's stage timings with the process wall time, the peak memory so far (MiB) after each, and the last
    run's report."""
    timings, peaks = [], []
    report: dict[str, Any] = {}
    for i in range(runs):
        out = out_root / f"out{i}"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "neuroflow.cli", "run", str(study), "--out", str(out), "--quiet",
                               *extra], capture_output=True, text=True, env={**os.environ, **(env or {})})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"bench run {i} of {study.name} {' '.join(extra)} failed:\n{proc.stderr}")
        report = json.loads((out / "report.json").read_text())
        timings.append({**report["timings_s"], "process_wall": wall})
        # ru_maxrss of children is the largest any finished child reached (KiB on Linux).
        peaks.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0)
        print(f"run {i + 1}/{runs} {' '.join(extra)}: total {report['timings_s']['total']:.1f} s", file=sys.stderr)
    return timings, peaks, report


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's median over the runs, in stage order, then the total and the process wall time."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def stage_table(median: dict[str, float]) -> list[str]:
    stages = [k for k in median if k not in ("total", "process_wall")]
    return ["| stage | median s | share |", "| --- | ---: | ---: |",
            *[f"| {s} | {median[s]:.2f} | {median[s] / median['total']:.0%} |" for s in stages],
            f"| **total (in process)** | **{median['total']:.2f}** | 100% |",
            f"| process wall time (incl. interpreter start and imports) | {median['process_wall']:.2f} | |"]


def metastases_section(tmp: Path, runs: int) -> list[str]:
    """The metastases pipeline timed on the real AURORA case (read in place from the shared data, written as
    DICOM in ``tmp``); nothing when that data is not on this machine."""
    from neuroflow.core.roles import SeriesRole
    from neuroflow.devtools.dicom_writer import load_volume, write_study

    if not AURORA.is_dir():
        print(f"bench: {AURORA} not here: the metastases pipeline is not timed", file=sys.stderr)
        return []
    files = {SeriesRole.T1: "t1.nii.gz", SeriesRole.T1CE: "t1c.nii.gz", SeriesRole.T2: "t2.nii.gz",
             SeriesRole.FLAIR: "flair.nii.gz"}
    study = tmp / "aurora"
    write_study({role: load_volume(AURORA / name) for role, name in files.items()}, study, seed="bench-aurora")
    timings, _, report = timed_runs(study, tmp / "metastases", runs, "--pipeline", "metastases")
    median = medians(timings)
    found = report["metastases"]
    return [
        METASTASES_HEADING,
        "",
        f"Median of {runs} runs. Study: the AURORA example case (240x240x155, 1 mm, 4 sequences; "
        "`../shared/data/metastasis-aurora`, read in place), written as DICOM; `neuroflow run --pipeline metastases`.",
        "",
        *stage_table(median),
        "",
        f"- Lesions found: {found['count']}, {found['total_volume_ml']:.1f} mL in all (the case has no reference "
        "labels: models/metastases_unet/EVALUATION.md shows what they are).",
        "",
    ]


def hugepages_section(study: Path, out_root: Path, runs: int) -> list[str]:
    """The glioma run with numpy's default (MADV_HUGEPAGE on large arrays) and with neuroflow's (off: see
    ``neuroflow/__init__.py``), alternating run by run on the same study so both meet the same machine, with the
    kernel's counts of huge page faults and compaction stalls during each setting's runs (the mechanism)."""
    from neuroflow import HUGEPAGE_SETTING

    settings = {"numpy's default (madvise huge pages)": "1", "neuroflow's (off)": "0"}
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    events: dict[str, dict[str, int]] = {name: dict.fromkeys(VMSTAT_EVENTS, 0) for name in settings}
    for i in range(runs):
        for name, value in settings.items():
            before = _vmstat()
            done, _, _ = timed_runs(study, out_root / f"{value}-{i}", 1, env={HUGEPAGE_SETTING: value})
            after = _vmstat()
            timings[name].extend(done)
            for event in VMSTAT_EVENTS:
                events[name][event] += after.get(event, 0) - before.get(event, 0)
    median = {name: medians(done) for name, done in timings.items()}
    default, ours = (median[name] for name in settings)
    stages = [s for s in HUGEPAGE_STAGES if s in ours]
    rows = [f"| {name} | {len(timings[name])} | " + " | ".join(f"{m[s]:.2f}" for s in stages)
            + f" | **{m['total']:.2f}** | " + " | ".join(str(events[name][e]) for e in VMSTAT_EVENTS) + " |"
            for name, m in median.items()]
    return [
        HUGEPAGES_HEADING,
        "",
        f"The glioma run of the first section, {runs} times with `{HUGEPAGE_SETTING}=1` (numpy's own default) and "
        f"{runs} times with neuroflow's default (`0`), alternating, in fresh processes. Kernel: transparent huge "
        f"pages `{_thp('enabled')}`, defrag `{_thp('defrag')}`. Medians, seconds; then the kernel's counts "
        "(`/proc/vmstat`, whole machine) over each setting's runs:",
        "",
        "| setting | runs | " + " | ".join(stages) + " | total | " + " | ".join(VMSTAT_EVENTS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in (*stages, "total", *VMSTAT_EVENTS)) + " |",
        *rows,
        "",
        f"numpy's default takes **{default['total'] / ours['total']:.2f}x** neuroflow's time. numpy marks each "
        "array of 4 MiB or more MADV_HUGEPAGE, and a huge page can cost far more to fault in than the small pages "
        "it replaces: in a virtual machine that hands its free memory back to the host (virtio free page "
        "reporting, as this machine does), every huge page is faulted in again on the host; on a host with "
        "fragmented memory and defrag `madvise`, the fault waits for compaction (`compact_stall`; "
        "numpy/numpy#31590). Where huge pages come cheap, numpy's default saves page faults (about 0.1 s per "
        "600 MB on this machine when they did): the ratio is the machine's state, not a constant. An operator who "
        "wants numpy's behaviour sets the variable.",
    ]


def _vmstat() -> dict[str, int]:
    """The kernel's event counters (empty where /proc/vmstat cannot be read)."""
    try:
        lines = Path("/proc/vmstat").read_text().splitlines()
    except OSError:
        return {}
    return {name: int(value) for name, value in (line.split() for line in lines if line.count(" ") == 1)}


def _thp(name: str) -> str:
    """The kernel's transparent huge page setting ``name`` (the bracketed choice), or "unknown"."""
    try:
        text = Path(f"/sys/kernel/mm/transparent_hugepage/{name}").read_text()
    except OSError:
        return "unknown"
    chosen = [word.strip("[]") for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else "unknown"


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
