"""Ctrl-C right after a script starts, while it still imports the package: exit 130, at most
one line, never a traceback (SPEC "Exit codes and errors")."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_clean_error, free_port, script_env

pytestmark = pytest.mark.e2e

SCRIPTS = ("gen.py", "sign.py", "verify.py", "jwks_server.py", "protected_server.py",
           "make_request.py")  # fmt: skip


def _importing(pid: int) -> bool:
    """Whether ``pid`` has loaded cryptography's native module: past interpreter start-up and
    into the script's own imports, which go on for a good while after it."""
    try:
        return "_rust.abi3.so" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_during_the_imports_is_quiet(keys_dir: Path, script: str) -> None:
    env = script_env(
        JWT_KEYS_DIR=str(keys_dir), JWKS_PORT=str(free_port()), PROTECTED_PORT=str(free_port())
    )
    process = subprocess.Popen(
        [sys.executable, str(ROOT / script)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not _importing(process.pid):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the script never loaded cryptography"
        time.sleep(0.001)  # polling: nothing else tells where the script is
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 130, err
    assert len((out + err).splitlines()) <= 1, out + err
    assert_clean_error(out + err)
