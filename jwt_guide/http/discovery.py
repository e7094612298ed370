"""The JWKS server's discovery document: ``GET /.well-known/openid-configuration``.

Clients configured by issuer (get-jwks with ``providerDiscovery``, OpenID Connect libraries,
API gateways) read ``<issuer>/.well-known/openid-configuration`` and take the key set's URL
from its ``jwks_uri`` (OpenID Connect Discovery 1.0 section 4, RFC 8414 section 3). This
server issues signed tokens and nothing else, so the document holds only the members that
apply to it: ``issuer`` (the configured issuer, which such clients compare with the one they
were given), ``jwks_uri`` (``<JWT_PUBLIC_URL>/.well-known/jwks.json``: the URL clients can
reach, e.g. a gateway or CDN in front of this server) and
``id_token_signing_alg_values_supported`` (the algorithms of the published keys). Authorization
endpoints and the like do not exist here and are left out rather than invented.

The document changes only with the key set (its algorithms), so it is rebuilt only then, and
served with the key set's ``Cache-Control``, an ``ETag`` and 304 answers: a cache or CDN
revalidates both the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks.json"

# The key set as JSON bytes and its ETag (jwt_guide.http.jwks_app.JwksCache.get).
KeySetSource = Callable[[], tuple[bytes, str]]
# The algorithms of the published keys (jwks_app.JwksCache.algorithms).
Algorithms = Callable[[], Sequence[str]]


def discovery_document(issuer: str, public_url: str, algorithms: Sequence[str]) -> dict[str, Any]:
    """The discovery document of an issuer whose published keys use ``algorithms``."""
    return {
        "issuer": issuer,
        "jwks_uri": public_url.rstrip("/") + JWKS_PATH,
        "id_token_signing_alg_values_supported": list(algorithms),
    }


class DiscoveryDocument:
    """The discovery document as JSON bytes and its ETag, rebuilt when the key set changes."""

    def __init__(
        self, key_set: KeySetSource, algorithms: Algorithms, issuer: str, public_url: str
    ) -> None:
        self.key_set = key_set
        self.algorithms = algorithms
        self.issuer = issuer
        self.public_url = public_url
        self._built: tuple[str, bytes, str] | None = None

    def get(self) -> tuple[bytes, str]:
        """The document and its ETag; raises what the key set source raises (no key set)."""
        _, key_set_etag = self.key_set()
        built = self._built
        if built is None or built[0] != key_set_etag:
            # Read after the ETag: a key set changed in between is seen again at the next get.
            document = discovery_document(self.issuer, self.public_url, self.algorithms())
            body = json.dumps(document).encode()
            # One tuple, replaced whole: threads see the old document or the new one.
            built = (key_set_etag, body, hashlib.sha256(body).hexdigest()[:32])
            self._built = built
        return built[1], built[2]
