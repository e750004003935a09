"""Limits on the shape of the serving code that keep its request paths easy to change:
no function in router/ or modelserver/ with more than six exits (returns and raises), and a
failover policy (`Dispatcher.run`) that fits on one screen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
MAX_EXITS = 6

Function = ast.FunctionDef | ast.AsyncFunctionDef


def exits(function: Function) -> int:
    """Return and raise statements of the function itself (nested functions have their own)."""
    count = 0
    todo: list[ast.AST] = list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        if isinstance(node, Function | ast.Lambda | ast.ClassDef):
            continue
        count += isinstance(node, ast.Return | ast.Raise)
        todo += ast.iter_child_nodes(node)
    return count


def functions(*packages: str) -> list[tuple[str, Function]]:
    found = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, Function):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node))
    return found


def test_exits_are_counted_per_function() -> None:
    (tree,) = ast.parse(
        "def f(x):\n"
        "    if x: return 1\n"
        "    def g(): return 2\n"
        "    if x > 1: raise ValueError\n"
        "    return 3\n"
    ).body
    assert isinstance(tree, ast.FunctionDef) and exits(tree) == 3


def test_no_function_has_more_than_six_exits() -> None:
    found = functions("router", "modelserver")
    assert len(found) > 500
    assert [name for name, f in found if exits(f) > MAX_EXITS] == []


def test_the_failover_policy_fits_on_one_screen() -> None:
    (run,) = [
        f for name, f in functions("router/failover") if "dispatch.py" in name and f.name == "run"
    ]
    assert run.end_lineno is not None and run.end_lineno - run.lineno + 1 <= 40
