"""Step 3 of the guide: verify the signed token with the public key.

The key is chosen as the servers choose it: by the token's ``kid`` among the keys folder's
published keys (next, current and retired), or the one key given with ``--public-key``.
The token's ``alg`` must be exactly the one the key is bound to: as recorded in the keys
folder, or for ``--public-key`` by its type (RSA: RS256, or PS256 with ``--alg PS256``;
EC P-256: ES256; Ed25519: EdDSA).
The checks, and their order, are those of every verifier of the project
(``jwt_guide.Verifier``; see jwt_guide/tokens.py): on failure, one line names the first that
failed (``verify: expired``...). ``--inspect`` shows the token as jwt.io would, then the
result of every check.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load: exit 130, no traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from jwt_guide import Verifier
from jwt_guide.algorithms import ALGORITHMS
from jwt_guide.cli import ArgumentParser, audience_argument, run
from jwt_guide.config import load_config, parse_duration
from jwt_guide.errors import UsageError
from jwt_guide.inspection import ALL_CHECKS_OK, inspect
from jwt_guide.keys import FolderKeys, KeySource, PemFileKey
from jwt_guide.tokens import DEFAULT_MAX_AGE


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


def _seconds(text: str) -> float:
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 3."""
    parser = ArgumentParser(
        prog="verify.py",
        description="Step 3: verify the token with the public key and print its claims.",
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
        "--alg", choices=list(ALGORITHMS), metavar="ALG",
        help="with --public-key: the algorithm its key is bound to (default: by its type, "
        "RS256 for RSA, ES256 for EC P-256, EdDSA for Ed25519; PS256 only when given)",
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


def _step(args: argparse.Namespace, now: Callable[[], float]) -> int:
    config = load_config()
    token = _read_token(args, config.token_path)
    keys: KeySource = (
        PemFileKey(Path(args.public_key).absolute(), args.alg)
        if args.public_key
        else FolderKeys(config.keys_dir, config.kid)
    )
    verifier = Verifier(
        config=config, keys=keys, audience=args.audience, max_age=args.max_age,
        leeway=args.leeway, token_cache_size=0, clock=now,
    )  # fmt: skip
    if args.inspect:
        lines = inspect(token, keys, verifier.policy, now())
        print("\n".join(lines))
        return 0 if lines[-1] == ALL_CHECKS_OK else 1
    claims = verifier.verify(token)
    print(f"Decoded token data {json.dumps(claims, ensure_ascii=False)}")
    return 0


def main(argv: Sequence[str] | None = None, now: Callable[[], float] = time.time) -> int:
    """Run step 3; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.alg and not args.public_key:
        parser.error("--alg goes with --public-key (the keys folder records each key's alg)")
    return run("verify", lambda: _step(args, now))


if __name__ == "__main__":
    sys.exit(main())
