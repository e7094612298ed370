"""The production HTTP server of ``make serve``: WSGI apps on uvloop and llhttp, one event loop
per worker process, as Node.js serves (fastify included).

Why not granian, or uvicorn: on a 2-core machine, with ``wrk -t1 -c16`` and 2 workers, a
hello-world WSGI app served 54,000 to 69,000 requests a second under granian and an ASGI one
66,000 to 72,000 under uvicorn, about what fastify serves answering ``/with-auth`` with a
JWT check. granian hands each request from its Rust I/O thread to a Python thread (two
threads per worker, switching on every request) and builds an environ holding the whole
process environment; uvicorn builds an ASGI scope, a task and two coroutines per request.
Here one thread per worker parses (llhttp, through httptools: the parser of Node.js), calls
the app and writes the answer, with nothing per request but the environ and the answer's
bytes: the same hello-world app measured 70,000 to 116,000 a second. What is written here is
only what those two libraries leave to a server: connections, limits and deadlines, the WSGI
call, the workers (measured by make bench; README, "Performance").

The app runs in the event loop's thread, one request at a time per worker, as under granian
with one blocking thread: an app that waits (a JWKS fetch on a cold cache, up to its 5 s
timeout) holds its worker's other connections meanwhile. An answer is made whole before it
is written (the apps' bodies are small), so its Content-Length is always known.

Limits (SPEC.md, "Serving limits"), all per connection unless said otherwise:

- HTTP/1.1 and 1.0 only: no HTTP/2, no upgrade (a request asking for one is answered as
  HTTP/1.1, then the connection is closed);
- a request target over MAX_TARGET_BYTES gets 414; a head whose target and header fields
  add up to more than MAX_HEAD_BYTES gets 431 (the app's own HeaderLimit answers headers
  over 64 KiB in all, so every head up to this reaches it); a header line that arrives in
  more than MAX_HEAD_READS reads gets 400; a body over MAX_BODY_BYTES gets 413 (our apps take
  none); a malformed request gets 400: each a JSON answer, then the connection is closed;
- header names with ``_`` are not passed to the app; repeated headers are joined;
- a request must arrive whole within READ_TIMEOUT_SECONDS of the connection's start or of
  the previous answer: silent, stalled, dripping and idle connections are closed then;
- a client that does not read its answers is not read from either (at most WRITE_BUFFER_BYTES
  of answers are held for it, and MAX_WAITING requests already read), and is closed on the
  same deadline;
- at most MAX_CONNECTIONS connections per worker; more wait in the listen backlog.

The main process binds the socket, starts the workers (each dies with it, even on SIGKILL),
spreads connections evenly over them (Balance), starts a new one when one dies, and stops
them all on SIGTERM, SIGINT or SIGHUP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import io
import json
import mmap
import os
import re
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from urllib.parse import unquote_to_bytes

import httptools
import uvloop

from jwt_guide.http.limits import HEADER_BYTES_KEY
from jwt_guide.http.processes import die_with_parent

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

MAX_HEAD_BYTES = 128 * 1024  # twice the SPEC's 64 KiB of headers, which the app answers
# Reads one head may take: httptools joins the pieces of a header by copying, which a client
# sending a byte at a time would make quadratic. A 64 KiB head arriving in TCP segments of
# 1,448 bytes takes 46.
MAX_HEAD_READS = 128
MAX_TARGET_BYTES = 8 * 1024  # as Node.js and nginx's default large_client_header_buffers
# The parser is fed at most this at a time (uvloop reads up to 250 KB): what a head can make a
# connection hold between reads is then MAX_HEAD_BYTES + FEED_BYTES.
FEED_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT_SECONDS = 20.0  # SPEC: within 30 s; nginx's client_header_timeout is 60 s
LINGER_SECONDS = 2.0  # after an error answer, for the client to read it before the close
MAX_CONNECTIONS = 256
WRITE_BUFFER_BYTES = 256 * 1024
SWEEP_SECONDS = 1.0
# How long a worker leaves a waiting connection to a worker that holds fewer (see Balance).
ACCEPT_DEFER_SECONDS = 0.005
BACKLOG = 1024
STOP_SECONDS = 5.0
RESPAWN_SECONDS = 1.0
STARTUP_FAILED = 3  # a worker's exit code when the app cannot be built: no respawn then

# RFC 9110 hop-by-hop fields, which a WSGI app must not send (PEP 3333): the server decides them.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade",
                        "proxy-connection", "te", "trailer"})  # fmt: skip
_CONTROL = re.compile("[\r\n\0]")
_NO_BODY = frozenset({204, 304})
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
MAX_HEADS = 256
# Requests a client may pipeline beyond the answers it has not read; then it is closed.
MAX_WAITING = 64


class Refusal(NamedTuple):
    """An error answer of the server itself: its head, without ``Date`` (added when sent), and
    its JSON body."""

    head: bytes
    body: bytes


def _refusal(status: int, reason: str, error: str, description: str) -> Refusal:
    body = json.dumps({"error": error, "error_description": description}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close")  # fmt: skip
    return Refusal(head.encode(), body)


BAD_REQUEST = _refusal(400, "Bad Request", "invalid_request", "malformed HTTP request")
TOO_LARGE = _refusal(413, "Content Too Large", "invalid_request",
                     f"request body over {MAX_BODY_BYTES} bytes")  # fmt: skip
URI_TOO_LONG = _refusal(414, "URI Too Long", "invalid_request",
                        f"request target over {MAX_TARGET_BYTES} bytes")  # fmt: skip
HEAD_TOO_LARGE = _refusal(431, "Request Header Fields Too Large", "invalid_request",
                          f"request head over {MAX_HEAD_BYTES} bytes")  # fmt: skip
SERVER_ERROR = _refusal(500, "Internal Server Error", "server_error", "internal error")


def log(message: str) -> None:
    """One line on stderr, control characters escaped (nothing from a request is logged)."""
    escaped = message.encode("unicode_escape").decode("ascii")
    print(f"server: {escaped}", file=sys.stderr, flush=True)


def _header_key(name: bytes) -> str | None:
    """The environ key of a request header (PEP 3333), or None for a name with ``_``: nginx and
    gunicorn drop those too, since ``X_User`` would otherwise pass for ``X-User``."""
    if b"_" in name:
        return None
    key = name.decode("latin-1").upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def _head(status: str, headers: list[tuple[str, str]]) -> tuple[int, bytes, bool]:
    """See ``Worker.head``. Raises ValueError for a status or header that would break the
    answer's framing (a line break), or that is not Latin-1."""
    code = int(status[:3])
    lines = [f"HTTP/1.1 {status}"]
    has_length = False
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:  # the server's to decide (PEP 3333)
            continue
        has_length = has_length or lower == "content-length"
        lines.append(f"{name}: {value}")
    if _CONTROL.search("".join(lines)):  # the lines before they are joined by CRLF
        raise ValueError("the status or a header holds a line break")
    return code, "\r\n".join(lines).encode("latin-1"), has_length


class Balance:
    """The connections each worker holds, in memory shared by the workers, so that they
    spread evenly. Node's cluster module has its main process hand connections out in turn
    for the same reason: a keep-alive connection stays with the worker that accepted it, and
    with workers that all wait on one socket, one often takes most of them (13 to 16 of
    wrk's 16 were seen), leaving a core idle when requests cost CPU.
    """

    def __init__(self, shared: mmap.mmap, slot: int) -> None:
        self.counts = memoryview(shared).cast("q")
        self.slot = slot
        self.counts[slot] = 0

    def hold(self, connections: int) -> None:
        """This worker holds ``connections`` now."""
        self.counts[self.slot] = connections

    def others_hold_fewer(self, connections: int) -> bool:
        """Whether another worker holds fewer than ``connections``."""
        return min(self.counts) < connections


class Worker:
    """One worker process's server: the app, the listening socket, the connections."""

    def __init__(self, app: WSGIApplication, sock: socket.socket, loop: asyncio.AbstractEventLoop,
                 balance: Balance | None = None, read_timeout: float = READ_TIMEOUT_SECONDS
                 ) -> None:  # fmt: skip
        self.app = app
        self.read_timeout = read_timeout
        self.sock = sock
        self.loop = loop
        self.balance = balance
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting = False
        self.deferred = False  # left the waiting connection to another worker once already
        self.stopping = False
        host, port = sock.getsockname()[:2]
        self.base_environ: dict[str, Any] = {
            "SCRIPT_NAME": "", "SERVER_NAME": host, "SERVER_PORT": str(port),
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
        }  # fmt: skip
        self.header_keys: dict[bytes, str | None] = {}
        self.heads: dict[tuple[object, ...], tuple[int, bytes, bool]] = {}
        self.date = b""
        self._sweep()

    def header_key(self, name: bytes) -> str | None:
        """``_header_key``, remembered for the names seen (a bounded number of them)."""
        key = self.header_keys.get(name, "")
        if key == "":
            key = _header_key(name)
            if len(self.header_keys) < 1024:
                self.header_keys[name] = key
        return key

    def head(self, status: str, headers: list[tuple[str, str]]) -> tuple[int, bytes, bool]:
        """The status code, the status line and header lines, and whether they hold a
        Content-Length, for an app's answer; remembered, since an app answers most requests
        with the same status and headers (a bounded number of them)."""
        try:
            key = (status, *headers)
            known = self.heads.get(key)
        except TypeError:  # a header given as a list: not hashable, not remembered
            return _head(status, headers)
        if known is None:
            known = _head(status, headers)
            if len(self.heads) >= MAX_HEADS:
                self.heads.clear()
            self.heads[key] = known
        return known

    def start(self) -> None:
        """Accept connections while under MAX_CONNECTIONS."""
        if not self.accepting and not self.stopping:
            self.loop.add_reader(self.sock, self._accept)
            self.accepting = True

    def pause(self) -> None:
        """Leave new connections in the backlog."""
        if self.accepting:
            self.loop.remove_reader(self.sock)
            self.accepting = False

    def _accept(self) -> None:
        # One connection per wake-up (every worker is woken): first left, for a moment, to a
        # worker that holds fewer connections, if there is one.
        balance = self.balance
        deferring = balance is not None and not self.deferred
        if deferring and balance.others_hold_fewer(len(self.connections)):  # type: ignore[union-attr]
            self.pause()
            self.deferred = True
            self.loop.call_later(ACCEPT_DEFER_SECONDS, self._resume)
            return
        self.deferred = False
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as e:  # EMFILE, ENFILE, ENOBUFS: wait a little, rather than spin
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            log(f"cannot accept ({os.strerror(e.errno)}): pausing for 0.5 s")
            self.pause()
            self.loop.call_later(0.5, self.start)
            return
        conn.setblocking(False)
        connection = Connection(self)
        self.connections.add(connection)
        if balance is not None:
            balance.hold(len(self.connections))
        if len(self.connections) >= MAX_CONNECTIONS:
            self.pause()
        task = self.loop.create_task(self._connect(conn, connection))
        self.tasks.add(task)  # the loop holds tasks weakly (asyncio's create_task docs)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, conn: socket.socket, connection: Connection) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: connection, conn)
        except OSError:
            conn.close()
            self.closed(connection)

    def _resume(self) -> None:
        # Accept again; the connection left to the others is taken here if still waiting (a
        # worker busy for longer than ACCEPT_DEFER_SECONDS does not hold it up).
        self.start()
        waiting = select.poll()
        waiting.register(self.sock, select.POLLIN)
        self.deferred = bool(waiting.poll(0))

    def closed(self, connection: Connection) -> None:
        """``connection`` is gone: accept again if it was holding the last place."""
        self.connections.discard(connection)
        if self.balance is not None:
            self.balance.hold(len(self.connections))
        if len(self.connections) < MAX_CONNECTIONS:
            self.start()

    def _sweep(self) -> None:
        # Once a second: the Date header, and the connections past their deadline.
        now = time.time()
        self.date = b"\r\nDate: " + formatdate(now, usegmt=True).encode()
        mono = self.loop.time()
        for connection in [c for c in self.connections if c.deadline < mono]:
            connection.expire()
        self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def stop(self) -> None:
        """Stop accepting, and close every connection once what was written to it is sent
        (answers are made whole, one at a time: none is half made when this runs)."""
        self.stopping = True
        self.pause()
        for connection in list(self.connections):
            connection.close()


class Request(NamedTuple):
    """A whole request as parsed, until it is answered."""

    method: bytes
    version: str
    keep_alive: bool
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: list[bytes]


class Connection(asyncio.Protocol):
    """One client connection: parse requests as they arrive, answer each in order."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.environ: dict[str, Any] = {}
        # The request being parsed.
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head_bytes = 0  # of its target and header fields so far
        self.body_bytes = 0
        self.mid_head = False  # its line and headers have begun, not yet ended
        # What the parser may hold of a header line not yet whole: the bytes and reads fed
        # since the last piece it handed over (the rest of the read that held that piece is
        # not counted: at most one read more).
        self.pending_bytes = 0
        self.pending_reads = 0
        self.handed_over = False  # a piece was handed over in the current read
        # Requests parsed while the client was not reading its answers, answered once it does.
        self.waiting: list[Request] = []
        self.write_paused = False
        self.closing = False
        self.deadline = worker.loop.time() + worker.read_timeout

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Set up the connection's base environ."""
        transport = cast(asyncio.Transport, transport)  # uvloop's, not a subclass
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_BUFFER_BYTES)
        environ = dict(self.worker.base_environ)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = peer[0], str(peer[1])
        self.environ = environ
        if self.worker.stopping:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self.closing = True
        self.waiting.clear()
        self.worker.closed(self)

    def pause_writing(self) -> None:
        """The client does not read its answers: stop reading its requests, and keep those
        already read for later (see on_message_complete)."""
        self.write_paused = True
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """The client read its answers: answer what waits, then read on."""
        self.write_paused = False
        while self.waiting and not self.write_paused and not self.closing:
            self.answer(self.waiting.pop(0))
        if self.transport is not None and not self.closing and not self.write_paused:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; it calls on_... below, and ``answer`` for each whole request."""
        if len(data) <= FEED_BYTES:
            self.feed(data)
            return
        view = memoryview(data)  # a large read, in slices: see feed
        for start in range(0, len(data), FEED_BYTES):
            self.feed(view[start:start + FEED_BYTES])

    def feed(self, data: bytes | memoryview) -> None:
        """Feed the parser ``data`` (at most FEED_BYTES), then bound what it may hold of a
        header line not yet whole: after a slice in which it handed nothing over, that line
        holds all of it, and the head so far is head_bytes + pending_bytes, give or take the
        end of the slice before (at most FEED_BYTES)."""
        if self.closing:
            return  # reading on only to close cleanly (see refuse)
        self.handed_over = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.close()  # answered as HTTP/1.1 in on_message_complete, the rest not parsed
            return
        except httptools.HttpParserError:  # also what a callback raised (_Refused)
            self.refuse(BAD_REQUEST)  # unless refused already
            return
        if self.mid_head and not self.handed_over:  # all of it went into one header line
            self.pending_bytes += len(data)
            self.pending_reads += 1
            if self.head_bytes + self.pending_bytes > MAX_HEAD_BYTES:
                self.refuse(HEAD_TOO_LARGE)
            elif self.pending_reads > MAX_HEAD_READS:
                self.refuse(BAD_REQUEST)

    # httptools' callbacks

    def on_message_begin(self) -> None:
        """A request starts."""
        self.mid_head = True
        self.target = b""
        self.headers = []
        self.body = []
        self.head_bytes = self.body_bytes = self.pending_bytes = self.pending_reads = 0
        self.handed_over = True

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self.target += url
        self.pending_bytes = self.pending_reads = 0
        self.handed_over = True
        if len(self.target) > MAX_TARGET_BYTES:
            self.refuse(URI_TOO_LONG)
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        """A header line (httptools joins its pieces)."""
        self.head_bytes += len(name) + len(value)
        self.pending_bytes = self.pending_reads = 0
        self.handed_over = True
        if self.head_bytes > MAX_HEAD_BYTES:
            self.refuse(HEAD_TOO_LARGE)
            raise _Refused
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """The head is whole."""
        self.mid_head = False

    def on_body(self, body: bytes) -> None:
        """A piece of the request body."""
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY_BYTES:
            self.refuse(TOO_LARGE)
            raise _Refused
        self.body.append(body)

    def on_message_complete(self) -> None:
        """A whole request: answer it, unless the client is not reading its answers."""
        if self.closing:  # after the answer to a request that closes the connection
            raise _Refused
        parser = self.parser
        request = Request(parser.get_method(), parser.get_http_version(),
                          parser.should_keep_alive() and not parser.should_upgrade(),
                          self.target, self.headers, self.body)  # fmt: skip
        if self.write_paused or self.waiting:
            # Answering now would hold every answer in memory: wait for resume_writing. The
            # client pipelined more than this without reading any answer: close.
            self.waiting.append(request)
            if len(self.waiting) > MAX_WAITING:
                self.expire()
                raise _Refused
            return
        self.answer(request)

    # Answers

    def answer(self, request: Request) -> None:
        """Call the app with the request's environ and write its answer (a 500 if it fails);
        close after it if the request asks so (or the worker stops)."""
        environ = self.request_environ(request)
        try:
            code, head, has_length, body = self.call_app(environ)
        except Exception as e:  # any failure of the app is a 500, and one line in the log
            # Its type only: the message could quote the request (a token, say).
            log(f"the app failed: {type(e).__name__} (answered 500)")
            self.refuse(SERVER_ERROR)
            return
        extra = self.worker.date
        if not has_length and code >= 200 and code not in _NO_BODY:
            extra += b"\r\nContent-Length: " + str(len(body)).encode()
        if not request.keep_alive:
            extra += b"\r\nConnection: close"
        elif request.version == "1.0":
            extra += b"\r\nConnection: keep-alive"
        if code < 200 or code in _NO_BODY or environ["REQUEST_METHOD"] == "HEAD":
            body = b""
        self.transport.write(head + extra + b"\r\n\r\n" + body)  # type: ignore[union-attr]
        self.deadline = self.worker.loop.time() + self.worker.read_timeout
        if not request.keep_alive or self.worker.stopping:
            self.close()

    def request_environ(self, request: Request) -> dict[str, Any]:
        """The WSGI environ of ``request`` (PEP 3333)."""
        environ = self.environ.copy()
        method = request.method
        environ["REQUEST_METHOD"] = _METHODS.get(method) or method.decode("latin-1")
        environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
        target = request.target
        path, _, query = target.partition(b"?")
        if not path.startswith(b"/"):  # absolute form (http://host/path) or OPTIONS *
            path = _path_of(target)
        if b"%" in path:
            path = unquote_to_bytes(path)
        environ["PATH_INFO"] = path.decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        keys = self.worker.header_keys
        size = 0
        for name, value in request.headers:
            size += len(name) + len(value)
            key = keys.get(name, "")
            if key == "":
                key = self.worker.header_key(name)
            if key is None:
                continue
            text = value.decode("latin-1")
            if key in environ and key.startswith("HTTP_"):  # a repeated header: one value
                text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
            environ[key] = text
        environ["wsgi.input"] = io.BytesIO(b"".join(request.body)) if request.body else NO_BODY
        environ[HEADER_BYTES_KEY] = size  # for the apps' HeaderLimit: counted here
        return environ

    def call_app(self, environ: dict[str, Any]) -> tuple[int, bytes, bool, bytes]:
        """The app's answer to ``environ``: status code, head (status and header lines), whether
        it holds a Content-Length, body. Raises what the app raises, or ValueError for an
        answer that cannot be sent."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], object]:  # fmt: skip
            # The answer is sent only once the app returns, so a later call (with exc_info,
            # PEP 3333) may still replace it.
            if started and exc_info is None:
                raise RuntimeError("start_response called twice without exc_info")
            started[:] = (status, headers)
            return chunks.append

        result = self.worker.app(environ, start_response)
        if type(result) is list:  # most answers: nothing to close (hasattr costs a raise)
            chunks.extend(result)
        else:
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        if not started:
            raise RuntimeError("the app returned without calling start_response")
        return *self.worker.head(*started), b"".join(chunks)

    def refuse(self, refusal: Refusal) -> None:
        """Write an error answer and close: stop parsing, read on (so that the close sends
        no reset that could lose the answer) until the client closes or LINGER_SECONDS."""
        if self.closing or self.transport is None:
            return
        if self.waiting:
            # Requests read before this one are still unanswered: its refusal written now
            # would be taken for the answer to the first of them. Close without one.
            self.expire()
            return
        self.closing = True
        self.transport.write(refusal.head + self.worker.date + b"\r\n\r\n" + refusal.body)
        with contextlib.suppress(OSError, RuntimeError):
            if self.transport.can_write_eof():
                self.transport.write_eof()
        self.deadline = self.worker.loop.time() + LINGER_SECONDS

    def close(self) -> None:
        """Close once what is written has been sent."""
        self.closing = True
        self.waiting.clear()
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """Past the deadline: close at once; an idle connection with a FIN (a proxy keeping
        it for its next request sees it closed), any other with a reset, unsent answers
        included."""
        self.closing = True
        self.waiting.clear()
        if self.transport is None:
            return
        if self.mid_head or self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()


class _Refused(Exception):
    """Raised in a parser callback to stop parsing once the request is refused."""


class _NoBody(io.RawIOBase):
    """``wsgi.input`` of every request without a body: always empty, never closed (an app
    closing it must not break the next request that shares it), no state."""

    def readable(self) -> bool:
        """It is read from."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Nothing to read."""
        return 0

    def close(self) -> None:
        """Shared: stays open."""


NO_BODY = _NoBody()


def _path_of(target: bytes) -> bytes:
    if target == b"*":
        return b"*"
    try:
        return httptools.parse_url(target).path or b"/"
    except httptools.HttpParserInvalidURLError:
        return b"/"


# Processes


def load_app(target: str, factory: bool) -> WSGIApplication:
    """The app named ``module:attribute`` (called, with ``factory``)."""
    module, _, name = target.partition(":")
    app = getattr(importlib.import_module(module), name)
    return app() if factory else app  # type: ignore[no-any-return]


@dataclass(frozen=True)
class App:
    """What the workers serve: ``target`` (``module:attribute``), called if ``factory``."""

    target: str
    factory: bool = False
    read_timeout: float = READ_TIMEOUT_SECONDS


def run_worker(sock: socket.socket, app_spec: App, master: int, balance: Balance | None = None,
               report: int | None = None) -> int:  # fmt: skip
    """A worker process: build the app, serve until SIGTERM; the exit code. Why the app cannot
    be built is written to the file descriptor ``report`` (the main process says it once,
    whichever workers fail), or logged without one."""
    # The main process's handlers are inherited: until the loop sets its own, SIGTERM ends
    # the worker, and Ctrl-C is for the main process to decide.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not die_with_parent(master):
        return 1
    try:
        app = load_app(app_spec.target, app_spec.factory)
    except Exception as e:  # one line, no traceback: the app's settings are wrong
        reason = f"cannot start the app {app_spec.target}: {type(e).__name__}: {e}"
        if report is None:
            log(reason)
        else:
            os.write(report, reason.encode("utf-8", "replace")[:1000] + b"\n")
        return STARTUP_FAILED
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(app, sock, loop, balance, app_spec.read_timeout)
    done = loop.create_future()

    def stop() -> None:
        worker.stop()
        if not done.done():
            done.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, stop)
    worker.start()
    loop.run_until_complete(done)
    deadline = loop.time() + STOP_SECONDS
    while worker.connections and loop.time() < deadline:  # answers being written
        loop.run_until_complete(asyncio.sleep(0.05))
    return 0


def spawn(sock: socket.socket, app: App, shared: mmap.mmap, slot: int, report: int) -> int:
    """Fork a worker, which keeps its count of connections in ``shared`` at ``slot`` and writes
    why it cannot start to ``report``; its pid."""
    master = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run_worker(sock, app, master, Balance(shared, slot), report)
        finally:
            os._exit(code)
    return pid


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def serve(sock: socket.socket, app: App, workers: int) -> int:
    """The main process: start ``workers`` workers on ``sock``, replace those that die, stop
    them all on SIGTERM, SIGINT or SIGHUP. Returns the exit code: 0 when stopped, 1 when a
    worker could not build the app."""
    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for s in stop_signals:
        signal.signal(s, _raise_stop)
    shared = mmap.mmap(-1, 8 * workers)  # anonymous and shared: seen by every worker forked
    reports, report = os.pipe()
    os.set_blocking(reports, False)
    slots: dict[int, int] = {}  # pid -> slot
    code = 0
    try:
        for slot in range(workers):
            slots[spawn(sock, app, shared, slot, report)] = slot
        while True:
            pid, status = os.wait()
            slot = slots.pop(pid)
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == STARTUP_FAILED:
                with contextlib.suppress(BlockingIOError):
                    log(os.read(reports, 4096).decode("utf-8", "replace").splitlines()[0])
                code = 1
                break
            log(f"worker {pid} exited ({_how(status)}): starting another")
            time.sleep(RESPAWN_SECONDS)
            slots[spawn(sock, app, shared, slot, report)] = slot
    except _Stop:
        pass
    finally:
        for s in stop_signals:
            signal.signal(s, signal.SIG_IGN)
        _stop_workers(set(slots))
        os.close(reports)
        os.close(report)
    return code


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"code {os.waitstatus_to_exitcode(status)}"


def _stop_workers(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS + 1
    while pids and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left
            return
        if pid:
            pids.discard(pid)
        else:
            time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket on ``host`` (an address) and ``port``, non-blocking."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def build_parser() -> argparse.ArgumentParser:
    """The command line of the server's main process."""
    parser = argparse.ArgumentParser(prog="python -m jwt_guide.http.server",
                                     description="Serve a WSGI app (make serve runs it).")
    parser.add_argument("--host", default="127.0.0.1", help="an address, not a name")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--factory", action="store_true", help="call TARGET to get the app")
    parser.add_argument("--read-timeout", type=float, default=READ_TIMEOUT_SECONDS,
                        metavar="SECONDS", help="deadline of each request head (default: "
                        "%(default)s): silent, stalled and idle connections are closed then")
    parser.add_argument("target", help="module:attribute")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; the exit code."""
    args = build_parser().parse_args(argv)
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        log(f"cannot listen on {args.host} port {args.port}: {e.strerror}")
        return 1
    return serve(sock, App(args.target, args.factory, args.read_timeout), max(1, args.workers))


if __name__ == "__main__":
    sys.exit(main())
