"""Contract of neuroflow.core.inference.InferenceBackend, run against every backend.

Each test builds a model repository in a scratch folder — ``<repo>/<name>/<version>/model.onnx`` plus
``<repo>/<name>/model_card.yaml`` — holding a tiny ONNX model whose outputs are known exactly
(tests/servers/tiny_model.py). Each entry in BACKENDS is a context manager that takes the repository
folder and yields a backend serving it: ONNX Runtime in-process, and the session's real tritonserver
(tests/servers/triton.py), which serves the same tiny model from a Triton repository built from the
same files; its model cards are read from the test's repository.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from neuroflow.core.errors import InferenceUnavailable
from neuroflow.core.inference import InferenceBackend, OnnxRuntimeBackend
from neuroflow.core.inference_triton import TritonBackend
from neuroflow.core.model_card import ModelRef
from tests.servers.tiny_model import CHANNELS, SIDE, TINY, write_model
from tests.servers.triton import TritonServer

Factory = Callable[[Path, pytest.FixtureRequest], contextlib.AbstractContextManager[InferenceBackend]]


@contextlib.contextmanager
def onnx_runtime(repository: Path, request: pytest.FixtureRequest) -> Iterator[InferenceBackend]:
    yield OnnxRuntimeBackend(repository, intra_op_threads=1)


@contextlib.contextmanager
def triton(repository: Path, request: pytest.FixtureRequest) -> Iterator[InferenceBackend]:
    server: TritonServer = request.getfixturevalue("triton_server")
    yield TritonBackend(server.url, repository, timeout_s=30, retries=1, retry_wait_s=0.1)


BACKENDS: list[object] = [pytest.param(onnx_runtime, id="onnxruntime"), pytest.param(triton, id="triton")]


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_model(root, TINY)
    return root


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, repository: Path) -> Iterator[InferenceBackend]:
    factory: Factory = request.param
    with factory(repository, request) as under_test:
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
