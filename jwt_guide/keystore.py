"""The keys folder: loading keys, the key ring behind rotation, and atomic changes to it.

The guide's files stay the *current* key: ``.private.key`` (encrypted PKCS#8 PEM) and
``.public.key.pem`` (SPKI PEM). Rotation adds two files, both optional so that a folder
holding only the guide's two files (from an older version, or made with openssl) still works
with the ``kid`` from config:

- ``.keys.json``: the key ring, one record per key: state (``next``, ``current``,
  ``retired``), ``kid``, creation and retirement times, RFC 7638 thumbprint, public PEM,
  and the algorithm the key is bound to (``alg``; a ring written before keys had one holds
  RSA keys only, which are RS256);
- ``.next.private.key``: the encrypted private key of the next key.

A key's ``kid`` is found by the thumbprint of the key itself, never by file position.
gen.py orders the files of a change so that at every instant each key file holds a key that
the ring lists, and readers read the files again when one changed under them: so a reader
that looks while a change is applied, or after a crash, never pairs a key with another key's
``kid``.

A change of several files (``apply_locked``) is an undo log: every new file is written in full
and synced to a temporary file; a journal (``.journal.json``) naming each step's file, its
temporary file and a hard link that keeps its previous contents is written atomically; then
the steps are applied in order and the journal removed (the commit point). ``recover``, run
by every gen.py command before anything else, undoes a change that a killed process left
behind (journal present) and removes stray temporary and backup files, so no copy of a
private key outlives the command that made it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from jwt_guide import algorithms
from jwt_guide.algorithms import (
    ALGORITHMS,
    NOT_DECRYPTED,
    Algorithm,
    KeyRejected,
    PrivateKey,
    PublicKey,
    algorithm_for_key,
    load_private_pem,
    load_public_pem,
)
from jwt_guide.config import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, TOKEN_FILE
from jwt_guide.errors import JwtGuideError, UsageError

KEYRING_FILE = ".keys.json"
NEXT_PRIVATE_KEY_FILE = ".next.private.key"
JOURNAL_FILE = ".journal.json"
# Names of the files a change makes on its way; recover() removes any it finds.
TEMP_PREFIX = ".tmp-"
BACKUP_PREFIX = ".bak-"
# Written 0600: the private keys, and the token (a bearer credential until it expires).
PRIVATE_FILES = frozenset({PRIVATE_KEY_FILE, NEXT_PRIVATE_KEY_FILE, TOKEN_FILE})
STATES = ("next", "current", "retired")
# Held back while files are changed, so that Ctrl-C, kill or a closed terminal never stops a
# change half way (SIGKILL cannot be held back: the journal covers it).
DEFERRED_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
READ_ATTEMPTS = 5

T = TypeVar("T")
Change = tuple[str, bytes | None]


@dataclass(frozen=True)
class KeyRecord:
    """One key of the ring, public parts only.

    ``alg``: the algorithm the key is bound to. Records read from the folder always have it;
    None (a record made without one) means the default of the key's type (RS256 for RSA).
    """

    state: str
    kid: str
    created: str
    thumbprint: str
    public_pem: str
    retired: str | None = None
    alg: str | None = None

    @property
    def algorithm(self) -> Algorithm:
        """The algorithm the key is bound to (see ``alg``).

        Raises KeyRejected if ``public_pem`` is not a supported key or ``alg`` does not fit it.
        """
        if self.alg is not None and self.alg in ALGORITHMS:
            return ALGORITHMS[self.alg]
        return algorithm_for_key(load_public_pem(self.public_pem.encode()), self.alg)


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


def thumbprint(key: PublicKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of ``key`` (the members of its type, see algorithms).

    Raises KeyRejected for a key type the project does not support.
    """
    return algorithm_for_key(key).thumbprint(key)


def public_pem(key: PublicKey) -> str:
    """``key`` as SubjectPublicKeyInfo PEM text."""
    return algorithms.public_pem(key).decode("ascii")


def load_public_key(path: Path) -> PublicKey:
    """Load a public key (RSA, EC P-256 or Ed25519) from a PEM file.

    Raises UsageError if the file is missing, JwtGuideError if it holds no supported public key.
    """
    return public_key_from_pem(read_key_file(path, "public key"), str(path))


def read_key_file(path: Path, what: str, fix: str = "run gen.py first") -> bytes:
    """The bytes of the key file ``path`` (``what``: "public key", "private key").

    Raises UsageError saying ``fix`` if the file is missing, JwtGuideError if it cannot be read.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no {what} at {path}: {fix}") from None
    except OSError as e:
        raise JwtGuideError(f"cannot read {what} {path}: {e.strerror}") from None


def public_key_from_pem(data: bytes, where: str) -> PublicKey:
    """Parse SPKI PEM ``data``; raises JwtGuideError naming ``where`` if it is not a public key
    of a supported type and size (RSA 2048 to 16384 bits, EC P-256, Ed25519)."""
    try:
        return load_public_pem(data)
    except KeyRejected as e:
        raise JwtGuideError(f"{where}: {e}") from None


def load_private_key(path: Path, passphrase: str) -> PrivateKey:
    """Load and decrypt a private key (RSA, EC P-256 or Ed25519).

    Raises UsageError if the file is missing, JwtGuideError if the passphrase is wrong or the
    file is not an encrypted private key of a supported type. The passphrase never appears
    in a message.
    """
    data = read_key_file(path, "private key")
    try:
        return load_private_pem(data, passphrase)
    except KeyRejected as e:
        if e.reason == NOT_DECRYPTED:
            raise JwtGuideError(
                f"cannot decrypt {path}: wrong passphrase (JWT_PASSPHRASE) or not an encrypted key"
            ) from None
        raise JwtGuideError(f"{path}: {e}") from None


class SigningKey(NamedTuple):
    """The current private key, its ``kid`` and the algorithm it is bound to."""

    key: PrivateKey
    kid: str
    algorithm: Algorithm


def load_signing_key(keys_dir: Path, passphrase: str, default_kid: str) -> SigningKey:
    """The current private key, its ``kid`` and algorithm, read as one consistent view of the
    folder.

    The ``kid`` and algorithm are those the ring records for this very key (by thumbprint),
    else ``default_kid`` and the default of the key's type (the guide's two files alone:
    RS256 for RSA). Raises as ``load_private_key`` and ``read_keyring`` do.
    """
    names = (PRIVATE_KEY_FILE, KEYRING_FILE, PUBLIC_KEY_FILE)

    def read() -> tuple[PrivateKey, Keyring]:
        key = load_private_key(keys_dir / PRIVATE_KEY_FILE, passphrase)
        return key, _read_keyring(keys_dir, default_kid)

    key, ring = _read_consistently([keys_dir / name for name in names], read)
    print_ = thumbprint(key.public_key())
    record = next((r for r in ring.records if r.thumbprint == print_), None)
    if record is None:
        return SigningKey(key, default_kid, algorithm_for_key(key))
    return SigningKey(key, record.kid, record.algorithm)


def _record(raw: Any) -> KeyRecord:
    if not isinstance(raw, dict) or raw.get("state") not in STATES:
        raise ValueError("a key record is not valid")
    fields = ("state", "kid", "created", "thumbprint", "public_pem")
    if not all(isinstance(raw.get(name), str) and raw[name] for name in fields):
        raise ValueError("a key record misses a field")
    for stamp in (raw["created"], raw.get("retired") or raw["created"]):
        parse_time(stamp)  # raises ValueError if the time is not one utc_now wrote
    alg = raw.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise ValueError("a key record's alg is not a string")
    # A record without alg was written before keys had one: an RSA key, so RS256.
    # KeyRejected (a ValueError) if the key is not supported or alg does not fit it.
    algorithm = algorithm_for_key(load_public_pem(raw["public_pem"].encode()), alg)
    return KeyRecord(
        **{name: raw[name] for name in fields}, retired=raw.get("retired"), alg=algorithm.name
    )


def read_keyring(keys_dir: Path, default_kid: str) -> Keyring:
    """Read the key ring, with the current key taken from ``.public.key.pem``.

    Without ``.keys.json`` (the guide's two files alone) the current key gets
    ``default_kid``. Raises JwtGuideError if ``.keys.json`` is corrupt or the public key invalid.
    """
    paths = [keys_dir / KEYRING_FILE, keys_dir / PUBLIC_KEY_FILE]
    return _read_consistently(paths, lambda: _read_keyring(keys_dir, default_kid))


def _read_keyring(keys_dir: Path, default_kid: str) -> Keyring:
    path = keys_dir / KEYRING_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        stored = tuple(_record(raw) for raw in document["keys"])
    except FileNotFoundError:
        stored = ()
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise JwtGuideError(f"{path} is corrupt ({e}): repair it or run gen.py --force") from None
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
        alg=recorded.alg if recorded else algorithm_for_key(key).name,
    )
    others: list[KeyRecord] = []
    for record in stored:
        if record.thumbprint == print_:
            continue
        if record.state != "current":
            others.append(record)
        elif recorded is not None:
            # A change is being applied (or was, by a killed gen.py): the ring already names
            # its new current key, the public key file not yet (or the reverse). Both stay
            # listed, each with its own kid, until the change is complete.
            others.append(replace(record, state="retired"))
        # else .public.key.pem was replaced by hand: the key in it is the current one.
    return Keyring((current, *others))


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_stamps(paths: Sequence[str | Path]) -> tuple[tuple[int, ...] | None, ...]:
    """What ``stat`` says of each file (None if missing): different after any replacement."""
    stamps: list[tuple[int, ...] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except FileNotFoundError:
            stamps.append(None)
    return tuple(stamps)


def _read_consistently(paths: Sequence[Path], read: Callable[[], T]) -> T:
    """``read()`` of several files, done again while one of them changed under it.

    gen.py replaces files one rename at a time; each rename gives the file a new inode, so a
    read that saw the same stamps before and after saw one state of the folder.
    """
    for _ in range(READ_ATTEMPTS - 1):
        before = file_stamps(paths)
        result = read()
        if file_stamps(paths) == before:
            return result
    return read()


def keyring_document(records: tuple[KeyRecord, ...]) -> bytes:
    """The ``.keys.json`` contents for ``records``."""
    keys = [{k: v for k, v in asdict(r).items() if v is not None} for r in records]
    return (json.dumps({"keys": keys}, indent=2) + "\n").encode()


@contextlib.contextmanager
def locked(keys_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the keys folder, so that no two changes interleave.

    Every change takes it (gen.py for a whole command, ``apply_changes`` for one write), so
    that ``recover`` never removes a temporary file another process is still writing.
    """
    fd = os.open(keys_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def apply_changes(keys_dir: Path, changes: Mapping[str, bytes | None]) -> None:
    """Write (bytes) or delete (None) files of a folder as one atomic change, under its lock.

    Never call it while holding ``locked(keys_dir)``: use ``apply_locked`` then. Raises
    OSError if a file cannot be written; the folder is then as it was.
    """
    with locked(keys_dir):
        apply_locked(keys_dir, list(changes.items()))


def apply_locked(keys_dir: Path, changes: Sequence[Change]) -> None:
    """Write (bytes) or delete (None) files of the keys folder as one change, in order.

    The caller holds ``locked(keys_dir)``; a file may appear more than once. Ctrl-C, SIGTERM
    and SIGHUP are held back meanwhile (in this thread: the scripts change files from their
    only thread); one that came is delivered after the change has been undone, so an
    interrupted command leaves the folder as it was. A failure (OSError) or an exception
    raised meanwhile undoes the change too, then propagates. A crash (SIGKILL, power loss)
    leaves a journal that ``recover`` undoes. Raises JwtGuideError, changing nothing, for a change
    of several files while there is such a journal.
    """
    if len(changes) > 1 and (keys_dir / JOURNAL_FILE).exists():  # its backups would be lost
        raise JwtGuideError(
            f"a change to {keys_dir} was interrupted and is not undone yet: run gen.py --list"
        )
    with _interrupts_deferred() as interrupted:
        if len(changes) == 1:
            _apply_one(keys_dir, *changes[0], interrupted)
        else:
            _apply_journaled(keys_dir, changes, interrupted)


UNDONE = "undone"  # recover() undid a change a killed process left half applied
CLEANED = "cleaned"  # recover() only removed stray temporary files (no change was half done)


def recover(keys_dir: Path) -> str | None:
    """Undo a change that a killed process left half applied; remove stray temporary files.

    The caller holds ``locked(keys_dir)``. Returns ``UNDONE`` if a change was undone,
    ``CLEANED`` if only stray files were removed (left by a process killed before its change
    began or after it was complete), None if there was nothing to do.
    Raises JwtGuideError if the journal is not one ``apply_locked`` wrote, OSError if a file
    cannot be restored (the journal then stays, for the next attempt).
    """
    with _interrupts_deferred():
        steps = _read_journal(keys_dir)
        if steps is not None:
            _undo(keys_dir, steps)
            _finish(keys_dir, steps)
        strays = [
            p for p in keys_dir.iterdir()
            if p.name.startswith((TEMP_PREFIX, BACKUP_PREFIX)) and not p.is_dir()
        ]  # fmt: skip
        for path in strays:
            path.unlink(missing_ok=True)
        if strays:
            _fsync_dir(keys_dir)
    if steps is not None:
        return UNDONE
    return CLEANED if strays else None


@dataclass(frozen=True)
class _Step:
    name: str  # the file this step writes or deletes
    temp: str | None  # the temporary file renamed onto it; None deletes it
    backup: str | None  # a hard link to its previous contents; None if it had none


class _Undone(Exception):
    """The change was undone because a signal came while it was applied."""


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[Callable[[], bool]]:
    """Block DEFERRED_SIGNALS; yield a function telling whether one came that will stop the
    process once unblocked (its default action, or Python's KeyboardInterrupt)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)

    def interrupted() -> bool:
        pending = (signal.sigpending() & DEFERRED_SIGNALS) - previous
        return any(
            signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL) for sig in pending
        )

    try:
        yield interrupted
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _apply_one(
    keys_dir: Path, name: str, data: bytes | None, interrupted: Callable[[], bool]
) -> None:
    # One rename (or one unlink) is atomic by itself: no journal is needed.
    temp = keys_dir / _fresh_name(TEMP_PREFIX)
    try:
        if data is not None:
            _write_new(temp, data, name in PRIVATE_FILES)
        if interrupted():
            return
        if data is not None:
            os.replace(temp, keys_dir / name)  # the commit point
        else:
            (keys_dir / name).unlink(missing_ok=True)
    finally:
        temp.unlink(missing_ok=True)
    _tidy(keys_dir, ())


def _apply_journaled(
    keys_dir: Path, changes: Sequence[Change], interrupted: Callable[[], bool]
) -> None:
    steps = _plan(keys_dir, changes)
    journal_temp = _fresh_name(TEMP_PREFIX)
    try:
        for step, (_, data) in zip(steps, changes, strict=True):
            if step.temp is not None and data is not None:
                _write_new(keys_dir / step.temp, data, step.name in PRIVATE_FILES)
        _fsync_dir(keys_dir)
        # The journal is in place, whole, before the first file of the folder changes.
        _write_new(keys_dir / journal_temp, _journal_document(steps), private=True)
        os.replace(keys_dir / journal_temp, keys_dir / JOURNAL_FILE)
        _fsync_dir(keys_dir)
        for step in steps:
            _forward(keys_dir, step)
        _fsync_dir(keys_dir)
        if interrupted():
            raise _Undone
        (keys_dir / JOURNAL_FILE).unlink()  # the commit point: from here on the change stays
    except BaseException as e:
        # Whatever was done so far: _undo only restores what a step replaced.
        _undo(keys_dir, steps)
        _finish(keys_dir, steps, journal_temp)
        if isinstance(e, _Undone):
            return
        raise
    _tidy(keys_dir, steps, journal_temp)


def _plan(keys_dir: Path, changes: Sequence[Change]) -> list[_Step]:
    """One step per change, with fresh names for its temporary file and its backup."""
    exists = {name: (keys_dir / name).exists() for name, _ in changes}
    steps: list[_Step] = []
    for name, data in changes:
        temp = _fresh_name(TEMP_PREFIX) if data is not None else None
        steps.append(_Step(name, temp, _fresh_name(BACKUP_PREFIX) if exists[name] else None))
        exists[name] = data is not None
    return steps


def _forward(keys_dir: Path, step: _Step) -> None:
    target = keys_dir / step.name
    if step.backup is not None:
        os.link(target, keys_dir / step.backup)
        _fsync_dir(keys_dir)  # the backup is on disk before the file it keeps is replaced
    if step.temp is not None:
        os.replace(keys_dir / step.temp, target)
    else:
        target.unlink(missing_ok=True)


def _undo(keys_dir: Path, steps: Sequence[_Step]) -> None:
    """Put back each file as it was before the first step, whatever steps were done.

    Idempotent, so that a crash while undoing is undone again: a step not begun has no
    backup yet and its file is untouched; a backup still present holds the file as it was
    before its step (renaming it onto an unchanged file, its own hard link, does nothing).
    """
    for step in reversed(steps):
        target = keys_dir / step.name
        if step.backup is None:
            target.unlink(missing_ok=True)  # the file did not exist before this step
        elif (keys_dir / step.backup).exists():
            os.replace(keys_dir / step.backup, target)
    _fsync_dir(keys_dir)


def _finish(keys_dir: Path, steps: Sequence[_Step], *extra: str) -> None:
    """Remove the journal (the change is then undone for good), then the files it named."""
    (keys_dir / JOURNAL_FILE).unlink(missing_ok=True)
    _fsync_dir(keys_dir)
    _tidy(keys_dir, steps, *extra)


def _tidy(keys_dir: Path, steps: Sequence[_Step], *extra: str) -> None:
    """Remove what is left of the temporary files and backups of a change that is complete.

    Best effort: the change stands whatever happens here, and recover() removes what stays.
    """
    names = [n for s in steps for n in (s.temp, s.backup) if n is not None]
    for name in (*names, *extra):
        with contextlib.suppress(OSError):
            (keys_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        _fsync_dir(keys_dir)


def _journal_document(steps: Sequence[_Step]) -> bytes:
    return json.dumps({"steps": [[s.name, s.temp, s.backup] for s in steps]}).encode()


def _read_journal(keys_dir: Path) -> list[_Step] | None:
    """The steps of the journal, or None if there is none. Raises JwtGuideError if it is not one
    that ``apply_locked`` wrote."""
    path = keys_dir / JOURNAL_FILE
    try:
        raw = json.loads(path.read_bytes())
        steps = [_Step(*entry) for entry in raw["steps"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise _bad_journal(path, str(e)) from None
    for step in steps:
        named = [(step.name, ""), (step.temp, TEMP_PREFIX), (step.backup, BACKUP_PREFIX)]
        for name, prefix in named:
            if not (_is_plain_name(name, prefix) or (name is None and prefix)):
                raise _bad_journal(path, f"{name!r} is not a file of the keys folder")
    return steps


def _bad_journal(path: Path, why: str) -> JwtGuideError:
    return JwtGuideError(
        f"{path} is not a journal that gen.py wrote ({why}): move it out of the folder, "
        "then check the keys with gen.py --list"
    )


def _is_plain_name(name: object, prefix: str) -> bool:
    return (
        isinstance(name, str)
        and name.startswith(prefix)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
    )


def _fresh_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


def _write_new(path: Path, data: bytes, private: bool) -> None:
    """Create ``path`` (it must not exist) with ``data``, synced to disk.

    A private file is created 0600: it is never readable by others, not even for an instant.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if not private:
            os.fchmod(fd, 0o644)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
