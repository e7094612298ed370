"""The guide end to end through the real scripts and servers (a first, broad check)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.conftest import ServerFactory, run_script, script_env

pytestmark = pytest.mark.e2e


def test_guide_end_to_end(keys_dir: Path, start_server: ServerFactory) -> None:
    env = script_env(JWT_KEYS_DIR=str(keys_dir))
    signed = run_script("sign.py", env=env)
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith("Signed token: ")
    verified = run_script("verify.py", env=env)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("Decoded token data {")
    jwks = start_server("jwks_server.py", "JWKS_PORT", JWT_KEYS_DIR=str(keys_dir))
    assert "JWKS API is on port" in jwks.output()
    keys = requests.get(f"{jwks.base}/keys", timeout=5).json()["keys"]
    assert [k["kid"] for k in keys] == ["my-key-id"]
    protected = start_server(
        "protected_server.py", "PROTECTED_PORT", JWKS_URI=f"{jwks.base}/keys"
    )
    called = run_script(
        "make_request.py", env={**env, "PROTECTED_URL": f"{protected.base}/with-auth"}
    )
    assert called.returncode == 0, called.stderr
    assert called.stdout.startswith('Result: {"userId":"a-b-c-d","iat":')
