"""Step 1 of the guide: generate the RSA key pair, and rotate keys the way real issuers do.

Without options, writes a new current key: ``.private.key`` (PKCS#8 PEM encrypted with the
passphrase, PBES2 + AES-256-CBC, mode 0600) and ``.public.key.pem`` (SPKI PEM). Rotation:
``--next`` publishes a next key, ``--promote`` makes it current and retires the old one,
``--prune`` removes retired keys once no token they signed can still be accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from config import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    AppError,
    ArgumentParser,
    Config,
    UsageError,
    load_config,
)
from keystore import (
    KEYRING_FILE,
    NEXT_PRIVATE_KEY_FILE,
    Change,
    KeyRecord,
    Keyring,
    apply_locked,
    encrypted_pem,
    keyring_document,
    load_private_key,
    locked,
    parse_time,
    public_pem,
    read_keyring,
    recover,
    thumbprint,
    utc_now,
)
from verify import DEFAULT_MAX_AGE

MIN_BITS = 2048
PUBLIC_EXPONENT = 65537


def _generate(bits: int) -> RSAPrivateKey:
    """A new RSA key. OpenSSL can take seconds (4096 bits and more) and does not return to Python
    meanwhile, so it runs in a worker thread: Ctrl-C then stops gen.py at once."""
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


def _new_key(bits: int, kid_option: str | None, config: Config) -> tuple[bytes, KeyRecord]:
    """Generate a key; return its encrypted PEM and its ring record (state ``current``)."""
    private_key = _generate(bits)
    public_key = private_key.public_key()
    print_ = thumbprint(public_key)
    kid = print_ if kid_option == "thumbprint" else kid_option or config.kid
    record = KeyRecord("current", kid, utc_now(), print_, public_pem(public_key))
    return encrypted_pem(private_key, config.passphrase), record


def _has_keys(config: Config) -> bool:
    names = (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, KEYRING_FILE, NEXT_PRIVATE_KEY_FILE)
    return any((config.keys_dir / name).exists() for name in names)


def _require_current(config: Config, ring: Keyring) -> KeyRecord:
    """The current key; raises AppError if there is none (or no private key for it)."""
    current = ring.find("current")
    if current is None or not config.private_key_path.exists():
        raise AppError(f"no current key in {config.keys_dir}: run gen.py first")
    return current


def create(config: Config, bits: int, kid: str | None, force: bool) -> KeyRecord:
    """Write one new current key, replacing every key only if ``force``.

    Call it holding ``locked(config.keys_dir)``. Raises AppError if keys exist and ``force``
    is false.
    """
    if _has_keys(config) and not force:
        raise AppError(
            f"keys already exist in {config.keys_dir}: replacing them invalidates every token "
            "already issued; run gen.py --force to replace them"
        )
    try:
        old = read_keyring(config.keys_dir, config.kid).records
    except AppError:
        old = ()  # a corrupt ring or public key: --force replaces them whatever they hold
    private_pem, record = _new_key(bits, kid, config)
    final = keyring_document((record,))
    # The ring lists the old keys and the new one until the key files are swapped, so a
    # reader never sees a key file whose key the ring does not list.
    first = keyring_document((*old, replace(record, state="next"))) if old else final
    changes: list[Change] = [
        (KEYRING_FILE, first),
        (PUBLIC_KEY_FILE, record.public_pem.encode()),
        (PRIVATE_KEY_FILE, private_pem),
        (NEXT_PRIVATE_KEY_FILE, None),
    ]
    if old:
        changes.append((KEYRING_FILE, final))
    apply_locked(config.keys_dir, changes)
    return record


def add_next(config: Config, ring: Keyring, bits: int, kid: str | None) -> KeyRecord:
    """Add a next key: published in the JWKS, not yet used to sign.

    Raises AppError if there is no current key, already a next key, or the ``kid`` is taken.
    """
    _require_current(config, ring)
    if ring.find("next") is not None:
        raise AppError("there is already a next key: run gen.py --promote first")
    if kid != "thumbprint" and any(r.kid == (kid or config.kid) for r in ring.records):
        raise AppError(f"kid {kid or config.kid!r} is already in use: choose another with --kid")
    private_pem, record = _new_key(bits, kid, config)
    if any(r.kid == record.kid for r in ring.records):
        raise AppError(f"kid {record.kid!r} is already in use: choose another with --kid")
    record = replace(record, state="next")
    apply_locked(config.keys_dir, [
        (NEXT_PRIVATE_KEY_FILE, private_pem),
        (KEYRING_FILE, keyring_document((*ring.records, record))),
    ])  # fmt: skip
    return record


def promote(config: Config, ring: Keyring) -> KeyRecord:
    """Make the next key current and retire the current one (its private key is deleted).

    Raises AppError if there is no next key, or the passphrase does not open it (checked
    before anything changes).
    """
    old = _require_current(config, ring)
    new = ring.find("next")
    next_path = config.keys_dir / NEXT_PRIVATE_KEY_FILE
    if new is None or not next_path.exists():
        raise AppError("there is no next key to promote: run gen.py --next first")
    next_pem = next_path.read_bytes()
    key = load_private_key(next_path, config.passphrase)
    if thumbprint(key.public_key()) != new.thumbprint:
        raise AppError(f"{next_path} is not the key {new.kid!r} of the key ring: run gen.py --list")
    retired = replace(old, state="retired", retired=utc_now())
    others = tuple(r for r in ring.records if r.state == "retired")
    # The order keeps every moment consistent for readers: the ring lists both keys before
    # the current files change, and the old private key goes only when the new one is in.
    apply_locked(config.keys_dir, [
        (KEYRING_FILE, keyring_document((replace(new, state="current"), retired, *others))),
        (PUBLIC_KEY_FILE, new.public_pem.encode()),
        (PRIVATE_KEY_FILE, next_pem),
        (NEXT_PRIVATE_KEY_FILE, None),
    ])  # fmt: skip
    return replace(new, state="current")


def prune(config: Config, ring: Keyring, force: bool, now: datetime) -> list[KeyRecord]:
    """Remove retired keys older than the maximum token age (all of them if ``force``).

    Raises AppError if there is no current key, or, saying how long is left, if a retired key
    is too young and not ``force``.
    """
    _require_current(config, ring)
    retired = [r for r in ring.records if r.state == "retired"]
    for record in retired:
        age = now - parse_time(record.retired or record.created)
        left = DEFAULT_MAX_AGE - age.total_seconds()
        if left > 0 and not force:
            raise AppError(
                f"retired key {record.kid!r} may still verify tokens for {left / 3600:.1f} h "
                f"({left:.0f} s): wait, or run gen.py --prune --force"
            )
    if retired:
        kept = tuple(r for r in ring.records if r.state != "retired")
        apply_locked(config.keys_dir, [(KEYRING_FILE, keyring_document(kept))])
    return retired


def list_keys(ring: Keyring) -> list[str]:
    """One line per key: state, kid, creation time, thumbprint."""
    order = {state: i for i, state in enumerate(("next", "current", "retired"))}
    return [
        f"{r.state:<8} {r.kid}  created {r.created}  thumbprint {r.thumbprint}"
        for r in sorted(ring.records, key=lambda r: order[r.state])
    ]


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


def _run(args: argparse.Namespace, config: Config) -> None:
    creating = not (args.next or args.promote or args.prune or args.list)
    made = creating and not config.keys_dir.exists()
    if creating:
        config.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif not config.keys_dir.is_dir():
        missing = f"no keys folder at {config.keys_dir}: run gen.py first"
        # Listing reads an input that is missing (exit 2); a rotation command refuses (exit 1).
        raise UsageError(missing) if args.list else AppError(missing)
    try:
        with locked(config.keys_dir):
            if recover(config.keys_dir):
                print(
                    f"gen: a gen.py command was interrupted in {config.keys_dir}: "
                    "its change is undone",
                    file=sys.stderr,
                )
            _command(args, config)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                config.keys_dir.rmdir()  # only if empty: a failed first run leaves nothing
        raise


def _command(args: argparse.Namespace, config: Config) -> None:
    if not (args.next or args.promote or args.prune or args.list):
        create(config, args.bits, args.kid, args.force)
        print("Private and Public Keys are generated")
        print(f"  private key: {config.private_key_path}")
        print(f"  public key:  {config.public_key_path}")
        return
    ring = read_keyring(config.keys_dir, config.kid)
    if args.list:
        print("\n".join(list_keys(ring)) or f"no keys in {config.keys_dir}: run gen.py")
    elif args.next:
        record = add_next(config, ring, args.bits, args.kid)
        print(f"Next key {record.kid!r} is generated and published; it signs after --promote")
    elif args.promote:
        record = promote(config, ring)
        print(f"Key {record.kid!r} is now current; the previous key is retired")
    else:
        pruned = prune(config, ring, args.force, datetime.now(UTC))
        names = ", ".join(repr(r.kid) for r in pruned)
        print(f"Pruned retired keys: {names}" if pruned else "No retired keys to prune")


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 1; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kid and (args.promote or args.prune or args.list):
        parser.error("--kid goes with generating a key (no option, --force or --next)")
    if args.force and (args.next or args.promote or args.list):
        parser.error("--force goes alone or with --prune")
    try:
        _run(args, load_config())
    except AppError as e:
        print(f"gen: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"gen: cannot write to the keys folder: {e.strerror} ({e.filename})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # nothing was changed, or the change was undone
        print("gen: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
