"""Fixtures: a clean environment, keys made once per session, tokens, real servers.

Helpers that are not fixtures live in tests/helpers.py.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from jwt_guide import rotation
from jwt_guide.config import DEFAULT_PASSPHRASE, load_config
from jwt_guide.keystore import load_private_key
from tests.helpers import (
    ENV_PREFIXES,
    Server,
    ServerFactory,
    TokenFactory,
    sign_token,
    spawn_server,
    wait_until_listening,
)


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
    key = load_private_key(session_keys / ".private.key", DEFAULT_PASSPHRASE)
    assert isinstance(key, RSAPrivateKey)
    return key


@pytest.fixture(scope="session")
def other_private_key() -> RSAPrivateKey:
    """A second RSA key, not published anywhere (2048 bits: it only needs to differ)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fast_key_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Private keys load without OpenSSL's checks of the key itself (100 ms and more for a
    4096-bit key, each time a test signs): the keys here are the tests' own, made by gen."""
    monkeypatch.setattr(
        serialization,
        "load_pem_private_key",
        functools.partial(serialization.load_pem_private_key, unsafe_skip_rsa_key_validation=True),
    )


@pytest.fixture
def make_token(private_key: RSAPrivateKey) -> TokenFactory:
    """``sign_token`` with the session key: keyword arguments override or add claims."""
    return functools.partial(sign_token, private_key)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start ``jwks_server.py`` or ``protected_server.py`` on a free port (or ``port=``);
    stopped at teardown."""
    servers: list[Server] = []

    def factory(script: str, port_variable: str, port: int | None = None, **env: str) -> Server:
        server = spawn_server(script, port_variable, tmp_path, port=port, **env)
        servers.append(server)
        wait_until_listening(server)
        return server

    yield factory
    for server in servers:
        server.stop()


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


NETRC_SECRET = "netrc-secret"


@pytest.fixture
def netrc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A HOME whose ~/.netrc holds a login for 127.0.0.1, as requests' trust_env would send
    it (as Basic auth, in place of any Authorization header); returns its password."""
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login user password {NETRC_SECRET}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    return NETRC_SECRET
