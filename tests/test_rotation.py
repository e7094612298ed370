"""Key rotation (gen.py --next/--promote/--prune/--list), unit tests and end to end."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

import gen
import sign
from config import load_config
from keystore import KEYRING_FILE, NEXT_PRIVATE_KEY_FILE, read_keyring, utc_now
from tests.conftest import ServerFactory, assert_clean_error, run_script, script_env

BITS = ["--bits", "2048"]  # rotation logic does not depend on the key size; keep tests fast


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the folder with its bytes and mode."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(folder.iterdir())
    }


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
    pruned = gen.prune(config, ring, force=False, now=later)
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


def test_next_without_current_key(
    empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
    with pytest.raises(KeyboardInterrupt):
        gen.main(["--promote"])
    monkeypatch.undo()
    os.environ["JWT_KEYS_DIR"] = str(keys_dir)  # undo() also removed the fixture's setting
    assert snapshot(keys_dir) == was


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: (d / KEYRING_FILE).write_text("{not json"), id="corrupt ring"),
        pytest.param(lambda d: (d / KEYRING_FILE).write_text('{"keys": [{"state": "x"}]}'),
                     id="bad record"),
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


@pytest.mark.e2e
def test_rotation_with_servers_running(keys_dir: Path, start_server: ServerFactory) -> None:
    """A client calling in a loop sees no error during next -> promote -> prune; the old
    key's token is accepted until prune and cache expiry, then refused."""
    env = script_env(JWT_KEYS_DIR=str(keys_dir))
    fast = {"JWKS_CACHE_SECONDS": "1", "JWKS_REQUESTS_PER_MINUTE": "600"}
    jwks = start_server("jwks_server.py", "JWKS_PORT", JWT_KEYS_DIR=str(keys_dir), **fast)
    protected = start_server(
        "protected_server.py", "PROTECTED_PORT", JWKS_URI=f"{jwks.base}/keys", **fast
    )
    url = f"{protected.base}/with-auth"

    def token() -> str:
        result = run_script("sign.py", env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()[-1]

    def call(tok: str) -> int:
        return requests.get(url, headers={"Authorization": f"Bearer {tok}"}, timeout=10).status_code

    current = {"token": token()}
    token_a = current["token"]
    failures: list[int] = []
    stop = threading.Event()

    def client() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            status = call(current["token"])
            if status != 200:
                failures.append(status)
            time.sleep(0.02)

    loop = threading.Thread(target=client)
    loop.start()
    try:
        for args in (["--next", "--kid", "k2", *BITS], ["--promote"]):
            result = run_script("gen.py", *args, env=env)
            assert result.returncode == 0, result.stderr
            time.sleep(1.5)  # let the client keep calling across a JWKS cache expiry
        token_b = token()
        current["token"] = token_b
        assert call(token_a) == 200 and call(token_b) == 200  # the overlap
        time.sleep(1.5)
        assert call(token_a) == 200  # still published (retired), so still accepted
        result = run_script("gen.py", "--prune", "--force", env=env)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 15
        while call(token_a) == 200:
            assert time.monotonic() < deadline, "old token still accepted after prune"
            time.sleep(0.2)
        assert call(token_a) == 401
        assert call(token_b) == 200
    finally:
        stop.set()
        loop.join(15)
    assert failures == []
    assert [k["kid"] for k in requests.get(f"{jwks.base}/keys", timeout=5).json()["keys"]] == [
        "k2"
    ]
