"""Build the Triton model repository from models/repository (config.pbtxt generated from the model cards).

    python -m models.triton.build_repository --out build/triton-repository                # CPU variant
    python -m models.triton.build_repository --variant tensorrt --engines build/engines/h100 \\
        --out build/triton-repository-h100                                                 # one GPU type

The CPU variant serves each version's ONNX file through Triton's Python backend (the PyPI tritonserver
has no other backend on a CPU); the tensorrt variant serves the engines models/triton/export_tensorrt.py
built for one GPU type, and its repository.json records which GPU. Logic: neuroflow.core.triton_repository.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services"))

from neuroflow.core.triton_repository import RepositoryError, ServingOptions, build_repository  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", choices=("cpu", "tensorrt"), default="cpu")
    parser.add_argument("--engines", type=Path, default=None, help="engines of one GPU type (tensorrt variant)")
    parser.add_argument("--models", nargs="*", default=None, help="only these models (default: all)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--instances", type=int, default=1, help="model instances per device")
    args = parser.parse_args(argv)
    try:
        served = build_repository(args.source, args.out, args.variant, engines=args.engines, models=args.models,
                                  options=ServingOptions(max_batch_size=args.max_batch_size, instances=args.instances))
    except RepositoryError as exc:
        print(f"build_repository: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: " + ", ".join(str(m) for m in served))
    return 0


if __name__ == "__main__":
    sys.exit(main())
