"""Consistency between the Kubernetes objects: probes, ports, labels, selectors, mounts, the
router's configuration and the drain timings. Returns problems as sentences."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import yaml

from router.config import RouterConfig

Doc = dict[str, Any]


def _by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def router_config(docs: list[Doc]) -> RouterConfig:
    (cm,) = [d for d in _by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "router-config"]
    return RouterConfig.model_validate(yaml.safe_load(cm["data"]["router.yaml"]))


def _deployment_errors(d: Doc, docs: list[Doc]) -> list[str]:
    name = d["metadata"]["name"]
    errors = []
    spec = d["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    probes = {k: container.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        if probe is None:
            errors.append(f"{name}: no {kind}")
        elif "grpc" not in probe:
            errors.append(f"{name}: {kind} is not a native gRPC probe")
        elif probe["grpc"]["port"] not in ports.values():
            errors.append(
                f"{name}: {kind} port {probe['grpc']['port']} is not a container port {ports}"
            )
    live, ready = probes["livenessProbe"], probes["readinessProbe"]
    if live and ready and live["grpc"].get("service") == ready["grpc"].get("service"):
        errors.append(f"{name}: liveness and readiness use the same health service name")
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in container.get("resources", {}).get(section, {}):
                errors.append(f"{name}: no {resource} {section}")
    if not spec.get("securityContext", {}).get("runAsNonRoot"):
        errors.append(f"{name}: pod may run as root")
    sc = container.get("securityContext", {})
    if (
        sc.get("allowPrivilegeEscalation") is not False
        or sc.get("readOnlyRootFilesystem") is not True
    ):
        errors.append(f"{name}: container needs allowPrivilegeEscalation false, read-only root")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if mount["name"] not in volumes:
            errors.append(f"{name}: mount {mount['name']} has no volume")
    configmaps = {c["metadata"]["name"] for c in _by_kind(docs, "ConfigMap")}
    for v in volumes.values():
        if "configMap" in v and v["configMap"]["name"] not in configmaps:
            errors.append(f"{name}: volume {v['name']} names a missing ConfigMap")
    args = container.get("args", [])
    if container["name"] == "modelserver":
        expected = {"--port": ports.get("grpc"), "--health-port": ports.get("health"),
                    "--metrics-port": ports.get("metrics")}  # fmt: skip
        for flag, port in expected.items():
            if _flag(args, flag) != str(port):
                errors.append(f"{name}: {flag} is {_flag(args, flag)}, container port {port}")
        drain = float(_flag(args, "--drain-delay-seconds") or 0)
        grace = float(_flag(args, "--grace-seconds") or 20)
        if ready and ready["grpc"]["port"] != ports.get("health"):
            errors.append(f"{name}: readiness probe is not on the health port")
    elif container["name"] == "rollout-controller":
        for flag in ("--health-port", "--metrics-port"):
            port = ports.get(flag.removeprefix("--").removesuffix("-port"))
            if _flag(args, flag) != str(port):
                errors.append(f"{name}: {flag} is {_flag(args, flag)}, container port {port}")
        target = (_flag(args, "--configmap") or "").rpartition("/")[2]
        if target not in configmaps:
            errors.append(f"{name}: --configmap names a missing ConfigMap {target!r}")
        mounts = [PurePosixPath(m["mountPath"]) for m in container.get("volumeMounts", [])]
        config_file = PurePosixPath(_flag(args, "--config") or "")
        if not any(config_file.is_relative_to(m) for m in mounts):
            errors.append(f"{name}: --config {config_file} is not under any volume mount")
        drain, grace = 0.0, 0.0
    else:
        config = router_config(docs)
        s = config.server
        expected = {"server.port": (s.port, ports.get("grpc")),
                    "server.health_port": (s.health_port, ports.get("health")),
                    "telemetry.prometheus_port": (config.telemetry.prometheus_port,
                                                  ports.get("metrics"))}  # fmt: skip
        for field, (configured, port) in expected.items():
            if configured != port:
                errors.append(f"{name}: {field} is {configured}, container port {port}")
        drain, grace = s.drain_delay_seconds, s.grace_seconds
        mounts = [PurePosixPath(m["mountPath"]) for m in container.get("volumeMounts", [])]
        files = [s.admin_token_file] + (
            [s.tls.cert_file, s.tls.key_file, s.tls.client_ca_file] if s.tls else []
        )
        for model in config.models.values():
            if model.tls:
                files += [model.tls.ca_file, model.tls.cert_file, model.tls.key_file]
        for f in files:
            if f is not None and not any(PurePosixPath(f).is_relative_to(m) for m in mounts):
                errors.append(f"{name}: {f} is not under any volume mount")
        errors += _rollout_mount_errors(name, config, container, volumes, docs)
    if spec.get("terminationGracePeriodSeconds", 30) < drain + grace:
        errors.append(
            f"{name}: terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds')} "
            f"< drain delay {drain:g} + grace {grace:g}"
        )
    return errors


def controller_configmap(docs: list[Doc]) -> str | None:
    """The ConfigMap the rollout controller writes (its --configmap), if it is deployed."""
    for d in _by_kind(docs, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "rollout-controller":
                return (_flag(c.get("args", []), "--configmap") or "").rpartition("/")[2]
    return None


def _rollout_mount_errors(
    name: str, config: RouterConfig, container: Doc, volumes: dict[str, Doc], docs: list[Doc]
) -> list[str]:
    """The router reads its rollout state from the ConfigMap the controller writes."""
    state_file = config.rollout.state_file
    if state_file is None:
        return []
    written = controller_configmap(docs)
    for mount in container.get("volumeMounts", []):
        if PurePosixPath(state_file).parent == PurePosixPath(mount["mountPath"]):
            source = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
            if source != written:
                return [f"{name}: rollout.state_file is in ConfigMap {source}, the controller "
                        f"writes {written}"]  # fmt: skip
            return []
    return [f"{name}: rollout.state_file {state_file} is not in a mounted directory"]


def rbac_errors(docs: list[Doc]) -> list[str]:
    """The controller's Role reaches its state ConfigMap only, with get and patch only, and
    is bound to the controller's own ServiceAccount."""
    errors: list[str] = []
    target = controller_configmap(docs)
    if target is None:
        return ["no rollout-controller Deployment"]
    (deployment,) = [
        d for d in _by_kind(docs, "Deployment") if d["metadata"]["name"] == "rollout-controller"
    ]
    account = deployment["spec"]["template"]["spec"].get("serviceAccountName")
    bindings = [
        b
        for b in _by_kind(docs, "RoleBinding") + _by_kind(docs, "ClusterRoleBinding")
        if any(s.get("kind") == "ServiceAccount" and s["name"] == account for s in b["subjects"])
    ]
    if not bindings:
        errors.append(f"ServiceAccount {account} has no RoleBinding")
    roles = {r["metadata"]["name"]: r for r in _by_kind(docs, "Role")}
    for binding in bindings:
        ref = binding["roleRef"]
        if binding["kind"] != "RoleBinding" or ref["kind"] != "Role":
            errors.append(f"{binding['metadata']['name']}: binds beyond the namespace")
            continue
        role = roles.get(ref["name"])
        if role is None:
            errors.append(f"{binding['metadata']['name']}: no Role {ref['name']}")
            continue
        for rule in role["rules"]:
            where = f"Role {ref['name']}"
            if rule.get("apiGroups") != [""] or rule.get("resources") != ["configmaps"]:
                errors.append(f"{where}: reaches {rule.get('resources')} beyond configmaps")
            if rule.get("resourceNames") != [target]:
                errors.append(f"{where}: not limited to ConfigMap {target}")
            if not set(rule.get("verbs", [])) <= {"get", "patch"} or "*" in rule.get("verbs", []):
                errors.append(f"{where}: verbs {rule.get('verbs')} beyond get and patch")
    return errors


def trace_sampling(deployment: Doc) -> dict[str, str]:
    """The OTEL_TRACES_SAMPLER* variables of a Deployment's container."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {
        e["name"]: e.get("value", "")
        for e in container.get("env", [])
        if e["name"].startswith("OTEL_TRACES_SAMPLER")
    }


def _sampling_errors(deployments: list[Doc]) -> list[str]:
    """Every process samples alike, so a trace is kept or dropped as a whole."""
    errors: list[str] = []
    seen = {d["metadata"]["name"]: trace_sampling(d) for d in deployments}
    for name, sampling in seen.items():
        if sampling.get("OTEL_TRACES_SAMPLER") != "parentbased_traceidratio":
            errors.append(f"{name}: OTEL_TRACES_SAMPLER is not parentbased_traceidratio")
            continue
        try:
            ratio = float(sampling.get("OTEL_TRACES_SAMPLER_ARG", ""))
        except ValueError:
            ratio = -1.0
        if not 0 <= ratio <= 1:
            errors.append(f"{name}: OTEL_TRACES_SAMPLER_ARG is not a ratio in [0, 1]")
    if len({tuple(sorted(v.items())) for v in seen.values()}) > 1:
        errors.append(f"trace sampling differs between Deployments: {seen}")
    return errors


def consistency_errors(docs: list[Doc]) -> list[str]:
    errors: list[str] = []
    deployments = _by_kind(docs, "Deployment")
    labels = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in deployments
    }
    for d in deployments:
        if not _matches(d["spec"]["selector"]["matchLabels"], labels[d["metadata"]["name"]]):
            errors.append(f"{d['metadata']['name']}: selector does not match its pod labels")
        errors += _deployment_errors(d, docs)
    errors += _sampling_errors(deployments)
    services = {s["metadata"]["name"]: s for s in _by_kind(docs, "Service")}
    for sname, service in services.items():
        targets = [
            d
            for d in deployments
            if _matches(service["spec"]["selector"], labels[d["metadata"]["name"]])
        ]
        if len(targets) != 1:
            errors.append(f"service {sname}: selector matches {len(targets)} Deployments")
            continue
        (container,) = targets[0]["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if target not in ports and target not in ports.values():
                errors.append(f"service {sname}: targetPort {target} is not a container port")
    config = router_config(docs)
    for model, settings in config.models.items():
        for endpoint in settings.endpoints:
            host, _, port = endpoint.removeprefix("dns:///").rpartition(":")
            service = services.get(host)
            if service is None:
                errors.append(f"router models.{model}: no Service {host}")
            elif service["spec"].get("clusterIP") != "None":
                errors.append(f"router models.{model}: Service {host} is not headless")
            elif int(port) not in [p["port"] for p in service["spec"]["ports"]]:
                errors.append(f"router models.{model}: Service {host} has no port {port}")
    router = [d for d in deployments if d["metadata"]["name"] == "router"]
    if not router or router[0]["spec"].get("replicas", 1) < 2:
        errors.append("router: needs at least 2 replicas")
    for kind in ("PodDisruptionBudget",):
        for obj in _by_kind(docs, kind):
            selector = obj["spec"]["selector"]["matchLabels"]
            if not any(_matches(selector, lab) for lab in labels.values()):
                errors.append(f"{kind} {obj['metadata']['name']}: selects no Deployment")
    for hpa in _by_kind(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] not in labels:
            errors.append(f"HPA {hpa['metadata']['name']}: no such Deployment")
    for policy in _by_kind(docs, "NetworkPolicy"):
        protected = [
            n
            for n, lab in labels.items()
            if _matches(policy["spec"]["podSelector"]["matchLabels"], lab)
        ]
        if not protected:
            errors.append(f"NetworkPolicy {policy['metadata']['name']}: protects nothing")
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and not any(
                    _matches(peer["podSelector"]["matchLabels"], lab) for lab in labels.values()
                ):
                    errors.append(
                        f"NetworkPolicy {policy['metadata']['name']}: a peer selects no pods"
                    )
    return errors
