"""What every script does as a subprocess: --help without keys; a server without keys stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SCRIPTS, free_port, run_script, script_env

pytestmark = pytest.mark.e2e


# What each --help must mention: every option, with its default and variable in the text.
OPTIONS = {
    "gen.py": ("--next", "--promote", "--prune", "--list", "--force", "--kid", "--bits"),
    "sign.py": ("--payload", "--expires-in", "--audience", "JWT_EXPIRES_IN"),
    "verify.py": ("--token", "--token-file", "--public-key", "--audience", "--max-age",
                  "--leeway", "--inspect"),
    "jwks_server.py": ("--export", "JWKS_PORT"),
    "protected_server.py": ("PROTECTED_PORT", "JWKS_URI"),
    "make_request.py": ("PROTECTED_URL",),
}  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPTS)
def test_help_works_with_no_keys(script: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = run_script(script, "--help", env=script_env(JWT_KEYS_DIR=str(keys)), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}")
    assert result.stderr == ""
    for option in OPTIONS[script]:
        assert option in result.stdout
    assert not keys.exists()


def test_server_without_keys_exits_at_once(empty_keys_dir: Path) -> None:
    env = script_env(JWT_KEYS_DIR=str(empty_keys_dir), JWKS_PORT=str(free_port()))
    result = run_script("jwks_server.py", env=env, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.endswith(": run gen.py first\n")
    assert len(result.stderr.splitlines()) == 1
