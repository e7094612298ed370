"""Key rotation with the real scripts: a promote killed half way, then the next commands;
next -> promote -> prune while both servers run and a client calls without pause, with a
next key of the same algorithm or of another (RS256 -> ES256, an issuer's migration)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import BITS, ROOT, ServerFactory, run_script, script_env, snapshot

pytestmark = pytest.mark.e2e


def test_kill_9_during_promote_then_the_real_scripts(keys_dir: Path) -> None:
    """The issue's case, with the real scripts: gen.py --promote SIGKILLed half way (after
    the public key is replaced), then gen.py --list, sign.py and verify.py."""
    env = script_env(JWT_KEYS_DIR=str(keys_dir))
    assert run_script("gen.py", "--next", "--kid", "k2", *BITS, env=env).returncode == 0
    before = snapshot(keys_dir)
    wrapper = (
        "import os, runpy, signal, sys\n"
        "real, calls = os.replace, []\n"
        "def replace(src, dst):\n"
        "    if os.path.basename(dst) == '.private.key':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(src, dst)\n"
        "os.replace = replace\n"
        "sys.argv = ['gen.py', '--promote']\n"
        f"runpy.run_path({str(ROOT / 'gen.py')!r}, run_name='__main__')\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", wrapper], env=env, capture_output=True, timeout=60, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    assert {p.name for p in keys_dir.iterdir()} > set(before)  # journal, copies of keys
    listed = run_script("gen.py", "--list", env=env)
    assert listed.returncode == 0
    assert (
        listed.stderr
        == f"gen: a gen.py command was interrupted in {keys_dir}: its change is undone\n"
    )
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [
        ["next", "k2"], ["current", "my-key-id"]
    ]  # fmt: skip
    assert snapshot(keys_dir) == before
    for script in ("sign.py", "verify.py"):
        result = run_script(script, env=env)
        assert result.returncode == 0, result.stderr
    promoted = run_script("gen.py", "--promote", env=env)
    assert promoted.returncode == 0 and promoted.stderr == ""


@pytest.mark.parametrize(
    ("next_key", "alg"), [(list(BITS), "RS256"), (["--alg", "ES256"], "ES256")],
    ids=["rs256-to-rs256", "rs256-to-es256"],
)  # fmt: skip
def test_rotation_with_servers_running(
    next_key: list[str], alg: str, keys_dir: Path, start_server: ServerFactory
) -> None:
    """A client calling in a loop sees no error during next -> promote -> prune; the old
    key's RS256 token is accepted until prune and cache expiry, then refused; the new key
    signs by its own algorithm from --promote on."""
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
        for args in (["--next", "--kid", "k2", *next_key], ["--promote"]):
            result = run_script("gen.py", *args, env=env)
            assert result.returncode == 0, result.stderr
            time.sleep(1.5)  # let the client keep calling across a JWKS cache expiry
        token_b = token()
        assert json.loads(base64.urlsafe_b64decode(token_b.split(".")[0] + "=="))["alg"] == alg
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
    published = requests.get(f"{jwks.base}/keys", timeout=5).json()["keys"]
    assert [(k["kid"], k["alg"]) for k in published] == [("k2", alg)]
