"""Install anywhere: the extras `make demo` and `make test` install resolve, within the pins of
constraints.txt, for every supported platform and Python. uv evaluates the markers for the
target platform (pip's --platform evaluates them against this machine, so it cannot check this);
it reads package metadata from the registry, downloading no wheels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = {
    "macOS 14 on Apple silicon": "aarch64-apple-darwin",
    "Linux aarch64": "aarch64-manylinux_2_28",
    "Linux x86_64": "x86_64-manylinux_2_28",
}
PYTHONS = ("3.11", "3.12", "3.13")
# What the Makefile installs: everything on 3.11, the router's side on the other Pythons.
EXTRA_SETS = {
    "everything": ["router", "compare", "modelserver", "reference", "dev"],
    "router's side": ["router", "compare", "dev"],
}


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).exists():
        pytest.skip("needs uv (PyPI package uv, in the dev extra)")
    return found


def _resolve(
    uv: str, extras: list[str], python: str, platform: str, out: Path
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [uv, "pip", "compile", "-q", str(ROOT / "pyproject.toml"),
         *(f"--extra={e}" for e in extras), "-c", str(ROOT / "constraints.txt"),
         "--python-version", python, "--python-platform", PLATFORMS[platform],
         "--no-header", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # macOS 14 is the oldest supported (torch 2.13's wheels are macosx_14_0).
        env={**os.environ, "MACOSX_DEPLOYMENT_TARGET": "14.0"},
    )  # fmt: skip


def _pins(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(ln.split(" ")[0].split("==") for ln in lines if "==" in ln and ln[0] != " ")


def test_the_extras_resolve_within_the_pins_everywhere(tmp_path: Path) -> None:
    """Every platform and Python at once (each resolution waits on the registry, not the CPU).
    Everything resolving within the pins means any subset does too; the router's side is
    resolved once more on each platform to show it pulls no torch."""
    uv = _uv()
    runs = {
        (platform, python, name): _resolve(
            uv, extras, python, platform, tmp_path / f"{platform}-{python}-{name}.txt"
        )
        for platform in PLATFORMS
        for python in PYTHONS
        for name, extras in EXTRA_SETS.items()
        if name == "everything" or python == "3.13"
    }
    for (platform, python, name), run in runs.items():
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"{platform}, Python {python}, {name}:\n{err}"
        pins = _pins(tmp_path / f"{platform}-{python}-{name}.txt")
        if name == "everything":
            assert pins["torch"] == "2.13.0"
            # The CUDA build of ONNX Runtime only where it has wheels.
            gpu = platform == "Linux x86_64"
            assert ("onnxruntime-gpu" in pins) == gpu and ("onnxruntime" in pins) != gpu, pins
        else:
            assert "torch" not in pins, f"the router's side pulls torch on {platform}"


def test_every_cap_lives_in_pyproject() -> None:
    """The Makefile installs with constraints.txt only: no version cap of its own."""
    makefile = (ROOT / "Makefile").read_text()
    assert "protobuf<" not in makefile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert "protobuf<7" in project["dependencies"]
