"""`python -m demo` (make demo): the whole story on the tiny models, in about a minute.
`python -m demo up` (make up): the stack in the foreground until Ctrl-C or `make down`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from demo.stack import Stack
from demo.story import run_story
from evaluation.manifest import ManifestError
from evaluation.runner import CompareError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__)
    parser.add_argument("command", nargs="?", choices=("story", "up"), default="story")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--dataset", type=Path, default=Path("data/demo/manifest.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--seconds", type=float, default=24.0, help="online traffic duration")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("config/router.yaml"),
        help="`up`: the router configuration to run (its ports say where each process listens)",
    )
    return parser


def _up(stack: Stack) -> int:
    pidfile = stack.out / "up.pid"
    stack.start()
    pidfile.write_text(str(os.getpid()))
    print(f"router on {stack.processes['router'].address} (config {stack.config_path})")
    for p in stack.processes.values():
        if p.name not in ("router", "rollout-controller"):
            print(f"{p.name} model server on {p.address}")
    print(f"logs in {stack.out / 'logs'}; Ctrl-C or `make down` stops everything")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    # Every process started, whatever their number: one that dies takes the stack down,
    # naming itself and showing why.
    while not stop and not (exited := stack.exited()):
        time.sleep(0.5)
    if not stop:
        for p in exited:
            code = p.proc.returncode if p.proc else None
            print(
                f"{p.name} exited unexpectedly (exit code {code}); the end of {p.log}:\n"
                f"{p.log_tail()}",
                file=sys.stderr,
            )
    pidfile.unlink(missing_ok=True)
    return 0 if stop else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "up":
        # The shipped configuration as it stands: the README's examples call its addresses.
        try:
            stack = Stack.from_config(args.config, args.models, args.out)
        except (OSError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            print(f"demo up: {args.config}: cannot run it as a local stack: {exc}", file=sys.stderr)
            return 2
    else:
        stack = Stack(args.models, args.out)
    code = 1
    try:
        if args.command == "up":
            code = _up(stack)
        else:
            code = asyncio.run(run_story(stack, args.dataset, args.seconds))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except (ManifestError, CompareError, RuntimeError, TimeoutError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        code = 2
    finally:
        # A second Ctrl-C must not leave the servers running half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        killed = stack.stop()
        left = stack.alive()
        note = f" ({', '.join(killed)} needed SIGKILL)" if killed else ""
        print(f"stopped {len(stack.processes)} processes{note}; still running: {left or 'none'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
