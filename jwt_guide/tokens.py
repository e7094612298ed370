"""Token parsing and checks: the one verification of the project, with any key source.

``verify_token`` accepts a token only if every check below holds, in this order, and
otherwise raises ``InvalidToken`` naming the first check that failed:

1. size at most 8 KiB, exactly three base64url segments (canonical, unpadded), a JSON-object
   header without duplicate members                                        -> ``malformed``
2. header ``alg`` is one of RS256, PS256, ES256, EdDSA (``none`` and HS256 never are),
   decided before any key is touched                                       -> ``algorithm``
3. no ``crit`` header parameter                            -> ``unsupported critical header``
4. (choosing the key, by the key source) ``kid`` is a string naming a published key
                                                               -> ``malformed``, ``unknown kid``
5. header ``alg`` is exactly the algorithm the key is bound to (RFC 8725 3.1), before any
   signature check                                                         -> ``algorithm``
6. the signature verifies with the key by that algorithm (ES256: JOSE's raw r||s only, r
   and s in [1, n-1])                                                -> ``invalid signature``
7. the payload is a JSON object                                            -> ``malformed``
8. ``exp``, ``iat`` and ``iss`` present                              -> ``missing claim <name>``
9. ``exp``/``iat``/``nbf`` are numbers (not strings, not booleans)         -> ``malformed``
10. ``iss`` equals the configured issuer exactly                             -> ``issuer``
11. with an audience configured, ``aud`` is it or an array of strings holding it; without
    one, there is no ``aud`` (RFC 7519 4.1.3: the token is meant for someone else)
                                                                            -> ``audience``
12. ``nbf`` and ``iat`` not in the future                                -> ``not yet valid``
13. ``exp`` in the future                                                    -> ``expired``
14. at most ``max_age`` seconds old by ``iat`` (the guide's ``maxAge``)      -> ``too old``

Why not ``jwt.decode``: PyJWT accepts ``exp`` given as a string, ignores ``crit``, does not
refuse non-canonical base64url or duplicate JSON members, and its pure-Python segment checks
cost more than the RSA verification itself. Parsing and claim checks are done here; the
signature is checked by the key's algorithm in jwt_guide.algorithms (PyJWT's algorithm
objects over ``cryptography``).
Header parameters ``jku``, ``x5u``, ``jwk`` and ``x5c`` are never read.

Nothing here keeps state: the cache of checked headers is a ``HeaderCache`` that its owner
(a ``Verifier``) passes to ``parse_token``.
"""

from __future__ import annotations

import binascii
import json
import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from jwt_guide.algorithms import ALGORITHMS, Algorithm, PublicKey, algorithm_for_key
from jwt_guide.config import MAX_TOKEN_AGE
from jwt_guide.errors import InvalidToken

MAX_TOKEN_BYTES = 8192
DEFAULT_MAX_AGE = MAX_TOKEN_AGE  # the guide's maxAge: '1d'
REQUIRED_CLAIMS = ("exp", "iat", "iss")
TIME_CLAIMS = ("exp", "iat", "nbf")

_TO_BASE64 = bytes.maketrans(b"-_", b"+/")
# The last character of a canonical segment leaves its unused low bits zero: 4 bits when
# len % 4 == 2, 2 bits when len % 4 == 3.
_CANONICAL_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}
_FLOAT_RANGE = 10**308
_ABSENT = object()


@dataclass(frozen=True)
class Policy:
    """What a token must satisfy besides its signature.

    ``audience``: the ``aud`` a token must name; None: a token carrying ``aud`` is refused.
    """

    issuer: str
    max_age: float = DEFAULT_MAX_AGE
    leeway: float = 0
    audience: str | None = None


class HeaderCache:
    """Decoded headers that passed every header check, keyed by their base64url segment.

    Every token of an issuer carries the same header, so each distinct one is decoded and
    checked once. A refused header is never stored, and the cache is bounded both by count
    and by bytes of header text: when either bound would be passed, it starts over.
    """

    def __init__(self, max_entries: int = 256, max_bytes: int = 64 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: dict[str, Mapping[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, segment: str) -> Mapping[str, Any] | None:
        """The checked header of ``segment``, if it is cached."""
        return self._entries.get(segment)  # one dict lookup: safe without the lock

    def put(self, segment: str, header: Mapping[str, Any]) -> None:
        """Remember a header that passed every check (read-only: it is shared)."""
        size = len(segment)
        if size > self.max_bytes:
            return
        with self._lock:
            if segment in self._entries:
                return
            if len(self._entries) >= self.max_entries or self.bytes + size > self.max_bytes:
                self._entries.clear()
                self.bytes = 0
            self._entries[segment] = header
            self.bytes += size

    def __len__(self) -> int:
        return len(self._entries)


class ParsedToken(NamedTuple):
    """A token split and decoded, its signature NOT yet verified."""

    header: Mapping[str, Any]
    signing_input: bytes
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> str | None:
        """The header's ``kid``, checked to be a string when present."""
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def shown(value: Any) -> str:
    """``value`` as it may appear in a message: its repr, bounded, on one line."""
    # Values from the token appear in messages (and HTTP answers).
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def b64decode(segment: str, name: str) -> bytes:
    """Decode one strict base64url segment; raises InvalidToken (``malformed``) naming it."""
    # Strict: only the base64url alphabet, no padding, and the unused low bits of the last
    # character must be zero, so every byte string has exactly one accepted encoding.
    # After "-_" become "+/", a2b_base64's strict mode refuses every byte outside the base64
    # alphabet (including non-ASCII and white space) and misplaced padding; "+", "/" and "="
    # must not be there to begin with. binascii directly: base64.urlsafe_b64decode's
    # checks cost more than the decoding itself.
    rest = len(segment) % 4
    if rest == 1 or not segment.isascii() or "+" in segment or "/" in segment or "=" in segment:
        raise InvalidToken("malformed", f"{name} is not base64url")
    if rest and segment[-1] not in _CANONICAL_LAST[rest]:
        raise InvalidToken("malformed", f"{name} is not canonical base64url")
    try:
        padded = segment.encode().translate(_TO_BASE64) + b"=="[: -rest % 4]
        return binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error:
        raise InvalidToken("malformed", f"{name} is not base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member")
    return obj


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e400 parses as infinity, which would be printed back as the non-JSON "Infinity".
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


# One decoder for every token: json.loads with hooks builds a new JSONDecoder on each call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, parse_float=_finite
)


def json_object(raw: bytes, name: str) -> dict[str, Any]:
    """Parse ``raw`` as a strict JSON object: UTF-8, no duplicate members, no NaN or
    Infinity, no number beyond the float range, no lone surrogate.

    Raises InvalidToken (``malformed``) naming ``name`` otherwise.
    """
    try:
        text = raw.decode("utf-8")
        value = _DECODER.decode(text)
        if "\\u" in text:
            # A lone surrogate ("\ud800") is valid JSON but not Unicode text (RFC 7493 2.1);
            # it would break every later print or UTF-8 encoding of the claims.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        raise InvalidToken("malformed", f"{name} is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed", f"{name} is not a JSON object")
    return value


def _check_header(header: Mapping[str, Any]) -> None:
    alg = header.get("alg")
    # type() first: a list or an object as alg is not hashable, so `in` would raise.
    if type(alg) is not str or alg not in ALGORITHMS:
        raise InvalidToken(
            "algorithm", f"token has {shown(alg)}, accepted: {', '.join(ALGORITHMS)} "
            "(each key is bound to one)",
        )
    if "crit" in header:
        raise InvalidToken("unsupported critical header", "crit is not supported")
    if "kid" in header and not isinstance(header["kid"], str):
        raise InvalidToken("malformed", "kid is not a string")


def parse_token(token: str, headers: HeaderCache | None = None) -> ParsedToken:
    """Split and decode a compact JWS and check its header, without any key.

    ``headers``, if given, remembers each header that passed its checks, so that the next
    token with the same header segment skips decoding and checking it. Raises InvalidToken
    (``malformed``, ``algorithm`` or ``unsupported critical header``) when the token cannot
    be a token this project accepts, whatever the key.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("malformed", f"token is larger than {MAX_TOKEN_BYTES} bytes")
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidToken(
            "malformed", f"a JWT has 3 dot-separated segments, this has {len(segments)}"
        )
    header_b64, payload_b64, signature_b64 = segments
    header = headers.get(header_b64) if headers is not None else None
    checked = header is not None
    if header is None:
        header = MappingProxyType(json_object(b64decode(header_b64, "header"), "header"))
    payload = b64decode(payload_b64, "payload")
    signature = b64decode(signature_b64, "signature")
    if not checked:
        _check_header(header)
        if headers is not None:
            # Only now: a header that fails a check never takes memory (issue 8, item 12).
            headers.put(header_b64, header)
    return ParsedToken(header, f"{header_b64}.{payload_b64}".encode(), payload, signature)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a usable NumericDate: an int or a finite float, not a bool."""
    # JSON gives exactly int or float (bool is a subclass of int, so: type, not isinstance).
    kind = type(value)
    if kind is int:
        return bool(-_FLOAT_RANGE < value < _FLOAT_RANGE)  # beyond: no usable NumericDate
    return kind is float and math.isfinite(value)


def _audience_failure(aud: Any, audience: str | None) -> InvalidToken | None:
    if audience is None:
        if aud is _ABSENT:
            return None
        return InvalidToken(
            "audience",
            f"token has aud {shown(aud)} but no audience is configured (JWT_AUDIENCE): "
            "it is meant for another service",
        )
    if aud is _ABSENT:
        return InvalidToken("audience", f"token has no aud, expected {audience!r}")
    members = aud if type(aud) is list else [aud]
    if not all(type(member) is str for member in members):
        return InvalidToken(
            "audience", f"aud is not a string or an array of strings: {shown(aud)}"
        )
    if audience not in members:
        return InvalidToken("audience", f"token has {shown(aud)}, expected {audience!r}")
    return None


def claim_failures(
    claims: dict[str, Any], policy: Policy, now: float
) -> Iterator[InvalidToken]:
    """Yield every claim check that fails, in the order of the module docstring."""
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            yield InvalidToken(f"missing claim {name}")
    exp, iat, nbf = (claims.get(name, _ABSENT) for name in TIME_CLAIMS)
    for name, value in zip(TIME_CLAIMS, (exp, iat, nbf), strict=True):
        if value is not _ABSENT and not is_number(value):
            yield InvalidToken("malformed", f"{name} is not a NumericDate")
    if "iss" in claims and claims["iss"] != policy.issuer:
        yield InvalidToken(
            "issuer", f"token has {shown(claims['iss'])}, expected {policy.issuer!r}"
        )
    audience = _audience_failure(claims.get("aud", _ABSENT), policy.audience)
    if audience is not None:
        yield audience
    exp, iat, nbf = (v if is_number(v) else None for v in (exp, iat, nbf))
    if nbf is not None and nbf > now + policy.leeway:
        yield InvalidToken("not yet valid", f"nbf is {nbf - now:.0f}s in the future")
    if iat is not None and iat > now + policy.leeway:
        yield InvalidToken("not yet valid", f"iat is {iat - now:.0f}s in the future")
    if exp is not None and now >= exp + policy.leeway:
        yield InvalidToken("expired", f"exp passed {now - exp:.0f}s ago")
    if iat is not None and now >= iat + policy.max_age + policy.leeway:
        age = f"issued {now - iat:.0f}s ago, max age {policy.max_age:.0f}s"
        yield InvalidToken("too old", age)


def check_algorithm(parsed: ParsedToken, algorithm: Algorithm) -> None:
    """Raises InvalidToken (``algorithm``) unless the token's ``alg`` is exactly the one its
    key is bound to: the key decides, never the token (RFC 8725 3.1)."""
    alg = parsed.header["alg"]  # parse_token checked that it is one of ALGORITHMS
    if alg != algorithm.name:
        raise InvalidToken(
            "algorithm", f"token has {shown(alg)}, its key is bound to {algorithm.name}"
        )


def signature_is_valid(parsed: ParsedToken, key: PublicKey, algorithm: Algorithm) -> bool:
    """Whether the token's signature verifies with ``key`` by ``algorithm`` (the key's, see
    ``check_algorithm``). Raises TypeError if the algorithm does not fit the key (a bug)."""
    return algorithm.verify(key, parsed.signing_input, parsed.signature)


def verify_token(
    token: str | ParsedToken,
    key: PublicKey,
    policy: Policy,
    now: float | None = None,
    *,
    algorithm: Algorithm | None = None,
) -> dict[str, Any]:
    """Verify ``token`` with ``key``, bound to ``algorithm``, and return its claims.

    ``algorithm`` None: the default of the key's type (RS256 for RSA, never PS256; ES256,
    EdDSA). Raises InvalidToken naming the first check that failed (see the module
    docstring); KeyRejected for a key of a type not supported, TypeError for an
    ``algorithm`` that does not fit the key (a bug in the caller).
    """
    parsed = parse_token(token) if isinstance(token, str) else token
    if algorithm is None:
        algorithm = algorithm_for_key(key)
    check_algorithm(parsed, algorithm)
    if not signature_is_valid(parsed, key, algorithm):
        raise InvalidToken("invalid signature")
    claims = json_object(parsed.payload, "payload")
    for failure in claim_failures(claims, policy, time.time() if now is None else now):
        raise failure
    return claims


