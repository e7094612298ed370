"""The keys folder: loading keys, the key ring behind rotation, and atomic changes to it.

The guide's files stay the *current* key: ``.private.key`` (encrypted PKCS#8 PEM) and
``.public.key.pem`` (SPKI PEM). Rotation adds two files, both optional so that a folder
holding only the guide's two files (from an older version, or made with openssl) still works
with the ``kid`` from config:

- ``.keys.json``: the key ring, one record per key: state (``next``, ``current``,
  ``retired``), ``kid``, creation and retirement times, RFC 7638 thumbprint, public PEM;
- ``.next.private.key``: the encrypted private key of the next key.

A key's ``kid`` is found by the thumbprint of the key itself, never by file position, so a
reader that looks while a change is half applied never pairs a key with another key's
``kid``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwcrypto.jwk import JWK

from config import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, TOKEN_FILE, AppError, UsageError

KEYRING_FILE = ".keys.json"
NEXT_PRIVATE_KEY_FILE = ".next.private.key"
# Written 0600: the private keys, and the token (a bearer credential until it expires).
PRIVATE_FILES = frozenset({PRIVATE_KEY_FILE, NEXT_PRIVATE_KEY_FILE, TOKEN_FILE})
STATES = ("next", "current", "retired")


@dataclass(frozen=True)
class KeyRecord:
    """One key of the ring, public parts only."""

    state: str
    kid: str
    created: str
    thumbprint: str
    public_pem: str
    retired: str | None = None


@dataclass(frozen=True)
class Keyring:
    """Every key of a keys folder: the current one first, then next, then retired."""

    records: tuple[KeyRecord, ...] = field(default_factory=tuple)

    def find(self, state: str) -> KeyRecord | None:
        """The first key in ``state``, if any."""
        return next((r for r in self.records if r.state == state), None)

    def kid_for(self, thumbprint: str) -> str | None:
        """The ``kid`` recorded for the key with this thumbprint, if any."""
        return next((r.kid for r in self.records if r.thumbprint == thumbprint), None)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string, as stored in the key ring."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse a time stored by ``utc_now``."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def thumbprint(key: RSAPublicKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of ``key`` (computed by jwcrypto)."""
    return str(JWK.from_pyca(key).thumbprint())


def public_pem(key: RSAPublicKey) -> str:
    """``key`` as SubjectPublicKeyInfo PEM text."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(path: Path) -> RSAPublicKey:
    """Load an RSA public key from a PEM file.

    Raises UsageError if the file is missing, AppError if it holds no RSA public key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no public key at {path}: run gen.py first") from None
    except OSError as e:
        raise AppError(f"cannot read public key {path}: {e.strerror}") from None
    return public_key_from_pem(data, str(path))


def public_key_from_pem(data: bytes, where: str) -> RSAPublicKey:
    """Parse SPKI PEM ``data``; raises AppError naming ``where`` if it is not an RSA key."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise AppError(f"{where} is not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise AppError(f"{where} is not an RSA public key")
    return key


def load_private_key(path: Path, passphrase: str) -> RSAPrivateKey:
    """Load and decrypt an RSA private key.

    Raises UsageError if the file is missing, AppError if the passphrase is wrong or the file
    is not an encrypted RSA private key. The passphrase never appears in a message.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no private key at {path}: run gen.py first") from None
    except OSError as e:
        raise AppError(f"cannot read private key {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, passphrase.encode())
    except (ValueError, TypeError):
        raise AppError(
            f"cannot decrypt {path}: wrong passphrase (JWT_PASSPHRASE) or not an encrypted key"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise AppError(f"{path} is not an RSA private key")
    return key


def encrypted_pem(key: RSAPrivateKey, passphrase: str) -> bytes:
    """``key`` as PKCS#8 PEM encrypted with PBES2 (PBKDF2 + AES-256-CBC), the guide's format."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    )


def _record(raw: Any) -> KeyRecord:
    if not isinstance(raw, dict) or raw.get("state") not in STATES:
        raise ValueError("a key record is not valid")
    fields = ("state", "kid", "created", "thumbprint", "public_pem")
    if not all(isinstance(raw.get(name), str) and raw[name] for name in fields):
        raise ValueError("a key record misses a field")
    for stamp in (raw["created"], raw.get("retired") or raw["created"]):
        parse_time(stamp)  # raises ValueError if the time is not one utc_now wrote
    return KeyRecord(**{name: raw[name] for name in fields}, retired=raw.get("retired"))


def read_keyring(keys_dir: Path, default_kid: str) -> Keyring:
    """Read the key ring, with the current key taken from ``.public.key.pem``.

    Without ``.keys.json`` (the guide's two files alone) the current key gets
    ``default_kid``. Raises AppError if ``.keys.json`` is corrupt or the public key invalid.
    """
    path = keys_dir / KEYRING_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        stored = tuple(_record(raw) for raw in document["keys"])
    except FileNotFoundError:
        stored = ()
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise AppError(f"{path} is corrupt ({e}): repair it or run gen.py --force") from None
    public_path = keys_dir / PUBLIC_KEY_FILE
    if not public_path.exists():
        return Keyring(tuple(r for r in stored if r.state != "current"))
    key = load_public_key(public_path)
    print_ = thumbprint(key)
    recorded = next((r for r in stored if r.thumbprint == print_), None)
    current = KeyRecord(
        state="current",
        kid=recorded.kid if recorded else default_kid,
        created=recorded.created if recorded else _mtime(public_path),
        thumbprint=print_,
        public_pem=public_pem(key),
    )
    # A record naming another key "current" is a change being applied (or a public key file
    # replaced by hand): the key in .public.key.pem is the current one either way.
    others = tuple(r for r in stored if r.thumbprint != print_ and r.state != "current")
    return Keyring((current, *others))


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def keyring_document(records: tuple[KeyRecord, ...]) -> bytes:
    """The ``.keys.json`` contents for ``records``."""
    keys = [{k: v for k, v in asdict(r).items() if v is not None} for r in records]
    return (json.dumps({"keys": keys}, indent=2) + "\n").encode()


@contextlib.contextmanager
def locked(keys_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the keys folder, so two gen.py commands never interleave."""
    fd = os.open(keys_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_temp(keys_dir: Path, data: bytes, private: bool) -> Path:
    # mkstemp creates the file 0600: a private key is never readable by others, not even
    # for an instant.
    fd, name = tempfile.mkstemp(dir=keys_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not private:
            os.chmod(name, 0o644)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def apply_changes(keys_dir: Path, changes: Mapping[str, bytes | None]) -> None:
    """Write (bytes) or delete (None) files of the keys folder as one change, in order.

    Every new file is written in full to a temporary file first; then the changes are applied
    in the order given. If any step fails, or the process is interrupted (KeyboardInterrupt,
    SystemExit), the files already changed are put back, so the folder is as it was.
    """
    temps: dict[str, Path] = {}
    backups: dict[str, Path] = {}
    done: list[str] = []
    try:
        for name, data in changes.items():
            if data is not None:
                temps[name] = _write_temp(keys_dir, data, name in PRIVATE_FILES)
        for name in changes:
            target = keys_dir / name
            if target.exists():
                backups[name] = keys_dir / f".bak-{os.getpid()}{name}"
                os.link(target, backups[name])
            done.append(name)
            if name in temps:
                os.replace(temps[name], target)
                del temps[name]
            elif name in backups:
                os.unlink(target)
    except BaseException:
        for name in reversed(done):
            if name in backups:
                # If the target was never replaced, backup and target are one file (a hard
                # link) and the rename does nothing; the unlink in ``finally`` then drops it.
                os.replace(backups[name], keys_dir / name)
            else:
                (keys_dir / name).unlink(missing_ok=True)
        raise
    finally:
        for leftover in (*temps.values(), *backups.values()):
            leftover.unlink(missing_ok=True)
        _fsync_dir(keys_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
