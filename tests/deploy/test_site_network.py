"""The site's network, as the chart renders it (issue 11, defect 7): each service may reach every backend the
code builds it with (Triton for every service that runs models, derived from the code's own wiring), and the
site Orthanc's DICOM port is reachable from outside the cluster, but only from the configured networks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from unittest import mock

import helm_python as helm
import pytest
import yaml

from neuroflow.core.config import NeuroflowSettings
from neuroflow.runtime import distributed
from tests.deploy.test_helm_chart import (
    CHART,
    SITE_EXAMPLES,
    Manifest,
    example_values,
    merged,
    named,
    of_kind,
    render,
)

# The backends of runtime/distributed.Backends that are reached over the network, and the chart value that
# holds the port of each.
NETWORK_BACKENDS: dict[str, tuple[str, str]] = {
    "bus": ("kafka", "port"),
    "state": ("postgresql", "port"),
    "timepoints": ("postgresql", "port"),
    "orthanc": ("orthanc", "httpPort"),
    "source": ("orthanc", "httpPort"),
    "sink": ("orthanc", "httpPort"),
    "inference": ("inference", "tritonPort"),
}


def chart_values(example: str) -> dict[str, Any]:
    """The example's values over the chart's defaults, as the templates see them."""
    def over(base: Any, override: Any) -> Any:  # Helm's coalescing: maps merge key by key, the rest replaces
        if isinstance(base, dict) and isinstance(override, dict):
            return {**base, **{k: over(base.get(k), v) for k, v in override.items()}}
        return override

    values: dict[str, Any] = over(yaml.safe_load((CHART / "values.yaml").read_text()), example_values(example))
    return values


def port_of(backend: str, values: dict[str, Any]) -> int:
    group, key = NETWORK_BACKENDS[backend]
    return int(values[group][key])


class RecordingBackends(distributed.Backends):
    """Backends that hand out stand-ins and note which ones a service asks for while it is built."""

    def __init__(self, settings: NeuroflowSettings) -> None:
        super().__init__(settings)
        self.asked: set[str] = set()

    def _once(self, name: str, build: Callable[[], Any]) -> Any:  # every accessor builds through here
        self.asked.add(name)
        return super()._once(name, mock.MagicMock)


@pytest.fixture(scope="module")
def backends_of_each_service(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Which backends ``neuroflow serve <service>`` builds each service with, read from the code's wiring
    (runtime/distributed.build_service), for the Orthanc-fed site the chart deploys."""
    state = tmp_path_factory.mktemp("state")
    env = {"NEUROFLOW_DICOM__SOURCE": "orthanc", "NEUROFLOW_STATE__SQLITE_PATH": str(state / "state.sqlite3"),
           "NEUROFLOW_KEYS__SECRET": "a-test-site-secret",
           "NEUROFLOW_INGEST__PIPELINES": '["glioma", "ms_change", "haematoma_change", "tumour_growth"]'}
    asked: dict[str, set[str]] = {}
    with mock.patch.dict(os.environ, env, clear=True):
        settings = NeuroflowSettings()
    for service in distributed.SERVICES:
        backends = RecordingBackends(settings)
        distributed.build_service(service, backends)
        asked[service] = backends.asked
    return asked


def egress_ports(policy: Manifest) -> set[int]:
    return {port["port"] for rule in policy["spec"].get("egress", []) for port in rule.get("ports", [])}


def test_the_services_that_run_models_are_found_from_the_code(backends_of_each_service: dict[str, set[str]]) -> None:
    runs_models = {s for s, asked in backends_of_each_service.items() if "inference" in asked}
    # The change pipelines skull-strip (and tumour_growth segments) in the longitudinal stage.
    assert {"preprocess", "segmentation", "longitudinal"} <= runs_models
    assert "results" not in runs_models and "orchestrator" not in runs_models


@pytest.mark.parametrize("example", SITE_EXAMPLES)
def test_every_service_may_reach_each_backend_the_code_builds_it_with(
        backends_of_each_service: dict[str, set[str]], example: str) -> None:
    values = chart_values(example)
    objects = render(example_values(example), release=example)
    on_triton = values["inference"]["backend"] == "triton"
    triton_port = port_of("inference", values)
    for service, asked in backends_of_each_service.items():
        allowed = egress_ports(named(objects, "NetworkPolicy", service))
        needed = {port_of(b, values) for b in asked if b in NETWORK_BACKENDS and b != "inference"}
        assert needed <= allowed, f"{example}: {service} needs ports {needed - allowed} its NetworkPolicy closes"
        uses_inference = "inference" in asked
        assert (triton_port in allowed) == (on_triton and uses_inference), (
            f"{example}: {service} {'runs' if uses_inference else 'runs no'} models; Triton "
            f"{'is' if on_triton else 'is not'} the backend, yet its egress to port {triton_port} is "
            f"{'open' if triton_port in allowed else 'closed'}")


def selects(policy: Manifest, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert not selector.get("matchExpressions"), "the chart selects by labels only"
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def sources_allowed_to(objects: list[Manifest], pod_labels: dict[str, str], port: int) -> list[Any]:
    """Every peer any NetworkPolicy lets reach ``port`` of the pod with ``pod_labels`` ("anyone" for a rule
    without sources). Policies add up: a peer is let in when any rule of any policy selecting the pod lets it."""
    peers: list[Any] = []
    for policy in of_kind(objects, "NetworkPolicy"):
        if not selects(policy, pod_labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (port, "dicom") for p in ports):
                continue
            peers.extend(rule.get("from") or ["anyone"])
    return peers


def dicom_sources(values: dict[str, Any]) -> list[str]:
    """The networks the values allow to send DICOM: the listed clients, and the prior PACS (C-MOVE answers)."""
    cidrs = [c["cidr"] for c in values["orthanc"].get("dicomClients", [])]
    prior = values.get("site", {}).get("priorPacs")
    return cidrs + ([f"{prior['host']}/32"] if prior else [])


@pytest.mark.parametrize("example", SITE_EXAMPLES)
def test_the_dicom_port_is_reachable_from_outside_only_from_the_configured_networks(example: str) -> None:
    values = example_values(example)
    objects = render(values, release=example)
    orthanc = named(objects, "Deployment", "orthanc")
    pod_labels = orthanc["spec"]["template"]["metadata"]["labels"]
    dicom_port = next(p["containerPort"] for p in orthanc["spec"]["template"]["spec"]["containers"][0]["ports"]
                      if p["name"] == "dicom")
    expected = dicom_sources(values)
    assert expected, f"{example} names no DICOM sources"
    peers = sources_allowed_to(objects, pod_labels, dicom_port)
    assert sorted(p["ipBlock"]["cidr"] for p in peers if isinstance(p, dict) and "ipBlock" in p) == sorted(expected)
    others = [p for p in peers if not (isinstance(p, dict) and set(p) == {"ipBlock"} and "except" not in p["ipBlock"])]
    assert not others, f"{example}: the DICOM port is also open to {others}"

    # The way in from outside: a Service with the DICOM port only, of the configured type.
    exposed = [s for s in of_kind(objects, "Service") if s["spec"].get("type", "ClusterIP") != "ClusterIP"]
    kind = values["orthanc"]["dicomService"]["type"]
    (service,) = exposed
    spec = service["spec"]
    assert spec["type"] == kind and service["metadata"]["name"] == f"{example}-orthanc-dicom"
    assert spec["selector"] == orthanc["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(dicom_port, "dicom")], "DICOM only, no REST API"
    assert spec["externalTrafficPolicy"] == "Local", "SNAT would hide the scanner's address from the NetworkPolicy"
    if kind == "LoadBalancer":
        assert sorted(spec["loadBalancerSourceRanges"]) == sorted(expected)
    if kind == "NodePort":
        assert spec["ports"][0]["nodePort"] == values["orthanc"]["dicomService"]["nodePort"]


def test_by_default_the_dicom_port_stays_inside_the_cluster() -> None:
    values = merged(example_values("site-north"), {"orthanc": {"dicomService": {"type": "ClusterIP"}}})
    objects = render(values)
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in of_kind(objects, "Service"))
    assert not [s for s in of_kind(objects, "Service") if s["metadata"]["name"].endswith("-dicom")]


def test_exposing_dicom_without_naming_who_may_send_is_refused() -> None:
    values = merged(example_values("site-north"), {"orthanc": {"dicomService": {"type": "LoadBalancer"}}})
    values["orthanc"]["dicomClients"] = []
    with pytest.raises(helm.HelmError, match=r"orthanc\.dicomService\.type LoadBalancer exposes the DICOM port"):
        render(values)
    values["orthanc"]["dicomService"]["type"] = "Ingress"
    with pytest.raises(helm.HelmError):
        helm.Chart.load(CHART).validate_schema(values)
