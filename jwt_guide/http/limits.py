"""The serving limits every app of the project holds, whatever server runs it.

SPEC.md "Serving limits": request headers over 64 KiB in all get a JSON 431, and routing
never builds a redirect from the ``Host`` header. The development server adds what only an
HTTP server can do (jwt_guide.http.devserver).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask, request
from werkzeug.exceptions import NotFound
from werkzeug.routing import RequestRedirect

from jwt_guide.http.errors import ApiError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

MAX_HEADER_BYTES = 64 * 1024  # SPEC "Serving limits": request headers over 64 KiB in all: 431


CONTENT_KEYS = ("CONTENT_TYPE", "CONTENT_LENGTH")  # the two headers without HTTP_ (PEP 3333)
MAX_KNOWN_KEYS = 1024
# Where a server that counts the request's header bytes as it parses them puts the count
# (names and values as received, jwt_guide.http.server): then there is nothing to add up here.
HEADER_BYTES_KEY = "jwt_guide.header_bytes"


def header_bytes(
    environ: WSGIEnvironment, known: frozenset[str] = frozenset(), others: list[str] | None = None
) -> int:
    """The size of the request headers: their names and values, as the WSGI server passed them.

    ``known``: keys of ``environ`` known not to be headers, skipped in one set operation (see
    ``HeaderLimit``); the other keys that are not headers are appended to ``others``, if given.
    """
    total = 0
    for key in environ.keys() - known:
        if key.startswith("HTTP_"):
            total += len(key) - 5 + len(environ[key])
        elif key in CONTENT_KEYS:
            total += len(key) + len(environ[key])
        elif others is not None:
            others.append(key)
    return total


class HeaderLimit:
    """WSGI middleware: 431 with a JSON body when the request headers exceed ``limit`` bytes in
    all. HTTP servers bound each header line (and make serve's the whole head); this holds the
    README's 64 KiB whatever server runs the app, before any view or the key set answer.

    A server that counts the header bytes as it parses them (make serve's) passes the count
    in ``environ[HEADER_BYTES_KEY]``. Otherwise they are added up here; most of an environ may
    not be headers (granian copies the whole process environment into each one). The keys
    that are neither ``HTTP_...`` nor ``CONTENT_...`` are the server's (a client names only
    headers), so they are learnt from the requests and skipped with one set difference,
    which costs a third of looking at every key.
    """

    def __init__(self, app: WSGIApplication, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit
        self.known: frozenset[str] = frozenset()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI entry point."""
        size = environ.get(HEADER_BYTES_KEY)
        if size is None:
            others: list[str] = []
            size = header_bytes(environ, self.known, others)
            if others and len(self.known) < MAX_KNOWN_KEYS:  # bounded, whatever the server adds
                self.known = self.known.union(others)
        if size <= self.limit:
            return self.app(environ, start_response)
        too_large = ApiError(431, f"request headers over {self.limit} bytes in all")
        return too_large(environ, start_response)


def _refuse_redirects() -> None:
    """Before each request: a routing redirect (merged slashes, a missing trailing slash)
    would put the request's ``Host`` header in ``Location``; answer 404 instead."""
    if isinstance(request.routing_exception, RequestRedirect):
        raise NotFound()


def apply_serving_limits(app: Flask) -> None:
    """Hold the serving limits of SPEC.md in ``app``, whatever server runs it.

    Call it last in ``create_app``: the header limit wraps every middleware installed
    before it. Routing never redirects (werkzeug's merged slashes and trailing slashes build
    ``Location`` from the ``Host`` header): such requests get a JSON 404.
    """
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.redirect_defaults = False
    app.before_request(_refuse_redirects)
    app.wsgi_app = HeaderLimit(app.wsgi_app)  # type: ignore[method-assign]
