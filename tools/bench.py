"""make bench: our servers against the fastest peers, and verification against raw RSA, in one run.

Everything is measured in one run on this machine, so that the ratios mean something on a
busy or slow one:

- over HTTP, with ``wrk -t1 -c16``: both servers under ``make serve``'s server command,
  against fastify 5 + fast-jwt 6 + get-jwks under ``node:cluster`` (verified-token cache on,
  and off) for ``/with-auth`` and ``/auth``, and against nginx serving ``jwks_server.py
  --export`` output as a static file for ``/keys`` and its 304 (tools/bench_peers: each built
  in a temporary folder, skipped with a one-line reason when node or nginx is missing). The
  sides alternate (peer first in one round, ours first in the next); each ratio is the median
  of the rounds' ratios, and its spread is shown;
- in process: ``Verifier.verify`` on fresh tokens against raw ``cryptography`` RSA
  verification on the same 4096-bit key (the floor no verifier can go under);
- per algorithm (RS256 and PS256 on the 4096-bit key, ES256, EdDSA), in process: ``Signer.sign``
  against the same token made by hand with raw ``cryptography``, and ``Verifier.verify`` of
  fresh tokens against raw ``cryptography`` verification of their signatures; token sizes;
- the protected server's memory (RSS) per worker: idle, after the load, and while hostile
  clients hold every connection it accepts with request heads as large as the server holds.

Keys, tokens, peers and logs live in temporary folders that are removed at the end; nothing
is written into the repository. Not a test: CI does not run it, and the numbers are noisy
when the machine is busy (run it twice).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from jwt_guide import Signer, Verifier, rotation, tokens
from jwt_guide.algorithms import ALGORITHMS, PrivateKey, public_pem
from jwt_guide.config import Config, load_config
from jwt_guide.errors import JwtGuideError
from jwt_guide.http import serve, server
from jwt_guide.keys import PemFileKey, PublishedKey
from jwt_guide.keystore import load_private_key, load_public_key
from jwt_guide.verifier import TokenCache, Verified, compact_json
from tools.bench_peers import peers

ROOT = Path(__file__).resolve().parent.parent  # protected_server.py, the guide's step 4.b
CONNECTIONS = 16
DISTINCT_TOKENS = 300
ENV_PREFIXES = ("JWT_", "JWKS_", "PROTECTED_", "TOKEN_CACHE")
WRK_INSTALL = "sudo apt-get install wrk (Debian/Ubuntu)"
RS256 = ALGORITHMS["RS256"]  # the guide's algorithm, of the key the HTTP part uses
IN_PROCESS_ROUNDS = 2  # best of, for the in-process rates (each 0.3 s): within 3 minutes


class BenchError(JwtGuideError):
    """A step of the benchmark could not run."""


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    rps: float
    p99_ms: float
    bad: int  # responses that were not 2xx/3xx, plus socket errors


@dataclass(frozen=True)
class Target:
    """Where one side of a comparison sends its load: a URL, with headers or a wrk script."""

    url: str
    headers: tuple[str, ...] = ()
    script: Path | None = None


@dataclass(frozen=True)
class Comparison:
    """A target of the performance issue: ours against a peer, ratio of requests/s."""

    measure: str
    ours: str  # names in the loads
    peer: str
    peer_title: str
    target: float
    p99: bool = False  # also: p99 no higher than the peer's


@dataclass
class Row:
    """A line of the result table."""

    measure: str
    ours: str
    baseline: str
    ratio: float | None
    target: float | None
    spread: tuple[float, float] | None = None

    def cells(self) -> list[str]:
        """The row as table cells; the verdict compares the ratio with the target."""
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}x"
        if self.spread is not None and self.ratio is not None:
            ratio += f" ({self.spread[0]:.2f}-{self.spread[1]:.2f})"
        target = "" if self.target is None else f">= {self.target:g}x"
        verdict = ""
        if self.ratio is not None and self.target is not None:
            verdict = "ok" if self.ratio >= self.target else "MISSED"
        return [self.measure, self.ours, self.baseline, ratio, target, verdict]


@dataclass
class Setup:
    """What the HTTP part runs against: the loads' targets and why a peer is missing."""

    servers: Servers
    targets: dict[str, Target] = field(default_factory=dict)
    groups: list[tuple[str | None, list[str]]] = field(default_factory=list)  # (peer, ours)
    warm: list[str] = field(default_factory=list)  # one target of each server
    skipped: dict[str, str] = field(default_factory=dict)  # peer -> one-line reason


# ---------------------------------------------------------------------------- set-up


def make_tokens(config: Config, count: int) -> list[str]:
    """``count`` distinct valid tokens, signed as sign.py signs them (the key read once)."""
    signer = Signer.from_keys_dir(config=config)
    return [signer.sign({"userId": "a-b-c-d", "n": i}) for i in range(count)]


def base_env(work: Path) -> dict[str, str]:
    """The environment of our servers: the user's, less the project's settings but
    SERVER_WORKERS, with the benchmark's keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env["JWT_KEYS_DIR"] = str(work / "keys")
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class Servers:
    """Our servers, started by the benchmark, each in its own process group; stops them all."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, target: str, env: Mapping[str, str], workers: int,
              port: int) -> None:  # fmt: skip
        """Serve ``target`` on ``port`` as make serve does (``wait`` tells when it accepts)."""
        log = (self.work / f"{name}.log").open("wb")
        command = serve.server_command(target, "127.0.0.1", port, workers)
        self.processes[name] = subprocess.Popen(  # noqa: S603 (our own command)
            command, env=dict(env), cwd=self.work, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip

    def wait(self, name: str, port: int) -> None:
        """Wait until server ``name`` accepts on ``port``; raises BenchError if it exits or
        takes more than 30 s."""
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            if self.processes[name].poll() is not None or time.monotonic() > deadline:
                tail = (self.work / f"{name}.log").read_text(errors="replace")[-400:]
                raise BenchError(f"{name} did not start: {tail.strip()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL what is left."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def etag_of(url: str) -> str:
    """The ETag the key set at ``url`` is served with; raises BenchError if there is none."""
    answer = requests.get(url, timeout=5)
    if answer.status_code != 200 or "ETag" not in answer.headers:
        raise BenchError(f"GET {url} answered {answer.status_code} without an ETag")
    return answer.headers["ETag"]


def export_key_set(work: Path, env: Mapping[str, str]) -> Path:
    """``jwks_server.py --export``: the key set as a file, for the static peer."""
    path = work / "jwks.json"
    subprocess.run(  # noqa: S603 (our own script)
        [sys.executable, str(ROOT / "jwks_server.py"), "--export", str(path)],
        env=dict(env), capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return path


def ours(stack: contextlib.ExitStack, work: Path, env: Mapping[str, str], *, workers: int,
         token: str, distinct: Path) -> Setup:  # fmt: skip
    """Start our three servers (JWKS; protected, token cache on and off); their targets."""
    servers = Servers(work)
    stack.callback(servers.stop)  # also if a start fails
    ports = {name: peers.free_port() for name in ("jwks", "protected", "protected-nocache")}
    uri = f"http://127.0.0.1:{ports['jwks']}/keys"
    protected_env = {**env, "JWKS_URI": uri}  # fetched at the first request, not at start
    servers.start("jwks", "jwt_guide.http.jwks_app:create_app", env, workers, ports["jwks"])
    servers.start("protected", "protected_server:create_app", protected_env, workers,
                  ports["protected"])  # fmt: skip
    servers.start("protected-nocache", "protected_server:create_app",
                  {**protected_env, "TOKEN_CACHE_SIZE": "0"}, workers,
                  ports["protected-nocache"])  # fmt: skip
    for name, port in ports.items():  # started together: their imports overlap
        servers.wait(name, port)
    protected, nocache = ports["protected"], ports["protected-nocache"]
    auth = f"Authorization: Bearer {token}"
    setup = Setup(servers)
    setup.targets = {
        "with-auth": Target(f"http://127.0.0.1:{protected}/with-auth", (auth,)),
        "auth": Target(f"http://127.0.0.1:{protected}/auth", (auth,)),
        "distinct": Target(f"http://127.0.0.1:{nocache}/with-auth", script=distinct),
        "keys": Target(uri),
        "keys304": Target(uri, (f"If-None-Match: {etag_of(uri)}",)),
    }
    setup.groups = [("fastify", ["with-auth", "auth"]), ("fastify-nocache", ["distinct"]),
                    ("nginx", ["keys"]), ("nginx304", ["keys304"])]  # fmt: skip
    setup.warm = ["fastify", "with-auth", "fastify-nocache", "distinct", "nginx", "keys"]
    return setup


def add_peers(stack: contextlib.ExitStack, setup: Setup, work: Path, env: Mapping[str, str], *,
              args: argparse.Namespace, config: Config, workers: int) -> None:  # fmt: skip
    """Build and start the peers that can run here; note why the others cannot."""
    token_header = setup.targets["with-auth"].headers
    distinct = setup.targets["distinct"].script
    jwks_uri = setup.targets["keys"].url
    if args.no_node:
        reason: str | None = "skipped (--no-node)"
    else:
        reason = peers.fastify_skip_reason()
    if reason is None:
        try:
            print("bench: fastify + fast-jwt + get-jwks (npm ci, pinned)", file=sys.stderr)
            build = stack.enter_context(peers.fastify_build(work))
            for name, cache in (("fastify", True), ("fastify-nocache", False)):
                peer = stack.enter_context(peers.fastify_peer(
                    build, jwks_uri, config.issuer, cache=cache, workers=workers))  # fmt: skip
                target = Target(peer.url("/with-auth"), token_header) if cache else Target(
                    peer.url("/with-auth"), script=distinct)  # fmt: skip
                setup.targets[name] = target
        except peers.PeerUnavailable as e:
            reason = str(e)
    if reason is not None:
        setup.skipped["fastify"] = setup.skipped["fastify-nocache"] = reason
    reason = "skipped (--no-nginx)" if args.no_nginx else peers.nginx_skip_reason()
    if reason is None:
        try:
            exported = export_key_set(work, env)
            # Its own temporary folder, not in ``work``: as root, nginx's workers run as
            # nobody and could not enter ``work`` (0700).
            max_age = config.jwks_cache_seconds
            nginx = stack.enter_context(
                peers.nginx_peer(exported, workers=workers, max_age=max_age)
            )
            url = nginx.url("/keys")
            setup.targets["nginx"] = Target(url)
            setup.targets["nginx304"] = Target(url, (f"If-None-Match: {etag_of(url)}",))
        except peers.PeerUnavailable as e:
            reason = str(e)
    if reason is not None:
        setup.skipped["nginx"] = setup.skipped["nginx304"] = reason


# ---------------------------------------------------------------------------- measuring


def wrk(target: Target, seconds: float) -> Load:
    """Run ``wrk -t1 -c16`` against ``target`` for ``seconds``; raises BenchError on no result."""
    command = [shutil.which("wrk") or "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s",
               "--latency", target.url]  # fmt: skip
    for header in target.headers:
        command += ["-H", header]
    if target.script is not None:
        command += ["-s", str(target.script)]
    try:
        out = subprocess.run(  # noqa: S603 (wrk found on PATH, our arguments)
            command, capture_output=True, text=True, check=False, timeout=seconds + 30
        ).stdout
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"wrk did not finish against {target.url}") from e
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if not rps or not p99:
        raise BenchError(f"wrk gave no result for {target.url}: {out.strip()[-200:]}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    bad = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|timeout):? (\d+)", out))
    bad += sum(int(n) for n in re.findall(r"(?:connect|read|write) (\d+)", out))
    return Load(float(rps.group(1)), float(p99.group(1)) * scale, bad)


def run_order(groups: Sequence[tuple[str | None, list[str]]], rounds: int) -> Iterator[str]:
    """The runs of every round: in each group the peer first in even rounds, ours first in
    odd ones, so that neither side always runs on a machine the other just heated."""
    for n in range(rounds):
        for peer, our_names in groups:
            sides = [*([peer] if peer else []), *our_names]
            yield from (sides if n % 2 == 0 else reversed(sides))


def http_loads(setup: Setup, seconds: float, rounds: int) -> dict[str, list[Load]]:
    """Every wrk run, ``rounds`` times, in ``run_order``; first a 1 s warm-up of each server
    (keys fetched by every worker, JIT, caches)."""
    groups = [(peer if peer in setup.targets else None, names) for peer, names in setup.groups]
    for name in setup.warm:
        if name in setup.targets:
            wrk(setup.targets[name], 1)
    loads: dict[str, list[Load]] = {}
    for name in run_order(groups, rounds):
        loads.setdefault(name, []).append(wrk(setup.targets[name], seconds))
    return loads


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per CPU second of ``fn`` over about ``seconds`` (CPU time: other processes on a
    busy machine do not count against it)."""
    count, start = 0, time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn()
        count += 50
        now = time.process_time()
        if now >= deadline:
            return count / (now - start)


def in_process(signed: Sequence[str], key: RSAPublicKey, config: Config, rounds: int
               ) -> dict[str, float]:  # fmt: skip
    """Verifications per second: raw cryptography, Verifier.verify, its parts, jwt.decode."""
    policy = tokens.Policy(config.issuer)
    cycle = itertools.cycle(signed)
    parts = [t.split(".") for t in signed]
    raw = [(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), f"{h}.{p}".encode())
           for h, p, s in parts]  # fmt: skip
    raw_cycle = itertools.cycle(raw)

    def raw_verify() -> None:
        signature, message = next(raw_cycle)
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())

    headers = tokens.HeaderCache()  # as a Verifier has
    parsed = tokens.parse_token(signed[0])
    verifier = Verifier(config=config, keys=PemFileKey(config.public_key_path), token_cache_size=0)
    now = time.time()

    def decode() -> object:
        return jwt.decode(next(cycle), key, algorithms=[RS256.name], issuer=config.issuer)

    def claims() -> object:
        payload = tokens.json_object(parsed.payload, "payload")
        return list(tokens.claim_failures(payload, policy, now))

    candidates: dict[str, Callable[[], object]] = {
        "raw": raw_verify,
        "verify_token": lambda: verifier.verify(next(cycle)),
        "jwt.decode": decode,
        "parse_token": lambda: tokens.parse_token(next(cycle), headers),
        "signature": lambda: tokens.signature_is_valid(parsed, key, RS256),
        "claims": claims,
    }
    results: dict[str, float] = dict.fromkeys(candidates, 0.0)
    for _ in range(rounds):  # alternate, keep the best of each
        for name, fn in candidates.items():
            results[name] = max(results[name], rate(fn, 0.3))
    return results


# ---------------------------------------------------------------- per algorithm, in process

# How each algorithm signs and verifies with raw cryptography: the floor under our Signer and
# Verifier. PS256's salt is the digest's length, as PyJWT (and RFC 7518 3.5's SHOULD) has it;
# ES256 converts between cryptography's DER and JOSE's r||s, as every JOSE library must.
_PKCS1 = padding.PKCS1v15()
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_SHA256 = hashes.SHA256()
_ECDSA = ec.ECDSA(hashes.SHA256())


def _raw_sign(alg: str, key: PrivateKey) -> Callable[[bytes], bytes]:
    if isinstance(key, ec.EllipticCurvePrivateKey):

        def es256(data: bytes) -> bytes:
            r, s = decode_dss_signature(key.sign(data, _ECDSA))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return es256
    if isinstance(key, Ed25519PrivateKey):
        return key.sign
    pad = _PKCS1 if alg == "RS256" else _PSS
    return lambda data: key.sign(data, pad, _SHA256)


def _raw_verify(alg: str, key: PrivateKey) -> Callable[[bytes, bytes], None]:
    """cryptography's verify of a JOSE signature; raises InvalidSignature."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):

        def es256(signature: bytes, data: bytes) -> None:
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            public.verify(encode_dss_signature(r, s), data, _ECDSA)

        return es256
    if isinstance(public, RSAPublicKey):
        pad = _PKCS1 if alg == "RS256" else _PSS
        return lambda signature, data: public.verify(signature, data, pad, _SHA256)
    return public.verify  # Ed25519: (signature, data)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _contenders(
    alg: str, key: PrivateKey, config: Config, work: Path
) -> tuple[dict[str, Callable[[], object]], int]:
    """What algorithm_rates times for ``alg``, and the length of one of our tokens."""
    payload = {"userId": "a-b-c-d"}
    signer = Signer(key, config.kid, issuer=config.issuer, expires_in=3600, alg=alg)
    header = _b64(json.dumps({"alg": alg, "kid": config.kid, "typ": "JWT"},
                             separators=(",", ":"), sort_keys=True).encode())  # fmt: skip
    raw_sign = _raw_sign(alg, key)

    def raw_token() -> bytes:  # Signer.sign's work, by hand: claims, JSON, base64, signature
        now = int(time.time())
        claims = {**payload, "iat": now, "exp": now + 3600, "iss": config.issuer}
        signing_input = header + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
        return signing_input + b"." + _b64(raw_sign(signing_input))

    signed = [signer.sign({**payload, "n": n}) for n in range(DISTINCT_TOKENS)]
    pem = work / f"{alg}.pem"
    pem.write_bytes(public_pem(key.public_key()))
    verifier = Verifier(config=config, keys=PemFileKey(pem, alg), token_cache_size=0)
    cycle = itertools.cycle(signed)
    raw_verify = _raw_verify(alg, key)
    raw_cycle = itertools.cycle([
        (base64.urlsafe_b64decode(t.split(".")[2] + "=="), t.rsplit(".", 1)[0].encode())
        for t in signed
    ])  # fmt: skip
    contenders: dict[str, Callable[[], object]] = {
        "sign": lambda: signer.sign(payload),
        "raw sign": raw_token,
        "verify": lambda: verifier.verify(next(cycle)),
        "raw verify": lambda: raw_verify(*next(raw_cycle)),
    }
    return contenders, len(signer.sign(payload))


def algorithm_rates(
    work: Path, rsa_key: PrivateKey, config: Config, rounds: int
) -> dict[str, dict[str, float]]:
    """Per algorithm: signs/s of Signer.sign and of the same token built by hand with raw
    cryptography; verifies/s of Verifier.verify (fresh tokens, cache off) and of raw
    cryptography on the same signatures; the token's length (sign.py's default payload)."""
    keys: dict[str, PrivateKey] = {
        "RS256": rsa_key, "PS256": rsa_key,
        "ES256": ALGORITHMS["ES256"].generate(), "EdDSA": ALGORITHMS["EdDSA"].generate(),
    }  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    for alg, key in keys.items():
        contenders, chars = _contenders(alg, key, config, work)
        rates = dict.fromkeys(contenders, 0.0)
        for _ in range(rounds):  # alternate, keep the best of each
            for name, fn in contenders.items():
                rates[name] = max(rates[name], rate(fn, 0.3))
        rates["token chars"] = float(chars)
        results[alg] = rates
    return results


def algorithm_rows(results: Mapping[str, Mapping[str, float]]) -> list[Row]:
    """Table rows for the per-algorithm measures: sign (target 0.9x raw), verify (0.8x)."""
    rows: list[Row] = []
    for alg, rates in results.items():
        key = "RSA-4096" if alg in ("RS256", "PS256") else {"ES256": "P-256"}.get(alg, "Ed25519")
        rows += [
            Row(f"{alg} ({key}, token {rates['token chars']:.0f} chars): Signer.sign/s",
                f"{rates['sign']:,.0f}", f"raw cryptography {rates['raw sign']:,.0f}",
                _ratio(rates["sign"], rates["raw sign"]), 0.9),
            Row(f"  {alg} Verifier.verify, fresh token (/s)", f"{rates['verify']:,.0f}",
                f"raw cryptography {rates['raw verify']:,.0f}",
                _ratio(rates["verify"], rates["raw verify"]), 0.8),
        ]  # fmt: skip
    return rows


def worker_rss_mib(parent: int) -> list[float]:
    """RSS in MiB of the descendants of ``parent`` that run the app (the server's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[float] = []
    todo = list(children.get(parent, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            if match and int(match.group(1)) > 20 * 1024:  # skips helpers (resource tracker)
                found.append(int(match.group(1)) / 1024)
    return sorted(found)


def hostile_heads(url: str, connections: int, head_bytes: int) -> int:
    """Open ``connections`` connections to ``url``'s server, each sending an unfinished
    request head of about ``head_bytes`` (so that the server buffers it); return how many
    bytes were accepted. The caller measures, then ``close_all`` the sockets (in ``opened``).
    """
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    opened.clear()
    for _ in range(connections):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.setblocking(False)
        opened.append(sock)
        with contextlib.suppress(OSError):
            sock.send(b"GET /with-auth HTTP/1.1\r\nHost: bench\r\nX-Pad: ")
    sent = 0
    chunk = b"a" * 4096
    for _ in range(head_bytes // len(chunk)):  # in turns: every connection grows its buffer
        for sock in opened:
            with contextlib.suppress(OSError):
                sent += sock.send(chunk)
    return sent


opened: list[socket.socket] = []


def close_all() -> None:
    """Close the sockets ``hostile_heads`` opened."""
    for sock in opened:
        sock.close()
    opened.clear()


def cache_entry_bytes(key: PublishedKey, count: int = 2000) -> float:
    """Memory per entry of the protected server's TokenCache, with a realistic body."""
    claims = {"userId": "a-b-c-d", "iat": 1577800440, "exp": 1577886840, "iss": "my-issuer-name"}
    cache = TokenCache(count)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count):
        cache.put(i.to_bytes(32, "big"), Verified(compact_json({**claims, "n": i}), key, 1e10))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / count


# ---------------------------------------------------------------------------- the table


def _ratio(ours: float, baseline: float) -> float | None:
    return ours / baseline if baseline > 0 else None


def _median_ratio(ours: Sequence[float], peer: Sequence[float]) -> tuple[float, float, float]:
    ratios = [o / p for o, p in zip(ours, peer, strict=True) if p > 0]
    if not ratios:
        return 0.0, 0.0, 0.0
    return statistics.median(ratios), min(ratios), max(ratios)


def _summary(loads: Sequence[Load]) -> str:
    rps = statistics.median(load.rps for load in loads)
    p99 = statistics.median(load.p99_ms for load in loads)
    bad = sum(load.bad for load in loads)
    return f"{rps:,.0f}/s p99 {p99:.1f} ms" + (f" ({bad} ERRORS)" if bad else "")


COMPARISONS = (
    Comparison("GET /with-auth, one token (req/s)", "with-auth", "fastify",
               "fastify+fast-jwt", 1.0, p99=True),
    Comparison("GET /auth, one token (req/s)", "auth", "fastify", "fastify+fast-jwt", 1.0,
               p99=True),
    Comparison(f"GET /with-auth, {DISTINCT_TOKENS} distinct tokens, caches off", "distinct",
               "fastify-nocache", "fastify cache off", 3.5),
    Comparison("GET /keys (req/s)", "keys", "nginx", "nginx static", 0.8),
    Comparison("GET /keys, If-None-Match -> 304", "keys304", "nginx304", "nginx static", 0.8),
)  # fmt: skip


def http_rows(loads: Mapping[str, Sequence[Load]], skipped: Mapping[str, str]) -> list[Row]:
    """A row for each target of the issue (and one for each p99 target); the ratio is the
    median of the rounds' ratios (ours / peer, or the peer's p99 / ours)."""
    rows = []
    for c in COMPARISONS:
        ours = loads[c.ours]
        peer = loads.get(c.peer)
        if peer is None:
            rows.append(Row(c.measure, _summary(ours), f"{c.peer_title}: {skipped[c.peer]}",
                            None, c.target))  # fmt: skip
            continue
        ratio, low, high = _median_ratio([x.rps for x in ours], [x.rps for x in peer])
        rows.append(Row(c.measure, _summary(ours), f"{c.peer_title} {_summary(peer)}", ratio,
                        c.target, (low, high)))  # fmt: skip
        if c.p99:
            ratio, low, high = _median_ratio([x.p99_ms for x in peer], [x.p99_ms for x in ours])
            p99 = statistics.median(x.p99_ms for x in ours)
            peer_p99 = statistics.median(x.p99_ms for x in peer)
            rows.append(Row("  p99 latency, the peer's / ours", f"{p99:.1f} ms",
                            f"{c.peer_title} {peer_p99:.1f} ms", ratio, 1.0,
                            (low, high)))  # fmt: skip
    return rows


def verify_rows(rates: Mapping[str, float]) -> list[Row]:
    """Table rows for the in-process verification."""
    per_call = {name: 1e6 / value for name, value in rates.items()}
    overhead = per_call["verify_token"] - per_call["raw"]
    return [
        Row("Verifier.verify, fresh token (verifies/s)", f"{rates['verify_token']:,.0f}",
            f"raw cryptography {rates['raw']:,.0f}",
            rates["verify_token"] / rates["raw"], 0.75),
        Row("  jwt.decode, same key (for reference)", f"{rates['jwt.decode']:,.0f}",
            f"raw cryptography {rates['raw']:,.0f}", rates["jwt.decode"] / rates["raw"], None),
        Row("  time beyond the RSA verify (us/token)", f"{overhead:.1f}",
            f"parse {per_call['parse_token']:.1f}, signature call "
            f"{per_call['signature'] - per_call['raw']:.1f}, claims {per_call['claims']:.1f}",
            None, None),
    ]  # fmt: skip


@dataclass(frozen=True)
class Memory:
    """The protected server's RSS per worker (the largest worker), in MiB."""

    idle: float
    loaded: float
    hostile: float
    hostile_mib_sent: float
    entry_bytes: float
    cache_size: int


def memory_rows(m: Memory) -> list[Row]:
    """The protected server's RSS per worker, and the bound make serve's limits set."""
    per_connection = server.MAX_HEAD_BYTES + server.FEED_BYTES
    held = server.MAX_CONNECTIONS * per_connection / 2**20
    cache = m.cache_size * m.entry_bytes / 2**20
    bound = m.idle + cache + held
    return [
        Row("protected server RSS per worker (MiB)", f"{m.loaded:.1f} after load",
            f"{m.idle:.1f} idle; cache {m.cache_size:,} x {m.entry_bytes:.0f} B = {cache:.1f}",
            None, None),
        Row("  with hostile heads on every connection", f"{m.hostile:.1f} "
            f"({m.hostile_mib_sent:.0f} MiB held)", f"bound {m.idle:.0f} + {cache:.1f} + "
            f"{server.MAX_CONNECTIONS} x {per_connection // 1024} KiB = {bound:.0f}",
            None, None),
    ]  # fmt: skip


def print_table(rows: Sequence[Row]) -> None:
    """Print the rows as an aligned table."""
    header = ["measure", "ours", "baseline", "ratio (spread)", "target", ""]
    cells = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    for n, line in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


# ---------------------------------------------------------------------------- the run


def measure_memory(parent: int, url: str, idle: float, config: Config, key: PublishedKey
                   ) -> Memory:  # fmt: skip
    """RSS per worker after the load, then with hostile heads on every connection slot."""
    loaded = max(worker_rss_mib(parent), default=0)
    workers = max(1, len(worker_rss_mib(parent)))
    try:
        # Each head just under the limit, so that the server holds it rather than refuse it.
        sent = hostile_heads(url, workers * server.MAX_CONNECTIONS, server.MAX_HEAD_BYTES - 8192)
        time.sleep(0.5)
        hostile = max(worker_rss_mib(parent), default=0)
    finally:
        close_all()
    return Memory(idle, loaded, hostile, sent / 2**20, cache_entry_bytes(key),
                  config.token_cache_size)  # fmt: skip


def run(args: argparse.Namespace) -> list[Row]:
    """Build everything in a temporary folder, measure, stop and remove it all."""
    settings = load_config()  # the user's SERVER_WORKERS (and a check of the environment)
    workers = settings.server_workers
    with tempfile.TemporaryDirectory(prefix="jwt-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        config = load_config({"JWT_KEYS_DIR": str(work / "keys")})
        print(f"bench: 4096-bit key and {DISTINCT_TOKENS} tokens in {work}", file=sys.stderr)
        (work / "keys").mkdir(mode=0o700)
        rotation.create(config, lambda: rsa.generate_private_key(65537, 4096), None, force=False)
        signed = make_tokens(config, DISTINCT_TOKENS)
        distinct = peers.write_rotating_tokens(work, signed, "/with-auth", "distinct")
        public = load_public_key(config.public_key_path)
        if not isinstance(public, RSAPublicKey):  # cannot happen: made just above
            raise BenchError(f"{config.public_key_path} is not the RSA key made for the bench")

        print("bench: in-process verification", file=sys.stderr)
        rows = verify_rows(in_process(signed, public, config, IN_PROCESS_ROUNDS))
        print("bench: sign and verify per algorithm, in process", file=sys.stderr)
        private = load_private_key(config.private_key_path, config.passphrase)
        rows += algorithm_rows(algorithm_rates(work, private, config, IN_PROCESS_ROUNDS))
        if shutil.which("wrk") is None:
            print(f"bench: wrk not found: HTTP part skipped; install it with {WRK_INSTALL}",
                  file=sys.stderr)  # fmt: skip
            return rows
        env = base_env(work)
        setup = ours(stack, work, env, workers=workers, token=signed[0], distinct=distinct)
        add_peers(stack, setup, work, env, args=args, config=config, workers=workers)
        for peer in ("fastify", "nginx"):
            if peer in setup.skipped:
                print(f"bench: {peer}: {setup.skipped[peer]}", file=sys.stderr)
        parent = setup.servers.processes["protected"].pid
        idle = max(worker_rss_mib(parent), default=0)
        runs = len(list(run_order([(p if p in setup.targets else None, n)
                                   for p, n in setup.groups], args.rounds)))  # fmt: skip
        print(f"bench: wrk -t1 -c{CONNECTIONS}, {runs} runs of {args.duration:g} s, sides "
              f"alternating, {workers} worker(s) per server", file=sys.stderr)  # fmt: skip
        loads = http_loads(setup, args.duration, args.rounds)
        memory = measure_memory(parent, setup.targets["with-auth"].url, idle, config,
                                PublishedKey.of(config.kid, public))  # fmt: skip
        return rows + http_rows(loads, setup.skipped) + memory_rows(memory)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 60")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of make bench."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Measure both servers (under make serve's server) against fastify + "
        "fast-jwt (needs node 20+ and npm) and nginx serving the exported key set (needs "
        "nginx), sides alternating, and verification against raw cryptography RSA verify. "
        f"HTTP load uses wrk ({WRK_INSTALL}). Takes under 3 minutes; writes only to "
        "temporary folders. SERVER_WORKERS sets the workers of every server and peer "
        "(default: the number of cores).",
    )
    parser.add_argument("--duration", type=_positive, default=5.0, metavar="SECONDS",
                        help="length of each wrk run (default: 5)")  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, choices=range(1, 6), default=3, metavar="N",
        help="rounds of every run, sides alternating; ratios are their median (1 to 5, "
        "default: 3)",
    )  # fmt: skip
    parser.add_argument("--no-node", action="store_true",
                        help="skip the fastify peer (no npm install)")  # fmt: skip
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx peer")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run make bench; return the exit code."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        rows = run(args)
    except KeyboardInterrupt:
        return 130
    except (JwtGuideError, peers.PeerError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except (OSError, requests.RequestException, subprocess.CalledProcessError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    print_table(rows)
    print(f"({time.monotonic() - started:.0f} s; each ratio is the median of {args.rounds} "
          "rounds' ratios, sides alternating; a busy machine moves them: run again)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
