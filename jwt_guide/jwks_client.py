"""A JWKS client: the guide's ``jwks-rsa`` (cache + rate limit), hardened; a key source.

Why not PyJWT's ``PyJWKClient``: it has a cache and one refetch on an unknown ``kid``, but no
limit on fetches, no single flight for concurrent requests, no body size cap, no use of stale
keys during an outage, and it forwards ``jwks-rsa``'s weakness of trusting every key it gets.

Behaviour (see the README's SECURITY section):

- keys are cached for ``cache_seconds``, or for a shorter ``Cache-Control: max-age`` sent by
  the JWKS server, but never less than ``MIN_CACHE_SECONDS``;
- never more than ``requests_per_minute`` fetches in any 60 s; and after a fetch asked for by
  an unknown ``kid`` (or by a signature that failed with a cached key, see ``refresh_key``),
  the next waits ``60 / requests_per_minute`` s (the spacing), so a flood of random ``kid``s
  or forged signatures gets one fetch per spacing interval, and a key published (or replaced
  under the same ``kid``) during the flood is seen within one interval (two, in the first
  minute). A fetch the cache needed (cold start, expiry) does not start the spacing: a key
  promoted just after it is fetched at once, as ``jwks-rsa`` would;
- after a failed fetch the next may start ``FIRST_RETRY_SECONDS`` later, then twice as long
  after each further failure in a row, up to the spacing, each delay shortened by a random
  part of up to ``RETRY_JITTER`` (so that many servers do not retry in step), and always
  within the per-minute allowance. An attempt that could not even connect (refused,
  unreachable, no such host, connect timeout) reached no server and is not counted against
  the allowance; such attempts back off only up to ``UNREACHED_RETRY_SECONDS``, so a JWKS
  server that comes back after an outage of any length is used within about 2 s;
- one fetch at a time: concurrent requests wait for it and share its result, while requests
  whose key is cached never wait (a stale cached key is served while the refresh runs);
- a fetch fails on a timeout (5 s in all), a status other than 200, a body over
  ``MAX_JWKS_BYTES``, or a body that is not a JSON key set. It sends no credentials: no
  ``.netrc``; only proxies and a CA bundle are taken from the environment (``http_fetch``);
- entries of the key set are read by ``jwt_guide.algorithms.key_from_jwk``: each becomes a
  key bound to one algorithm of the table (its ``alg``, else RS256 for RSA, ES256 for EC
  P-256, EdDSA for Ed25519; never PS256 by guess). An entry that is malformed (a registered
  member of the wrong type, an EC point off the curve...), carries private members, has RSA
  numbers outside BoringSSL's limits, has no ``kid`` or shares one, is skipped and logged
  as a warning; a well-formed key for something else (encryption, another curve such as
  P-384 or secp256k1, Ed448, an algorithm outside the table) is skipped at debug level; the
  rest of the set is used;
- after a failed fetch the previous keys stay in use for up to ``STALE_IF_ERROR_SECONDS``
  past their expiry; with no keys at all, ``KeysUnavailable`` says when the next fetch may
  start.

Every ``JwksClient`` owns its state: its cache, its fetch allowance and the threads its
fetches run in. Two clients (two issuers) in one process share nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.utils import get_environ_proxies

from jwt_guide.algorithms import KeyRejected, key_from_jwk
from jwt_guide.errors import InvalidToken, JwtGuideError, KeysUnavailable
from jwt_guide.keys import PublishedKey, no_kid

USER_AGENT = "jwt-guide-jwks-client/0.1"
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 256 * 1024
MIN_CACHE_SECONDS = 10
STALE_IF_ERROR_SECONDS = 3600
FIRST_RETRY_SECONDS = 1.0  # Envoy's failed_refetch_duration
UNREACHED_RETRY_SECONDS = 2.0  # retry ceiling while the JWKS server cannot be connected to
RETRY_JITTER = 0.25  # each retry delay is shortened by a random part of up to this fraction
LOGGED_SKIPS = 5  # skipped entries named in the one log line of a fetch

log = logging.getLogger(__name__)


class FetchError(JwtGuideError):
    """Raised when the JWKS could not be fetched or is not a usable key set; ``unreached``
    when no connection to the server could be made (refused, unreachable, no such host,
    connect timeout), so the attempt cost the JWKS server nothing."""

    def __init__(self, message: str, unreached: bool = False) -> None:
        super().__init__(message)
        self.unreached = unreached


def _unreached(e: requests.RequestException) -> bool:
    # requests wraps urllib3's MaxRetryError, whose ``reason`` says what failed.
    reason = getattr(e.args[0], "reason", None) if e.args else None
    connect_errors = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
    return isinstance(e, requests.ConnectTimeout) or isinstance(reason, connect_errors)


# A fetch returns the parsed JSON document and the server's max-age, if it sent one.
Fetcher = Callable[[str], tuple[Any, float | None]]


def _max_age(cache_control: str) -> float | None:
    if re.search(r"\b(no-store|no-cache)\b", cache_control):
        return 0
    match = re.search(r"\bmax-age\s*=\s*\"?(\d+)", cache_control)
    return float(match.group(1)) if match else None


def environment_settings(uri: str) -> dict[str, Any]:
    """The keyword arguments for a request to ``uri`` from a ``requests.Session`` whose
    ``trust_env`` is off: what trust_env would take from the environment, minus the
    ``.netrc`` credentials it would also send (sent to any host the file names, in place of
    the caller's own Authorization header). That is: the proxies (HTTP_PROXY, HTTPS_PROXY,
    ALL_PROXY, NO_PROXY) and the CA bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE), read as
    requests reads them."""
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return {"proxies": get_environ_proxies(uri), "verify": ca_bundle or True}


def http_fetch(uri: str) -> tuple[Any, float | None]:
    """GET the JWKS at ``uri``, reading at most ``MAX_JWKS_BYTES``, sending no credentials.

    Raises FetchError for any network error, non-200 status, oversized or non-JSON body, or
    a body still arriving after ``FETCH_TIMEOUT``. A server sending its headers slowly is cut
    off by ``bounded_fetch``, not here.
    """
    deadline = time.monotonic() + FETCH_TIMEOUT
    try:
        with requests.Session() as session:
            session.trust_env = False  # else requests sends .netrc credentials for the host
            with session.get(
                uri, timeout=FETCH_TIMEOUT, stream=True, allow_redirects=False,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                **environment_settings(uri),
            ) as response:  # fmt: skip
                if response.status_code != 200:
                    raise FetchError(f"{uri} answered HTTP {response.status_code}")
                body = bytearray()
                # read1 returns what has arrived; iter_content would wait for a full chunk,
                # so a server dripping bytes could keep the loop from checking the deadline.
                while chunk := response.raw.read1(16384, decode_content=True):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise FetchError(f"{uri} sent more than {MAX_JWKS_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError(f"{uri} took more than {FETCH_TIMEOUT:.0f} s")
                max_age = _max_age(response.headers.get("Cache-Control", ""))
    except requests.RequestException as e:
        raise FetchError(f"cannot fetch {uri}: {type(e).__name__}", _unreached(e)) from e
    except urllib3.exceptions.HTTPError as e:
        raise FetchError(f"cannot fetch {uri}: {type(e).__name__}") from e
    try:
        return json.loads(bytes(body).decode("utf-8")), max_age
    except (ValueError, RecursionError):
        raise FetchError(f"{uri} did not answer JSON") from None


# --- the entries of a key set ---------------------------------------------------------------


class _Skipped(Exception):
    """Raised for a key-set entry that is not used; ``notable`` ones are logged as warnings
    (malformed or unsafe), the others (keys for something else) only at debug level."""

    def __init__(self, reason: str, notable: bool = True) -> None:
        super().__init__(reason)
        self.notable = notable


def _published_key(jwk: Any) -> PublishedKey:
    """The verification key of one key-set entry, bound to its algorithm.

    Raises _Skipped when ``key_from_jwk`` refuses the entry (see its docstring) or it has no
    ``kid`` (its type is checked there: a string, when present).
    """
    try:
        key, algorithm = key_from_jwk(jwk)
    except KeyRejected as e:
        raise _Skipped(e.reason, notable=not e.unsupported) from None
    if not jwk.get("kid"):
        raise _Skipped("malformed: no kid")
    return PublishedKey.of(jwk["kid"], key, algorithm.name)


def _shown_kid(jwk: Any) -> str:
    kid = jwk.get("kid") if isinstance(jwk, dict) else None
    return f"kid {kid!r:.40}" if isinstance(kid, str) else "an entry without a kid"


def parse_key_set(document: Any) -> dict[str, PublishedKey]:
    """The verification keys of a JWKS document, by ``kid``, each bound to its algorithm.

    Raises FetchError if ``document`` is not a key set. Entries that cannot be used are
    skipped, as PyJWT's ``PyJWKSet`` skips them, and every key whose ``kid`` appears more
    than once is dropped; those that are malformed or unsafe are logged in one line.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchError("the JWKS is not a JSON Web Key Set")
    keys: dict[str, PublishedKey] = {}
    duplicates: set[str] = set()
    skipped: list[str] = []
    for jwk in document["keys"]:
        try:
            key = _published_key(jwk)
        except _Skipped as skip:
            if skip.notable:
                skipped.append(f"{_shown_kid(jwk)} ({skip})")
            else:
                log.debug("JWKS: skipped %s: %s", _shown_kid(jwk), skip)
            continue
        if key.kid in keys or key.kid in duplicates:
            duplicates.add(key.kid)
            skipped.append(f"{_shown_kid(jwk)} (its kid appears more than once)")
            keys.pop(key.kid, None)
            continue
        keys[key.kid] = key
    if skipped:
        # One line per fetch, however many entries an attacker-controlled key set holds.
        more = f"; and {len(skipped) - LOGGED_SKIPS} more" if len(skipped) > LOGGED_SKIPS else ""
        log.warning("JWKS: skipped %d key(s): %s%s", len(skipped),
                    "; ".join(skipped[:LOGGED_SKIPS]), more)  # fmt: skip
    return keys


# --- the client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    keys: Mapping[str, PublishedKey]
    fresh_until: float
    usable_until: float


class JwksClient:
    """Finds verification keys by ``kid`` in a remote JWKS; safe to share between threads.

    ``fetch`` replaces the HTTP fetch (tests inject one), ``clock`` the monotonic clock.
    """

    def __init__(
        self,
        uri: str,
        cache_seconds: float,
        requests_per_minute: int,
        *,
        fetch: Fetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.uri = uri
        self.cache_seconds = cache_seconds
        self.spacing = 60 / requests_per_minute
        self.fetches = 0
        self._fetch: Fetcher = fetch or self.bounded_fetch
        # Created lazily by the pool, and gone with this client: no thread is shared.
        self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jwks-fetch")
        self._clock = clock
        self._random = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._recent: deque[float] = deque(maxlen=requests_per_minute)  # last fetch times
        self._spaced_until = -math.inf
        self._failures = 0  # failed fetches in a row

    def bounded_fetch(self, uri: str) -> tuple[Any, float | None]:
        """``http_fetch`` with a hard deadline of ``FETCH_TIMEOUT`` for the whole exchange.

        requests' timeouts bound each socket operation, not the total, so the fetch runs in
        a worker thread and is abandoned at the deadline (the thread ends at its own next
        check). Raises FetchError as ``http_fetch`` does, and when the deadline passes.
        """
        future = self._threads.submit(http_fetch, uri)
        try:
            return future.result(timeout=FETCH_TIMEOUT)
        except FutureTimeout:
            raise FetchError(f"{uri} took more than {FETCH_TIMEOUT:g} s") from None

    def key_for(self, kid: str | None) -> PublishedKey:
        """The key for a token's ``kid`` (the ``KeySource`` interface of a ``Verifier``).

        Raises InvalidToken (``malformed`` without a ``kid``, ``unknown kid``), and
        KeysUnavailable as ``get_key`` does.
        """
        if kid is None:
            raise no_kid()
        key = self.get_key(kid)
        if key is None:
            raise InvalidToken("unknown kid", "no key in the JWKS has this kid")
        return key

    def get_key(self, kid: str) -> PublishedKey | None:
        """The key for ``kid``, fetching the JWKS if needed and allowed; None if unknown.

        Raises KeysUnavailable when no key set could ever be had (nothing cached).
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
            raise KeysUnavailable(self.retry_after())
        return snapshot.keys.get(kid)

    def refresh_key(self, used: PublishedKey) -> PublishedKey | None:
        """The key now published under ``used.kid``, after a signature failed with ``used``.

        A key replaced under the same ``kid`` (``gen.py --force``) would otherwise be found
        only when the cache expires. So this refetches as an unknown ``kid`` does: only when
        a fetch is allowed now, and then the spacing starts, so that forged signatures cannot
        cause more fetches than unknown ``kid``s can. Returns ``used`` itself when nothing
        changed or no fetch was allowed or it failed; None when the ``kid`` is gone. Never
        raises KeysUnavailable (a key was there).
        """
        with self._lock:
            snapshot = self._snapshot
            if snapshot is None:
                return used
            current = snapshot.keys.get(used.kid)
            if current != used:  # another request already fetched a newer key set
                return current
            refreshed = self._refresh(snapshot)
        return (refreshed or snapshot).keys.get(used.kid)

    def retry_after(self) -> int:
        """Whole seconds until the next fetch is allowed (at least 1)."""
        return max(1, math.ceil(self._next_fetch_at() - self._clock()))

    def _next_fetch_at(self) -> float:
        full = len(self._recent) == self._recent.maxlen
        return max(self._spaced_until, self._recent[0] + 60 if full else -math.inf)

    def _retry_delay(self, unreached: bool) -> float:
        # Exponential backoff from FIRST_RETRY_SECONDS, with jitter. Up to the spacing after
        # a fetch the JWKS server answered badly (it counts against the allowance); up to
        # UNREACHED_RETRY_SECONDS while no connection can be made at all (it costs the
        # server nothing, and does not count), so that a JWKS server coming back after any
        # outage is used within about 2 s.
        backoff = FIRST_RETRY_SECONDS * 2.0 ** min(self._failures - 1, 16)
        ceiling = UNREACHED_RETRY_SECONDS if unreached else self.spacing
        return min(backoff, ceiling) * (1 - RETRY_JITTER * self._random.random())

    def _refresh(self, seen: _Snapshot | None) -> _Snapshot | None:
        # Called with the lock held. If another thread fetched while we waited, use its result.
        current = self._snapshot
        now = self._clock()
        if current is not seen and current is not None and now < current.fresh_until:
            return current
        usable = current if current is not None and now < current.usable_until else None
        if now < self._next_fetch_at():
            return usable
        self.fetches += 1
        # A fetch asked for while ``seen`` is fresh (an unknown kid, a failed signature)
        # starts the spacing; one the cache needed (cold, expired) does not.
        spaced = seen is not None and now < seen.fresh_until
        try:
            document, max_age = self._fetch(self.uri)
            keys = parse_key_set(document)
        except FetchError as e:
            self._failures += 1
            if not e.unreached:
                self._recent.append(now)
            delay = self._retry_delay(e.unreached)
            log.warning("JWKS fetch failed: %s; next try in %.1f s at the earliest", e, delay)
            self._spaced_until = self._clock() + delay
            return usable
        self._recent.append(now)
        self._failures = 0
        if spaced:
            self._spaced_until = now + self.spacing
        ttl = self.cache_seconds
        if max_age is not None:
            ttl = min(ttl, max(max_age, MIN_CACHE_SECONDS))
        done = self._clock()
        self._snapshot = _Snapshot(keys, done + ttl, done + ttl + STALE_IF_ERROR_SECONDS)
        return self._snapshot


_EMPTY = _Snapshot({}, 0, 0)
