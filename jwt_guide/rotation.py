"""Key rotation: the machinery behind gen.py's commands, each an atomic change of the folder.

The guide's two files stay the *current* key. ``add_next`` publishes a next key,
``promote`` makes it current and retires the old one (its private key is deleted),
``prune`` removes retired keys once no token they signed can still be accepted, ``create``
writes one new current key (replacing every key only when forced). Each command runs inside
``changing``, which holds the folder's lock and first undoes what a killed command left
(see jwt_guide.keystore). New keys come from a ``generate`` function: the caller's choice
of key (gen.py makes one for the algorithm of ``--alg``), and each is recorded with the
algorithm it is bound to (``alg``; by default the one of its type: RS256 for RSA).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime

from jwt_guide.algorithms import PrivateKey, algorithm_for_key, encrypted_pem
from jwt_guide.config import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, Config
from jwt_guide.errors import JwtGuideError
from jwt_guide.keystore import (
    KEYRING_FILE,
    NEXT_PRIVATE_KEY_FILE,
    Change,
    KeyRecord,
    Keyring,
    apply_locked,
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
from jwt_guide.tokens import DEFAULT_MAX_AGE

KeyFactory = Callable[[], PrivateKey]


@contextlib.contextmanager
def changing(config: Config, create: bool) -> Iterator[str | None]:
    """Hold the keys folder's lock for one command; yield what ``recover`` did first (after
    an interrupted command), if anything.

    ``create``: make the folder if missing (removed again, if still empty, when the command
    fails). Raises OSError if the folder cannot be made or opened, and as ``recover`` does.
    """
    made = create and not config.keys_dir.exists()
    try:  # the folder is made inside: a Ctrl-C just after mkdir removes it too
        if create:
            config.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with locked(config.keys_dir):
            yield recover(config.keys_dir)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                config.keys_dir.rmdir()  # only if empty: a failed first run leaves nothing
        raise


def _new_key(
    generate: KeyFactory, kid_option: str | None, config: Config, alg: str | None
) -> tuple[bytes, KeyRecord]:
    """Generate a key; return its encrypted PEM and its ring record (state ``current``),
    bound to ``alg`` (None: the default of its type). Raises KeyRejected if ``alg`` does not
    fit the key."""
    private_key = generate()
    algorithm = algorithm_for_key(private_key, alg)
    public_key = private_key.public_key()
    print_ = thumbprint(public_key)
    kid = print_ if kid_option == "thumbprint" else kid_option or config.kid
    record = KeyRecord(
        "current", kid, utc_now(), print_, public_pem(public_key), alg=algorithm.name
    )
    return encrypted_pem(private_key, config.passphrase), record


def _has_keys(config: Config) -> bool:
    names = (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, KEYRING_FILE, NEXT_PRIVATE_KEY_FILE)
    return any((config.keys_dir / name).exists() for name in names)


def _require_current(config: Config, ring: Keyring) -> KeyRecord:
    """The current key; raises JwtGuideError if there is none (or no private key for it)."""
    current = ring.find("current")
    if current is None or not config.private_key_path.exists():
        raise JwtGuideError(f"no current key in {config.keys_dir}: run gen.py first")
    return current


def create(
    config: Config, generate: KeyFactory, kid: str | None, force: bool, alg: str | None = None
) -> KeyRecord:
    """Write one new current key bound to ``alg``, replacing every key only if ``force``.

    ``alg`` None: the default of the generated key's type (RS256 for RSA). Call it inside
    ``changing(config, create=True)``. Raises JwtGuideError if keys exist and ``force`` is
    false, KeyRejected if ``alg`` does not fit the generated key.
    """
    if _has_keys(config) and not force:
        raise JwtGuideError(
            f"keys already exist in {config.keys_dir}: replacing them invalidates every token "
            "already issued; run gen.py --force to replace them"
        )
    try:
        old = read_keyring(config.keys_dir, config.kid).records
    except JwtGuideError:
        old = ()  # a corrupt ring or public key: --force replaces them whatever they hold
    private_pem, record = _new_key(generate, kid, config, alg)
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


def add_next(
    config: Config, ring: Keyring, generate: KeyFactory, kid: str | None, alg: str | None = None
) -> KeyRecord:
    """Add a next key bound to ``alg`` (as for ``create``): published in the JWKS, not yet
    used to sign. Its algorithm may differ from the current key's: that is how an issuer
    moves from one algorithm to another (README, "Migrating to another algorithm").

    Raises JwtGuideError if there is no current key, already a next key, or the ``kid`` is
    taken; KeyRejected if ``alg`` does not fit the generated key.
    """
    _require_current(config, ring)
    if ring.find("next") is not None:
        raise JwtGuideError("there is already a next key: run gen.py --promote first")
    if kid != "thumbprint" and any(r.kid == (kid or config.kid) for r in ring.records):
        taken = kid or config.kid
        raise JwtGuideError(f"kid {taken!r} is already in use: choose another with --kid")
    private_pem, record = _new_key(generate, kid, config, alg)
    if any(r.kid == record.kid for r in ring.records):
        raise JwtGuideError(f"kid {record.kid!r} is already in use: choose another with --kid")
    record = replace(record, state="next")
    apply_locked(config.keys_dir, [
        (NEXT_PRIVATE_KEY_FILE, private_pem),
        (KEYRING_FILE, keyring_document((*ring.records, record))),
    ])  # fmt: skip
    return record


def promote(config: Config, ring: Keyring) -> KeyRecord:
    """Make the next key current and retire the current one (its private key is deleted).

    Raises JwtGuideError if there is no next key, or the passphrase does not open it (checked
    before anything changes).
    """
    old = _require_current(config, ring)
    new = ring.find("next")
    next_path = config.keys_dir / NEXT_PRIVATE_KEY_FILE
    if new is None or not next_path.exists():
        raise JwtGuideError("there is no next key to promote: run gen.py --next first")
    next_pem = next_path.read_bytes()
    key = load_private_key(next_path, config.passphrase)
    if thumbprint(key.public_key()) != new.thumbprint or not new.algorithm.fits(key):
        raise JwtGuideError(
            f"{next_path} is not the key {new.kid!r} of the key ring: run gen.py --list"
        )
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

    Raises JwtGuideError if there is no current key, or, saying how long is left, if a retired key
    is too young and not ``force``.
    """
    _require_current(config, ring)
    retired = [r for r in ring.records if r.state == "retired"]
    for record in retired:
        age = now - parse_time(record.retired or record.created)
        left = DEFAULT_MAX_AGE - age.total_seconds()
        if left > 0 and not force:
            raise JwtGuideError(
                f"retired key {record.kid!r} may still verify tokens for {left / 3600:.1f} h "
                f"({left:.0f} s): wait, or run gen.py --prune --force"
            )
    if retired:
        kept = tuple(r for r in ring.records if r.state != "retired")
        apply_locked(config.keys_dir, [(KEYRING_FILE, keyring_document(kept))])
    return retired


def list_keys(ring: Keyring) -> list[str]:
    """One line per key: state, kid, algorithm, creation time, thumbprint."""
    order = {state: i for i, state in enumerate(("next", "current", "retired"))}
    return [
        f"{r.state:<8} {r.kid}  alg {r.algorithm.name}  created {r.created}  "
        f"thumbprint {r.thumbprint}"
        for r in sorted(ring.records, key=lambda r: order[r.state])
    ]
