"""`make bench`: how fast neuroflow indexes a big study, against plain pydicom on the same files.

Writes a 2,000-instance CT study (5 axial series of 400 slices, 512 x 512 unless --matrix says otherwise,
one file per slice, by our writer) and measures, each in a fresh process (so peak RSS is that step's
alone) on a warm page cache:

* neuroflow's index (FolderDicomSource.index: headers only, grouped by study and series, non-image
  objects set aside), in files per second;
* plain ``pydicom.dcmread(stop_before_pixels=True)`` of the same files, the headers kept as the index keeps
  them;
* plain ``pydicom.dcmread`` of the whole files (pixel data read, not decoded; nothing kept);
* converting one 400-image series (index, read with pixels, series_to_volume).

The median of 3 runs is written as a section of BENCHMARKS.md (other scripts own the other sections)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERIES_SLICES = (400, 400, 400, 400, 400)
MATRIX = 512
RUNS = 3
HEADING = "## DICOM indexing: a 2,000-instance CT study (`scripts/bench_indexing.py`)"


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM): unlike getrusage's ru_maxrss, which a child started by
    exec keeps from its parent, it starts afresh with the process's own memory map."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(kind: str, root: Path) -> dict[str, float]:
    """One measurement in this process: seconds, files and peak RSS (MB)."""
    # Each step imports only what it uses, so the plain pydicom steps' RSS is pydicom's alone.
    import pydicom

    if kind in ("index", "convert_400"):
        from neuroflow.core.dicom_io import FolderDicomSource, study_key
    if kind == "convert_400":
        from neuroflow.core.series_volume import series_to_volume

    files = _files(root)
    started = time.perf_counter()
    if kind == "index":
        studies, _ = FolderDicomSource(root).index()
        count = sum(len(s.headers) for study in studies.values() for s in study.series.values())
    elif kind == "dcmread_headers":
        kept = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        count = len(kept)
    elif kind == "dcmread_full":
        for f in files:
            pydicom.dcmread(f)
        count = len(files)
    elif kind == "convert_400":
        source = FolderDicomSource(root / "SE0002")
        studies, _ = source.index()
        (study,) = studies.values()
        (series,) = study.series.values()
        volume = series_to_volume(source.read_instances(series), study_key=study_key(study.study_instance_uid))
        count = int(volume.array.shape[0])
    else:
        raise ValueError(kind)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "files": float(count), "peak_rss_mb": _peak_rss_mb()}


def _in_child(kind: str, root: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--measure", kind, "--root", str(root)], check=True,
                          capture_output=True, text=True, env=os.environ.copy())
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median(kind: str, root: Path) -> dict[str, float]:
    runs = [_in_child(kind, root) for _ in range(RUNS)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, help="BENCHMARKS.md to write the section into")
    parser.add_argument("--matrix", type=int, default=MATRIX,
                        help="rows and columns of each slice (writing a 512 x 512 series peaks near 2 GB)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.root)))
        return

    from neuroflow.devtools.benchmarks_md import write_section
    from neuroflow.devtools.big_study import iter_ct_study

    with tempfile.TemporaryDirectory(prefix="neuroflow-bench-index-") as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        for _series in iter_ct_study(root, SERIES_SLICES, matrix=args.matrix):  # one volume in memory at a time
            pass
        files = _files(root)
        size_mb = sum(os.path.getsize(f) for f in files) / 1e6
        print(f"wrote {len(files)} files ({size_mb:.0f} MB) in {time.perf_counter() - started:.0f} s", flush=True)
        for f in files:  # warm the page cache: every step reads the same cached files
            Path(f).read_bytes()
        results = {}
        for kind in ("index", "dcmread_headers", "dcmread_full", "convert_400"):
            results[kind] = _median(kind, root)
            r = results[kind]
            print(f"{kind}: {r['files']:.0f} files in {r['seconds']:.2f} s, "
                  f"{r['files'] / r['seconds']:.0f} files/s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)

    rows = {
        "index": "neuroflow index (`FolderDicomSource.index`: headers, grouped, non-images set aside)",
        "dcmread_headers": "plain `pydicom.dcmread(stop_before_pixels=True)`, headers kept",
        "dcmread_full": "plain `pydicom.dcmread` (pixel data read, not decoded), nothing kept",
        "convert_400": "convert one 400-image series (index, read with pixels, `series_to_volume`)",
    }
    lines = [
        HEADING,
        "",
        f"{len(files)} files ({size_mb:.0f} MB): {len(SERIES_SLICES)} axial CT series of {SERIES_SLICES[0]} slices, "
        f"{args.matrix} x {args.matrix}, int16, one file per slice, written by our writer. Each step in a fresh "
        f"process (peak RSS is that step's), warm page cache, median of {RUNS} runs. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        "",
        "| step | files | seconds | files/s | peak RSS (MB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, label in rows.items():
        r = results[kind]
        lines.append(f"| {label} | {r['files']:.0f} | {r['seconds']:.2f} | {r['files'] / r['seconds']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    index, headers = results["index"], results["dcmread_headers"]
    ratio = (index["files"] / index["seconds"]) / (headers["files"] / headers["seconds"])
    lines += ["", f"The index runs at {ratio:.0%} of the throughput of plain header reading of the same files (it also "
              "reads the grouping and set-aside tags, which pydicom converts on access). Peak RSS includes the "
              "interpreter and the step's imports (pydicom alone; neuroflow's index adds its own modules)."]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.out:
        write_section(args.out, section)


if __name__ == "__main__":
    main()
