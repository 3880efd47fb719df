"""Export a trained network to ONNX for the model repository, checked against PyTorch before it is served (the
glioma and metastases exports both call this; PyTorch is imported only here and by them).

The file is written beside its target and moved into place only when the check passes, so a refused export
leaves the served model as it was (an export written straight to ``<version>/model.onnx`` and refused
afterwards used to stay there, in the repository the pipeline loads)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

OPSET = 17
# Relative to the largest logit of the check's random batch: random input drives logits to tens, where float32
# rounding alone reaches 1e-3 absolute (glioma version 5's candidate: 1.2e-3 at logits of about 80).
TOLERANCE = 1e-3


def export_checked(model: torch.nn.Module, *, in_channels: int, out_channels: int, patch: int, target: Path,
                   report: dict[str, Any]) -> dict[str, Any]:
    """Write ``model`` (in eval mode) to ``target`` (opset 17; input ``image`` [batch, in_channels, P, P, P], output
    ``logits`` [batch, out_channels, P, P, P], batch dynamic), after ONNX Runtime and PyTorch agree on a random
    batch of two patches within :data:`TOLERANCE` of the largest logit. Returns ``report`` with the check's
    figures, also written as ``export.json`` beside the model; raises RuntimeError (nothing moved into place)
    when they disagree or the output has the wrong shape (a version folder it made is removed again)."""
    new_folder = not target.parent.exists()  # a version folder left empty would read as a broken version
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate = target.with_name(f".{target.name}.candidate")
    try:
        torch.onnx.export(model, (torch.zeros(1, in_channels, patch, patch, patch),), str(candidate),
                          opset_version=OPSET, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        onnx.checker.check_model(onnx.load(str(candidate)))
        sample = torch.randn(2, in_channels, patch, patch, patch, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = model(sample).numpy()
        session = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
        (actual,) = session.run(["logits"], {"image": sample.numpy()})
        if actual.shape != (2, out_channels, patch, patch, patch):
            raise RuntimeError(f"ONNX output shape {actual.shape} is not (2, {out_channels}, {patch}, ...)")
        max_diff = float(np.abs(actual - expected).max())
        scale = max(1.0, float(np.abs(expected).max()))
        if not max_diff / scale < TOLERANCE:
            raise RuntimeError(f"ONNX Runtime and PyTorch differ by {max_diff:.2e} (logits up to {scale:.1f}): "
                               f"over {TOLERANCE} relative")
        full = {**report, "opset": OPSET, "patch_size": patch,
                "input": {"name": "image", "shape": [-1, in_channels, patch, patch, patch]},
                "output": {"name": "logits", "shape": [-1, out_channels, patch, patch, patch]},
                "onnxruntime_vs_pytorch_max_abs_diff": max_diff, "logit_scale": scale, "tolerance_relative": TOLERANCE,
                "size_bytes": candidate.stat().st_size, "onnxruntime": ort.__version__, "torch": torch.__version__}
        os.replace(candidate, target)
    finally:
        candidate.unlink(missing_ok=True)
        if new_folder and not target.exists():
            target.parent.rmdir()
    (target.parent / "export.json").write_text(json.dumps(full, indent=2, default=str) + "\n")
    return full
