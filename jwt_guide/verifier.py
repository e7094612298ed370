"""``Verifier``: a token in, its claims out, or the reason it is refused.

A ``Verifier`` owns everything it needs to verify tokens of one issuer: a key source (a
JWKS client, a keys folder or one PEM file, see jwt_guide.keys), the cache of checked
headers, and a cache of verified tokens. Two verifiers share nothing. No HTTP here: the
Flask extension and the WSGI middleware turn its errors into HTTP answers.

When a signature fails with a cached key, or the token's ``alg`` is not the one that key is
bound to, the key source is asked to refresh (a JWKS client refetches as for an unknown
``kid``, within the same fetch spacing), and the token is verified once more if the key
under its ``kid`` changed (``gen.py --force``, perhaps with another ``--alg``).

Verified tokens are remembered in a bounded LRU keyed by the token's SHA-256, so a client
that sends the same token again costs a hash and a dictionary lookup instead of an RSA
verification; see ``TokenCache``. Each entry keeps the claims as compact JSON: ``verify``
decodes a fresh copy from it, and ``verify_json`` hands it out as it is, which is all a
server needs to answer (``Result: <claims>``, a gateway's ``X-Jwt-Claims``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jwt_guide.config import Config, load_config
from jwt_guide.discovery import jwks_client_for
from jwt_guide.errors import InvalidToken
from jwt_guide.keys import FolderKeys, KeySource, PublishedKey
from jwt_guide.tokens import (
    DEFAULT_MAX_AGE,
    MAX_TOKEN_BYTES,
    HeaderCache,
    ParsedToken,
    Policy,
    parse_token,
    verify_token,
)

# The servers' rendering of claims (``Result: {"userId":"a-b-c-d",...}``), built once.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def compact_json(claims: Mapping[str, Any]) -> bytes:
    """``claims`` as compact JSON (no spaces, non-ASCII kept) in UTF-8."""
    return _COMPACT.encode(claims).encode()


@dataclass(frozen=True)
class Verified:
    """A verified token in the cache: its claims as compact JSON, the key that verified it,
    until when."""

    claims_json: bytes
    key: PublishedKey
    deadline: float


class TokenCache:
    """A bounded LRU of verified tokens, keyed by the SHA-256 of the token.

    An entry never outlives the token's ``exp`` or its maximum age, and is only used while
    the key that verified it is still published with the same ``kid``, algorithm and public
    JWK members (``PublishedKey`` equality).
    Only tokens that passed every check are stored; a failure is never cached.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, Verified] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes, now: float) -> Verified | None:
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

    def put(self, digest: bytes, entry: Verified) -> None:
        """Remember a verified token, evicting the least recently used beyond ``size``."""
        if self.size <= 0:
            return
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        """Forget an entry (its key is no longer published)."""
        with self._lock:
            self._entries.pop(digest, None)

    def __len__(self) -> int:
        return len(self._entries)


class Verifier:
    """Verifies tokens of one issuer; thread-safe, and sharing no state with another.

    Keys come from the folder ``keys_dir`` when it is given, else from the JWKS at
    ``jwks_uri``. Every argument left unset comes from the configuration (``config``, else
    the environment: JWKS_URI, JWT_ISSUER, JWT_AUDIENCE, TOKEN_CACHE_SIZE,
    JWKS_CACHE_SECONDS, JWKS_REQUESTS_PER_MINUTE); ``max_age`` defaults to 1 day (the
    guide's ``maxAge``), ``leeway`` to 0 s. ``audience`` None means the configured one: a
    token must name it in ``aud``, and with none configured a token carrying ``aud`` is
    refused. Keyword-only extras: ``keys``, any key source (a ``JwksClient`` built with an
    injected fetch, a ``PemFileKey``); ``clock``, the wall clock.

    Configuration by issuer: with no ``keys_dir``, no ``jwks_uri`` and JWKS_URI not set, an
    issuer that is an http(s) URL names the JWKS in its discovery document (jwt_guide.discovery).

    Building a Verifier never fetches the JWKS (that happens at the first ``verify``).
    Raises UsageError for a bad setting in the environment, and, with ``keys_dir``, if the
    folder has no public key (JwtGuideError if a key cannot be read).
    """

    def __init__(
        self,
        jwks_uri: str | None = None,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        keys_dir: str | Path | None = None,
        max_age: float | None = None,
        leeway: float | None = None,
        token_cache_size: int | None = None,
        config: Config | None = None,
        keys: KeySource | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        config = config or load_config()
        self.policy = Policy(
            issuer=config.issuer if issuer is None else issuer,
            max_age=DEFAULT_MAX_AGE if max_age is None else max_age,
            leeway=0 if leeway is None else leeway,
            audience=config.audience if audience is None else audience,
        )
        if keys is None and keys_dir is not None:
            keys = FolderKeys(Path(keys_dir).absolute(), config.kid)
        if keys is None:  # a JWKS URL, or one found by the issuer's discovery document
            keys = jwks_client_for(config, jwks_uri, self.policy.issuer)
        self.keys: KeySource = keys
        self.clock = clock or time.time
        self.headers = HeaderCache()
        size = config.token_cache_size if token_cache_size is None else token_cache_size
        self.cache = TokenCache(size)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` if it passes every check (see jwt_guide.tokens).

        Raises InvalidToken (its ``reason`` names the check that failed) or KeysUnavailable
        (no key set can be had now; ``retry_after`` says when to try again).
        """
        digest, cached = self._cached(token)
        if cached is not None:
            # Decoded again: the caller owns (and may change) the claims it gets.
            claims: dict[str, Any] = json.loads(cached.claims_json)
            return claims
        return self._verify(token, digest)[0]

    def verify_json(self, token: str) -> bytes:
        """The claims of ``token``, as ``verify`` returns them, as compact JSON in UTF-8
        (``{"userId":"a-b-c-d","iat":...}``): for a server that sends the claims on, a cached
        token then costs no JSON work at all.

        Raises as ``verify``.
        """
        digest, cached = self._cached(token)
        if cached is not None:
            return cached.claims_json
        claims, claims_json = self._verify(token, digest)
        return compact_json(claims) if claims_json is None else claims_json

    def _cached(self, token: str) -> tuple[bytes | None, Verified | None]:
        """The cache key of ``token`` (None with the cache off) and its entry, if it is cached
        and its key still published. Raises InvalidToken for a token over 8 KiB."""
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("malformed", f"token is larger than {MAX_TOKEN_BYTES} bytes")
        if self.cache.size <= 0:
            return None, None
        digest = hashlib.sha256(token.encode()).digest()
        cached = self.cache.get(digest, self.clock())
        if cached is None:
            return digest, None
        if self._still_published(cached.key):
            return digest, cached
        self.cache.discard(digest)
        return digest, None

    def _verify(self, token: str, digest: bytes | None) -> tuple[dict[str, Any], bytes | None]:
        """Verify ``token``, remember it under ``digest`` (if not None); return its claims and,
        when remembered, their compact JSON. Raises as ``verify``."""
        key, claims = self._verified(parse_token(token, self.headers), self.clock())
        if digest is None:
            return claims, None
        claims_json = compact_json(claims)
        deadline = min(claims["exp"], claims["iat"] + self.policy.max_age)
        self.cache.put(digest, Verified(claims_json, key, deadline))
        return claims, claims_json

    def _still_published(self, key: PublishedKey) -> bool:
        try:
            published = self.keys.key_for(key.kid)
        except InvalidToken:
            return False
        # Usually the very object that verified the token: skip comparing the moduli.
        return published is key or published == key

    def _verified(self, parsed: ParsedToken, now: float) -> tuple[PublishedKey, dict[str, Any]]:
        """The key that verifies ``parsed`` and the token's claims.

        Raises InvalidToken when the token does not verify, KeysUnavailable when no key set
        can be had.
        """
        key = self.keys.key_for(parsed.kid)
        try:
            return key, verify_token(parsed, key.key, self.policy, now, algorithm=key.algorithm)
        except InvalidToken as e:
            if e.reason not in ("invalid signature", "algorithm"):
                raise
            # Maybe the key was replaced under the same kid (gen.py --force, perhaps bound to
            # another algorithm) since it was cached: the key source looks again (a JWKS
            # client only if its spacing allows, so forged signatures or algorithms cause no
            # more fetches than unknown kids), and a changed key gets one more try.
            fresh = self.keys.refresh_key(key)
            if fresh is None:
                raise InvalidToken("unknown kid", "no published key has this kid now") from e
            if fresh == key:
                raise
            return fresh, verify_token(
                parsed, fresh.key, self.policy, now, algorithm=fresh.algorithm
            )
