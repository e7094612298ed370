"""``Signer``: tokens exactly as the guide's step 2 (sign.py) makes them.

The header is ``{"alg": <the key's algorithm>, "typ": "JWT", "kid": <kid of the current
key>}`` (RS256 for the guide's key); the claims are the payload followed by ``iat`` (now),
``exp`` (``iat`` + lifetime) and ``iss``, then ``aud`` when an audience is configured.

The compact JWS is assembled here, byte for byte as PyJWT's ``jwt.encode`` writes it
(header members sorted, compact JSON; the tests compare both), because ``jwt.encode``
re-checks its arguments and the key and re-encodes the header on every call: 3 to 5 us a
token here, which put ES256 and EdDSA signing near 0.8x of raw ``cryptography`` (``make
bench``; the target is 0.9x), while the header of a Signer never changes.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jwt_guide.algorithms import PrivateKey, algorithm_for_key
from jwt_guide.config import Config, load_config
from jwt_guide.errors import UsageError
from jwt_guide.keystore import load_signing_key
from jwt_guide.tokens import DEFAULT_MAX_AGE

RESERVED_CLAIMS = ("iat", "exp", "iss", "aud")


def make_claims(
    payload: Mapping[str, Any], issuer: str, expires_in: int, now: int, audience: str | None = None
) -> dict[str, Any]:
    """The payload followed by ``iat``, ``exp`` and ``iss``, then ``aud`` if ``audience``.

    Raises UsageError if the payload sets one of those itself.
    """
    reserved = [name for name in RESERVED_CLAIMS if name in payload]
    if reserved:
        raise UsageError(
            f"--payload may not set {', '.join(reserved)}: sign.py sets iat, exp and iss, "
            "and aud from --audience or JWT_AUDIENCE"
        )
    claims = {**payload, "iat": now, "exp": now + expires_in, "iss": issuer}
    if audience is not None:
        claims["aud"] = audience
    return claims


def check_lifetime(seconds: int, source: str) -> int:
    """``seconds`` if it is within the verifiers' maximum token age.

    Raises ValueError naming ``source`` otherwise: such a token is refused everywhere as too
    old before its ``exp``.
    """
    if seconds > DEFAULT_MAX_AGE:
        raise ValueError(
            f"{source} is longer than the maximum token age of 1 day: every verifier would "
            "refuse the token as too old before it expires"
        )
    return seconds


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _compact_json(value: Mapping[str, Any], sort_keys: bool = False) -> bytes:
    # What jwt.encode writes: compact separators, ASCII escapes; it sorts the header only.
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys).encode()


class Signer:
    """Signs tokens with one private key under its ``kid``, by the algorithm the key is bound
    to; thread-safe.

    ``alg`` None: the default of the key's type (RS256 for RSA, ES256 for EC P-256, EdDSA
    for Ed25519); PS256 only when given. ``issuer``, ``expires_in`` (seconds) and
    ``audience`` (None: no ``aud``) apply to every token unless ``sign`` overrides the last
    two. Build one with ``from_keys_dir``. Raises KeyRejected if the key is not supported or
    ``alg`` does not fit it.
    """

    def __init__(
        self,
        key: PrivateKey,
        kid: str,
        *,
        issuer: str,
        expires_in: int,
        audience: str | None = None,
        clock: Callable[[], float] | None = None,
        alg: str | None = None,
    ) -> None:
        self._key = key
        self._algorithm = algorithm_for_key(key, alg)
        self.alg = self._algorithm.name
        self.kid = kid
        self.issuer = issuer
        self.expires_in = expires_in
        self.audience = audience
        self.clock = clock or time.time
        self._header = _b64(_compact_json({"alg": self.alg, "typ": "JWT", "kid": kid}, True))

    @classmethod
    def from_keys_dir(
        cls,
        path: str | Path | None = None,
        passphrase: str | None = None,
        *,
        config: Config | None = None,
    ) -> Signer:
        """A Signer with the current key of the keys folder ``path``, its ``kid`` and the
        algorithm it is bound to.

        Unset values come from ``config``, else the environment: JWT_KEYS_DIR,
        JWT_PASSPHRASE, JWT_ISSUER, JWT_EXPIRES_IN, JWT_AUDIENCE, JWT_KID (the ``kid`` of a
        folder holding only the guide's two files). Raises UsageError if there is no
        private key (``run gen.py first``) or a setting is invalid, JwtGuideError if the
        passphrase does not open the key. No message holds the passphrase.
        """
        config = config or load_config()
        keys_dir = config.keys_dir if path is None else Path(path).absolute()
        secret = config.passphrase if passphrase is None else passphrase
        # The kid and alg are the ones recorded for this very key, found by its thumbprint.
        key, kid, algorithm = load_signing_key(keys_dir, secret, config.kid)
        return cls(
            key, kid, issuer=config.issuer, expires_in=config.expires_in,
            audience=config.audience, alg=algorithm.name,
        )  # fmt: skip

    def sign(
        self,
        payload: Mapping[str, Any],
        expires_in: int | None = None,
        audience: str | None = None,
    ) -> str:
        """A compact JWT of ``payload`` plus ``iat``, ``exp``, ``iss`` (and ``aud``).

        ``expires_in`` (seconds) and ``audience`` override the Signer's for this token.
        Raises UsageError if the payload sets a claim the Signer sets, or the lifetime is
        over the verifiers' maximum age of 1 day (the token would be refused as too old).
        """
        lifetime = self.expires_in if expires_in is None else expires_in
        try:
            check_lifetime(lifetime, f"a lifetime of {lifetime}s")
        except ValueError as e:
            raise UsageError(str(e)) from None
        if lifetime < 1:
            raise UsageError(f"a lifetime of {lifetime}s is not positive")
        aud = self.audience if audience is None else audience
        claims = make_claims(payload, self.issuer, lifetime, int(self.clock()), aud)
        signing_input = self._header + b"." + _b64(_compact_json(claims))
        signature = self._algorithm.sign(self._key, signing_input)
        return (signing_input + b"." + _b64(signature)).decode("ascii")
