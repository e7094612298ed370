"""The development servers end to end (``make jwks-server``, ``make protected-server``):
the real scripts as subprocesses, probed with raw sockets for what clients like ``requests``
never send. The deadline for slow requests is tested in process, with the constant shortened
(tests/unit/http/test_devserver.py); here every check runs with the production settings.
"""

from __future__ import annotations

import signal
import socket
import sys
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
    get,
    padding,
    raw_exchange,
    run_script,
    script_env,
    start_script,
    wait_until_listening,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
SCRIPTS = [("jwks_server.py", "JWKS_PORT"), ("protected_server.py", "PROTECTED_PORT")]
SCRIPT_IDS = ["jwks", "protected"]


# Request lines that are not HTTP/1.x requests, with the status they must get.
MALFORMED = [
    pytest.param(b"X\r\n\r\n", 400, id="one-word"),
    pytest.param(b"GET / HTTP/1.x\r\n\r\n", 400, id="bad-version"),
    pytest.param(b"GET / HTTP/9.9\r\n\r\n", 400, id="unknown-version"),
    pytest.param(b"GET /keys\r\n\r\n", 400, id="http-0.9"),
    pytest.param(b"\r\n\r\n", 400, id="empty"),
    pytest.param(b"GET http://[/ HTTP/1.1\r\n\r\n", 400, id="bad-ipv6-target"),
    pytest.param(b'GET /"}\\\x1b[2J\xff\xfe HTTP/1.1\r\n\r\n', 400, id="quote-escape-bytes"),
    pytest.param(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, id="70-KB-line"),
]


@pytest.mark.parametrize(("script", "port_variable"), SCRIPTS, ids=SCRIPT_IDS)
def test_malformed_requests_get_json_and_one_escaped_log_line(
    keys_dir: Path, start_server: ServerFactory, script: str, port_variable: str
) -> None:
    server = start_server(script, port_variable, JWT_KEYS_DIR=str(keys_dir))
    before = server.output().count("\n")
    for param in MALFORMED:
        data, status = param.values
        assert isinstance(data, bytes)
        answer = raw_exchange(server.port, data)
        assert answer.status == status, (param.id, answer.head)
        assert answer.json()["error"] == "invalid_request"
    # An escape sequence in a path the server accepts reaches the log escaped too.
    assert raw_exchange(server.port, get(b"/\x1b]0;owned\x07")).status == 400
    assert raw_exchange(server.port, get(b"/%1b[31mred?access_token=secret")).status == 404
    server.stop()
    log = server.output()
    assert_clean_error(log)
    new_lines = log.splitlines()[before:]
    assert len(new_lines) == len(MALFORMED) + 2, new_lines  # one line per request
    for line in new_lines:
        assert line.isascii() and line.isprintable(), line
        assert len(line) < 400, line
    assert "\\x1b" in log
    assert "secret" not in log


@pytest.mark.parametrize(("script", "port_variable"), SCRIPTS, ids=SCRIPT_IDS)
def test_no_redirect_is_built_from_the_host_header(
    keys_dir: Path, start_server: ServerFactory, script: str, port_variable: str
) -> None:
    server = start_server(script, port_variable, JWT_KEYS_DIR=str(keys_dir))
    for path in (b"/.well-known//jwks.json", b"/keys/", b"/with-auth/", b"/a//b", b"//keys"):
        request = b"GET %s HTTP/1.1\r\nHost: evil.example\r\n\r\n" % path
        answer = raw_exchange(server.port, request)
        assert answer.header(b"Location") is None, (path, answer.head)
        assert answer.status in (200, 401, 404), (path, answer.head)
    doubled = raw_exchange(
        server.port, b"GET /.well-known//jwks.json HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    )
    assert doubled.status == 404
    assert doubled.json()["error"] == "not_found"


@pytest.mark.parametrize(("script", "port_variable"), SCRIPTS, ids=SCRIPT_IDS)
def test_headers_over_64_kib_in_all_get_a_json_431(
    keys_dir: Path, start_server: ServerFactory, script: str, port_variable: str
) -> None:
    server = start_server(script, port_variable, JWT_KEYS_DIR=str(keys_dir))
    path = b"/keys" if script == "jwks_server.py" else b"/with-auth"
    cases = {
        "many lines, 70 KB": padding(70_000),
        "just over 64 KiB": padding(64 * 1024 + 1),
        "one 70 KB line": [b"X-Big: " + b"b" * 70_000],
        "120 small lines": [b"X-%03d: 1" % i for i in range(120)],
        "a 2 MB line": [b"X-Huge: " + b"h" * 2_000_000],
    }
    for name, headers in cases.items():
        answer = raw_exchange(server.port, get(path, *headers))
        assert answer.status == 431, (name, answer.head)
        assert answer.json()["error"] == "invalid_request"
    assert raw_exchange(server.port, get(path)).status in (200, 401)  # still serving
    assert_clean_error(server.output())


def test_a_token_over_8_kib_with_headers_under_64_kib_gets_a_401(
    keys_dir: Path, start_server: ServerFactory, make_token: TokenFactory
) -> None:
    server = start_server("protected_server.py", "PROTECTED_PORT", JWT_KEYS_DIR=str(keys_dir))
    token = make_token(blob="x" * 9000)
    assert len(token) > 8192
    bearer = b"Authorization: Bearer " + token.encode()
    answer = raw_exchange(server.port, get(b"/with-auth", bearer, *padding(50_000)))
    assert answer.status == 401, answer.head
    assert answer.json()["error"] == "invalid_token"
    assert b"8192" in answer.body


@pytest.mark.parametrize(("script", "port_variable"), SCRIPTS, ids=SCRIPT_IDS)
def test_an_answered_keep_alive_connection_is_closed(
    keys_dir: Path, start_server: ServerFactory, script: str, port_variable: str
) -> None:
    """An HTTP/1.1 client keeps its connection open by default: the server closes it."""
    server = start_server(script, port_variable, JWT_KEYS_DIR=str(keys_dir))
    answer = raw_exchange(server.port, get(b"/keys"), timeout=5)  # TimeoutError if left open
    assert answer.status in (200, 404)
    assert answer.header(b"Connection") == b"close"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in USER_HZ (100)


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_more_silent_connections_than_descriptors_is_no_busy_loop(
    keys_dir: Path, tmp_path: Path
) -> None:
    """With 64 descriptors, 100 silent connections: the server holds 32 (half its
    descriptors), leaves the rest in the listen backlog without spinning, and serves again
    as soon as they go."""
    # The limit is set by the child itself (preexec_fn is unsafe with threads).
    limited = (
        "import resource, runpy, sys; N = resource.RLIMIT_NOFILE; "
        "resource.setrlimit(N, (64, resource.getrlimit(N)[1])); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    port = free_port()
    log = tmp_path / "jwks.log"
    with log.open("wb") as out:
        process = start_script(
            "jwks_server.py", env=script_env(JWKS_PORT=str(port), JWT_KEYS_DIR=str(keys_dir)),
            log=out, cwd=tmp_path, python=("-c", limited),
        )  # fmt: skip
    server = Server(process, port, log)
    silent: list[socket.socket] = []
    try:
        wait_until_listening(server)
        for _ in range(100):
            silent.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        deadline = time.monotonic() + TIMEOUT
        while _threads(process.pid) < 32 and time.monotonic() < deadline:
            time.sleep(0.05)
        start = _cpu_seconds(process.pid)
        time.sleep(1.0)  # the measurement window
        assert _cpu_seconds(process.pid) - start < 0.5, "the accept loop spins"
        assert process.poll() is None
        for sock in silent:
            sock.close()
        silent.clear()
        assert requests.get(f"{server.base}/keys", timeout=TIMEOUT).status_code == 200
    finally:
        for sock in silent:
            sock.close()
        server.stop()
    assert_clean_error(server.output())


@pytest.mark.parametrize(("script", "port_variable"), SCRIPTS, ids=SCRIPT_IDS)
def test_ctrl_c_exits_130_quietly(
    keys_dir: Path, start_server: ServerFactory, script: str, port_variable: str
) -> None:
    server = start_server(script, port_variable, JWT_KEYS_DIR=str(keys_dir))
    before = server.output()
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(TIMEOUT) == 130
    after = server.output()[len(before) :]
    assert after.count("\n") <= 1, after
    assert_clean_error(after)


@pytest.mark.parametrize(("script", "port_variable"), SCRIPTS, ids=SCRIPT_IDS)
@pytest.mark.parametrize("host", ["nonexistent.invalid", "999.1.1.1", "192.0.2.1"])
def test_a_bad_bind_host_is_one_line_naming_jwt_bind_host(
    keys_dir: Path, script: str, port_variable: str, host: str
) -> None:
    env = script_env(
        JWT_KEYS_DIR=str(keys_dir), JWT_BIND_HOST=host, **{port_variable: str(free_port())}
    )
    result = run_script(script, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "JWT_BIND_HOST" in line
    assert port_variable not in line
    assert_clean_error(result.stderr)
