"""verify.py --inspect: the guide's manual check on jwt.io, done locally.

The header and the claims are shown as the token states them, NOT verified, with ``iat``,
``exp`` and ``nbf`` also as UTC dates and time left; then whether the signature verifies
with the public key, and which checks would fail (the same checks as ``verify_token``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from jwt_guide.errors import InvalidToken
from jwt_guide.keys import KeySource
from jwt_guide.tokens import (
    TIME_CLAIMS,
    ParsedToken,
    Policy,
    b64decode,
    check_algorithm,
    claim_failures,
    is_number,
    json_object,
    parse_token,
    signature_is_valid,
)

ALL_CHECKS_OK = "checks: all pass"


def _when(value: Any, now: float) -> str:
    if not is_number(value):
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
    parse_error: InvalidToken | None = None
    try:
        parsed = parse_token(token)
    except InvalidToken as e:
        parse_error = e
        parsed = None
    segments = token.split(".")
    for name, segment in zip(("header", "claims"), segments[:2], strict=False):
        try:
            value = json_object(b64decode(segment, name), name)
            lines.append(f"{name}: {json.dumps(value, ensure_ascii=False)}")
        except InvalidToken as e:
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
        except InvalidToken as e:
            failures.append(str(e))
    lines.append(ALL_CHECKS_OK if not failures else "checks failing: " + "; ".join(failures))
    return lines


def _signature_check(parsed: ParsedToken, keys: KeySource, lines: list[str]) -> list[str]:
    try:
        key = keys.key_for(parsed.kid)
    except InvalidToken as e:
        lines.append("signature: not checked, no key for this token")
        return [str(e)]
    try:
        check_algorithm(parsed, key.algorithm)
    except InvalidToken as e:
        lines.append(f"signature: not checked, the key is bound to {key.alg}")
        return [str(e)]
    valid = signature_is_valid(parsed, key.key, key.algorithm)
    # "valid", not "verified": the lines above say the contents were shown NOT verified, and
    # the two read as a contradiction (issue 8).
    outcome = "valid" if valid else "INVALID"
    lines.append(f"signature: {outcome} (checked with the public key, {key.alg})")
    return [] if valid else ["invalid signature"]
