"""Benchmark: the glioma U-Net in-process (ONNX Runtime) versus the same model on Triton over gRPC.

One run, one study (TCGA-DU-7294, the four skull-stripped 1 mm sequences of tests/data), the segmentation
stage's own sliding window (neuroflow.segmentation.glioma.predict_regions: brain bounding box, 96^3
patches, overlap 0.5). Configurations are interleaved (ONNX Runtime, then Triton at each batch size,
repeated) so that the machine's noise hits them alike; medians are reported with every figure.

* overhead ratio: Triton (CPU variant: Python backend running the same ONNX file with ONNX Runtime) over
  in-process ONNX Runtime at the same batch size and thread count (goal under 1.15x);
* batch size 1 versus larger batches through Triton (with requests in flight, the dynamic batcher
  joins them);
* agreement: largest difference of the probabilities, voxels whose label differs.

    .venv/bin/python scripts/bench_triton.py --out BENCHMARKS.md     (replaces its section)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_case import CASE, CASE_FILES  # scripts/ is on the path of a script run from it

from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY
from neuroflow.core.inference import InferenceBackend, OnnxRuntimeBackend
from neuroflow.core.inference_triton import TritonBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.triton_repository import ServingOptions, build_repository
from neuroflow.core.volume import Volume
from neuroflow.devtools.benchmarks_md import write_section
from neuroflow.devtools.dicom_writer import load_volume
from neuroflow.devtools.triton_server import PYTRITON_VERSION, start_triton
from neuroflow.preprocess.normalise import zscore_in_mask
from neuroflow.segmentation.glioma import predict_regions

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelRef(name="glioma_unet", version=1)


def study_inputs() -> tuple[dict[SeriesRole, Volume], Volume]:
    """The normalised sequences and the brain mask, as the segmentation stage receives them."""
    volumes = {role: load_volume(CASE / name) for role, name in CASE_FILES.items()}
    brain = np.asarray(volumes[SeriesRole.T1].array) > 0
    mask = Volume(brain.astype(np.uint8), volumes[SeriesRole.T1].geometry)
    normalised = {role: Volume(zscore_in_mask(np.asarray(v.array, dtype=np.float32), brain), v.geometry)
                  for role, v in volumes.items()}
    return normalised, mask


def timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="ONNX Runtime threads, in process and in Triton's model instance alike")
    args = parser.parse_args()

    normalised, mask = study_inputs()
    embedded = OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, intra_op_threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix="neuroflow-bench-triton-"))
    build_repository(DEFAULT_MODEL_REPOSITORY, work / "repository", "cpu", models=[MODEL.name],
                     options=ServingOptions(max_batch_size=max(args.batches), intra_op_threads=args.threads))
    server = start_triton(work / "repository", work / "tritonserver.log")
    try:
        remote = TritonBackend(server.grpc_url, DEFAULT_MODEL_REPOSITORY, max_in_flight=4)

        def segment(backend: InferenceBackend, batch: int) -> Callable[[], np.ndarray]:
            return lambda: predict_regions(normalised, mask, backend, MODEL, overlap=0.5, batch_size=batch,
                                           study_key="bench")

        segment(embedded, 2)()  # warm-up: sessions created, pages touched
        segment(remote, 1)()
        times: dict[str, list[float]] = {}
        outputs: dict[str, np.ndarray] = {}
        configurations = [("onnxruntime", embedded, 2), *((f"triton-b{b}", remote, b) for b in args.batches)]
        if 2 not in args.batches:
            configurations.append(("triton-b2", remote, 2))
        for _ in range(args.repeats):
            for name, backend, batch in configurations:
                seconds, outputs[name] = timed(segment(backend, batch))
                times.setdefault(name, []).append(seconds)
                print(f"{name}: {seconds:.2f} s", flush=True)
    finally:
        server.stop()

    median = {name: statistics.median(values) for name, values in times.items()}
    reference = outputs["onnxruntime"]
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    lines = [
        "## Inference tier: in-process ONNX Runtime versus Triton over gRPC (CPU), glioma U-Net",
        "",
        f"Written by `make bench` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) on {platform.machine()} "
        f"with {os.cpu_count()} CPUs. One study (TCGA-DU-7294, 4 sequences, brain box cropped, 96^3 patches, "
        f"overlap 0.5), the segmentation stage's sliding window; {args.threads} ONNX Runtime threads in both; "
        f"Triton 2.51 (nvidia-pytriton {PYTRITON_VERSION}) "
        "CPU variant (Python backend running the same ONNX file), gRPC on loopback, up to 4 requests in flight. "
        f"Median of {args.repeats} interleaved runs; load average {load:.1f} at the end"
        + (f" (above {cpus}: other work shared the CPUs, so absolute times are inflated, ratios less so)."
           if load > cpus else f" (not above {cpus}: the CPUs were not oversubscribed)."),
        "",
        "| configuration | median s | all s | vs ONNX Runtime in process | max abs diff of probabilities | "
        "voxels with another label |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, values in times.items():
        diff = float(np.abs(outputs[name] - reference).max())
        changed = int(((outputs[name] > 0.5) != (reference > 0.5)).any(axis=0).sum())
        lines.append(f"| {name} | {median[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} | "
                     f"{median[name] / median['onnxruntime']:.2f}x | {diff:.1e} | {changed} |")
    best = min((n for n in median if n.startswith("triton")), key=lambda n: median[n])
    lines += [
        "",
        f"Overhead of Triton over in-process ONNX Runtime at the same batch size (2): "
        f"**{median['triton-b2'] / median['onnxruntime']:.2f}x** (goal under 1.15x); best Triton configuration "
        f"{best}: {median[best] / median['onnxruntime']:.2f}x. Batch 1 versus the largest batch through Triton: "
        f"{median['triton-b1'] / median[f'triton-b{max(args.batches)}']:.2f}x."
        if "triton-b1" in median else "",
        "",
        "Reproduce: `make bench` (or `.venv/bin/python scripts/bench_triton.py`). GPU figures: `scripts/bench_gpu.py` "
        "on a GPU machine, section \"Inference tier on a GPU\".",
        "",
    ]
    write_section(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
