"""Command-line habits: every console script answers --version and refuses a bad --log-level
with a usage error, and every option of every subcommand says what it is for."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL_SERVERS

BIN = Path(sys.executable).parent


def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from evaluation.cli import _parser as evaluation
    from router.cli import _parser as router

    found = {"router": router, "evaluation": evaluation}
    if MODEL_SERVERS:
        from modelserver.cli import _parser as modelserver

        found["modelserver"] = modelserver
    return found


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_of_every_subcommand_has_help() -> None:
    bare = [
        f"{path}: {action.option_strings[0] if action.option_strings else action.dest}"
        for script, make in _parsers().items()
        for path, action in _walk(make(), script)
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS
    ]
    assert not bare, "options without help:\n" + "\n".join(bare)


@pytest.mark.parametrize("script", ["router", "evaluation", "modelserver"])
def test_version_and_log_level(script: str) -> None:
    if script == "modelserver" and not MODEL_SERVERS:
        pytest.skip("needs the modelserver extra (torch, transformers): Python 3.11's install")
    exe = str(BIN / script)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith(f"{script} "), version
    bad = subprocess.run(
        [exe, "--log-level", "BOGUS", "--help"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "invalid choice: 'BOGUS'" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
