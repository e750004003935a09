"""Where the rollout state lives: a file written atomically (a temporary file, then a
rename), or a Kubernetes ConfigMap patched through the API server, which the kubelet mounts
into every router pod as that file (and swaps atomically too)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from router.rollout.state import RolloutState, StateError, dump_state, parse_state

CONFIGMAP_KEY = "rollout.json"


class StateStore(Protocol):
    def read(self) -> RolloutState:
        """The stored state; empty when nothing was written yet. Raises StateError."""

    def write(self, state: RolloutState) -> None:
        """Replace the stored state, all or nothing. Raises StateError."""

    def describe(self) -> str: ...


class FileStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def read(self) -> RolloutState:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return RolloutState()
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read: {exc.strerror}") from exc
        return parse_state(text, str(self.path))

    def write(self, state: RolloutState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(dump_state(state))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StateError(f"{self.path}: cannot write: {exc.strerror}") from exc


class ConfigMapStore:
    """The state as key `rollout.json` of one ConfigMap. The controller's Role grants get and
    patch on this ConfigMap only (k8s/base/rollout-controller.yaml)."""

    def __init__(self, name: str, namespace: str, api: Any = None) -> None:
        self.name = name
        self.namespace = namespace
        self._api = api

    def describe(self) -> str:
        return f"configmap {self.namespace}/{self.name}"

    def _core(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            self._api = client.CoreV1Api()
        return self._api

    def read(self) -> RolloutState:
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self._core().read_namespaced_config_map(self.name, self.namespace)
        except ApiException as exc:
            raise StateError(f"{self.describe()}: cannot read: {exc.status} {exc.reason}") from exc
        text = (cm.data or {}).get(CONFIGMAP_KEY, "")
        return parse_state(text, self.describe())

    def write(self, state: RolloutState) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {"data": {CONFIGMAP_KEY: dump_state(state)}}
        try:
            self._core().patch_namespaced_config_map(self.name, self.namespace, body)
        except ApiException as exc:
            raise StateError(f"{self.describe()}: cannot patch: {exc.status} {exc.reason}") from exc
