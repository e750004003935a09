"""What the command-line tools share about the terminal: output that may go to a closed pipe,
and help that names each default once."""

from __future__ import annotations

import argparse
import os
import sys


def print_out(text: str) -> None:
    """Print to stdout; a reader that went away (`router admin report E | head`) ends the
    output quietly instead of in a BrokenPipeError traceback."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Appends `(default: X)` only where the help text does not already say its default and
    there is one worth saying (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_standard_options(parser: argparse.ArgumentParser, env_var: str) -> None:
    """`--version` and `--log-level` (default: the environment variable `env_var`, else INFO),
    as every console script of the project has them."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("gama-serving")
    except PackageNotFoundError:  # run from a checkout that was never installed
        installed = "unknown"
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {installed}", help="print the version"
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=os.environ.get(env_var, "INFO"),
        help=f"log verbosity (default: ${env_var}, else INFO)",
    )


def checked_log_level(parser: argparse.ArgumentParser, level: str, env_var: str) -> str:
    """The level, or a usage error naming the variable when its value is none (argparse checks
    choices on what is typed, not on defaults)."""
    if level.upper() not in LOG_LEVELS:
        parser.error(f"${env_var} is {level!r}; choose one of {', '.join(LOG_LEVELS)}")
    return level.upper()
