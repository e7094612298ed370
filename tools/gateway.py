"""make gateway: nginx in front of GATEWAY_INSTANCES verifier instances and the JWKS server.

The scale-out layout on one machine. nginx (Debian's package, run unprivileged from a
temporary folder, not as a system service) listens on ``GATEWAY_PORT`` and

- serves ``/keys``, ``/.well-known/jwks.json`` and ``/.well-known/openid-configuration``
  from its cache, filled and revalidated (ETag) from the JWKS server on ``JWKS_PORT``;
- protects ``/api/`` with ``auth_request`` to ``GET /auth`` of ``GATEWAY_INSTANCES``
  protected-server instances, each under make serve's server (one worker) in its own process
  group on its own port, as if on its own machine, and passes the request on to a small application
  (tools/gateway_app.py) with the verified claims in ``X-Jwt-Claims``.

The instances take their keys from the JWKS server (``JWKS_URI``, or the issuer's discovery
document), each with its own cache. The nginx configuration is rendered from
deploy/nginx/gateway.conf.template. Everything stops on Ctrl-C (exit 130) or SIGTERM, and
when make, our parent, exits on a signal; an instance, the JWKS server or the application
that dies meanwhile is reported and the rest carries on (that is what the gateway is for).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from jwt_guide.cli import ArgumentParser, run
from jwt_guide.config import Config, load_config
from jwt_guide.errors import JwtGuideError, UsageError
from jwt_guide.http.devserver import bind_address, listen
from jwt_guide.http.processes import die_with_parent
from jwt_guide.http.serve import (
    READY_SECONDS,
    SERVER_LIBRARIES,
    STOP_SIGNALS,
    ParentWatch,
    Running,
    Server,
    Stop,
    start,
    stop,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx" / "gateway.conf.template"
NGINX_PACKAGE = "nginx-light"  # Debian's smallest nginx that has auth_request
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")  # often not on a user's PATH
INTERNAL_HOST = "127.0.0.1"  # the servers behind nginx; only nginx listens on JWT_BIND_HOST
WORKER_USER = "nobody"  # nginx's default worker user when started as root
APT_SECONDS = 600
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``${NAME}`` replaced by ``values[NAME]``.

    Raises JwtGuideError naming a placeholder that has no value.
    """
    missing = sorted(set(_PLACEHOLDER.findall(template)) - values.keys())
    if missing:
        raise JwtGuideError(f"{TEMPLATE}: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def find_nginx() -> str | None:
    """The nginx executable, or None."""
    found = shutil.which("nginx")
    return found or next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)


def ensure_nginx() -> str:
    """The nginx executable, installed from Debian's package when missing and we are root.

    Raises JwtGuideError, saying how to install it, when it is missing and cannot be installed.
    """
    nginx = find_nginx()
    if nginx:
        return nginx
    how = f"apt-get install {NGINX_PACKAGE}"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise JwtGuideError(f"nginx is not installed: run sudo {how} (or your system's equivalent)")
    print(f"gateway: nginx is not installed: running {how}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", NGINX_PACKAGE]
    for command in (install, ["apt-get", "update", "-q"], install):
        done = subprocess.run(  # noqa: S603 (apt-get, fixed arguments)
            command, env=env, capture_output=True, timeout=APT_SECONDS, check=False
        )
        if done.returncode == 0 and find_nginx():
            break
    nginx = find_nginx()
    if not nginx:
        raise JwtGuideError(f"{how} failed: run it yourself to see why")
    return nginx


def free_port() -> int:
    """A TCP port on the internal host that was free a moment ago."""
    with socket.socket() as s:
        s.bind((INTERNAL_HOST, 0))
        return int(s.getsockname()[1])


def plan(config: Config) -> tuple[Server, list[Server], Server, Server]:
    """The JWKS server, the verifier instances, the application and nginx, on their ports.

    Raises UsageError if ``JWT_BIND_HOST``, where nginx listens, is not an address here.
    """
    jwks = Server("JWKS server", "jwt_guide.http.jwks_app:create_app", INTERNAL_HOST,
                  config.jwks_port, "JWKS_PORT",
                  f"JWKS API is on port {config.jwks_port}")  # fmt: skip
    instances = []
    for number in range(1, config.gateway_instances + 1):
        port = free_port()  # no variable names it: it was free a moment ago
        name = f"verifier {number}"
        instances.append(Server(name, "protected_server:create_app", INTERNAL_HOST, port,
                                "", f"{name} is on port {port}"))  # fmt: skip
    port = free_port()
    app = Server("application", "tools.gateway_app:create_app", INTERNAL_HOST, port, "",
                 f"application is on port {port}")  # fmt: skip
    gateway = Server("nginx", "", bind_address(config.bind_host), config.gateway_port,
                     "GATEWAY_PORT", f"Gateway is on port {config.gateway_port}")  # fmt: skip
    return jwks, instances, app, gateway


def check(config: Config, fixed: Sequence[Server]) -> None:
    """Refuse to start what cannot work, as make serve does.

    Raises JwtGuideError if the server's libraries are missing, or a port of ``fixed``
    (nginx's, the JWKS server's) is taken or the same as the other; UsageError without a key
    (exit 2, as jwks_server.py) or for a host that is not an address here.
    """
    missing = [name for name in SERVER_LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        raise JwtGuideError(f"{' and '.join(missing)} not installed: run make gateway")
    if config.gateway_port == config.jwks_port:
        raise JwtGuideError(f"GATEWAY_PORT and JWKS_PORT are both {config.jwks_port}: change one")
    if not config.public_key_path.exists():
        raise UsageError(f"no public key at {config.public_key_path}: run gen.py first")
    for server in fixed:
        # Bound and let go at once: one line naming the variable, where nginx or the servers
        # would fail later with their own messages.
        listen(server.host, server.port, server.port_variable).close()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_nginx_config(
    folder: Path, jwks: Server, instances: Sequence[Server], app: Server, gateway: Server
) -> Path:
    """Render the template into ``folder``/nginx.conf; return its path."""
    servers = "\n".join(f"        server {_address(s.host, s.port)};" for s in instances)
    text = render(TEMPLATE.read_text(), {
        "GATEWAY_DIR": str(folder),
        "LISTEN": _address(gateway.host, gateway.port),
        "JWKS_SERVER": _address(jwks.host, jwks.port),
        "VERIFIER_SERVERS": servers,
        "APP_SERVER": _address(app.host, app.port),
    })  # fmt: skip
    path = folder / "nginx.conf"
    path.write_text(text)
    if os.geteuid() == 0:
        # nginx's workers run as nobody when the master is root: they must reach the
        # folder, where the master creates the cache and temporary folders for them.
        folder.chmod(0o711)
    return path


def nginx_command(nginx: str, folder: Path, conf: Path) -> list[str]:
    """nginx in the foreground with its prefix, configuration and error log in ``folder``."""
    return [nginx, "-p", f"{folder}/", "-c", str(conf), "-e", str(folder / "error.log"),
            "-g", "daemon off;"]  # fmt: skip


def check_nginx_config(nginx: str, folder: Path, conf: Path) -> None:
    """Raises JwtGuideError with nginx's own message if it refuses the configuration."""
    done = subprocess.run(  # noqa: S603 (nginx found above, our arguments)
        [*nginx_command(nginx, folder, conf)[:-2], "-t", "-q"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "emerg" in line] or [done.stderr]
        raise JwtGuideError(f"nginx refused {conf}: {lines[0].strip()}")


def start_nginx(nginx: str, folder: Path, conf: Path) -> subprocess.Popen[bytes]:
    """nginx in its own process group, set to stop when this process dies, even by SIGKILL."""
    supervisor = os.getpid()

    def before_exec() -> None:
        # SIGTERM, not SIGKILL: nginx's master then stops its workers, which would otherwise
        # outlive it, holding the port. Safe in a preexec_fn: no thread runs here.
        if not die_with_parent(supervisor, signal.SIGTERM):
            os._exit(1)

    return subprocess.Popen(  # noqa: S603 (nginx found above, our arguments)
        nginx_command(nginx, folder, conf), start_new_session=True,
        preexec_fn=before_exec,  # noqa: PLW1509
    )  # fmt: skip


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signum)


def supervise(running: Running, parent: ParentWatch) -> NoReturn:
    """Block until a stop signal, or make exiting on one (raises Stop); raises JwtGuideError if
    nginx exits. Another server that exits is reported once, and the rest carries on."""
    reported: set[int] = set()
    while True:
        for server, process in running:
            code = process.poll()
            if code is None or process.pid in reported:
                continue
            if server.title == "nginx":
                raise JwtGuideError(f"nginx exited with code {code}: stopping")
            reported.add(process.pid)
            print(f"gateway: the {server.title} (port {server.port}) exited with code {code}; "
                  "the others carry on", file=sys.stderr, flush=True)  # fmt: skip
        signum = parent.exiting_on()
        if signum is not None:
            raise Stop(signum)
        time.sleep(0.2)


def run_gateway(config: Config) -> int:
    """Start everything, print where it is, serve until a stop signal; return that signal.

    Raises JwtGuideError if something cannot start, or nginx exits.
    """
    jwks, instances, app, gateway = plan(config)
    check(config, (gateway, jwks))
    nginx = ensure_nginx()
    parent = ParentWatch()
    running: Running = []
    previous = {s: signal.signal(s, _raise_stop) for s in STOP_SIGNALS}
    folder = Path(tempfile.mkdtemp(prefix="jwt-gateway-"))
    try:
        conf = write_nginx_config(folder, jwks, instances, app, gateway)
        check_nginx_config(nginx, folder, conf)
        for server in (jwks, *instances, app):
            running.append((server, start(server, workers=1)))
        deadline = time.monotonic() + READY_SECONDS
        for server, process in running:
            wait_ready(server, process, deadline)
        running.append((gateway, start_nginx(nginx, folder, conf)))
        wait_ready(gateway, running[-1][1], deadline)
        for server, process in running:
            print(f"{server.banner} (pid {process.pid})", flush=True)
        base = f"http://{_address(config.bind_host, config.gateway_port)}"
        print(f"Try: curl -H \"Authorization: Bearer $(cat {config.token_path})\" {base}/api/hello"
              f"\n     curl {base}/.well-known/openid-configuration\n"
              f"nginx configuration: {conf}; Ctrl-C stops everything", flush=True)  # fmt: skip
        supervise(running, parent)
    except Stop as e:
        print("Stopping the gateway", flush=True)
        return e.signum
    finally:
        for s in STOP_SIGNALS:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        stop(running[::-1])  # nginx first: no request reaches a server that is stopping
        shutil.rmtree(folder, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)


def build_parser() -> argparse.ArgumentParser:
    """The command line of make gateway."""
    return ArgumentParser(
        prog="tools/gateway.py",
        description="Run nginx on $GATEWAY_PORT (default 8080) in front of $GATEWAY_INSTANCES "
        "(default 2) protected-server instances and the JWKS server ($JWKS_PORT, default 3344), "
        "until Ctrl-C or SIGTERM. nginx caches /keys and /.well-known/*, and protects /api/ "
        "with auth_request to the instances' /auth. Every variable of config.py applies.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run make gateway; return the exit code."""
    build_parser().parse_args(argv)
    # Ctrl-C (also make's, see ParentWatch) exits 130 as in every script; SIGTERM is a request.
    return run("gateway", lambda: 130 if run_gateway(load_config()) == signal.SIGINT else 0)


if __name__ == "__main__":
    sys.exit(main())
