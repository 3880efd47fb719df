"""Export a trained metastases U-Net checkpoint to ONNX for the model repository, and check it.

Writes ``models/repository/metastases_unet/<version>/model.onnx`` (opset 17): input ``image`` [batch, 2, P, P, P]
float32 (T1CE, FLAIR), output ``logits`` [batch, 1, P, P, P] float32, batch dynamic, P fixed (96: the sliding
window's patch). Refuses the export (exit 1) when ONNX Runtime and PyTorch differ by 1e-3 or more (relative to
the largest logit) on a random batch; the figures go to ``export.json`` beside the model.

    python -m models.metastases_unet.export --checkpoint build/metastases_unet/checkpoint.pt --version 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models.glioma_unet.network import GliomaUNet
from neuroflow.core.roles import METASTASES_INPUT_ROLES

REPOSITORY = Path(__file__).resolve().parents[1] / "repository" / "metastases_unet"
PATCH_SIZE = 96
OPSET = 17
TOLERANCE = 1e-3
IN_CHANNELS = len(METASTASES_INPUT_ROLES)
OUT_CHANNELS = 1


def export(checkpoint: Path, version: int, patch: int, repository: Path = REPOSITORY) -> dict[str, object]:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = dict(saved["config"])
    model = GliomaUNet(int(config["base"]), int(config["levels"]), in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    target = repository / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(1, IN_CHANNELS, patch, patch, patch),), str(target), opset_version=OPSET,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    onnx.checker.check_model(onnx.load(str(target)))
    sample = torch.randn(2, IN_CHANNELS, patch, patch, patch, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(sample).numpy()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["logits"], {"image": sample.numpy()})
    max_diff = float(np.abs(actual - expected).max())
    # Relative to the logits' scale: random input drives them to tens, where float32 rounding alone is 1e-3.
    scale = max(1.0, float(np.abs(expected).max()))
    report: dict[str, object] = {
        "checkpoint": str(checkpoint), "version": version, "opset": OPSET, "patch_size": patch,
        "iterations": int(saved.get("iterations_total", saved.get("iterations", 0))),
        "weights": sum(p.numel() for p in model.parameters()),
        "onnxruntime_vs_pytorch_max_abs_diff": max_diff, "logit_scale": scale, "tolerance_relative": TOLERANCE,
        "size_bytes": target.stat().st_size,
        "onnxruntime": ort.__version__, "torch": torch.__version__, "training": config}
    (target.parent / "export.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not max_diff / scale < TOLERANCE:
        raise RuntimeError(f"ONNX Runtime and PyTorch differ by {max_diff:.2e} (logits up to {scale:.1f}): "
                           f"over {TOLERANCE} relative")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description="Export the metastases U-Net to ONNX and check it.")
    parser.add_argument("--checkpoint", type=Path, default=Path("build/metastases_unet/checkpoint.pt"))
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--patch", type=int, default=PATCH_SIZE)
    parser.add_argument("--repository", type=Path, default=REPOSITORY,
                        help="the model's folder in a model repository (default: the project's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        report = export(args.checkpoint, args.version, args.patch, args.repository)
    except RuntimeError as exc:
        print(f"export refused: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.repository / str(args.version) / 'model.onnx'} ({report['size_bytes']} bytes, "
          f"{report['iterations']} iterations); max |ONNX Runtime - PyTorch| = "
          f"{report['onnxruntime_vs_pytorch_max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
