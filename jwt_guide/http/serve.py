"""Step 4 in production: the JWKS server and the protected backend under jwt_guide.http.server.

The guide runs each backend as one Node.js process; ``make jwks-server`` and ``make
protected-server`` run Flask's development server. ``make serve`` (``python -m
jwt_guide.http.serve``, from the repository) runs both apps
(``jwt_guide.http.jwks_app:create_app()`` and ``protected_server:create_app()``) under
jwt_guide.http.server, the project's production WSGI server (uvloop and llhttp, one event
loop per worker, HTTP keep-alive), with ``SERVER_WORKERS`` worker processes each (default:
the number of cores), on the hosts and ports of config.py. It stays in the foreground until
Ctrl-C or SIGTERM, then stops both servers and their workers.

The limits of SPEC.md's "Serving limits" are the server's (see its docstring): HTTP/1.x only,
a deadline for each request head that closes silent, stalled and idle connections, bounded
heads, bodies and connections. The servers die with this process even when it is killed
with SIGKILL, and stop when ``make``, our parent, exits on SIGINT (make waits for its
children then, but does not pass the signal on).

Why not granian, gunicorn or uvicorn: see jwt_guide/http/server.py (measured by make bench).
Before it, granian served GET /with-auth 3 to 5 times what gunicorn did with sync, gthread or
gevent workers; uWSGI's own HTTP socket starves keep-alive connections beyond one per worker.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

from jwt_guide.cli import ArgumentParser, run
from jwt_guide.config import Config, load_config
from jwt_guide.errors import JwtGuideError, UsageError
from jwt_guide.http.devserver import bind_address, listen
from jwt_guide.http.processes import die_with_parent

# The repository: protected_server.py, the guide's step 4.b, is imported from there.
ROOT = Path(__file__).resolve().parents[2]
READY_SECONDS = 30.0
STOP_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# make's fatal signals: on these it waits for its children and exits; it passes on only SIGTERM.
MAKE_FATAL_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
# Silent, stalled and idle connections are closed after this (SPEC: within 30 s).
READ_TIMEOUT_SECONDS = 20
MAKE_NAMES = ("make", "gmake")
SERVER_LIBRARIES = ("uvloop", "httptools")  # the [serve] extra


class Stop(Exception):
    """Raised in the main loop when a stop signal arrives (``signum``: which one)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Server:
    """One of the two servers: what it serves, where, and what it prints once ready."""

    title: str
    target: str
    host: str
    port: int
    port_variable: str
    banner: str


Running = list[tuple[Server, "subprocess.Popen[bytes]"]]


def server_command(target: str, host: str, port: int, workers: int) -> list[str]:
    """The command line that serves the app factory ``target`` (``module:function``) with
    jwt_guide.http.server (its other limits are its own constants)."""
    return [
        sys.executable, "-m", "jwt_guide.http.server", "--factory", "--host", host,
        "--port", str(port), "--workers", str(workers),
        "--read-timeout", str(READ_TIMEOUT_SECONDS), target,
    ]  # fmt: skip


def servers(config: Config) -> list[Server]:
    """The two servers of the guide's step 4, with the guide's banners."""
    host = bind_address(config.bind_host)  # the server takes an address, not a name
    return [
        Server("JWKS server", "jwt_guide.http.jwks_app:create_app", host, config.jwks_port,
               "JWKS_PORT", f"JWKS API is on port {config.jwks_port}"),
        Server("protected server", "protected_server:create_app", host,
               config.protected_port, "PROTECTED_PORT",
               f"Backend is running on port {config.protected_port}"),
    ]  # fmt: skip


def _port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def check(config: Config, planned: Sequence[Server]) -> None:
    """Refuse to start what cannot work; warn about what will answer errors.

    Raises JwtGuideError if the server's libraries are missing, the two ports are the same, or
    a port is taken.
    """
    missing = [name for name in SERVER_LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        raise JwtGuideError(f"{' and '.join(missing)} not installed: run make serve "
                            "(or pip install 'jwt-guide[serve]')")  # fmt: skip
    if config.jwks_port == config.protected_port:
        raise JwtGuideError(f"JWKS_PORT and PROTECTED_PORT are both {config.jwks_port}: change one")
    if not config.public_key_path.exists():  # as jwks_server.py refuses to start
        raise UsageError(f"no public key at {config.public_key_path}: run gen.py first")
    for server in planned:
        # Bound and let go at once: the bind says what is wrong (the host, or a port that
        # is taken) in one line, before any worker starts.
        listen(server.host, server.port, server.port_variable).close()


def _environment() -> dict[str, str]:
    # The apps are imported by name: make the repository importable whatever the current
    # directory, which stays the user's so that a relative JWT_KEYS_DIR means the same thing.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def start(server: Server, workers: int) -> subprocess.Popen[bytes]:
    """Start ``server`` in its own process group (so that stopping it reaches its workers),
    set to die with this process even if it is killed with SIGKILL."""
    supervisor = os.getpid()

    def before_exec() -> None:
        # Safe in a preexec_fn: serve.py starts no thread.
        if not die_with_parent(supervisor):
            os._exit(1)

    return subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
        server_command(server.target, server.host, server.port, workers),
        env=_environment(), start_new_session=True, preexec_fn=before_exec,  # noqa: PLW1509
    )  # fmt: skip


class ParentWatch:
    """Tells when ``make``, our parent, is exiting on a signal it does not pass on to us.

    On SIGINT, SIGHUP or SIGQUIT, GNU make only waits for its children, then exits; its
    handler first resets the signal to its default action, which /proc/PID/status shows: the
    signal leaves SigCgt (checked with GNU make 4.3). Does nothing if the parent is not make
    or there is no /proc.
    """

    def __init__(self) -> None:
        self.parent = os.getppid()
        self.caught = (self._caught() or set()) if self._is_make() else set()

    def _is_make(self) -> bool:
        try:
            return Path(f"/proc/{self.parent}/comm").read_text().strip() in MAKE_NAMES
        except OSError:
            return False

    def _caught(self) -> set[int] | None:
        try:
            status = Path(f"/proc/{self.parent}/status").read_text()
        except OSError:
            return None
        mask = next((int(line.split()[1], 16) for line in status.splitlines()
                     if line.startswith("SigCgt:")), 0)  # fmt: skip
        return {s for s in MAKE_FATAL_SIGNALS if mask >> (s - 1) & 1}

    def exiting_on(self) -> int | None:
        """The signal make is exiting on, or None while it is not."""
        if not self.caught or os.getppid() != self.parent:
            return None
        caught = self._caught()
        if caught is None:  # gone meanwhile
            return None
        lost = self.caught - caught
        return min(lost) if lost else None


def wait_ready(server: Server, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until ``server`` accepts connections; raises JwtGuideError if it exits or times out."""
    while not _port_in_use(server.host, server.port):
        code = process.poll()
        if code is not None:
            raise JwtGuideError(f"the {server.title} exited with code {code} while starting")
        if time.monotonic() > deadline:
            raise JwtGuideError(f"the {server.title} did not open port {server.port} in time")
        time.sleep(0.1)


def stop(running: Running) -> None:
    """Stop every server gracefully (SIGTERM), then kill what is left after STOP_SECONDS.

    SIGTERM goes to each server's main process only, which stops its own workers: sent to
    the whole process group, it could end a worker before its main process knew it was
    stopping, and the main process would log the worker's exit and start another. SIGKILL,
    at the end, goes to each group (the workers left behind, if any).
    """
    for _, process in running:
        process.send_signal(signal.SIGTERM)  # a no-op for a process already waited for
    deadline = time.monotonic() + STOP_SECONDS
    for _, process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.1, deadline - time.monotonic()))
    for _, process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind, if any
        process.wait()


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signum)


def supervise(running: Running, parent: ParentWatch) -> NoReturn:
    """Block until a stop signal, or until make, our parent, exits on one (raises Stop);
    raises JwtGuideError if a server exits on its own."""
    while True:
        for server, process in running:
            code = process.poll()
            if code is not None:
                raise JwtGuideError(f"the {server.title} exited with code {code}: stopping")
        signum = parent.exiting_on()
        if signum is not None:
            raise Stop(signum)
        time.sleep(0.5)


def serve(config: Config) -> int:
    """Start both servers, print the guide's banners, and serve until a stop signal.

    Returns the signal that stopped them. Raises JwtGuideError if they cannot start or one exits.
    """
    planned = servers(config)
    check(config, planned)
    parent = ParentWatch()
    running: Running = []
    previous = {s: signal.signal(s, _raise_stop) for s in STOP_SIGNALS}
    try:
        for server in planned:
            running.append((server, start(server, config.server_workers)))
        deadline = time.monotonic() + READY_SECONDS
        for server, process in running:
            wait_ready(server, process, deadline)
            print(server.banner, flush=True)
        print(f"{config.server_workers} worker(s) per server; Ctrl-C stops both",
              flush=True)  # fmt: skip
        supervise(running, parent)
    except Stop as e:
        print("Stopping both servers", flush=True)
        return e.signum
    finally:
        for s in STOP_SIGNALS:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        stop(running)
        for s, handler in previous.items():
            signal.signal(s, handler)


def build_parser() -> argparse.ArgumentParser:
    """The command line of make serve."""
    return ArgumentParser(
        prog="python -m jwt_guide.http.serve",
        description="Serve the JWKS (step 4.a, http://$JWT_BIND_HOST:$JWKS_PORT/keys, default "
        "127.0.0.1:3344) and the protected backend (step 4.b, $PROTECTED_PORT, default 2233) "
        "under jwt_guide.http.server, a production WSGI server, with $SERVER_WORKERS workers "
        "each (default: the number of cores), until Ctrl-C or SIGTERM. Every variable of "
        "config.py applies.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run make serve; return the exit code."""
    build_parser().parse_args(argv)
    # Ctrl-C (also make's, see ParentWatch) exits 130 as in every script; SIGTERM is a request.
    return run("serve", lambda: 130 if serve(load_config()) == signal.SIGINT else 0)


if __name__ == "__main__":
    sys.exit(main())
