"""GPU benchmark of the inference tier, for a machine with an NVIDIA GPU (issue 17, item 5; the capacity model's
GPU figure). Every figure comes from one run on one machine, so the ratios between backends are fair.

Measured:
- **Per patch**, for each network of the model repository that the pipelines serve on a GPU (glioma_unet at the
  served version, metastases_unet): median milliseconds of one batch (1 and 4 patches) for ONNX Runtime on the
  machine's CPU cores (the reference, the same file the CPU deployment runs), ONNX Runtime's CUDA provider,
  PyTorch FP32, FP16 and BF16 (autocast), PyTorch FP16 compiled (``torch.compile`` with CUDA graphs) and
  TensorRT FP16 (models/triton/export_tensorrt.py). Inputs already on the GPU, except for ONNX Runtime (host
  arrays, as the pipeline gives them).
- **Per study**: the glioma stage's sliding window (neuroflow.segmentation.glioma.predict_stack: brain bounding
  box, 96^3 patches, overlap 0.5, batch 4) on TCGA-DU-7294, host to host, per backend; the GPU's peak memory;
  and how far each GPU backend's probabilities are from ONNX Runtime's on the CPU (largest difference, Dice of
  the WT/TC/ET masks at 0.5), so a faster backend that changes the result shows it.
- **Throughput**: 1, 2, 4 and 8 clients (threads, like a segmentation worker's concurrent studies) sharing one
  GPU through PyTorch FP16, studies per hour.

A backend that cannot run on the machine (package not installed, no CUDA provider) is named with the reason,
never left out silently. Weights: the served version's training checkpoint where the repository keeps it (glioma
versions 2 and 4, metastases version 3), so the agreement figures mean something; another version runs with
random weights (the time does not depend on the weights).

Reads the study with nibabel and imports nothing that needs SimpleITK, so it runs on a GPU machine with
PyTorch and a few small wheels. Writes its figures as JSON (``--json``) and its own section of BENCHMARKS.md
(``--out``), which the capacity model reads::

    python3 scripts/bench_gpu.py --json gpu.json --out BENCHMARKS.md

Exit status 2, with the reason, where there is no CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "services"), str(ROOT / "scripts")]

from bench_case import CASE, CASE_FILES  # noqa: E402

from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, PipelineModels  # noqa: E402
from neuroflow.core.inference import Array, InferenceBackend, onnx_model_path  # noqa: E402
from neuroflow.core.labels import TUMOUR_REGIONS  # noqa: E402
from neuroflow.core.model_card import ModelCard, ModelRef, load_model_card  # noqa: E402
from neuroflow.core.roles import SeriesRole  # noqa: E402
from neuroflow.devtools.benchmarks_md import write_section  # noqa: E402
from neuroflow.preprocess.normalise import zscore_in_mask  # noqa: E402
from neuroflow.segmentation.glioma import predict_stack  # noqa: E402

SECTION = "## Inference tier on a GPU"
EXIT_NO_GPU = 2
CHECKPOINTS = {ModelRef(name="glioma_unet", version=2): ROOT / "models/glioma_unet/training_log/v2_checkpoint.pt",
               ModelRef(name="glioma_unet", version=4): ROOT / "models/glioma_unet/training_log/v4_checkpoint.pt",
               ModelRef(name="metastases_unet", version=3):
                   ROOT / "models/metastases_unet/training_log/v3_checkpoint.pt"}
STUDY_BATCH = 4
STUDY_OVERLAP = 0.5
# The published anchor the issue names: nnU-Net on Triton, A100, FP16, batch 1 (a 30 M-weight network on 128^3
# patches; ours has 0.35 M weights on 96^3, so the comparison says only whether the GPU is kept busy).
ANCHOR_PATCHES_PER_S = 26.0
Forward = Callable[[Any], Any]


@dataclass
class Variant:
    """One way to run a network: ``forward`` takes a CUDA tensor, or None with the reason it cannot run here."""

    name: str
    forward: Forward | None
    reason: str = ""
    host_input: bool = False  # takes a host numpy array (ONNX Runtime) instead of a CUDA tensor
    exclusive: bool = False  # one caller at a time: a captured CUDA graph or a TensorRT context is not shared


def gpu_identity() -> dict[str, str]:
    import torch

    props = torch.cuda.get_device_properties(0)
    smi = shutil.which("nvidia-smi")
    driver = "unknown" if smi is None else subprocess.run(
        [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True,
        check=False).stdout.strip()
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": f"{props.total_memory / 2**30:.0f}", "driver": driver, "torch": torch.__version__,
            "cuda": str(torch.version.cuda), "cpu_cores": str(os.cpu_count()), "python": platform.python_version()}


def load_network(model: ModelRef, card: ModelCard) -> Any:
    # PyTorch is imported where a GPU run needs it, so the CPU machines (no torch in the project's venv) can
    # import the bench, test its report and read its section.
    import torch

    from models.glioma_unet.network import GliomaUNet

    checkpoint = CHECKPOINTS.get(model)
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = saved["config"]
        network = GliomaUNet(base=int(config["base"]), levels=int(config["levels"]),
                             in_channels=card.inputs[0].shape[1], out_channels=card.outputs[0].shape[1])
        network.load_state_dict(saved["state_dict"])
    else:
        network = GliomaUNet(in_channels=card.inputs[0].shape[1], out_channels=card.outputs[0].shape[1])
    return network.cuda().eval()


def variants(model: ModelRef, card: ModelCard, network: Any, no_compile: str | None) -> list[Variant]:
    """The ways to run ``network`` here; ``no_compile``: why torch.compile is left out (None: it is measured)."""
    import onnxruntime as ort
    import torch

    path = onnx_model_path(DEFAULT_MODEL_REPOSITORY, model)
    out: list[Variant] = []
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out.append(Variant(f"onnxruntime cpu ({os.cpu_count()} cores)",
                       lambda x: cpu.run(None, {card.inputs[0].name: x})[0], host_input=True))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        cuda = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        out.append(Variant("onnxruntime cuda", lambda x: cuda.run(None, {card.inputs[0].name: x})[0],
                           host_input=True))
    else:
        out.append(Variant("onnxruntime cuda", None, f"onnxruntime {ort.__version__} here has no CUDA provider "
                           "(onnxruntime-gpu is not installed)"))

    def autocast(dtype: Any) -> Forward:
        def run(x: Any) -> Any:
            with torch.autocast("cuda", dtype=dtype):
                return network(x)
        return run

    out += [Variant("pytorch fp32", network), Variant("pytorch fp16", autocast(torch.float16)),
            Variant("pytorch bf16", autocast(torch.bfloat16))]
    if no_compile is None:
        # CUDA graphs ("reduce-overhead") remove the launch cost of a small network's many kernels.
        out.append(Variant("pytorch fp16 compiled", torch.compile(autocast(torch.float16), mode="reduce-overhead"),
                           exclusive=True))
    else:
        out.append(Variant("pytorch fp16 compiled", None, no_compile))
    out.extend(tensorrt_variant(model, card, path, precision) for precision in ("fp16", "fp32"))
    return out


def tensorrt_variant(model: ModelRef, card: ModelCard, path: Path, precision: str) -> Variant:
    label = f"tensorrt {precision}"
    try:
        from models.triton.export_tensorrt import TensorRTRunner, build_engine, import_tensorrt

        import_tensorrt()
    except Exception as exc:  # the package is missing or cannot load its libraries
        return Variant(label, None, f"TensorRT cannot be loaded here: {exc}")
    runner = TensorRTRunner(build_engine(path, card, precision, STUDY_BATCH, 8, 4.0))
    name = card.inputs[0].name
    return Variant(label, lambda x: runner.run_torch({name: x})[card.outputs[0].name], exclusive=True)


def median_s(run: Callable[[], object], repeats: int) -> float:
    import torch

    run()  # warm-up: kernels chosen, graphs captured, memory allocated
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def per_patch(card: ModelCard, found: list[Variant], batches: list[int], repeats: int) -> dict[str, dict[str, Any]]:
    import torch

    figures: dict[str, dict[str, Any]] = {}
    for variant in found:
        if variant.forward is None:
            figures[variant.name] = {"reason": variant.reason}
            continue
        row: dict[str, Any] = {}
        try:
            for batch in batches:
                shape = (batch, card.inputs[0].shape[1], *card.patch_size)
                host = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                feed = host if variant.host_input else torch.from_numpy(host).cuda()
                with torch.inference_mode():
                    row[f"batch {batch} ms"] = 1000 * median_s(partial(variant.forward, feed), repeats)
        except Exception as exc:  # a compiler or runtime that fails here is a finding, not the end of the run
            variant.forward, variant.reason = None, f"failed here: {type(exc).__name__}: {str(exc)[:200]}"
            row = {"reason": variant.reason}
        figures[variant.name] = row
    return figures


class ForwardBackend(InferenceBackend):
    """The pipeline's inference interface over one ``Variant`` (host arrays in and out, as the stage sees them)."""

    def __init__(self, card: ModelCard, variant: Variant) -> None:
        self._card, self._variant = card, variant
        self._lock = threading.Lock()  # for an exclusive variant

    def card(self, model: ModelRef) -> ModelCard:
        return self._card

    def ready(self, model: ModelRef) -> bool:
        return self._variant.forward is not None

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        import torch

        assert self._variant.forward is not None
        (image,) = inputs.values()
        image = np.ascontiguousarray(image, dtype=np.float32)
        if self._variant.host_input:
            return {self._card.outputs[0].name: np.asarray(self._variant.forward(image), dtype=np.float32)}
        with torch.inference_mode():
            feed = torch.from_numpy(image).cuda(non_blocking=True)
            if self._variant.exclusive:
                with self._lock:
                    out = self._variant.forward(feed).float().cpu()
            else:
                out = self._variant.forward(feed).float().cpu()
        return {self._card.outputs[0].name: out.numpy()}


def study_stack() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """TCGA-DU-7294's four sequences (C, Z, Y, X), z-scored in the brain, and the brain mask: what the glioma stage
    receives (scripts/bench_triton.py reads the same files through SimpleITK; nibabel's axes are reversed)."""
    import nibabel as nib

    arrays = {role: np.asarray(nib.load(CASE / name).get_fdata(dtype=np.float32)).transpose(2, 1, 0)
              for role, name in CASE_FILES.items()}
    brain = arrays[SeriesRole.T1] > 0
    return np.stack([zscore_in_mask(arrays[role], brain) for role in CASE_FILES]), brain


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def per_study(model: ModelRef, card: ModelCard, found: list[Variant], repeats: int) -> dict[str, dict[str, Any]]:
    import torch

    stack, brain = study_stack()

    def run(backend: InferenceBackend) -> npt.NDArray[np.float32]:
        return predict_stack(stack, brain, backend, model, overlap=STUDY_OVERLAP, batch_size=STUDY_BATCH)

    figures: dict[str, dict[str, Any]] = {}
    reference: npt.NDArray[np.float32] | None = None
    for variant in found:
        if variant.forward is None:
            continue
        backend = ForwardBackend(card, variant)
        torch.cuda.reset_peak_memory_stats()
        try:
            probabilities = run(backend)  # warm-up, and the result compared
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                run(backend)
                times.append(time.perf_counter() - started)
        except Exception as exc:  # as in per_patch: recorded, and the other backends still measured
            figures[variant.name] = {"reason": f"failed here: {type(exc).__name__}: {str(exc)[:200]}"}
            continue
        row: dict[str, Any] = {"seconds": statistics.median(times),
                               "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20}
        if reference is None:  # the first variant is ONNX Runtime on the CPU: what the CPU deployment computes
            reference = probabilities
        else:
            row["max_abs_diff"] = float(np.abs(probabilities - reference).max())
            row["dice"] = {region.value: dice(probabilities[i] > 0.5, reference[i] > 0.5)
                           for i, region in enumerate(TUMOUR_REGIONS)}
        figures[variant.name] = row
    return figures


def throughput(model: ModelRef, backend: InferenceBackend, clients: list[int], studies: int) -> dict[int, float]:
    """Studies per hour with ``n`` threads each running ``studies`` studies' sliding windows on the one GPU."""
    stack, brain = study_stack()
    predict_stack(stack, brain, backend, model, overlap=STUDY_OVERLAP, batch_size=STUDY_BATCH)  # warm-up
    out = {}
    for n in clients:
        def client() -> None:
            for _ in range(studies):
                predict_stack(stack, brain, backend, model, overlap=STUDY_OVERLAP, batch_size=STUDY_BATCH)

        threads = [threading.Thread(target=client) for _ in range(n)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out[n] = 3600.0 * n * studies / (time.perf_counter() - started)
    return out


def section(results: dict[str, Any]) -> str:
    identity = results["identity"]
    lines = [
        SECTION, "",
        f"Written by `scripts/bench_gpu.py` ({results['written']}) on one **{identity['gpu']}** (compute capability "
        f"{identity['compute_capability']}, {identity['memory_gib']} GiB, driver {identity['driver']}; PyTorch "
        f"{identity['torch']}, CUDA {identity['cuda']}; {identity['cpu_cores']} CPU cores), all figures from that "
        "one run. The CPU rows are ONNX Runtime on that machine's cores, so the ratios compare the GPU with the "
        "same machine's CPU; this file's other sections were measured on a 2-core machine.",
    ]
    for name, figures in results["per_patch"].items():
        batches = sorted({k for row in figures.values() for k in row if k.endswith("ms")})
        reference = next(iter(figures.values()))
        lines += ["", f"**{name}, per patch** ({results['patch_size']}^3, median of {results['repeats']} batches, "
                  "ms; x = speed-up on the CPU row):", "",
                  "| backend | " + " | ".join(batches) + " | patches/s at batch 1 |",
                  "| --- | " + " | ".join("---:" for _ in batches) + " | ---: |"]
        for backend, row in figures.items():
            if "reason" in row:
                lines.append(f"| {backend} | not measured: {row['reason']} |" + " |" * len(batches))
                continue
            cells = [f"{row[b]:.2f} ({reference[b] / row[b]:.0f}x)" for b in batches]
            lines.append(f"| {backend} | " + " | ".join(cells) + f" | {1000 / row['batch 1 ms']:.0f} |")
    study = results["per_study"]
    cpu_name, cpu = next(iter(study.items()))
    lines += ["", f"**Glioma stage's sliding window per study** (TCGA-DU-7294, {results['patches_per_study']} "
              f"patches in batches of {STUDY_BATCH}, host to host, median of {results['study_repeats']}; agreement "
              f"with {cpu_name}'s probabilities):", "",
              "| backend | seconds | speed-up | GPU peak MiB | max abs diff | Dice WT / TC / ET |",
              "| --- | ---: | ---: | ---: | ---: | --- |"]
    for backend, row in study.items():
        if "reason" in row:
            lines.append(f"| {backend} | not measured: {row['reason']} | | | | |")
            continue
        agreement = ("reference", "") if "dice" not in row else (
            f"{row['max_abs_diff']:.1e}", " / ".join(f"{v:.4f}" for v in row["dice"].values()))
        lines.append(f"| {backend} | {row['seconds']:.2f} | {cpu['seconds'] / row['seconds']:.1f}x | "
                     f"{row['gpu_peak_mib']:.0f} | {agreement[0]} | {agreement[1]} |")
    backend = results["throughput_backend"]
    patch_row = next(iter(results["per_patch"].values()))[backend]
    network_s = math.ceil(results["patches_per_study"] / STUDY_BATCH) * patch_row[f"batch {STUDY_BATCH} ms"] / 1000
    lines += ["", f"Of {backend}'s {study[backend]['seconds']:.2f} s per study, the network itself takes about "
              f"{network_s:.2f} s ({math.ceil(results['patches_per_study'] / STUDY_BATCH)} batches at the per-patch "
              "rate above); the rest is host work (cutting the patches, copies to and from the GPU, the sigmoid and "
              "the Gaussian blending in NumPy), which is why concurrent clients raise the throughput below."]
    lines += ["", f"**Throughput**, {results['throughput_backend']} shared by concurrent clients on the one GPU: "
              + ", ".join(f"{n} client(s) {v:.0f} studies/h" for n, v in results["throughput"].items()) + ".", "",
              "**Triton** on this GPU, the same clients: " + (
                  ", ".join(f"{n} client(s) {v:.0f} studies/h" for n, v in results["triton_throughput"].items())
                  + "." if "triton_throughput" in results else
                  "not measured: no Triton server on this machine (`--triton-url`; the NGC image has one, the "
                  "lent machine does not, and the PyPI build is larger than what may be carried there)."), "",
              f"GPU model inference per study for the capacity model: {results['capacity_inference_s']:.2f} s "
              f"({results['throughput_backend']}, the per-study row above).", "",
              f"Published anchor: nnU-Net on Triton, A100, FP16, batch 1: {ANCHOR_PATCHES_PER_S:.0f} patches/s, for a "
              "network about 90 times larger on patches 2.4 times larger; the figures above say how much of the GPU "
              "our small network leaves idle, not that we out-run nnU-Net.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the section into this BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--study-repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--studies-per-client", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (a minute or two)")
    parser.add_argument("--triton-url", default=None,
                        help="gRPC host:port of a Triton serving the repository on this GPU: its throughput too")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: PyTorch sees no CUDA GPU here", file=sys.stderr)
        return EXIT_NO_GPU
    models = PipelineModels()
    glioma = models.glioma
    results: dict[str, Any] = {"identity": gpu_identity(), "repeats": args.repeats,
                               "study_repeats": args.study_repeats, "per_patch": {}}
    glioma_variants: list[Variant] = []
    for model in (glioma, models.metastases):
        card = load_model_card(DEFAULT_MODEL_REPOSITORY, model)
        no_compile = ("left out (--no-compile)" if args.no_compile else None if model == glioma else
                      "compiled for the served glioma network only: each compile takes a minute of the lent GPU")
        found = variants(model, card, load_network(model, card), no_compile)
        results["patch_size"] = card.patch_size[0]
        results["per_patch"][str(model)] = per_patch(card, found, args.batches, args.repeats)
        print(json.dumps(results["per_patch"][str(model)]), flush=True)
        if model == glioma:
            glioma_card, glioma_variants = card, found
    patches: list[int] = []
    predict_stack(*study_stack(), ForwardBackend(glioma_card, glioma_variants[0]), glioma,
                  overlap=STUDY_OVERLAP, batch_size=STUDY_BATCH, progress=lambda done, total: patches.append(total))
    results["patches_per_study"] = patches[-1]
    results["per_study"] = per_study(glioma, glioma_card, glioma_variants, args.study_repeats)
    print(json.dumps(results["per_study"]), flush=True)
    fp16 = next(v for v in glioma_variants if v.name == "pytorch fp16")
    results["throughput_backend"] = fp16.name
    results["throughput"] = throughput(glioma, ForwardBackend(glioma_card, fp16), args.clients,
                                       args.studies_per_client)
    if args.triton_url:  # a Triton on this GPU (the NGC image with neuroflow.core.triton_repository's repository)
        from neuroflow.core.inference_triton import TritonBackend  # needs tritonclient, which the rest does not

        triton = TritonBackend(args.triton_url, DEFAULT_MODEL_REPOSITORY, max_in_flight=4)
        results["triton_throughput"] = throughput(glioma, triton, args.clients, args.studies_per_client)
    results["capacity_inference_s"] = results["per_study"][fp16.name]["seconds"]
    results["written"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = section(results)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.out is not None:
        write_section(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
