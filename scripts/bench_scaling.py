"""How cost grows with the work (issue 17, item 6), for `make bench`:

- **study size**: the embedded glioma pipeline (`neuroflow run`, a fresh process per run) on the real
  4-sequence study (TCGA-DU-7294) written as DICOM at three slice spacings (more slices per series, the same
  anatomy) and with its four series repeated (8 and 16 series: repeats of a protocol, as when a sequence is
  run again), per-stage medians from each run's report;
- **concurrent studies**: bursts of 1, 2, 4 and 8 copies of the study (other study UIDs) uploaded at once into
  one local stack (real Orthanc x2, Kafka, PostgreSQL, one process per service): each study's latency from the
  burst's upload to its result in the PACS (minus the wait window), percentiles, and the burst's throughput.

Plots (SVG, drawn here: no plotting library) go to docs/, the tables to BENCHMARKS.md. Absolute times on this
shared machine are noise; the shapes (what grows with what) and the ratios are the result."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.devtools.benchmarks_md import write_section
from neuroflow.devtools.dicom_writer import load_volume, write_study
from neuroflow.runtime.embedded import GLIOMA_STAGES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_distributed  # noqa: E402  (a sibling script: the stack helpers of the distributed bench)

CASE = bench_distributed.CASE
FILES = bench_distributed.FILES
SLICE_SPACINGS_MM = (2.0, 1.0, 0.5)  # the case is 1 mm: 78, 155 and 310 slices per series
SERIES_COPIES = (1, 2, 4)  # 4, 8 and 16 series
BURSTS = (1, 2, 4, 8)
# Stage groups of the tables and plots: every stage of the embedded glioma run, once (checked at import).
GROUPS: dict[str, tuple[str, ...]] = {
    "read and convert": ("read", "classify", "read_series", "convert"),
    "register and skull-strip": ("orientation", "register", "skull_strip", "normalise"),
    "segment": ("segment", "postprocess", "review"),
    "results": ("write_results",),
}
if sorted(s for stages in GROUPS.values() for s in stages) != sorted(GLIOMA_STAGES):
    raise SystemExit(f"bench_scaling: GROUPS must hold each of {GLIOMA_STAGES} once")
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")  # Okabe-Ito


def resliced(volume: Volume, spacing_z_mm: float) -> Volume:
    """``volume`` resampled to ``spacing_z_mm`` between slices over the same extent (rows and columns kept):
    the geometry (origin, direction, in-plane spacing) is that of the original."""
    image = volume.to_sitk()
    spacing = image.GetSpacing()
    extent = spacing[2] * image.GetSize()[2]
    size = [image.GetSize()[0], image.GetSize()[1], max(1, round(extent / spacing_z_mm))]
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(image.GetOrigin())
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetOutputSpacing((spacing[0], spacing[1], spacing_z_mm))
    resampler.SetSize(size)
    resampler.SetInterpolator(sitk.sitkLinear)
    return Volume.from_sitk(resampler.Execute(image), dict(volume.meta))


def repeat_series(study_dir: Path, copies: int) -> int:
    """Add ``copies - 1`` repeats of every series of the study in ``study_dir`` (new series and instance UIDs,
    series numbers and descriptions marking the repeat); returns the number of series."""
    originals = sorted(p for p in study_dir.iterdir() if p.is_dir())
    for copy in range(1, copies):
        for folder in originals:
            target = study_dir / f"{folder.name}R{copy}"
            target.mkdir()
            series_uid = generate_uid()
            for path in sorted(folder.iterdir()):
                ds = pydicom.dcmread(path)
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.SeriesNumber = int(ds.SeriesNumber) + 100 * copy
                ds.SeriesDescription = f"{ds.SeriesDescription} repeat {copy}"[:64]
                ds.save_as(target / path.name, enforce_file_format=True)
    return len(originals) * copies


def embedded_run(study: Path, out: Path) -> dict[str, float]:
    """One `neuroflow run` in a fresh process: its report's stage timings."""
    proc = subprocess.run([sys.executable, "-m", "neuroflow.cli", "run", str(study), "--out", str(out), "--quiet"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_scaling: run on {study.name} failed:\n{proc.stderr[-2000:]}")
    timings: dict[str, float] = json.loads((out / "report.json").read_text())["timings_s"]
    return timings


def grouped(timings: Mapping[str, float]) -> dict[str, float]:
    groups = {name: sum(timings.get(s, 0.0) for s in stages) for name, stages in GROUPS.items()}
    groups["total"] = float(timings["total"])
    return groups


def median_groups(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {name: statistics.median(grouped(r)[name] for r in runs) for name in grouped(runs[0])}


def part_size(work: Path, runs: int) -> dict[str, Any]:
    """Every study written first, then ``runs`` rounds over all of them: the machine's drifting load falls on
    every size alike instead of on whichever ran last."""
    volumes = {role: load_volume(CASE / name) for role, name in FILES.items()}
    studies: list[tuple[str, int, Path]] = []  # (axis, its value, study folder)
    for spacing in SLICE_SPACINGS_MM:
        study = work / f"slices-{spacing}"
        written = write_study({role: resliced(v, spacing) for role, v in volumes.items()}, study,
                              seed=f"scaling-{spacing}")
        studies.append(("slices", len(written.series[SeriesRole.T1].paths), study))
    for copies in SERIES_COPIES:
        study = work / f"series-{copies}"
        written = write_study(volumes, study, seed=f"scaling-series-{copies}")
        studies.append(("series", repeat_series(written.series[SeriesRole.T1].paths[0].parent.parent, copies),
                        study))
    timed: dict[Path, list[dict[str, float]]] = {study: [] for _, _, study in studies}
    for run in range(runs):
        for axis, value, study in studies:
            timed[study].append(embedded_run(study, work / f"out-{study.name}-{run}"))
            print(f"size, round {run + 1}/{runs}: {value} {axis}: {timed[study][-1]['total']:.1f} s", file=sys.stderr)
    return {axis: [{"value": value, "median_s": median_groups(timed[study]),
                    "round_totals_s": [t["total"] for t in timed[study]]}
                   for a, value, study in studies if a == axis] for axis in ("slices", "series")}


def part_concurrency(work: Path, bursts: Sequence[int]) -> list[dict[str, Any]]:
    """One stack; each burst uploaded at once after the previous one's results are all in the PACS."""
    from neuroflow.core.kafka_bus import KafkaBus
    from neuroflow.core.kafka_security import client_security
    from neuroflow.core.orthanc import OrthancClient
    from neuroflow.devtools import stack

    volumes = {role: load_volume(CASE / name) for role, name in FILES.items()}
    wait_s = bench_distributed.WAIT_WINDOW_S
    results = []
    with stack.temporary(stack.StackOptions(wait_window_s=wait_s), prefix="neuroflow-bench-scaling-") as started:
        client = OrthancClient(stack.orthanc_endpoint(started, "site"))
        operator = stack.stack_bus_settings(started)
        bus = KafkaBus(operator.bootstrap, security=client_security(operator))
        try:
            for size in bursts:
                folders = []
                for i in range(size):
                    folder = work / f"burst-{size}-{i}"
                    written = write_study(volumes, folder, seed=f"scaling-burst-{size}-{i}")
                    (folder / "uid.json").write_text(json.dumps({"uid": written.study_instance_uid}))
                    folders.append(folder)
                for folder in folders:
                    for path in sorted(folder.rglob("IM*")):
                        client.upload(path.read_bytes())
                sent = time.time()
                _, stored = bench_distributed.collect_results(bus, size)
                latencies = sorted(stored[bench_distributed.study_uid(f)].stored_at.ToDatetime().timestamp()
                                   - sent - wait_s for f in folders)
                results.append({"studies": size, "latency_s": latencies, "makespan_s": latencies[-1] + wait_s})
                print(f"concurrency: {size} studies, makespan {latencies[-1] + wait_s:.0f} s", file=sys.stderr)
        finally:
            bus.close()
    return results


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (few values: no interpolation pretending to more precision)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def line_chart(title: str, x_label: str, y_label: str, xs: Sequence[float],
               series: Mapping[str, Sequence[float]]) -> str:
    """A small SVG line chart: one line per series over ``xs`` (linear axes from 0), with a legend."""
    width, height, left, right, top, bottom = 640, 360, 64, 180, 40, 48
    x_max = max(xs) * 1.05
    y_max = max(max(v) for v in series.values()) * 1.1 or 1.0

    def px(x: float) -> float:
        return left + (width - left - right) * x / x_max

    def py(y: float) -> float:
        return height - bottom - (height - top - bottom) * y / y_max

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">{escape(title)}</text>',
             f'<line x1="{left}" y1="{py(0)}" x2="{px(x_max)}" y2="{py(0)}" stroke="black"/>',
             f'<line x1="{left}" y1="{py(0)}" x2="{left}" y2="{top}" stroke="black"/>',
             f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">{escape(x_label)}</text>',
             f'<text x="16" y="{(top + height - bottom) / 2}" text-anchor="middle" '
             f'transform="rotate(-90 16 {(top + height - bottom) / 2})">{escape(y_label)}</text>']
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{py(0) + 16:.1f}" text-anchor="middle">{x:g}</text>')
    for step in range(5):
        y = y_max / 1.1 * step / 4
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.0f}</text>'
                     f'<line x1="{left}" y1="{py(y):.1f}" x2="{px(x_max):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, values, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>'
                     for x, y in zip(xs, values, strict=True))
        legend_y = top + 18 * index
        parts.append(f'<line x1="{width - right + 12}" y1="{legend_y}" x2="{width - right + 32}" y2="{legend_y}" '
                     f'stroke="{colour}" stroke-width="2"/><text x="{width - right + 38}" y="{legend_y + 4}">'
                     f'{escape(name)}</text>')
    parts.append("</svg>\n")
    return "\n".join(parts)


def size_lines(size: Mapping[str, Any], runs: int) -> list[str]:
    names = [*GROUPS, "total"]
    # Each round's total beside the medians: how far one study's runs spread is this run's noise.
    header = "| {} | " + " | ".join(names) + " | total of each round |"
    rule = "| ---: | " + " | ".join("---:" for _ in names) + " | ---: |"

    def rows(entries: Sequence[Mapping[str, Any]]) -> list[str]:
        return [f"| {e['value']} | " + " | ".join(f"{e['median_s'][n]:.1f}" for n in names)
                + f" | {', '.join(f'{t:.1f}' for t in e['round_totals_s'])} |" for e in entries]

    def growth(entries: Sequence[Mapping[str, Any]]) -> str:
        first, last = entries[0]["median_s"], entries[-1]["median_s"]
        return ", ".join(f"{n} {last[n] / first[n]:.2f}x" for n in names if first[n] > 0)

    slices, series = size["slices"], size["series"]
    return [
        f"**Study size** (embedded `neuroflow run` in a fresh process, median of {runs} rounds over all sizes, "
        "seconds per stage group):",
        "",
        header.format("slices per series"), rule, *rows(slices),
        "",
        header.format("series in the study"), rule, *rows(series),
        "",
        f"From {slices[0]['value']} to {slices[-1]['value']} slices per series "
        f"({slices[-1]['value'] / slices[0]['value']:.0f}x the data, the same anatomy): {growth(slices)}. "
        f"From {series[0]['value']} to {series[-1]['value']} series (repeats of the four): {growth(series)}. "
        "By design, reading and conversion, the orientation check and the result objects (SEG and overlays are "
        "written on the source series' grid, a frame per slice) work on the acquired slices; registration reads "
        "each series as acquired and resamples it onto the reference's 1 mm grid, where skull stripping and the "
        "network work; repeats are indexed and classified, and only the chosen series are converted. The network "
        "should not change with either axis: where it does, and where one study's rounds differ, that is the "
        "load of the machine.",
        "",
        "![stage time against slices per series](docs/scaling_slices.svg)",
        "",
    ]


def concurrency_lines(bursts: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [f"| {b['studies']} | {statistics.median(b['latency_s']):.0f} | {percentile(b['latency_s'], 95):.0f} | "
            f"{b['makespan_s']:.0f} | {3600 * b['studies'] / b['makespan_s']:.0f} |" for b in bursts]
    single = bursts[0]["makespan_s"]
    last = bursts[-1]
    return [
        f"**Concurrent studies** (one local stack, default workers; wait window {bench_distributed.WAIT_WINDOW_S:.0f} "
        "s; latency: burst uploaded to the study's result in the PACS, minus the wait window):",
        "",
        "| studies at once | latency p50 s | latency p95 s | makespan s | throughput studies/h |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"{last['studies']} studies at once took {last['makespan_s'] / single:.1f}x the time of one "
        f"({last['studies'] / (last['makespan_s'] / single):.1f}x the throughput): on 2 shared cores the stages "
        "run side by side only as far as the cores allow; the latency grows with the queue, which is what the "
        "capacity model's worker counts are for.",
        "",
        "![latency against concurrent studies](docs/scaling_concurrency.svg)",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="BENCHMARKS.md to append the section to")
    parser.add_argument("--runs", type=int, default=2, help="embedded runs per study size (median)")
    parser.add_argument("--bursts", type=lambda s: [int(x) for x in s.split(",")], default=list(BURSTS))
    parser.add_argument("--skip-concurrency", action="store_true", help="study size only (no stack)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="neuroflow-bench-scaling-") as tmp:
        size = part_size(Path(tmp), args.runs)
        bursts = [] if args.skip_concurrency else part_concurrency(Path(tmp), args.bursts)
    args.docs.mkdir(parents=True, exist_ok=True)
    names = [*GROUPS, "total"]
    (args.docs / "scaling_slices.svg").write_text(line_chart(
        "neuroflow run: stage time against slices per series", "slices per series", "median s",
        [e["value"] for e in size["slices"]], {n: [e["median_s"][n] for e in size["slices"]] for n in names}))
    lines = ["## How cost grows with the work (`scripts/bench_scaling.py`)", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {(time.time() - started) / 60:.0f} min "
             "on 2 shared cores (absolute times are noise here: read the shapes and ratios). Input: the real "
             "4-sequence study TCGA-DU-7294 written as DICOM.", "", *size_lines(size, args.runs)]
    if bursts:
        (args.docs / "scaling_concurrency.svg").write_text(line_chart(
            "local stack: latency against studies at once", "studies uploaded at once", "s",
            [b["studies"] for b in bursts],
            {"latency p50": [statistics.median(b["latency_s"]) for b in bursts],
             "latency p95": [percentile(b["latency_s"], 95) for b in bursts],
             "makespan": [b["makespan_s"] for b in bursts]}))
        lines += concurrency_lines(bursts)
    lines += ["Reproduce: `make bench` (or `.venv/bin/python scripts/bench_scaling.py --out BENCHMARKS.md`).", ""]
    text = "\n".join(lines)
    if args.out is not None:
        write_section(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
