"""Step 4.b of the guide: a backend whose ``/with-auth`` needs a Bearer token.

The app is a Flask app protected by ``JwtAuth``, the library's Flask extension, with the
guide's one view, plus ``/auth`` for a gateway. Both are answered from the verified claims
alone, so ``JwtAuth.endpoint`` serves them ahead of Flask's routing (its WSGI fast path,
jwt_guide.wsgi.BearerEndpoints). The token's ``kid`` picks the key from the JWKS
(``JWKS_URI``); the token is then checked as verify.py checks it (one ``Verifier``, see
jwt_guide/verifier.py). A valid token gets ``Result: <its claims as compact JSON>``; the
refusals follow RFC 6750: 401 without an error code when no Bearer token is sent, 400
``invalid_request`` for a malformed Authorization header, 401 ``invalid_token`` for a token
that does not verify, 503 with ``Retry-After`` when no key set can be had.

``GET /auth`` is the same check for a gateway (nginx's ``auth_request``, make gateway): 204
with the claims in ``X-Jwt-Claims`` (base64url of the compact JSON), or the same refusals.
With ``JWT_ISSUER`` an http(s) URL and no ``JWKS_URI``, the JWKS URL is read from the
issuer's discovery document (jwt_guide/discovery.py).

``create_app`` is the app factory a production WSGI server runs (``make serve``).
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load: exit 130, no traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import argparse
import base64
from collections.abc import Sequence

from flask import Flask

from jwt_guide import Verifier
from jwt_guide.cli import ArgumentParser, run
from jwt_guide.config import Config, load_config
from jwt_guide.flask import JwtAuth
from jwt_guide.http.devserver import run_dev_server
from jwt_guide.http.errors import add_json_errors
from jwt_guide.http.limits import apply_serving_limits
from jwt_guide.jwks_client import JwksClient
from jwt_guide.wsgi import Answer


def create_app(
    config: Config | None = None,
    verifier: Verifier | None = None,
    *,
    jwks: JwksClient | None = None,
) -> Flask:
    """The protected backend. ``config`` defaults to the environment's; ``verifier`` to one
    built from it, with ``jwks`` as its key source if given (tests inject a JWKS client).

    Raises UsageError for a bad setting in the environment.
    """
    config = config or load_config()
    app = Flask(__name__)
    auth = JwtAuth(app, verifier or Verifier(config=config, keys=jwks))
    add_json_errors(app)

    @auth.endpoint(app, "/with-auth")
    def with_auth(claims: bytes) -> Answer:
        """The guide's protected endpoint: echo the verified claims (compact JSON)."""
        return 200, [("Content-Type", "text/plain; charset=utf-8")], b"Result: " + claims

    @auth.endpoint(app, "/auth")
    def auth_request(claims: bytes) -> Answer:
        """For a gateway's ``auth_request``: 204 with the claims in ``X-Jwt-Claims``."""
        encoded = base64.urlsafe_b64encode(claims).rstrip(b"=").decode("ascii")
        return 204, [("X-Jwt-Claims", encoded)], b""

    apply_serving_limits(app)
    return app


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 4.b."""
    return ArgumentParser(
        prog="protected_server.py",
        description="Step 4.b: serve GET /with-auth on http://$JWT_BIND_HOST:$PROTECTED_PORT "
        "(default 127.0.0.1:2233), checking Bearer tokens against the JWKS at $JWKS_URI "
        "(default http://localhost:3344/keys).",
    )


def _step() -> None:
    config = load_config()
    # Ctrl-C before serving is run's one line; once serving, it stops the server (exit 130).
    run_dev_server(
        create_app(config), config.bind_host, config.protected_port, "PROTECTED_PORT",
        f"Backend is running on port {config.protected_port}",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 4.b; return the exit code."""
    build_parser().parse_args(argv)
    return run("protected_server", _step)


if __name__ == "__main__":
    sys.exit(main())
