"""Steps 4.a-4.c end to end: the real scripts as subprocesses on 127.0.0.1.

Few servers are started (each costs about a second): one pair serves every check of the
happy path; one pair shows the recovery from a JWKS outage.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import (
    Server,
    ServerFactory,
    TokenFactory,
    assert_clean_error,
    free_port,
    run_script,
    script_env,
    start_script,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0


def raw_request(port: int, request: bytes) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read the answer (what arrived before a reset)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before reading all
            sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    return received


def assert_loopback_only(server: Server) -> None:
    """The server listens on 127.0.0.1, not on every address."""
    socket.create_connection(("127.0.0.1", server.port), 2).close()
    # Every 127/8 address reaches the loopback interface on Linux; a server bound to
    # 0.0.0.0 would accept this connection.
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.2", server.port), 2),
    ):
        pass


def test_guide_flow_through_real_servers(keys_dir: Path, start_server: ServerFactory) -> None:
    env = script_env(JWT_KEYS_DIR=str(keys_dir))
    signed = run_script("sign.py", env=env)
    assert signed.returncode == 0, signed.stderr
    token = (keys_dir / "token.txt").read_text().strip()

    jwks = start_server("jwks_server.py", "JWKS_PORT", JWT_KEYS_DIR=str(keys_dir))
    protected = start_server("protected_server.py", "PROTECTED_PORT", JWKS_URI=f"{jwks.base}/keys")
    assert f"JWKS API is on port {jwks.port}" in jwks.output()
    assert f"Backend is running on port {protected.port}" in protected.output()

    called = run_script(
        "make_request.py", env={**env, "PROTECTED_URL": f"{protected.base}/with-auth"}
    )
    assert called.returncode == 0, called.stderr
    [line] = called.stdout.strip().splitlines()
    assert line.startswith('Result: {"userId":"a-b-c-d","iat":')

    # The token must not reach the logs, not even when a client puts it in the query string.
    url = f"{protected.base}/with-auth"
    assert requests.get(f"{url}?access_token={token}", timeout=TIMEOUT).status_code == 401
    forged = token.rsplit(".", 1)[0] + "." + token.rsplit(".", 1)[1][::-1]
    refused = requests.get(url, headers={"Authorization": f"Bearer {forged}"}, timeout=TIMEOUT)
    assert refused.status_code == 401

    # A 1 MB header is answered at once, and the server keeps serving.
    for server in (protected, jwks):
        big = b"A" * 1_000_000
        answer = raw_request(
            server.port,
            b"GET /with-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + big
            + b"\r\nConnection: close\r\n\r\n",
        )  # fmt: skip
        status = answer.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1."), answer[:200]
        assert 400 <= int(status.split()[1]) < 500
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"Content-Type: application/json" in head
        assert json.loads(body)["error"] == "invalid_request"
    ok = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    assert ok.status_code == 200
    assert requests.get(f"{jwks.base}/keys", timeout=TIMEOUT).status_code == 200

    # A missing public key file: 500 JSON at once, and the server keeps serving.
    public = keys_dir / ".public.key.pem"
    saved = public.read_bytes()
    public.unlink()
    broken = requests.get(f"{jwks.base}/keys", timeout=TIMEOUT)
    assert broken.status_code == 500
    assert broken.headers["Content-Type"].startswith("application/json")
    assert broken.json()["error"] == "server_error"
    public.write_bytes(saved)
    assert requests.get(f"{jwks.base}/keys", timeout=TIMEOUT).status_code == 200

    for server in (jwks, protected):
        assert_loopback_only(server)

    for server in (jwks, protected):
        server.stop()
        log = server.output()
        assert "GET /" in log  # the log is there, so its silence about the token means something
        for secret in (token, forged, *token.split(".")[1:], *forged.split(".")[2:]):
            assert secret not in log
        assert_clean_error(log)


def test_protected_server_recovers_when_the_jwks_server_comes_up(
    keys_dir: Path, start_server: ServerFactory, make_token: TokenFactory
) -> None:
    jwks_port = free_port()
    protected = start_server(
        "protected_server.py", "PROTECTED_PORT",
        JWKS_URI=f"http://127.0.0.1:{jwks_port}/keys", JWKS_REQUESTS_PER_MINUTE="600",
    )  # fmt: skip
    token = make_token()
    url = f"{protected.base}/with-auth"
    headers = {"Authorization": f"Bearer {token}"}
    down = requests.get(url, headers=headers, timeout=TIMEOUT)
    assert down.status_code == 503
    assert int(down.headers["Retry-After"]) >= 1
    assert down.json()["error"] == "temporarily_unavailable"

    (keys_dir / "token.txt").write_text(token + "\n")
    env = script_env(JWT_KEYS_DIR=str(keys_dir), PROTECTED_URL=url)
    called = run_script("make_request.py", env=env)
    assert called.returncode == 1
    assert called.stderr.startswith("make_request: HTTP 503: ")
    assert len(called.stderr.strip().splitlines()) == 1
    assert_clean_error(called.stderr)

    start_server("jwks_server.py", "JWKS_PORT", port=jwks_port, JWT_KEYS_DIR=str(keys_dir))
    deadline = time.monotonic() + TIMEOUT
    while (answer := requests.get(url, headers=headers, timeout=TIMEOUT)).status_code == 503:
        assert time.monotonic() < deadline, "the protected server did not recover"
        time.sleep(0.05)
    assert answer.status_code == 200
    assert answer.text.startswith('Result: {"userId":"a-b-c-d"')
    assert protected.process.poll() is None  # no restart


def test_make_request_against_a_stopped_server(keys_dir: Path, make_token: TokenFactory) -> None:
    (keys_dir / "token.txt").write_text(make_token() + "\n")
    url = f"http://127.0.0.1:{free_port()}/with-auth"
    called = run_script(
        "make_request.py", env=script_env(JWT_KEYS_DIR=str(keys_dir), PROTECTED_URL=url)
    )
    assert called.returncode == 1
    lines = called.stderr.strip().splitlines()
    assert len(lines) == 1
    assert url in lines[0]
    assert "protected_server.py" in lines[0]
    assert called.stdout == ""
    assert_clean_error(called.stderr)


@pytest.mark.parametrize(
    ("script", "port_variable", "banner"),
    [("jwks_server.py", "JWKS_PORT", "JWKS API is on port"),
     ("protected_server.py", "PROTECTED_PORT", "Backend is running on port")],
    ids=["jwks", "protected"],
)  # fmt: skip
def test_banner_means_listening_and_taken_port_is_one_line(
    keys_dir: Path, script: str, port_variable: str, banner: str
) -> None:
    """As with Express's listen callback, a client may connect as soon as the banner shows."""
    port = free_port()
    env = script_env(JWT_KEYS_DIR=str(keys_dir), **{port_variable: str(port)})
    process = start_script(script, env=env)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == f"{banner} {port}\n"
        socket.create_connection(("127.0.0.1", port), TIMEOUT).close()
        taken = run_script(script, env=env)
        assert taken.returncode == 1
        assert taken.stderr.count("\n") == 1
        assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert port_variable in taken.stderr
        assert_clean_error(taken.stdout + taken.stderr)
    finally:
        process.terminate()
        process.wait(TIMEOUT)


@pytest.mark.e2e
def test_recovers_within_seconds_of_the_jwks_server_starting(
    keys_dir: Path, start_server: ServerFactory, make_token: TokenFactory
) -> None:
    jwks_port = free_port()
    protected = start_server(
        "protected_server.py", "PROTECTED_PORT", JWKS_URI=f"http://127.0.0.1:{jwks_port}/keys"
    )  # JWKS_REQUESTS_PER_MINUTE: the default 5, so a 12 s spacing
    url = f"{protected.base}/with-auth"
    headers = {"Authorization": f"Bearer {make_token()}"}
    down = requests.get(url, headers=headers, timeout=10)
    assert down.status_code == 503
    assert down.headers["Retry-After"] == "1"
    start_server("jwks_server.py", "JWKS_PORT", port=jwks_port, JWT_KEYS_DIR=str(keys_dir))
    up = time.monotonic()
    while (answer := requests.get(url, headers=headers, timeout=10)).status_code == 503:
        # Far above the ~1 s expected, far below the 12 s spacing it used to wait.
        assert time.monotonic() - up < 6, "still 503 long after the JWKS server answers"
        time.sleep(0.05)
    assert answer.status_code == 200


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("new_key", "old_refused_for"),
    [(["--bits", "2048"], "signature"), (["--alg", "ES256"], "algorithm")],
    ids=["same-algorithm", "rs256-to-es256"],
)
def test_gen_force_while_the_servers_run_is_picked_up_without_restart(
    new_key: list[str], old_refused_for: str, keys_dir: Path, start_server: ServerFactory
) -> None:
    """gen.py --force makes a new key under the same kid (of the same algorithm or another):
    tokens signed with it are accepted at once (the guide's 5 fetches a minute), and tokens
    of the old key are refused."""
    env = script_env(JWT_KEYS_DIR=str(keys_dir))
    jwks = start_server("jwks_server.py", "JWKS_PORT", JWT_KEYS_DIR=str(keys_dir))
    protected = start_server("protected_server.py", "PROTECTED_PORT", JWKS_URI=f"{jwks.base}/keys")

    def call(token: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return requests.get(f"{protected.base}/with-auth", headers=headers, timeout=10)

    def sign() -> str:
        result = run_script("sign.py", env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()[-1]

    old = sign()
    assert call(old).status_code == 200
    result = run_script("gen.py", "--force", *new_key, env=env)
    assert result.returncode == 0, result.stderr
    new = sign()
    assert call(new).status_code == 200
    refused = call(old)
    assert refused.status_code == 401
    assert old_refused_for in refused.json()["error_description"]
    assert call(new).status_code == 200
