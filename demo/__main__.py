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
    parser.add_argument("--port", type=int, default=50051, help="router port for `up`")
    return parser


def _up(stack: Stack) -> int:
    pidfile = stack.out / "up.pid"
    stack.start()
    pidfile.write_text(str(os.getpid()))
    print(f"router on {stack.processes['router'].address} (config {stack.config_path})")
    for name in ("wav2vec2", "gama"):
        print(f"{name} model server on {stack.processes[name].address}")
    print(f"logs in {stack.out / 'logs'}; Ctrl-C or `make down` stops everything")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    while not stop and len(stack.alive()) == 3:
        time.sleep(0.5)
    if not stop:
        print(f"a process exited unexpectedly; still running: {stack.alive()}", file=sys.stderr)
    pidfile.unlink(missing_ok=True)
    return 0 if stop else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "up":
        # The README's examples call these addresses.
        stack = Stack(args.models, args.out, args.port, {"wav2vec2": 50061, "gama": 50062})
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
