"""make demo: the whole guide end to end, stopping the servers it started."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import assert_clean_error, free_port, run_script, script_env

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
    result = run_script("demo.py", env=env, timeout=120)
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
        result = run_script("demo.py", env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"demo: port {protected_port}")
    assert_clean_error(result.stdout + result.stderr)
    assert _port_is_free(jwks_port)  # the JWKS server it had started is stopped
