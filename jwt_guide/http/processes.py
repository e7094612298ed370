"""Processes that die with their parent: make serve's servers, their workers, make gateway's.

A server left running after its supervisor was killed with SIGKILL would hold its port and
serve on, unseen; so every process the project starts to serve sets this first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> bool:
    """Have Linux send this process SIGKILL (or ``signum``) when its parent dies; False if
    ``parent`` is gone already.

    The standard library has no prctl, hence ctypes. PR_SET_PDEATHSIG fires when the thread
    that forked us exits: make serve and the server's main process both fork from their main
    thread. Checking the parent after the call closes the race of a parent that died before
    it. Elsewhere than on Linux it does nothing and returns True. Raises OSError if prctl fails.
    """
    if not sys.platform.startswith("linux"):
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return os.getppid() == parent
