"""Contract of neuroflow.core.inference.InferenceBackend, run against every backend.

Each test builds a model repository in a scratch folder — ``<repo>/<name>/<version>/model.onnx`` plus
``<repo>/<name>/model_card.yaml`` — holding a tiny ONNX model made with onnx.helper whose outputs are
known exactly. Adding a backend (Triton) is one entry in BACKENDS: a context manager that takes the
repository folder and yields a backend serving it (a Triton backend would also write config.pbtxt).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from neuroflow.core.errors import InferenceUnavailable
from neuroflow.core.inference import InferenceBackend, OnnxRuntimeBackend
from neuroflow.core.model_card import ModelRef

TINY = ModelRef(name="tiny_affine", version=1)
CHANNELS, SIDE = 2, 4


@contextlib.contextmanager
def onnx_runtime(repository: Path) -> Iterator[InferenceBackend]:
    yield OnnxRuntimeBackend(repository, intra_op_threads=1)


BACKENDS: list[object] = [pytest.param(onnx_runtime, id="onnxruntime")]


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


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_model(root, TINY)
    return root


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, repository: Path) -> Iterator[InferenceBackend]:
    factory: Callable[[Path], contextlib.AbstractContextManager[InferenceBackend]] = request.param
    with factory(repository) as under_test:
        yield under_test


def known_input(batch: int) -> np.ndarray:
    # Multiples of 1/8: every result below is exact in float32, so equality is asserted, not closeness.
    values = np.arange(batch * CHANNELS * SIDE**3, dtype=np.float32) / 8 - 10
    return values.reshape(batch, CHANNELS, SIDE, SIDE, SIDE)


def test_known_input_gives_the_known_result(backend: InferenceBackend) -> None:
    image = known_input(1)

    outputs = backend.infer(TINY, {"image": image})

    assert sorted(outputs) == ["channel_sum", "scaled"]
    assert outputs["scaled"].dtype == np.float32
    np.testing.assert_array_equal(outputs["scaled"], 2 * image + 1)
    np.testing.assert_array_equal(outputs["channel_sum"], image.sum(axis=1, keepdims=True))


def test_a_batch_of_three_gives_each_item_its_own_result(backend: InferenceBackend) -> None:
    batch = known_input(3)

    outputs = backend.infer(TINY, {"image": batch})

    assert outputs["scaled"].shape == (3, CHANNELS, SIDE, SIDE, SIDE)
    assert outputs["channel_sum"].shape == (3, 1, SIDE, SIDE, SIDE)
    for item in range(3):
        single = backend.infer(TINY, {"image": batch[item:item + 1]})
        np.testing.assert_array_equal(outputs["scaled"][item:item + 1], single["scaled"])
    np.testing.assert_array_equal(outputs["scaled"], 2 * batch + 1)


def test_a_present_model_is_ready_and_described_by_its_card(backend: InferenceBackend) -> None:
    assert backend.ready(TINY)
    card = backend.card(TINY)
    assert (card.name, card.version) == (TINY.name, TINY.version)
    assert [t.name for t in card.inputs] == ["image"]
    assert [t.name for t in card.outputs] == ["scaled", "channel_sum"]
    assert card.input_roles == ["T1", "FLAIR"]


MISSING_MODELS = [ModelRef(name="no_such_model", version=1), ModelRef(name=TINY.name, version=2)]


@pytest.mark.parametrize("missing", MISSING_MODELS, ids=str)
def test_a_missing_model_is_unavailable_with_a_clear_message_and_not_ready(
        backend: InferenceBackend, missing: ModelRef) -> None:
    assert backend.ready(missing) is False
    with pytest.raises(InferenceUnavailable, match=rf"model {missing.name}:{missing.version} not found"):
        backend.infer(missing, {"image": known_input(1)})


def test_a_model_without_a_model_card_is_unavailable(backend: InferenceBackend, repository: Path) -> None:
    uncarded = ModelRef(name="uncarded", version=1)
    write_model(repository, uncarded, with_card=False)
    with pytest.raises(InferenceUnavailable, match="uncarded:1: no model card"):
        backend.card(uncarded)


def test_a_version_the_card_does_not_describe_is_unavailable(
        backend: InferenceBackend, repository: Path) -> None:
    undescribed = ModelRef(name=TINY.name, version=3)
    write_model(repository, undescribed, with_card=False)  # model file present, card only describes version 1
    with pytest.raises(InferenceUnavailable, match="version 3 not described"):
        backend.card(undescribed)


def test_threads_sharing_the_backend_get_their_own_results(backend: InferenceBackend) -> None:
    inputs = [known_input(1) * (n + 1) for n in range(2)]
    results: dict[int, np.ndarray] = {}

    def run(n: int) -> None:
        for _ in range(20):
            results[n] = backend.infer(TINY, {"image": inputs[n]})["scaled"]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for n in range(2):
        np.testing.assert_array_equal(results[n], 2 * inputs[n] + 1)
