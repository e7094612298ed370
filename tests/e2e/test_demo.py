"""make demo: the whole guide end to end, stopping the servers it started."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, free_port, run_script, script_env, start_script

pytestmark = pytest.mark.e2e


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_demo_runs_every_step_and_stops_the_servers(keys_dir: Path) -> None:
    jwks_port, protected_port = free_port(), free_port()
    env = script_env(
        JWT_KEYS_DIR=str(keys_dir), JWKS_PORT=str(jwks_port), PROTECTED_PORT=str(protected_port)
    )
    result = run_script("tools/demo.py", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "keys exist" in out  # keys are generated only if there are none
    for expected in (
        "Signed token: ",
        "Decoded token data {",
        f"JWKS API is on port {jwks_port}",
        f"Backend is running on port {protected_port}",
        'Result: {"userId":"a-b-c-d"',
        "both servers are stopped",
    ):
        assert expected in out
    assert _port_is_free(jwks_port)
    assert _port_is_free(protected_port)


def test_demo_stops_what_it_started_when_a_step_fails(keys_dir: Path) -> None:
    jwks_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        protected_port = taken.getsockname()[1]
        env = script_env(
            JWT_KEYS_DIR=str(keys_dir), JWKS_PORT=str(jwks_port),
            PROTECTED_PORT=str(protected_port),
        )  # fmt: skip
        result = run_script("tools/demo.py", env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"demo: port {protected_port}")
    assert_clean_error(result.stdout + result.stderr)
    assert _port_is_free(jwks_port)  # the JWKS server it had started is stopped


@pytest.mark.parametrize(
    ("signum", "to_group", "code"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["ctrl-c-to-the-group", "sigterm-to-demo"],
)
def test_interrupted_demo_stops_everything_in_one_line(
    signum: int, to_group: bool, code: int, keys_dir: Path
) -> None:
    """Ctrl-C reaches the whole process group (as from a terminal): one line, exit 130, no
    traceback from the demo or a script, and both ports free again. SIGTERM likewise."""
    jwks_port, protected_port = free_port(), free_port()
    env = script_env(
        JWT_KEYS_DIR=str(keys_dir), JWKS_PORT=str(jwks_port), PROTECTED_PORT=str(protected_port)
    )
    demo = start_script("tools/demo.py", env=env, session=True)
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:  # the JWKS server is up; the protected server is starting
            seen.append(line)
            if line.startswith("JWKS API is on port"):
                break
        else:
            pytest.fail("".join(seen) + demo.communicate()[1])
        if to_group:
            os.killpg(demo.pid, signum)
        else:
            demo.send_signal(signum)
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == code, err
    assert_clean_error("".join(seen) + out + err)
    assert len(err.splitlines()) == 1
    assert err.startswith("demo: ") and err.endswith("everything it started is stopped\n")
    assert _port_is_free(jwks_port)
    assert _port_is_free(protected_port)
