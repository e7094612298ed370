"""What every script of the guide shares: its argument parser and its exit-code mapping.

SPEC "Exit codes and errors": an expected failure is one stderr line ``<prog>: <message>``
and exit 1 (``JwtGuideError``) or 2 (``UsageError``, argparse's usage errors); Ctrl-C is exit
130 and one line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from jwt_guide.errors import JwtGuideError

EXIT_INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for a command ended by Ctrl-C


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one stderr line and exit 2, like every expected failure."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message> (see --help)`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def audience_argument(text: str) -> str:
    """An ``--audience`` value (as JWT_AUDIENCE: printable text, not empty).

    Raises argparse.ArgumentTypeError otherwise.
    """
    if not text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError("an audience is printable text, not empty")
    return text


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Run a script's ``body`` and return its exit code: what it returns, None meaning 0.

    A ``JwtGuideError`` becomes ``<prog>: <message>`` on stderr and its ``exit_code``;
    Ctrl-C becomes ``<prog>: interrupted`` and 130. Before that, Python's own Ctrl-C handling
    is put back: each script replaces it while it imports (see gen.py's first lines), and
    the key folder's atomic changes rely on it.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = body()
    except JwtGuideError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code or 0
