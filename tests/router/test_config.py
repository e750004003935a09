"""The router configuration file: paths mean the same from any directory, and one load reports
every problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from router.config import ConfigError, load_config
from tests.router.conftest import base_config

ROOT = Path(__file__).resolve().parents[2]


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: object) -> None:
    cfg = base_config({"a": ["127.0.0.1:1"]}, tag={"primary": "a"})
    cfg["alerting"] = {"history_path": "state/alerts.sqlite"}
    cfg["rollout"] = {"state_file": "state/rollout.json"}
    cfg["server"]["admin_token_file"] = "secrets/token"
    cfg["server"]["tls"] = {"cert_file": "tls/router.crt", "key_file": "/abs/router.key"}
    cfg["models"]["a"]["tls"] = {"ca_file": "tls/ca.crt"}
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = Path.cwd()
    os.chdir(elsewhere)
    try:
        config = load_config(Path("../conf/router.yaml"))
    finally:
        os.chdir(cwd)
    conf = (tmp_path / "conf").resolve()
    assert config.alerting.history_path == conf / "state/alerts.sqlite"
    assert config.rollout.state_file == conf / "state/rollout.json"
    assert config.server.admin_token_file == conf / "secrets/token"
    assert config.server.tls is not None and config.server.tls.cert_file == conf / "tls/router.crt"
    assert config.server.tls.key_file == Path("/abs/router.key")  # absolute stays
    tls = config.models["a"].tls
    assert tls is not None and tls.ca_file == conf / "tls/ca.crt"


def test_a_load_lists_field_and_reference_errors_together(tmp_path: Path) -> None:
    cfg = base_config({"a": ["127.0.0.1:1"]}, tag={"primary": "a"}, embed={"primary": "b"})
    cfg["server"]["max_in_flight"] = 0
    cfg["routes"]["tag"]["experiment"] = {
        "name": "ab",
        "seed": "p1",
        "ramp": [0.5, 1.0],
        "arms": [{"name": "control", "model": "a", "weight": 1.0}],
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"a": frozenset({"embed"})})
    errors = caught.value.errors
    assert any(e.startswith("server.max_in_flight: ") for e in errors), errors
    assert "routes.embed.primary: unknown model 'b' (models: a)" in errors
    assert any(e.startswith("rollout.state_file: required") for e in errors), errors
    assert "routes.tag.primary: model 'a' cannot tag (it supports embed)" in errors
    assert str(path) in str(caught.value) and "server.max_in_flight" in str(caught.value)


def test_the_shipped_configuration_loads() -> None:
    config = load_config(ROOT / "config" / "router.yaml")
    assert config.rollout.state_file is not None
    assert config.rollout.state_file.is_relative_to(ROOT / "config")
    experiments = [r.experiment for r in config.routes.values() if r.experiment]
    assert experiments and all(e.ramp for e in experiments)
