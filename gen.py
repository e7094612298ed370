"""Step 1 of the guide: generate the RSA key pair, and rotate keys the way real issuers do.

Without options, writes a new current key: ``.private.key`` (PKCS#8 PEM encrypted with the
passphrase, PBES2 + AES-256-CBC, mode 0600) and ``.public.key.pem`` (SPKI PEM). Rotation:
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

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from jwt_guide import keystore, rotation
from jwt_guide.cli import ArgumentParser, run
from jwt_guide.config import Config, load_config
from jwt_guide.errors import JwtGuideError, UsageError
from jwt_guide.keystore import read_keyring

MIN_BITS = 2048
PUBLIC_EXPONENT = 65537


def generate_key(bits: int) -> RSAPrivateKey:
    """A new RSA key pair, as the guide's ``generateKeyPairSync('rsa', ...)`` makes it.

    OpenSSL can take seconds (4096 bits and more) and does not return to Python meanwhile,
    so it runs in a worker thread: Ctrl-C then stops gen.py at once.
    """
    result: list[RSAPrivateKey | Exception] = []

    def work() -> None:
        try:
            result.append(rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits))
        except Exception as e:  # handed to the main thread, which raises it
            result.append(e)

    worker = threading.Thread(target=work, name="rsa-keygen", daemon=True)  # not waited for
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
    if bits < MIN_BITS:
        raise argparse.ArgumentTypeError(f"at least {MIN_BITS} bits are needed, not {bits}")
    return bits


def _kid(text: str) -> str:
    if not text.strip() or not text.isprintable() or len(text) > 256:
        raise argparse.ArgumentTypeError("a kid is 1 to 256 printable characters")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 1."""
    parser = ArgumentParser(
        prog="gen.py",
        description="Step 1: generate the encrypted RSA key pair in the keys folder "
        "($JWT_KEYS_DIR, default keys/), or rotate keys.",
    )
    action = parser.add_mutually_exclusive_group()
    for flag, text in (
        ("--next", "add a next key: published in the JWKS, not yet signing"),
        ("--promote", "the next key becomes current; the current one is retired"),
        ("--prune", "remove retired keys retired over 1 day ago (the maximum token age)"),
        ("--list", "list keys: state, kid, creation time (UTC), RFC 7638 thumbprint"),
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
        "--bits", type=_bits, default=4096,
        help=f"RSA modulus size, at least {MIN_BITS} (default: 4096)",
    )  # fmt: skip
    return parser


def _command(args: argparse.Namespace, config: Config) -> None:
    new_key = functools.partial(generate_key, args.bits)
    if not (args.next or args.promote or args.prune or args.list):
        rotation.create(config, new_key, args.kid, args.force)
        print("Private and Public Keys are generated")
        print(f"  private key: {config.private_key_path}")
        print(f"  public key:  {config.public_key_path}")
        return
    ring = read_keyring(config.keys_dir, config.kid)
    if args.list:
        print("\n".join(rotation.list_keys(ring)) or f"no keys in {config.keys_dir}: run gen.py")
    elif args.next:
        record = rotation.add_next(config, ring, new_key, args.kid)
        print(f"Next key {record.kid!r} is generated and published; it signs after --promote")
    elif args.promote:
        record = rotation.promote(config, ring)
        print(f"Key {record.kid!r} is now current; the previous key is retired")
    else:
        pruned = rotation.prune(config, ring, args.force, datetime.now(UTC))
        names = ", ".join(repr(r.kid) for r in pruned)
        print(f"Pruned retired keys: {names}" if pruned else "No retired keys to prune")


def _step(args: argparse.Namespace) -> None:
    config = load_config()
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
            _command(args, config)
    except OSError as e:  # nothing was changed, or the change was undone
        raise JwtGuideError(
            f"cannot write to the keys folder: {e.strerror} ({e.filename})"
        ) from e


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 1; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kid and (args.promote or args.prune or args.list):
        parser.error("--kid goes with generating a key (no option, --force or --next)")
    if args.force and (args.next or args.promote or args.list):
        parser.error("--force goes alone or with --prune")
    return run("gen", lambda: _step(args))


if __name__ == "__main__":
    sys.exit(main())
