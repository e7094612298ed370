"""make bench: how fast the project serves and verifies, as ratios to baselines it builds itself.

Everything is measured in one run on this machine, so that the ratios mean something on a
busy or slow one:

- in process: ``Verifier.verify`` on fresh tokens against raw ``cryptography`` RSA
  verification on the same 4096-bit key (the floor no verifier can go under);
- over HTTP, with ``wrk -t1 -c16`` (Debian's ``wrk``): both servers under the same granian
  command as ``make serve``, against the guide's Node.js original (Express, express-jwt,
  jwks-rsa, built with npm in a temporary folder) and against a hello-world Flask app under
  the same server (the framework's ceiling);
- the protected server's memory (RSS) per worker, idle and after the load;
- per algorithm (RS256 and PS256 on the 4096-bit key, ES256, EdDSA), in process: ``Signer.sign``
  against the same token made by hand with raw ``cryptography``, and ``Verifier.verify`` of
  fresh tokens against raw ``cryptography`` verification of their signatures; token sizes.

Keys, tokens, apps and logs live in a temporary folder that is removed at the end; nothing is
written into the repository. Not a test: CI does not run it, and the numbers are noisy when
the machine is busy (run it twice).
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
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from jwt_guide.http.serve import granian_command
from jwt_guide.keys import PemFileKey, PublishedKey
from jwt_guide.keystore import load_private_key, load_public_key
from jwt_guide.verifier import TokenCache, Verified

ROOT = Path(__file__).resolve().parent.parent  # protected_server.py, the guide's step 4.b
CONNECTIONS = 16
DISTINCT_TOKENS = 300
NODE_PACKAGES = ("express@4", "jsonwebtoken@9", "express-jwt@8", "jwks-rsa@3", "pem-jwk@2")
ENV_PREFIXES = ("JWT_", "JWKS_", "PROTECTED_", "TOKEN_CACHE")
RS256 = ALGORITHMS["RS256"]  # the guide's algorithm, of the key the HTTP part uses

HELLO_APP = '''"""A hello-world Flask app: the framework's ceiling under the same server."""
from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    return app
'''

# The guide's two backends, as it writes them (one Node.js process each).
NODE_JWKS = """const express = require('express');
const fs = require('fs');
const { pem2jwk } = require('pem-jwk');
const port = Number(process.env.JWKS_PORT);
const app = express();
app.get('/keys', (req, res) => {
  const publicKey = fs.readFileSync(process.env.JWT_KEYS_DIR + '/.public.key.pem', 'utf8');
  const jwk = { ...pem2jwk(publicKey), kid: process.env.JWT_KID, use: 'sig', alg: 'RS256' };
  res.json({ keys: [jwk] });
});
app.listen(port, '127.0.0.1', () => console.log(`JWKS API is on port ${port}`));
"""
NODE_PROTECTED = """const express = require('express');
const { expressjwt } = require('express-jwt');
const jwksRsa = require('jwks-rsa');
const port = Number(process.env.PROTECTED_PORT);
const app = express();
app.get('/with-auth', expressjwt({
  secret: jwksRsa.expressJwtSecret({
    cache: true, rateLimit: true, jwksRequestsPerMinute: 5, jwksUri: process.env.JWKS_URI,
  }),
  algorithms: ['RS256'], issuer: process.env.JWT_ISSUER, maxAge: '1d',
}), (req, res) => res.send(`Result: ${JSON.stringify(req.auth)}`));
app.listen(port, '127.0.0.1', () => console.log(`Backend is running on port ${port}`));
"""

# wrk sends a different token with each request, in turn.
DISTINCT_LUA = """local tokens = {}
for line in io.lines("%s") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i %% #tokens + 1
  return wrk.format("GET", "/with-auth", {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


class BenchError(JwtGuideError):
    """A step of the benchmark could not run."""


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    rps: float
    p99_ms: float
    bad: int  # responses that were not 2xx/3xx, plus socket errors

    def __str__(self) -> str:
        text = f"{self.rps:,.0f}/s p99 {self.p99_ms:.1f} ms"
        return text + (f" ({self.bad} ERRORS)" if self.bad else "")


@dataclass
class Row:
    """A line of the result table."""

    measure: str
    ours: str
    baseline: str
    ratio: float | None
    target: float | None

    def cells(self) -> list[str]:
        """The row as table cells; the verdict compares the ratio with the target."""
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}x"
        target = "" if self.target is None else f">= {self.target:g}x"
        verdict = ""
        if self.ratio is not None and self.target is not None:
            verdict = "ok" if self.ratio >= self.target else "MISSED"
        return [self.measure, self.ours, self.baseline, ratio, target, verdict]


# ---------------------------------------------------------------------------- set-up


def make_tokens(config: Config, count: int) -> list[str]:
    """``count`` distinct valid tokens, signed as sign.py signs them (the key read once)."""
    signer = Signer.from_keys_dir(config=config)
    return [signer.sign({"userId": "a-b-c-d", "n": i}) for i in range(count)]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(work: Path) -> dict[str, str]:
    """The environment of every server: the user's, less the project's settings but
    SERVER_WORKERS, with the benchmark's keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env["JWT_KEYS_DIR"] = str(work / "keys")
    env["PYTHONPATH"] = os.pathsep.join((str(ROOT), str(work)))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class Servers:
    """Servers started by the benchmark, each in its own process group; stops them all."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: Mapping[str, str], port: int) -> int:
        """Start ``command`` as ``name``, wait until ``port`` accepts connections, return it."""
        log = (self.work / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(  # noqa: S603 (our own commands)
            command, env=dict(env), cwd=self.work, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return port
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


def start_python_servers(servers: Servers, env: Mapping[str, str], workers: int) -> dict[str, int]:
    """The JWKS server, the protected server (token cache on and off) and hello, under granian."""
    jwks = free_port()
    ports = {"jwks": jwks}
    uri = f"http://127.0.0.1:{jwks}/keys"
    command = granian_command("jwt_guide.http.jwks_app:create_app", "127.0.0.1", jwks, workers)
    servers.start("jwks", command, env, jwks)
    for name, cache in (("protected", None), ("protected-nocache", "0")):
        port = free_port()
        extra = {"JWKS_URI": uri} | ({"TOKEN_CACHE_SIZE": cache} if cache else {})
        command = granian_command("protected_server:create_app", "127.0.0.1", port, workers)
        ports[name] = servers.start(name, command, {**env, **extra}, port)
    port = free_port()
    command = granian_command("hello_app:create_app", "127.0.0.1", port, workers)
    ports["hello"] = servers.start("hello", command, env, port)
    return ports


def build_node(work: Path) -> tuple[Path | None, str]:
    """npm-install the guide's Node.js backends into ``work/node``; (folder, or None and why)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return None, "node/npm not found (apt-get install nodejs npm)"
    folder = work / "node"
    folder.mkdir()
    (folder / "package.json").write_text('{"name": "guide-original", "private": true}\n')
    (folder / "jwks.js").write_text(NODE_JWKS)
    (folder / "protected.js").write_text(NODE_PROTECTED)
    try:
        subprocess.run(  # noqa: S603 (npm found on PATH, fixed arguments)
            [npm, "install", "--no-audit", "--no-fund", "--silent", *NODE_PACKAGES],
            cwd=folder, capture_output=True, timeout=180, check=True,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as e:
        return None, f"npm install failed ({type(e).__name__})"
    return folder, ""


def start_node_servers(servers: Servers, folder: Path, env: Mapping[str, str],
                       config: Config) -> dict[str, int]:  # fmt: skip
    """The guide's Node.js JWKS server and protected backend, one process each."""
    node = shutil.which("node") or "node"
    jwks, protected = free_port(), free_port()
    env = {**env, "JWKS_PORT": str(jwks), "PROTECTED_PORT": str(protected),
           "JWKS_URI": f"http://127.0.0.1:{jwks}/keys", "JWT_KID": config.kid,
           "JWT_ISSUER": config.issuer}  # fmt: skip
    servers.start("node-jwks", [node, str(folder / "jwks.js")], env, jwks)
    servers.start("node-protected", [node, str(folder / "protected.js")], env, protected)
    return {"jwks": jwks, "protected": protected}


# ---------------------------------------------------------------------------- measuring


def wrk(url: str, seconds: float, headers: Sequence[str] = (), script: Path | None = None) -> Load:
    """Run ``wrk -t1 -c16`` against ``url`` for ``seconds``; raises BenchError on no result."""
    command = [shutil.which("wrk") or "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s",
               "--latency", url]  # fmt: skip
    for header in headers:
        command += ["-H", header]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout  # noqa: S603
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if not rps or not p99:
        raise BenchError(f"wrk gave no result for {url}: {out.strip()[-200:]}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    bad = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|timeout):? (\d+)", out))
    bad += sum(int(n) for n in re.findall(r"(?:connect|read|write) (\d+)", out))
    return Load(float(rps.group(1)), float(p99.group(1)) * scale, bad)


def best(loads: Sequence[Load]) -> Load:
    """The run with the most requests/s: noise from other processes only slows a run down."""
    return max(loads, key=lambda load: load.rps)


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
            results[name] = max(results[name], rate(fn, 0.4))
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
                rates[name] = max(rates[name], rate(fn, 0.4))
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
    """RSS in MiB of the descendants of ``parent`` that run the app (granian's workers)."""
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


def cache_entry_bytes(key: PublishedKey, count: int = 2000) -> float:
    """Memory per entry of the protected server's TokenCache, with a realistic body."""
    body = b'{"userId":"a-b-c-d","iat":1577800440,"exp":1577886840,"iss":"my-issuer-name"}'
    cache = TokenCache(count)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count):
        cache.put(i.to_bytes(32, "big"), Verified(body + str(i).encode(), key, 1e10))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / count


@dataclass(frozen=True)
class Targets:
    """Where the wrk runs go: our servers, the Node.js original if built, and the tokens."""

    ports: Mapping[str, int]
    node: Mapping[str, int] | None
    tokens_lua: Path
    token: str


def http_loads(targets: Targets, seconds: float, rounds: int) -> dict[str, Load]:
    """Every wrk run, each pair of runs back to back, ``rounds`` times; the best of each."""
    ports, node, tokens_lua = targets.ports, targets.node, targets.tokens_lua
    auth = f"Authorization: Bearer {targets.token}"
    etag = requests.get(f"http://127.0.0.1:{ports['jwks']}/keys", timeout=5).headers["ETag"]
    runs: dict[str, Callable[[float], Load]] = {
        "auth": lambda d: wrk(f"http://127.0.0.1:{ports['protected']}/with-auth", d, [auth]),
        "hello": lambda d: wrk(f"http://127.0.0.1:{ports['hello']}/", d),
        "distinct": lambda d: wrk(f"http://127.0.0.1:{ports['protected-nocache']}/with-auth", d,
                                  script=tokens_lua),
        "keys": lambda d: wrk(f"http://127.0.0.1:{ports['jwks']}/keys", d),
        "keys304": lambda d: wrk(f"http://127.0.0.1:{ports['jwks']}/keys", d,
                                 [f"If-None-Match: {etag}"]),
    }  # fmt: skip
    if node is not None:
        node_etag = requests.get(f"http://127.0.0.1:{node['jwks']}/keys", timeout=5).headers["ETag"]
        node_auth = f"http://127.0.0.1:{node['protected']}/with-auth"
        runs |= {
            "node-auth": lambda d: wrk(node_auth, d, [auth]),
            "node-distinct": lambda d: wrk(node_auth, d, script=tokens_lua),
            "node-keys": lambda d: wrk(f"http://127.0.0.1:{node['jwks']}/keys", d),
            "node-keys304": lambda d: wrk(f"http://127.0.0.1:{node['jwks']}/keys", d,
                                          [f"If-None-Match: {node_etag}"]),
        }  # fmt: skip
    for run in runs.values():  # warm up: JWKS fetched by every worker, JIT, caches
        run(1)
    order = sorted(runs, key=lambda name: name.removeprefix("node-"))
    loads: dict[str, list[Load]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name in order:
            loads[name].append(runs[name](seconds))
    return {name: best(results) for name, results in loads.items()}


def _ratio(ours: float, baseline: float) -> float | None:
    return ours / baseline if baseline > 0 else None


def verify_rows(rates: Mapping[str, float]) -> list[Row]:
    """Table rows for the in-process verification."""
    per_call = {name: 1e6 / value for name, value in rates.items()}
    overhead = per_call["verify_token"] - per_call["raw"]
    return [
        Row("Verifier.verify, fresh token (verifies/s)", f"{rates['verify_token']:,.0f}",
            f"raw cryptography {rates['raw']:,.0f}",
            _ratio(rates["verify_token"], rates["raw"]), 0.75),
        Row("  jwt.decode, same key (for reference)", f"{rates['jwt.decode']:,.0f}",
            f"raw cryptography {rates['raw']:,.0f}", _ratio(rates["jwt.decode"], rates["raw"]),
            None),
        Row("  time beyond the RSA verify (us/token)", f"{overhead:.1f}",
            f"parse {per_call['parse_token']:.1f}, signature call "
            f"{per_call['signature'] - per_call['raw']:.1f}, claims {per_call['claims']:.1f}",
            None, None),
    ]  # fmt: skip


def http_rows(loads: Mapping[str, Load], node_note: str) -> list[Row]:
    """Table rows for the wrk runs; ratios to Node.js where it ran."""

    def versus(measure: str, ours: str, target: float) -> Row:
        node = loads.get(f"node-{ours}")
        if node is None:
            return Row(measure, str(loads[ours]), f"Node.js: {node_note}", None, target)
        return Row(measure, str(loads[ours]), f"Node.js {node}",
                   _ratio(loads[ours].rps, node.rps), target)  # fmt: skip

    rows = [versus("GET /with-auth, one token (req/s)", "auth", 4)]
    if "node-auth" in loads:
        rows.append(Row("  p99 latency, Node's / ours", f"{loads['auth'].p99_ms:.1f} ms",
                        f"Node.js {loads['node-auth'].p99_ms:.1f} ms",
                        _ratio(loads["node-auth"].p99_ms, loads["auth"].p99_ms), 3))  # fmt: skip
    rows += [
        Row("  vs hello-world Flask, same server", str(loads["auth"]), f"hello {loads['hello']}",
            _ratio(loads["auth"].rps, loads["hello"].rps), None),
        versus(f"GET /with-auth, {DISTINCT_TOKENS} distinct tokens, cache off", "distinct", 2.5),
        versus("GET /keys (req/s)", "keys", 3),
        versus("GET /keys, If-None-Match -> 304", "keys304", 3),
        Row("  /keys vs hello-world Flask", str(loads["keys"]), f"hello {loads['hello']}",
            _ratio(loads["keys"].rps, loads["hello"].rps), None),
    ]  # fmt: skip
    return rows


def memory_row(idle: Sequence[float], loaded: Sequence[float], entry: float, size: int) -> Row:
    """The protected server's RSS per worker, and the bound the token cache sets."""
    bound = max(loaded, default=0) + size * entry / 2**20
    return Row("protected server RSS per worker (MiB)",
               f"{max(loaded, default=0):.1f} after load",
               f"{max(idle, default=0):.1f} idle; cache {size:,} x {entry:.0f} B -> "
               f"bound ~{bound:.0f}", None, None)  # fmt: skip


def print_table(rows: Sequence[Row]) -> None:
    """Print the rows as an aligned table."""
    header = ["measure", "ours", "baseline", "ratio", "target", ""]
    cells = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    for n, line in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def run(args: argparse.Namespace) -> list[Row]:
    """Build everything in a temporary folder, measure, stop and remove it all."""
    settings = load_config()  # the user's SERVER_WORKERS (and a check of the environment)
    with tempfile.TemporaryDirectory(prefix="jwt-bench-") as tmp:
        work = Path(tmp)
        config = load_config({"JWT_KEYS_DIR": str(work / "keys")})
        print(f"bench: 4096-bit key and {DISTINCT_TOKENS} tokens in {work}", file=sys.stderr)
        (work / "keys").mkdir(mode=0o700)
        rotation.create(config, lambda: rsa.generate_private_key(65537, 4096), None, force=False)
        tokens = make_tokens(config, DISTINCT_TOKENS)
        (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
        (work / "distinct.lua").write_text(DISTINCT_LUA % (work / "tokens.txt"))
        (work / "hello_app.py").write_text(HELLO_APP)
        key = load_public_key(config.public_key_path)
        if not isinstance(key, RSAPublicKey):  # cannot happen: made just above
            raise BenchError(f"{config.public_key_path} is not the RSA key made for the bench")

        print("bench: in-process verification", file=sys.stderr)
        rows = verify_rows(in_process(tokens, key, config, args.rounds + 2))
        entry = cache_entry_bytes(PublishedKey.of(config.kid, key))
        print("bench: sign and verify per algorithm, in process", file=sys.stderr)
        private = load_private_key(config.private_key_path, config.passphrase)
        rows += algorithm_rows(algorithm_rates(work, private, config, args.rounds + 1))
        if shutil.which("wrk") is None:
            print("bench: wrk not found: HTTP part skipped; install it with "
                  "`sudo apt-get install wrk` (Debian/Ubuntu) and run make bench again",
                  file=sys.stderr)  # fmt: skip
            return rows
        servers = Servers(work)
        try:
            env = base_env(work)
            ports = start_python_servers(servers, env, settings.server_workers)
            print("bench: building the Node.js original with npm", file=sys.stderr)
            folder, node_note = (None, "skipped (--no-node)") if args.no_node else build_node(work)
            node = start_node_servers(servers, folder, env, config) if folder else None
            idle = worker_rss_mib(servers.processes["protected"].pid)
            print(f"bench: wrk -t1 -c{CONNECTIONS}, {args.duration:g} s a run, best of "
                  f"{args.rounds}, {settings.server_workers} worker(s) per server",
                  file=sys.stderr)  # fmt: skip
            targets = Targets(ports, node, work / "distinct.lua", tokens[0])
            loads = http_loads(targets, args.duration, args.rounds)
            loaded = worker_rss_mib(servers.processes["protected"].pid)
        finally:
            servers.stop()
        rows += http_rows(loads, node_note)
        rows.append(memory_row(idle, loaded, entry, config.token_cache_size))
        return rows


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
        prog="tools/bench.py",
        description="Measure verification and both servers (under make serve's granian) as "
        "ratios to baselines built in the same run: raw cryptography RSA verify, a hello-world "
        "Flask app under the same server, and the guide's Node.js original (needs node and "
        "npm). HTTP load uses wrk (apt-get install wrk). Takes about 2 to 3 minutes; writes "
        "only to a temporary folder. SERVER_WORKERS sets the workers per server (default: "
        "the number of cores).",
    )
    parser.add_argument("--duration", type=_positive, default=3.0, metavar="SECONDS",
                        help="length of each wrk run (default: 3)")  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, choices=range(1, 6), default=2, metavar="N",
        help="runs of each measure, the best kept (1 to 5, default: 2)",
    )  # fmt: skip
    parser.add_argument("--no-node", action="store_true",
                        help="skip the Node.js baseline (no npm install)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run make bench; return the exit code."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        rows = run(args)
    except JwtGuideError as e:
        print(f"bench: {e}", file=sys.stderr)
        return e.exit_code
    except (OSError, requests.RequestException) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    print_table(rows)
    print(f"({time.monotonic() - started:.0f} s; ratios compare runs made back to back in this "
          "run; a busy machine lowers them: run again)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
