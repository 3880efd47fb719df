"""Inference backend: run a named, versioned model on arrays. ONNX Runtime in-process (embedded) or
Triton over gRPC (distributed); pipeline code sees only this interface and the model card."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from neuroflow.core.errors import InferenceUnavailable
from neuroflow.core.model_card import ModelCard, ModelRef, load_model_card

Array = npt.NDArray[np.float32]


class InferenceBackend(ABC):
    """Runs models of the model repository. ``infer`` takes and returns batches (first axis)."""

    @abstractmethod
    def ready(self, model: ModelRef) -> bool:
        """True when ``model`` can serve requests now (loaded, or loadable without error)."""

    @abstractmethod
    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run one batch. Raises InferenceUnavailable when the model cannot be served."""

    def card(self, model: ModelRef) -> ModelCard:
        """The model card of ``model``: the one source of its inputs, outputs and preprocessing."""
        raise NotImplementedError

    def infer_batches(self, model: ModelRef, batches: Iterable[Mapping[str, Array]]) -> Iterator[dict[str, Array]]:
        """``infer`` on each batch, results in order. In-process backends run them one after another; a
        remote backend (Triton) keeps several requests in flight."""
        for batch in batches:
            yield self.infer(model, batch)


def onnx_model_path(repository: Path, model: ModelRef) -> Path:
    """The ONNX file ONNX Runtime runs for ``model`` (Triton's layout: ``<name>/<version>/model.onnx``)."""
    return repository / model.name / str(model.version) / "model.onnx"


class OnnxRuntimeBackend(InferenceBackend):
    """Runs ``<repository>/<name>/<version>/model.onnx`` with ONNX Runtime on the CPU (or the CUDA
    provider when present). Sessions are created once per model and shared by threads."""

    def __init__(self, repository: Path, intra_op_threads: int = 0) -> None:
        self._repository = repository
        self._threads = intra_op_threads
        self._sessions: dict[ModelRef, object] = {}
        self._lock = threading.Lock()

    def card(self, model: ModelRef) -> ModelCard:
        return load_model_card(self._repository, model)

    def ready(self, model: ModelRef) -> bool:
        try:
            self._session(model)
        except InferenceUnavailable:
            return False
        return True

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        session = self._session(model)
        names = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        try:
            outputs = session.run(names, feed)  # type: ignore[attr-defined]
        except Exception as exc:  # onnxruntime raises its own exception types for bad shapes/names
            raise InferenceUnavailable(f"model {model} failed on inputs {sorted(feed)}: {exc}") from exc
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(names, outputs, strict=True)}

    def _session(self, model: ModelRef) -> object:
        with self._lock:
            if model not in self._sessions:
                import onnxruntime as ort  # deferred: importing it costs ~0.3 s and is only needed here

                path = onnx_model_path(self._repository, model)
                if not path.is_file():
                    raise InferenceUnavailable(f"model {model} not found: no file {path}")
                options = ort.SessionOptions()
                if self._threads:
                    options.intra_op_num_threads = self._threads
                providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                             if p in ort.get_available_providers()]
                try:
                    self._sessions[model] = ort.InferenceSession(str(path), options, providers=providers)
                except Exception as exc:
                    raise InferenceUnavailable(f"model {model} at {path} could not be loaded: {exc}") from exc
            return self._sessions[model]
