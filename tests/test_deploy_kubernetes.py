"""deploy/kubernetes: every standard manifest passes `kubernetes-validate --strict` (unknown fields rejected) for
the oldest and newest Kubernetes we support; the custom resources (ServiceMonitor, PrometheusRule, KEDA
ScaledObject), which the validator can only warn about, are checked here against what they refer to."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_tools import DEPLOY

from ae_monitor.config import config_from_dict

pytestmark = pytest.mark.ops

K8S = DEPLOY / "kubernetes"
MANIFESTS = sorted(K8S.rglob("*.yaml"))
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "Kustomization"}
KUBERNETES_VERSIONS = ["1.28.0", "1.37.0"]


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def manifest(kind: str) -> dict[str, Any]:
    [found] = [m for m in map(load, MANIFESTS) if m["kind"] == kind]
    return found


def validator() -> str:
    path = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip("kubernetes-validate is not installed: pip install -e '.[dev]'")
    return path


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(K8S)) for p in MANIFESTS])
def test_each_manifest_passes_strict_validation(path: Path, version: str) -> None:
    argv = [validator(), "--strict", "-k", version, str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    if load(path)["kind"] in CUSTOM_KINDS:
        assert "Couldn't find schema for kind" in output, output
        assert "ERROR" not in output
    else:
        assert result.returncode == 0, output
        assert re.match(r"INFO .* passed for resource", output), output


def test_kustomization_lists_every_manifest_of_the_base() -> None:
    listed = {K8S / name for name in load(K8S / "kustomization.yaml")["resources"]}
    assert listed == {p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert {K8S / "keda" / n for n in load(K8S / "keda" / "kustomization.yaml")["resources"]} == {
        K8S / "keda" / "..", K8S / "keda" / "scaledobject.yaml"}  # fmt: skip


def test_the_configmap_holds_a_valid_serve_config() -> None:
    config = config_from_dict(tomllib.loads(manifest("ConfigMap")["data"]["ae-monitor.toml"]))
    assert config.service.http_host == "0.0.0.0"
    assert config.source is not None


def test_the_pod_outlives_the_daemons_drain_and_runs_locked_down() -> None:
    config = config_from_dict(tomllib.loads(manifest("ConfigMap")["data"]["ae-monitor.toml"]))
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + config.service.shutdown_grace_s
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    probes = {name: container[name]["httpGet"]["path"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert container["ports"][0]["containerPort"] == config.service.http_port
    assert {"requests", "limits"} <= container["resources"].keys()


def test_the_service_monitor_scrapes_the_services_metrics_port_as_the_rules_job() -> None:
    service, monitor = manifest("Service"), manifest("ServiceMonitor")
    assert service["metadata"]["name"] == "ae-monitor"  # the operator's job label, which the rules select
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_prometheus_rule_has_exactly_the_groups_of_the_rules_file() -> None:
    assert manifest("PrometheusRule")["spec"] == load(DEPLOY / "prometheus" / "ae-monitor-rules.yml")


def test_keda_scales_the_deployment_on_the_consumer_groups_lag() -> None:
    scaled = manifest("ScaledObject")["spec"]
    config = config_from_dict(tomllib.loads(manifest("ConfigMap")["data"]["ae-monitor.toml"]))
    assert config.source is not None
    assert scaled["scaleTargetRef"]["name"] == manifest("Deployment")["metadata"]["name"]
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == config.source.group_id
    assert [trigger["metadata"]["topic"]] == list(config.source.topics)
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def test_the_retraining_job_registers_candidates_on_the_shared_volume_and_never_promotes_to_production() -> None:
    job = manifest("CronJob")
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"ae-monitor-bundles", "ae-monitor-normal-data"}  # the serving replicas' bundles volume
    pvcs = {load(p)["metadata"]["name"] for p in MANIFESTS if load(p)["kind"] == "PersistentVolumeClaim"}
    assert claims <= pvcs  # every volume it mounts is a claim of the base
    configmaps = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert configmaps == {manifest("ConfigMap")["metadata"]["name"]}
    script = " ".join(pod["containers"][0]["args"])
    assert "ae-monitor train" in script
    assert "registry register" in script
    assert "--promote candidate" in script
    assert "production" not in script
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
