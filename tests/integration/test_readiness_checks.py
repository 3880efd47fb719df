"""What /readyz checks for each service (runtime/readiness), against real dependencies: a check passes
while its dependency answers and fails, within its deadline and naming the dependency, once it does not.
(The state database and Orthanc checks through a running service: tests/integration/test_postgres_restart.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from neuroflow.core.config import BusSettings, DicomSettings, InferenceSettings, NeuroflowSettings, StateSettings
from neuroflow.core.health import Health
from neuroflow.core.inference_triton import build_inference_backend
from neuroflow.core.model_card import ModelRef
from neuroflow.devtools.ports import free_loopback_port
from neuroflow.runtime.distributed import SERVICES, pinned_models
from neuroflow.runtime.readiness import DEPENDENCIES, dependency_checks
from tests.servers.kafka import KafkaServer


def test_every_service_says_what_it_depends_on() -> None:
    assert set(DEPENDENCIES) == set(SERVICES)
    assert DEPENDENCIES["monitor"] == ()  # it reports the others' outages; it must stay scraped


def test_the_kafka_check_passes_on_a_real_broker_and_names_a_dead_one(kafka_server: KafkaServer) -> None:
    live = NeuroflowSettings(bus=BusSettings(kind="kafka", bootstrap=kafka_server.bootstrap))
    checks = dependency_checks(["orchestrator"], live, lambda: pytest.fail("no inference here"), [])
    assert set(checks) == {"kafka"}  # the SQLite state is a local file: nothing to check
    health = Health()
    health.beat("orchestrator")
    health.add_check("kafka", checks["kafka"])
    assert health.readiness(timeout_s=10).ok

    dead = NeuroflowSettings(bus=BusSettings(kind="kafka", bootstrap=f"127.0.0.1:{free_loopback_port()}"))
    health.add_check("kafka", dependency_checks(["orchestrator"], dead, lambda: pytest.fail("none"), [])["kafka"])
    started = time.monotonic()
    verdict = health.readiness(timeout_s=10)
    assert not verdict.ok and verdict.details["kafka"] != "ok"
    assert time.monotonic() - started < 15


def test_the_inference_check_names_the_model_that_is_not_ready(tmp_path: Path) -> None:
    settings = NeuroflowSettings(model_repository=tmp_path / "empty-repository",
                                 inference=InferenceSettings(backend="onnxruntime"))
    checks = dependency_checks(["segmentation"], settings, lambda: build_inference_backend(settings),
                               pinned_models(settings))
    assert set(checks) == {"inference"}  # the in-memory bus: nothing to check
    with pytest.raises(RuntimeError, match=r"not ready: .*glioma_unet"):
        checks["inference"]()
    repository = NeuroflowSettings().model_repository
    served = dependency_checks(["segmentation"], NeuroflowSettings(), lambda: build_inference_backend(
        NeuroflowSettings()), [m for m in pinned_models(NeuroflowSettings()) if (repository / m.name).exists()])
    served["inference"]()  # the models the repository holds load


def test_a_process_running_every_service_checks_every_dependency_once() -> None:
    settings = NeuroflowSettings(bus=BusSettings(kind="kafka"), state=StateSettings(kind="postgres"),
                                 dicom=DicomSettings(source="orthanc"))
    checks = dependency_checks(SERVICES, settings, lambda: pytest.fail("not called here"),
                               [ModelRef(name="m", version=1)])
    assert set(checks) == {"state_db", "kafka", "orthanc", "inference"}
