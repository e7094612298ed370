"""The development server both guide servers run on (the guide's Express ``listen``).

werkzeug's threaded server, with what SPEC.md's serving limits need from an HTTP server
(the apps hold the rest, see jwt_guide.http.limits): a deadline for reading each request,
JSON answers and one escaped log line for malformed requests, and a bound on connections
below the descriptor limit. ``make serve`` runs the same apps under jwt_guide.http.server.
"""

from __future__ import annotations

import errno
import http.client
import io
import json as stdlib_json
import logging
import re
import resource
import socket
import threading
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask
from werkzeug.serving import (
    ThreadedWSGIServer,
    WSGIRequestHandler,
    get_sockaddr,
    select_address_family,
)

from jwt_guide.cli import EXIT_INTERRUPTED
from jwt_guide.errors import JwtGuideError, UsageError
from jwt_guide.http.errors import error_code
from jwt_guide.http.limits import MAX_HEADER_BYTES

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from _typeshed.wsgi import WSGIApplication

# A connection has this long to send its request (line, headers and body) and this long
# again for each write of the answer; a silent or stalled one is closed when it runs out.
REQUEST_TIMEOUT = 20.0  # SPEC: within 30 s; with a margin, as under make serve
MAX_REQUEST_LINE = 65536  # http.server's own limit: a longer request line gets a 414
# Raw header lines carry ": " and CRLF beyond the names and values the WSGI limit counts:
# this much more is read before the development server refuses the head itself.
HEAD_SLACK = 8 * 1024
MAX_CONNECTIONS = 512
MAX_LOGGED = 200  # characters of a request line or error in one log line
LINGER_SECONDS = 1.0
LINGER_BYTES = 4 * 1024 * 1024
MAX_ACCEPT_DELAY = 1.0
SLOT_WAIT = 0.5
BIND_HOST_VARIABLE = "JWT_BIND_HOST"

# Everything outside printable ASCII, the backslash and the double quote (which delimits
# the request line in the log) is written as \xNN: a request line cannot move the cursor,
# recolour the terminal or forge a second log line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}
_ESCAPE_TABLE = str.maketrans(_ESCAPES)
_PROTOCOL_ERRORS = {
    400: "malformed request line: expected METHOD TARGET HTTP/1.1",
    414: f"request line longer than {MAX_REQUEST_LINE} bytes",
    431: f"request headers over {MAX_HEADER_BYTES} bytes in all, or over 100 header fields",
}
# As llhttp (make serve's parser) does: any other version, or a control character, is a 400.
_HTTP1 = re.compile(r"HTTP/1\.[0-9]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PORT_ERRORS = {errno.EADDRINUSE, errno.EACCES}


def loggable(text: str, limit: int = MAX_LOGGED) -> str:
    """``text`` cut to ``limit`` characters, with everything but printable ASCII escaped."""
    escaped = text[:limit].translate(_ESCAPE_TABLE)
    escaped = escaped.encode("ascii", "backslashreplace").decode("ascii")
    return escaped + ("..." if len(text) > limit else "")


class _RequestReader(io.RawIOBase):
    """Reads a connection's socket until a deadline, then raises TimeoutError.

    A timeout per read alone lets a client that sends a byte every few seconds hold a
    thread forever; the deadline bounds the whole request.
    """

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.timeout = timeout

    def readable(self) -> bool:
        """Always: this is the read side of the connection."""
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read what has arrived into ``buffer``; raises TimeoutError past the deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request took too long")
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.timeout)


class _HeadReader(io.BufferedReader):
    """The buffered request stream; while ``head_left`` is set, lines beyond it raise
    LineTooLong, which http.server answers with a 431 (it bounds each line, not the sum)."""

    head_left: int | None = None

    def readline(self, size: int | None = -1) -> bytes:
        """One line, counted against the head's budget while the head is read."""
        line = super().readline(size)
        if self.head_left is not None:
            self.head_left -= len(line)
            if self.head_left < 0:
                raise http.client.LineTooLong("request headers")
        return line


class QuietRequestHandler(WSGIRequestHandler):
    """werkzeug's handler with the serving limits: a deadline for each request, a bounded
    head, malformed requests answered in JSON, and one escaped log line per request, without
    the query string (where a careless client may put a token) and never a traceback."""

    def setup(self) -> None:
        """Set the write timeout and the request deadline (read from the module at each
        connection, so that tests can shorten them)."""
        super().setup()
        self.connection.settimeout(REQUEST_TIMEOUT)
        self.rfile.close()  # the stream super() made; ours reads the same socket
        deadline = time.monotonic() + REQUEST_TIMEOUT
        self.reader = _HeadReader(_RequestReader(self.connection, deadline, REQUEST_TIMEOUT))
        self.rfile = self.reader

    def parse_request(self) -> bool:
        """Refuse what http.server or werkzeug would mishandle, then parse the head with
        its size bounded; False when an error was answered."""
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = line.split()
        # Two words is HTTP/0.9 (an answer without status or headers), none an empty line:
        # both are malformed for HTTP/1.x. An unparsable target would fail in make_environ.
        if (
            len(words) != 3
            or _CONTROL.search(line)
            or not _HTTP1.fullmatch(words[2])
            or not _parsable_target(words[1])
        ):
            self.send_error(HTTPStatus.BAD_REQUEST)
            return False
        self.reader.head_left = MAX_HEADER_BYTES + HEAD_SLACK
        try:
            return super().parse_request()
        finally:
            self.reader.head_left = None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a request that never reached the app with the JSON error shape; log it as
        one escaped line. ``message`` and ``explain`` (which quote the request) are not sent."""
        description = _PROTOCOL_ERRORS.get(code) or HTTPStatus(code).phrase
        body = stdlib_json.dumps({"error": error_code(code), "error_description": description})
        self._log_request_line(code)
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # http.server sends no status line to HTTP/0.9, which is not served here.
            self.request_version = "HTTP/1.0"
        self.send_response_only(code)
        self.send_header("Server", self.version_string())
        self.send_header("Date", self.date_time_string())
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body.encode())
        self._discard_input()

    def _discard_input(self) -> None:
        # Closing a socket with unread input resets the connection, and the client may then
        # lose the answer: read what it still sends, for a moment, after saying we are done.
        try:
            self.connection.shutdown(socket.SHUT_WR)
            received = 0
            deadline = time.monotonic() + LINGER_SECONDS
            while received < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
        except OSError:
            pass

    def _log_request_line(self, code: int) -> None:
        line = str(getattr(self, "raw_requestline", b""), "iso-8859-1").rstrip("\r\n")
        self.log("info", '"%s" %s -', loggable(line.split("?", 1)[0]), int(code))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log method, path and status; never the query string or a header."""
        command = getattr(self, "command", None) or ""
        path = (getattr(self, "path", None) or "").split("?", 1)[0]
        status = int(code) if isinstance(code, int) else code
        self.log("info", '"%s %s" %s %s', loggable(command), loggable(path), status, size)

    def log_error(self, format: str, *args: Any) -> None:
        """Log protocol errors (a request that timed out...) as one escaped line."""
        self.log("error", "%s", loggable(format % args))


def _parsable_target(target: str) -> bool:
    try:
        urlsplit(target)
    except ValueError:  # "http://[": werkzeug's make_environ would raise outside its handler
        return False
    return True


class DevServer(ThreadedWSGIServer):
    """werkzeug's threaded server, with at most ``max_connections`` connections at a time
    (one thread and one descriptor each) and no busy loop when descriptors run out."""

    def __init__(
        self, host: str, port: int, app: WSGIApplication, fd: int, max_connections: int
    ) -> None:
        super().__init__(host, port, app, QuietRequestHandler, fd=fd)
        self.slots = threading.BoundedSemaphore(max_connections)
        self.accept_delay = 0.0

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection once a slot is free; raises OSError to skip a turn (the
        connection waits in the listen backlog) when none is, or accept fails."""
        if not self.slots.acquire(timeout=SLOT_WAIT):
            raise OSError(errno.EAGAIN, "every connection slot is taken")
        try:
            accepted = super().get_request()
        except OSError as e:
            self.slots.release()
            if e.errno in _OUT_OF_DESCRIPTORS:
                self._back_off(e)
            raise
        self.accept_delay = 0.0
        return accepted

    def _back_off(self, error: OSError) -> None:
        # The listening socket stays readable while accept fails: without a pause the loop
        # would spin at 100% CPU until a descriptor frees up.
        if not self.accept_delay:
            self.log("error", "cannot accept connections: %s; retrying", error.strerror)
        self.accept_delay = min(max(2 * self.accept_delay, 0.005), MAX_ACCEPT_DELAY)
        time.sleep(self.accept_delay)

    def shutdown_request(self, request: Any) -> None:
        """Close a connection and free its slot (called once per accepted connection)."""
        try:
            super().shutdown_request(request)
        finally:
            self.slots.release()


def connection_limit() -> int:
    """How many connections the development server holds at a time: at most
    MAX_CONNECTIONS, and half the descriptors this process may open, so that the app can
    still open its key files and JWKS connections when every slot is taken."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // 2))


def bind_address(host: str) -> str:
    """The numeric address ``host`` (a name or an address) binds, as servers that take only
    addresses (make serve's) need it.

    Raises UsageError naming JWT_BIND_HOST if the name does not resolve.
    """
    try:
        family = select_address_family(host, 0)
        return str(get_sockaddr(host, 0, family)[0])
    except (OSError, UnicodeError) as e:
        raise UsageError(
            f"JWT_BIND_HOST={host!r} is not an address of this machine ({e}): set it to "
            "127.0.0.1 (the default) or 0.0.0.0 for every address"
        ) from None


def listen(host: str, port: int, port_variable: str) -> socket.socket:
    """A socket listening on host:port; raises JwtGuideError (the port) or UsageError (the host)."""
    family = select_address_family(host, port)
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(get_sockaddr(host, port, family))
        listener.listen(128)
    except OSError as e:
        listener.close()
        where = f"cannot listen on {host}:{port}: {e.strerror}"
        if e.errno in _PORT_ERRORS:
            raise JwtGuideError(f"{where}: stop what runs there or set {port_variable}") from None
        raise UsageError(
            f"{where}: set {BIND_HOST_VARIABLE} to an address of this machine "
            "(127.0.0.1, the default, or 0.0.0.0 for every address)"
        ) from None
    return listener


def make_dev_server(app: WSGIApplication, host: str, port: int, port_variable: str) -> DevServer:
    """The development server for ``app``, listening on host:port (port 0: any free port).

    Raises JwtGuideError naming ``port_variable`` if the port cannot be had, UsageError naming
    JWT_BIND_HOST if the host is not an address of this machine.
    """
    # Bound here, not by werkzeug: it prints two lines and exits on a taken port.
    listener = listen(host, port, port_variable)
    try:
        return DevServer(host, port, app, listener.fileno(), connection_limit())
    finally:
        listener.close()  # the server holds its own duplicate of the descriptor


def run_dev_server(app: Flask, host: str, port: int, port_variable: str, banner: str) -> None:
    """Serve ``app`` with werkzeug's threaded development server, as the guide's Express does.

    The banner is printed once the port is open (like Express's ``listen`` callback), so a
    script that waits for it can connect at once. Raises JwtGuideError or UsageError if the
    address cannot be had (see ``make_dev_server``). Ctrl-C stops it quietly: raises
    ``SystemExit(130)``, the code a shell gives a command ended by Ctrl-C.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server: DevServer | None = None
    try:
        server = make_dev_server(app, host, port, port_variable)
        print(banner, flush=True)
        server.serve_forever()  # werkzeug's returns on Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.server_close()
    raise SystemExit(EXIT_INTERRUPTED)
