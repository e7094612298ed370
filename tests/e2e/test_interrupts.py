"""Ctrl-C (SIGINT) ends every script with exit 130 and at most one line, never a traceback,
and leaves no half-written file (SPEC "Exit codes and errors"): while a script still
imports the package, while it generates a key, and while it waits for input or a server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import (
    SCRIPTS,
    assert_clean_error,
    free_port,
    open_fifo_writer,
    script_env,
    start_script,
)

pytestmark = pytest.mark.e2e



def assert_interrupted(process: subprocess.Popen[str], out: str, err: str) -> None:
    """Exit 130, at most one line, no traceback, no secret."""
    assert process.returncode == 130, err
    assert len((out + err).splitlines()) <= 1, out + err
    assert_clean_error(out + err)


def interrupt_once_blocked(process: subprocess.Popen[str], fifo: Path) -> tuple[str, str]:
    """SIGINT ``process`` once it is blocked reading ``fifo``; its stdout and stderr."""
    writer = open_fifo_writer(fifo, process)
    try:
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=20)
    finally:
        os.close(writer)


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
    process = start_script(script, env=env)
    deadline = time.monotonic() + 20
    while not _importing(process.pid):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the script never loaded cryptography"
        time.sleep(0.001)  # polling: nothing else tells where the script is
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)
    assert_interrupted(process, out, err)


def test_ctrl_c_while_generating_stops_at_once_and_writes_nothing(tmp_path: Path) -> None:
    """SIGINT while OpenSSL generates the key (an 8192-bit one takes seconds): exit 130, one
    line, no traceback, no file, and no waiting for the generation to end."""
    folder = tmp_path / "keys"
    process = start_script("gen.py", "--bits", "8192", env=script_env(JWT_KEYS_DIR=str(folder)))
    try:
        deadline = time.monotonic() + 30
        while not folder.exists():  # gen.py makes the folder, then generates the key
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=5)
    finally:
        process.kill()
        process.wait()
    assert (process.returncode, out, err) == (130, "", "gen: interrupted\n")
    assert not folder.exists()


def test_ctrl_c_while_sign_py_waits_exits_130_in_one_line(keys_dir: Path) -> None:
    # sign.py blocks reading a private key that is a FIFO: it is past its imports by then.
    (keys_dir / ".private.key").unlink()
    os.mkfifo(keys_dir / ".private.key")
    process = start_script("sign.py", env=script_env(JWT_KEYS_DIR=str(keys_dir)))
    out, err = interrupt_once_blocked(process, keys_dir / ".private.key")
    assert_interrupted(process, out, err)
    assert not (keys_dir / "token.txt").exists()


def test_ctrl_c_while_verify_py_reads_exits_130_in_one_line(keys_dir: Path, tmp_path: Path) -> None:
    # verify.py blocks reading a FIFO; once it has opened it, it is past its imports.
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo)
    process = start_script(
        "verify.py", "--token-file", str(fifo), env=script_env(JWT_KEYS_DIR=str(keys_dir))
    )
    out, err = interrupt_once_blocked(process, fifo)
    assert_interrupted(process, out, err)


def test_ctrl_c_while_waiting_for_the_server_exits_130_in_one_line(tmp_path: Path) -> None:
    # A server that accepts the connection and never answers: make_request.py waits (its read
    # timeout is 30 s) until Ctrl-C. Once the connection is accepted it is past its imports.
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "token.txt").write_text("eyJhbGciOiJSUzI1NiJ9.eyJ1c2VySWQiOiJhLWItYy1kIn0.c2lnbmF0dXJl")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(20)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/with-auth"
        process = start_script(
            "make_request.py", env=script_env(JWT_KEYS_DIR=str(keys), PROTECTED_URL=url)
        )
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            process.kill()
            raise
        with connection:
            connection.settimeout(20)
            connection.recv(65536)  # the request has been sent: the client now waits
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=20)
    assert_interrupted(process, out, err)
