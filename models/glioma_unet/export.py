"""Export a trained glioma U-Net checkpoint to ONNX for the model repository, and check it.

Writes ``models/repository/glioma_unet/<version>/model.onnx`` (opset 17, one self-contained file):
input ``image`` [batch, 4, P, P, P] float32, output ``logits`` [batch, 3, P, P, P] float32, the batch
axis dynamic and the patch size P fixed (96 by default; the sliding window feeds P^3 patches). Then
runs ONNX Runtime and PyTorch on the same random batch of two patches and refuses the export (exit 1)
when their outputs differ by 1e-3 or more. The figures are printed and written next to the model as
``export.json``. ``--repository`` writes a candidate elsewhere (its folder needs a ``model_card.yaml`` with
an entry for the version), to be scored with ``evaluate.py --repository`` before it is served.

    python -m models.glioma_unet.export --checkpoint build/glioma_unet/checkpoint.pt
    python -m models.glioma_unet.export --checkpoint build/glioma_unet_v5/checkpoint.pt --version 5 \
        --repository build/cand_glioma/glioma_unet
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

from models.glioma_unet.network import IN_CHANNELS, OUT_CHANNELS, GliomaUNet
from models.glioma_unet.train import KEEP_ONE_OF
from neuroflow.core.roles import GLIOMA_INPUT_ROLES

REPOSITORY = Path(__file__).resolve().parents[1] / "repository" / "glioma_unet"
PATCH_SIZE = 96
OPSET = 17
TOLERANCE = 1e-3
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


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
    target = repository / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, IN_CHANNELS, patch, patch, patch)
    torch.onnx.export(
        model, (dummy,), str(target), opset_version=OPSET, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(target)))

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, IN_CHANNELS, patch, patch, patch, generator=generator)
    with torch.no_grad():
        expected = model(sample).numpy()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: sample.numpy()})
    if actual.shape != (2, OUT_CHANNELS, patch, patch, patch):
        raise RuntimeError(f"ONNX output shape {actual.shape} is not (2, {OUT_CHANNELS}, {patch}, ...)")
    max_diff = float(np.abs(actual - expected).max())
    report: dict[str, object] = {
        "checkpoint": str(checkpoint), "version": version, "opset": OPSET, "patch_size": patch,
        "input": {"name": INPUT_NAME, "shape": [-1, IN_CHANNELS, patch, patch, patch]},
        "output": {"name": OUTPUT_NAME, "shape": [-1, OUT_CHANNELS, patch, patch, patch]},
        "onnxruntime_vs_pytorch_max_abs_diff": max_diff, "tolerance": TOLERANCE,
        "size_bytes": target.stat().st_size, "onnxruntime": ort.__version__, "torch": torch.__version__,
        "training": config,
    }
    (target.parent / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    if not max_diff < TOLERANCE:
        raise RuntimeError(f"ONNX Runtime and PyTorch differ by {max_diff:.2e} >= {TOLERANCE}")
    return report


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
