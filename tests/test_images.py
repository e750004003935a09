"""The Dockerfiles cannot be built here; check what can be checked without a daemon."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _final_stage(text: str) -> str:
    return text[text.rindex("\nFROM ") :]


@pytest.mark.parametrize("image", ["router", "modelserver"])
def test_dockerfile_sources_user_and_ports(image: str) -> None:
    text = (ROOT / "docker" / f"{image}.Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
    final = _final_stage(text)
    assert re.search(r"^USER 10001:10001$", final, flags=re.M)
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", final, flags=re.M)[0].split()}
    manifest = (
        ROOT / "k8s" / "base" / ("router.yaml" if image == "router" else "modelserver-gama.yaml")
    )
    deployment = next(yaml.safe_load_all(manifest.read_text()))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    ports = {p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert ports == exposed
    assert pod["containers"][0]["image"].startswith(f"ghcr.io/gama-serving/{image}:")


def test_dockerignore_admits_every_copied_path() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), flags=re.M):
            for source in line.split()[:-1]:
                assert source.rstrip("/") in allowed, f"{dockerfile.name}: {source} is ignored"
