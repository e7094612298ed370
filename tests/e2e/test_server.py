"""jwt_guide.http.server from outside: a real subprocess serving tests/e2e/server_app.py on a
free port, spoken to with real sockets (raw bytes where the bytes matter).

One server (one worker, the default read timeout) serves most tests; the deadline, process
and balance checks start their own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import requests

from tests.e2e.server_app import BIG, FAIL_AT_IMPORT
from tests.helpers import (
    ROOT,
    TIMEOUT,
    WAIT,
    RawAnswer,
    assert_clean_error,
    error_line,
    free_port,
    get,
    padding,
    process_alive,
    raw_exchange,
    script_env,
    stop_with_leftovers,
)

pytestmark = pytest.mark.e2e

APP = "tests.e2e.server_app:app"
MIB = 1 << 20
CLOSED_WITHIN = 6.0  # with --read-timeout 1: far above it, so only a connection never closed fails
TCP_ESTABLISHED = 1  # a state in /proc/net/tcp


# --- the server as a subprocess -------------------------------------------------------------


def _children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (the server's workers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Served:
    """``python -m jwt_guide.http.server`` serving ``APP``: its process, port and output."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    workers_wanted: int
    seen: set[int] = field(default_factory=set)  # every worker pid seen, for the teardown

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        return self.log.read_bytes()[offset:].decode(errors="replace")

    def workers(self) -> set[int]:
        children = _children(self.process.pid)
        self.seen |= children
        return children

    def pid_of_one_connection(self, held: list[Client]) -> int:
        """Open a connection, keep it in ``held``, and return the pid of the worker it got."""
        client = Client(self.port)
        held.append(client)
        client.send(get(b"/pid"))
        answer = client.answer()
        assert answer.status == 200, answer
        return int(answer.body)

    def wait_ready(self) -> None:
        """Poll until every worker answers (a worker still starting takes no connection)."""
        deadline = time.monotonic() + 20
        pids: set[int] = set()
        while len(pids) < self.workers_wanted:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"only {len(pids)} workers answered in 20 s:\n{self.output()}")
            held: list[Client] = []
            try:
                for _ in range(2 * self.workers_wanted):  # held together: spread on the workers
                    pids.add(self.pid_of_one_connection(held))
            except OSError:
                time.sleep(0.02)
            finally:
                for client in held:
                    client.close()
        self.workers()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; then SIGKILL any worker of it still alive (by pid)."""
        if self.process.poll() is None:
            self.workers()
        stop_with_leftovers(self.process, self.seen, 10)


def _server_env(**extra: str) -> dict[str, str]:
    return script_env(PYTHONPATH=str(ROOT), **extra)


def _command(port: int, *options: str, workers: int = 1, target: str = APP) -> list[str]:
    return [sys.executable, "-m", "jwt_guide.http.server", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), *options, target]  # fmt: skip


def _spawn(folder: Path, *options: str, workers: int = 1) -> Served:
    port = free_port()
    log = folder / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(_command(port, *options, workers=workers), env=_server_env(),
                                   stdout=out, stderr=out, cwd=folder)  # fmt: skip
    return Served(process, port, log, workers)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module's tests that leave it as they found it: one worker, so that
    "still serves" means the worker that refused."""
    served = _spawn(tmp_path_factory.mktemp("server"))
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()


Launch = Callable[..., Served]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start a server of the test's own (options, workers=), ready; stopped at teardown."""
    started: list[Served] = []

    def factory(*options: str, workers: int = 1) -> Served:
        served = _spawn(tmp_path, *options, workers=workers)
        started.append(served)
        served.wait_ready()
        return served

    yield factory
    for served in started:
        served.stop()


# --- raw HTTP -------------------------------------------------------------------------------


class Client:
    """One connection to 127.0.0.1:port, its answers read one at a time."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def answer(self, *, head: bool = False) -> RawAnswer:
        """The next answer (no body read after a HEAD request: ``head``). Fails if the
        connection closes first; raises TimeoutError if nothing comes."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise AssertionError(f"closed before an answer: {self.buffer[:200]!r}")
        lines, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert lines.startswith(b"HTTP/1.1 "), lines[:200]
        answer = RawAnswer(int(lines.split(b" ", 2)[1]), lines, b"")
        if head or answer.status in (204, 304):
            return answer
        length = answer.header(b"Content-Length")
        assert length is not None, lines
        while len(self.buffer) < int(length):
            if not self._fill():
                raise AssertionError(f"closed within a body: {lines!r}")
        answer.body, self.buffer = self.buffer[: int(length)], self.buffer[int(length) :]
        return answer

    def rest(self) -> bytes:
        """What comes until the server closes; raises TimeoutError if it does not."""
        with contextlib.suppress(ConnectionResetError):
            while self._fill():
                pass
        rest, self.buffer = self.buffer, b""
        return rest


def _names(answer: RawAnswer) -> list[bytes]:
    """The answer's header names, lower case, in order."""
    return [line.partition(b":")[0].lower() for line in answer.head.split(b"\r\n")[1:]]


def _echo(port: int, request: bytes) -> dict[str, str]:
    """The environ the app saw for ``request`` (a keep-alive request: one answer read)."""
    with Client(port) as client:
        client.send(request)
        answer = client.answer()
    assert answer.status == 200, answer
    return dict(json.loads(answer.body))


def _assert_still_serves(port: int) -> None:
    with Client(port) as client:
        client.send(get(b"/hello"))
        answer = client.answer()
    assert (answer.status, answer.body) == (200, b"hello")


def _post(path: bytes, body: bytes, *headers: bytes) -> bytes:
    length = b"Content-Length: %d" % len(body)
    return get(path, length, *headers).replace(b"GET ", b"POST ", 1) + body


def _chunked(body: bytes, size: int = 4096) -> bytes:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


# --- 1. keep-alive --------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(server: Served) -> None:
    with Client(server.port) as client:
        for i in range(5):
            client.send(get(b"/echo?i=%d" % i))
            answer = client.answer()
            assert answer.status == 200
            assert answer.header(b"Connection") is None  # HTTP/1.1: kept alive by default
            assert json.loads(answer.body)["QUERY_STRING"] == f"i={i}"


def test_http10_without_keep_alive_is_closed_after_the_answer(server: Served) -> None:
    with Client(server.port) as client:
        client.send(b"GET /echo HTTP/1.0\r\n\r\n")
        answer = client.answer()
        assert answer.status == 200
        assert json.loads(answer.body)["SERVER_PROTOCOL"] == "HTTP/1.0"
        assert answer.header(b"Connection") == b"close"
        assert client.rest() == b""


def test_http10_with_keep_alive_stays_open(server: Served) -> None:
    with Client(server.port) as client:
        for i in range(3):
            client.send(b"GET /echo?i=%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
            answer = client.answer()
            assert answer.status == 200
            assert answer.header(b"Connection") == b"keep-alive"
            assert json.loads(answer.body)["QUERY_STRING"] == f"i={i}"


def test_connection_close_closes_after_the_answer_and_runs_nothing_after(server: Served) -> None:
    offset = server.log_size()
    with Client(server.port) as client:
        # A request pipelined behind the close must not reach the app (RFC 9112 9.6): /raise
        # would log a line.
        client.send(get(b"/hello", b"Connection: close") + get(b"/raise") + get(b"/hello"))
        answer = client.answer()
        assert (answer.status, answer.body) == (200, b"hello")
        assert answer.header(b"Connection") == b"close"
        assert client.rest() == b""
    assert server.log_since(offset) == ""


# --- 2. pipelining --------------------------------------------------------------------------


def test_fifty_pipelined_requests_are_answered_in_order(server: Served) -> None:
    batch = [
        _post(b"/echo?i=%d" % i, b"body-%d" % i) if i % 3 == 1 else get(b"/echo?i=%d" % i)
        for i in range(50)
    ]
    with Client(server.port) as client:
        client.send(b"".join(batch))  # one write
        for i in range(50):
            answer = client.answer()
            assert answer.status == 200
            seen = json.loads(answer.body)
            assert seen["QUERY_STRING"] == f"i={i}"
            assert seen["REQUEST_METHOD"] == ("POST" if i % 3 == 1 else "GET")
            assert seen["body"] == (f"body-{i}" if i % 3 == 1 else "")


def test_a_long_pipelined_stream_of_small_heads_is_all_answered(server: Served) -> None:
    count = 1000
    request = get(b"/hello", b"X-Pad: " + b"p" * 950)  # about 1,000 bytes, far below 128 KiB
    statuses: list[int] = []
    with Client(server.port) as client:
        sender = threading.Thread(target=_send_quietly, args=(client.sock, request * count))
        sender.start()
        try:
            while len(statuses) < count:
                statuses.append(client.answer().status)
                if statuses[-1] != 200:
                    break
        finally:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)
            sender.join(WAIT)
    assert statuses == [200] * count, f"answer {len(statuses)} was {statuses[-1]}"


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # refused or shut down midway
        sock.sendall(data)


# --- 3. answers without a body, lengths, Date ----------------------------------------------


@pytest.mark.parametrize("path", [b"/hello", b"/generator", b"/big"])
def test_head_has_no_body_and_the_length_of_get(server: Served, path: bytes) -> None:
    with Client(server.port) as client:
        client.send(get(path))
        full = client.answer()
        client.send(get(path).replace(b"GET ", b"HEAD ", 1) + get(b"/hello"))
        head = client.answer(head=True)
        after = client.answer()  # right behind the HEAD answer's head: it had no body
    assert full.status == head.status == 200
    assert full.header(b"Content-Length") == str(len(full.body)).encode()
    assert head.header(b"Content-Length") == full.header(b"Content-Length")
    assert (after.status, after.body) == (200, b"hello")


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_and_no_length(server: Served, status: int) -> None:
    with Client(server.port) as client:
        client.send(get(b"/%d" % status) + get(b"/hello"))  # the app gives both a body
        answer = client.answer()
        after = client.answer()
    assert answer.status == status
    assert b"content-length" not in _names(answer)
    assert b"transfer-encoding" not in _names(answer)
    assert (after.status, after.body) == (200, b"hello")


def test_generator_body_gets_its_content_length(server: Served) -> None:
    with Client(server.port) as client:
        client.send(get(b"/generator"))
        answer = client.answer()
    assert answer.header(b"Content-Length") == b"9"
    assert answer.body == b"generated"
    assert _names(answer).count(b"content-length") == 1


def test_answers_carry_a_current_date(server: Served) -> None:
    with Client(server.port) as client:
        client.send(get(b"/hello"))
        answer = client.answer()
    date = answer.header(b"Date")
    assert date is not None and date.endswith(b" GMT"), answer.head
    sent = parsedate_to_datetime(date.decode()).timestamp()
    assert abs(sent - time.time()) < 5  # the server renews it every second


def test_refusals_carry_a_date(server: Served) -> None:
    answer = raw_exchange(server.port, b"garbage\r\n\r\n")
    assert answer.status == 400
    assert answer.header(b"Date") is not None, answer.head


# --- 4. the environ -------------------------------------------------------------------------


def test_environ_path_is_decoded_and_query_raw(server: Served) -> None:
    seen = _echo(server.port, get(b"/echo/caf%C3%A9%20x%2Fy?a=%41&b=c+d&e=%C3%A9"))
    assert seen["PATH_INFO"] == "/echo/caf\u00c3\u00a9 x/y"  # bytes decoded as Latin-1
    assert seen["QUERY_STRING"] == "a=%41&b=c+d&e=%C3%A9"
    assert seen["REQUEST_METHOD"] == "GET"
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["HTTP_HOST"] == "127.0.0.1"


def test_repeated_headers_are_joined_with_commas(server: Served) -> None:
    seen = _echo(server.port, get(b"/echo", b"X-Multi: a", b"X-Other: o", b"X-Multi: b c",
                                  b"x-multi: d"))  # fmt: skip
    assert seen["HTTP_X_MULTI"] == "a,b c,d"
    assert seen["HTTP_X_OTHER"] == "o"


@pytest.mark.parametrize(
    "headers",
    [(b"X_User: mallory",), (b"X-User: alice", b"X_User: mallory"),
     (b"X_User: mallory", b"X-User: alice")],
    ids=["alone", "after", "before"],
)  # fmt: skip
def test_header_names_with_underscores_never_reach_the_app(
    server: Served, headers: tuple[bytes, ...]
) -> None:
    seen = _echo(server.port, get(b"/echo", *headers))
    if len(headers) == 1:
        assert "HTTP_X_USER" not in seen
    else:
        assert seen["HTTP_X_USER"] == "alice"
    assert "mallory" not in json.dumps(seen)


def test_post_body_reaches_wsgi_input(server: Served) -> None:
    body = bytes(range(256)) * 40
    answer = requests.post(f"{server.base}/echo", data=body, timeout=TIMEOUT,
                           headers={"Content-Type": "application/x-test"})  # fmt: skip
    assert answer.status_code == 200
    seen = answer.json()
    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["CONTENT_TYPE"] == "application/x-test"
    assert seen["CONTENT_LENGTH"] == str(len(body))
    assert seen["body"].encode("latin-1") == body


def test_chunked_post_body_reaches_wsgi_input(server: Served) -> None:
    body = b"x" * 10_000 + b"end"
    request = get(b"/echo", b"Transfer-Encoding: chunked").replace(b"GET ", b"POST ", 1)
    seen = _echo(server.port, request + _chunked(body, 1000))
    assert seen["body"].encode("latin-1") == body
    assert "CONTENT_LENGTH" not in seen


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [(b"http://example.com/echo/p?q=1", "/echo/p", "q=1"),
     (b"http://example.com:8080/echo/p%20q?x=%41", "/echo/p q", "x=%41")],
)  # fmt: skip
def test_absolute_form_target_gives_its_path(
    server: Served, target: bytes, path: str, query: str
) -> None:
    seen = _echo(server.port, b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert (seen["PATH_INFO"], seen["QUERY_STRING"]) == (path, query)


# --- 5. the app failing ---------------------------------------------------------------------



@pytest.mark.parametrize("connection", [b"keep-alive", b"close"])
@pytest.mark.parametrize("path", [b"/raise", b"/inject"])
def test_app_failure_is_a_json_500_and_one_log_line(
    server: Served, path: bytes, connection: bytes
) -> None:
    offset = server.log_size()
    answer = raw_exchange(server.port, get(path, b"Connection: " + connection))
    logged = server.log_since(offset)
    assert b"injected" not in (answer.head + answer.body).lower()  # no header, no app body
    assert_clean_error(logged)
    [line] = logged.splitlines()  # the message's own line break escaped
    assert line.startswith("server: the app failed: ")
    assert answer.status == 500, answer
    assert answer.json()["error"] == "server_error"
    _assert_still_serves(server.port)


def test_hop_by_hop_headers_of_the_app_are_not_sent(server: Served) -> None:
    with Client(server.port) as client:
        client.send(get(b"/hop-by-hop"))
        answer = client.answer()
        names = _names(answer)
        for name in (b"transfer-encoding", b"keep-alive", b"upgrade"):
            assert name not in names, answer.head
        assert b"h2c" not in answer.head and b"timeout=999" not in answer.head
        assert (answer.header(b"Content-Length"), answer.body) == (b"3", b"hop")
        if answer.header(b"Connection") is None:  # the server kept it alive: it must be
            client.send(get(b"/hello"))
            assert client.answer().body == b"hello"
        else:  # or it took the app's word and closes
            assert answer.header(b"Connection") == b"close"
            assert client.rest() == b""


def test_second_start_response_with_exc_info_replaces_the_answer(server: Served) -> None:
    with Client(server.port) as client:
        client.send(get(b"/exc-info"))
        answer = client.answer()
    assert answer.status == 503
    assert answer.body == b"replaced"


def test_an_app_closing_wsgi_input_does_not_break_later_requests(launch: Launch) -> None:
    served = launch()
    assert requests.get(f"{served.base}/close-input", timeout=TIMEOUT).text == "closed"
    answer = requests.get(f"{served.base}/echo", timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text


# --- 6. limits ------------------------------------------------------------------------------


def _assert_refused(port: int, request: bytes, status: int) -> None:
    """``request`` gets the JSON ``status``, then the connection is closed; others are still
    served."""
    answer = raw_exchange(port, request)  # reads until closed, TimeoutError if never
    assert answer.status == status, answer
    assert answer.json()["error"] == "invalid_request"
    assert answer.header(b"Connection") == b"close"
    _assert_still_serves(port)


@pytest.mark.parametrize("size", [128 * 1024 + 1024, 200_000, MIB])
def test_head_over_128_kib_is_431(server: Served, size: int) -> None:
    _assert_refused(server.port, get(b"/hello", *padding(size)), 431)


def test_head_under_128_kib_is_served(server: Served) -> None:
    answer = raw_exchange(server.port, get(b"/hello", b"Connection: close",
                                           *padding(120 * 1024)))  # fmt: skip
    assert (answer.status, answer.body) == (200, b"hello")


@pytest.mark.parametrize("size", [8 * 1024 + 1, 100_000])
def test_target_over_8_kib_is_414(server: Served, size: int) -> None:
    _assert_refused(server.port, get(b"/echo?" + b"a" * (size - 6)), 414)


def test_target_of_8_kib_is_served(server: Served) -> None:
    seen = _echo(server.port, get(b"/echo?" + b"a" * (8 * 1024 - 6)))
    assert len(seen["QUERY_STRING"]) == 8 * 1024 - 6


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_64_kib_is_413(server: Served, chunked: bool) -> None:
    body = b"z" * (64 * 1024 + 1)
    if chunked:
        head = get(b"/echo", b"Transfer-Encoding: chunked").replace(b"GET ", b"POST ", 1)
        _assert_refused(server.port, head + _chunked(body), 413)
    else:
        _assert_refused(server.port, _post(b"/echo", body), 413)


def test_body_of_64_kib_is_served(server: Served) -> None:
    seen = _echo(server.port, _post(b"/echo", b"z" * 64 * 1024))
    assert len(seen["body"]) == 64 * 1024


@pytest.mark.parametrize(
    "request_bytes",
    [b"garbage\r\n\r\n",
     b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
     b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
     b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32],
    ids=["garbage", "space-before-colon", "nul-in-target", "nul-in-header",
         "length-and-chunked", "bad-chunk-size", "tls-client-hello"],
)  # fmt: skip
def test_malformed_request_is_400(server: Served, request_bytes: bytes) -> None:
    _assert_refused(server.port, request_bytes, 400)


EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an HTTP/2 SETTINGS frame


def test_http2_preface_is_refused_never_spoken(server: Served) -> None:
    answer = raw_exchange(server.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + EMPTY_SETTINGS)
    assert answer.head == answer.body == b"" or 400 <= answer.status < 500, answer
    assert not answer.head.startswith(b"\x00")
    assert EMPTY_SETTINGS[3:5] not in answer.head + answer.body  # type 4 (SETTINGS), flags
    _assert_still_serves(server.port)


def test_h2c_upgrade_is_answered_as_http11(server: Served) -> None:
    answer = raw_exchange(server.port, get(
        b"/echo", b"Connection: Upgrade, HTTP2-Settings, close", b"Upgrade: h2c",
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
    ))  # fmt: skip
    assert answer.head.startswith(b"HTTP/1.1 200 "), answer
    assert b"upgrade" not in _names(answer)
    assert json.loads(answer.body)["SERVER_PROTOCOL"] == "HTTP/1.1"
    _assert_still_serves(server.port)


@pytest.mark.parametrize(("pieces", "served"), [(20, True), (300, False)])
def test_head_dripped_in_over_128_reads_is_refused(
    server: Served, pieces: int, served: bool
) -> None:
    request = get(b"/hello", b"Connection: close", b"X-Pad: " + b"p" * 500)
    size = math.ceil(len(request) / pieces)
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # refused midway
            for start in range(0, len(request), size):
                s.sendall(request[start : start + size])
                time.sleep(0.002)  # part of the input: each piece its own read
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                received += chunk
    if served:
        assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"hello")
    else:
        assert received == b"" or received.startswith(b"HTTP/1.1 400 "), received[:80]
    _assert_still_serves(server.port)


# --- 7. deadlines ---------------------------------------------------------------------------


def _until_closed(port: int, send: bytes, drip: bytes) -> tuple[float, bytes]:
    """Connect, send ``send``, then ``drip`` every 0.3 s; the seconds until the server closed
    the connection (inf if not within CLOSED_WITHIN) and what it sent."""
    start = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(send)
        s.settimeout(0.3)
        while time.monotonic() - start < CLOSED_WITHIN:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                with contextlib.suppress(OSError):
                    s.sendall(drip)
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        else:
            return math.inf, received
    return time.monotonic() - start, received


def _server_end_state(server_port: int, client_port: int) -> int | None:
    """The TCP state (/proc/net/tcp) of the server's end of a connection, None if gone."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[3], 16)
    return None


def _unread_until_closed(port: int) -> tuple[float, bytes]:
    """Ask for 20 answers of 1 MiB and read none; the seconds until the server closed its
    end. Seen from the server's end: what it wrote stays queued in the kernel, before any
    FIN, so the client's end stays established."""
    start = time.monotonic()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(TIMEOUT)
        s.connect(("127.0.0.1", port))
        s.sendall(get(b"/big") * 20)
        client_port = s.getsockname()[1]
        while time.monotonic() - start < CLOSED_WITHIN:
            if _server_end_state(port, client_port) != TCP_ESTABLISHED:
                return time.monotonic() - start, b""
            time.sleep(0.05)
    return math.inf, b""


STALLED = {
    "silent": (b"", b""),
    "request line cut": (b"GET /hello HT", b""),
    "headers cut": (b"GET /hello HTTP/1.1\r\nHost: x\r\n", b""),
    "headers dripped": (b"GET /hello HTTP/1.1\r\nX-Slow: ", b"a"),
    "body cut": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", b""),
    "idle keep-alive": (get(b"/hello"), b""),
}


def test_stalled_connections_are_closed_on_the_read_timeout(launch: Launch) -> None:
    served = launch("--read-timeout", "1")
    with ThreadPoolExecutor(len(STALLED) + 1) as pool:
        waiting = {name: pool.submit(_until_closed, served.port, *case)
                   for name, case in STALLED.items()}  # fmt: skip
        waiting["answers never read"] = pool.submit(_unread_until_closed, served.port)
        # Meanwhile a slow client within the deadline is served.
        with Client(served.port) as client:
            for piece in (b"GET /hello HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
                client.send(piece)
                time.sleep(0.15)  # part of the input: a slow client, 0.3 s in all
            assert client.answer().body == b"hello"
        results = {name: future.result() for name, future in waiting.items()}
    for name, (seconds, received) in results.items():
        assert seconds < CLOSED_WITHIN, f"{name}: still open after {CLOSED_WITHIN} s"
        if name == "idle keep-alive":
            assert received.count(b"HTTP/1.1 200 ") == 1 and received.endswith(b"hello")
        else:
            assert received == b"" or received.startswith(b"HTTP/1.1 408 "), (name, received)
    _assert_still_serves(served.port)


# --- 8. backpressure ------------------------------------------------------------------------


def test_client_not_reading_big_answers_does_not_grow_the_worker(server: Served) -> None:
    assert len(BIG) == MIB
    worker = int(requests.get(f"{server.base}/pid", timeout=TIMEOUT).text)
    before = peak = _rss_mib(worker)
    with socket.socket() as greedy:
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.settimeout(TIMEOUT)
        greedy.connect(("127.0.0.1", server.port))
        greedy.sendall(get(b"/big") * 400)  # never reads
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # others are served meanwhile
            answer = requests.get(f"{server.base}/hello", timeout=TIMEOUT)
            assert (answer.status_code, answer.text) == (200, "hello")
            peak = max(peak, _rss_mib(worker))
            time.sleep(0.05)
    assert peak - before < 300, f"worker VmRSS grew by {peak - before:.0f} MiB"


def test_a_refusal_behind_unanswered_requests_is_never_taken_for_their_answer(
    server: Served,
) -> None:
    """The client does not read while 30 answers of 1 MiB are due, then sends a malformed
    request: a 400 then would be read as the answer to the first request still waiting."""
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(TIMEOUT)
        client.connect(("127.0.0.1", server.port))
        client.sendall(get(b"/big") * 30 + b"GET / HTTP/1.1\r\nX: a\x01\r\n\r\n")
        time.sleep(0.5)  # the server reads all of it while its answers wait
        received = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(1 << 20):
                received += chunk
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]
    assert statuses.count(400) == 0 or statuses[:30] == [200] * 30, statuses


# --- 9. processes ---------------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_killed_worker_is_replaced_and_the_port_keeps_serving(launch: Launch) -> None:
    served = launch(workers=2)
    first = served.workers()
    assert len(first) == 2
    victim = min(first)
    offset = served.log_size()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while not ((now := served.workers()) - first and len(now) == 2):
        assert time.monotonic() < deadline, f"no new worker: {now}"
        answer = requests.get(f"{served.base}/pid", headers={"Connection": "close"},
                              timeout=TIMEOUT)  # fmt: skip
        assert answer.status_code == 200
        assert int(answer.text) != victim
        time.sleep(0.02)
    [new] = now - first
    assert victim not in now
    held: list[Client] = []
    try:  # the new worker takes connections
        _wait_for(lambda: served.pid_of_one_connection(held) == new, "the new worker serves")
    finally:
        for client in held:
            client.close()
    [line] = served.log_since(offset).splitlines()
    assert f"worker {victim} exited (signal SIGKILL)" in line


def _nanosleeping(pids: set[int]) -> bool:
    """Whether one of ``pids`` is in time.sleep (the app of /sleep, running)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            if "nanosleep" in Path(f"/proc/{pid}/wchan").read_text():
                return True
    return False


def test_sigterm_stops_main_and_workers_with_exit_0(launch: Launch) -> None:
    served = launch(workers=2)
    workers = served.workers()
    with Client(served.port) as idle, Client(served.port) as busy:
        idle.send(get(b"/hello"))
        assert idle.answer().body == b"hello"
        busy.send(get(b"/sleep?0.5"))
        _wait_for(lambda: _nanosleeping(workers), "the app of /sleep never ran")
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(WAIT + 5) == 0
        assert busy.answer().body == b"slept"  # the answer being made was finished
        assert idle.rest() == b""
    _wait_for(lambda: not any(map(process_alive, workers)), "workers outlived the main process")
    assert _port_refuses(served.port)
    assert_clean_error(served.output())


def test_sigkill_of_main_takes_the_workers_down_and_frees_the_port(launch: Launch) -> None:
    served = launch(workers=2)
    workers = served.workers()
    with Client(served.port) as held:
        held.send(get(b"/hello"))
        assert held.answer().body == b"hello"
        served.process.kill()
        served.process.wait(WAIT)
        _wait_for(lambda: not any(map(process_alive, workers)),
                  "workers outlived a SIGKILL of main")
        assert held.rest() == b""
    assert _port_refuses(served.port)
    with socket.socket() as again:  # a new server can listen on it
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", served.port))
        again.listen()




@dataclass(frozen=True)
class Unbuildable:
    """An app target the workers cannot build, and what the line must say."""

    target: str
    message: str
    options: tuple[str, ...] = ()
    failing_import: bool = False  # tests/e2e/server_app.py raises at import


FAILING_IMPORT = Unbuildable(APP, f"{FAIL_AT_IMPORT} is set", failing_import=True)


@pytest.mark.parametrize(
    ("case", "workers"),
    [(FAILING_IMPORT, 1),
     (Unbuildable("tests.e2e.server_app:failing_factory", "the app's settings are wrong",
                  ("--factory",)), 1),
     (Unbuildable("tests.e2e.no_such_module:app", "No module named 'tests.e2e.no_such_module'"),
      1),
     (Unbuildable("tests.e2e.server_app:no_such_app", "has no attribute 'no_such_app'"), 1),
     (FAILING_IMPORT, 2)],
    ids=["import-raises", "factory-raises", "no-module", "no-attribute",
         "import-raises-2-workers"],
)  # fmt: skip
def test_app_that_cannot_be_built_exits_1_with_one_line(
    tmp_path: Path, case: Unbuildable, workers: int
) -> None:
    importing = f"{tmp_path}:{workers}"  # every worker imports the app before one fails
    env = _server_env(**{FAIL_AT_IMPORT: importing} if case.failing_import else {})
    command = _command(free_port(), *case.options, workers=workers, target=case.target)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30,
                            check=False)  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    line = error_line(result.stderr)
    assert line.startswith(f"server: cannot start the app {case.target}: ")
    assert case.message in line


@pytest.mark.parametrize("listening", [True, False], ids=["listening", "bound"])
def test_port_in_use_exits_1_with_one_line(listening: bool) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        if listening:
            holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(_command(port), env=_server_env(), capture_output=True,
                                text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    line = error_line(result.stderr)
    assert line == f"server: cannot listen on 127.0.0.1 port {port}: Address already in use"


# --- 10. balance ----------------------------------------------------------------------------


def test_two_workers_share_keep_alive_connections_evenly(launch: Launch) -> None:
    served = launch(workers=2)
    workers = served.workers()
    clients = [Client(served.port) for _ in range(16)]  # all open before any request
    try:
        for client in clients:
            client.send(get(b"/pid"))
        pids = [int(client.answer().body) for client in clients]
    finally:
        for client in clients:
            client.close()
    counts = {pid: pids.count(pid) for pid in set(pids)}
    assert set(counts) == workers, counts
    assert all(6 <= n <= 10 for n in counts.values()), counts
