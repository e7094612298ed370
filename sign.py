"""Step 2 of the guide: sign an RS256 JWT with the encrypted private key.

The header is ``{"alg": "RS256", "typ": "JWT", "kid": <kid of the current key>}``; the claims
are the payload followed by ``iat`` (now), ``exp`` (``iat`` + lifetime) and ``iss``, then
``aud`` when an audience is configured (``--audience`` or ``JWT_AUDIENCE``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import jwt

from config import AppError, ArgumentParser, Config, UsageError, load_config, parse_duration
from keystore import apply_changes, load_signing_key
from verify import (
    ALGORITHM,
    DEFAULT_MAX_AGE,
    VerificationError,
    audience_argument,
    json_object,
)

DEFAULT_PAYLOAD: dict[str, Any] = {"userId": "a-b-c-d"}
RESERVED_CLAIMS = ("iat", "exp", "iss", "aud")


def make_claims(
    payload: dict[str, Any], issuer: str, expires_in: int, now: int, audience: str | None = None
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


def sign_token(config: Config, claims: dict[str, Any]) -> str:
    """Sign ``claims`` with the current private key, under that key's ``kid``.

    Raises UsageError if there is no private key, AppError if it cannot be decrypted.
    """
    # The kid is the one recorded for this very key, found by its thumbprint.
    key, kid = load_signing_key(config.keys_dir, config.passphrase, config.kid)
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "JWT"})


def _payload(text: str) -> dict[str, Any]:
    # verify.py's strict parser, so that sign.py never makes a token verify.py refuses.
    try:
        return json_object(text.encode("utf-8", "surrogatepass"), "--payload")
    except VerificationError as e:
        problem = str(e).removeprefix("malformed: ")
        raise argparse.ArgumentTypeError(f'{problem}, like \'{{"userId": "a-b-c-d"}}\'') from None


def _duration(text: str) -> int:
    try:
        return check_lifetime(parse_duration(text), f"a lifetime of {text!r}")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _lifetime(seconds: int) -> int:
    try:
        return check_lifetime(seconds, f"JWT_EXPIRES_IN ({seconds}s)")
    except ValueError as e:
        raise UsageError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 2."""
    parser = ArgumentParser(
        prog="sign.py",
        description="Step 2: sign an RS256 JWT with the private key and save it to token.txt.",
    )
    parser.add_argument(
        "--payload", type=_payload, default=DEFAULT_PAYLOAD, metavar="JSON",
        help='claims to sign, a JSON object (default: {"userId": "a-b-c-d"}); '
        "iat, exp, iss (and aud) are added",
    )  # fmt: skip
    parser.add_argument(
        "--expires-in", type=_duration, metavar="DURATION",
        help="lifetime of this token, at most 1 day (the verifiers' maximum age): seconds, "
        "or 30s, 15m, 2h, 1d (default: $JWT_EXPIRES_IN, else 1 day)",
    )  # fmt: skip
    parser.add_argument(
        "--audience", type=audience_argument, metavar="AUD",
        help="the aud claim: who the token is for (default: $JWT_AUDIENCE, else no aud)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 2; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
        config = load_config()
        expires_in = args.expires_in or _lifetime(config.expires_in)
        audience = config.audience if args.audience is None else args.audience
        claims = make_claims(args.payload, config.issuer, expires_in, int(time.time()), audience)
        token = sign_token(config, claims)
        # The token and nothing else, no newline: the guide's Node scripts read it as is.
        apply_changes(config.keys_dir, {config.token_path.name: token.encode()})
    except AppError as e:
        print(f"sign: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"sign: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # apply_changes has put back what it changed
        print("sign: interrupted", file=sys.stderr)
        return 130
    print(f"Signed token: {token}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
