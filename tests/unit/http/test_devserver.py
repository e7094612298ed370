"""jwt_guide.http.devserver in process: the development server run in a thread with a short
request deadline, its connection bound, and its refusals of a bad host or a taken port."""

from __future__ import annotations

import errno
import json
import select
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from jwt_guide.config import load_config
from jwt_guide.errors import JwtGuideError, UsageError
from jwt_guide.http import devserver, jwks_app
from tests.helpers import get, raw_exchange

TIMEOUT = 10.0
SHORT_DEADLINE = 0.5


def test_production_deadline_is_at_most_30_seconds() -> None:
    assert 0 < devserver.REQUEST_TIMEOUT <= 30


def test_loggable_escapes_everything_but_printable_ascii_and_bounds_length() -> None:
    text = '\x1b[2J\r\n"\\\x00\x7f\x9b\xe9\u202e\U0001f600' + "a" * 1000
    logged = devserver.loggable(text)
    assert logged.isascii() and logged.isprintable()
    assert "\x1b" not in logged and '"' not in logged
    assert logged.startswith("\\x1b[2J\\x0d\\x0a\\x22\\x5c\\x00\\x7f\\x9b\\xe9")
    assert logged.endswith("...")
    assert len(logged) < 4 * devserver.MAX_LOGGED + 10


def test_a_bad_bind_host_names_jwt_bind_host(keys_dir: Path) -> None:
    app = jwks_app.create_app(load_config())
    for host in ("nonexistent.invalid", "999.1.1.1"):
        with pytest.raises(UsageError, match="JWT_BIND_HOST") as refused:
            devserver.make_dev_server(app, host, 0, "JWKS_PORT")
        assert "JWKS_PORT" not in str(refused.value)


def test_a_taken_port_names_the_port_variable(keys_dir: Path) -> None:
    app = jwks_app.create_app(load_config())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(JwtGuideError, match="JWKS_PORT") as refused:
            devserver.make_dev_server(app, "127.0.0.1", port, "JWKS_PORT")
    assert "JWT_BIND_HOST" not in str(refused.value)
    assert not isinstance(refused.value, UsageError)


def test_ctrl_c_while_serving_exits_130(keys_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupted:
        def serve_forever(self) -> None:
            raise KeyboardInterrupt

        def server_close(self) -> None:
            pass

    monkeypatch.setattr(devserver, "make_dev_server", lambda *_: Interrupted())
    with pytest.raises(SystemExit) as stopped:
        devserver.run_dev_server(Flask(__name__), "127.0.0.1", 0, "JWKS_PORT", "banner")
    assert stopped.value.code == 130


@pytest.fixture
def dev_server(keys_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[devserver.DevServer]:
    """The JWKS app under the development server, in a thread, with a 0.5 s deadline."""
    monkeypatch.setattr(devserver, "REQUEST_TIMEOUT", SHORT_DEADLINE)
    server = devserver.make_dev_server(
        jwks_app.create_app(load_config()), "127.0.0.1", 0, "JWKS_PORT"
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    thread.join(TIMEOUT)


def _closed_by_server(sock: socket.socket, drip: bytes = b"") -> bool:
    """Send ``drip`` every 50 ms (nothing if empty) until the server closes the connection;
    False if it is still open after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            if drip:
                sock.send(drip)
            if select.select([sock], [], [], 0.05)[0] and sock.recv(1024) == b"":
                return True
        except OSError:  # reset: closed too
            return True
    return False


@pytest.mark.parametrize(
    ("sent", "drip"),
    [(b"", b""), (b"GET /keys HTTP/1.1\r\nHost: x\r\n", b""), (b"GET /keys HTTP/1.1\r\n", b"X")],
    ids=["silent", "stalled-mid-request", "dripping-headers"],
)
def test_slow_connections_are_closed_at_the_deadline(
    dev_server: devserver.DevServer, sent: bytes, drip: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_connection(("127.0.0.1", dev_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(sent)
        assert _closed_by_server(sock, drip)
    # The server still serves, and logged one line for the connection, no traceback.
    assert raw_exchange(dev_server.port, get(b"/keys")).status == 200
    assert "Traceback" not in caplog.text


def test_connections_beyond_the_limit_wait_for_a_free_slot(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devserver, "connection_limit", lambda: 2)
    monkeypatch.setattr(devserver, "REQUEST_TIMEOUT", SHORT_DEADLINE)
    server = devserver.make_dev_server(jwks_app.create_app(load_config()), "127.0.0.1", 0, "P")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        # Served once the deadline frees a slot: the limit holds, and slots come back.
        assert raw_exchange(server.port, get(b"/keys")).status == 200
        for sock in silent:
            sock.close()
        assert raw_exchange(server.port, get(b"/keys")).status == 200
    finally:
        server.shutdown()
        thread.join(TIMEOUT)


@pytest.mark.parametrize(
    "line",
    [b'GET /"\\ HTTP/"\\', b"GET /\x00\x1b[31m HTTP/1.1", b"\xff\xfe\xfd", b'"}{"', b"\\u0000"],
    ids=["quote-backslash", "controls", "not-utf-8", "json-breaker", "unicode-escape"],
)
def test_error_body_is_valid_json_whatever_the_request_line(
    dev_server: devserver.DevServer, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    answer = raw_exchange(dev_server.port, line + b"\r\n\r\n")
    assert answer.status == 400
    assert json.loads(answer.body)["error"] == "invalid_request"
    [record] = [r for r in caplog.records if r.name == "werkzeug"]
    message = record.getMessage()
    assert message.isascii() and message.isprintable(), message
    assert message.endswith(" 400 -")


def test_out_of_descriptors_pauses_the_accept_loop(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """accept() failing with EMFILE leaves the listening socket readable: without a pause,
    the loop would spin at 100% CPU until a descriptor frees up."""
    server = devserver.make_dev_server(jwks_app.create_app(load_config()), "127.0.0.1", 0, "P")
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)

    def out_of_descriptors(self: socketserver.TCPServer) -> tuple[socket.socket, object]:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socketserver.TCPServer, "get_request", out_of_descriptors)
    try:
        for _ in range(12):
            with pytest.raises(OSError, match="Too many open files"):
                server.get_request()
    finally:
        server.server_close()
    assert pauses == sorted(pauses) and pauses[0] > 0 and pauses[-1] == devserver.MAX_ACCEPT_DELAY
    assert caplog.text.count("cannot accept connections") == 1
    assert server.slots.acquire(blocking=False)  # every slot taken for accept() came back
