"""The checked ONNX export (models/onnx_export.py): an accepted export lands with its figures; a refused one
leaves the served model as it was and no file or empty version folder behind. Needs PyTorch (training only), so
it is skipped with its reason where PyTorch is not installed (CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="exporting a network needs PyTorch (training only)")
onnx_export = pytest.importorskip("models.onnx_export")


def _network() -> object:
    torch.manual_seed(0)
    return torch.nn.Conv3d(2, 1, kernel_size=3, padding=1).eval()


def test_an_accepted_export_lands_with_its_figures(tmp_path: Path) -> None:
    target = tmp_path / "net" / "3" / "model.onnx"
    report = onnx_export.export_checked(_network(), in_channels=2, out_channels=1, patch=8, target=target,
                                        report={"version": 3})
    assert target.is_file()
    written = json.loads((target.parent / "export.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["version"] == 3 and written["input"]["shape"] == [-1, 2, 8, 8, 8]
    assert written["onnxruntime_vs_pytorch_max_abs_diff"] < onnx_export.TOLERANCE * written["logit_scale"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["export.json", "model.onnx"]


def test_a_refused_export_leaves_the_served_model_and_no_trace(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "net" / "3" / "model.onnx"
    served.parent.mkdir(parents=True)
    served.write_bytes(b"the served model")
    monkeypatch.setattr(onnx_export, "TOLERANCE", 0.0)  # no difference passes: every export is refused
    with pytest.raises(RuntimeError, match="differ by"):
        onnx_export.export_checked(_network(), in_channels=2, out_channels=1, patch=8, target=served, report={})
    assert served.read_bytes() == b"the served model"
    assert [p.name for p in served.parent.iterdir()] == ["model.onnx"]
    fresh = tmp_path / "net" / "4" / "model.onnx"
    with pytest.raises(RuntimeError, match="differ by"):
        onnx_export.export_checked(_network(), in_channels=2, out_channels=1, patch=8, target=fresh, report={})
    assert not fresh.parent.exists()
