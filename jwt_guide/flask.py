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

An endpoint answered from the claims alone is declared with ``endpoint``; GET and HEAD of it
are then answered before Flask (``jwt_guide.wsgi.BearerEndpoints``), for speed::

    @auth.endpoint(app, "/me")
    def me(claims: bytes) -> Answer:      # the claims as compact JSON, UTF-8
        return 200, [("Content-Type", "application/json")], claims
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from flask import Flask, current_app, g, request
from werkzeug.wrappers import Response

from jwt_guide.http.errors import ApiError, authenticate
from jwt_guide.verifier import Verifier, compact_json
from jwt_guide.wsgi import BearerEndpoints, ClaimsView, claims_answer

EXTENSION = "jwt_guide"

View = TypeVar("View", bound=Callable[..., Any])


@dataclass(frozen=True)
class _State:
    verifier: Verifier
    views: dict[str, ClaimsView] = field(default_factory=dict)  # endpoint(): path -> view


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
        state = _state(current_app)
        return authenticate(request.headers.get("Authorization"), state.verifier.verify)

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

    def endpoint(self, app: Flask, rule: str) -> Callable[[ClaimsView], ClaimsView]:
        """Decorator: ``GET rule`` (and ``HEAD``) of ``app`` answered by a view of the claims of
        a valid Bearer token (``jwt_guide.wsgi.ClaimsView``: the claims as compact JSON in;
        status, headers and body out); other requests get the RFC 6750 answer.

        The rule joins the app's routes (other methods get its 405, ``url_for`` knows it), and
        GET and HEAD of this exact path are answered before Flask by the WSGI middleware
        ``BearerEndpoints``, installed around ``app.wsgi_app`` with the first endpoint: no
        routing, request context or response object, which cost several times the
        verification of a token the verifier remembers; so the app's ``before_request`` and
        ``after_request`` functions do not run for them. Raises RuntimeError if
        ``init_app(app)`` was not called.
        """
        state = _state(app)

        def register(view: ClaimsView) -> ClaimsView:
            @self.required
            def routed() -> Response:
                # What BearerEndpoints answers, for a request Flask routes here.
                status, headers, body = claims_answer(view, compact_json(g.jwt_claims))
                response = Response(body, status, headers)
                if not any(name.lower() == "content-type" for name, _ in headers):
                    del response.headers["Content-Type"]  # werkzeug's default: not the view's
                return response

            app.add_url_rule(rule, view.__name__, routed, methods=["GET"],
                             provide_automatic_options=False)  # fmt: skip
            if not state.views:
                app.wsgi_app = BearerEndpoints(  # type: ignore[method-assign]
                    app.wsgi_app, state.verifier, state.views
                )
            state.views[rule] = view
            return view

        return register


def _state(app: Flask) -> _State:
    state = app.extensions.get(EXTENSION)
    if not isinstance(state, _State):
        raise RuntimeError("JwtAuth.init_app(app) was not called for this app")
    return state
