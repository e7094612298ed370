"""The whole guide end to end: ``make demo``.

Generates keys (only if none exist), signs, verifies, starts the JWKS server and the
protected server on their ports, calls the protected endpoint, and stops both servers,
even when a step fails or the demo is interrupted. Every step is the real script, run as a
user would run it.

Ctrl-C reaches the terminal's whole process group. The scripts run in their own session, so
that it reaches the demo alone: the demo then stops the step and the servers it started
(SIGTERM, then SIGKILL after 5 s) and ends with one line and exit 130. SIGTERM and SIGHUP
stop it the same way.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load: exit 130, no traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

from jwt_guide.cli import ArgumentParser
from jwt_guide.config import Config, load_config
from jwt_guide.errors import JwtGuideError

ROOT = Path(__file__).resolve().parent.parent  # the guide's scripts
READY_SECONDS = 20
STOP_SECONDS = 5
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
BLOCKED = {signal.SIGINT, *STOP_SIGNALS}


class StepFailed(JwtGuideError):
    """A step of the guide exited with an error."""


class Stopped(Exception):
    """The demo received SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _start(script: str) -> subprocess.Popen[bytes]:
    """Start ``script`` in a session of its own: Ctrl-C in the terminal reaches the demo,
    which stops the script. The stop signals wait (blocked) until the caller can stop it:
    one landing inside Popen, after the fork, would leave a child that nothing stops. The
    caller unblocks them with ``_deliver_signals``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
    try:
        return subprocess.Popen(  # noqa: S603 (our own interpreter and script)
            [sys.executable, str(ROOT / script)], start_new_session=True,
            # The child must not inherit the blocked mask (the demo has no other thread, so
            # preexec_fn is safe here).
            preexec_fn=_deliver_signals,  # noqa: PLW1509
        )  # fmt: skip
    except BaseException:
        _deliver_signals()
        raise


def _deliver_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process`` and wait for it; kill it if it lingers or Ctrl-C comes again."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_SECONDS)
    except (subprocess.TimeoutExpired, KeyboardInterrupt, Stopped):
        process.kill()
        process.wait()


@contextmanager
def _running(script: str) -> Iterator[subprocess.Popen[bytes]]:
    process = _start(script)
    try:
        _deliver_signals()  # a Ctrl-C that came meanwhile is raised here, and stops the script
        yield process
    finally:
        _stop(process)


def _step(title: str, script: str) -> None:
    print(f"\n== {title}: python {script}", flush=True)
    with _running(script) as process:
        code = process.wait()
    if code != 0:
        raise StepFailed(f"{script} failed with exit code {code}")


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind: a port whose last connections are in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    with _running(script) as process:
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


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit code."""
    ArgumentParser(
        prog="tools/demo.py",
        description="Run the whole guide end to end (make demo), honouring the environment "
        "variables of config.py, and stop the servers it started.",
    ).parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the import guard's job is done
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    try:
        run(load_config())
    except JwtGuideError as e:
        print(f"demo: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except Stopped as e:
        print(f"demo: stopped by {e}; everything it started is stopped", file=sys.stderr)
        return 128 + e.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
