"""GPU benchmark of the inference tier, for a machine with an NVIDIA GPU: per model, PyTorch versus ONNX
Runtime (CUDA provider) versus TensorRT FP16, per patch and per study; then Triton throughput (studies
per hour per GPU) with several concurrent clients. Appends a section to BENCHMARKS.md naming the GPU.

Per patch: median time of one batch on the GPU (inputs already on the device for PyTorch and TensorRT;
ONNX Runtime includes its host copies, as the pipeline uses it). Per study: the glioma segmentation
stage's sliding window (neuroflow.segmentation.glioma.predict_regions) on TCGA-DU-7294, host to host.
PyTorch: glioma_unet is models/glioma_unet/network.py (weights from ``--checkpoint``, else random: the
time does not depend on the weights); deepbet is its TorchScript from ``--deepbet-dir`` (skipped without).
TensorRT: engines from ``--engines`` (models/triton/export_tensorrt.py), built here when absent.
Triton: ``--triton-url`` of a running server (GPU deployment: the NGC tritonserver with the TensorRT
repository of neuroflow.core.triton_repository), else the PyPI tritonserver started here with the Python
variant, whose ONNX Runtime uses the CUDA provider when installed (onnxruntime-gpu).

Needs torch with CUDA, tensorrt, onnxruntime(-gpu); stops with exit status 2 and a reason elsewhere::

    .venv/bin/python scripts/bench_gpu.py --engines build/engines --clients 1 2 4 --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.triton.export_tensorrt import (  # noqa: E402
    EXIT_NO_GPU,
    MissingGpu,
    TensorRTRunner,
    build_engine,
    gpu_identity,
    import_tensorrt,
    profile_shapes,
)
from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY  # noqa: E402
from neuroflow.core.inference import Array, InferenceBackend, OnnxRuntimeBackend  # noqa: E402
from neuroflow.core.inference_triton import TritonBackend  # noqa: E402
from neuroflow.core.model_card import ModelCard, ModelRef, load_model_card  # noqa: E402
from neuroflow.core.triton_repository import ServingOptions, build_repository  # noqa: E402
from neuroflow.devtools.triton_server import start_triton  # noqa: E402

MODELS = ("glioma_unet", "deepbet_bbox", "deepbet")
GLIOMA = ModelRef(name="glioma_unet", version=1)


def median_seconds(run: Callable[[], object], repeats: int, synchronise: Callable[[], None]) -> float:
    run()  # warm-up: kernels chosen, memory allocated
    synchronise()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronise()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class TensorRTBackend(InferenceBackend):
    """The pipeline's inference interface over in-process TensorRT engines (per-study timing)."""

    def __init__(self, runners: Mapping[ModelRef, TensorRTRunner]) -> None:
        self._runners = runners

    def card(self, model: ModelRef) -> ModelCard:
        return load_model_card(DEFAULT_MODEL_REPOSITORY, model)

    def ready(self, model: ModelRef) -> bool:
        return model in self._runners

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        return {k: v.astype(np.float32) for k, v in self._runners[model].run(dict(inputs)).items()}


class TorchBackend(InferenceBackend):
    """The pipeline's inference interface over a PyTorch module on the GPU (per-study timing)."""

    def __init__(self, module: Any, model: ModelRef, output: str) -> None:
        self._module, self._model, self._output = module, model, output

    def card(self, model: ModelRef) -> ModelCard:
        return load_model_card(DEFAULT_MODEL_REPOSITORY, model)

    def ready(self, model: ModelRef) -> bool:
        return model == self._model

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        import torch

        with torch.no_grad():
            (image,) = inputs.values()
            out = self._module(torch.from_numpy(np.ascontiguousarray(image)).cuda())
        return {self._output: out.float().cpu().numpy()}


def torch_module(name: str, args: argparse.Namespace) -> Any | None:
    import torch

    if name == "glioma_unet":
        from models.glioma_unet.network import GliomaUNet

        module = GliomaUNet()
        if args.checkpoint:
            state = torch.load(args.checkpoint, map_location="cpu")
            module.load_state_dict(state.get("model", state))  # a training checkpoint or a bare state dict
        return module.cuda().eval()
    if args.deepbet_dir is None:
        return None
    file = {"deepbet_bbox": "bbox_model.pt", "deepbet": "model.pt"}[name]
    return torch.jit.load(str(args.deepbet_dir / "data" / "models" / file), map_location="cuda").eval()


def per_patch(name: str, args: argparse.Namespace, engines: dict[ModelRef, TensorRTRunner]) -> dict[str, float]:
    import onnxruntime as ort
    import torch

    model = ModelRef(name=name, version=1)
    card = load_model_card(DEFAULT_MODEL_REPOSITORY, model)
    (input_name, (_, shape, _)), = profile_shapes(card, args.batch, args.batch).items()
    host = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    device = torch.from_numpy(host).cuda()
    sync = torch.cuda.synchronize
    figures: dict[str, float] = {}
    module = torch_module(name, args)
    if module is not None:
        with torch.no_grad():
            figures["pytorch fp32"] = median_seconds(lambda: module(device), args.repeats, sync)
            with torch.autocast("cuda", dtype=torch.float16):
                figures["pytorch fp16 (autocast)"] = median_seconds(lambda: module(device), args.repeats, sync)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        path = DEFAULT_MODEL_REPOSITORY / name / "1" / "model.onnx"
        session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        figures["onnxruntime cuda"] = median_seconds(lambda: session.run(None, {input_name: host}), args.repeats, sync)
    figures["tensorrt fp16"] = median_seconds(lambda: engines[model].run_torch({input_name: device}),
                                              args.repeats, sync)
    return figures


def engine_runners(args: argparse.Namespace) -> dict[ModelRef, TensorRTRunner]:
    runners = {}
    for name in MODELS:
        model = ModelRef(name=name, version=1)
        plan_path = args.engines / name / "1" / "model.plan"
        if plan_path.is_file():
            plan = plan_path.read_bytes()
        else:
            card = load_model_card(DEFAULT_MODEL_REPOSITORY, model)
            plan = build_engine(DEFAULT_MODEL_REPOSITORY / name / "1" / "model.onnx", card, "fp16",
                                args.batch, max(8, args.batch), 4.0)
        runners[model] = TensorRTRunner(plan)
    return runners


def study_seconds(backend: InferenceBackend, batch: int) -> float:
    from neuroflow.segmentation.glioma import predict_regions
    from scripts.bench_triton import study_inputs  # the same study and preparation as the CPU benchmark

    normalised, mask = study_inputs()
    predict_regions(normalised, mask, backend, GLIOMA, overlap=0.5, batch_size=batch, study_key="bench")
    started = time.perf_counter()
    predict_regions(normalised, mask, backend, GLIOMA, overlap=0.5, batch_size=batch, study_key="bench")
    return time.perf_counter() - started


def triton_throughput(url: str, clients: int, studies_per_client: int, batch: int) -> float:
    """Studies per hour with ``clients`` threads each segmenting ``studies_per_client`` studies at once."""
    from neuroflow.segmentation.glioma import predict_regions
    from scripts.bench_triton import study_inputs

    normalised, mask = study_inputs()
    backend = TritonBackend(url, DEFAULT_MODEL_REPOSITORY, max_in_flight=4)
    predict_regions(normalised, mask, backend, GLIOMA, overlap=0.5, batch_size=batch, study_key="warm-up")

    def client() -> None:
        for _ in range(studies_per_client):
            predict_regions(normalised, mask, backend, GLIOMA, overlap=0.5, batch_size=batch, study_key="bench")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 3600.0 * clients * studies_per_client / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--engines", type=Path, default=ROOT / "build" / "engines")
    parser.add_argument("--checkpoint", type=Path, default=None, help="glioma_unet PyTorch checkpoint (optional)")
    parser.add_argument("--deepbet-dir", type=Path, default=None, help="unpacked deepbet 1.0.2 wheel (optional)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--studies-per-client", type=int, default=3)
    parser.add_argument("--triton-url", default=None, help="a running Triton (else one is started here)")
    args = parser.parse_args()
    try:
        identity = gpu_identity()
        import_tensorrt()
        import torch
        if not torch.cuda.is_available():
            raise MissingGpu("torch sees no CUDA device")
    except (MissingGpu, ImportError) as exc:
        print(f"bench_gpu: {exc}", file=sys.stderr)
        return EXIT_NO_GPU

    engines = engine_runners(args)
    patches = {name: per_patch(name, args, engines) for name in MODELS}
    studies = {"tensorrt fp16": study_seconds(TensorRTBackend(engines), args.batch),
               "onnxruntime (cuda when installed)": study_seconds(
                   OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY), args.batch)}
    glioma_torch = torch_module("glioma_unet", args)
    studies["pytorch fp32"] = study_seconds(TorchBackend(glioma_torch, GLIOMA, "logits"), args.batch)
    server = None
    url = args.triton_url
    if url is None:
        work = Path(tempfile.mkdtemp(prefix="neuroflow-bench-gpu-"))
        build_repository(DEFAULT_MODEL_REPOSITORY, work / "repository", "cpu", models=[GLIOMA.name],
                         options=ServingOptions(max_batch_size=max(8, args.batch), instances=2))
        server = start_triton(work / "repository", work / "tritonserver.log")
        url = server.grpc_url
    try:
        throughput = {c: triton_throughput(url, c, args.studies_per_client, args.batch) for c in args.clients}
    finally:
        if server is not None:
            server.stop()

    columns = sorted({k for figures in patches.values() for k in figures})
    lines = [
        "",
        f"## Inference tier on GPU: {identity['gpu']} (compute capability {identity['compute_capability']}, "
        f"driver {identity['driver']})",
        "",
        f"Written by `scripts/bench_gpu.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Per patch: "
        f"median of {args.repeats} batches of {args.batch}, ms.",
        "",
        "| model | " + " | ".join(columns) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
        *(f"| {name} | " + " | ".join(f"{1000 * figures[c]:.1f}" if c in figures else "-" for c in columns) + " |"
          for name, figures in patches.items()),
        "",
        "Per study (glioma segmentation stage, TCGA-DU-7294): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in studies.items()) + ".",
        "",
        f"Triton ({'given server ' + args.triton_url if args.triton_url else 'PyPI tritonserver, Python variant'}),"
        " glioma segmentation stage per study, studies per hour on this one GPU: "
        + ", ".join(f"{c} client(s) {v:.0f}" for c, v in throughput.items()) + ".",
        "Published reference: nnU-Net on Triton, A100 FP16, 26 patches/s at batch 1 and 48.8 at batch 4.",
        "",
    ]
    with args.out.open("a") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
