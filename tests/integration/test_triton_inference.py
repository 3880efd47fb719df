"""The Triton inference tier against a real tritonserver (tests/servers/triton.py): the glioma U-Net gives
the same segmentation through Triton as in-process ONNX Runtime, workers learn at start which pinned
models are ready, and a Triton that goes away fails the stage with a retryable error, not a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuroflow.core import metrics
from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, InferenceSettings, NeuroflowSettings
from neuroflow.core.errors import InferenceUnavailable
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.inference_triton import TritonBackend, build_inference_backend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.worker import failure_reason
from neuroflow.proto.neuroflow.v1 import common_pb2
from neuroflow.segmentation.sliding_window import sigmoid, sliding_window_inference
from tests.servers.tiny_model import TINY, write_model
from tests.servers.triton import TritonServer, running_triton

GLIOMA = ModelRef(name="glioma_unet", version=1)


def cropped_glioma_input() -> np.ndarray:
    """Four smooth 'contrasts' on a 96 x 96 x 120 grid: two patches of 96^3 along the last axis."""
    rng = np.random.default_rng(7)
    coarse = rng.normal(size=(4, 6, 6, 8)).astype(np.float32)
    return np.kron(coarse, np.ones((1, 16, 16, 15), dtype=np.float32))


def test_glioma_segmentation_through_triton_equals_onnx_runtime(triton_server: TritonServer) -> None:
    image = cropped_glioma_input()
    embedded = OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, intra_op_threads=1)
    # batch_size 1: the two patches go as two requests, both in flight at once.
    remote = TritonBackend(triton_server.url, DEFAULT_MODEL_REPOSITORY, max_in_flight=2)

    local, served = (sliding_window_inference(image, backend, GLIOMA, patch=(96, 96, 96), out_channels=3,
                                              batch_size=1, activation=sigmoid) for backend in (embedded, remote))

    assert served.shape == local.shape == (3, 96, 96, 120)
    np.testing.assert_allclose(served, local, atol=1e-5)
    np.testing.assert_array_equal(served > 0.5, local > 0.5)


def test_metastases_model_through_triton_equals_onnx_runtime(triton_server: TritonServer) -> None:
    """Issue 15: the shipped metastases model (T1CE, FLAIR -> one logit) is served as the glioma one is."""
    image = cropped_glioma_input()[:2]
    model = NeuroflowSettings().models.metastases
    embedded = OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, intra_op_threads=1)
    remote = TritonBackend(triton_server.url, DEFAULT_MODEL_REPOSITORY, max_in_flight=2)
    local, served = (sliding_window_inference(image, backend, model, patch=(96, 96, 96), out_channels=1,
                                              batch_size=1, activation=sigmoid) for backend in (embedded, remote))
    assert served.shape == local.shape == (1, 96, 96, 120)
    np.testing.assert_allclose(served, local, atol=1e-5)


def test_settings_choose_triton_and_its_card_is_the_repository_card(triton_server: TritonServer) -> None:
    settings = NeuroflowSettings(inference=InferenceSettings(backend="triton", triton_url=triton_server.url))

    backend = build_inference_backend(settings)

    assert isinstance(backend, TritonBackend)
    assert backend.url == triton_server.url
    assert backend.card(GLIOMA).labels == ["WT", "TC", "ET"]


def test_workers_report_at_start_which_pinned_models_are_ready(triton_server: TritonServer) -> None:
    from neuroflow.runtime.distributed import check_model_readiness, pinned_models

    settings = NeuroflowSettings()
    backend = TritonBackend(triton_server.url, DEFAULT_MODEL_REPOSITORY)

    readiness = check_model_readiness(backend, pinned_models(settings))

    # The session's Triton serves glioma_unet only: the skull-stripping models read as not ready.
    assert readiness == {settings.models.skull_strip_bbox: False, settings.models.skull_strip: False,
                         settings.models.glioma: True}
    assert metrics.MODEL_READY.labels("glioma_unet")._value.get() == 1.0
    assert metrics.MODEL_READY.labels("deepbet")._value.get() == 0.0


def test_a_triton_that_goes_away_fails_the_stage_with_a_retryable_error(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_model(models, TINY)
    image = np.ones((1, 2, 4, 4, 4), dtype=np.float32)
    with running_triton(models, tmp_path) as server:
        backend = TritonBackend(server.grpc_url, models, timeout_s=5, retries=2, retry_wait_s=0.05)
        assert backend.server_ready()
        np.testing.assert_array_equal(backend.infer(TINY, {"image": image})["scaled"], 3 * image)
        server.stop()

        assert not backend.server_ready()
        assert not backend.ready(TINY)
        with pytest.raises(InferenceUnavailable, match=rf"Triton at {server.grpc_url} unreachable after 3 attempts"):
            backend.infer(TINY, {"image": image})
        try:
            backend.infer(TINY, {"image": image})
        except InferenceUnavailable as exc:
            reason = failure_reason(exc, study_key="k-test", stage="segmentation")
    assert reason.retryable
    assert reason.code == common_pb2.FailureReason.INFERENCE_UNAVAILABLE
    assert "study k-test: segmentation failed: model tiny_affine:1: Triton at" in reason.message
