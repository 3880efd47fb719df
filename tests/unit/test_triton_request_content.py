"""What the shared GPU tier receives from a site: the tensors of a request, and no identifier (no request
id, headers or parameters that Triton would log or trace). The client is replaced by a recorder here, since
what is checked is what our code hands to tritonclient; tests/integration/test_triton_inference.py runs
the same calls against a real Triton."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY
from neuroflow.core.inference_triton import TritonBackend
from neuroflow.core.model_card import ModelRef


class _Result:
    def as_numpy(self, name: str) -> Any:
        return np.zeros((1, 2, 4, 4, 4), dtype=np.float32)


class _RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def infer(self, *args: Any, **kwargs: Any) -> _Result:
        self.calls.append((args, kwargs))
        return _Result()


def test_a_triton_request_carries_tensors_and_no_identifier() -> None:
    backend = TritonBackend("127.0.0.1:1", DEFAULT_MODEL_REPOSITORY)
    recorder = _RecordingClient()

    @contextlib.contextmanager
    def client() -> Iterator[_RecordingClient]:
        yield recorder

    backend._client = client  # type: ignore[method-assign,assignment]
    backend.infer(ModelRef(name="deepbet", version=1), {"image": np.ones((1, 1, 4, 4, 4), dtype=np.float32)})
    ((args, kwargs),) = recorder.calls
    assert args[0] == "deepbet" and [t.name() for t in args[1]] == ["image"]
    assert kwargs.get("request_id", "") == "" and not kwargs.get("headers") and not kwargs.get("parameters")
    assert set(kwargs) <= {"model_version", "outputs", "request_id", "client_timeout"}
