"""The TensorRT export script's own logic (models/triton/export_tensorrt.py): the optimisation profile it
derives from a model card, and that where no GPU is present it stops at once with a reason (exit 2)
instead of failing half-way. Building an engine needs a GPU and is run there (BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.triton.export_tensorrt import EXIT_NO_GPU, main, profile_shapes
from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY
from neuroflow.core.model_card import ModelRef, load_model_card


def test_the_profile_spans_batch_one_to_the_maximum_for_the_glioma_patches() -> None:
    card = load_model_card(DEFAULT_MODEL_REPOSITORY, ModelRef(name="glioma_unet", version=1))

    assert profile_shapes(card, 4, 8) == {"image": ([1, 4, 96, 96, 96], [4, 4, 96, 96, 96], [8, 4, 96, 96, 96])}


def test_dynamic_spatial_axes_are_fixed_to_the_cards_working_size() -> None:
    card = load_model_card(DEFAULT_MODEL_REPOSITORY, ModelRef(name="deepbet", version=1))

    low, opt, high = profile_shapes(card, 1, 2)["image"]

    assert (low, opt, high) == ([1, 1, 256, 256, 256], [1, 1, 256, 256, 256], [2, 1, 256, 256, 256])


def test_without_a_gpu_the_export_stops_at_once_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi on the PATH: a machine without a GPU

    status = main(["--model", "glioma_unet", "--version", "1", "--out", str(tmp_path / "engines")])

    assert status == EXIT_NO_GPU
    assert "no NVIDIA GPU here" in capsys.readouterr().err
    assert not (tmp_path / "engines").exists()
