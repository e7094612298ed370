"""What both servers share: JSON errors in one place, and the development server.

Errors are rendered by one ``errorhandler(HTTPException)``: every error, 404 and 405
included, is ``{"error": ..., "error_description": ...}`` with the headers the exception
carries (``WWW-Authenticate``, ``Retry-After``). An unexpected exception is not caught here:
Flask answers a bare 500 (never a stack trace) and logs it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException
from werkzeug.serving import (
    WSGIRequestHandler,
    get_sockaddr,
    make_server,
    select_address_family,
)

from config import AppError

MAX_DESCRIPTION = 200


def error_code(status: int) -> str:
    """The ``error`` member for a status without a more precise one (``not_found``...)."""
    return {
        400: "invalid_request",
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        503: "temporarily_unavailable",
    }.get(status, "server_error" if status >= 500 else "invalid_request")


class ApiError(HTTPException):
    """An HTTP error with an RFC 6750 style ``error`` code and extra headers."""

    def __init__(
        self,
        code: int,
        description: str,
        error: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(description[:MAX_DESCRIPTION])
        self.code = code
        self.error = error or error_code(code)
        self.extra_headers = list(headers)


def render_error(e: HTTPException) -> Response:
    """Render any HTTPException as the project's JSON error body."""
    status = e.code or 500
    body = {
        "error": getattr(e, "error", None) or error_code(status),
        "error_description": (e.description or e.name)[:MAX_DESCRIPTION],
    }
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    for name, value in getattr(e, "extra_headers", ()):
        response.headers[name] = value
    response.headers.extend((k, v) for k, v in e.get_headers() if k == "Allow")
    return response


def add_json_errors(app: Flask) -> None:
    """Render every HTTP error of ``app`` as JSON."""
    app.register_error_handler(HTTPException, render_error)


class QuietRequestHandler(WSGIRequestHandler):
    """Request log lines without the query string, where a careless client may put a token;
    errors of the HTTP layer itself (a header line over 64 KiB: 431) in the same JSON shape."""

    error_content_type = "application/json"
    error_message_format = '{"error": "invalid_request", "error_description": "%(message)s"}'

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log method, path and status; never the query string or a header."""
        path = self.path.split("?", 1)[0][:200]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)

    def log_error(self, format: str, *args: Any) -> None:
        """Log protocol errors (too long lines...) without echoing the request line."""
        self.log("error", "%s", (format % args)[:120])


def run_dev_server(app: Flask, host: str, port: int, port_variable: str, banner: str) -> None:
    """Serve ``app`` with werkzeug's threaded development server, as the guide's Express does.

    The banner is printed once the port is open (like Express's ``listen`` callback), so a
    script that waits for it can connect at once. Raises AppError if the port cannot be had.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Bound here, not by make_server: werkzeug prints two lines and exits on a taken port.
    family = select_address_family(host, port)
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(get_sockaddr(host, port, family))
        listener.listen(128)
    except OSError as e:
        listener.close()
        raise AppError(
            f"cannot listen on {host}:{port}: {e.strerror}: stop what runs there "
            f"or set {port_variable}"
        ) from None
    server = make_server(
        host, port, app, threaded=True, request_handler=QuietRequestHandler,
        fd=listener.fileno(),
    )  # fmt: skip
    print(banner, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
