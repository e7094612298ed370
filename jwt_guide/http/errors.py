"""HTTP errors as JSON, and the RFC 6750 answers of a Bearer-protected resource.

Every error is ``{"error": ..., "error_description": ...}`` with the headers the error
carries (``WWW-Authenticate``, ``Retry-After``, ``Allow``). Flask apps render every
``HTTPException`` so through ``add_json_errors``; an ``ApiError`` also renders itself so, in
any Flask app and as a plain WSGI application (``ApiError(...)(environ, start_response)``),
which is how ``JwtAuth`` and ``BearerAuth`` answer whatever the host app does with errors.
An unexpected exception is not caught here: Flask answers a bare 500 (never a stack trace)
and logs it.

RFC 6750 3: no Bearer credentials is 401 with a bare ``WWW-Authenticate: Bearer realm=...``;
a malformed Authorization header 400 ``invalid_request``; a token that does not verify 401
``invalid_token``; and when no key set can be had, 503 with ``Retry-After``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from jwt_guide.errors import InvalidToken, KeysUnavailable

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

MAX_DESCRIPTION = 200
REALM = "protected"

T = TypeVar("T")


def error_code(status: int) -> str:
    """The ``error`` member for a status without a more precise one (``not_found``...)."""
    return {
        400: "invalid_request",
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        503: "temporarily_unavailable",
    }.get(status, "server_error" if status >= 500 else "invalid_request")


def json_error(status: int, error: str, description: str, headers: Iterable[tuple[str, str]]
               ) -> Response:  # fmt: skip
    """The JSON error response: ``{"error", "error_description"}`` and ``headers``."""
    body = {"error": error, "error_description": description[:MAX_DESCRIPTION]}
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    for name, value in headers:
        response.headers[name] = value
    return response


class ApiError(HTTPException):
    """An HTTP error with an RFC 6750 style ``error`` code and extra headers; it renders
    itself as the JSON error body (also as a WSGI application)."""

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

    def get_response(
        self, environ: WSGIEnvironment | Any | None = None, scope: dict[str, Any] | None = None
    ) -> Response:
        """The JSON error response."""
        return json_error(self.code or 500, self.error, self.description or "", self.extra_headers)


def render_error(e: HTTPException) -> Response:
    """Render any HTTPException as the project's JSON error body."""
    if isinstance(e, ApiError):
        return e.get_response()
    status = e.code or 500
    allow = [(k, v) for k, v in e.get_headers() if k == "Allow"]
    return json_error(status, error_code(status), e.description or e.name, allow)


def add_json_errors(app: Flask) -> None:
    """Render every HTTP error of ``app`` as JSON."""
    app.register_error_handler(HTTPException, render_error)


def _challenge(error: str | None = None, description: str = "") -> tuple[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error:
        # RFC 6750 3: error_description may not hold '"' or '\', and is ASCII.
        safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in description)
        value += f', error="{error}", error_description="{safe[:MAX_DESCRIPTION]}"'
    return ("WWW-Authenticate", value)


def unauthorized(description: str) -> ApiError:
    """401 for a request with no Bearer credentials: no error code (RFC 6750 3.1)."""
    return ApiError(401, description, "unauthorized", [_challenge()])


def invalid_request(description: str) -> ApiError:
    """400 ``invalid_request`` for a malformed Authorization header."""
    challenge = _challenge("invalid_request", description)
    return ApiError(400, description, "invalid_request", [challenge])


def invalid_token(description: str) -> ApiError:
    """401 ``invalid_token`` for a token that does not verify."""
    return ApiError(401, description, "invalid_token", [_challenge("invalid_token", description)])


def unavailable(retry_after: int) -> ApiError:
    """503 with ``Retry-After`` when no key set can be had."""
    return ApiError(
        503, "the key set (JWKS) is unavailable: try again later",
        "temporarily_unavailable", [("Retry-After", str(retry_after))],
    )  # fmt: skip


def refusal(error: InvalidToken | KeysUnavailable) -> ApiError:
    """The answer to a token a ``Verifier`` refused, or could not verify for want of keys."""
    if isinstance(error, KeysUnavailable):
        return unavailable(error.retry_after)
    return invalid_token(str(error))


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive).

    Raises ApiError: 401 if there is no Bearer header, 400 if it is malformed.
    """
    if not authorization or not authorization.strip():
        raise unauthorized("send Authorization: Bearer <token>")
    parts = authorization.split()
    if parts[0].lower() != "bearer":
        raise unauthorized("the Authorization scheme must be Bearer")
    if len(parts) != 2:
        raise invalid_request("the Authorization header must be: Bearer <token>")
    return parts[1]


def authenticate(authorization: str | None, verify: Callable[[str], T]) -> T:
    """What ``verify`` (a ``Verifier``'s ``verify`` or ``verify_json``) makes of the Bearer
    token of an ``Authorization`` header: the one check behind JwtAuth and BearerAuth.

    Raises ApiError with the RFC 6750 answer: 401 without a Bearer header, 400 for a malformed
    one, 401 ``invalid_token`` for a refused token, 503 when no key set can be had.
    """
    token = bearer_token(authorization)
    try:
        return verify(token)
    except (InvalidToken, KeysUnavailable) as e:
        raise refusal(e) from e
