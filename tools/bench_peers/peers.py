"""The peers ``make bench`` measures our servers against, each built and run in a temporary folder.

- ``fastify_build()`` + ``fastify_peer()``: fastify 5 with fast-jwt 6 and get-jwks (versions
  pinned by ``package.json`` and ``package-lock.json`` beside this file) under ``node:cluster``,
  serving ``GET /with-auth`` like our protected server; fast-jwt's verified-token cache on,
  or off (``cache=False``). The key set comes from a URL the caller gives (our JWKS server).
- ``nginx_peer()``: Debian's nginx serving an exported key set (``jwks_server.py --export``)
  as a static file at ``/keys`` and ``/.well-known/jwks.json``, with ETag/304 and our
  ``Cache-Control``, as an unprivileged foreground process with its own prefix.
- ``write_rotating_tokens()``: a wrk Lua script that sends a different token with each request.

A peer that cannot run here (no node/npm/nginx, npm offline) raises ``PeerUnavailable`` whose
message is the one-line reason to print; ``fastify_skip_reason()`` and ``nginx_skip_reason()``
tell it beforehand. Every context manager stops its process group and removes its folder on
exit, also on error or Ctrl-C. Only the standard library is used: the module is a tool, not
part of the package it measures.
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FASTIFY_FILES = ("package.json", "package-lock.json", "fastify_peer.js")
FASTIFY_READY = "fastify peer ready"
MIN_NODE_MAJOR = 20  # fastify 5 and get-jwks 11 need Node.js 20
NPM_SECONDS = 180.0
READY_SECONDS = 30.0
STOP_SECONDS = 10.0
# nginx is in /usr/sbin, which is not on a normal user's PATH on Debian.
SBIN_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# Paths written into nginx.conf and the Lua script unquoted-safe: tempfile's names qualify.
SAFE_PATH = re.compile(r"[\w./-]+")

NGINX_CONF = """\
# nginx serving the exported key set as a static file: the peer of our JWKS server's /keys.
worker_processes {workers};
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
{user}
events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    # The compiled-in temporary paths are under /var/lib/nginx, not writable without root.
    client_body_temp_path {folder}/tmp/body;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;

    server {{
        listen 127.0.0.1:{port};
        # ETag (from size and mtime) and If-None-Match -> 304 are nginx's defaults for static
        # files; add_header applies to 200 and 304 alike.
        etag on;
        types {{ }}
        default_type application/json;
        add_header Cache-Control "public, max-age={max_age}";

        location = /keys {{
            alias {jwks};
        }}
        location = /.well-known/jwks.json {{
            alias {jwks};
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""

# wrk (LuaJIT): every request carries the next token of the file, in turn. The requests are
# formatted once per thread in init(), so that wrk spends its CPU on sending, not on Lua.
ROTATING_LUA = """\
-- wrk script: each request sends the next token of {tokens}, in turn.
local requests = {{}}
local i = 0

function init(args)
  for token in io.lines({tokens}) do
    if token ~= "" then
      requests[#requests + 1] = wrk.format("GET", {path},
        {{["Authorization"] = "Bearer " .. token}})
    end
  end
  if #requests == 0 then
    error("no token in " .. {tokens})
  end
end

function request()
  i = i % #requests + 1
  return requests[i]
end
"""


class PeerError(Exception):
    """A peer was built but did not start, or answered wrongly."""


class PeerUnavailable(PeerError):
    """A peer cannot run on this machine; the message is the one-line reason to print."""


@dataclass(frozen=True)
class Peer:
    """A running peer: where it listens, and its process (the leader of its process group)."""

    name: str
    port: int
    pid: int
    folder: Path
    host: str = "127.0.0.1"

    def url(self, path: str = "/") -> str:
        """The URL of ``path`` on this peer, e.g. ``peer.url("/keys")``."""
        return f"http://{self.host}:{self.port}{path}"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- wrk scripts


def _lua_string(text: str) -> str:
    if not SAFE_PATH.fullmatch(text):
        raise ValueError(f"not a plain path: {text!r}")
    return f'"{text}"'


def rotating_tokens_lua(tokens_file: Path, path: str = "/with-auth") -> str:
    """The wrk Lua script that sends ``GET path`` with each token of ``tokens_file`` in turn.

    Raises ValueError if ``tokens_file`` or ``path`` holds characters other than letters,
    digits, ``_``, ``.``, ``/`` and ``-`` (they are written into the script unescaped).
    """
    return ROTATING_LUA.format(tokens=_lua_string(str(tokens_file)), path=_lua_string(path))


def write_rotating_tokens(folder: Path, tokens: Sequence[str], path: str = "/with-auth",
                          name: str = "tokens") -> Path:  # fmt: skip
    """Write ``tokens`` (one a line) and the wrk script that rotates them into ``folder``;
    return the script's path, for ``wrk -s``. Raises ValueError as ``rotating_tokens_lua``."""
    tokens_file = folder / f"{name}.txt"
    tokens_file.write_text("".join(f"{token}\n" for token in tokens))
    script = folder / f"{name}.lua"
    script.write_text(rotating_tokens_lua(tokens_file, path))
    return script


# ---------------------------------------------------------------------------- processes


def _which(name: str, extra: Sequence[str] = ()) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(extra))


def _log_tail(log: Path, chars: int = 300) -> str:
    with contextlib.suppress(OSError):
        return " ".join(log.read_text(errors="replace")[-chars:].split())
    return ""


def _living_members(group: int) -> list[int]:
    """Processes of process group ``group`` that are not zombies (Linux's /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


@contextlib.contextmanager
def _running(name: str, command: Sequence[str], folder: Path, log: Path, *,
             ready: Callable[[], bool], env: Mapping[str, str] | None = None,
             ) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """Run ``command`` in its own process group until ``ready()``; stop the group on exit.

    Raises PeerError if it exits or is not ready within READY_SECONDS.
    """
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 (our own command line)
            list(command), cwd=folder, env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_SECONDS
        while not ready():
            if process.poll() is not None:
                raise PeerError(f"{name} exited ({process.returncode}): {_log_tail(log)}")
            if time.monotonic() > deadline:
                raise PeerError(f"{name} not ready after {READY_SECONDS:g} s: {_log_tail(log)}")
            time.sleep(0.05)
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL what is left after STOP_SECONDS, wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_SECONDS)
    # The leader may be gone while its children (cluster or nginx workers) are not.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + STOP_SECONDS
    while _living_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _accepts(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    return ready


# ---------------------------------------------------------------------------- fastify


def fastify_skip_reason() -> str | None:
    """Why the fastify peer cannot run here (node/npm missing or too old), or None."""
    node, npm = _which("node"), _which("npm")
    if node is None or npm is None:
        return f"node/npm not found (Node.js {MIN_NODE_MAJOR}+: apt-get install nodejs npm)"
    try:
        version = subprocess.run(  # noqa: S603 (node found on PATH, fixed argument)
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as e:
        return f"node --version failed ({type(e).__name__})"
    match = re.fullmatch(r"v(\d+)\..*", version)
    if not match or int(match.group(1)) < MIN_NODE_MAJOR:
        return f"node {version or '?'} is too old: fastify 5 needs Node.js {MIN_NODE_MAJOR}+"
    return None


@contextlib.contextmanager
def fastify_build(parent: Path | None = None) -> Iterator[Path]:
    """A temporary folder with the fastify peer and its pinned packages (``npm ci``).

    Installed from npm's cache when it has them (``--prefer-offline``): about 2 to 3 s then.
    The folder is removed on exit. Raises PeerUnavailable if node/npm are missing or too
    old, or npm fails (offline with a cold cache, for instance).
    """
    reason = fastify_skip_reason()
    if reason is not None:
        raise PeerUnavailable(reason)
    npm = _which("npm") or "npm"
    with tempfile.TemporaryDirectory(prefix="jwt-bench-fastify-", dir=parent) as tmp:
        folder = Path(tmp)
        for name in FASTIFY_FILES:
            shutil.copyfile(HERE / name, folder / name)
        try:
            subprocess.run(  # noqa: S603 (npm found on PATH, fixed arguments)
                [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
                cwd=folder, capture_output=True, text=True, timeout=NPM_SECONDS, check=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as e:
            last = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise PeerUnavailable(f"npm ci failed: {last[0][:200]}") from e
        except (subprocess.SubprocessError, OSError) as e:
            raise PeerUnavailable(f"npm ci failed ({type(e).__name__})") from e
        yield folder


@contextlib.contextmanager
def fastify_peer(build: Path, jwks_uri: str, issuer: str, *, cache: bool = True,
                 workers: int = 2, port: int | None = None) -> Iterator[Peer]:  # fmt: skip
    """Run the fastify peer built in ``build`` (by ``fastify_build``) until the block ends.

    ``GET /with-auth`` answers 200 ``Result: <claims>`` for an RS256 token from ``issuer``, at
    most 1 day old, whose ``kid`` is in the key set at ``jwks_uri``, and 401 otherwise.
    ``cache`` is fast-jwt's ``cache: true`` (1000 tokens) or ``cache: false``. The key set is
    fetched on each worker's first request. Raises PeerError if it does not start.
    """
    node = _which("node") or "node"
    port = free_port() if port is None else port
    variant = "cache" if cache else "nocache"
    log = build / f"fastify-{variant}-{port}.log"
    env = {
        **os.environ,
        "NODE_ENV": "production",
        "PEER_PORT": str(port),
        "PEER_WORKERS": str(workers),
        "PEER_JWKS_URI": jwks_uri,
        "PEER_ISSUER": issuer,
        "PEER_CACHE": "on" if cache else "off",
    }

    def ready() -> bool:
        with contextlib.suppress(OSError):
            return FASTIFY_READY in log.read_text(errors="replace")
        return False

    command = [node, str(build / "fastify_peer.js")]
    name = f"fastify peer ({variant})"
    with _running(name, command, build, log, ready=ready, env=env) as process:
        yield Peer(f"fastify+fast-jwt ({variant})", port, process.pid, build)


# ---------------------------------------------------------------------------- nginx


def nginx_skip_reason() -> str | None:
    """Why the nginx peer cannot run here (nginx missing), or None."""
    if _which("nginx", SBIN_PATH) is None:
        return "nginx not found (apt-get install nginx-light)"
    return None


def _nobody_group() -> str:
    """The unprivileged group: Debian calls it nogroup, other systems nobody."""
    with contextlib.suppress(KeyError):
        return grp.getgrnam("nogroup").gr_name
    return "nobody"


def render_nginx_conf(folder: Path, jwks: Path, port: int, *, workers: int = 2,
                      max_age: int = 600, user: str | None = None) -> str:  # fmt: skip
    """The nginx.conf of the nginx peer: ``jwks`` served at ``/keys`` and
    ``/.well-known/jwks.json`` on 127.0.0.1:``port``; pid, logs and temporary files in
    ``folder``. ``user`` is nginx's ``user`` directive, only used when nginx runs as root.

    Raises ValueError if a path holds characters nginx would need quoted or would expand.
    """
    for path in (folder, jwks):
        if not SAFE_PATH.fullmatch(str(path)):
            raise ValueError(f"not a plain path: {str(path)!r}")
    return NGINX_CONF.format(
        folder=folder, jwks=jwks, port=int(port), workers=int(workers), max_age=int(max_age),
        user=f"user {user};" if user else "",
    )  # fmt: skip


@contextlib.contextmanager
def nginx_peer(jwks_file: Path, *, workers: int = 2, max_age: int = 600,
               port: int | None = None, parent: Path | None = None) -> Iterator[Peer]:  # fmt: skip
    """Run nginx serving a copy of ``jwks_file`` (``jwks_server.py --export`` output) as
    ``/keys`` and ``/.well-known/jwks.json`` (``application/json``, ETag, 304 on
    ``If-None-Match``, ``Cache-Control: public, max-age=<max_age>``) until the block ends.

    Raises PeerUnavailable if nginx is missing, PeerError if it does not start, OSError if
    ``jwks_file`` cannot be read.
    """
    reason = nginx_skip_reason()
    if reason is not None:
        raise PeerUnavailable(reason)
    nginx = _which("nginx", SBIN_PATH) or "nginx"
    port = free_port() if port is None else port
    with tempfile.TemporaryDirectory(prefix="jwt-bench-nginx-", dir=parent) as tmp:
        folder = Path(tmp)
        user = None
        if os.geteuid() == 0:
            # As root, nginx's workers run as nobody: they must be able to read the key set
            # (public keys only) through this folder, which tempfile makes 0700.
            folder.chmod(0o755)
            user = f"nobody {_nobody_group()}"
        (folder / "tmp").mkdir()
        jwks = folder / "jwks.json"
        shutil.copy2(jwks_file, jwks)  # keeps the mtime, hence the same ETag across runs
        jwks.chmod(0o644)
        conf = folder / "nginx.conf"
        conf.write_text(render_nginx_conf(folder, jwks, port, workers=workers,
                                          max_age=max_age, user=user))  # fmt: skip
        log = folder / "error.log"
        command = [nginx, "-p", f"{folder}/", "-c", str(conf), "-e", str(log),
                   "-g", "daemon off;"]  # fmt: skip
        accepts = _accepts(port)

        def ready() -> bool:
            # The pid file is written once the listening socket is bound: a port taken by
            # another process in the meantime then shows as nginx exiting, not as ready.
            return (folder / "nginx.pid").exists() and accepts()

        with _running("nginx", command, folder, folder / "nginx.out", ready=ready) as process:
            yield Peer("nginx (static file)", port, process.pid, folder)
