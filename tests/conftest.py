"""Shared fixtures: a clean environment, keys made once per session, tokens, real servers."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from jwt_guide import rotation
from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_KID, DEFAULT_PASSPHRASE, load_config
from jwt_guide.keystore import load_private_key

ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIXES = ("JWT_", "JWKS_", "PROTECTED_", "TOKEN_CACHE", "SERVER_WORKERS")
SECRET_MARKERS = (DEFAULT_PASSPHRASE, "PRIVATE KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's shell settings out of every test."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def session_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A keys folder with one 4096-bit current key, made once per test session."""
    keys_dir = tmp_path_factory.mktemp("session") / "keys"
    config = load_config({"JWT_KEYS_DIR": str(keys_dir)})
    keys_dir.mkdir(mode=0o700)
    rotation.create(config, lambda: rsa.generate_private_key(65537, 4096), None, force=False)
    return keys_dir


@pytest.fixture
def keys_dir(tmp_path: Path, session_keys: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the session's keys folder, set as JWT_KEYS_DIR."""
    path = tmp_path / "keys"
    shutil.copytree(session_keys, path)
    monkeypatch.setenv("JWT_KEYS_DIR", str(path))
    return path


@pytest.fixture
def empty_keys_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A keys folder path with no keys (not created), set as JWT_KEYS_DIR."""
    path = tmp_path / "keys"
    monkeypatch.setenv("JWT_KEYS_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def private_key(session_keys: Path) -> RSAPrivateKey:
    """The session key, decrypted."""
    return load_private_key(session_keys / ".private.key", DEFAULT_PASSPHRASE)


@pytest.fixture(scope="session")
def other_private_key() -> RSAPrivateKey:
    """A second RSA key, not published anywhere (2048 bits: it only needs to differ)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


TokenFactory = Callable[..., str]


@pytest.fixture
def make_token(private_key: RSAPrivateKey) -> TokenFactory:
    """Sign a token like sign.py does; keyword arguments override or add claims.

    ``header=`` adds header parameters, ``key=`` signs with another key, ``drop=`` removes
    claims, ``now=`` sets the clock.
    """

    def factory(
        *,
        header: dict[str, Any] | None = None,
        key: RSAPrivateKey | None = None,
        drop: tuple[str, ...] = (),
        now: int | None = None,
        **claims: Any,
    ) -> str:
        issued = int(time.time()) if now is None else now
        payload: dict[str, Any] = {
            "userId": "a-b-c-d", "iat": issued, "exp": issued + 3600, "iss": DEFAULT_ISSUER,
        }  # fmt: skip
        payload.update(claims)
        for name in drop:
            payload.pop(name, None)
        headers = {"kid": DEFAULT_KID, "typ": "JWT", **(header or {})}
        return jwt.encode(payload, key or private_key, algorithm="RS256", headers=headers)

    return factory


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server script running as a subprocess."""

    process: subprocess.Popen[bytes]
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


ServerFactory = Callable[..., Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start ``jwks_server.py`` or ``protected_server.py`` on a free port (or ``port=``);
    stopped at teardown."""
    servers: list[Server] = []

    def factory(script: str, port_variable: str, port: int | None = None, **env: str) -> Server:
        port = port or free_port()
        log = tmp_path / f"{script}-{port}-{len(servers)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / script)],
                env=script_env(**{port_variable: str(port)}, **env),
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            )  # fmt: skip
        server = Server(process, port, log)
        servers.append(server)
        wait_until_listening(server)
        return server

    yield factory
    for server in servers:
        server.stop()


def assert_clean_error(text: str) -> None:
    """An expected failure prints no traceback and no secret."""
    assert "Traceback" not in text
    for marker in SECRET_MARKERS:
        assert marker not in text


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


@pytest.fixture
def tmpfs_path(tmp_path: Path) -> Iterator[Path]:
    """A temporary folder in memory (/dev/shm) when there is one, else ``tmp_path``: tests
    that apply a change hundreds of times (killing it at each step) then do not wait for the
    disk at every fsync (the calls are made and counted all the same)."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a private folder in it)
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(dir=shm, prefix="jwt-guide-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
