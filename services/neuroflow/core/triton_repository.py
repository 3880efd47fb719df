"""Triton model repository built from our model repository (``models/repository``): the model cards stay
the one description of each model; ``config.pbtxt`` is generated from them, never written by hand.

Two variants of the same models, served with the same names, tensors and versions, so clients cannot
tell them apart:

* ``cpu``: each version is a Python-backend model (models/triton/python_backend/model.py) running the
  version's ``model.onnx`` with ONNX Runtime -- the only backend the PyPI tritonserver has on a CPU.
* ``tensorrt``: each version is a TensorRT engine ``model.plan`` built for one GPU type by
  models/triton/export_tensorrt.py; the engine's ``engine.json`` (GPU, precision, TensorRT version) is
  copied beside it and summarised in the repository's ``repository.json``.

Layout written::

    <target>/repository.json                 variant, models, versions, engine GPUs
    <target>/<name>/config.pbtxt             generated from the newest served version's card
    <target>/<name>/model_card.yaml          copied: the card travels with the model
    <target>/<name>/<version>/model.py + model.onnx      (cpu)
    <target>/<name>/<version>/model.plan + engine.json   (tensorrt)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from neuroflow.core.model_card import ModelCard, ModelRef, TensorSpec, load_model_card

Variant = Literal["cpu", "tensorrt"]
PYTHON_BACKEND_MODEL = Path(__file__).resolve().parents[3] / "models" / "triton" / "python_backend" / "model.py"
# Card dtype -> Triton's data type name (config.pbtxt TYPE_*, and the client's "FP32").
TRITON_DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "uint8": "UINT8"}


class RepositoryError(ValueError):
    """The source repository cannot be turned into a Triton repository; the message says which model and why."""


@dataclass(frozen=True)
class ServingOptions:
    """How Triton schedules a model. Dynamic batching joins concurrent clients' patches into one batch of
    at most ``max_batch_size``, waiting at most ``max_queue_delay_us`` for a batch to fill."""

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (2, 4, 8)
    max_queue_delay_us: int = 2000
    instances: int = 1  # model instances per device (CPU: processes of the Python backend)
    intra_op_threads: int = 0  # cpu variant: ONNX Runtime threads per instance, 0 = ONNX Runtime's default


def config_pbtxt(card: ModelCard, versions: list[int], variant: Variant, options: ServingOptions) -> str:
    """config.pbtxt of ``card``'s model serving ``versions``. A card whose tensors all have a dynamic
    first axis (-1) is batched by Triton (``max_batch_size`` > 0, dims without that axis)."""
    batched = all(t.shape and t.shape[0] == -1 for t in [*card.inputs, *card.outputs])
    max_batch = options.max_batch_size if batched else 0
    lines = [f'name: "{card.name}"']
    if variant == "cpu":
        lines.append('backend: "python"')
    else:
        lines.append('platform: "tensorrt_plan"')
    lines.append(f"max_batch_size: {max_batch}")
    lines += _tensors("input", card.inputs, batched)
    lines += _tensors("output", card.outputs, batched)
    if batched:
        preferred = ", ".join(str(b) for b in options.preferred_batch_sizes if b <= max_batch)
        lines.append("dynamic_batching {")
        if preferred:
            lines.append(f"  preferred_batch_size: [ {preferred} ]")
        lines.append(f"  max_queue_delay_microseconds: {options.max_queue_delay_us}")
        lines.append("}")
    kind = "KIND_CPU" if variant == "cpu" else "KIND_GPU"
    lines.append(f"instance_group [ {{ kind: {kind} count: {options.instances} }} ]")
    # Serve exactly the versions present: a site pins one of them (NEUROFLOW_MODELS__...), and an old
    # pinned version stays loaded after a newer one is added.
    lines.append(f"version_policy: {{ specific: {{ versions: [ {', '.join(str(v) for v in sorted(versions))} ] }} }}")
    if variant == "cpu":
        lines.append('parameters: { key: "intra_op_threads" value: { string_value: "'
                     f'{options.intra_op_threads}" }} }}')
    return "\n".join(lines) + "\n"


def _tensors(kind: str, tensors: list[TensorSpec], batched: bool) -> list[str]:
    lines = [f"{kind} ["]
    for n, tensor in enumerate(tensors):
        if tensor.dtype not in TRITON_DTYPES:
            raise RepositoryError(f"tensor {tensor.name}: dtype {tensor.dtype} has no Triton type")
        dims = tensor.shape[1:] if batched else tensor.shape
        comma = "," if n < len(tensors) - 1 else ""
        lines.append(f'  {{ name: "{tensor.name}" data_type: TYPE_{TRITON_DTYPES[tensor.dtype]} '
                     f"dims: [ {', '.join(str(d) for d in dims)} ] }}{comma}")
    lines.append("]")
    return lines


def build_repository(source: Path, target: Path, variant: Variant = "cpu", *,
                     options: ServingOptions | None = None, engines: Path | None = None,
                     models: list[str] | None = None) -> list[ModelRef]:
    """Write the Triton repository of every model in ``source`` (or only ``models``) to ``target`` and
    return what it serves. A version is served when its card describes it and its file is present:
    ``source/<name>/<v>/model.onnx`` (cpu) or ``engines/<name>/<v>/model.plan`` (tensorrt). Model
    folders already in ``target`` are replaced. RepositoryError when a requested model has no servable
    version, or its versions disagree on tensor names (one config.pbtxt describes them all)."""
    options = options or ServingOptions()
    if variant == "tensorrt" and engines is None:
        raise RepositoryError("the tensorrt variant needs the folder of engines built by export_tensorrt.py")
    names = models or sorted(p.parent.name for p in source.glob("*/model_card.yaml"))
    served: list[ModelRef] = []
    record: dict[str, object] = {"variant": variant, "source": str(source.resolve()), "models": {}}
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        cards = _servable_cards(source, name, variant, engines)
        if not cards:
            where = source if variant == "cpu" else engines
            raise RepositoryError(f"model {name}: no version with both a card and a model file under {where}")
        newest = cards[-1]
        for card in cards[:-1]:
            if _tensor_names(card) != _tensor_names(newest):
                raise RepositoryError(f"model {name}: version {card.version} and {newest.version} have different "
                                      "tensors; serve them as separate models")
        folder = target / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copy2(source / name / "model_card.yaml", folder / "model_card.yaml")
        versions = [card.version for card in cards]
        (folder / "config.pbtxt").write_text(config_pbtxt(newest, versions, variant, options))
        gpus: dict[str, object] = {}
        for version in versions:
            (folder / str(version)).mkdir()
            if variant == "cpu":
                _link_or_copy(source / name / str(version) / "model.onnx", folder / str(version) / "model.onnx")
                shutil.copy2(PYTHON_BACKEND_MODEL, folder / str(version) / "model.py")
            else:
                assert engines is not None
                engine = engines / name / str(version)
                shutil.copy2(engine / "model.plan", folder / str(version) / "model.plan")
                shutil.copy2(engine / "engine.json", folder / str(version) / "engine.json")
                gpus[str(version)] = json.loads((engine / "engine.json").read_text())
            served.append(ModelRef(name=name, version=version))
        record["models"][name] = {"versions": versions, **({"engines": gpus} if gpus else {})}  # type: ignore[index]
    (target / "repository.json").write_text(json.dumps(record, indent=2) + "\n")
    return served


def _servable_cards(source: Path, name: str, variant: Variant, engines: Path | None) -> list[ModelCard]:
    card_file = source / name / "model_card.yaml"
    if not card_file.is_file():
        raise RepositoryError(f"model {name}: no model card at {card_file}")
    entries = yaml.safe_load(card_file.read_text()).get("versions", [])
    cards = []
    for version in sorted(int(entry["version"]) for entry in entries):
        present = (source / name / str(version) / "model.onnx" if variant == "cpu"
                   else (engines or source) / name / str(version) / "model.plan")
        if present.is_file():
            cards.append(load_model_card(source, ModelRef(name=name, version=version)))
    return cards


def _tensor_names(card: ModelCard) -> tuple[list[str], list[str]]:
    return [t.name for t in card.inputs], [t.name for t in card.outputs]


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link costs no space; across file systems it cannot be made, and a copy is the fallback.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
