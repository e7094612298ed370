"""Key rotation (jwt_guide.rotation through gen.py --next/--promote/--prune/--list, in
process): every command, its refusals, and crash safety at every file change."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwcrypto.jwk import JWK

import gen
import sign
import verify
from jwt_guide import rotation
from jwt_guide.algorithms import encrypted_pem
from jwt_guide.config import DEFAULT_KID, DEFAULT_PASSPHRASE, load_config
from jwt_guide.errors import UsageError
from jwt_guide.http.jwks_app import build_jwks
from jwt_guide.keystore import (
    KEYRING_FILE,
    NEXT_PRIVATE_KEY_FILE,
    load_signing_key,
    read_keyring,
    thumbprint,
    utc_now,
)
from tests.helpers import (
    BITS,
    State,
    alg_args,
    assert_clean_error,
    b64,
    every_failure,
    run_failing_at,
    snapshot,
)


def run_gen(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = gen.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def kids(keys_dir: Path) -> dict[str, str]:
    ring = read_keyring(keys_dir, "unused")
    return {r.kid: r.state for r in ring.records}


def test_first_key_keeps_the_guides_kid(keys_dir: Path) -> None:
    assert kids(keys_dir) == {"my-key-id": "current"}


def test_next_promote_prune_cycle(keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_gen(capsys, "--next", "--kid", "k2", *BITS)
    assert code == 0 and "'k2'" in out
    assert kids(keys_dir) == {"my-key-id": "current", "k2": "next"}
    assert (keys_dir / NEXT_PRIVATE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    # The next key does not sign yet.
    assert sign.main([]) == 0
    assert '"kid":"my-key-id"' in _header(keys_dir)
    capsys.readouterr()

    code, out, _ = run_gen(capsys, "--promote")
    assert code == 0
    assert kids(keys_dir) == {"k2": "current", "my-key-id": "retired"}
    assert not (keys_dir / NEXT_PRIVATE_KEY_FILE).exists()
    assert (keys_dir / ".private.key").stat().st_mode & 0o777 == 0o600
    assert sign.main([]) == 0
    assert '"kid":"k2"' in _header(keys_dir)
    capsys.readouterr()

    code, _, err = run_gen(capsys, "--prune")
    assert code == 1
    assert "may still verify tokens for 24.0 h" in err and "--prune --force" in err
    code, out, _ = run_gen(capsys, "--prune", "--force")
    assert code == 0 and "'my-key-id'" in out
    assert kids(keys_dir) == {"k2": "current"}


def _header(keys_dir: Path) -> str:
    token = (keys_dir / "token.txt").read_text().strip()
    segment = token.split(".")[0]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()


def test_prune_after_max_age_needs_no_force(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_gen(capsys, "--next", "--kid", "k2", *BITS)[0] == 0
    assert run_gen(capsys, "--promote")[0] == 0
    config = load_config()
    ring = read_keyring(keys_dir, config.kid)
    later = datetime.now(UTC) + timedelta(days=1, seconds=5)
    pruned = rotation.prune(config, ring, force=False, now=later)
    assert [r.kid for r in pruned] == ["my-key-id"]


def test_list_shows_state_kid_time_thumbprint(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_gen(capsys, "--next", "--kid", "thumbprint", *BITS)[0] == 0
    code, out, _ = run_gen(capsys, "--list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["next", "current"]
    next_kid = lines[0].split()[1]
    assert lines[0].endswith(f"thumbprint {next_kid}")  # --kid thumbprint: kid == RFC 7638
    assert "created 20" in lines[1] and lines[1].split()[1] == "my-key-id"


def test_guide_files_alone_still_work(
    keys_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder with only .private.key and .public.key.pem (older version, or openssl)."""
    (keys_dir / KEYRING_FILE).unlink()
    monkeypatch.setenv("JWT_KID", "from-env")
    assert sign.main([]) == 0
    assert '"kid":"from-env"' in _header(keys_dir)
    capsys.readouterr()
    code, out, _ = run_gen(capsys, "--list")
    assert code == 0
    assert out.startswith("current  from-env")


REFUSALS = [
    ("promote without next", [], ["--promote"], "no next key"),
    ("second next", [["--next", "--kid", "k2"]], ["--next", "--kid", "k3"], "already a next key"),
    ("duplicate kid", [], ["--next", "--kid", "my-key-id"], "already in use"),
    ("prune too early", [["--next", "--kid", "k2"], ["--promote"]], ["--prune"], "may still"),
    ("gen over keys", [], [], "invalidates every token"),
]


@pytest.mark.parametrize(
    ("before", "command", "message"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refused_commands_leave_folder_unchanged(
    keys_dir: Path,
    capsys: pytest.CaptureFixture[str],
    before: list[list[str]],
    command: list[str],
    message: str,
) -> None:
    for args in before:
        assert run_gen(capsys, *args, *(BITS if "--next" in args else []))[0] == 0
    was = snapshot(keys_dir)
    code, out, err = run_gen(capsys, *command, *(BITS if "--next" in command else []))
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1
    assert_clean_error(out + err)
    assert snapshot(keys_dir) == was


def test_next_without_current_key(empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_gen(capsys, "--next", *BITS)
    assert code == 1 and "run gen.py first" in err
    assert not empty_keys_dir.exists()  # a refused command creates nothing


@pytest.mark.parametrize("failing_call", [1, 2, 3, 4])
def test_interrupted_promote_puts_everything_back(
    keys_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    failing_call: int,
) -> None:
    assert run_gen(capsys, "--next", "--kid", "k2", *BITS)[0] == 0
    was = snapshot(keys_dir)
    real_replace, real_unlink = os.replace, os.unlink
    calls = {"n": 0}

    def interrupt_at(call: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*args: object) -> None:
            calls["n"] += 1
            if calls["n"] == failing_call:
                raise KeyboardInterrupt
            call(*args)

        return wrapper

    monkeypatch.setattr(os, "replace", interrupt_at(real_replace))
    monkeypatch.setattr(os, "unlink", interrupt_at(real_unlink))
    assert gen.main(["--promote"]) == 130
    assert capsys.readouterr().err == "gen: interrupted\n"
    monkeypatch.undo()
    os.environ["JWT_KEYS_DIR"] = str(keys_dir)  # undo() also removed the fixture's setting
    assert snapshot(keys_dir) == was


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: (d / KEYRING_FILE).write_text("{not json"), id="corrupt ring"),
        pytest.param(
            lambda d: (d / KEYRING_FILE).write_text('{"keys": [{"state": "x"}]}'), id="bad record"
        ),
        pytest.param(lambda d: (d / ".public.key.pem").write_text("garbage"), id="bad public key"),
    ],
)
def test_corrupt_folder_is_one_clear_line(
    keys_dir: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], None]
) -> None:
    damage(keys_dir)
    was = snapshot(keys_dir)
    for command in (["--list"], ["--promote"], ["--next", *BITS]):
        code, out, err = run_gen(capsys, *command)
        assert code == 1
        assert len(err.strip().splitlines()) == 1 and err.startswith("gen: ")
        assert_clean_error(out + err)
    assert snapshot(keys_dir) == was


def test_force_replaces_every_key(keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_gen(capsys, "--next", "--kid", "k2", *BITS)[0] == 0
    assert run_gen(capsys, "--force", *BITS)[0] == 0
    assert kids(keys_dir) == {"my-key-id": "current"}
    assert not (keys_dir / NEXT_PRIVATE_KEY_FILE).exists()


def test_created_time_is_utc(keys_dir: Path) -> None:
    ring = json.loads((keys_dir / KEYRING_FILE).read_text())
    assert ring["keys"][0]["created"].endswith("Z")
    assert utc_now() >= ring["keys"][0]["created"]


# --- crashes, Ctrl-C and I/O errors at every step of every command ---------------------------

FIXED_TIME = "2030-01-02T03:04:05Z"
# (id, commands that make the folder before, the command under test)
COMMANDS = [
    ("create", None, ["--kid", "k-new"]),
    ("next", [], ["--next", "--kid", "k-new"]),
    ("promote", [["--next", "--kid", "k2", *BITS]], ["--promote"]),
    ("prune", [["--next", "--kid", "k2", *BITS], ["--promote"]], ["--prune", "--force"]),
    ("force", [["--next", "--kid", "k2", *BITS]], ["--force", "--kid", "k-new"]),
    ("force-guide-files", "guide files", ["--force", "--kid", "k-new"]),
]


@dataclass
class Scenario:
    """A gen.py command, the folder before it, and the folder after it."""

    template: Path
    work: Path
    argv: list[str]
    target: Callable[[], int]
    before: State
    after: State
    after_keys: dict[str, bytes]
    kid_of: dict[str, str]  # thumbprint -> kid, for every key before or after


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest,
    *,
    keys_dir: Path,
    tmpfs_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    other_private_key: RSAPrivateKey,
) -> Scenario:
    """The command of ``request.param`` (an id of COMMANDS), made deterministic (the new key,
    its encryption and the clock are fixed) so that the folder after it is known exactly.

    Private keys are loaded without OpenSSL's checks of the key itself, here and in the
    forked children: they take 30-100 ms a key, and a command runs about 40 times.
    """
    _, setup, argv = next(c for c in COMMANDS if c[0] == request.param)
    request.getfixturevalue("fast_key_loading")
    shutil.rmtree(keys_dir)
    keys_dir.mkdir()
    if setup is not None:
        # 2048 bits: a 4096-bit key takes 0.2 s to load (its checks), each of ~50 times. Not
        # the default kid: a reader that falls back to it for a key the ring does not list
        # (yet, or any more) would pair the key with the wrong kid, and the test sees it.
        assert run_gen(capsys, *BITS, "--kid", "k-old")[0] == 0
    if setup == "guide files":
        (keys_dir / KEYRING_FILE).unlink()
    else:
        for args in setup or ():
            assert run_gen(capsys, *args)[0] == 0
    template = tmpfs_path / "template"
    shutil.copytree(keys_dir, template)
    work = tmpfs_path / "work"
    monkeypatch.setenv("JWT_KEYS_DIR", str(work))
    pem = encrypted_pem(other_private_key, DEFAULT_PASSPHRASE)

    def target() -> int:  # runs in a forked child: the patches die with it
        rsa.generate_private_key = lambda **_: other_private_key
        rotation.encrypted_pem = lambda *_: pem  # type: ignore[attr-defined]
        rotation.utc_now = lambda: FIXED_TIME  # type: ignore[attr-defined]
        return gen.main(argv)

    after_dir = tmpfs_path / "after"
    shutil.copytree(template, work)
    assert run_failing_at(0, "sigkill", target)[0] == ("exit", 0)
    work.rename(after_dir)
    kid_of = {}
    for folder in (template, after_dir):
        kid_of.update({r.thumbprint: r.kid for r in read_keyring(folder, DEFAULT_KID).records})
    before, after = snapshot(template), snapshot(after_dir)
    assert before != after
    return Scenario(template, work, argv, target, before, after, key_files(after_dir), kid_of)


def key_files(folder: Path) -> dict[str, bytes]:
    """The files of a keys folder that readers read."""
    names = (".private.key", ".public.key.pem", KEYRING_FILE, NEXT_PRIVATE_KEY_FILE)
    return {name: (folder / name).read_bytes() for name in names if (folder / name).exists()}


def assert_readers_pair_keys_with_their_kids(folder: Path, kid_of: dict[str, str]) -> None:
    """What sign.py and jwks_server.py read from ``folder`` pairs every key with its kid."""
    try:
        key, kid, _ = load_signing_key(folder, DEFAULT_PASSPHRASE, DEFAULT_KID)
    except UsageError:
        pass  # no private key (the first key is not in yet): nothing to sign with
    else:
        assert kid == kid_of[thumbprint(key.public_key())]
    try:
        key_set = build_jwks(folder, DEFAULT_KID)
    except UsageError:
        return  # no public key yet: the JWKS server answers 500
    for jwk in key_set["keys"]:
        assert jwk["kid"] == kid_of[JWK(**jwk).thumbprint()]


def assert_sign_and_verify_work(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (folder / ".private.key").exists():
        return  # the state before the first key: nothing to sign with
    monkeypatch.setenv("JWT_KEYS_DIR", str(folder))
    assert sign.main([]) == 0
    assert verify.main([]) == 0


@pytest.mark.parametrize("scenario", [c[0] for c in COMMANDS], indirect=True)
def test_killed_at_every_step_next_command_recovers(
    scenario: Scenario,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILL at each file-changing call: before recovery, readers never pair a key with
    another key's kid; the next gen.py command (--list) brings the folder back to the state
    before or after, with no other file (no temporary copy of a private key)."""
    seen, intermediate = set(), 0
    capsys.readouterr()
    for n, outcome in every_failure("sigkill", scenario.template, scenario.work, scenario.target):
        assert outcome == ("signal", signal.SIGKILL), n
        if key_files(scenario.work) not in (key_files(scenario.template), scenario.after_keys):
            # A change half applied (elsewhere the key files are those before or after)
            assert_readers_pair_keys_with_their_kids(scenario.work, scenario.kid_of)
            intermediate += 1
        code, _, err = run_gen(capsys, "--list")
        assert code == 0, err
        undone = (f"gen: a gen.py command was interrupted in {scenario.work}: "
                  "its change is undone\n")  # fmt: skip
        cleaned = ("gen: removed the temporary files an interrupted gen.py command left in "
                   f"{scenario.work}\n")  # fmt: skip
        assert err in ("", undone, cleaned)
        state = snapshot(scenario.work)
        assert state in (scenario.before, scenario.after), n
        if err == undone:  # never said of a change that was made after all
            assert state == scenario.before, n
        seen.add(state == scenario.after)
    assert seen == {False, True}
    assert intermediate > 0 or scenario.argv == ["--prune", "--force"]  # one file: no middle
    for state_dir in (scenario.template, scenario.template.parent / "after"):
        assert_sign_and_verify_work(state_dir, monkeypatch)


@pytest.mark.parametrize(
    ("how", "scenario"), [("sigint", "promote"), ("oserror", "force")], indirect=["scenario"]
)
def test_ctrl_c_or_io_error_at_every_step_leaves_before_or_after(
    scenario: Scenario, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without any recovery: Ctrl-C (exit 130) and I/O errors (exit 1) undo the change, but
    for one after the commit point: Ctrl-C then comes once the change is complete."""
    applied = []
    for n, outcome in every_failure(how, scenario.template, scenario.work, scenario.target):
        state = snapshot(scenario.work)
        if how == "sigint":
            assert outcome == ("exit", 130), n
            assert state in (scenario.before, scenario.after), n
            applied.append(state == scenario.after)
        elif outcome == ("exit", 0):  # an error while cleaning up after the commit point
            assert run_gen(capsys, "--list")[0] == 0
            assert snapshot(scenario.work) == scenario.after, n
        else:
            assert outcome == ("exit", 1), n
            assert state == scenario.before, n
    assert applied == sorted(applied)  # Ctrl-C after the commit point only leaves it applied


# --- refusals that must change nothing --------------------------------------------------------


def test_promote_with_the_wrong_passphrase_changes_nothing(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_gen(capsys, "--next", "--kid", "k2", *BITS)[0] == 0
    was = snapshot(keys_dir)
    monkeypatch.setenv("JWT_PASSPHRASE", "not-the-passphrase")
    code, out, err = run_gen(capsys, "--promote")
    assert code == 1
    assert out == ""
    assert err == (
        f"gen: cannot decrypt {keys_dir / NEXT_PRIVATE_KEY_FILE}: wrong passphrase "
        "(JWT_PASSPHRASE) or not an encrypted key\n"
    )
    assert "not-the-passphrase" not in err
    assert_clean_error(err)
    assert snapshot(keys_dir) == was
    monkeypatch.delenv("JWT_PASSPHRASE")
    assert sign.main([]) == 0  # the current key still signs


def test_promote_refuses_a_next_key_file_that_is_not_the_rings(
    keys_dir: Path, capsys: pytest.CaptureFixture[str], other_private_key: RSAPrivateKey
) -> None:
    assert run_gen(capsys, "--next", "--kid", "k2", *BITS)[0] == 0
    (keys_dir / NEXT_PRIVATE_KEY_FILE).write_bytes(
        encrypted_pem(other_private_key, DEFAULT_PASSPHRASE)
    )
    was = snapshot(keys_dir)
    code, _, err = run_gen(capsys, "--promote")
    assert code == 1 and len(err.splitlines()) == 1
    assert "'k2'" in err and str(keys_dir / NEXT_PRIVATE_KEY_FILE) in err
    assert snapshot(keys_dir) == was


@pytest.mark.parametrize(
    ("command", "code"),
    [(["--list"], 2), (["--next", *BITS], 1), (["--promote"], 1), (["--prune"], 1),
     (["--prune", "--force"], 1)],
    ids=["list", "next", "promote", "prune", "prune-force"],
)  # fmt: skip
def test_missing_keys_folder(
    command: list[str], code: int, empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SPEC: --list reads a missing input (exit 2, as sign.py); rotation commands need a
    current key (exit 1); none creates the folder."""
    result, out, err = run_gen(capsys, *command)
    assert (result, out) == (code, "")
    assert err == f"gen: no keys folder at {empty_keys_dir}: run gen.py first\n"
    assert not empty_keys_dir.exists()


@pytest.mark.parametrize("command", [["--next", *BITS], ["--promote"], ["--prune", "--force"]])
def test_rotation_without_a_current_key(
    command: list[str], keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retired keys, but no current key (its files deleted by hand)."""
    assert run_gen(capsys, "--next", "--kid", "k2", *BITS)[0] == 0
    assert run_gen(capsys, "--promote")[0] == 0
    for name in (".private.key", ".public.key.pem"):
        (keys_dir / name).unlink()
    was = snapshot(keys_dir)
    code, _, err = run_gen(capsys, *command)
    assert code == 1
    assert err == f"gen: no current key in {keys_dir}: run gen.py first\n"
    assert snapshot(keys_dir) == was


# --- rotation across algorithms ---------------------------------------------------------------


def _token_header(keys_dir: Path) -> dict[str, str]:
    header: dict[str, str] = json.loads(_header(keys_dir))
    return header


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
def test_next_with_another_algorithm_then_promote(
    alg: str, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RS256 current, --next --alg X, --promote: sign.py switches to X with the new kid;
    tokens of the retired RS256 key still verify, each by its own key's algorithm."""
    assert sign.main([]) == 0
    old_token = (keys_dir / "token.txt").read_text()
    code, out, _ = run_gen(capsys, "--next", "--kid", "k2", *alg_args(alg))
    assert code == 0 and f"'k2' ({alg})" in out
    assert [(jwk["kid"], jwk["alg"]) for jwk in build_jwks(keys_dir, DEFAULT_KID)["keys"]] == [
        ("my-key-id", "RS256"), ("k2", alg)
    ]  # fmt: skip
    assert run_gen(capsys, "--promote")[0] == 0
    code, out, _ = run_gen(capsys, "--list")
    assert [line.split()[:4] for line in out.splitlines()] == [
        ["current", "k2", "alg", alg], ["retired", "my-key-id", "alg", "RS256"]
    ]  # fmt: skip
    assert sign.main([]) == 0
    assert _token_header(keys_dir) == {"alg": alg, "kid": "k2", "typ": "JWT"}
    capsys.readouterr()
    for token in (old_token, (keys_dir / "token.txt").read_text()):
        assert verify.main(["--token", token]) == 0, capsys.readouterr().err
    # The old token's alg on the new key, or the reverse: refused before any signature check.
    swapped = old_token.replace(old_token.split(".")[0], b64(json.dumps(
        {"alg": "RS256", "kid": "k2", "typ": "JWT"}).encode()), 1)  # fmt: skip
    capsys.readouterr()
    assert verify.main(["--token", swapped]) == 1
    assert capsys.readouterr().err.startswith("verify: algorithm: token has 'RS256', its key is")


def test_a_ring_without_alg_is_rs256(keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key ring written by the version before algorithms: every key is RSA, so RS256."""
    assert run_gen(capsys, "--next", "--kid", "k2", *BITS)[0] == 0
    ring_path = keys_dir / KEYRING_FILE
    document = json.loads(ring_path.read_text())
    for record in document["keys"]:
        del record["alg"]
    ring_path.write_text(json.dumps(document))
    assert {r.kid: r.alg for r in read_keyring(keys_dir, DEFAULT_KID).records} == {
        "my-key-id": "RS256", "k2": "RS256"
    }  # fmt: skip
    code, out, _ = run_gen(capsys, "--list")
    assert code == 0 and all(" alg RS256 " in line for line in out.splitlines())
    assert run_gen(capsys, "--promote")[0] == 0
    assert sign.main([]) == 0
    assert _token_header(keys_dir)["alg"] == "RS256"
    assert json.loads(ring_path.read_text())["keys"][0]["alg"] == "RS256"  # written from now on


@pytest.mark.parametrize(
    ("alg", "why"),
    [("ES256", "does not fit"), ("HS256", "not one of"), (7, "not a string")],
    ids=["misfit", "unknown", "not-a-string"],
)
def test_a_ring_whose_alg_does_not_fit_is_corrupt(
    alg: Any, why: str, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring_path = keys_dir / KEYRING_FILE
    document = json.loads(ring_path.read_text())
    document["keys"][0]["alg"] = alg
    ring_path.write_text(json.dumps(document))
    code, _, err = run_gen(capsys, "--list")
    assert code == 1
    assert f"{ring_path} is corrupt" in err and why in err
    assert_clean_error(err)
