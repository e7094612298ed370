"""The whole guide end to end: ``make demo``.

Generates keys (only if none exist), signs, verifies, starts the JWKS server and the
protected server on their ports, calls the protected endpoint, and stops both servers,
even when a step fails. Every step is the real script, run as a user would run it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from config import AppError, ArgumentParser, Config, load_config

HERE = Path(__file__).resolve().parent
READY_SECONDS = 20


class StepFailed(AppError):
    """A step of the guide exited with an error."""


def _step(title: str, script: str, *args: str) -> None:
    print(f"\n== {title}: python {script} {' '.join(args)}".rstrip(), flush=True)
    result = subprocess.run([sys.executable, str(HERE / script), *args], check=False)  # noqa: S603
    if result.returncode != 0:
        raise StepFailed(f"{script} failed with exit code {result.returncode}")


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@contextmanager
def _server(title: str, script: str, host: str, port: int) -> Iterator[None]:
    print(f"\n== {title}: python {script} (in the background)", flush=True)
    if not _port_is_free(host, port):
        raise StepFailed(f"port {port} on {host} is in use: stop what runs there, or set the port")
    process = subprocess.Popen([sys.executable, str(HERE / script)])  # noqa: S603
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if process.poll() is not None:
                raise StepFailed(f"{script} exited with code {process.returncode}")
            try:
                socket.create_connection((host, port), timeout=1).close()  # no request logged
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise StepFailed(f"{script} did not answer on port {port}") from None
                time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(config: Config) -> None:
    """Run every step of the guide; raises StepFailed at the first that fails."""
    if config.private_key_path.exists() and config.public_key_path.exists():
        print(f"== Step 1: keys exist in {config.keys_dir}: reusing them (make gen ARGS=--force)")
    else:
        _step("Step 1: generate the key pair", "gen.py")
    _step("Step 2: sign a token", "sign.py")
    _step("Step 3: verify the token", "verify.py")
    host = "127.0.0.1" if config.bind_host in ("0.0.0.0", "") else config.bind_host  # noqa: S104
    with ExitStack() as servers:
        servers.enter_context(_server(
            "Step 4.a: the JWKS server", "jwks_server.py", host, config.jwks_port,
        ))  # fmt: skip
        servers.enter_context(_server(
            "Step 4.b: the protected server", "protected_server.py", host,
            config.protected_port,
        ))  # fmt: skip
        _step("Step 4.c: call the protected endpoint", "make_request.py")
    print("\nThe guide ran end to end; both servers are stopped.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit code."""
    ArgumentParser(
        prog="demo.py",
        description="Run the whole guide end to end (make demo), honouring the environment "
        "variables of config.py, and stop the servers it started.",
    ).parse_args(argv)
    try:
        run(load_config())
    except AppError as e:
        print(f"demo: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
