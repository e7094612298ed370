"""Whether a folder may have changed since the last look, for less than a ``stat`` costs.

The JWKS server serves a replaced key file on the very next request, so it looked at its two
key files (two ``stat`` calls, about 4 µs) on every request: 40% of what a ``GET /keys``
cost in Python. On Linux the kernel says instead: an inotify watch on the keys folder queues
an event in the same system call that creates, replaces, renames or removes a file there, so
"nothing queued" (one non-blocking ``read``, under 1 µs) means the files are as they were
when the queue was last emptied. The standard library has no inotify, hence ctypes (as for
``prctl`` in jwt_guide.http.processes); the inotify packages on PyPI add a dependency for
these few calls.

What inotify cannot see, and the safety net for it: a change outside the folder that a path
in it leads to (the folder itself a symlink that is swapped, a key file that is a symlink to a
file edited elsewhere). ``changed`` therefore also says True at least every
``RECHECK_SECONDS``, and always where inotify cannot be had (not Linux, the watch limit
reached, the folder missing or gone), which is the plain ``stat`` on every request. The
recheck also watches anew when the path leads to another folder than the one watched (a
swapped symlink, a renamed parent folder): otherwise every later change in the folder served
would be seen only at a recheck.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

RECHECK_SECONDS = 1.0
# <sys/inotify.h>: every change of an entry of the folder, and of the folder itself.
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED = 0x400, 0x800, 0x8000
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
           | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)  # fmt: skip
GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED  # the watch no longer follows the path
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class FolderWatch:
    """``changed()``: whether ``folder`` may have changed since the previous call (True on
    the first). Not thread-safe: callers that share one hold a lock around the call and what
    they do with its answer."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.clock = clock
        self.fd: int | None = None
        self.watched: tuple[int, int] | None = None  # st_dev and st_ino of the folder watched
        self.pid = os.getpid()
        self.next_recheck = 0.0  # the first call says True
        self._watch()

    def _watch(self) -> None:
        if not sys.platform.startswith("linux"):
            return
        # Before the watch: a swap between the two is then seen as a change at the recheck.
        identity = self._identity()
        if identity is None:
            return  # no folder: stat every time
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return  # EMFILE, or the per-user limit of inotify instances: stat every time
        if libc.inotify_add_watch(fd, os.fsencode(self.folder), WATCHED) < 0:
            os.close(fd)  # no folder, or the limit of watches: stat every time
            return
        self.fd = fd
        self.watched = identity

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.folder)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def changed(self) -> bool:
        """Whether the folder may have changed since the previous call."""
        if self.pid != os.getpid():
            # A forked child (a server that builds the app before forking its workers):
            # the queue is shared with the parent and its other children, each of which
            # would empty it for all. This process gets a queue of its own.
            self.pid = os.getpid()
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self._watch()
            return True
        now = self.clock()
        if now >= self.next_recheck:
            self.next_recheck = now + RECHECK_SECONDS
            if self.fd is not None and self._identity() != self.watched:
                self.close()  # the path leads to another folder now: watch that one
            if self.fd is None:
                self._watch()  # the folder may be back (or was made since)
            self._drain()  # what is queued is covered by this answer
            return True
        return self.fd is None or self._drain()

    def _drain(self) -> bool:
        """Empty the event queue; whether it held anything."""
        if self.fd is None:
            return True
        try:
            events = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return False
        except OSError:
            self.close()
            return True
        offset = 0
        while offset + _EVENT.size <= len(events):
            _, mask, _, length = _EVENT.unpack_from(events, offset)
            if mask & GONE:  # the folder was removed or moved: stat every time from now on
                self.close()
                break
            offset += _EVENT.size + length
        return True

    def close(self) -> None:
        """Stop watching (``changed`` then says True every time)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
