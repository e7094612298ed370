"""Step 4.a of the guide: publish the public keys as a JSON Web Key Set.

``GET /keys`` (and ``/.well-known/jwks.json``) answers ``{"keys": [...]}`` with the next,
current and retired public keys, each ``{"kty", "n", "e", "kid", "use": "sig", "alg":
"RS256"}``, turned from PEM into JWK by jwcrypto (the guide's ``pem-jwk``). The key set is
rebuilt only when a key file changes (seen by ``stat``, so a replaced key is picked up without
a restart and no file is read on the request path), and served with ``Cache-Control``,
``ETag`` and 304 answers to ``If-None-Match``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, abort, request
from jwcrypto.jwk import JWK
from werkzeug.http import HTTP_STATUS_CODES, parse_etags

from config import PUBLIC_KEY_FILE, AppError, ArgumentParser, Config, UsageError, load_config
from keystore import KEYRING_FILE, apply_changes, public_key_from_pem, read_keyring
from verify import ALGORITHM
from web import add_json_errors, apply_serving_limits, run_dev_server

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

WATCHED_FILES = (PUBLIC_KEY_FILE, KEYRING_FILE)
KEY_SET_PATHS = frozenset({"/keys", "/.well-known/jwks.json"})


def public_jwk(pem: str, kid: str) -> dict[str, Any]:
    """The public JWK of an RSA public key in PEM, with ``kid``, ``use`` and ``alg``.

    Raises AppError if ``pem`` is not an RSA public key.
    """
    public_key_from_pem(pem.encode(), f"key {kid!r}")
    exported = JWK.from_pem(pem.encode()).export_public(as_dict=True)
    return {"kty": "RSA", "n": exported["n"], "e": exported["e"], "kid": kid,
            "use": "sig", "alg": ALGORITHM}  # fmt: skip


def build_jwks(keys_dir: Path, default_kid: str) -> dict[str, Any]:
    """The key set of every published key: next, current and retired.

    Raises AppError (or UsageError if the public key is missing) when it cannot be built.
    """
    ring = read_keyring(keys_dir, default_kid)
    if ring.find("current") is None:
        raise UsageError(f"no public key at {keys_dir / PUBLIC_KEY_FILE}: run gen.py first")
    return {"keys": [public_jwk(r.public_pem, r.kid) for r in ring.records]}


class JwksCache:
    """The serialised key set and its ETag, rebuilt only when a key file changes."""

    def __init__(self, keys_dir: Path, default_kid: str) -> None:
        self.keys_dir = keys_dir
        self.default_kid = default_kid
        self._lock = threading.Lock()
        self._built: tuple[object, bytes, str] | None = None
        # Joined once: pathlib's joining costs more than the stat calls themselves.
        self._paths = [os.path.join(keys_dir, name) for name in WATCHED_FILES]

    def _signature(self) -> object:
        stats: list[tuple[int, ...] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
                stats.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except FileNotFoundError:
                stats.append(None)
        return tuple(stats)

    def get(self) -> tuple[bytes, str]:
        """The key set as JSON bytes and its ETag; raises AppError if there is no key."""
        signature = self._signature()
        built = self._built
        if built is None or built[0] != signature:
            with self._lock:
                body = json.dumps(build_jwks(self.keys_dir, self.default_kid)).encode()
                built = (signature, body, hashlib.sha256(body).hexdigest()[:32])
                self._built = built
        return built[1], built[2]


Answer = tuple[int, list[tuple[str, str]], bytes]


def key_set_answer(cache: JwksCache, cache_control: str, if_none_match: str | None) -> Answer:
    """Status, headers and body of ``GET /keys``: 200 with the key set, or 304 if it matches.

    Raises AppError (from ``JwksCache.get``) when there is no key set to serve.
    """
    body, etag = cache.get()
    headers = [("ETag", f'"{etag}"'), ("Cache-Control", cache_control)]
    if if_none_match and parse_etags(if_none_match).contains_weak(etag):
        return 304, headers, b""
    return 200, [*headers, ("Content-Type", "application/json")], body


class KeySetMiddleware:
    """Answers GET and HEAD of the key set paths before Flask's routing and response objects,
    which cost more than the rest of such a request (measured by ``make bench``). Anything
    else, and a key set that cannot be built, goes on to the Flask app, which renders errors.
    """

    def __init__(self, app: WSGIApplication, cache: JwksCache, cache_control: str) -> None:
        self.app = app
        self.cache = cache
        self.cache_control = cache_control

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI entry point."""
        method = environ.get("REQUEST_METHOD")
        if environ.get("PATH_INFO") not in KEY_SET_PATHS or method not in ("GET", "HEAD"):
            return self.app(environ, start_response)
        try:
            status, headers, body = key_set_answer(
                self.cache, self.cache_control, environ.get("HTTP_IF_NONE_MATCH")
            )
        except AppError:
            return self.app(environ, start_response)
        if status == 200:  # a 304 may not say Content-Length: 0 (RFC 9110 8.6)
            headers = [*headers, ("Content-Length", str(len(body)))]
        start_response(f"{status} {HTTP_STATUS_CODES[status]}", headers)
        return [b""] if method == "HEAD" else [body]


def create_app(config: Config | None = None) -> Flask:
    """The JWKS application; ``config`` defaults to the environment's."""
    config = config or load_config()
    app = Flask(__name__)
    cache = JwksCache(config.keys_dir, config.kid)
    cache_control = f"public, max-age={config.jwks_cache_seconds}"
    add_json_errors(app)

    @app.get("/keys", provide_automatic_options=False)
    @app.get("/.well-known/jwks.json", provide_automatic_options=False)
    def keys() -> Response:
        """The JSON Web Key Set, conditional on ``If-None-Match``."""
        try:
            status, headers, body = key_set_answer(
                cache, cache_control, request.headers.get("If-None-Match")
            )
        except AppError as e:
            app.logger.error("cannot serve the key set: %s", e)
            abort(500, description="the public key is not available on this server")
        return Response(body, status, headers)

    app.wsgi_app = KeySetMiddleware(app.wsgi_app, cache, cache_control)  # type: ignore[method-assign]
    apply_serving_limits(app)
    return app


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 4.a."""
    parser = ArgumentParser(
        prog="jwks_server.py",
        description="Step 4.a: serve the public keys as a JWKS on http://$JWT_BIND_HOST:$JWKS_PORT"
        "/keys (default 127.0.0.1:3344), or write it to a file with --export.",
    )
    parser.add_argument(
        "--export", metavar="PATH",
        help="write the JWKS (the same JSON as /keys) to PATH for a static host or CDN, and exit",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 4.a; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config()
        # Built once before serving: with no key to publish (UsageError, exit 2) or a broken
        # one, the server refuses to start rather than answer nothing but 500s.
        body, _ = JwksCache(config.keys_dir, config.kid).get()
        if args.export:
            path = Path(args.export).absolute()
            apply_changes(path.parent, {path.name: body})
            print(f"JWKS written to {path}")
            return 0
        run_dev_server(
            create_app(config), config.bind_host, config.jwks_port, "JWKS_PORT",
            f"JWKS API is on port {config.jwks_port}",
        )  # fmt: skip
    except AppError as e:
        print(f"jwks_server: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"jwks_server: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before serving; once serving, it stops the server
        print("jwks_server: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
