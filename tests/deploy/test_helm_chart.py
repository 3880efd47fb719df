"""The Helm chart (helm/neuroflow), checked offline: rendered with the Helm SDK for each example values file,
every object validated against the Kubernetes schemas, and the chart held to what the code reads (settings
names, topics, consumer groups, metrics port, alert rules, site rules)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from neuroflow.core import topics
from neuroflow.core.config import CHANGE_PIPELINES, GLIOMA_PIPELINE, METASTASES_PIPELINE, NeuroflowSettings
from neuroflow.core.kafka_acl import acl_rows
from neuroflow.core.kafka_security import client_security
from neuroflow.core.orthanc_rights import SERVICE_RIGHTS, SERVICE_USERS, rights_json
from neuroflow.ingest.site_rules import load_site_rules

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "neuroflow"
EXAMPLES = ROOT / "helm" / "examples"
SITE_EXAMPLES = ("site-north", "site-south")
SHARED_EXAMPLE = "shared-gpu"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# Custom resources (KEDA, Prometheus Operator): no schema in kubernetes-validate; their own tests below.
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule", "KafkaTopic", "TriggerAuthentication",
                "KafkaUser"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
# Deployments that are not a pipeline service (no `neuroflow serve` of the runtime, no Kafka user): their own tests.
NOT_PIPELINE = {"orthanc", "console"}
# The images we build run as this user (deploy/docker/Dockerfile); Orthanc's and Triton's their own.
NEUROFLOW_UID = 10001

Manifest = dict[str, Any]


def example_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return values


def render(values: dict[str, Any], release: str = "test") -> list[Manifest]:
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values, name=release, namespace=f"neuroflow-{release}", is_install=True)
    return [doc for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[Manifest]]:
    """Each example rendered once, by example name."""
    return {name: render(example_values(name), release=name) for name in (*SITE_EXAMPLES, SHARED_EXAMPLE)}


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Manifest], kind: str, suffix: str) -> Manifest:
    matches = [o for o in of_kind(objects, kind) if o["metadata"]["name"].endswith(f"-{suffix}")]
    assert len(matches) == 1, f"expected one {kind} named *-{suffix}, found {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def component(obj: Manifest) -> str:
    component_name: str = obj["metadata"]["labels"]["app.kubernetes.io/component"]
    return component_name


def containers(workload: Manifest) -> list[Manifest]:
    listed: list[Manifest] = workload["spec"]["template"]["spec"]["containers"]
    return listed


def stage_services() -> list[str]:
    """The worker services the contract has stages for (preprocess, segmentation, longitudinal, results)."""
    return [topics.stage_name(stage) for stage in topics.STAGES]


def settings_env_names(model: type[BaseModel], prefix: str = "NEUROFLOW_") -> dict[str, Any]:
    """Every environment name NeuroflowSettings reads (prefix NEUROFLOW_, nested delimiter __), with the
    annotation of its field: nested models give both their own name (a JSON value) and their fields'."""
    names: dict[str, Any] = {}
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        names[name] = field.annotation
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(settings_env_names(annotation, f"{name}__"))
    return names


def secret_env_names(model: type[BaseModel], prefix: str = "NEUROFLOW_") -> set[str]:
    return {name for name, annotation in settings_env_names(model, prefix).items() if annotation is SecretStr}


def configmap_env(objects: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = named(objects, "ConfigMap", "env")["data"]
    return data


@pytest.mark.parametrize("example", [*SITE_EXAMPLES, SHARED_EXAMPLE])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(
        manifests: dict[str, list[Manifest]], example: str) -> None:
    objects = manifests[example]
    assert objects, f"{example} rendered nothing"
    for version in KUBE_VERSIONS:
        for obj in objects:
            if obj["kind"] in CUSTOM_KINDS:
                continue
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("example", [*SITE_EXAMPLES, SHARED_EXAMPLE])
def test_helm_lint_finds_no_warning_or_error(example: str) -> None:
    report = helm.lint(CHART, example_values(example), strict=True, kube_version="v1.27.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 is advice (e.g. "icon is recommended")
    assert not problems and not report["errors"], report


def test_a_site_deploys_every_service_and_worker_plus_its_orthanc(manifests: dict[str, list[Manifest]]) -> None:
    from neuroflow.runtime.distributed import SERVICES

    # Every service `neuroflow serve` runs is deployed, and each stage of the contract has its worker.
    assert {"ingest", "orchestrator", "monitor", *stage_services()} == set(SERVICES)
    for example in SITE_EXAMPLES:
        deployed = {component(d) for d in of_kind(manifests[example], "Deployment")}
        assert deployed == {"ingest", "orchestrator", "monitor", "orthanc", "console", *stage_services()}, example
    shared = {component(d) for d in of_kind(manifests[SHARED_EXAMPLE], "Deployment")}
    assert shared == {"triton"}


@pytest.mark.parametrize("example", [*SITE_EXAMPLES, SHARED_EXAMPLE])
def test_every_pod_has_probes_limits_and_a_non_root_security_context(
        manifests: dict[str, list[Manifest]], example: str) -> None:
    workloads = [o for o in manifests[example] if o["kind"] in WORKLOAD_KINDS]
    assert workloads
    for workload in workloads:
        where = f"{example}: {workload['kind']} {workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["automountServiceAccountToken"] is False, where
        for container in pod["containers"]:
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in container, f"{where}: container {container['name']} has no {probe}"
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), f"{where}: {kind} lack cpu or memory"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] > 0, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            if container["image"].startswith(example_values(example).get("image", {}).get("repository", "-")):
                assert security["runAsUser"] == NEUROFLOW_UID, where
                assert security["readOnlyRootFilesystem"] is True, where


@pytest.mark.parametrize("example", SITE_EXAMPLES)
def test_services_probe_and_expose_the_metrics_port_their_settings_bind(
        manifests: dict[str, list[Manifest]], example: str) -> None:
    objects = manifests[example]
    env = configmap_env(objects)
    port = int(env["NEUROFLOW_METRICS_PORT"])
    assert env["NEUROFLOW_METRICS_HOST"] == "0.0.0.0", "the kubelet and Prometheus reach the pod IP, not loopback"
    for deployment in of_kind(objects, "Deployment"):
        if component(deployment) in NOT_PIPELINE:
            continue
        (container,) = containers(deployment)
        assert container["args"] == [component(deployment)], "the entrypoint picks the service from its argument"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": port}
        # Liveness asks whether the main loop makes progress, readiness whether the dependencies answer.
        # The ports speak HTTPS (metricsAccess.tls, on in every example): the kubelet must ask over it.
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                            ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics", "scheme": "HTTPS"}, \
                f"{component(deployment)} {probe}"
        environment = {e["name"]: e for e in container["env"]}
        for setting in ("USERNAME", "PASSWORD"):  # from the site's Secret, never a value in the manifest
            assert "secretKeyRef" in environment[f"NEUROFLOW_METRICS_ACCESS__{setting}"]["valueFrom"]
        mounted = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}["site-ca"]["secret"]
        assert {i["path"] for i in mounted["items"]} >= {"metrics.crt", "metrics.key"}
        assert mounted["defaultMode"] == 0o440, "the metrics key is not for every user of the container"
        # A long model load (minutes on a busy CPU node) must not get the pod killed before it is up; a stuck
        # loop must: within a few minutes, not at the first slow answer.
        startup, liveness = container["startupProbe"], container["livenessProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
        assert 30 <= liveness["periodSeconds"] * liveness["failureThreshold"] <= 300
        assert liveness["failureThreshold"] >= 2 and container["readinessProbe"]["failureThreshold"] >= 2
        service = named(objects, "Service", component(deployment))
        assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics",
                                             "protocol": "TCP"}]
        assert service["spec"]["publishNotReadyAddresses"] is True, "a pod not ready still has metrics to scrape"
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("example", SITE_EXAMPLES)
def test_every_environment_name_is_a_setting_the_code_reads(
        manifests: dict[str, list[Manifest]], example: str) -> None:
    known = settings_env_names(NeuroflowSettings)
    objects = manifests[example]
    names = set(configmap_env(objects))
    for deployment in of_kind(objects, "Deployment"):
        if component(deployment) != "orthanc":
            names |= {e["name"] for e in containers(deployment)[0].get("env", [])}
    unknown = sorted(n for n in names if n not in known)
    assert not unknown, f"{example}: environment names NeuroflowSettings does not read: {unknown}"



def pod_environment(objects: list[Manifest], deployment: Manifest) -> Iterator[dict[str, str]]:
    """The environment a service's container starts with: its ConfigMap, then its own entries, each
    secretKeyRef filled with a stand-in (the real value is in the site's Secret)."""
    env = dict(configmap_env(objects))
    for entry in containers(deployment)[0].get("env", []):
        env[entry["name"]] = (entry["value"] if "value" in entry
                              else f"secret:{entry['valueFrom']['secretKeyRef']['key']}")
    yield env


@pytest.mark.parametrize("example", SITE_EXAMPLES)
def test_the_rendered_environment_builds_the_settings_the_values_describe(
        manifests: dict[str, list[Manifest]], example: str, tmp_path: Path) -> None:
    values = example_values(example)
    site = values["site"]
    objects = manifests[example]
    for deployment in of_kind(objects, "Deployment"):
        if component(deployment) in NOT_PIPELINE:
            continue
        for env in pod_environment(objects, deployment):
            with mock.patch.dict(os.environ, mounted_secret_files(env, deployment, tmp_path), clear=True):
                settings = NeuroflowSettings()
            assert settings.site == site["name"]
            assert settings.bus.kind == "kafka" and settings.bus.bootstrap == values["kafka"]["bootstrap"]
            assert_kafka_security(settings, values, example, component(deployment))
            assert settings.state.kind == "postgres"
            assert settings.state.dsn.get_secret_value() == "secret:state-dsn"
            assert settings.dicom.source == "orthanc"
            assert settings.dicom.orthanc_url.startswith(f"https://{example}-orthanc:")
            # Each service its own Orthanc user; Orthanc and PostgreSQL verified against the site's CA.
            assert settings.dicom.orthanc_username == component(deployment)
            assert settings.state.sslrootcert is not None
            assert settings.dicom.orthanc_ca_file == settings.state.sslrootcert
            assert settings.state.sslmode == "verify-full"
            password = settings.dicom.orthanc_password.get_secret_value()
            assert password == f"secret:orthanc-password-{component(deployment)}"
            assert settings.keys.secret is not None and settings.keys.secret.get_secret_value() == "secret:key-secret"
            assert settings.ingest.wait_window_s == site["waitWindowS"]
            assert settings.ingest.pipelines == site["pipelines"]
            for role, model in site.get("models", {}).items():
                pinned = getattr(settings.models, role)
                assert (pinned.name, pinned.version) == (model["name"], model["version"])
            assert settings.monitor.end_to_end_target_s == site["endToEndTargetS"]
            assert (settings.site_rules is not None) == bool(site.get("routingRules"))
            inference = values.get("inference", {})
            assert settings.inference.backend == inference.get("backend", "onnxruntime")
            if settings.inference.backend == "triton":
                assert settings.inference.triton_url == inference["tritonUrl"]
            for root in (settings.volume_store_root, settings.records_root, settings.reports_dir):
                mounts = {m["mountPath"] for m in containers(deployment)[0]["volumeMounts"]}
                assert any(root.is_relative_to(m) for m in mounts), f"{root} is not on a mounted volume"


KAFKA_MOUNTS = "/etc/neuroflow-kafka"


def mounted_secret_files(env: dict[str, str], deployment: Manifest, tmp_path: Path) -> dict[str, str]:
    """``env`` with the Kafka credential files a pod would find in its Secret volumes moved under ``tmp_path``
    (as the kubelet would mount them: the Secret's name and key as the content); a file no volume of the pod
    provides is not made, so the settings fail to read it."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in containers(deployment)[0]["volumeMounts"]}
    out = dict(env)
    for name, path in env.items():
        if not path.startswith(KAFKA_MOUNTS + "/"):
            continue
        folder, file = path.rsplit("/", 1)
        secret = mounts[folder]["secret"]
        assert file in {item["path"] for item in secret["items"]}, f"{name}: {file} is not in the mounted Secret"
        local = tmp_path / component(deployment) / folder.removeprefix("/") / file
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(f"{secret['secretName']}:{file}")
        out[name] = str(local)
    return out


def assert_kafka_security(settings: NeuroflowSettings, values: dict[str, Any], release: str, service: str) -> None:
    """Each service logs in to Kafka as itself, over TLS, checking the brokers against the site's CA."""
    security = values["kafka"]["security"]
    bus = settings.bus
    assert bus.security_protocol == security["protocol"]
    assert bus.ca_file is not None and bus.ca_file.read_text() == f"{security['caSecret']}:ca.crt"
    own_secret = f"{release}-{service}"
    if security["protocol"] == "SASL_SSL":
        assert bus.username == f"{release}-{service}"
        assert bus.password.get_secret_value() == f"{own_secret}:password"  # read from its own Secret's file
    else:
        assert bus.cert_file is not None and bus.cert_file.read_text() == f"{own_secret}:user.crt"
        assert bus.key_file is not None and bus.key_file.read_text() == f"{own_secret}:user.key"
    config = client_security(bus)
    assert config["security.protocol"] == security["protocol"].lower()
    assert config["ssl.endpoint.identification.algorithm"] == "https"


def test_kafka_credentials_are_mounted_read_only_for_the_service_alone(manifests: dict[str, list[Manifest]]) -> None:
    for example in SITE_EXAMPLES:
        for deployment in of_kind(manifests[example], "Deployment"):
            if component(deployment) in NOT_PIPELINE:
                continue
            volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
            user = volumes["kafka-user"]["secret"]
            assert user["secretName"] == f"{example}-{component(deployment)}"
            assert user["defaultMode"] == 0o440  # root and the pod's fsGroup (the service)
            mounts = {m["name"]: m for m in containers(deployment)[0]["volumeMounts"]}
            assert mounts["kafka-user"]["readOnly"] and mounts["kafka-ca"]["readOnly"]


def test_keda_reads_the_lag_as_the_workers_own_kafka_user_over_tls(manifests: dict[str, list[Manifest]]) -> None:
    objects = manifests["site-north"]
    security = example_values("site-north")["kafka"]["security"]
    for name in stage_services():
        authentication = named(objects, "TriggerAuthentication", f"{name}-kafka")["spec"]
        refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in authentication["secretTargetRef"]}
        assert refs == {"ca": (security["caSecret"], "ca.crt"), "password": (f"site-north-{name}", "password")}
        (username,) = authentication["env"]
        assert (username["parameter"], username["containerName"]) == ("username", name)
        worker_env = {e["name"]: e.get("value") for e in containers(named(objects, "Deployment", name))[0]["env"]}
        assert worker_env[username["name"]] == f"site-north-{name}"
        for trigger in named(objects, "ScaledObject", name)["spec"]["triggers"]:
            if trigger["type"] == "kafka":
                assert trigger["authenticationRef"]["name"] == f"site-north-{name}-kafka"
                assert (trigger["metadata"]["sasl"], trigger["metadata"]["tls"]) == ("scram_sha512", "enable")
    assert not of_kind(manifests["site-south"], "TriggerAuthentication"), "no KEDA there"


def test_strimzi_users_carry_the_acls_the_code_derives(manifests: dict[str, list[Manifest]]) -> None:
    users = {u["metadata"]["name"]: u for u in of_kind(manifests["site-north"], "KafkaUser")}
    services = {component(d) for d in of_kind(manifests["site-north"], "Deployment")} - NOT_PIPELINE
    assert set(users) == {f"site-north-{service}" for service in services}
    assert set(topics.service_access()) == services, "every service with a Deployment has its ACLs, and no other"
    for service in services:
        user = users[f"site-north-{service}"]
        assert user["metadata"]["namespace"] == "kafka"
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        granted = {(acl["resource"]["type"], acl["resource"]["name"], acl["resource"]["patternType"], operation)
                   for acl in user["spec"]["authorization"]["acls"] for operation in acl["operations"]}
        assert granted == {(row.resource, row.name, "prefix" if row.prefixed else "literal", row.operation.title())
                           for row in acl_rows(topics.service_access()[service])}
    assert not of_kind(manifests["site-south"], "KafkaUser"), "off unless a site asks"


def test_credentials_come_from_the_secret_never_from_values(manifests: dict[str, list[Manifest]]) -> None:
    secret_names = secret_env_names(NeuroflowSettings)
    assert {"NEUROFLOW_STATE__DSN", "NEUROFLOW_DICOM__ORTHANC_PASSWORD"} <= secret_names
    for example, objects in manifests.items():
        assert not of_kind(objects, "Secret"), f"{example}: the chart must not create Secrets"
        for config in of_kind(objects, "ConfigMap"):
            leaked = secret_names & set(config.get("data", {}))
            assert not leaked, f"{example}: {leaked} in ConfigMap {config['metadata']['name']}"
        for workload in of_kind(objects, "Deployment"):
            for container in containers(workload):
                for entry in container.get("env", []):
                    sensitive = entry["name"] in secret_names or re.search("PASSWORD|DSN|TOKEN", entry["name"])
                    if sensitive:
                        assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], (
                            f"{example}: {entry['name']} of {workload['metadata']['name']} must come from a Secret")
    # No values file (defaults or examples) holds anything that looks like a credential.
    for path in [CHART / "values.yaml", *EXAMPLES.glob("*.yaml")]:
        text = path.read_text().replace("KeyPrefix:", "").replace("Key:", "")  # names of a Secret's keys
        assert not re.search(r"(?im)^\s*\w*(password|passwd|dsn|token)\w*\s*:\s*\S", text), path


def test_orthanc_uses_the_wait_window_its_postgresql_index_and_secret_passwords(
        manifests: dict[str, list[Manifest]]) -> None:
    import json

    for example in SITE_EXAMPLES:
        objects = manifests[example]
        config = json.loads(named(objects, "ConfigMap", "orthanc")["data"]["neuroflow.json"])
        values = example_values(example)
        assert config["StableAge"] == values["site"]["waitWindowS"]
        assert config["PostgreSQL"]["EnableIndex"] is True
        assert config["PostgreSQL"]["Host"] == values["orthanc"]["index"]["host"]
        assert config["PostgreSQL"]["Password"] == "${ORTHANC_INDEX_PASSWORD}"
        users = {user: f"NEUROFLOW_ORTHANC_PASSWORD_{user.upper()}" for user in SERVICE_RIGHTS}
        assert config["RegisteredUsers"] == {user: f"${{{env}}}" for user, env in users.items()}
        assert config["AuthenticationEnabled"] is True and config["RemoteAccessAllowed"] is True
        (orthanc,) = containers(named(objects, "Deployment", "orthanc"))
        from_secret = {e["name"] for e in orthanc["env"] if "valueFrom" in e}
        assert {"ORTHANC_INDEX_PASSWORD", *users.values()} <= from_secret
        for peer, modality in values["orthanc"].get("modalities", {}).items():
            assert config["DicomModalities"][peer] == {"AET": modality["aet"], "Host": modality["host"],
                                                       "Port": modality["port"], "UseDicomTls": False}


def test_site_routing_rules_from_values_load_with_neuroflows_own_loader(
        manifests: dict[str, list[Manifest]], tmp_path: Path) -> None:
    text = named(manifests["site-north"], "ConfigMap", "site-rules")["data"]["site-rules.yaml"]
    path = tmp_path / "site-rules.yaml"
    path.write_text(text)
    rules = load_site_rules(path)
    assert rules.site == "north"
    assert [o.name for o in rules.overrides] == ["north-3t-bravo-is-post-contrast"]


def test_every_stage_worker_scales_on_the_lag_of_its_own_task_topics(manifests: dict[str, list[Manifest]]) -> None:
    objects = manifests["site-north"]  # autoscaling.mode keda
    values = example_values("site-north")
    for stage in topics.STAGES:
        name = topics.stage_name(stage)
        scaled = named(objects, "ScaledObject", name)
        spec = scaled["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": named(objects, "Deployment", name)["metadata"]["name"]}
        assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
        kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
        # Each task topic has its own Kafka consumer group (topics.kafka_group_id); the scaler reads the lag
        # of the group that actually consumes the topic (tests/integration/test_keda_consumer_groups.py).
        assert {t["metadata"]["topic"]: t["metadata"]["consumerGroup"] for t in kafka} == (
            topics.worker_kafka_groups(stage))
        assert {t["metadata"]["bootstrapServers"] for t in kafka} == {values["kafka"]["bootstrap"]}
        assert [t["type"] for t in spec["triggers"] if t["type"] != "kafka"] == ["cpu"]
        assert "replicas" not in named(objects, "Deployment", name)["spec"], "the scaler owns the replica count"
    assert not of_kind(objects, "HorizontalPodAutoscaler"), "KEDA makes its own HPA; a second one would fight it"


def test_without_keda_every_stage_worker_has_a_cpu_hpa(manifests: dict[str, list[Manifest]]) -> None:
    objects = manifests["site-south"]  # autoscaling.mode hpa
    assert not of_kind(objects, "ScaledObject")
    for name in stage_services():
        hpa = named(objects, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"]["name"] == named(objects, "Deployment", name)["metadata"]["name"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"


@pytest.mark.parametrize("example", SITE_EXAMPLES)
def test_every_site_pod_has_a_disruption_budget(manifests: dict[str, list[Manifest]], example: str) -> None:
    objects = manifests[example]
    budgets = {component(p): p for p in of_kind(objects, "PodDisruptionBudget")}
    for deployment in of_kind(objects, "Deployment"):
        budget = budgets[component(deployment)]
        assert budget["spec"]["selector"] == deployment["spec"]["selector"]
        assert budget["spec"]["maxUnavailable"] >= 1, "a budget of 0 blocks every node drain"


def egress_ports(policy: Manifest) -> set[int]:
    return {port["port"] for rule in policy["spec"].get("egress", []) for port in rule.get("ports", [])}


def test_network_policies_let_each_service_reach_only_what_it_needs(manifests: dict[str, list[Manifest]]) -> None:
    north, south = manifests["site-north"], manifests["site-south"]
    values = example_values("site-north")
    kafka, postgres, orthanc, triton = 9093, 5432, 8042, 8001  # Kafka: its TLS listener
    deny = named(north, "NetworkPolicy", "default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert egress_ports(deny) == {53}
    assert egress_ports(named(north, "NetworkPolicy", "orchestrator")) == {kafka, postgres}
    assert egress_ports(named(north, "NetworkPolicy", "segmentation")) == {kafka, triton}
    assert egress_ports(named(south, "NetworkPolicy", "segmentation")) == {kafka}, "no Triton: no route to it"
    assert egress_ports(named(north, "NetworkPolicy", "results")) == {kafka, postgres, orthanc}
    # Priors: the longitudinal worker asks Orthanc, which queries the PACS and has it send the study back.
    assert egress_ports(named(south, "NetworkPolicy", "longitudinal")) == {kafka, postgres, orthanc}
    assert egress_ports(named(south, "NetworkPolicy", "orthanc")) == {postgres, 11112}
    # Orthanc's REST API: only the services that read studies or store results.
    orthanc_policy = named(north, "NetworkPolicy", "orthanc")
    api_rule = orthanc_policy["spec"]["ingress"][0]
    callers = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in api_rule["from"]}
    assert callers == {"ingest", "preprocess", "longitudinal", "results", "monitor", "console"}
    dicom_rule = orthanc_policy["spec"]["ingress"][1]
    assert [p["ipBlock"]["cidr"] for p in dicom_rule["from"]] == [c["cidr"] for c in values["orthanc"]["dicomClients"]]
    # Every metrics port is open to Prometheus and to nothing else.
    for policy in of_kind(north, "NetworkPolicy"):
        if policy["metadata"]["labels"].get("app.kubernetes.io/component") not in {None, *NOT_PIPELINE}:
            (rule,) = policy["spec"]["ingress"]
            assert rule["ports"] == [{"protocol": "TCP", "port": 9400}]


def test_service_monitor_selects_every_metrics_service(manifests: dict[str, list[Manifest]]) -> None:
    for example, objects in manifests.items():
        (monitor,) = of_kind(objects, "ServiceMonitor")
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [s for s in of_kind(objects, "Service")
                    if selector.items() <= s["metadata"]["labels"].items()]
        expected = [s for s in of_kind(objects, "Service") if component(s) != "orthanc"]
        assert selected == expected and selected, example
        assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}
        # Prometheus logs in, over HTTPS, checking the certificate the services present: the same keys of
        # the same Secrets the services read.
        (endpoint,) = monitor["spec"]["endpoints"]
        values = example_values(example)
        if example == SHARED_EXAMPLE:  # Triton's own metrics: no login to give
            assert "basicAuth" not in endpoint
            continue
        secret = values["secrets"]["existingSecret"]
        assert endpoint["basicAuth"] == {"username": {"name": secret, "key": "metrics-username"},
                                         "password": {"name": secret, "key": "metrics-password"}}
        assert endpoint["scheme"] == "https"
        assert endpoint["tlsConfig"] == {"ca": {"secret": {"name": values["certificates"]["existingSecret"],
                                                           "key": "ca.crt"}},
                                         "serverName": "neuroflow-metrics"}
        for service in selected:
            assert "metrics" in {p["name"] for p in service["spec"]["ports"]}


def test_prometheus_rule_carries_the_alert_rules_of_deploy(manifests: dict[str, list[Manifest]]) -> None:
    deploy_rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    (rule,) = of_kind(manifests[SHARED_EXAMPLE], "PrometheusRule")
    assert rule["spec"]["groups"] == deploy_rules["groups"]
    for example in SITE_EXAMPLES:  # one release carries the fleet's rules, or every alert fires per site
        assert not of_kind(manifests[example], "PrometheusRule")


def test_triton_requests_gpus_and_is_ready_only_once_its_models_are_loaded(
        manifests: dict[str, list[Manifest]]) -> None:
    values = example_values(SHARED_EXAMPLE)["triton"]
    triton = named(manifests[SHARED_EXAMPLE], "Deployment", "triton")
    pod = triton["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
    for kind in ("requests", "limits"):
        assert container["resources"][kind]["nvidia.com/gpu"] == values["gpusPerReplica"]
    assert values["nodeSelector"].items() <= pod["nodeSelector"].items()
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "--strict-readiness=true" in container["args"]
    assert "--model-repository=/models" in container["args"]
    (models,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert models["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == models["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == values["modelRepository"]["existingClaim"]


def test_triton_serves_grpc_over_mutual_tls_with_the_operator_protocols_restricted(
        manifests: dict[str, list[Manifest]]) -> None:
    from neuroflow.devtools.triton_server import ADMIN_HEADER, RESTRICTED_GRPC, RESTRICTED_HTTP

    values = example_values(SHARED_EXAMPLE)["triton"]
    pod = named(manifests[SHARED_EXAMPLE], "Deployment", "triton")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert {"--grpc-use-ssl=true", "--grpc-use-ssl-mutual=true", "--grpc-server-cert=/tls/tls.crt",
            "--grpc-server-key=/tls/tls.key", "--grpc-root-cert=/tls/ca.crt"} <= set(args)
    # The same restrictions as the local stack's Triton (tested on a real server), the key from a Secret.
    assert f"--grpc-restricted-protocol={','.join(RESTRICTED_GRPC)}:{ADMIN_HEADER}=$(TRITON_ADMIN_KEY)" in args
    assert f"--http-restricted-api={','.join(RESTRICTED_HTTP)}:{ADMIN_HEADER}=$(TRITON_ADMIN_KEY)" in args
    (admin,) = [e for e in container["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    assert admin["valueFrom"]["secretKeyRef"]["name"] == values["adminSecret"]["existingSecret"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tls"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] and volume["secret"]["secretName"] == values["tls"]["existingSecret"]
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # the key is not readable by others


def test_site_workers_reach_triton_over_tls_with_the_certificates_of_their_secret(
        manifests: dict[str, list[Manifest]]) -> None:
    values = example_values("site-north")["inference"]
    env = configmap_env(manifests["site-north"])
    assert env["NEUROFLOW_INFERENCE__TRITON_TLS"] == "true"
    worker = named(manifests["site-north"], "Deployment", "segmentation")
    (container,) = containers(worker)
    (volume,) = [v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == "triton-tls"]
    assert volume["secret"]["secretName"] == values["tritonTls"]["existingSecret"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "triton-tls"]
    for name in ("CA_FILE", "CERT_FILE", "KEY_FILE"):
        assert env[f"NEUROFLOW_INFERENCE__TRITON_{name}"].startswith(mount["mountPath"] + "/")
    # A site on CPU inference mounts no Triton certificates.
    south = named(manifests["site-south"], "Deployment", "segmentation")
    assert not [v for v in south["spec"]["template"]["spec"]["volumes"] if v["name"] == "triton-tls"]


def test_the_schema_knows_the_pipelines_the_code_knows() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    enum = schema["properties"]["site"]["properties"]["pipelines"]["items"]["enum"]
    # Every pipeline routing knows, the post-operative variant included (a post-surgical clinic may list it).
    from neuroflow.ingest.routing import PIPELINE_INPUT_ROLES

    assert set(enum) == set(PIPELINE_INPUT_ROLES) >= {GLIOMA_PIPELINE, METASTASES_PIPELINE, *CHANGE_PIPELINES}
    models = NeuroflowSettings().models
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["site"]["models"]
    pinned = {role: getattr(models, role) for role in type(models).model_fields}
    # The chart pins every model the code pins by default (optional ones stay off unless a site sets them).
    assert {role: {"name": m.name, "version": m.version} for role, m in pinned.items() if m is not None} == defaults


WRONG_VALUES: dict[str, dict[str, Any]] = {
    "a negative wait window": {"site": {"waitWindowS": -5}},
    "an unknown pipeline": {"site": {"pipelines": ["glioma", "glioblastoma"]}},
    "an AE title over 16 characters": {"orthanc": {"aet": "NEUROFLOW-NORTH-MAIN"}},
    "no Secret named": {"secrets": {"existingSecret": ""}},
    "a password in values": {"orthanc": {"password": "hunter2"}},
    "the latest tag": {"image": {"tag": "latest"}},
    "an unpinned model": {"site": {"models": {"glioma": {"version": "latest"}}}},
    "Triton without its address": {"inference": {"tritonUrl": ""}},
    "Triton without the Secret of its TLS certificates": {"inference": {"tritonTls": {"existingSecret": ""}}},
    "a misspelt autoscaling mode": {"autoscaling": {"mode": "kedas"}},
    "a liveness probe that kills at the first failure": {"probes": {"liveness": {"failureThreshold": 0}}},
    "an unknown DICOM Service type": {"orthanc": {"dicomService": {"type": "Ingress"}}},
    "Kafka over TLS without the CA to check it": {"kafka": {"security": {"caSecret": ""}}},
    "Kafka with SASL over plaintext": {"kafka": {"security": {"protocol": "SASL_PLAINTEXT"}}},
    "an OIDC provider without TLS": {"console": {"oidc": {"issuer": "http://keycloak.example/realms/x"}}},
    "console sessions without a signing key": {"console": {"sessionSecret": {"existingSecret": ""}}},
}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        result[key] = merged(result.get(key, {}), value) if isinstance(value, dict) and value else value
    return result


@pytest.mark.parametrize("mistake", sorted(WRONG_VALUES))
def test_wrong_values_fail_at_install_time(mistake: str) -> None:
    values = merged(example_values("site-north"), WRONG_VALUES[mistake])
    with pytest.raises(helm.HelmError):
        helm.Chart.load(CHART).validate_schema(values)


def test_every_scaler_trigger_setting_is_a_string_as_keda_requires(manifests: dict[str, list[Manifest]]) -> None:
    # The ScaledObject CRD types trigger metadata as a map of strings: a number there fails at apply time.
    for example, objects in manifests.items():
        for scaled in of_kind(objects, "ScaledObject"):
            for trigger in scaled["spec"]["triggers"]:
                wrong = {k: v for k, v in trigger["metadata"].items() if not isinstance(v, str)}
                assert not wrong, f"{example}: {scaled['metadata']['name']} {trigger['type']}: {wrong}"


def test_a_worker_cannot_scale_past_the_partitions_of_its_topics() -> None:
    values = merged(example_values("site-north"), {"workers": {"segmentation": {"maxReplicas": 40}},
                                                    "kafka": {"taskTopicPartitions": 12}})
    refusal = r"workers.segmentation.maxReplicas \(40\) exceeds kafka.taskTopicPartitions"
    with pytest.raises(helm.HelmError, match=refusal):
        render(values)


def test_strimzi_topics_are_every_topic_the_code_uses(manifests: dict[str, list[Manifest]]) -> None:
    values = example_values("site-north")["kafka"]
    most_replicas = max(w["maxReplicas"] for w in example_values("site-north")["workers"].values())
    kafka_topics = of_kind(manifests["site-north"], "KafkaTopic")
    assert sorted(t["spec"]["topicName"] for t in kafka_topics) == sorted(topics.all_topics())
    for topic in kafka_topics:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == values["strimziTopics"]["cluster"]
        assert topic["metadata"]["namespace"] == "kafka"
        assert topic["spec"]["partitions"] >= most_replicas
    assert not of_kind(manifests["site-south"], "KafkaTopic"), "off unless a site asks"


def test_grafana_dashboards_are_the_ones_in_deploy(manifests: dict[str, list[Manifest]]) -> None:
    dashboards = named(manifests[SHARED_EXAMPLE], "ConfigMap", "dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    expected = {p.name: p.read_text() for p in (ROOT / "deploy" / "grafana").glob("*.json")}
    assert expected and {name: text.rstrip("\n") for name, text in dashboards["data"].items()} == {
        name: text.rstrip("\n") for name, text in expected.items()}


def test_the_image_and_the_chart_agree_on_the_metrics_port() -> None:
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    image_env = dict(re.findall(r"(NEUROFLOW_[A-Z_]+)=(\S+)", dockerfile))
    chart_port = yaml.safe_load((CHART / "values.yaml").read_text())["metricsPort"]
    assert image_env["NEUROFLOW_METRICS_PORT"] == str(chart_port)
    assert f"EXPOSE {chart_port}" in dockerfile
    unknown = set(image_env) - set(settings_env_names(NeuroflowSettings))
    assert not unknown, f"the Dockerfile sets {unknown}, which NeuroflowSettings does not read"


def test_results_go_only_to_a_destination_the_site_orthanc_knows() -> None:
    values = merged(example_values("site-north"), {"site": {"destination": "pacs-typo"}})
    with pytest.raises(helm.HelmError, match=r'site\.destination "pacs-typo" is not a DICOM peer'):
        render(values)


def test_site_orthanc_runs_the_disk_guard_with_the_threshold_the_monitor_alerts_on(
        manifests: dict[str, list[Manifest]]) -> None:
    guard = (ROOT / "deploy" / "orthanc" / "storage-guard.lua").read_text()
    for example in SITE_EXAMPLES:
        objects = manifests[example]
        files = named(objects, "ConfigMap", "orthanc")["data"]
        config = json.loads(files["neuroflow.json"])
        assert files["storage-guard.lua"].strip() == guard.strip()
        (script,) = [s for s in config["LuaScripts"] if s.endswith("storage-guard.lua")]
        orthanc = named(objects, "Deployment", "orthanc")
        mounts = {m["mountPath"]: m for c in containers(orthanc) for m in c["volumeMounts"]}
        assert mounts[script]["subPath"] == "storage-guard.lua"
        threshold = config["Neuroflow"]["StorageGuard"]["MinimumFreeBytes"]
        assert isinstance(threshold, int) and threshold > 0
        env = named(objects, "ConfigMap", "env")["data"]
        assert int(env["NEUROFLOW_MONITOR__MIN_FREE_BYTES"]) == threshold


def test_site_orthanc_is_https_with_per_service_rights_and_admits_only_declared_dicom_peers(
        manifests: dict[str, list[Manifest]]) -> None:
    """Issue 12: the chart's Orthanc runs the same rights filter and table as the tested development Orthanc
    (deploy/orthanc/service-rights.lua, core/orthanc_rights.py), HTTPS, and the secure DICOM settings."""
    assert (CHART / "files" / "service-rights.lua").read_text() == (
        ROOT / "deploy" / "orthanc" / "service-rights.lua").read_text()
    assert (CHART / "files" / "orthanc-rights.json").read_text() == rights_json(), (
        "run python scripts/gen_orthanc_rights.py")
    for example in SITE_EXAMPLES:
        objects = manifests[example]
        files = named(objects, "ConfigMap", "orthanc")["data"]
        config = json.loads(files["neuroflow.json"])
        assert config["SslEnabled"] is True
        assert config["Neuroflow"]["Rights"] == {user: list(rules) for user, rules in SERVICE_RIGHTS.items()}
        assert "/etc/orthanc/service-rights.lua" in config["LuaScripts"]
        assert (config["DicomCheckCalledAet"], config["DicomAlwaysAllowEcho"], config["DicomAlwaysAllowStore"],
                config["DicomCheckModalityHost"], config["OverwriteInstances"]) == (True, False, False, True, False)
        assert config["PostgreSQL"]["EnableSsl"] is True
        orthanc = named(objects, "Deployment", "orthanc")
        mounts = {m["mountPath"] for c in containers(orthanc) for m in c["volumeMounts"]}
        assert {"/etc/orthanc/service-rights.lua", "/etc/orthanc/tls"} <= mounts
        for deployment in of_kind(objects, "Deployment"):
            if component(deployment) in SERVICE_USERS:
                (container,) = containers(deployment)
                password = next(e for e in container["env"] if e["name"] == "NEUROFLOW_DICOM__ORTHANC_PASSWORD")
                assert password["valueFrom"]["secretKeyRef"]["key"] == f"orthanc-password-{component(deployment)}"


def test_dicom_tls_mounts_the_sites_certificates_when_enabled() -> None:
    values = merged(example_values("site-north"), {"orthanc": {"dicomTls": {"enabled": True,
                                                                            "existingSecret": "north-dicom-tls"}}})
    objects = render(values)
    config = json.loads(named(objects, "ConfigMap", "orthanc")["data"]["neuroflow.json"])
    assert config["DicomTlsEnabled"] is True and config["DicomTlsRemoteCertificateRequired"] is True
    assert all(m["UseDicomTls"] for m in config["DicomModalities"].values())
    volumes = {v["name"]: v for v in named(objects, "Deployment", "orthanc")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dicom-tls"]["secret"]["secretName"] == "north-dicom-tls"



def test_the_console_reads_its_log_in_settings_from_mounted_secrets(tmp_path: Path) -> None:
    """The console (templates/site-console.yaml): its environment builds the console settings the values
    describe, every secret (session key, local users, OIDC client secret) a file of a mounted Secret; its
    NetworkPolicy lets in the ingress controller (and Prometheus) only, and lets it reach PostgreSQL and the
    OIDC provider only."""
    oidc = {"issuer": "https://keycloak.example/realms/hospital", "redirectUrl": "https://console.example/oidc/callback"}
    values = merged(example_values("site-north"), {"console": {"oidc": oidc,
                                                               "localUsers": {"existingSecret": "console-users"}}})
    objects = render(values, release="site-north")
    deployment = named(objects, "Deployment", "console")
    (container,) = containers(deployment)
    assert container["args"] == ["console"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    # Its own environment alone: the services' ConfigMap holds Kafka and Orthanc logins the console has not.
    assert "envFrom" not in container
    env = {e["name"]: e.get("value", f"secret:{e.get('valueFrom', {}).get('secretKeyRef', {}).get('key')}")
           for e in container["env"]}
    for name, value in list(env.items()):
        if name.endswith("_FILE") and value.startswith("/etc/neuroflow-console/"):
            folder, file = value.rsplit("/", 1)
            secret = mounts[folder]["secret"]
            assert file in {item["path"] for item in secret["items"]}, f"{name}: {file} is not in the mounted Secret"
            local = tmp_path / folder.removeprefix("/") / file
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(f"{secret['secretName']}:{secret['items'][0]['key']}-padded-to-16-bytes")
            env[name] = str(local)
    with mock.patch.dict(os.environ, env, clear=True):
        settings = NeuroflowSettings()
    console = settings.console
    assert (console.host, console.port, console.cookie_secure) == ("0.0.0.0", 8095, True)
    assert console.users_file is not None and console.users_file.read_text().startswith("console-users:users.yaml")
    assert console.session_secret_file is not None
    assert console.oidc.issuer == oidc["issuer"] and console.oidc.redirect_url == oidc["redirectUrl"]
    assert console.oidc.client_secret.get_secret_value().startswith("neuroflow-console:oidc-client-secret")
    assert console.oidc.role_claim == "realm_access.roles"
    assert settings.state.dsn.get_secret_value() == "secret:state-dsn" and settings.keys.secret is not None
    assert settings.site == values["site"]["name"] and str(settings.reports_dir).endswith("/reports")
    service = named(objects, "Service", "console")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8095, "metrics": 9400}
    policy = named(objects, "NetworkPolicy", "console")["spec"]
    assert [[p["port"] for p in rule["ports"]] for rule in policy["ingress"]] == [[9400], [8095]]
    # The viewer reads the site Orthanc as the read-only "console" user, over HTTPS against the site CA;
    # Orthanc's policy lets the console's pods in.
    dicom = settings.dicom
    assert (dicom.orthanc_username, dicom.orthanc_password.get_secret_value()) == (
        "console", "secret:orthanc-password-console")
    assert dicom.orthanc_url.startswith("https://") and dicom.orthanc_ca_file is not None
    orthanc_port = int(dicom.orthanc_url.rsplit(":", 1)[1])
    assert egress_ports(named(objects, "NetworkPolicy", "console")) == {5432, 443, orthanc_port}
    orthanc_policy = next(o for o in objects if o["kind"] == "NetworkPolicy"
                          and o["metadata"]["labels"].get("app.kubernetes.io/component") == "orthanc")
    rest_peers = [peer["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
                  for rule in orthanc_policy["spec"]["ingress"] if [x["port"] for x in rule["ports"]] == [orthanc_port]
                  for peer in rule["from"]]
    assert "console" in rest_peers
    # Without OIDC: no client secret mounted, no way out but to PostgreSQL.
    plain = render(example_values("site-north"), release="site-north")
    assert egress_ports(named(plain, "NetworkPolicy", "console")) == {5432, orthanc_port}
    plain_volumes = named(plain, "Deployment", "console")["spec"]["template"]["spec"]["volumes"]
    assert "oidc" not in {v["name"] for v in plain_volumes}
