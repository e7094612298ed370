"""A plain WSGI app for tests/e2e/test_server.py: each path makes jwt_guide.http.server face
one case (an echo of the environ, answers without a body, broken or hostile answers, a big
answer). No framework, so that what the tests see is the server's doing."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Callable[[bytes], object]]
BIG = b"b" * (1 << 20)  # 1 MiB
TEXT = [("Content-Type", "text/plain")]
# Set in the environment to "FOLDER:N": importing this fails, once N processes are importing
# it (each leaves its pid in FOLDER), at once in one of them and 10 s later in the others (an
# app loading its settings, in N workers).
FAIL_AT_IMPORT = "SERVER_APP_FAIL_AT_IMPORT"

if FAIL_AT_IMPORT in os.environ:
    folder, _, importers = os.environ[FAIL_AT_IMPORT].rpartition(":")
    os.close(os.open(os.path.join(folder, str(os.getpid())), os.O_CREAT | os.O_WRONLY))
    deadline = time.monotonic() + 10
    while len(os.listdir(folder)) < int(importers) and time.monotonic() < deadline:
        time.sleep(0.01)
    if min(os.listdir(folder)) != str(os.getpid()):
        time.sleep(10)
    raise RuntimeError(f"{FAIL_AT_IMPORT} is set")

App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _echo(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    body = stream.read(int(length)) if length else stream.read()
    keys = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "REMOTE_ADDR",
            "CONTENT_TYPE", "CONTENT_LENGTH")  # fmt: skip
    seen = {k: environ[k] for k in keys if k in environ}
    seen.update({k: v for k, v in environ.items() if k.startswith("HTTP_")})
    seen["body"] = body.decode("latin-1")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(seen).encode()]


def _hello(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [*TEXT, ("Content-Length", "5")])
    return [b"hello"]


def _no_content(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("204 No Content", TEXT)
    return [b"a body the server must not send"]


def _not_modified(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("304 Not Modified", [("ETag", '"v1"')])
    return [b"a body the server must not send"]


def _inject(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [*TEXT, ("X-Note", "a\r\nX-Injected: yes")])
    return [b"injected"]


def _raise(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    raise RuntimeError("boom\nsecond line of the message")


def _generator(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    yield b"gen"
    yield b""
    yield b"erated"


def _hop_by_hop(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [
        *TEXT, ("Connection", "close"), ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=999"), ("Upgrade", "h2c"),
    ])  # fmt: skip
    return [b"hop"]


def _exc_info(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    try:
        raise ValueError("failed after start_response")
    except ValueError:
        start_response("503 Service Unavailable", TEXT, sys.exc_info())
    return [b"replaced"]


def _big(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [BIG]


def _pid(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    return [str(os.getpid()).encode()]


def _sleep(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    time.sleep(float(environ["QUERY_STRING"] or "0.3"))
    start_response("200 OK", TEXT)
    return [b"slept"]


def _close_input(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    environ["wsgi.input"].close()
    start_response("200 OK", TEXT)
    return [b"closed"]


ROUTES: dict[str, App] = {
    "/hello": _hello, "/204": _no_content, "/304": _not_modified, "/inject": _inject,
    "/raise": _raise, "/generator": _generator, "/hop-by-hop": _hop_by_hop,
    "/exc-info": _exc_info, "/big": _big, "/pid": _pid, "/sleep": _sleep,
    "/close-input": _close_input,
}  # fmt: skip


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI app: /echo and every path under it echo the request; ROUTES the rest."""
    path = environ["PATH_INFO"]
    if path.startswith("/echo"):
        return _echo(environ, start_response)
    route = ROUTES.get(path)
    if route is not None:
        return route(environ, start_response)
    start_response("404 Not Found", TEXT)
    return [b"no such path"]


def failing_factory() -> App:
    """For ``--factory``: the app cannot be built."""
    raise RuntimeError("the app's settings are wrong")
