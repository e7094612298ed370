"""The application behind ``make gateway``'s nginx: it trusts the gateway, not the token.

nginx lets a request through to ``/api/...`` only once a verifier instance has answered its
``auth_request`` with 204, and passes the verified claims on in ``X-Jwt-Claims`` (base64url
of the compact JSON). This app answers every path under ``/api/`` with 200 and a JSON body
holding those claims, the method, the path and which instance verified them. A request that
did not come through the gateway (no claims) gets 401: only the gateway may reach this app.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def decode_claims(header: str | None) -> dict[str, Any] | None:
    """The claims of an ``X-Jwt-Claims`` header, or None if it is absent or not such a header."""
    if not header:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _json(start_response: StartResponse, status: str, document: Any) -> list[bytes]:
    body = json.dumps(document).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])  # fmt: skip
    return [body]


def _error(start_response: StartResponse, status: str, error: str, description: str) -> list[bytes]:
    return _json(start_response, status, {"error": error, "error_description": description})


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application: 200 with the claims on every path under /api/."""
    path = environ.get("PATH_INFO", "")
    if not path.startswith("/api/"):
        return _error(start_response, "404 Not Found", "not_found", "this app serves /api/")
    claims = decode_claims(environ.get("HTTP_X_JWT_CLAIMS"))
    if claims is None:
        return _error(start_response, "401 Unauthorized", "unauthorized", "use the gateway")
    return _json(start_response, "200 OK", {
        "method": environ.get("REQUEST_METHOD"),
        "path": path,
        "claims": claims,
        "verified_by": environ.get("HTTP_X_JWT_VERIFIER"),
    })  # fmt: skip


def create_app() -> WSGIApplication:
    """The app, for any WSGI server (make gateway: ``python -m jwt_guide.http.server --factory
    tools.gateway_app:create_app``)."""
    return app
