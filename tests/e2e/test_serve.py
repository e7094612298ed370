"""make serve: both servers under jwt_guide.http.server, honouring the environment, stopped
by a signal or with their parent, within the serving limits of SPEC.md (HTTP/1.1 only, read
timeouts)."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from jwt_guide.http import serve
from jwt_guide.http.server import MAX_CONNECTIONS, MAX_HEAD_BYTES
from tests.helpers import (
    ROOT,
    assert_clean_error,
    free_port,
    process_alive,
    run_script,
    script_env,
    stop_with_leftovers,
)

pytestmark = pytest.mark.e2e

# A short read timeout for the end-to-end checks of the timeouts: the real one (20 s) is
# checked on the command line by test_server_command_holds_the_limits.
SHORT_TIMEOUT = 2
WAIT_CLOSED = 10.0  # far above SHORT_TIMEOUT: only a connection never closed fails
# Start make serve's supervisor with a shorter READ_TIMEOUT_SECONDS, as monkeypatch would.
SHORT_TIMEOUT_SERVE = (
    "import sys; from jwt_guide.http import serve; "
    f"serve.READ_TIMEOUT_SECONDS = {SHORT_TIMEOUT}; sys.exit(serve.main())"
)
# Run make with SIGINT at its default action even if pytest was started with it ignored (a
# background job of a script): make then ignores SIGINT too, which is not what a user has.
EXEC_WITH_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (the servers' main processes and their workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Serve:
    """``python -m jwt_guide.http.serve`` (or make serve) as a subprocess, its ports and log."""

    process: subprocess.Popen[bytes]
    jwks_port: int
    protected_port: int
    log: Path
    seen: set[int] = field(default_factory=set)

    @property
    def ports(self) -> tuple[int, int]:
        return self.jwks_port, self.protected_port

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Wait for the banners and for an answer from each server (so its worker runs)."""
        deadline = time.monotonic() + 30
        while "Ctrl-C stops both" not in self.output():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)
        for port in self.ports:
            requests.get(f"http://127.0.0.1:{port}/keys", timeout=5)
        self.seen.update(_descendants(self.process.pid))

    def stop(self) -> None:
        """Stop it if it still runs, then kill (by pid) any server process it left behind."""
        if self.process.poll() is None:
            self.seen.update(_descendants(self.process.pid))
        stop_with_leftovers(self.process, self.seen, 20)


ServeFactory = Callable[..., Serve]


@pytest.fixture
def start_serve(keys_dir: Path, tmp_path: Path) -> Iterator[ServeFactory]:
    """Start ``command`` (default: ``python -m jwt_guide.http.serve``) on two free ports, one
    worker each, with ``overrides`` in its environment, and wait until it prints its
    banners; all it started is stopped at teardown."""
    started: list[Serve] = []

    def factory(*command: str, **overrides: str) -> Serve:
        jwks_port, protected_port = free_port(), free_port()
        env = script_env(
            JWT_KEYS_DIR=str(keys_dir), JWKS_PORT=str(jwks_port),
            PROTECTED_PORT=str(protected_port), SERVER_WORKERS="1", PYTHONPATH=str(ROOT),
            **overrides,
        )  # fmt: skip
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(command) or [sys.executable, "-m", "jwt_guide.http.serve"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            )  # fmt: skip
        server = Serve(process, jwks_port, protected_port, log)
        started.append(server)
        server.wait_ready()
        return server

    yield factory
    for server in started:
        server.stop()


def test_server_command_holds_the_limits() -> None:
    command = serve.server_command("jwt_guide.http.jwks_app:create_app", "127.0.0.1", 3344, 2)
    options = dict(itertools.pairwise(command))
    assert options["-m"] == "jwt_guide.http.server"
    timeout = float(options["--read-timeout"])
    assert timeout == serve.READ_TIMEOUT_SECONDS
    assert 0 < timeout <= 30  # SPEC: silent, stalled and idle connections within 30 s
    # Headers well past 64 KiB must reach the app (its JSON 431), within a bounded buffer.
    assert 2 * 64 * 1024 <= MAX_HEAD_BYTES <= 1024 * 1024
    # Connections per worker bounded: with the head limit, what hostile heads can make it hold.
    assert MAX_CONNECTIONS * MAX_HEAD_BYTES <= 64 * 2**20


def test_serve_runs_the_guide_and_stops_on_sigterm(
    start_serve: ServeFactory, keys_dir: Path
) -> None:
    server = start_serve()
    text = server.output()
    assert f"JWKS API is on port {server.jwks_port}" in text
    assert f"Backend is running on port {server.protected_port}" in text
    keys = requests.get(f"http://127.0.0.1:{server.jwks_port}/keys", timeout=5)
    assert keys.status_code == 200
    assert keys.json()["keys"][0]["kid"] == "my-key-id"
    env = script_env(
        JWT_KEYS_DIR=str(keys_dir), JWKS_PORT=str(server.jwks_port),
        PROTECTED_PORT=str(server.protected_port),
    )  # fmt: skip
    assert run_script("sign.py", env=env).returncode == 0
    called = run_script("make_request.py", env=env)
    assert called.returncode == 0, called.stderr
    assert called.stdout.startswith('Result: {"userId":"a-b-c-d"')
    # The servers run under jwt_guide.http.server, not werkzeug's development server.
    assert "Werkzeug" not in keys.headers.get("Server", "")
    assert server.seen
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0
    assert server.output().endswith("Stopping both servers\n")
    _assert_all_gone(server)


def _assert_all_gone(server: Serve, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while any(process_alive(pid) for pid in server.seen) or any(map(_accepts, server.ports)):
        assert time.monotonic() < deadline, "server processes outlived the supervisor"
        time.sleep(0.05)


def test_ctrl_c_stops_both_with_exit_130_and_one_line(start_serve: ServeFactory) -> None:
    server = start_serve()
    banners = server.output()
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(20) == 130
    assert server.output() == banners + "Stopping both servers\n"
    _assert_all_gone(server)


# A server's main process that leaves its worker behind on SIGTERM; the worker writes its pid,
# then "TERM" if SIGTERM ever reaches it.
WORKER = (
    "import pathlib, signal, sys, time; marker = pathlib.Path(sys.argv[1]); "
    "signal.signal(signal.SIGTERM, lambda *_: marker.write_text('TERM')); "
    "marker.write_text(str(__import__('os').getpid())); time.sleep(60)"
)
MAIN = (
    "import signal, subprocess, sys, time; "
    f"subprocess.Popen([sys.executable, '-c', {WORKER!r}, sys.argv[1]]); "
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(60)"
)


def test_stop_sends_sigterm_to_the_main_process_only(tmp_path: Path) -> None:
    """A server's main process stops its workers itself; a SIGTERM of ours reaching a worker
    first would have the main process log its exit and start another (a second line on
    Ctrl-C). What the main process leaves behind is killed by process group."""
    marker = tmp_path / "worker"
    process = subprocess.Popen([sys.executable, "-c", MAIN, str(marker)], start_new_session=True)
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text().isdigit():
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.01)
    worker = int(marker.read_text())
    server = serve.Server("test server", "none:none", "127.0.0.1", 9, "TEST_PORT", "")
    serve.stop([(server, process)])
    assert process.returncode == 0
    deadline = time.monotonic() + 10
    while process_alive(worker):
        assert time.monotonic() < deadline, "the worker outlived stop()"
        time.sleep(0.01)
    assert marker.read_text() == str(worker)  # killed, never sent SIGTERM


def test_sigkill_of_serve_takes_the_servers_and_workers_down(start_serve: ServeFactory) -> None:
    server = start_serve()
    assert len(server.seen) == 4  # two servers' main processes, one worker each
    server.process.kill()
    server.process.wait(5)
    _assert_all_gone(server, seconds=5)
    # So the next make serve can have the ports.
    for port in server.ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_sigint_to_make_alone_stops_make_serve(start_serve: ServeFactory) -> None:
    # GNU make does not pass SIGINT on to its children (it does SIGTERM): the supervisor must
    # notice that make is exiting. -o: never reinstall the venv from a test.
    server = start_serve(
        sys.executable, "-c", EXEC_WITH_SIGINT, "make", "--no-print-directory", "-C", str(ROOT),
        "-o", ".venv/.installed-runtime", "-o", ".venv/.installed-serve", "serve",
        f"PY={sys.executable}",
    )  # fmt: skip
    [serve_py] = [p for p in server.seen if Path(f"/proc/{p}/cmdline").read_bytes().endswith(
        b"jwt_guide.http.serve\0")]  # fmt: skip
    server.process.send_signal(signal.SIGINT)  # to make's process only, not its group
    assert server.process.wait(20) == -signal.SIGINT
    text = server.output()
    assert "Stopping both servers\n" in text
    assert "Error 130" in text  # make's own line: the supervisor exited 130
    assert_clean_error(text)
    assert not process_alive(serve_py)
    _assert_all_gone(server)


def _read_until_closed(port: int, send: bytes = b"", drip: bytes = b"") -> bytes:
    """Connect, send ``send``, then ``drip`` every 0.5 s; return what the server sent until
    it closed the connection. Fails if it is still open after WAIT_CLOSED seconds."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused midway
            s.sendall(send)
        s.settimeout(0.5)
        deadline = time.monotonic() + WAIT_CLOSED
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    s.sendall(drip)
                continue
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
    pytest.fail(f"port {port}: connection still open after {WAIT_CLOSED}s: {received[:80]!r}")


REQUEST = b"GET /keys HTTP/1.1\r\nHost: localhost\r\n\r\n"
STALLED = {
    "silent": (b"", b""),
    "request line cut": (b"GET /keys HT", b""),
    "headers cut": (b"GET /keys HTTP/1.1\r\nHost: localhost\r\n", b""),
    "headers dripped": (b"GET /keys HTTP/1.1\r\nX-Slow: ", b"a"),
    "idle keep-alive": (REQUEST, b""),
}


def test_silent_stalled_and_idle_connections_are_closed(start_serve: ServeFactory) -> None:
    server = start_serve(sys.executable, "-c", SHORT_TIMEOUT_SERVE)
    cases = [(port, name) for port in server.ports for name in STALLED]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = pool.map(lambda case: _read_until_closed(case[0], *STALLED[case[1]]), cases)
        received = dict(zip(cases, results, strict=True))
    for (port, name), data in received.items():
        if name == "idle keep-alive":
            assert data.startswith(b"HTTP/1.1 "), (port, data[:80])
            assert data.count(b"HTTP/1.1 ") == 1, (port, data[:80])
        else:
            assert not data or data.startswith(b"HTTP/1.1 408"), (port, name, data[:80])


EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an HTTP/2 SETTINGS frame


def test_no_http2_without_tls(start_serve: ServeFactory) -> None:
    server = start_serve()
    for port in server.ports:
        # HTTP/2 with prior knowledge: a server speaking h2c answers with a SETTINGS frame.
        data = _read_until_closed(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + EMPTY_SETTINGS)
        assert not data or data.startswith(b"HTTP/1.1 4"), data[:80]
        # An upgrade request is served as HTTP/1.1.
        upgraded = _read_until_closed(
            port, b"GET /keys HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, "
            b"close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )  # fmt: skip
        assert not upgraded.startswith(b"HTTP/1.1 101"), upgraded[:80]
        assert upgraded.startswith(b"HTTP/1.1 "), upgraded[:80]


def _exchange(port: int, headers: bytes) -> tuple[int, bytes]:
    """Send GET /no-such-path with ``headers``; return the status and the body."""
    request = b"GET /no-such-path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    answer = _read_until_closed(port, request + headers + b"\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * 100_000 + b"\r\n",
     b"".join(b"X-Part-%d: %s\r\n" % (i, b"a" * 2000) for i in range(50)),
     b"".join(b"X-Part-%d: a\r\n" % i for i in range(1000))],
    ids=["one 100 KB header", "50 headers of 2 KB", "1000 small headers"],
)  # fmt: skip
def test_headers_past_64_kib_reach_the_app(start_serve: ServeFactory, headers: bytes) -> None:
    server = start_serve()
    for port in server.ports:
        # The app answers: 404 for this path, or its JSON 431 for headers over 64 KiB.
        status, body = _exchange(port, headers)
        assert status in (404, 431)
        assert json.loads(body)["error"]


def test_heads_past_the_server_limit_get_its_json_431(start_serve: ServeFactory) -> None:
    server = start_serve()
    for port in server.ports:
        for headers in (b"X-Big: " + b"a" * 2 * MAX_HEAD_BYTES + b"\r\n",
                        b"X-A: b\r\n" * 20_000):  # more fields than hyper's 100 (granian's 431)
            status, body = _exchange(port, headers)
            assert status == 431
            assert json.loads(body)["error"] == "invalid_request"
        assert requests.get(f"http://127.0.0.1:{port}/keys", timeout=5).status_code in (200, 404)


def test_serve_bad_setting_is_one_line(keys_dir: Path) -> None:
    result = run_script("-m", "jwt_guide.http.serve", env=script_env(JWKS_PORT="abc"))
    assert result.returncode == 2
    assert result.stderr.strip() == "serve: JWKS_PORT='abc' is not a whole number"
    assert_clean_error(result.stdout + result.stderr)


@pytest.mark.parametrize(
    ("bind_host", "expected"),
    [("192.0.2.1", "JWT_BIND_HOST"), ("::2", "JWT_BIND_HOST"),
     ("nonexistent.invalid", "JWT_BIND_HOST")],
    ids=["not-this-machine", "ipv6-not-this-machine", "no-such-name"],
)  # fmt: skip
def test_serve_bad_bind_host_is_one_line_naming_it(
    keys_dir: Path, bind_host: str, expected: str
) -> None:
    env = script_env(JWT_KEYS_DIR=str(keys_dir), JWT_BIND_HOST=bind_host,
                     JWKS_PORT=str(free_port()), PROTECTED_PORT=str(free_port()))  # fmt: skip
    result = run_script("-m", "jwt_guide.http.serve", env=env)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("serve: ") and expected in line
    assert "PORT" not in line
    assert_clean_error(result.stdout + result.stderr)


def test_serve_port_bound_by_another_process_is_one_line_naming_it(keys_dir: Path) -> None:
    with socket.socket() as holder:  # bound, not listening: a connect test would miss it
        holder.bind(("127.0.0.1", 0))
        taken = holder.getsockname()[1]
        env = script_env(JWT_KEYS_DIR=str(keys_dir), JWKS_PORT=str(free_port()),
                         PROTECTED_PORT=str(taken))  # fmt: skip
        result = run_script("-m", "jwt_guide.http.serve", env=env)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "PROTECTED_PORT" in line
    assert_clean_error(result.stdout + result.stderr)


def test_serve_without_keys_refuses_to_start(tmp_path: Path) -> None:
    env = script_env(JWT_KEYS_DIR=str(tmp_path / "none"), JWKS_PORT=str(free_port()),
                     PROTECTED_PORT=str(free_port()))  # fmt: skip
    result = run_script("-m", "jwt_guide.http.serve", env=env)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.endswith("run gen.py first")
    assert str(tmp_path / "none") in line


def test_serve_binds_a_host_name(start_serve: ServeFactory) -> None:
    server = start_serve(JWT_BIND_HOST="localhost")  # the server itself takes only addresses
    assert requests.get(f"http://127.0.0.1:{server.jwks_port}/keys", timeout=5).status_code == 200
