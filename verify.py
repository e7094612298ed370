"""Step 3 of the guide: verify the signed token with the public key.

``verify_token`` is the one verification function of the project: this script and
protected_server.py both call it. It accepts a token only if every check below holds, in
this order, and otherwise raises ``VerificationError`` naming the first check that failed:

1. size at most 8 KiB, exactly three base64url segments (canonical, unpadded), a JSON-object
   header without duplicate members                                        -> ``malformed``
2. header ``alg`` is exactly RS256, decided before any key is touched       -> ``algorithm``
3. no ``crit`` header parameter                            -> ``unsupported critical header``
4. (choosing the key, by the caller) ``kid`` is a string naming a published key
                                                               -> ``malformed``, ``unknown kid``
5. RSASSA-PKCS1-v1_5 SHA-256 signature verifies with the given public key -> ``invalid signature``
6. the payload is a JSON object                                            -> ``malformed``
7. ``exp``, ``iat`` and ``iss`` present                              -> ``missing claim <name>``
8. ``exp``/``iat``/``nbf`` are numbers (not strings, not booleans)         -> ``malformed``
9. ``iss`` equals the configured issuer exactly                              -> ``issuer``
10. with an audience configured, ``aud`` is it or an array of strings holding it; without
    one, there is no ``aud`` (RFC 7519 4.1.3: the token is meant for someone else)
                                                                            -> ``audience``
11. ``nbf`` and ``iat`` not in the future                                -> ``not yet valid``
12. ``exp`` in the future                                                    -> ``expired``
13. at most ``max_age`` seconds old by ``iat`` (the guide's ``maxAge``)      -> ``too old``

verify.py chooses the key as the servers do: by the token's ``kid`` among the keys folder's
published keys (next, current, retired), or the one key given with ``--public-key``.

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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm

from config import (
    MAX_TOKEN_AGE,
    PUBLIC_KEY_FILE,
    AppError,
    ArgumentParser,
    UsageError,
    load_config,
    parse_duration,
)
from keystore import KEYRING_FILE, public_key_from_pem, read_keyring

ALGORITHM = "RS256"  # the only algorithm accepted; never taken from the token
MAX_TOKEN_BYTES = 8192
DEFAULT_MAX_AGE = MAX_TOKEN_AGE  # the guide's maxAge: '1d'
REQUIRED_CLAIMS = ("exp", "iat", "iss")
TIME_CLAIMS = ("exp", "iat", "nbf")

_RS256 = RSAAlgorithm(RSAAlgorithm.SHA256)
_TO_BASE64 = bytes.maketrans(b"-_", b"+/")
# The last character of a canonical segment leaves its unused low bits zero: 4 bits when
# len % 4 == 2, 2 bits when len % 4 == 3.
_CANONICAL_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}
_FLOAT_RANGE = 10**308
_ABSENT = object()


class VerificationError(AppError):
    """Raised when a token is refused; ``reason`` names the check that failed."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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


_HEADERS = HeaderCache()


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


def _check_header(header: Mapping[str, Any]) -> None:
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise VerificationError(
            "algorithm", f"token has {_shown(alg)}, only {ALGORITHM} is accepted"
        )
    if "crit" in header:
        raise VerificationError("unsupported critical header", "crit is not supported")
    if "kid" in header and not isinstance(header["kid"], str):
        raise VerificationError("malformed", "kid is not a string")


def parse_token(token: str) -> ParsedToken:
    """Split and decode a compact JWS and check its header, without any key.

    Raises VerificationError (``malformed``, ``algorithm`` or ``unsupported critical
    header``) when the token cannot be an RS256 token this project accepts.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise VerificationError("malformed", f"token is larger than {MAX_TOKEN_BYTES} bytes")
    segments = token.split(".")
    if len(segments) != 3:
        raise VerificationError(
            "malformed", f"a JWT has 3 dot-separated segments, this has {len(segments)}"
        )
    header_b64, payload_b64, signature_b64 = segments
    header = _HEADERS.get(header_b64)
    checked = header is not None
    if header is None:
        header = MappingProxyType(json_object(_b64decode(header_b64, "header"), "header"))
    payload = _b64decode(payload_b64, "payload")
    signature = _b64decode(signature_b64, "signature")
    if not checked:
        _check_header(header)
        # Only now: a header that fails a check never takes memory (issue 8, item 12).
        _HEADERS.put(header_b64, header)
    return ParsedToken(header, f"{header_b64}.{payload_b64}".encode(), payload, signature)


def _is_number(value: Any) -> bool:
    # JSON gives exactly int or float (bool is a subclass of int, so: type, not isinstance).
    kind = type(value)
    if kind is int:
        return bool(-_FLOAT_RANGE < value < _FLOAT_RANGE)  # beyond: no usable NumericDate
    return kind is float and math.isfinite(value)


def _audience_failure(aud: Any, audience: str | None) -> VerificationError | None:
    if audience is None:
        if aud is _ABSENT:
            return None
        return VerificationError(
            "audience",
            f"token has aud {_shown(aud)} but no audience is configured (JWT_AUDIENCE): "
            "it is meant for another service",
        )
    if aud is _ABSENT:
        return VerificationError("audience", f"token has no aud, expected {audience!r}")
    members = aud if type(aud) is list else [aud]
    if not all(type(member) is str for member in members):
        return VerificationError(
            "audience", f"aud is not a string or an array of strings: {_shown(aud)}"
        )
    if audience not in members:
        return VerificationError("audience", f"token has {_shown(aud)}, expected {audience!r}")
    return None


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
        yield VerificationError(
            "issuer", f"token has {_shown(claims['iss'])}, expected {policy.issuer!r}"
        )
    audience = _audience_failure(claims.get("aud", _ABSENT), policy.audience)
    if audience is not None:
        yield audience
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


KeySource = Callable[[ParsedToken], RSAPublicKey]


def folder_keys(keys_dir: Path, default_kid: str) -> KeySource:
    """A key source choosing by the token's ``kid`` among the folder's published keys (next,
    current and retired), as the servers choose from the JWKS.

    It raises VerificationError: ``unknown kid``, or ``malformed`` for a token without
    ``kid``, except in a folder holding only the guide's two files, where the current key
    (whose kid is ``default_kid``) is the only one. Raises UsageError if the folder has no
    public key, AppError if a key or the key ring cannot be read.
    """
    ring = read_keyring(keys_dir, default_kid)
    current = ring.find("current")
    if current is None:
        raise UsageError(f"no public key at {keys_dir / PUBLIC_KEY_FILE}: run gen.py first")
    keys = {
        r.kid: public_key_from_pem(r.public_pem.encode(), f"key {r.kid!r} of {keys_dir}")
        for r in ring.records
    }
    guide_only = not (keys_dir / KEYRING_FILE).exists()

    def choose(parsed: ParsedToken) -> RSAPublicKey:
        if parsed.kid is None:
            if guide_only:
                return keys[current.kid]
            raise VerificationError("malformed", "the token has no kid")
        key = keys.get(parsed.kid)
        if key is None:
            raise VerificationError(
                "unknown kid", f"no key of {keys_dir} has kid {_shown(parsed.kid)}"
            )
        return key

    return choose


def file_key(path: Path) -> KeySource:
    """A key source that always gives the RSA public key of the PEM file ``path``.

    Raises UsageError if the file does not exist, AppError if it holds no RSA public key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no public key at {path}: the file does not exist") from None
    except OSError as e:
        raise AppError(f"cannot read public key {path}: {e.strerror}") from None
    key = public_key_from_pem(data, str(path))
    return lambda parsed: key


def _read_token(args: argparse.Namespace, default: Path) -> str:
    if args.token is not None:
        return str(args.token).strip()
    path = Path(args.token_file).absolute() if args.token_file else default
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        fix = "the file does not exist" if args.token_file else "run sign.py first"
        raise UsageError(f"no token at {path}: {fix}") from None
    except OSError as e:
        raise UsageError(f"cannot read token {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read token {path}: it is not UTF-8 text") from None


def _when(value: Any, now: float) -> str:
    if not _is_number(value):
        return "(not a NumericDate)"
    try:
        date = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return "(out of range)"
    delta = value - now
    return f"{date} ({'in ' if delta >= 0 else ''}{abs(delta):.0f}s{'' if delta >= 0 else ' ago'})"


def inspect(token: str, keys: KeySource, policy: Policy, now: float) -> list[str]:
    """Describe a token like jwt.io does (header and claims as decoded, before any check),
    then give the result of each check; the last line says whether all pass."""
    lines = ["Decoded, NOT VERIFIED yet: header and claims as the token states them"]
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
    lines.append("Verification:")
    if parsed is None:
        lines.append("signature: not checked, the token is refused before any key is used")
        failures = [str(parse_error)]
    else:
        failures = _signature_check(parsed, keys, lines)
        try:
            claims = json_object(parsed.payload, "payload")
            failures += [str(f) for f in claim_failures(claims, policy, now)]
        except VerificationError as e:
            failures.append(str(e))
    lines.append("checks: all pass" if not failures else "checks failing: " + "; ".join(failures))
    return lines


def _signature_check(parsed: ParsedToken, keys: KeySource, lines: list[str]) -> list[str]:
    try:
        key = keys(parsed)
    except VerificationError as e:
        lines.append("signature: not checked, no key for this token")
        return [str(e)]
    valid = signature_is_valid(parsed, key)
    lines.append(f"signature: {'verified' if valid else 'INVALID'} with the public key")
    return [] if valid else ["invalid signature"]


def _seconds(text: str) -> float:
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def audience_argument(text: str) -> str:
    """An ``--audience`` value (as JWT_AUDIENCE: printable text, not empty).

    Raises argparse.ArgumentTypeError otherwise.
    """
    if not text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError("an audience is printable text, not empty")
    return text


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
        help="SPKI PEM public key to verify with, whatever the token's kid (default: the key "
        "of the token's kid among the published keys of $JWT_KEYS_DIR, else keys/)",
    )  # fmt: skip
    parser.add_argument(
        "--audience", type=audience_argument, metavar="AUD",
        help="the aud the token must name (default: $JWT_AUDIENCE; when neither is set, a "
        "token carrying aud is refused)",
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
        help="show header and claims as decoded (before verification) with their dates, "
        "then the result of every check",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None, now: Callable[[], float] = time.time) -> int:
    """Run step 3; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
        config = load_config()
        token = _read_token(args, config.token_path)
        keys = (
            file_key(Path(args.public_key).absolute())
            if args.public_key
            else folder_keys(config.keys_dir, config.kid)
        )
        audience = config.audience if args.audience is None else args.audience
        policy = Policy(config.issuer, args.max_age, args.leeway, audience)
        if args.inspect:
            lines = inspect(token, keys, policy, now())
            print("\n".join(lines))
            return 0 if lines[-1] == "checks: all pass" else 1
        parsed = parse_token(token)
        claims = verify_token(parsed, keys(parsed), policy, now())
    except AppError as e:
        print(f"verify: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("verify: interrupted", file=sys.stderr)
        return 130
    print(f"Decoded token data {json.dumps(claims, ensure_ascii=False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
