"""Step 3 of the guide: verify the signed token with the public key.

``verify_token`` is the one verification function of the project: this script and
protected_server.py both call it. It accepts a token only if every check below holds, in
this order, and otherwise raises ``VerificationError`` naming the first check that failed:

1. size at most 8 KiB, exactly three base64url segments (canonical, unpadded), a JSON-object
   header without duplicate members                                        -> ``malformed``
2. header ``alg`` is exactly RS256, decided before any key is touched       -> ``algorithm``
3. no ``crit`` header parameter                            -> ``unsupported critical header``
4. RSASSA-PKCS1-v1_5 SHA-256 signature verifies with the given public key -> ``invalid signature``
5. the payload is a JSON object                                            -> ``malformed``
6. ``exp``, ``iat`` and ``iss`` present                              -> ``missing claim <name>``
7. ``exp``/``iat``/``nbf`` are numbers (not strings, not booleans)         -> ``malformed``
8. ``iss`` equals the configured issuer exactly                              -> ``issuer``
9. ``nbf`` and ``iat`` not in the future                                 -> ``not yet valid``
10. ``exp`` in the future                                                    -> ``expired``
11. at most ``max_age`` seconds old by ``iat`` (the guide's ``maxAge``)      -> ``too old``

Why not ``jwt.decode``: PyJWT accepts ``exp`` given as a string, ignores ``crit``, does not
refuse non-canonical base64url or duplicate JSON members, and its pure-Python segment checks
cost more than the RSA verification itself. Parsing and claim checks are done here; the
signature is checked by PyJWT's own RS256 algorithm object (which calls ``cryptography``).
Header parameters ``jku``, ``x5u``, ``jwk`` and ``x5c`` are never read.
"""

from __future__ import annotations

import argparse
import binascii
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm

from config import AppError, ArgumentParser, UsageError, load_config, parse_duration
from keystore import load_public_key

ALGORITHM = "RS256"  # the only algorithm accepted; never taken from the token
MAX_TOKEN_BYTES = 8192
DEFAULT_MAX_AGE = 24 * 60 * 60  # the guide's maxAge: '1d'
REQUIRED_CLAIMS = ("exp", "iat", "iss")
TIME_CLAIMS = ("exp", "iat", "nbf")

_RS256 = RSAAlgorithm(RSAAlgorithm.SHA256)
_TO_BASE64 = bytes.maketrans(b"-_", b"+/")
# The last character of a canonical segment leaves its unused low bits zero: 4 bits when
# len % 4 == 2, 2 bits when len % 4 == 3.
_CANONICAL_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}
_FLOAT_RANGE = 10**308
_ABSENT = object()
# Every token of an issuer carries the same header: each distinct one is decoded once.
_HEADER_CACHE: dict[str, Mapping[str, Any]] = {}
_HEADER_CACHE_SIZE = 256


class VerificationError(AppError):
    """Raised when a token is refused; ``reason`` names the check that failed."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Policy:
    """What a token must satisfy besides its signature."""

    issuer: str
    max_age: float = DEFAULT_MAX_AGE
    leeway: float = 0


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


def _shown(value: Any) -> str:
    # Values from the token appear in messages (and HTTP answers): bounded, on one line.
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _b64decode(segment: str, name: str) -> bytes:
    # Strict: only the base64url alphabet, no padding, and the unused low bits of the last
    # character must be zero, so every byte string has exactly one accepted encoding.
    # After "-_" become "+/", a2b_base64's strict mode refuses every byte outside the base64
    # alphabet (including non-ASCII and white space) and misplaced padding; "+", "/" and "="
    # must not be there to begin with. binascii directly: base64.urlsafe_b64decode's
    # checks cost more than the decoding itself.
    rest = len(segment) % 4
    if rest == 1 or not segment.isascii() or "+" in segment or "/" in segment or "=" in segment:
        raise VerificationError("malformed", f"{name} is not base64url")
    if rest and segment[-1] not in _CANONICAL_LAST[rest]:
        raise VerificationError("malformed", f"{name} is not canonical base64url")
    try:
        padded = segment.encode().translate(_TO_BASE64) + b"=="[: -rest % 4]
        return binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error:
        raise VerificationError("malformed", f"{name} is not base64url") from None


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

    Raises VerificationError (``malformed``) naming ``name`` otherwise.
    """
    try:
        text = raw.decode("utf-8")
        value = _DECODER.decode(text)
        if "\\u" in text:
            # A lone surrogate ("\ud800") is valid JSON but not Unicode text (RFC 7493 2.1);
            # it would break every later print or UTF-8 encoding of the claims.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        raise VerificationError("malformed", f"{name} is not valid JSON") from None
    if not isinstance(value, dict):
        raise VerificationError("malformed", f"{name} is not a JSON object")
    return value


def parse_token(token: str) -> ParsedToken:
    """Split and decode a compact JWS and check its header, without any key.

    Raises VerificationError (``malformed``, ``algorithm`` or ``unsupported critical
    header``) when the token cannot be an RS256 token this project accepts.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise VerificationError("malformed", f"token is larger than {MAX_TOKEN_BYTES} bytes")
    segments = token.split(".")
    if len(segments) != 3:
        raise VerificationError("malformed", f"{len(segments)} segments instead of 3")
    header_b64, payload_b64, signature_b64 = segments
    header = _HEADER_CACHE.get(header_b64)
    if header is None:
        header = MappingProxyType(json_object(_b64decode(header_b64, "header"), "header"))
        if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:  # bounded, whatever headers arrive
            _HEADER_CACHE.clear()
        _HEADER_CACHE[header_b64] = header
    payload = _b64decode(payload_b64, "payload")
    signature = _b64decode(signature_b64, "signature")
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise VerificationError("algorithm", f"{_shown(alg)} is not {ALGORITHM}")
    if "crit" in header:
        raise VerificationError("unsupported critical header", "crit is not supported")
    if "kid" in header and not isinstance(header["kid"], str):
        raise VerificationError("malformed", "kid is not a string")
    return ParsedToken(header, f"{header_b64}.{payload_b64}".encode(), payload, signature)


def _is_number(value: Any) -> bool:
    # JSON gives exactly int or float (bool is a subclass of int, so: type, not isinstance).
    kind = type(value)
    if kind is int:
        return bool(-_FLOAT_RANGE < value < _FLOAT_RANGE)  # beyond: no usable NumericDate
    return kind is float and math.isfinite(value)


def claim_failures(
    claims: dict[str, Any], policy: Policy, now: float
) -> Iterator[VerificationError]:
    """Yield every claim check that fails, in the order of the module docstring."""
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            yield VerificationError(f"missing claim {name}")
    exp, iat, nbf = (claims.get(name, _ABSENT) for name in TIME_CLAIMS)
    for name, value in zip(TIME_CLAIMS, (exp, iat, nbf), strict=True):
        if value is not _ABSENT and not _is_number(value):
            yield VerificationError("malformed", f"{name} is not a NumericDate")
    if "iss" in claims and claims["iss"] != policy.issuer:
        yield VerificationError("issuer", f"{_shown(claims['iss'])} is not {policy.issuer!r}")
    exp, iat, nbf = (v if _is_number(v) else None for v in (exp, iat, nbf))
    if nbf is not None and nbf > now + policy.leeway:
        yield VerificationError("not yet valid", f"nbf is {nbf - now:.0f}s in the future")
    if iat is not None and iat > now + policy.leeway:
        yield VerificationError("not yet valid", f"iat is {iat - now:.0f}s in the future")
    if exp is not None and now >= exp + policy.leeway:
        yield VerificationError("expired", f"exp passed {now - exp:.0f}s ago")
    if iat is not None and now >= iat + policy.max_age + policy.leeway:
        age = f"issued {now - iat:.0f}s ago, max age {policy.max_age:.0f}s"
        yield VerificationError("too old", age)


def signature_is_valid(parsed: ParsedToken, key: RSAPublicKey) -> bool:
    """Whether the token's RS256 signature verifies with ``key``."""
    return _RS256.verify(parsed.signing_input, key, parsed.signature)


def verify_token(
    token: str | ParsedToken, key: RSAPublicKey, policy: Policy, now: float | None = None
) -> dict[str, Any]:
    """Verify ``token`` with ``key`` and return its claims.

    Raises VerificationError naming the first check that failed (see the module docstring).
    """
    parsed = parse_token(token) if isinstance(token, str) else token
    if not signature_is_valid(parsed, key):
        raise VerificationError("invalid signature")
    claims = json_object(parsed.payload, "payload")
    for failure in claim_failures(claims, policy, time.time() if now is None else now):
        raise failure
    return claims


def _read_token(args: argparse.Namespace, default: Path) -> str:
    if args.token is not None:
        return str(args.token).strip()
    path = Path(args.token_file) if args.token_file else default
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UsageError(f"no token at {path}: run sign.py first") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read token {path}: {e}") from None


def _when(value: Any, now: float) -> str:
    if not _is_number(value):
        return "(not a NumericDate)"
    try:
        date = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return "(out of range)"
    delta = value - now
    return f"{date} ({'in ' if delta >= 0 else ''}{abs(delta):.0f}s{'' if delta >= 0 else ' ago'})"


def inspect(token: str, key: RSAPublicKey, policy: Policy, now: float) -> list[str]:
    """Describe a token like jwt.io does, then list every check that fails."""
    lines = ["NOT VERIFIED: header and claims as they stand in the token"]
    parse_error: VerificationError | None = None
    try:
        parsed = parse_token(token)
    except VerificationError as e:
        parse_error = e
        parsed = None
    segments = token.split(".")
    for name, segment in zip(("header", "claims"), segments[:2], strict=False):
        try:
            value = json_object(_b64decode(segment, name), name)
            lines.append(f"{name}: {json.dumps(value, ensure_ascii=False)}")
        except VerificationError as e:
            lines.append(f"{name}: {e}")
            value = {}
        if name == "claims":
            lines += [f"  {c}: {_when(value[c], now)}" for c in TIME_CLAIMS if c in value]
    if parsed is None:
        lines.append("signature: not checked, the token is refused before any key is used")
        failures = [str(parse_error)]
    else:
        valid = signature_is_valid(parsed, key)
        lines.append(f"signature: {'verified' if valid else 'INVALID'} with the public key")
        failures = [] if valid else ["invalid signature"]
        try:
            claims = json_object(parsed.payload, "payload")
            failures += [str(f) for f in claim_failures(claims, policy, now)]
        except VerificationError as e:
            failures.append(str(e))
    lines.append("checks: all pass" if not failures else "checks failing: " + "; ".join(failures))
    return lines


def _seconds(text: str) -> float:
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 3."""
    parser = ArgumentParser(
        prog="verify.py",
        description="Step 3: verify the RS256 token with the public key and print its claims.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--token", help="the token itself (default: read token.txt)")
    source.add_argument(
        "--token-file", metavar="PATH",
        help="file holding the token (default: $JWT_KEYS_DIR/token.txt)",
    )  # fmt: skip
    parser.add_argument(
        "--public-key", metavar="PATH",
        help="SPKI PEM public key (default: $JWT_KEYS_DIR/.public.key.pem)",
    )  # fmt: skip
    parser.add_argument(
        "--max-age", type=_seconds, default=DEFAULT_MAX_AGE, metavar="DURATION",
        help="maximum age by iat, in seconds or like 15m, 1d (default: 1d, the guide's maxAge)",
    )  # fmt: skip
    parser.add_argument(
        "--leeway", type=_seconds, default=0, metavar="SECONDS",
        help="clock skew allowed on exp, nbf, iat and max age (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--inspect", action="store_true",
        help="show header and claims (NOT verified), dates, and every check that fails",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None, now: Callable[[], float] = time.time) -> int:
    """Run step 3; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config()
        token = _read_token(args, config.token_path)
        key = load_public_key(Path(args.public_key) if args.public_key else config.public_key_path)
        policy = Policy(config.issuer, args.max_age, args.leeway)
        if args.inspect:
            lines = inspect(token, key, policy, now())
            print("\n".join(lines))
            return 0 if lines[-1] == "checks: all pass" else 1
        claims = verify_token(token, key, policy, now())
    except AppError as e:
        print(f"verify: {e}", file=sys.stderr)
        return e.exit_code
    print(f"Decoded token data {json.dumps(claims, ensure_ascii=False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
