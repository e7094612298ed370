"""jwt_guide: sign and verify JWTs with asymmetric keys, as the guide's steps do.

What a service imports::

    from jwt_guide import Signer, Verifier, InvalidToken, KeysUnavailable, JwtGuideError
    from jwt_guide.flask import JwtAuth      # protect Flask views
    from jwt_guide.wsgi import BearerAuth    # protect any WSGI app

The map of the package (the guide's top-level scripts call it for everything but their
arguments and output):

- ``errors``: the one root ``JwtGuideError`` and what derives from it;
- ``config``: every setting, from the environment, validated once (``load_config``);
- ``algorithms``: the one table of algorithms (RS256, PS256, ES256, EdDSA), each bound to
  one type of key; strict reading of fetched JWKs; the key files' formats;
- ``keystore``: the keys folder: key files, the key ring, atomic changes and their recovery;
- ``rotation``: gen.py's commands (create, next, promote, prune, list) on the keys folder;
- ``tokens``: strict parsing and every check of a token, in order (``verify_token``);
- ``keys``: where keys come from: a keys folder, one PEM file (and ``jwks_client``);
- ``jwks_client``: the hardened JWKS client (cache, rate limit, single flight, backoff);
- ``verifier``: ``Verifier``, a token in, claims out, with its caches;
- ``discovery``: configuration by issuer (the JWKS URL from the issuer's discovery document);
- ``signing``: ``Signer``, tokens exactly as sign.py makes them;
- ``inspection``: verify.py --inspect's report;
- ``cli``: the scripts' argument parser and exit-code mapping;
- ``flask``, ``wsgi``: ``JwtAuth`` and ``BearerAuth``;
- ``http``: JSON and RFC 6750 errors, serving limits, the development server, the JWKS
  app and its discovery document, and ``python -m jwt_guide.http.serve`` (make serve).
"""

from __future__ import annotations

from jwt_guide.errors import InvalidToken, JwtGuideError, KeysUnavailable, UsageError
from jwt_guide.signing import Signer
from jwt_guide.verifier import Verifier

__all__ = [
    "InvalidToken",
    "JwtGuideError",
    "KeysUnavailable",
    "Signer",
    "UsageError",
    "Verifier",
]
