"""The inference contract suite's tiny model: ``<repo>/<name>/<version>/model.onnx`` plus
``<repo>/<name>/model_card.yaml``, made with onnx.helper so that its outputs are known exactly. Shared by
the contract suite (tests/contract/test_inference_contract.py) and the session's Triton (tests/servers/triton.py),
which serves it."""

from __future__ import annotations

from pathlib import Path

import onnx
import yaml
from onnx import TensorProto, helper

from neuroflow.core.model_card import ModelRef

TINY = ModelRef(name="tiny_affine", version=1)
CHANNELS, SIDE = 2, 4


def tiny_model() -> onnx.ModelProto:
    """``scaled = 2 * image + 1`` and ``channel_sum = sum over channels of image`` on a dynamic batch."""
    shape: list[int | str] = ["batch", CHANNELS, SIDE, SIDE, SIDE]
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Mul", ["image", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["scaled"]),
            helper.make_node("ReduceSum", ["image", "channel_axis"], ["channel_sum"], keepdims=1),
        ],
        name="tiny_affine",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        outputs=[
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("channel_sum", TensorProto.FLOAT, ["batch", 1, SIDE, SIDE, SIDE]),
        ],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("channel_axis", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def card_entry(version: int) -> dict[str, object]:
    return {
        "version": version,
        "task": "test: affine map and channel sum",
        "input_roles": ["T1", "FLAIR"],
        "inputs": [{"name": "image", "shape": [-1, CHANNELS, SIDE, SIDE, SIDE]}],
        "outputs": [{"name": "scaled", "shape": [-1, CHANNELS, SIDE, SIDE, SIDE]},
                    {"name": "channel_sum", "shape": [-1, 1, SIDE, SIDE, SIDE]}],
        "labels": ["scaled_t1", "scaled_flair"],
        "output_activation": "none",
        "license": "Apache-2.0",
    }


def write_model(repository: Path, model: ModelRef, *, with_card: bool = True) -> None:
    folder = repository / model.name
    (folder / str(model.version)).mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_model(), folder / str(model.version) / "model.onnx")
    if with_card:
        (folder / "model_card.yaml").write_text(yaml.safe_dump({"versions": [card_entry(model.version)]}))
