"""make serve: both servers under granian, honouring the environment, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, assert_clean_error, free_port, run_script, script_env

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    """Every live process whose session is ``pid``'s child's (granian masters and workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid or int(fields[3]) == pid:  # parent, or process group
            found.append(int(entry.name))
    return found


def test_serve_runs_the_guide_and_stops_on_sigterm(keys_dir: Path, tmp_path: Path) -> None:
    jwks_port, protected_port = free_port(), free_port()
    env = script_env(
        JWT_KEYS_DIR=str(keys_dir), JWKS_PORT=str(jwks_port),
        PROTECTED_PORT=str(protected_port), SERVER_WORKERS="1",
    )  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "serve.py")], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while "Backend is running" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert f"JWKS API is on port {jwks_port}" in text
        assert f"Backend is running on port {protected_port}" in text
        keys = requests.get(f"http://127.0.0.1:{jwks_port}/keys", timeout=5)
        assert keys.status_code == 200
        assert keys.json()["keys"][0]["kid"] == "my-key-id"
        assert run_script("sign.py", env=env).returncode == 0
        called = run_script("make_request.py", env=env)
        assert called.returncode == 0, called.stderr
        assert called.stdout.startswith('Result: {"userId":"a-b-c-d"')
        # The servers run under granian, not werkzeug's development server.
        assert "Werkzeug" not in keys.headers.get("Server", "")
        descendants = _children(process.pid)
        assert descendants
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0
    assert "Stopping both servers" in log.read_text()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in descendants):
        assert time.monotonic() < deadline, "granian processes outlived serve.py"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_serve_bad_setting_is_one_line(keys_dir: Path) -> None:
    result = run_script("serve.py", env=script_env(JWKS_PORT="abc"))
    assert result.returncode == 2
    assert result.stderr.strip() == "serve: JWKS_PORT='abc' is not a whole number"
    assert_clean_error(result.stdout + result.stderr)
