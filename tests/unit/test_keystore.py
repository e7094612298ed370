"""jwt_guide.keystore: atomic changes to the keys folder, crash recovery, and consistent reads.

Crashes are real: a forked child applies a change and SIGKILLs itself at its nth call of a
file-changing function of ``os`` (a write is torn: half its bytes first), for every n, and
the folder it leaves is then recovered and compared with the states before and after.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from jwt_guide import keystore
from jwt_guide.algorithms import PrivateKey, encrypted_pem
from jwt_guide.config import DEFAULT_KID, DEFAULT_PASSPHRASE
from jwt_guide.errors import JwtGuideError, UsageError
from jwt_guide.keystore import (
    CLEANED,
    JOURNAL_FILE,
    KEYRING_FILE,
    UNDONE,
    KeyRecord,
    apply_changes,
    apply_locked,
    keyring_document,
    load_signing_key,
    locked,
    public_pem,
    read_keyring,
    recover,
    thumbprint,
    utc_now,
)
from tests.helpers import every_failure, snapshot

# --- apply_locked and recover on plain files -------------------------------------------------

BEFORE = {"a": b"a0", "b": b"b0", "d": b"d0"}
# A file written twice (a), one created (c), one deleted (d), one replaced (b).
CHANGES: list[keystore.Change] = [
    ("a", b"a1"),
    ("c", b"c1"),
    ("d", None),
    ("a", b"a2"),
    ("b", b"b1"),
]
AFTER = {"a": b"a2", "b": b"b1", "c": b"c1"}


@pytest.fixture
def plain_folder(tmpfs_path: Path) -> Path:
    folder = tmpfs_path / "template"
    folder.mkdir()
    for name, data in BEFORE.items():
        (folder / name).write_bytes(data)
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {name: data for name, (data, _) in snapshot(folder).items()}


def _apply_plain(folder: Path) -> Callable[[], int]:
    def target() -> int:
        with locked(folder):
            apply_locked(folder, CHANGES)
        return 0

    return target


def test_apply_locked_applies_every_change_in_order(plain_folder: Path) -> None:
    assert _apply_plain(plain_folder)() == 0
    assert contents(plain_folder) == AFTER


def test_killed_at_every_step_recovers_to_before_or_after(plain_folder: Path) -> None:
    work = plain_folder.parent / "work"
    seen = set()
    for n, outcome in every_failure("sigkill", plain_folder, work, _apply_plain(work)):
        assert outcome == ("signal", signal.SIGKILL), n
        with locked(work):
            recover(work)
        state = contents(work)
        assert state in (BEFORE, AFTER), (n, state)
        seen.add("before" if state == BEFORE else "after")
    assert seen == {"before", "after"}  # killed both before and after the commit point


@pytest.mark.parametrize("how", ["sigint", "oserror"])
def test_interrupted_or_failing_step_leaves_before_or_after(how: str, plain_folder: Path) -> None:
    """No recovery needed: Ctrl-C and I/O errors are undone in the process itself. Only one
    that comes after the commit point (removing the journal) leaves the change applied."""
    work = plain_folder.parent / "work"
    failed = ("exit", 130 if how == "sigint" else 1)
    states = []
    for n, outcome in every_failure(how, plain_folder, work, _apply_plain_catching(work)):
        if outcome == ("exit", 0):
            # An I/O error while cleaning up after the commit point is not reported; what it
            # left is removed by the next recover().
            assert how == "oserror", n
            with locked(work):
                recover(work)
        else:
            assert outcome == failed, (n, outcome)  # Ctrl-C is reported even after the commit
        state = contents(work)
        assert state in (BEFORE, AFTER), (n, state)
        states.append(state == AFTER)
    assert states == sorted(states)  # once applied, applied: one commit point
    assert True in states


def _apply_plain_catching(folder: Path) -> Callable[[], int]:
    def target() -> int:
        try:
            return _apply_plain(folder)()
        except KeyboardInterrupt:
            return 130
        except OSError:
            return 1

    return target


def test_ctrl_c_while_applying_undoes_then_interrupts(
    plain_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT is held back while files change; the change is undone, then it is delivered."""
    real_replace = os.replace
    sent: list[int] = []

    def replace_after_ctrl_c(src: Any, dst: Any) -> None:
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)  # blocked: stays pending
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_ctrl_c)
    with pytest.raises(KeyboardInterrupt), locked(plain_folder):
        apply_locked(plain_folder, CHANGES)
    assert contents(plain_folder) == BEFORE


def test_ignored_sigint_does_not_undo(plain_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def replace_after_ctrl_c(src: Any, dst: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with locked(plain_folder):
            apply_locked(plain_folder, CHANGES)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert contents(plain_folder) == AFTER


def test_one_file_change_interrupted_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync_after_ctrl_c(fd: int) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_after_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        apply_changes(tmp_path, {"token.txt": b"token"})
    assert list(tmp_path.iterdir()) == []


def test_apply_changes_modes(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        apply_changes(tmp_path, {".private.key": b"k", ".public.key.pem": b"p"})
    finally:
        os.umask(old)
    assert snapshot(tmp_path) == {".private.key": (b"k", 0o600), ".public.key.pem": (b"p", 0o644)}


# --- recover ---------------------------------------------------------------------------------


def test_recover_removes_stray_copies_and_nothing_else(tmp_path: Path) -> None:
    strays = [".tmp-0123456789abcdef", ".bak-fedcba9876543210", ".bak-4242.private.key"]
    kept = ["token.txt", ".private.key", "notes.tmp-", "bak-1"]
    for name in strays + kept:
        (tmp_path / name).write_text(name)
    (tmp_path / ".tmp-dir").mkdir()
    with locked(tmp_path):
        assert recover(tmp_path) == CLEANED
        assert recover(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, ".tmp-dir"])


@pytest.mark.parametrize(
    "journal",
    [
        b"{not json",
        b'{"steps": 3}',
        b'{"steps": [["a", ".tmp-1"]]}',
        b'{"steps": [["../outside", ".tmp-1", null]]}',
        b'{"steps": [["a", "/etc/passwd", null]]}',
        b'{"steps": [["a", ".tmp-1", "b"]]}',
        b'{"steps": [[null, ".tmp-1", null]]}',
    ],
    ids=[
        "not-json",
        "not-a-list",
        "short-step",
        "outside",
        "absolute-temp",
        "bad-backup",
        "no-name",
    ],
)
def test_journal_not_written_by_gen_is_refused(journal: bytes, tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(journal)
    (tmp_path / "a").write_bytes(b"a0")
    with pytest.raises(JwtGuideError) as raised, locked(tmp_path):
        recover(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / JOURNAL_FILE) in message
    assert "\n" not in message
    assert snapshot(tmp_path)["a"][0] == b"a0"


def test_no_change_while_an_interrupted_one_is_not_undone(plain_folder: Path) -> None:
    (plain_folder / JOURNAL_FILE).write_text('{"steps": []}')
    with pytest.raises(JwtGuideError, match=r"run gen\.py --list"), locked(plain_folder):
        apply_locked(plain_folder, CHANGES)
    apply_changes(plain_folder, {"token.txt": b"t"})  # sign.py still writes its token
    with locked(plain_folder):
        assert recover(plain_folder) == UNDONE
        apply_locked(plain_folder, CHANGES)
    assert contents(plain_folder) == {**AFTER, "token.txt": b"t"}


# --- readers ---------------------------------------------------------------------------------


def _record(key: RSAPrivateKey, state: str, kid: str) -> KeyRecord:
    public = key.public_key()
    return KeyRecord(state, kid, utc_now(), thumbprint(public), public_pem(public))


@pytest.fixture
def two_keys(keys_dir: Path, private_key: RSAPrivateKey, other_private_key: RSAPrivateKey) -> Path:
    """The session key current ("my-key-id"), the other key next ("k2")."""
    ring = (_record(private_key, "current", DEFAULT_KID), _record(other_private_key, "next", "k2"))
    (keys_dir / KEYRING_FILE).write_bytes(keyring_document(ring))
    return keys_dir


def test_ring_naming_another_current_key_lists_both_with_their_kids(
    two_keys: Path, private_key: RSAPrivateKey, other_private_key: RSAPrivateKey
) -> None:
    """The moment of a promote when the ring is new and the public key file not yet."""
    ring = (
        _record(other_private_key, "current", "k2"),
        _record(private_key, "retired", DEFAULT_KID),
    )
    (two_keys / KEYRING_FILE).write_bytes(keyring_document(ring))
    read = read_keyring(two_keys, "unused")
    assert [(r.state, r.kid) for r in read.records] == [("current", DEFAULT_KID), ("retired", "k2")]
    assert read.kid_for(thumbprint(other_private_key.public_key())) == "k2"


def test_public_key_replaced_by_hand_is_the_current_key(
    keys_dir: Path, other_private_key: RSAPrivateKey
) -> None:
    (keys_dir / ".public.key.pem").write_text(public_pem(other_private_key.public_key()))
    read = read_keyring(keys_dir, "configured")
    assert [(r.state, r.kid) for r in read.records] == [("current", "configured")]


def test_read_keyring_reads_again_when_a_change_lands_meanwhile(
    two_keys: Path,
    monkeypatch: pytest.MonkeyPatch,
    private_key: RSAPrivateKey,
    other_private_key: RSAPrivateKey,
) -> None:
    """A --force that lands between reading the ring and reading the public key file: the
    new key must not get the default kid from a ring that did not list it yet."""
    new_ring = keyring_document((_record(other_private_key, "current", "k-new"),))
    real = keystore.load_public_key
    landed: list[bool] = []

    def load_while_force_lands(path: Path) -> Any:
        if not landed:
            landed.append(True)
            apply_changes(two_keys, {KEYRING_FILE: new_ring})
            apply_changes(two_keys, {".public.key.pem": public_pem(other_private_key.public_key())
                                     .encode()})  # fmt: skip
        return real(path)

    monkeypatch.setattr(keystore, "load_public_key", load_while_force_lands)
    read = read_keyring(two_keys, DEFAULT_KID)
    assert [(r.state, r.kid) for r in read.records] == [("current", "k-new")]


def test_load_signing_key_reads_again_when_a_change_lands_meanwhile(
    two_keys: Path,
    monkeypatch: pytest.MonkeyPatch,
    private_key: RSAPrivateKey,
    other_private_key: RSAPrivateKey,
) -> None:
    """The private key is read, then a --force replaces every key before the ring is read."""
    real = keystore.load_private_key
    landed: list[bool] = []

    def load_while_force_lands(path: Path, passphrase: str) -> PrivateKey:
        key = real(path, passphrase)
        if not landed:
            landed.append(True)
            pem = encrypted_pem(other_private_key, DEFAULT_PASSPHRASE)
            record = _record(other_private_key, "current", "k-new")
            with locked(two_keys):
                apply_locked(two_keys, [
                    (KEYRING_FILE, keyring_document((record,))),
                    (".public.key.pem", record.public_pem.encode()),
                    (".private.key", pem),
                ])  # fmt: skip
        return key

    monkeypatch.setattr(keystore, "load_private_key", load_while_force_lands)
    key, kid, _ = load_signing_key(two_keys, DEFAULT_PASSPHRASE, DEFAULT_KID)
    assert thumbprint(key.public_key()) == thumbprint(other_private_key.public_key())
    assert kid == "k-new"


def test_load_signing_key_pairs_by_thumbprint(two_keys: Path, private_key: RSAPrivateKey) -> None:
    key, kid, _ = load_signing_key(two_keys, DEFAULT_PASSPHRASE, "default")
    assert thumbprint(key.public_key()) == thumbprint(private_key.public_key())
    assert kid == DEFAULT_KID
    (two_keys / KEYRING_FILE).unlink()
    assert load_signing_key(two_keys, DEFAULT_PASSPHRASE, "default")[1] == "default"
    (two_keys / ".private.key").unlink()
    with pytest.raises(UsageError, match=r"run gen\.py first"):
        load_signing_key(two_keys, DEFAULT_PASSPHRASE, "default")


def test_journal_names_only_files_of_the_folder(
    plain_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a crash leaves: the journal lists each step's file, temporary file and backup."""
    seen: list[dict[str, Any]] = []
    real_link = os.link

    def link_and_look(src: Any, dst: Any) -> None:
        seen.append(json.loads((plain_folder / JOURNAL_FILE).read_bytes()))
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_and_look)
    with locked(plain_folder):
        apply_locked(plain_folder, CHANGES)
    steps = seen[0]["steps"]
    assert [s[0] for s in steps] == [name for name, _ in CHANGES]
    assert all(s[1] is None or s[1].startswith(".tmp-") for s in steps)
    assert all(s[2] is None or s[2].startswith(".bak-") for s in steps)
    assert contents(plain_folder) == AFTER
