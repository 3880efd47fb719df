"""Inference on NVIDIA Triton Inference Server over gRPC (the distributed runtime's shared GPU tier).

Same contract as the in-process ONNX Runtime backend (tests/contract/test_inference_contract.py runs
both): same model names, versions, tensor names and results. The model card is read from the local
model repository (the one description of a model), the computation happens on the server.

Every failure ends as InferenceUnavailable, which the stage workers report as retryable: a Triton that
goes away mid-study fails the stage with a message naming the server, and the task is retried later.
Transient gRPC failures (server unreachable, deadline exceeded) are retried here first, with backoff.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.errors import InferenceUnavailable
from neuroflow.core.inference import Array, InferenceBackend, OnnxRuntimeBackend
from neuroflow.core.inference_site_split import SiteSplitBackend
from neuroflow.core.model_card import ModelCard, ModelRef, load_model_card
from neuroflow.core.triton_repository import TRITON_DTYPES

# gRPC status codes after which the same request may succeed: the server restarts, is overloaded, or
# the network dropped the connection. Anything else (bad shape, unknown model) is answered at once.
_TRANSIENT = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED"}


@dataclass(frozen=True)
class TritonTls:
    """TLS to Triton's gRPC endpoint. The server's certificate is verified against ``ca_file`` (None: the
    system's trust store) for the host of the URL, or ``server_name`` when given; ``cert_file`` and
    ``key_file`` are this client's certificate for mutual TLS. Files are read when a channel opens, so a
    renewed certificate (a rotated Kubernetes Secret) is used by the next channel."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))

    def channel_args(self) -> list[tuple[str, Any]] | None:
        """tritonclient's own channel arguments (unlimited message sizes: a patch batch is large), plus the
        name to check in the server's certificate when it differs from the URL's host."""
        if not self.server_name:
            return None  # tritonclient's defaults
        unlimited = grpcclient.MAX_GRPC_MESSAGE_SIZE
        return [("grpc.max_send_message_length", unlimited), ("grpc.max_receive_message_length", unlimited),
                ("grpc.ssl_target_name_override", self.server_name)]


class TritonBackend(InferenceBackend):
    """Runs models on the Triton at ``url`` (``host:port`` of its gRPC endpoint).

    ``timeout_s``: the longest one request may take (a patch batch, on a busy server). ``retries``: how
    often a transient failure is retried, waiting ``retry_wait_s`` doubled each time. ``max_in_flight``:
    how many requests :meth:`infer_batches` keeps outstanding at once (the sliding window's patches).
    ``tls``: reach the server over TLS, verifying its certificate (None: plaintext, for loopback only)."""

    def __init__(self, url: str, card_repository: Path, *, timeout_s: float = 120.0, retries: int = 3,
                 retry_wait_s: float = 0.5, max_in_flight: int = 4, tls: TritonTls | None = None) -> None:
        self.url = url
        self._tls = tls
        self._cards = card_repository
        self._timeout_s = timeout_s
        self._retries = retries
        self._retry_wait_s = retry_wait_s
        self.max_in_flight = max(1, max_in_flight)
        # A tritonclient client is used by one thread at a time: a call borrows an idle one (each with its
        # own gRPC channel, kept open between calls) or makes one, and puts it back afterwards.
        self._idle: queue.SimpleQueue[grpcclient.InferenceServerClient] = queue.SimpleQueue()

    def card(self, model: ModelRef) -> ModelCard:
        return load_model_card(self._cards, model)

    def ready(self, model: ModelRef) -> bool:
        try:
            with self._client() as client:
                return bool(client.is_model_ready(model.name, str(model.version),
                                                  client_timeout=min(self._timeout_s, 10.0)))
        except InferenceServerException:
            return False

    def server_ready(self) -> bool:
        """Whether the server answers and says it is ready (at start, before any model is asked for)."""
        try:
            with self._client() as client:
                return bool(client.is_server_ready(client_timeout=min(self._timeout_s, 10.0)))
        except InferenceServerException:
            return False

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        card = self._card_or_unavailable(model)
        request = []
        for spec in card.inputs:
            if spec.name not in inputs:
                raise InferenceUnavailable(f"model {model} failed on inputs {sorted(inputs)}: "
                                           f"input {spec.name!r} missing")
            array = np.ascontiguousarray(inputs[spec.name], dtype=np.dtype(spec.dtype))  # the card's type
            tensor = grpcclient.InferInput(spec.name, list(array.shape), TRITON_DTYPES[spec.dtype])
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(spec.name) for spec in card.outputs]
        # The shared GPU tier gets tensors and nothing else: no request id, headers or parameters (which Triton
        # writes to its logs and traces), so nothing it holds names a study or a patient.
        result = self._with_retries(model, lambda client: client.infer(
            model.name, request, model_version=str(model.version), outputs=outputs, request_id="",
            client_timeout=self._timeout_s))
        return {spec.name: np.asarray(result.as_numpy(spec.name), dtype=np.float32) for spec in card.outputs}

    def infer_batches(self, model: ModelRef, batches: Iterable[Mapping[str, Array]]) -> Iterator[dict[str, Array]]:
        """Results of ``batches`` in order, with up to ``max_in_flight`` requests outstanding, so the
        server batches and computes while the client prepares and blends."""
        window: list[Future[dict[str, Array]]] = []
        with ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="triton-infer") as pool:
            try:
                for batch in batches:
                    window.append(pool.submit(self.infer, model, batch))
                    if len(window) >= self.max_in_flight:
                        yield window.pop(0).result()
                while window:
                    yield window.pop(0).result()
            finally:
                for pending in window:
                    pending.cancel()

    def _card_or_unavailable(self, model: ModelRef) -> ModelCard:
        # The card names the tensors; a model without one is not served, like ONNX Runtime's missing file.
        try:
            return self.card(model)
        except InferenceUnavailable as exc:
            if not self.ready(model):
                raise InferenceUnavailable(f"model {model} not found on Triton at {self.url} "
                                           f"(not ready there): {exc}") from exc
            raise

    def _with_retries(self, model: ModelRef, call: Any) -> Any:
        wait = self._retry_wait_s
        for attempt in range(self._retries + 1):
            try:
                with self._client() as client:
                    return call(client)
            except InferenceServerException as exc:
                status = str(exc.status())
                if status in _TRANSIENT and attempt < self._retries:
                    time.sleep(wait)
                    wait *= 2
                    continue
                raise self._unavailable(model, exc, attempt + 1) from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def _unavailable(self, model: ModelRef, exc: InferenceServerException, attempts: int) -> InferenceUnavailable:
        status = str(exc.status())
        if status == "StatusCode.UNAVAILABLE":
            return InferenceUnavailable(f"model {model}: Triton at {self.url} unreachable after {attempts} "
                                        f"attempts: {exc.message()}")
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return InferenceUnavailable(f"model {model}: Triton at {self.url} did not answer within "
                                        f"{self._timeout_s:.0f} s ({attempts} attempts)")
        if not self.ready(model):
            return InferenceUnavailable(f"model {model} not found ready on Triton at {self.url}: {exc.message()}")
        return InferenceUnavailable(f"model {model} failed on Triton at {self.url}: {exc.message()}")

    @contextlib.contextmanager
    def _client(self) -> Iterator[grpcclient.InferenceServerClient]:
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            client = (grpcclient.InferenceServerClient(self.url) if self._tls is None else
                      grpcclient.InferenceServerClient(self.url, creds=self._tls.credentials(),
                                                       channel_args=self._tls.channel_args()))
        try:
            yield client
        finally:
            self._idle.put(client)


def build_inference_backend(settings: NeuroflowSettings) -> InferenceBackend:
    """The inference backend ``settings.inference`` names, reading model cards from ``settings.model_repository``."""
    chosen = settings.inference
    local = OnnxRuntimeBackend(settings.model_repository, settings.inference_threads)
    if chosen.backend != "triton":
        return local
    tls = (TritonTls(chosen.triton_ca_file, chosen.triton_cert_file, chosen.triton_key_file,
                     chosen.triton_server_name) if chosen.triton_tls else None)
    shared = TritonBackend(chosen.triton_url, settings.model_repository, timeout_s=chosen.timeout_s,
                           retries=chosen.retries, retry_wait_s=chosen.retry_wait_s,
                           max_in_flight=chosen.max_in_flight, tls=tls)
    if chosen.shared_tier_skull_stripped_only:
        return SiteSplitBackend(local, shared, shared_models={settings.models.glioma})
    return shared
