"""WSGI middleware: ``BearerAuth`` lets through only requests with a valid Bearer token, and
``BearerEndpoints`` answers endpoints that need nothing but the verified claims by itself.

For any WSGI application (Django, Flask, Falcon...)::

    application = BearerAuth(application, Verifier(), exempt={"/health"})

Every request whose path (``PATH_INFO``) is not one of the ``exempt`` paths (exact
matches) needs ``Authorization: Bearer <token>`` with a token the verifier accepts; the app
then finds the claims in ``environ["jwt_guide.claims"]``. Other requests never reach the
app: they get the RFC 6750 answers of protected_server.py (401 or 400 with a JSON body and
one ``WWW-Authenticate: Bearer realm="..."``, 503 with ``Retry-After``).

An endpoint whose answer is made from the claims alone (the guide's ``/with-auth``, a
gateway's ``auth_request`` check) needs no framework::

    def me(claims: bytes) -> Answer:     # the claims as compact JSON, UTF-8
        return 200, [("Content-Type", "application/json")], claims

    application = BearerEndpoints(application, Verifier(), {"/me": me})

``GET`` and ``HEAD`` of ``/me`` are then answered before the app, with the same refusals;
everything else goes to the app. For a Flask app, ``JwtAuth.endpoint`` sets this up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING

from jwt_guide.http.errors import ApiError, authenticate
from jwt_guide.verifier import Verifier

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

CLAIMS_KEY = "jwt_guide.claims"

Answer = tuple[int, list[tuple[str, str]], bytes]
"""Status, headers and body of an answer (``Content-Length`` is added to it)."""
ClaimsView = Callable[[bytes], Answer]
"""An endpoint answered from the verified claims, given as compact JSON in UTF-8."""

_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


class BearerAuth:
    """WSGI middleware requiring a valid Bearer token on every path but ``exempt``.

    ``verifier`` None builds one from the environment (``Verifier()``); that raises
    UsageError for a bad setting.
    """

    def __init__(
        self, app: WSGIApplication, verifier: Verifier | None = None, exempt: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.verifier = verifier or Verifier()
        self.exempt = frozenset(exempt)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI entry point."""
        if environ.get("PATH_INFO", "") in self.exempt:
            return self.app(environ, start_response)
        try:
            claims = authenticate(environ.get("HTTP_AUTHORIZATION"), self.verifier.verify)
        except ApiError as e:
            return e(environ, start_response)
        environ[CLAIMS_KEY] = claims
        return self.app(environ, start_response)


def claims_answer(
    view: ClaimsView, claims: bytes, head: bool = False
) -> tuple[str, list[tuple[str, str]], bytes]:
    """The status line, headers and body that ``view`` answers for ``claims``: its own
    headers plus ``Content-Length`` (none for a 204, RFC 9110 8.6), no body for ``HEAD``."""
    status, headers, body = view(claims)
    if status != HTTPStatus.NO_CONTENT:
        headers = [*headers, ("Content-Length", str(len(body)))]
    return _STATUS_LINES[status], headers, b"" if head else body


class BearerEndpoints:
    """WSGI middleware answering ``GET`` and ``HEAD`` of the paths of ``views`` (exact
    matches) itself, from the claims of a valid Bearer token, before the app it wraps;
    every other request goes on to the app.

    Each view receives the claims as ``Verifier.verify_json`` gives them (compact JSON,
    UTF-8) and returns status, headers and body. Refusals are BearerAuth's. Nothing else runs
    for these requests: no framework routing, request or response object (with Flask, they
    cost several times what verifying a token the verifier remembers costs), so this is the
    fast path of ``JwtAuth.endpoint``. ``views`` may be added to after the middleware is
    built (a mapping it reads on every request).
    """

    def __init__(
        self, app: WSGIApplication, verifier: Verifier, views: Mapping[str, ClaimsView]
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.views = views

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI entry point."""
        view = self.views.get(environ.get("PATH_INFO", ""))
        method = environ.get("REQUEST_METHOD")
        if view is None or method not in ("GET", "HEAD"):
            return self.app(environ, start_response)
        try:
            claims = authenticate(environ.get("HTTP_AUTHORIZATION"), self.verifier.verify_json)
        except ApiError as e:
            return e(environ, start_response)
        status, headers, body = claims_answer(view, claims, method == "HEAD")
        start_response(status, headers)
        return [body]
