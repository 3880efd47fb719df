"""Export a trained metastases U-Net checkpoint to ONNX for the model repository, and check it.

Writes ``models/repository/metastases_unet/<version>/model.onnx`` (opset 17): input ``image`` [batch, 2, P, P, P]
float32 (T1CE, FLAIR), output ``logits`` [batch, 1, P, P, P] float32, batch dynamic, P fixed (96: the sliding
window's patch). Refuses the export (exit 1, the served file untouched) when ONNX Runtime and PyTorch differ by
1e-3 or more (relative to the largest logit) on a random batch (``models.onnx_export``); the figures go to
``export.json`` beside the model.

    python -m models.metastases_unet.export --checkpoint build/metastases_unet/checkpoint.pt --version 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from models.glioma_unet.network import GliomaUNet
from models.onnx_export import export_checked
from neuroflow.core.roles import METASTASES_INPUT_ROLES

REPOSITORY = Path(__file__).resolve().parents[1] / "repository" / "metastases_unet"
PATCH_SIZE = 96
IN_CHANNELS = len(METASTASES_INPUT_ROLES)
OUT_CHANNELS = 1


def export(checkpoint: Path, version: int, patch: int, repository: Path = REPOSITORY) -> dict[str, object]:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = dict(saved["config"])
    model = GliomaUNet(int(config["base"]), int(config["levels"]), in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return export_checked(model, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, patch=patch,
                          target=repository / str(version) / "model.onnx", report={
                              "checkpoint": str(checkpoint), "version": version,
                              "iterations": int(saved.get("iterations_total", saved.get("iterations", 0))),
                              "weights": sum(p.numel() for p in model.parameters()), "training": config})


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
