"""The protected server's JWKS client: the guide's ``jwks-rsa`` (cache + rate limit), hardened.

Why not PyJWT's ``PyJWKClient``: it has a cache and one refetch on an unknown ``kid``, but no
limit on fetches, no single flight for concurrent requests, no body size cap, no use of stale
keys during an outage, and it forwards ``jwks-rsa``'s weakness of trusting every key it gets.

Behaviour (see the README's SECURITY section):

- keys are cached for ``cache_seconds``, or for a shorter ``Cache-Control: max-age`` sent by
  the JWKS server, but never less than ``MIN_CACHE_SECONDS``;
- never more than ``requests_per_minute`` fetches in any 60 s; and after a fetch asked for by
  an unknown ``kid`` (or a failed one), the next waits ``60 / requests_per_minute`` s (the
  spacing), so a flood of random ``kid``s gets one fetch per spacing interval, and a key
  published during the flood is seen within one interval (two, in the first minute). A
  fetch the cache needed (cold start, expiry) does not start the spacing: a key promoted
  just after it is fetched at once, as ``jwks-rsa`` would;
- one fetch at a time: concurrent requests wait for it and share its result, while requests
  whose key is cached never wait (a stale cached key is served while the refresh runs);
- a fetch fails on a timeout (5 s in all), a status other than 200, a body over
  ``MAX_JWKS_BYTES``, or a body that is not a JSON key set; keys that are not RSA signing
  keys for RS256, carry private members, are under 2048 bits, or share a ``kid`` are dropped;
- after a failed fetch the previous keys stay in use for up to ``STALE_IF_ERROR_SECONDS``
  past their expiry; with no keys at all, ``JwksUnavailable`` says when to retry.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWK, PyJWTError

from verify import ALGORITHM

USER_AGENT = "jwt-asymmetric-guide-jwks-client/0.1"
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 256 * 1024
MIN_CACHE_SECONDS = 10
STALE_IF_ERROR_SECONDS = 3600
MIN_RSA_BITS = 2048
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

log = logging.getLogger(__name__)


class FetchError(Exception):
    """Raised when the JWKS could not be fetched or is not a usable key set."""


class JwksUnavailable(Exception):
    """Raised when no key can be had: the JWKS is unreachable and nothing is cached."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the key set is unavailable; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class PublishedKey:
    """A verification key from the JWKS; equal to another only if kid, n and e are equal."""

    kid: str
    n: str
    e: str
    key: RSAPublicKey = field(compare=False, repr=False)


# A fetch returns the parsed JSON document and the server's max-age, if it sent one.
Fetcher = Callable[[str], tuple[Any, float | None]]


def _max_age(cache_control: str) -> float | None:
    if re.search(r"\b(no-store|no-cache)\b", cache_control):
        return 0
    match = re.search(r"\bmax-age\s*=\s*\"?(\d+)", cache_control)
    return float(match.group(1)) if match else None


def http_fetch(uri: str) -> tuple[Any, float | None]:
    """GET the JWKS at ``uri``, reading at most ``MAX_JWKS_BYTES``.

    Raises FetchError for any network error, non-200 status, oversized or non-JSON body, or
    a body still arriving after ``FETCH_TIMEOUT``. A server sending its headers slowly is cut
    off by ``bounded_fetch``, not here.
    """
    deadline = time.monotonic() + FETCH_TIMEOUT
    try:
        with requests.get(
            uri, timeout=FETCH_TIMEOUT, stream=True, allow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        ) as response:  # fmt: skip
            if response.status_code != 200:
                raise FetchError(f"{uri} answered HTTP {response.status_code}")
            body = bytearray()
            # read1 returns what has arrived; iter_content would wait for a full chunk, so a
            # server dripping bytes could keep the loop from ever checking the deadline.
            while chunk := response.raw.read1(16384, decode_content=True):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise FetchError(f"{uri} sent more than {MAX_JWKS_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(f"{uri} took more than {FETCH_TIMEOUT:.0f} s")
            max_age = _max_age(response.headers.get("Cache-Control", ""))
    except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
        raise FetchError(f"cannot fetch {uri}: {type(e).__name__}") from e
    try:
        return json.loads(bytes(body).decode("utf-8")), max_age
    except (ValueError, RecursionError):
        raise FetchError(f"{uri} did not answer JSON") from None


_FETCH_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jwks-fetch")


def bounded_fetch(uri: str) -> tuple[Any, float | None]:
    """``http_fetch`` with a hard deadline of ``FETCH_TIMEOUT`` for the whole exchange.

    requests' timeouts bound each socket operation, not the total, so the fetch runs in a
    worker thread and is abandoned at the deadline (the thread ends at its own next check).
    Raises FetchError as ``http_fetch`` does, and when the deadline passes.
    """
    future = _FETCH_THREADS.submit(http_fetch, uri)
    try:
        return future.result(timeout=FETCH_TIMEOUT)
    except FutureTimeout:
        raise FetchError(f"{uri} took more than {FETCH_TIMEOUT:g} s") from None


def _usable(jwk: Any) -> bool:
    return (
        isinstance(jwk, dict)
        and not PRIVATE_MEMBERS & jwk.keys()
        and jwk.get("kty") == "RSA"
        and jwk.get("use", "sig") == "sig"
        and jwk.get("alg", ALGORITHM) == ALGORITHM
        and "verify" in jwk.get("key_ops", ["verify"])
        and isinstance(jwk.get("kid"), str)
        and bool(jwk["kid"])
        and isinstance(jwk.get("n"), str)
        and isinstance(jwk.get("e"), str)
    )


def parse_key_set(document: Any) -> dict[str, PublishedKey]:
    """The RS256 verification keys of a JWKS document, by ``kid``.

    Raises FetchError if ``document`` is not a key set. Unusable keys are dropped (and
    logged), as is every key whose ``kid`` appears more than once.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchError("the JWKS is not a JSON Web Key Set")
    keys: dict[str, PublishedKey] = {}
    seen: set[str] = set()
    for jwk in document["keys"]:
        if not _usable(jwk):
            if isinstance(jwk, dict) and PRIVATE_MEMBERS & jwk.keys():
                log.warning("JWKS: dropped a key that carries private members")
            continue
        kid = jwk["kid"]
        if kid in seen:
            log.warning("JWKS: dropped kid %.40r: it appears more than once", kid)
            keys.pop(kid, None)
            continue
        seen.add(kid)
        try:
            key = PyJWK(jwk, ALGORITHM).key
        except (PyJWTError, ValueError, TypeError, KeyError):
            log.warning("JWKS: dropped kid %.40r: not a valid RSA key", kid)
            continue
        if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            log.warning("JWKS: dropped kid %.40r: not an RSA key of 2048 bits or more", kid)
            continue
        keys[kid] = PublishedKey(kid, jwk["n"], jwk["e"], key)
    return keys


@dataclass(frozen=True)
class _Snapshot:
    keys: Mapping[str, PublishedKey]
    fresh_until: float
    usable_until: float


class JwksClient:
    """Finds verification keys by ``kid`` in a remote JWKS; safe to share between threads."""

    def __init__(
        self,
        uri: str,
        cache_seconds: float,
        requests_per_minute: int,
        fetch: Fetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri = uri
        self.cache_seconds = cache_seconds
        self.spacing = 60 / requests_per_minute
        self.fetches = 0
        self._fetch: Fetcher = fetch or bounded_fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._recent: deque[float] = deque(maxlen=requests_per_minute)  # last fetch times
        self._spaced_until = -math.inf

    def get_key(self, kid: str) -> PublishedKey | None:
        """The key for ``kid``, fetching the JWKS if needed and allowed; None if unknown.

        Raises JwksUnavailable when no key set could ever be had (nothing cached).
        """
        snapshot = self._snapshot
        now = self._clock()
        if snapshot is not None:
            key = snapshot.keys.get(kid)
            if key is not None and now < snapshot.fresh_until:
                return key
            if key is not None and now < snapshot.usable_until:
                # Stale but usable: refresh if nobody else is, and never wait for it.
                if self._lock.acquire(blocking=False):
                    try:
                        snapshot = self._refresh(snapshot)
                    finally:
                        self._lock.release()
                return (snapshot or self._snapshot or _EMPTY).keys.get(kid)
        with self._lock:
            snapshot = self._refresh(snapshot)
        if snapshot is None:
            raise JwksUnavailable(self.retry_after())
        return snapshot.keys.get(kid)

    def retry_after(self) -> int:
        """Whole seconds until the next fetch is allowed (at least 1)."""
        return max(1, math.ceil(self._next_fetch_at() - self._clock()))

    def _next_fetch_at(self) -> float:
        full = len(self._recent) == self._recent.maxlen
        return max(self._spaced_until, self._recent[0] + 60 if full else -math.inf)

    def _refresh(self, seen: _Snapshot | None) -> _Snapshot | None:
        # Called with the lock held. If another thread fetched while we waited, use its result.
        current = self._snapshot
        now = self._clock()
        if current is not seen and current is not None and now < current.fresh_until:
            return current
        usable = current if current is not None and now < current.usable_until else None
        if now < self._next_fetch_at():
            return usable
        self._recent.append(now)
        self.fetches += 1
        unknown_kid = seen is not None and now < seen.fresh_until  # else: cold or expired
        try:
            document, max_age = self._fetch(self.uri)
            keys = parse_key_set(document)
        except FetchError as e:
            log.warning("JWKS fetch failed: %s", e)
            self._spaced_until = now + self.spacing
            return usable
        if unknown_kid:
            self._spaced_until = now + self.spacing
        ttl = self.cache_seconds
        if max_age is not None:
            ttl = min(ttl, max(max_age, MIN_CACHE_SECONDS))
        done = self._clock()
        self._snapshot = _Snapshot(keys, done + ttl, done + ttl + STALE_IF_ERROR_SECONDS)
        return self._snapshot


_EMPTY = _Snapshot({}, 0, 0)
