"""Step 1 of the guide: generate the RSA key pair, and rotate keys the way real issuers do.

Without options, writes a new current key: ``.private.key`` (PKCS#8 PEM encrypted with the
passphrase, PBES2 + AES-256-CBC, mode 0600) and ``.public.key.pem`` (SPKI PEM). The key is
bound to one algorithm (``--alg``, default ``JWT_ALG``, else the guide's RS256): RS256 or
PS256 (RSA, 4096 bits unless ``--bits``), ES256 (EC P-256) or EdDSA (Ed25519). Rotation:
``--next`` publishes a next key, ``--promote`` makes it current and retires the old one,
``--prune`` removes retired keys once no token they signed can still be accepted.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load: exit 130, no traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import argparse
import functools
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from jwt_guide import keystore, rotation
from jwt_guide.algorithms import (
    ALGORITHMS,
    DEFAULT_RSA_BITS,
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    Algorithm,
    PrivateKey,
)
from jwt_guide.cli import ArgumentParser, run
from jwt_guide.config import Config, load_config
from jwt_guide.errors import JwtGuideError, UsageError
from jwt_guide.keystore import read_keyring

RSA_ALGORITHMS = tuple(name for name, a in ALGORITHMS.items() if a.kty == "RSA")


def generate_key(algorithm: Algorithm, bits: int | None) -> PrivateKey:
    """A new key pair for ``algorithm``, as the guide's ``generateKeyPairSync('rsa', ...)``
    makes it for RS256 (exponent 65537; ``bits`` for RSA only, default 4096).

    OpenSSL can take seconds (RSA-4096 and more) and does not return to Python meanwhile,
    so it runs in a worker thread: Ctrl-C then stops gen.py at once.
    """
    result: list[PrivateKey | Exception] = []

    def work() -> None:
        try:
            result.append(algorithm.generate(bits))
        except Exception as e:  # handed to the main thread, which raises it
            result.append(e)

    worker = threading.Thread(target=work, name="keygen", daemon=True)  # not waited for
    worker.start()
    worker.join()
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]


def _bits(text: str) -> int:
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if bits < MIN_RSA_BITS:
        raise argparse.ArgumentTypeError(f"at least {MIN_RSA_BITS} bits are needed, not {bits}")
    if bits > MAX_RSA_BITS:
        raise argparse.ArgumentTypeError(f"at most {MAX_RSA_BITS} bits, not {bits}")
    return bits


def _kid(text: str) -> str:
    if not text.strip() or not text.isprintable() or len(text) > 256:
        raise argparse.ArgumentTypeError("a kid is 1 to 256 printable characters")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 1."""
    parser = ArgumentParser(
        prog="gen.py",
        description="Step 1: generate the encrypted key pair in the keys folder "
        "($JWT_KEYS_DIR, default keys/), bound to one algorithm, or rotate keys.",
    )
    action = parser.add_mutually_exclusive_group()
    for flag, text in (
        ("--next", "add a next key: published in the JWKS, not yet signing"),
        ("--promote", "the next key becomes current; the current one is retired"),
        ("--prune", "remove retired keys retired over 1 day ago (the maximum token age)"),
        ("--list", "list keys: state, kid, algorithm, creation time (UTC), RFC 7638 thumbprint"),
    ):
        action.add_argument(flag, action="store_true", help=text)
    parser.add_argument(
        "--force", action="store_true",
        help="replace every key with one new key (with --prune: prune before 1 day has passed)",
    )  # fmt: skip
    parser.add_argument(
        "--kid", type=_kid, metavar="KID",
        help="kid of the new key; 'thumbprint' uses its RFC 7638 thumbprint "
        "(default: $JWT_KID, else my-key-id)",
    )  # fmt: skip
    parser.add_argument(
        "--alg", choices=list(ALGORITHMS), metavar="ALG",
        help="algorithm the new key is bound to: RS256 or PS256 (RSA), ES256 (EC P-256), "
        "EdDSA (Ed25519) (default: $JWT_ALG, else RS256)",
    )  # fmt: skip
    parser.add_argument(
        "--bits", type=_bits,
        help=f"RSA modulus size, {MIN_RSA_BITS} to {MAX_RSA_BITS}, RSA keys only "
        f"(default: {DEFAULT_RSA_BITS})",
    )  # fmt: skip
    return parser


def _algorithm(args: argparse.Namespace, config: Config) -> Algorithm:
    """The algorithm of a new key: --alg, else JWT_ALG. Raises UsageError for --bits with a
    JWT_ALG whose keys have a fixed size (main refuses it with --alg)."""
    algorithm = ALGORITHMS[args.alg or config.alg]
    if args.bits is not None and algorithm.kty != "RSA":
        raise UsageError(
            f"--bits applies to RSA keys ({', '.join(RSA_ALGORITHMS)}) only: "
            f"JWT_ALG={algorithm.name} makes keys of a fixed size; drop --bits"
        )
    return algorithm


def _command(args: argparse.Namespace, config: Config, algorithm: Algorithm) -> None:
    new_key = functools.partial(generate_key, algorithm, args.bits)
    if not (args.next or args.promote or args.prune or args.list):
        rotation.create(config, new_key, args.kid, args.force, algorithm.name)
        print("Private and Public Keys are generated")
        print(f"  private key: {config.private_key_path}")
        print(f"  public key:  {config.public_key_path}")
        return
    ring = read_keyring(config.keys_dir, config.kid)
    if args.list:
        print("\n".join(rotation.list_keys(ring)) or f"no keys in {config.keys_dir}: run gen.py")
    elif args.next:
        record = rotation.add_next(config, ring, new_key, args.kid, algorithm.name)
        print(
            f"Next key {record.kid!r} ({record.alg}) is generated and published; "
            "it signs after --promote"
        )
    elif args.promote:
        record = rotation.promote(config, ring)
        print(f"Key {record.kid!r} ({record.alg}) is now current; the previous key is retired")
    else:
        pruned = rotation.prune(config, ring, args.force, datetime.now(UTC))
        names = ", ".join(repr(r.kid) for r in pruned)
        print(f"Pruned retired keys: {names}" if pruned else "No retired keys to prune")


def _step(args: argparse.Namespace) -> None:
    config = load_config()
    algorithm = _algorithm(args, config)  # before the folder is made: a usage error makes none
    creating = not (args.next or args.promote or args.prune or args.list)
    if not creating and not config.keys_dir.is_dir():
        missing = f"no keys folder at {config.keys_dir}: run gen.py first"
        # Listing reads an input that is missing (exit 2); a rotation command refuses (exit 1).
        raise UsageError(missing) if args.list else JwtGuideError(missing)
    try:
        with rotation.changing(config, create=creating) as recovered:
            if recovered == keystore.UNDONE:
                print(f"gen: a gen.py command was interrupted in {config.keys_dir}: "
                      "its change is undone", file=sys.stderr)  # fmt: skip
            elif recovered == keystore.CLEANED:
                print(f"gen: removed the temporary files an interrupted gen.py command left "
                      f"in {config.keys_dir}", file=sys.stderr)  # fmt: skip
            _command(args, config, algorithm)
    except OSError as e:  # nothing was changed, or the change was undone
        raise JwtGuideError(
            f"cannot write to the keys folder: {e.strerror} ({e.filename})"
        ) from e


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 1; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("kid", "alg", "bits"):
        if getattr(args, name) is not None and (args.promote or args.prune or args.list):
            parser.error(f"--{name} goes with generating a key (no option, --force or --next)")
    if args.bits is not None and args.alg is not None and args.alg not in RSA_ALGORITHMS:
        parser.error(
            f"--bits applies to RSA keys ({', '.join(RSA_ALGORITHMS)}) only: "
            f"{args.alg} keys have a fixed size"
        )
    if args.force and (args.next or args.promote or args.list):
        parser.error("--force goes alone or with --prune")
    return run("gen", lambda: _step(args))


if __name__ == "__main__":
    sys.exit(main())
