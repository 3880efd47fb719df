"""Export a trained glioma U-Net checkpoint to ONNX for the model repository, and check it.

Writes ``models/repository/glioma_unet/<version>/model.onnx`` (opset 17, one self-contained file):
input ``image`` [batch, 4, P, P, P] float32, output ``logits`` [batch, 3, P, P, P] float32, the batch
axis dynamic and the patch size P fixed (96 by default; the sliding window feeds P^3 patches). Then
runs ONNX Runtime and PyTorch on the same random batch of two patches and refuses the export (exit 1,
the served file untouched) when their outputs differ by 1e-3 of the largest logit or more
(``models.onnx_export``). The figures are printed and written next to the model as ``export.json``.
``--repository`` writes a candidate elsewhere (its folder needs a ``model_card.yaml`` with an entry for the
version), to be scored with ``evaluate.py --repository`` before it is served.

    python -m models.glioma_unet.export --checkpoint build/glioma_unet/checkpoint.pt
    python -m models.glioma_unet.export --checkpoint build/glioma_unet_v5/checkpoint.pt --version 5 \
        --repository build/cand_glioma/glioma_unet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from models.glioma_unet.network import IN_CHANNELS, OUT_CHANNELS, GliomaUNet
from models.glioma_unet.train import KEEP_ONE_OF
from models.onnx_export import export_checked
from neuroflow.core.roles import GLIOMA_INPUT_ROLES

REPOSITORY = Path(__file__).resolve().parents[1] / "repository" / "glioma_unet"
PATCH_SIZE = 96


def export(checkpoint: Path, version: int, patch: int, repository: Path = REPOSITORY) -> dict[str, object]:
    """Export ``checkpoint`` as ``version`` and return the check's figures (raises on a mismatch)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = dict(saved["config"])
    if float(config.get("dropout", 0.0)) > 0 and "keep_one_of" not in config:
        # Chunks run before train.py recorded it kept the same roles (KEEP_ONE_OF has not changed).
        config["keep_one_of"] = [GLIOMA_INPUT_ROLES[i].value for i in KEEP_ONE_OF]
    model = GliomaUNet(base=int(config["base"]), levels=int(config["levels"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return export_checked(model, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, patch=patch,
                          target=repository / str(version) / "model.onnx",
                          report={"checkpoint": str(checkpoint), "version": version, "training": config})


def main() -> int:
    parser = argparse.ArgumentParser(description="Export the glioma U-Net to ONNX and check it.")
    parser.add_argument("--checkpoint", type=Path, default=Path("build/glioma_unet/checkpoint.pt"))
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--patch", type=int, default=PATCH_SIZE)
    parser.add_argument("--repository", type=Path, default=REPOSITORY,
                        help="the model's folder in a model repository (default: the project's; a candidate's "
                             "elsewhere, scored with evaluate.py --repository before it is served)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    try:
        report = export(args.checkpoint, args.version, args.patch, args.repository)
    except RuntimeError as exc:
        print(f"export refused: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.repository / str(args.version) / 'model.onnx'} ({report['size_bytes']} bytes); "
          f"max |ONNX Runtime - PyTorch| = {report['onnxruntime_vs_pytorch_max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
