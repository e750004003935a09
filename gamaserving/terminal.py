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
