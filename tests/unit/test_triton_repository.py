"""The Triton repository builder (neuroflow.core.triton_repository): config.pbtxt from the model cards,
the versions a site can pin, and the GPU each TensorRT engine was built for. That tritonserver accepts
what it writes is proven by tests/integration/test_triton_inference.py and the contract suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY
from neuroflow.core.model_card import ModelRef, load_model_card
from neuroflow.core.triton_repository import RepositoryError, ServingOptions, build_repository, config_pbtxt
from tests.servers.tiny_model import TINY, card_entry, write_model


def test_glioma_config_batches_patches_dynamically_on_the_cpu_python_backend() -> None:
    card = load_model_card(DEFAULT_MODEL_REPOSITORY, ModelRef(name="glioma_unet", version=1))

    config = config_pbtxt(card, [1], "cpu", ServingOptions(max_batch_size=4, instances=2))

    assert 'name: "glioma_unet"' in config
    assert 'backend: "python"' in config
    assert "max_batch_size: 4" in config
    assert '{ name: "image" data_type: TYPE_FP32 dims: [ 4, 96, 96, 96 ] }' in config
    assert '{ name: "logits" data_type: TYPE_FP32 dims: [ 3, 96, 96, 96 ] }' in config
    assert "preferred_batch_size: [ 2, 4 ]" in config  # 8 is over the maximum batch
    assert "instance_group [ { kind: KIND_CPU count: 2 } ]" in config
    assert "version_policy: { specific: { versions: [ 1 ] } }" in config


def test_the_tensorrt_variant_serves_an_engine_on_the_gpu_with_dynamic_spatial_axes_kept() -> None:
    card = load_model_card(DEFAULT_MODEL_REPOSITORY, ModelRef(name="deepbet", version=1))

    config = config_pbtxt(card, [1], "tensorrt", ServingOptions())

    assert 'platform: "tensorrt_plan"' in config
    assert "backend:" not in config
    assert "KIND_GPU" in config
    assert '{ name: "image" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] }' in config


def test_every_version_with_a_card_and_a_file_is_served_so_a_site_can_pin_an_old_one(tmp_path: Path) -> None:
    source = tmp_path / "models"
    write_model(source, TINY)
    write_model(source, ModelRef(name=TINY.name, version=2), with_card=False)
    write_model(source, ModelRef(name=TINY.name, version=3), with_card=False)  # a file the card does not describe
    (source / TINY.name / "model_card.yaml").write_text(yaml.safe_dump({"versions": [card_entry(1), card_entry(2)]}))

    served = build_repository(source, tmp_path / "triton")

    assert served == [TINY, ModelRef(name=TINY.name, version=2)]
    folder = tmp_path / "triton" / TINY.name
    assert "versions: [ 1, 2 ]" in (folder / "config.pbtxt").read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "config.pbtxt", "model_card.yaml"]
    assert sorted(p.name for p in (folder / "2").iterdir()) == ["model.onnx", "model.py"]
    record = json.loads((tmp_path / "triton" / "repository.json").read_text())
    assert record["variant"] == "cpu"
    assert record["models"][TINY.name]["versions"] == [1, 2]


def test_a_model_without_a_servable_version_is_refused_by_name(tmp_path: Path) -> None:
    source = tmp_path / "models"
    write_model(source, TINY)
    (source / TINY.name / "1" / "model.onnx").unlink()

    with pytest.raises(RepositoryError, match="model tiny_affine: no version with both a card and a model file"):
        build_repository(source, tmp_path / "triton")


def test_the_repository_records_which_gpu_each_engine_was_built_for(tmp_path: Path) -> None:
    source = tmp_path / "models"
    write_model(source, TINY)
    engines = tmp_path / "engines"
    (engines / TINY.name / "1").mkdir(parents=True)
    (engines / TINY.name / "1" / "model.plan").write_bytes(b"engine bytes")
    built_on = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "precision": "fp16",
                "tensorrt": "10.3.0"}
    (engines / TINY.name / "1" / "engine.json").write_text(json.dumps(built_on))

    with pytest.raises(RepositoryError, match="needs the folder of engines"):
        build_repository(source, tmp_path / "no-engines", "tensorrt")
    build_repository(source, tmp_path / "triton", "tensorrt", engines=engines)

    record = json.loads((tmp_path / "triton" / "repository.json").read_text())
    assert record["variant"] == "tensorrt"
    assert record["models"][TINY.name]["engines"]["1"]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert (tmp_path / "triton" / TINY.name / "1" / "model.plan").read_bytes() == b"engine bytes"
