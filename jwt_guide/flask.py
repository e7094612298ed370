"""``JwtAuth``: protect views of a Flask app with Bearer tokens (a Flask extension).

::

    auth = JwtAuth(app)          # or JwtAuth() then auth.init_app(app) in a factory

    @app.get("/orders")
    @auth.required
    def orders():
        return {"user": g.jwt_claims["userId"]}

A request to a protected view needs ``Authorization: Bearer <token>`` with a token the
app's ``Verifier`` accepts; its claims are then in ``flask.g.jwt_claims``. Refusals are the
RFC 6750 answers of protected_server.py (jwt_guide.http.errors), returned as they are,
whatever error handlers the host app has: 401 or 400 with a JSON body and one
``WWW-Authenticate: Bearer realm="..."``, 503 with ``Retry-After`` when no key set can be had.

Each app gets its own state in ``app.extensions["jwt_guide"]``: the verifier given to
``JwtAuth``, else one built from the app's config (``JWT_JWKS_URI``, ``JWT_ISSUER``,
``JWT_AUDIENCE``, and ``JWT_KEYS_DIR`` to verify with a keys folder instead of a JWKS), then
the environment for what those leave unset.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from flask import Flask, current_app, g, request
from werkzeug.wrappers import Response

from jwt_guide.errors import InvalidToken, KeysUnavailable
from jwt_guide.http.errors import ApiError, bearer_token, refusal
from jwt_guide.verifier import Verifier

EXTENSION = "jwt_guide"

View = TypeVar("View", bound=Callable[..., Any])


@dataclass(frozen=True)
class _State:
    verifier: Verifier


def verifier_from_config(config: dict[str, Any]) -> Verifier:
    """A Verifier from a Flask app's config, the environment filling in what it leaves unset.

    Raises UsageError for a bad setting in the environment (or a keys folder without key).
    """
    return Verifier(
        config.get("JWT_JWKS_URI"),
        issuer=config.get("JWT_ISSUER"),
        audience=config.get("JWT_AUDIENCE"),
        keys_dir=config.get("JWT_KEYS_DIR"),
    )


class JwtAuth:
    """Bearer-token protection for the views of one or more Flask apps."""

    def __init__(self, app: Flask | None = None, verifier: Verifier | None = None) -> None:
        self.verifier = verifier
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Give ``app`` its verifier: the one given to ``JwtAuth``, else one from its config.

        Raises UsageError for a bad setting (see ``verifier_from_config``).
        """
        verifier = self.verifier or verifier_from_config(app.config)
        app.extensions[EXTENSION] = _State(verifier)

    def verify_request(self) -> dict[str, Any]:
        """The claims of the current request's Bearer token.

        Raises ApiError (the RFC 6750 answer) when there is none, or it is refused.
        Raises RuntimeError if ``init_app`` was not called for the current app.
        """
        state = current_app.extensions.get(EXTENSION)
        if not isinstance(state, _State):
            raise RuntimeError("JwtAuth.init_app(app) was not called for this app")
        token = bearer_token(request.headers.get("Authorization"))
        try:
            return state.verifier.verify(token)
        except (InvalidToken, KeysUnavailable) as e:
            raise refusal(e) from e

    def required(self, view: View) -> View:
        """Decorator: the view runs only for a request with a valid Bearer token, whose
        claims are then in ``flask.g.jwt_claims``; other requests get the RFC 6750 answer."""

        @functools.wraps(view)
        def protected(*args: Any, **kwargs: Any) -> Any:
            try:
                g.jwt_claims = self.verify_request()
            except ApiError as e:
                # Returned, not raised: the host app's error handlers cannot reshape it.
                response: Response = e.get_response()
                return response
            return view(*args, **kwargs)

        return cast(View, protected)
