"""Build a TensorRT engine from a model's ONNX file, for one GPU type, and record which.

Reads ``models/repository/<name>/<version>/model.onnx`` and its model card, builds an engine (FP16 or
FP32) with an optimisation profile from the card (batch 1 to ``--max-batch``, optimum ``--opt-batch``;
dynamic spatial axes fixed to the card's ``patch_size``), and writes::

    <out>/<name>/<version>/model.plan     the serialised engine (Triton's tensorrt_plan platform)
    <out>/<name>/<version>/engine.json    GPU name, compute capability, precision, TensorRT version,
                                          profile, SHA-256 of the ONNX file, and the check below

An engine runs only on the GPU type (compute capability) and TensorRT version it was built with, so each
GPU type gets its own folder of engines; neuroflow.core.triton_repository copies engine.json into the
Triton repository's repository.json, which therefore says which GPU every engine is for.

Check: the engine and ONNX Runtime (CPU) run the same random batch; the largest difference is recorded,
and the build is refused (exit 1) above ``--tolerance`` (default 1e-2 for FP16, 1e-3 for FP32).

Runs where an NVIDIA GPU and the ``tensorrt`` Python package (with ``torch`` for the check's GPU
buffers) are present; anywhere else it stops at once with exit status 2 and says what is missing::

    python -m models.triton.export_tensorrt --model glioma_unet --version 1 --precision fp16 --out build/engines
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services"))

from neuroflow.core.model_card import ModelCard, ModelRef, load_model_card  # noqa: E402

EXIT_NO_GPU = 2
DEFAULT_TOLERANCE = {"fp16": 1e-2, "fp32": 1e-3}


class MissingGpu(RuntimeError):
    """No NVIDIA GPU, or no tensorrt package: engines cannot be built here."""


def gpu_identity() -> dict[str, str]:
    """Name, compute capability and driver of GPU 0, from nvidia-smi; MissingGpu when there is none."""
    if shutil.which("nvidia-smi") is None:
        raise MissingGpu("no NVIDIA GPU here (nvidia-smi not found): build engines on the GPU type that "
                         "will serve them")
    answer = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, check=False, timeout=30)
    if answer.returncode != 0 or not answer.stdout.strip():
        raise MissingGpu(f"nvidia-smi found no usable GPU: {answer.stderr.strip() or answer.stdout.strip()}")
    name, capability, driver = (part.strip() for part in answer.stdout.splitlines()[0].split(","))
    return {"gpu": name, "compute_capability": capability, "driver": driver}


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingGpu("the tensorrt Python package is not installed (pip install tensorrt)") from exc
    return tensorrt


Shapes = dict[str, tuple[list[int], list[int], list[int]]]


def profile_shapes(card: ModelCard, opt_batch: int, max_batch: int) -> Shapes:
    """(min, opt, max) shape of each input: the batch axis 1/opt/max, other dynamic axes the patch size."""
    shapes = {}
    for tensor in card.inputs:
        fixed = list(tensor.shape)
        spatial = iter(card.patch_size)
        for axis in range(1, len(fixed)):
            if fixed[axis] == -1:
                size = next(spatial, None) if axis >= len(fixed) - len(card.patch_size) else None
                if size is None:
                    raise ValueError(f"model {card.name}: input {tensor.name} axis {axis} is dynamic and the card "
                                     "gives no patch size for it")
                fixed[axis] = size
        batched = fixed[0] == -1
        shapes[tensor.name] = ([1 if batched else fixed[0], *fixed[1:]],
                               [opt_batch if batched else fixed[0], *fixed[1:]],
                               [max_batch if batched else fixed[0], *fixed[1:]])
    return shapes


def build_engine(onnx_path: Path, card: ModelCard, precision: str, opt_batch: int, max_batch: int,
                 workspace_gib: float) -> bytes:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # implicit in TensorRT 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(card, opt_batch, max_batch).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialised = builder.build_serialized_network(network, config)
    if serialised is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    return bytes(serialised)


class TensorRTRunner:
    """Runs a serialised engine on GPU 0 with torch's CUDA buffers (used by the check and scripts/bench_gpu.py)."""

    def __init__(self, plan: bytes) -> None:
        import torch

        trt = import_tensorrt()
        self._torch = torch
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def run_torch(self, feed: dict[str, Any]) -> dict[str, Any]:
        """Inputs and outputs as CUDA tensors (no host copies: what the per-patch timing measures)."""
        torch = self._torch
        for name, tensor in feed.items():
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self._context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return outputs

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        gpu = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).cuda() for k, v in feed.items()}
        return {k: v.float().cpu().numpy() for k, v in self.run_torch(gpu).items()}


def check_against_onnx_runtime(plan: bytes, onnx_path: Path, card: ModelCard, batch: int) -> float:
    import onnxruntime as ort

    shapes = profile_shapes(card, batch, batch)
    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal(opt).astype(np.float32) for name, (_, opt, _) in shapes.items()}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    got = TensorRTRunner(plan).run(feed)
    return max(float(np.abs(got[name] - expected[name]).max()) for name in expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--out", type=Path, required=True, help="folder of engines for this GPU type")
    parser.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--opt-batch", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--workspace-gib", type=float, default=4.0)
    parser.add_argument("--tolerance", type=float, default=None)
    args = parser.parse_args(argv)
    model = ModelRef(name=args.model, version=args.version)
    card = load_model_card(args.repository, model)
    onnx_path = args.repository / model.name / str(model.version) / "model.onnx"
    if not onnx_path.is_file():
        parser.error(f"model {model}: no ONNX file {onnx_path}")
    try:
        identity = gpu_identity()
        trt = import_tensorrt()
    except MissingGpu as exc:
        print(f"export_tensorrt: {exc}", file=sys.stderr)
        return EXIT_NO_GPU
    plan = build_engine(onnx_path, card, args.precision, args.opt_batch, args.max_batch, args.workspace_gib)
    difference = check_against_onnx_runtime(plan, onnx_path, card, min(2, args.max_batch))
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE[args.precision]
    print(f"{model} {args.precision} on {identity['gpu']}: max |TensorRT - ONNX Runtime| = {difference:.2e}")
    if difference > tolerance:
        print(f"export_tensorrt: refused, the difference exceeds {tolerance:g}", file=sys.stderr)
        return 1
    folder = args.out / model.name / str(model.version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.plan").write_bytes(plan)
    record = {
        **identity, "precision": args.precision, "tensorrt": trt.__version__,
        "profile": {k: {"min": v[0], "opt": v[1], "max": v[2]}
                    for k, v in profile_shapes(card, args.opt_batch, args.max_batch).items()},
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "max_abs_diff_vs_onnxruntime": difference,
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    (folder / "engine.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {folder / 'model.plan'} and engine.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
