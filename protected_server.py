"""Step 4.b of the guide: a backend whose ``/with-auth`` needs a Bearer token.

The token's ``kid`` picks the key from the JWKS (``JWKS_URI``), through ``JwksClient``; the
token is then checked by ``verify.verify_token``, the same function verify.py uses. A token
without a ``kid`` is refused. When the signature fails with a cached key, the JWKS client is
asked to refetch, as for an unknown ``kid`` and within the same fetch spacing, and the token
is verified once more if the key under its ``kid`` changed (``gen.py --force``). Errors
follow RFC 6750: 401 without an error code when no Bearer token is sent, 400
``invalid_request`` for a malformed Authorization header, 401 ``invalid_token`` for a token
that does not verify, 503 with ``Retry-After`` when no key set can be had.

Verified tokens are remembered in a bounded LRU keyed by the token's SHA-256, so a client
that sends the same token again costs a hash and a dictionary lookup instead of an RSA
verification; see ``TokenCache``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, request

from config import AppError, ArgumentParser, Config, load_config
from jwks_client import JwksClient, JwksUnavailable, PublishedKey
from verify import (
    MAX_TOKEN_BYTES,
    ParsedToken,
    Policy,
    VerificationError,
    parse_token,
    verify_token,
)
from web import EXIT_INTERRUPTED, ApiError, add_json_errors, apply_serving_limits, run_dev_server

REALM = "protected"


def _challenge(error: str | None = None, description: str = "") -> tuple[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error:
        # RFC 6750 3: error_description may not hold '"' or '\', and is ASCII.
        safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in description)
        value += f', error="{error}", error_description="{safe[:200]}"'
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


@dataclass(frozen=True)
class _Verified:
    body: str
    key: PublishedKey
    deadline: float


class TokenCache:
    """A bounded LRU of verified tokens, keyed by the SHA-256 of the token.

    An entry never outlives the token's ``exp`` or its maximum age, and is only used while
    the key that verified it is still in the JWKS with the same ``kid``, ``n`` and ``e``.
    Only tokens that passed every check are stored; a failure is never cached.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes, now: float) -> _Verified | None:
        """The entry for ``digest`` if it is still within its deadline."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if now >= entry.deadline:
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            return entry

    def put(self, digest: bytes, entry: _Verified) -> None:
        """Remember a verified token, evicting the least recently used beyond ``size``."""
        if self.size <= 0:
            return
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        """Forget an entry (its key left the JWKS)."""
        with self._lock:
            self._entries.pop(digest, None)

    def __len__(self) -> int:
        return len(self._entries)


class Authenticator:
    """Turns a Bearer token into the response body, or raises the right ApiError."""

    def __init__(
        self, jwks: JwksClient, policy: Policy, cache: TokenCache,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.jwks = jwks
        self.policy = policy
        self.cache = cache
        self.clock = clock

    def _key(self, kid: str) -> PublishedKey | None:
        try:
            return self.jwks.get_key(kid)
        except JwksUnavailable as e:
            raise ApiError(
                503, "the key set (JWKS) is unavailable: try again later",
                "temporarily_unavailable", [("Retry-After", str(e.retry_after))],
            ) from e  # fmt: skip

    def _verified(self, parsed: ParsedToken, now: float) -> tuple[PublishedKey, dict[str, Any]]:
        """The key that verifies ``parsed`` and the token's claims.

        Raises VerificationError when the token does not verify, ApiError (503) when no key
        set can be had.
        """
        if parsed.kid is None:
            raise VerificationError("malformed", "the token has no kid")
        key = self._key(parsed.kid)
        if key is None:
            raise VerificationError("unknown kid", "no key in the JWKS has this kid")
        try:
            return key, verify_token(parsed, key.key, self.policy, now)
        except VerificationError as e:
            if e.reason != "invalid signature":
                raise
            # Maybe the key was replaced under the same kid (gen.py --force) since it was
            # cached: the JWKS client refetches if its spacing allows (so forged signatures
            # cause no more fetches than unknown kids), and a changed key gets one more try.
            fresh = self.jwks.refresh_key(key)
            if fresh is None:
                raise VerificationError("unknown kid", "no key in the JWKS has this kid") from e
            if fresh == key:
                raise
            return fresh, verify_token(parsed, fresh.key, self.policy, now)

    def result(self, token: str) -> str:
        """The ``Result: {...}`` body for a valid token; raises ApiError otherwise."""
        if len(token) > MAX_TOKEN_BYTES:
            raise invalid_token(f"malformed: token is larger than {MAX_TOKEN_BYTES} bytes")
        now = self.clock()
        digest = hashlib.sha256(token.encode()).digest()
        cached = self.cache.get(digest, now)
        if cached is not None:
            if self._key(cached.key.kid) == cached.key:
                return cached.body
            self.cache.discard(digest)
        try:
            key, claims = self._verified(parse_token(token), now)
        except VerificationError as e:
            raise invalid_token(str(e)) from e
        body = "Result: " + json.dumps(claims, separators=(",", ":"), ensure_ascii=False)
        deadline = min(claims["exp"], claims["iat"] + self.policy.max_age)
        self.cache.put(digest, _Verified(body, key, deadline))
        return body


def create_app(config: Config | None = None, jwks: JwksClient | None = None) -> Flask:
    """The protected backend; ``config`` defaults to the environment's, ``jwks`` to its URI."""
    config = config or load_config()
    app = Flask(__name__)
    app.extensions["authenticator"] = Authenticator(
        jwks or JwksClient(config.jwks_uri, config.jwks_cache_seconds,
                           config.jwks_requests_per_minute),
        Policy(config.issuer, audience=config.audience),
        TokenCache(config.token_cache_size),
    )  # fmt: skip
    add_json_errors(app)

    @app.get("/with-auth", provide_automatic_options=False)
    def with_auth() -> Response:
        """The guide's protected endpoint: echo the verified claims."""
        token = bearer_token(request.headers.get("Authorization"))
        body = current_app.extensions["authenticator"].result(token)
        return Response(body, mimetype="text/plain")

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 4.b; return the exit code."""
    build_parser().parse_args(argv)
    try:
        config = load_config()
        run_dev_server(
            create_app(config), config.bind_host, config.protected_port, "PROTECTED_PORT",
            f"Backend is running on port {config.protected_port}",
        )  # fmt: skip
    except AppError as e:
        print(f"protected_server: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C while starting; run_dev_server handles it once serving
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
