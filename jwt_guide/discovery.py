"""Configuration by issuer: the JWKS URL read from the issuer's discovery document.

When a ``Verifier`` (the protected server's, ``JwtAuth``'s and ``BearerAuth``'s included) is
given no JWKS URL, ``JWKS_URI`` is not set and its issuer (``JWT_ISSUER``, or the ``issuer``
argument) is an http(s) URL, it finds the key set the way OpenID Connect clients do (OpenID
Connect Discovery 1.0 section 4): it reads ``<issuer>/.well-known/openid-configuration`` and
takes ``jwks_uri`` from it. The document is accepted only if its ``issuer`` equals the
configured issuer exactly (section 4.3: else a document could name another issuer's keys) and
its ``jwks_uri`` is an http(s) URL, https when the issuer is https (no downgrade to plain HTTP).

The document is fetched by the JWKS client's own fetch function (``JwksClient.bounded_fetch``:
5 s in all, 256 KiB at most, no redirect, no ``.netrc`` credentials), and only when the
client fetches the key set: the discovery sits inside the client's fetch, so it shares the
client's rate limit, backoff, single flight and stale-if-error handling, and a failure
surfaces exactly as an unreachable JWKS does (503 with ``Retry-After``), never when the
server or ``Verifier`` is built. The URL found is cached like the key set (``cache_seconds``,
or a shorter ``max-age`` of the document, at least ``MIN_CACHE_SECONDS``); if the document
cannot be read again, the URL found last stays in use, and a failed key-set fetch has the
document read again at the next fetch (the key set may have moved).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from jwt_guide.config import Config
from jwt_guide.http.discovery import DISCOVERY_PATH
from jwt_guide.jwks_client import MIN_CACHE_SECONDS, Fetcher, FetchError, JwksClient

# scheme, then a host (no path, query, fragment or space in it), then any path without space
_HTTP_URL = re.compile(r"https?://[^/?#\s]+(?:[/?#]\S*)?")

log = logging.getLogger(__name__)


def is_http_url(text: str) -> bool:
    """True if ``text`` is an http:// or https:// URL with a host (lower-case scheme)."""
    return _HTTP_URL.fullmatch(text) is not None and text.isprintable()


def discovery_url(issuer: str) -> str:
    """Where ``issuer`` publishes its discovery document (a final ``/`` removed first)."""
    return issuer.rstrip("/") + DISCOVERY_PATH


def uses_discovery(config: Config, jwks_uri: str | None = None, issuer: str | None = None) -> bool:
    """True if the JWKS URL is to be discovered: none given (``jwks_uri``) nor configured
    (``JWKS_URI``), and the issuer (``issuer``, else the configured one) an http(s) URL."""
    issuer = config.issuer if issuer is None else issuer
    return jwks_uri is None and not config.jwks_uri_set and is_http_url(issuer)


def jwks_uri_from(document: Any, issuer: str, url: str) -> str:
    """The ``jwks_uri`` of the discovery document ``document`` read from ``url``.

    Raises FetchError if it is not a JSON object, names another issuer, or has no usable
    ``jwks_uri``.
    """
    if not isinstance(document, dict):
        raise FetchError(f"{url} is not a discovery document (not a JSON object)")
    if document.get("issuer") != issuer:
        shown = document.get("issuer")
        raise FetchError(f"{url} names the issuer {shown!r:.80}, not the configured {issuer!r}")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not is_http_url(jwks_uri):
        raise FetchError(f"{url} has no jwks_uri that is an http:// or https:// URL")
    if issuer.startswith("https://") and not jwks_uri.startswith("https://"):
        raise FetchError(f"{url} points an https issuer to a plain http jwks_uri")
    return jwks_uri


class IssuerDiscovery:
    """The JWKS URL of an issuer, from its discovery document, cached; safe between threads.

    ``fetch_key_set`` is a fetch function for ``JwksClient``: the client calls it, under its
    limits, whenever it would fetch the key set.
    """

    def __init__(
        self,
        issuer: str,
        cache_seconds: float,
        *,
        fetch: Fetcher,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.url = discovery_url(issuer)
        self.cache_seconds = cache_seconds
        self.fetches = 0
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._jwks_uri: str | None = None
        self._fresh_until = -math.inf

    def jwks_uri(self) -> str:
        """The key set's URL, reading the discovery document when none is cached or it expired.

        Raises FetchError when the document cannot be had or used and no URL was found before.
        """
        with self._lock:
            if self._jwks_uri is not None and self._clock() < self._fresh_until:
                return self._jwks_uri
            self.fetches += 1
            try:
                document, max_age = self._fetch(self.url)
                jwks_uri = jwks_uri_from(document, self.issuer, self.url)
            except FetchError as e:
                if self._jwks_uri is None:
                    raise
                log.warning("discovery failed: %s; still using %s", e, self._jwks_uri)
                return self._jwks_uri
            ttl = self.cache_seconds
            if max_age is not None:
                ttl = min(ttl, max(max_age, MIN_CACHE_SECONDS))
            if jwks_uri != self._jwks_uri:
                log.info("discovery: the key set of %s is at %s", self.issuer, jwks_uri)
            self._jwks_uri, self._fresh_until = jwks_uri, self._clock() + ttl
            return jwks_uri

    def expire(self) -> None:
        """Have the next ``jwks_uri`` call read the document again (the URL found stays usable)."""
        with self._lock:
            self._fresh_until = -math.inf

    def fetch_key_set(self, document_url: str) -> tuple[Any, float | None]:
        """Fetch the key set from the discovered URL (``document_url``, the client's URI, is
        this issuer's discovery URL). Raises FetchError as the fetch function does."""
        del document_url  # the client's uri; the key set's own URL is found here
        jwks_uri = self.jwks_uri()
        try:
            return self._fetch(jwks_uri)
        except FetchError:
            self.expire()
            raise


class DiscoveringJwksClient(JwksClient):
    """A JWKS client for ``issuer``'s key set, found through its discovery document.

    Every fetch of the key set (under the client's limits) goes through ``discovery``, whose
    own fetches use ``fetch`` (default: this client's ``bounded_fetch``). Building one fetches
    nothing.
    """

    def __init__(
        self,
        issuer: str,
        cache_seconds: float,
        requests_per_minute: int,
        *,
        fetch: Fetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # self.bounded_fetch is only called once JwksClient.__init__ has made its threads.
        self.discovery = IssuerDiscovery(
            issuer, cache_seconds, fetch=fetch or self.bounded_fetch, clock=clock
        )
        super().__init__(
            self.discovery.url, cache_seconds, requests_per_minute,
            fetch=self.discovery.fetch_key_set, clock=clock,
        )  # fmt: skip


def jwks_client_for(
    config: Config, jwks_uri: str | None = None, issuer: str | None = None
) -> JwksClient:
    """The JWKS client of a verifier: at ``jwks_uri`` if given, else at ``JWKS_URI``, except
    that the issuer's discovered ``jwks_uri`` is used when ``uses_discovery`` says so."""
    if uses_discovery(config, jwks_uri, issuer):
        return DiscoveringJwksClient(
            config.issuer if issuer is None else issuer,
            config.jwks_cache_seconds, config.jwks_requests_per_minute,
        )  # fmt: skip
    uri = config.jwks_uri if jwks_uri is None else jwks_uri
    return JwksClient(uri, config.jwks_cache_seconds, config.jwks_requests_per_minute)
