"""What the tests share: one place for each helper (STYLE habit 17).

- output checks: ``assert_clean_error``, ``error_line``;
- tokens and keys: ``sign_token`` (a token like sign.py's, any claim changed), ``jwk_of``,
  ``key_set``;
- time: ``FakeClock``;
- HTTP on 127.0.0.1: ``free_port``, ``RecordingServer`` (answers what the test sets,
  records every request), ``raw_exchange`` (raw bytes in and out);
- subprocesses: ``script_env``, ``run_script`` (to completion), ``start_script`` (in the
  background), ``Server`` and ``wait_until_listening``, ``open_fifo_writer``;
- crashes: ``run_failing_at`` and ``every_failure`` (a file change failed at each step).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm

from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_KID, DEFAULT_PASSPHRASE

ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIXES = ("JWT_", "JWKS_", "PROTECTED_", "TOKEN_CACHE", "SERVER_WORKERS", "GATEWAY_")
SECRET_MARKERS = (DEFAULT_PASSPHRASE, "PRIVATE KEY")
WAIT = 10.0  # upper bound for anything that should happen "at once"; never reached when green
TIMEOUT = 10.0  # for a socket exchange

# The guide's scripts that take part in every check of all of them.
SCRIPTS = ("gen.py", "sign.py", "verify.py", "jwks_server.py", "protected_server.py",
           "make_request.py")  # fmt: skip
BITS = ("--bits", "2048")  # for gen.py where the key size does not matter: keeps tests fast
ALGS = ("RS256", "PS256", "ES256", "EdDSA")  # the algorithm table's names, in its order


def alg_args(alg: str) -> list[str]:
    """gen.py's options for a new key bound to ``alg`` (RSA keys of 2048 bits: fast)."""
    return ["--alg", alg, *(BITS if alg in ("RS256", "PS256") else ())]
TokenFactory = Callable[..., str]  # the make_token fixture: sign_token with the session key


# --- output ---------------------------------------------------------------------------------


def assert_clean_error(text: str) -> None:
    """An expected failure prints no traceback and no secret."""
    assert "Traceback" not in text
    for marker in SECRET_MARKERS:
        assert marker not in text


def error_line(err: str) -> str:
    """The one line an expected failure prints to stderr (and no traceback, no secret)."""
    assert_clean_error(err)
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    return lines[0]


def refusal(
    main: Callable[[list[str]], int], argv: list[str], code: int,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """Run a script's ``main(argv)`` expecting exit ``code`` and nothing on stdout; return
    the one line it printed to stderr (no traceback, no secret)."""
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    return error_line(captured.err)


def usage_error(
    main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    """Run a script's ``main(argv)`` expecting argparse's exit 2; return its one stderr line."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return error_line(captured.err)


# --- tokens, keys, time ---------------------------------------------------------------------


def sign_token(
    private_key: RSAPrivateKey,
    *,
    header: dict[str, Any] | None = None,
    key: RSAPrivateKey | None = None,
    drop: tuple[str, ...] = (),
    now: int | None = None,
    **claims: Any,
) -> str:
    """A token signed like sign.py's with ``private_key``; keyword arguments override or add
    claims. ``header=`` adds header parameters, ``key=`` signs with another key, ``drop=``
    removes claims, ``now=`` sets the clock."""
    issued = int(time.time()) if now is None else now
    payload: dict[str, Any] = {
        "userId": "a-b-c-d", "iat": issued, "exp": issued + 3600, "iss": DEFAULT_ISSUER,
    }  # fmt: skip
    payload.update(claims)
    for name in drop:
        payload.pop(name, None)
    headers = {"kid": DEFAULT_KID, "typ": "JWT", **(header or {})}
    return jwt.encode(payload, key or private_key, algorithm="RS256", headers=headers)


def b64(data: bytes) -> str:
    """``data`` as unpadded base64url, as a JWS segment holds it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(key: Any, kid: Any, **extra: Any) -> dict[str, Any]:
    """The public JWK of an RSA key (private or public) with kid, use and alg."""
    public = key.public_key() if isinstance(key, RSAPrivateKey) else key
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    jwk.update(extra)
    return {k: v for k, v in jwk.items() if v is not None}


def key_set(*jwks: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(jwks)}).encode()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- HTTP -----------------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_with_leftovers(
    process: subprocess.Popen[Any], leftovers: set[int], seconds: float
) -> None:
    """SIGTERM ``process`` (SIGKILL after ``seconds``), then SIGKILL every pid of
    ``leftovers`` still alive: the workers a server may leave behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    for pid in leftovers:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


class _QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print a client hanging up."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class RecordingServer:
    """An HTTP server on 127.0.0.1 (a JWKS server, a backend, an attacker's host) whose
    answer to every GET the test sets, recording each request's path and headers."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.delay = 0.0
        self.gate: threading.Event | None = None  # when set, each answer waits for it
        self.drip = False  # headers, then one byte at a time, slowly
        self.drip_headers = False  # one header line at a time, slowly, never ending
        self.stopping = threading.Event()
        self.on_request: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        handler = self._handler()
        self.httpd = _QuietHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def uri(self) -> str:
        """The JWKS URL, when it serves a key set."""
        return f"{self.base}/keys"

    def __enter__(self) -> RecordingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def paths(self) -> list[str]:
        with self._lock:
            return [path for path, _ in self.requests]

    def serve(
        self, body: bytes | str | dict[str, Any], status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer every GET so: bytes and a dict as JSON, text as text/plain."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        kind = "text/plain" if isinstance(body, str) else "application/json"
        data = body.encode() if isinstance(body, str) else body
        self.answer = Answer(status, data, {"Content-Type": kind, **(headers or {})})

    def wait_for_requests(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.count < count:
            assert time.monotonic() < deadline, f"only {self.count} requests arrived"
            time.sleep(0.005)

    def stop(self) -> None:
        self.stopping.set()
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(WAIT)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append((self.path, dict(self.headers.items())))
                server.on_request()
                answer = server.answer
                if server.gate is not None:
                    server.gate.wait(WAIT)
                if server.delay:
                    server.stopping.wait(server.delay)
                if server.drip_headers:
                    self._drip_headers()
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if server.drip:
                    self.send_header("Content-Length", str(len(answer.body) + 100_000))
                    self.end_headers()
                    self._drip()
                    return
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # a client that gave up (body cap) hung up
                    self.wfile.write(answer.body)

            def _drip_headers(self) -> None:
                with contextlib.suppress(OSError):
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    # 0.05 s apart: http.client's 100-header limit comes only after 5 s
                    while not server.stopping.wait(0.05):
                        self.wfile.write(b"X-Pad: a\r\n")
                        self.wfile.flush()

            def _drip(self) -> None:
                while not server.stopping.wait(0.02):
                    try:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@dataclass
class RawAnswer:
    """What a server sent back to raw bytes: status (0 if none), header block, body."""

    status: int
    head: bytes
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (case-insensitive), or None."""
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def json(self) -> dict[str, str]:
        """The body as the project's JSON error; fails the test if it is not one."""
        assert self.header(b"Content-Type") == b"application/json", self.head
        parsed = json.loads(self.body)
        assert set(parsed) == {"error", "error_description"}, parsed
        return dict(parsed)


def raw_exchange(port: int, data: bytes, timeout: float = TIMEOUT) -> RawAnswer:
    """Send raw bytes to 127.0.0.1:port and read until the server closes the connection.

    Raises TimeoutError if the server neither answers nor closes within ``timeout``.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer before reading it all
            sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if head.startswith(b"HTTP/1.") and len(parts) > 1 else 0
    return RawAnswer(status, head, body)


def get(path: bytes, *headers: bytes) -> bytes:
    """A raw GET request for ``path`` with ``headers`` (``b"Name: value"``)."""
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: 127.0.0.1", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def padding(total: int) -> list[bytes]:
    """Headers whose names and values add up to ``total`` bytes, each line far below 64 KiB."""
    headers: list[bytes] = []
    left = total
    while left > 0:
        size = min(left, 4000)
        headers.append(b"X-Pad-%03d: " % len(headers) + b"p" * (size - 9))
        left -= size
    return headers


# --- subprocesses ---------------------------------------------------------------------------


@dataclass
class Server:
    """A server script running as a subprocess."""

    process: subprocess.Popen[Any]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


ServerFactory = Callable[..., Server]  # the start_server fixture


def spawn_server(
    script: str, port_variable: str, folder: Path, *, port: int | None = None, **env: str
) -> Server:
    """Start ``jwks_server.py`` or ``protected_server.py`` on ``port`` (default: a free one),
    logging to a file in ``folder``; not waited for (see ``wait_until_listening``)."""
    port = port or free_port()
    log = folder / f"{script}-{port}.log"
    with log.open("wb") as out:
        process = start_script(
            script, env=script_env(**{port_variable: str(port)}, **env), log=out, cwd=folder
        )
    return Server(process, port, log)


def wait_until_listening(server: Server, deadline_seconds: float = 20) -> None:
    """Poll the server's port until it answers HTTP, or fail with its log."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited early:\n{server.output()}")
        try:
            requests.get(f"{server.base}/__ready__", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    pytest.fail(f"server did not start in {deadline_seconds}s:\n{server.output()}")


def script_env(**overrides: str) -> dict[str, str]:
    """The environment for a script subprocess: this one, cleaned, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def run_script(
    script: str, *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a script (or ``-m``, a module) to completion; return the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, script if script == "-m" else str(ROOT / script), *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def start_script(
    script: str, *args: str, env: dict[str, str], log: IO[bytes] | None = None,
    cwd: Path | None = None, python: tuple[str, ...] = (), session: bool = False,
) -> subprocess.Popen[Any]:
    """Start a script of the repository in the background (text pipes, or ``log`` for both
    outputs), with ``python`` options before it (``-c CODE`` runs CODE with the script's path
    as ``sys.argv[1]``); ``session``: in a session of its own."""
    output = {"stdout": log, "stderr": subprocess.STDOUT} if log else {
        "stdout": subprocess.PIPE, "stderr": subprocess.PIPE
    }  # fmt: skip
    return subprocess.Popen(
        [sys.executable, *python, str(ROOT / script), *args], env=env, cwd=cwd,
        text=log is None, start_new_session=session, **output,
    )  # fmt: skip


def open_fifo_writer(fifo: Path, process: subprocess.Popen[str]) -> int:
    """Open ``fifo`` for writing once ``process`` has opened it for reading, and return once
    the process is blocked reading it.

    Waiting for the read itself matters: a SIGINT that lands between the script's open()
    and its read() is handled before the read starts, which then blocks for good (a race of
    CPython's signal handling, microseconds wide for a user, often hit by a test).
    """
    deadline = time.monotonic() + 20
    writer = None
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if writer is None:
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
        elif "pipe_read" in Path(f"/proc/{process.pid}/wchan").read_text():
            return writer
        time.sleep(0.01)  # polling: the script has no other readiness signal
    raise AssertionError("the script never blocked reading the FIFO")


# --- crashes ----------------------------------------------------------------------------------


# The functions of os through which keystore changes files.
FS_CALLS = ("write", "fsync", "replace", "rename", "link", "unlink", "mkdir", "rmdir")
HOW = ("sigkill", "sigint", "oserror")

State = dict[str, tuple[bytes, int]]


def snapshot(folder: Path) -> State:
    """Every file of the folder with its bytes and mode."""
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir()}


def _fail_at(n: int, how: str) -> Callable[[], int]:
    """From now on, the nth call of FS_CALLS in this process SIGKILLs it (a write is torn
    first), sends it SIGINT (then goes on, as a real Ctrl-C would), or raises EIO; n = 0
    never fails. Returns a function giving the number of calls so far."""
    calls = itertools.count(1)
    made = [0]

    def patched(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            made[0] = next(calls)
            if made[0] == n:
                if how == "oserror":
                    raise OSError(errno.EIO, "Input/output error", str(args[0]))
                if how == "sigkill" and name == "write":
                    real(args[0], bytes(args[1])[: max(1, len(args[1]) // 2)])
                os.kill(os.getpid(), signal.SIGKILL if how == "sigkill" else signal.SIGINT)
            return real(*args, **kwargs)

        return call

    for name in FS_CALLS:
        setattr(os, name, patched(name, getattr(os, name)))
    return lambda: made[0]


def run_failing_at(n: int, how: str, target: Callable[[], int]) -> tuple[tuple[str, int], int]:
    """Run ``target()`` in a forked child whose nth file-changing call fails as ``how`` says.

    Returns the outcome, ``("exit", code)`` or ``("signal", number)``, and the number of
    calls the child made (if it exited). Its output is discarded; an unexpected exception is
    printed to this process's stderr (exit code 98).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 97
        err = os.dup(2)
        try:
            os.close(read_end)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            calls_made = _fail_at(n, how)
            code = target()
            os.write(write_end, str(calls_made()).encode())
        except BaseException:
            os.write(err, traceback.format_exc().encode())
            code = 98
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reported:
        made = int(reported.read() or 0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("signal", os.WTERMSIG(status)), made
    return ("exit", os.WEXITSTATUS(status)), made


def every_failure(
    how: str, template: Path, work: Path, target: Callable[[], int]
) -> Iterator[tuple[int, tuple[str, int]]]:
    """Copy ``template`` to ``work`` and run ``target`` (which changes ``work``) failing at
    its nth file-changing call, for every n; yield n and the outcome."""
    shutil.copytree(template, work)
    outcome, total = run_failing_at(0, how, target)
    assert outcome == ("exit", 0) and total > 0
    for n in range(1, total + 1):
        shutil.rmtree(work)
        shutil.copytree(template, work)
        yield n, run_failing_at(n, how, target)[0]
