"""The JWKS application (the guide's step 4.a): the public keys as a JSON Web Key Set.

``GET /keys`` (and ``/.well-known/jwks.json``) answers ``{"keys": [...]}`` with the next,
current and retired public keys, each with the members of its type (RSA ``n``, ``e``; EC
``crv`` P-256, ``x``, ``y``; OKP ``crv`` Ed25519, ``x``; as the guide's ``pem-jwk`` does for
RSA), its ``kid``, ``"use": "sig"`` and the ``alg`` it is bound to. The key set is
rebuilt only when a key file changes (seen by ``stat``, so a replaced key is picked up without
a restart and no file is read on the request path), and served with ``Cache-Control``,
``ETag`` and 304 answers to ``If-None-Match``. ``GET /.well-known/openid-configuration``
answers the discovery document (jwt_guide.http.discovery), cached and conditional alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, abort, request
from werkzeug.http import parse_etags

from jwt_guide.algorithms import ALGORITHMS, KeyRejected, load_public_pem
from jwt_guide.config import PUBLIC_KEY_FILE, Config, load_config
from jwt_guide.errors import JwtGuideError, UsageError
from jwt_guide.http.discovery import DISCOVERY_PATH, DiscoveryDocument
from jwt_guide.http.errors import add_json_errors
from jwt_guide.http.limits import apply_serving_limits
from jwt_guide.keystore import KEYRING_FILE, KeyRecord, file_stamps, read_keyring
from jwt_guide.watch import FolderWatch

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


WATCHED_FILES = (PUBLIC_KEY_FILE, KEYRING_FILE)
KEY_SET_PATHS = frozenset({"/keys", "/.well-known/jwks.json"})


def public_jwk(record: KeyRecord) -> dict[str, Any]:
    """The public JWK of a key of the ring: its type's members, ``kid``, ``use`` and ``alg``.

    Raises JwtGuideError if the key is not supported or its ``alg`` does not fit it.
    """
    try:
        algorithm = record.algorithm
        members = algorithm.public_jwk(load_public_pem(record.public_pem.encode()))
    except KeyRejected as e:
        raise JwtGuideError(f"key {record.kid!r}: {e}") from None
    return {**members, "kid": record.kid, "use": "sig", "alg": algorithm.name}


def published_algorithms(key_set: dict[str, Any]) -> list[str]:
    """The algorithms of the keys of a key set built by ``build_jwks``, each once, in the
    order of the algorithm table: the discovery document's
    ``id_token_signing_alg_values_supported``."""
    used = {jwk["alg"] for jwk in key_set["keys"]}
    return [name for name in ALGORITHMS if name in used]


def build_jwks(keys_dir: Path, default_kid: str) -> dict[str, Any]:
    """The key set of every published key: next, current and retired.

    Raises JwtGuideError (or UsageError if the public key is missing) when it cannot be built.
    """
    ring = read_keyring(keys_dir, default_kid)
    if ring.find("current") is None:
        raise UsageError(f"no public key at {keys_dir / PUBLIC_KEY_FILE}: run gen.py first")
    return {"keys": [public_jwk(r) for r in ring.records]}


@dataclass(frozen=True)
class _Built:
    stamps: object
    body: bytes
    etag: str
    algorithms: tuple[str, ...]


class JwksCache:
    """The serialised key set, its ETag and its algorithms, rebuilt only when a key file
    changes."""

    def __init__(self, keys_dir: Path, default_kid: str) -> None:
        self.keys_dir = keys_dir
        self.default_kid = default_kid
        self._lock = threading.Lock()
        self._built: _Built | None = None
        # Joined once: pathlib's joining costs more than the stat calls themselves.
        self._paths = [os.path.join(keys_dir, name) for name in WATCHED_FILES]
        # The files are looked at (stat) only when the folder may have changed.
        self._watch = FolderWatch(keys_dir)

    def _current(self) -> _Built:
        # Under the lock: a thread that finds nothing new must not pass one that is still
        # rebuilding after a change it saw (the development server has a thread per request).
        with self._lock:
            built = self._built
            if built is not None and not self._watch.changed():
                return built
            signature = file_stamps(self._paths)
            if built is None or built.stamps != signature:
                self._built = None  # until rebuilt: a key set that cannot be is not served
                key_set = build_jwks(self.keys_dir, self.default_kid)
                body = json.dumps(key_set).encode()
                algorithms = tuple(published_algorithms(key_set))
                built = _Built(signature, body, hashlib.sha256(body).hexdigest()[:32], algorithms)
                self._built = built
            return built

    def get(self) -> tuple[bytes, str]:
        """The key set as JSON bytes and its ETag; raises JwtGuideError if there is no key."""
        built = self._current()
        return built.body, built.etag

    def algorithms(self) -> tuple[str, ...]:
        """The algorithms of the published keys, each once, in the order of the algorithm
        table (for a discovery document). Raises JwtGuideError if there is no key."""
        return self._current().algorithms


Answer = tuple[int, list[tuple[str, str]], bytes]
Headers = list[tuple[str, str]]


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, RFC 9110 13.1.2)."""
    if not if_none_match:
        return False
    # A client sends back the ETag as it got it: one string comparison, before werkzeug's
    # parsing of lists, weak tags and "*" (which costs more than the rest of a 304).
    return if_none_match == f'"{etag}"' or parse_etags(if_none_match).contains_weak(etag)


def document_headers(body: bytes, etag: str, cache_control: str) -> tuple[Headers, Headers]:
    """The headers of the 200 answer with ``body`` (JSON) and of the 304 answer."""
    not_modified = [("ETag", f'"{etag}"'), ("Cache-Control", cache_control)]
    # A 304 may not say Content-Length: 0 (RFC 9110 8.6), nor a Content-Type.
    ok = [*not_modified, ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return ok, not_modified


def key_set_answer(cache: JwksCache, cache_control: str, if_none_match: str | None) -> Answer:
    """Status, headers and body of ``GET /keys``: 200 with the key set, or 304 if it matches.

    Raises JwtGuideError (from ``JwksCache.get``) when there is no key set to serve.
    """
    return conditional_answer(*cache.get(), cache_control, if_none_match)


def conditional_answer(
    body: bytes, etag: str, cache_control: str, if_none_match: str | None
) -> Answer:
    """200 with ``body`` (JSON) and its caching headers, or 304 if ``If-None-Match`` matches."""
    ok, not_modified = document_headers(body, etag, cache_control)
    if etag_matches(if_none_match, etag):
        return 304, not_modified, b""
    return 200, ok, body


class KeySetMiddleware:
    """Answers GET and HEAD of the key set paths before Flask's routing and response objects,
    which cost more than the rest of such a request (measured by ``make bench``); the headers
    of both answers are built once per key set. Anything else, and a key set that cannot be
    built, goes on to the Flask app, which renders errors.
    """

    def __init__(self, app: WSGIApplication, cache: JwksCache, cache_control: str) -> None:
        self.app = app
        self.cache = cache
        self.cache_control = cache_control
        self._headers: tuple[str, Headers, Headers] = ("", [], [])  # for which ETag

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI entry point."""
        method = environ.get("REQUEST_METHOD")
        if environ.get("PATH_INFO") not in KEY_SET_PATHS or method not in ("GET", "HEAD"):
            return self.app(environ, start_response)
        try:
            body, etag = self.cache.get()
        except JwtGuideError:
            return self.app(environ, start_response)
        built = self._headers
        if built[0] != etag:
            built = self._headers = (etag, *document_headers(body, etag, self.cache_control))
        # The lists are shared by every answer: no WSGI server we run changes them.
        if etag_matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
            start_response("304 Not Modified", built[2])
            return [b""]
        start_response("200 OK", built[1])
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
        except JwtGuideError as e:
            app.logger.error("cannot serve the key set: %s", e)
            abort(500, description="the public key is not available on this server")
        return Response(body, status, headers)

    # Discovery: the document, cached and conditional like the key set.
    document = DiscoveryDocument(cache.get, cache.algorithms, config.issuer, config.public_url)

    @app.get(DISCOVERY_PATH, provide_automatic_options=False)
    def openid_configuration() -> Response:
        """The discovery document (OpenID Connect Discovery), conditional on ``If-None-Match``."""
        try:
            status, headers, body = conditional_answer(
                *document.get(), cache_control, request.headers.get("If-None-Match")
            )
        except JwtGuideError as e:
            app.logger.error("cannot serve the discovery document: %s", e)
            abort(500, description="the public key is not available on this server")
        return Response(body, status, headers)

    app.wsgi_app = KeySetMiddleware(app.wsgi_app, cache, cache_control)  # type: ignore[method-assign]
    apply_serving_limits(app)
    return app
