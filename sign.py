"""Step 2 of the guide: sign a JWT with the encrypted private key (RS256 for the guide's key).

The header is ``{"alg": <the algorithm the current key is bound to>, "typ": "JWT", "kid":
<kid of the current key>}``; the claims
are the payload followed by ``iat`` (now), ``exp`` (``iat`` + lifetime) and ``iss``, then
``aud`` when an audience is configured (``--audience`` or ``JWT_AUDIENCE``). The token is
saved to ``token.txt`` in the keys folder.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load: exit 130, no traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import argparse
from collections.abc import Sequence
from typing import Any

from jwt_guide.cli import ArgumentParser, audience_argument, run
from jwt_guide.config import load_config, parse_duration
from jwt_guide.errors import InvalidToken, JwtGuideError, UsageError
from jwt_guide.keystore import apply_changes
from jwt_guide.signing import Signer, check_lifetime
from jwt_guide.tokens import json_object

DEFAULT_PAYLOAD: dict[str, Any] = {"userId": "a-b-c-d"}


def _payload(text: str) -> dict[str, Any]:
    # verify.py's strict parser, so that sign.py never makes a token verify.py refuses.
    try:
        return json_object(text.encode("utf-8", "surrogatepass"), "--payload")
    except InvalidToken as e:
        problem = str(e).removeprefix("malformed: ")
        raise argparse.ArgumentTypeError(f'{problem}, like \'{{"userId": "a-b-c-d"}}\'') from None


def _duration(text: str) -> int:
    try:
        return check_lifetime(parse_duration(text), f"a lifetime of {text!r}")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 2."""
    parser = ArgumentParser(
        prog="sign.py",
        description="Step 2: sign a JWT with the current private key, by the algorithm it is "
        "bound to (RS256 for the guide's key), and save it to token.txt.",
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


def _step(args: argparse.Namespace) -> None:
    config = load_config()
    try:
        expires_in = args.expires_in or check_lifetime(
            config.expires_in, f"JWT_EXPIRES_IN ({config.expires_in}s)"
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    signer = Signer.from_keys_dir(config=config)
    token = signer.sign(args.payload, expires_in=expires_in, audience=args.audience)
    try:
        # The token and nothing else, no newline: the guide's Node scripts read it as is.
        apply_changes(config.keys_dir, {config.token_path.name: token.encode()})
    except OSError as e:  # apply_changes has put back what it changed
        raise JwtGuideError(f"cannot write {e.filename}: {e.strerror}") from e
    print(f"Signed token: {token}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 2; return the exit code."""
    return run("sign", lambda: _step(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
