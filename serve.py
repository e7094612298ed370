"""Step 4 in production: the JWKS server and the protected backend under granian.

The guide runs each backend as one Node.js process; ``make jwks-server`` and ``make
protected-server`` run Flask's development server. ``make serve`` runs both apps
(``jwks_server:create_app()`` and ``protected_server:create_app()``) under granian, a
WSGI server written in Rust with HTTP keep-alive, with ``SERVER_WORKERS`` worker processes
each (default: the number of cores), on the hosts and ports of config.py. It stays in the
foreground until Ctrl-C or SIGTERM, then stops both servers and their workers.

Why granian: measured on a 2-core machine with ``wrk -t1 -c16``, 2 workers, it served
GET /with-auth 3 to 5 times and GET /keys 2.5 to 4 times what gunicorn did with sync,
gthread or gevent workers, with a lower p99. uWSGI's own HTTP socket looked faster but
starves keep-alive connections beyond one per worker. One blocking thread per worker: the
apps are CPU-bound under the GIL, where more threads measured slower.
"""

from __future__ import annotations

import argparse
import contextlib
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

from config import AppError, ArgumentParser, Config, load_config

HERE = Path(__file__).resolve().parent
READY_SECONDS = 30.0
STOP_SECONDS = 10.0
BLOCKING_THREADS = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stop(Exception):
    """Raised in the main loop when a stop signal arrives."""


@dataclass(frozen=True)
class Server:
    """One of the two servers: what it serves, where, and what it prints once ready."""

    title: str
    target: str
    host: str
    port: int
    banner: str


Running = list[tuple[Server, "subprocess.Popen[bytes]"]]


def granian_command(target: str, host: str, port: int, workers: int) -> list[str]:
    """The granian command line that serves the app factory ``target`` (``module:function``)."""
    return [
        sys.executable, "-m", "granian", "--interface", "wsgi", "--factory",
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--blocking-threads", str(BLOCKING_THREADS), "--respawn-failed-workers",
        "--no-access-log", "--log-level", "warning", target,
    ]  # fmt: skip


def servers(config: Config) -> list[Server]:
    """The two servers of the guide's step 4, with the guide's banners."""
    return [
        Server("JWKS server", "jwks_server:create_app", config.bind_host, config.jwks_port,
               f"JWKS API is on port {config.jwks_port}"),
        Server("protected server", "protected_server:create_app", config.bind_host,
               config.protected_port, f"Backend is running on port {config.protected_port}"),
    ]  # fmt: skip


def _port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def check(config: Config, planned: Sequence[Server]) -> None:
    """Refuse to start what cannot work; warn about what will answer errors.

    Raises AppError if granian is missing, the two ports are the same, or a port is taken.
    """
    if importlib.util.find_spec("granian") is None:
        raise AppError("granian is not installed: run make install (or pip install granian)")
    if config.jwks_port == config.protected_port:
        raise AppError(f"JWKS_PORT and PROTECTED_PORT are both {config.jwks_port}: change one")
    for server in planned:
        if _port_in_use(server.host, server.port):
            raise AppError(
                f"port {server.port} on {server.host} is in use: stop what runs there "
                f"or set {'JWKS_PORT' if server is planned[0] else 'PROTECTED_PORT'}"
            )
    if not config.public_key_path.exists():
        print(f"serve: no public key at {config.public_key_path}: GET /keys answers 500 "
              "until you run gen.py", file=sys.stderr)  # fmt: skip


def _environment() -> dict[str, str]:
    # The apps are imported by name: make this folder importable whatever the current
    # directory, which stays the user's so that a relative JWT_KEYS_DIR means the same thing.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    return env


def start(server: Server, workers: int) -> subprocess.Popen[bytes]:
    """Start ``server`` in its own process group (so that stopping it reaches its workers)."""
    return subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
        granian_command(server.target, server.host, server.port, workers),
        env=_environment(), start_new_session=True,
    )  # fmt: skip


def wait_ready(server: Server, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until ``server`` accepts connections; raises AppError if it exits or times out."""
    while not _port_in_use(server.host, server.port):
        code = process.poll()
        if code is not None:
            raise AppError(f"the {server.title} exited with code {code} while starting")
        if time.monotonic() > deadline:
            raise AppError(f"the {server.title} did not open port {server.port} in time")
        time.sleep(0.1)


def stop(running: Running) -> None:
    """Stop every server gracefully (SIGTERM), then kill what is left after STOP_SECONDS."""
    for _, process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for _, process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.1, deadline - time.monotonic()))
    for _, process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind, if any
        process.wait()


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def supervise(running: Running) -> None:
    """Block until a stop signal; raises AppError if a server exits on its own."""
    while True:
        for server, process in running:
            code = process.poll()
            if code is not None:
                raise AppError(f"the {server.title} exited with code {code}: stopping")
        time.sleep(0.5)


def run(config: Config) -> None:
    """Start both servers, print the guide's banners, and serve until a stop signal."""
    planned = servers(config)
    check(config, planned)
    running: Running = []
    previous = {s: signal.signal(s, _raise_stop) for s in STOP_SIGNALS}
    try:
        for server in planned:
            running.append((server, start(server, config.server_workers)))
        deadline = time.monotonic() + READY_SECONDS
        for server, process in running:
            wait_ready(server, process, deadline)
            print(server.banner, flush=True)
        print(f"{config.server_workers} granian worker(s) per server; Ctrl-C stops both",
              flush=True)  # fmt: skip
        supervise(running)
    except Stop:
        print("Stopping both servers", flush=True)
    finally:
        for s in STOP_SIGNALS:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        stop(running)
        for s, handler in previous.items():
            signal.signal(s, handler)


def build_parser() -> argparse.ArgumentParser:
    """The command line of make serve."""
    return ArgumentParser(
        prog="serve.py",
        description="Serve the JWKS (step 4.a, http://$JWT_BIND_HOST:$JWKS_PORT/keys, default "
        "127.0.0.1:3344) and the protected backend (step 4.b, $PROTECTED_PORT, default 2233) "
        "under granian, a production WSGI server, with $SERVER_WORKERS workers each (default: "
        "the number of cores), until Ctrl-C or SIGTERM. Every variable of config.py applies.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run make serve; return the exit code."""
    build_parser().parse_args(argv)
    try:
        run(load_config())
    except AppError as e:
        print(f"serve: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
