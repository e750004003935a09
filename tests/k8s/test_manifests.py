"""The Kubernetes manifests: valid against the 1.30 schemas, and consistent with each other
and with the processes they run."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.k8s_checks import consistency_errors, rbac_errors, router_config

K8S = Path(__file__).resolve().parents[2] / "k8s"
VERSION = "1.30.0"


def _load(paths: list[Path]) -> list[dict[str, Any]]:
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


def _base() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return _load([K8S / "base" / name for name in kustomization["resources"]])


def _validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)


def _deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def test_base_and_examples_match_the_kubernetes_schemas() -> None:
    _validate(_base())
    _validate(_load(sorted((K8S / "examples").glob("*.yaml"))))


def test_base_is_consistent() -> None:
    docs = _base()
    assert consistency_errors(docs) == []
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy", "ConfigMap"} <= kinds  # fmt: skip
    assert router_config(docs).server.admin_token_file is not None


def test_a_broken_probe_port_is_caught() -> None:
    docs = copy.deepcopy(_base())
    _deployment(docs, "wav2vec2")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][
        "grpc"
    ]["port"] = 9999
    errors = consistency_errors(docs)
    assert any("wav2vec2: readinessProbe port 9999 is not a container port" in e for e in errors)


def _role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Role")


def test_the_controller_may_touch_its_state_configmap_only() -> None:
    docs = _base()
    assert rbac_errors(docs) == []
    (rule,) = _role(docs)["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["router-rollout-state"],
        "verbs": ["get", "patch"],
    }
    controller = _deployment(docs, "rollout-controller")
    assert controller["spec"]["replicas"] == 1
    assert controller["spec"]["strategy"] == {"type": "Recreate"}  # never two deciders
    state = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "router-rollout-state"
    )
    assert "data" not in state  # `kubectl apply` must never reset the fleet's coverage


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["rules"][0].update({"resourceNames": []}), "not limited to ConfigMap"),
        (lambda r: r["rules"][0].update({"verbs": ["get", "patch", "delete"]}), "beyond get"),
        (lambda r: r["rules"][0].update({"resources": ["configmaps", "secrets"]}), "beyond"),
        (lambda r: r["rules"][0].update({"verbs": ["*"]}), "beyond get"),
    ],
)  # fmt: skip
def test_a_broader_role_is_caught(mutate: Any, message: str) -> None:
    docs = copy.deepcopy(_base())
    mutate(_role(docs))
    assert any(message in e for e in rbac_errors(docs)), rbac_errors(docs)


def test_the_router_reads_the_state_the_controller_writes() -> None:
    docs = copy.deepcopy(_base())
    router = _deployment(docs, "router")["spec"]["template"]["spec"]
    next(v for v in router["volumes"] if v["name"] == "rollout-state")["configMap"]["name"] = (
        "router-config"
    )
    assert any("the controller writes router-rollout-state" in e for e in consistency_errors(docs))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: _deployment(d, "gama")["spec"]["template"]["metadata"]["labels"].update(
            {"app.kubernetes.io/name": "gamma"}), "selector does not match"),
        (lambda d: _deployment(d, "router")["spec"].update({"replicas": 1}), "at least 2"),
        (lambda d: _deployment(d, "router")["spec"]["template"]["spec"].update(
            {"terminationGracePeriodSeconds": 10}), "terminationGracePeriodSeconds 10"),
        (lambda d: _deployment(d, "router")["spec"]["template"]["spec"]["containers"][0][
            "livenessProbe"]["grpc"].update({"service": "readiness"}), "same health service"),
        (lambda d: _deployment(d, "gama")["spec"]["template"]["spec"]["containers"][0]["env"][
            -1].update({"value": "0.5"}), "trace sampling differs"),
    ],
)  # fmt: skip
def test_other_inconsistencies_are_caught(mutate: Any, message: str) -> None:
    docs = copy.deepcopy(_base())
    mutate(docs)
    assert any(message in e for e in consistency_errors(docs)), consistency_errors(docs)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_build_validate_and_stay_consistent(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: overlays need `kubectl kustomize` to build")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    _validate(docs)
    assert consistency_errors(docs) == []
    assert rbac_errors(docs) == []
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "rollout-controller"), ("Role", "rollout-controller"),
            ("RoleBinding", "rollout-controller"), ("ServiceAccount", "rollout-controller"),
            ("ConfigMap", "router-rollout-state")} <= kinds  # fmt: skip
    assert all(d["metadata"].get("namespace") == "gama-serving" for d in docs)
    for name in ("wav2vec2", "gama"):
        spec = _deployment(docs, name)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        device = next(a for a in container["args"] if a.startswith("--device="))
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        if overlay == "gpu":
            assert device == "--device=cuda" and gpus == 1
            assert container["image"].endswith("-cuda")
            assert spec["nodeSelector"] and spec["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert device == "--device=cpu" and gpus is None
