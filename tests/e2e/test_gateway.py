"""make gateway with the real nginx: tokens through auth_request, refusals kept whole, load
shared and failed over, the key set cached, a key rotation, a JWKS server that goes away.

Skipped where nginx is not installed (CI installs nginx-light). Each gateway is
tools/gateway.py as a subprocess on free ports, with its own copy of the keys folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from jwt_guide.config import load_config
from jwt_guide.errors import JwtGuideError
from tests.helpers import ROOT, TokenFactory, free_port, run_script, script_env
from tools import gateway

pytestmark = pytest.mark.e2e
NO_NGINX = "nginx is not installed: apt-get install nginx-light (make gateway does it as root)"

READY = "Ctrl-C stops everything"
TIMEOUT = 10
BANNER = re.compile(r"^(.+) is on port (\d+) \(pid (\d+)\)$", re.MULTILINE)


@dataclass
class Gateway:
    """tools/gateway.py running, and what its banner says."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    pids: dict[str, int] = field(default_factory=dict)  # "JWKS API", "verifier 1", ...
    ports: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def instance_url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, name: str) -> None:
        """SIGKILL one server's process group, as if its machine went down."""
        os.killpg(self.pids[name], signal.SIGKILL)

    def stop(self, signum: int = signal.SIGINT) -> None:
        """Ctrl-C (exit 130) or SIGTERM (exit 0): one line, no process and no port left."""
        before = self.output()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the gateway did not stop:\n{self.output()}")
        output = self.output()
        assert code == (130 if signum == signal.SIGINT else 0), output
        # One line, whatever the servers do while stopping.
        assert output[len(before):] == "Stopping the gateway\n", output
        assert "Traceback" not in output
        self.assert_gone()

    def assert_gone(self) -> None:
        """No process of any server left (within a moment: zombies of killed groups are
        reaped by init, and PDEATHSIG takes effect), and nothing on the gateway's port."""
        deadline = time.monotonic() + 10
        while left := [pid for pid in self.pids.values() if live_members(pid)]:
            assert time.monotonic() < deadline, f"process groups {left} outlived the gateway"
            time.sleep(0.05)
        with pytest.raises(requests.ConnectionError):
            requests.get(self.url("/keys"), timeout=TIMEOUT)


def live_members(group: int) -> list[int]:
    """The processes of a process group that are not zombies."""
    members = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def start_gateway(folder: Path, keys_dir: Path, port: int | None = None, **env: str) -> Gateway:
    if gateway.find_nginx() is None:
        pytest.skip(NO_NGINX)
    port = port or free_port()
    log = folder / f"gateway-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "gateway.py")],
            env=script_env(GATEWAY_PORT=str(port), JWKS_PORT=str(free_port()),
                           JWT_KEYS_DIR=str(keys_dir), **env),
            stdout=out, stderr=subprocess.STDOUT, cwd=folder,
        )  # fmt: skip
    running = Gateway(process, port, log)
    deadline = time.monotonic() + 30
    while READY not in running.output():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"make gateway did not start:\n{running.output()}")
        time.sleep(0.05)
    for name, server_port, pid in BANNER.findall(running.output()):
        running.ports[name], running.pids[name] = int(server_port), int(pid)
    assert len(running.pids) == 5, running.output()  # JWKS, 2 verifiers, app, nginx
    return running


@pytest.fixture
def own_gateway(tmp_path: Path, keys_dir: Path) -> Iterator[Callable[..., Gateway]]:
    """Start a gateway on the test's keys folder (``keys_dir``); stopped at teardown."""
    started: list[Gateway] = []

    def factory(**env: str) -> Gateway:
        started.append(start_gateway(tmp_path, keys_dir, None, **env))
        return started[-1]

    yield factory
    for running in started:
        running.stop()


def call(session: requests.Session, running: Gateway, token: str | None, path: str = "/api/x",
         **headers: str) -> requests.Response:  # fmt: skip
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return session.get(running.url(path), headers=headers, timeout=TIMEOUT)


class Load:
    """Clients calling through the gateway in a loop, each with a keep-alive session; every
    answer but a 200 with the claims counts as a failure."""

    def __init__(self, running: Gateway, token: str, total: int, clients: int = 4) -> None:
        self.running = running
        self.token = token
        self.left = total
        self.done = 0
        self.failures: list[str] = []
        self.verifiers: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self) -> None:
        with requests.Session() as session:
            while True:
                with self._lock:
                    if self.left == 0:
                        return
                    self.left -= 1
                    token = self.token
                problem, verifier = None, ""
                try:
                    response = call(session, self.running, token)
                    if response.status_code == 200 and response.json()["claims"]["userId"]:
                        verifier = response.json()["verified_by"]
                    else:
                        problem = f"{response.status_code} {response.text}"
                except requests.RequestException as e:
                    problem = repr(e)
                with self._lock:
                    self.done += 1
                    if problem:
                        self.failures.append(problem)
                    else:
                        self.verifiers[verifier] += 1

    def wait_for(self, done: int) -> None:
        deadline = time.monotonic() + 30
        while self.done < done:
            assert time.monotonic() < deadline, f"only {self.done} requests done"
            time.sleep(0.005)

    def switch(self, token: str) -> int:
        """Call with ``token`` from now on; returns how many requests were done before."""
        with self._lock:
            self.token = token
            return self.done

    def stop(self) -> None:
        with self._lock:
            self.left = 0

    def join(self) -> None:
        for thread in self._threads:
            thread.join(60)


# --- the tool itself, without nginx ---------------------------------------------------------


def test_render_fills_placeholders_and_leaves_nginx_variables() -> None:
    text = gateway.render("listen ${LISTEN}; set $a ${LISTEN}$uri;", {"LISTEN": "127.0.0.1:1"})
    assert text == "listen 127.0.0.1:1; set $a 127.0.0.1:1$uri;"
    with pytest.raises(JwtGuideError, match="no value for GATEWAY_DIR, LISTEN"):
        gateway.render("${LISTEN} ${GATEWAY_DIR}", {})


def test_the_template_has_a_value_for_every_placeholder(tmp_path: Path) -> None:
    config = load_config({"GATEWAY_INSTANCES": "3"})
    jwks, instances, app, nginx = gateway.plan(config)
    conf = gateway.write_nginx_config(tmp_path, jwks, instances, app, nginx).read_text()
    assert not re.search(r"\$\{[A-Z_]+\}", conf)
    assert conf.count("        server 127.0.0.1:") == 3 + 2  # instances, JWKS server, app
    assert f"listen 127.0.0.1:{config.gateway_port};" in conf


def test_without_nginx_it_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway, "find_nginx", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(JwtGuideError, match="run sudo apt-get install nginx-light"):
        gateway.ensure_nginx()


def test_same_port_twice_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "4000")
    monkeypatch.setenv("JWKS_PORT", "4000")
    assert gateway.main([]) == 1
    err = capsys.readouterr().err
    assert err == "gateway: GATEWAY_PORT and JWKS_PORT are both 4000: change one\n"


def test_without_a_key_it_refuses_to_start(
    empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway.main([]) == 2
    missing = empty_keys_dir / ".public.key.pem"
    assert capsys.readouterr().err == f"gateway: no public key at {missing}: run gen.py first\n"


def test_a_taken_port_is_one_line_naming_its_variable(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("GATEWAY_PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("JWKS_PORT", str(free_port()))
        assert gateway.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith("stop what runs there or set GATEWAY_PORT\n")


def test_bad_setting_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_INSTANCES", "none")
    assert gateway.main([]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# --- one gateway configured by issuer: the instances discover their keys through nginx -----


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory, session_keys: Path) -> Iterator[Gateway]:
    """A gateway whose issuer is its own URL and JWKS_URI unset: each instance reads the
    discovery document and the key set through nginx's cache."""
    folder = tmp_path_factory.mktemp("gateway")
    shutil.copytree(session_keys, folder / "keys")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    running = start_gateway(folder, folder / "keys", port, JWT_ISSUER=issuer,
                            JWT_PUBLIC_URL=issuer)  # fmt: skip
    yield running
    running.stop(signal.SIGTERM)


@pytest.fixture
def issuer(issued: Gateway) -> str:
    return f"http://127.0.0.1:{issued.port}"


def test_a_valid_token_reaches_the_app_with_its_claims(
    issued: Gateway, issuer: str, make_token: TokenFactory
) -> None:
    token = make_token(iss=issuer, role="reader")
    with requests.Session() as session:
        response = session.post(issued.url("/api/orders/7?x=1"), data=b"{}", timeout=TIMEOUT,
                                headers={"Authorization": f"Bearer {token}",
                                         "X-Jwt-Claims": "eyJyb2xlIjoiYWRtaW4ifQ"})  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "POST"
    assert body["path"] == "/api/orders/7"
    # The claims the verifier found, not those the client tried to send ({"role":"admin"}).
    assert body["claims"]["role"] == "reader"
    assert body["claims"]["iss"] == issuer
    assert body["claims"]["userId"] == "a-b-c-d"


REFUSALS: dict[str, Callable[[TokenFactory, str], str | None]] = {
    "no-header": lambda make, iss: None,
    "basic": lambda make, iss: "Basic dXNlcjpwYXNz",
    "bearer-alone": lambda make, iss: "Bearer",
    "two-parts": lambda make, iss: "Bearer a b",
    "garbage": lambda make, iss: "Bearer not-a-token",
    "expired": lambda make, iss: f"Bearer {make(iss=iss, exp=1)}",
    "other-issuer": lambda make, iss: f"Bearer {make()}",
    "unknown-kid": lambda make, iss: f"Bearer {make(iss=iss, header={'kid': 'other'})}",
    "forged": lambda make, iss: f"Bearer {make(iss=iss).rsplit('.', 1)[0]}.{'A' * 683}",
    "oversized": lambda make, iss: f"Bearer {make(iss=iss, pad='x' * 9000)}",
}


def without_numbers(body: dict[str, str]) -> dict[str, str]:
    return {name: re.sub(r"\d+", "N", value) for name, value in body.items()}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_each_refusal_keeps_status_challenge_and_body(
    issued: Gateway, issuer: str, make_token: TokenFactory, case: str
) -> None:
    authorization = REFUSALS[case](make_token, issuer)
    headers = {} if authorization is None else {"Authorization": authorization}
    through = requests.get(issued.url("/api/x"), headers=headers, timeout=TIMEOUT)
    direct = requests.get(issued.instance_url("verifier 1", "/with-auth"), headers=headers,
                          timeout=TIMEOUT)  # fmt: skip
    assert through.status_code == direct.status_code
    assert through.status_code in {400, 401}
    # The same challenge and body but for the seconds an expiry description counts ("exp
    # passed 5s ago"), which may differ by one between the two requests.
    challenges = through.raw.headers.getlist("WWW-Authenticate")
    assert [re.sub(r"\d+", "N", c) for c in challenges] == [
        re.sub(r"\d+", "N", direct.headers["WWW-Authenticate"])
    ]
    assert through.headers["Content-Type"] == "application/json"
    assert without_numbers(through.json()) == without_numbers(direct.json())


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer " + "a" * 70_000},
     {"Authorization": "Bearer " + "a" * 30_000, "X-Pad": "b" * 40_000}],
    ids=["one-line-over-64k", "lines-over-64k-in-all"],
)  # fmt: skip
def test_heads_over_64_kib_are_a_json_431_as_on_the_servers(
    issued: Gateway, headers: dict[str, str]
) -> None:
    through = requests.get(issued.url("/api/x"), headers=headers, timeout=TIMEOUT)
    direct = requests.get(issued.instance_url("verifier 1", "/with-auth"), headers=headers,
                          timeout=TIMEOUT)  # fmt: skip
    assert through.status_code == direct.status_code == 431
    assert through.json()["error"] == direct.json()["error"] == "invalid_request"


def test_a_malformed_request_line_is_a_json_400(issued: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", issued.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["error"] == "invalid_request"


def test_instances_share_the_load(issued: Gateway, issuer: str, make_token: TokenFactory) -> None:
    load = Load(issued, make_token(iss=issuer), 40, clients=2)
    load.join()
    assert load.failures == []
    instances = {f"127.0.0.1:{issued.ports[f'verifier {n}']}" for n in (1, 2)}
    assert set(load.verifiers) == instances
    assert min(load.verifiers.values()) >= 10


@pytest.mark.parametrize("path", ["/keys", "/.well-known/jwks.json",
                                  "/.well-known/openid-configuration"])  # fmt: skip
def test_key_set_and_discovery_come_from_nginx_cache_with_304(
    issued: Gateway, issuer: str, path: str
) -> None:
    direct = requests.get(f"http://127.0.0.1:{issued.ports['JWKS API']}{path}", timeout=TIMEOUT)
    first = requests.get(issued.url(path), timeout=TIMEOUT)
    again = requests.get(issued.url(path + "?cache-buster=1"), timeout=TIMEOUT)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content == direct.content
    assert first.headers["ETag"] == direct.headers["ETag"]
    assert first.headers["Cache-Control"] == direct.headers["Cache-Control"]
    assert again.headers["X-Cache-Status"] == "HIT"
    conditional = requests.get(issued.url(path), headers={"If-None-Match": first.headers["ETag"]},
                               timeout=TIMEOUT)  # fmt: skip
    assert conditional.status_code == 304
    assert conditional.content == b""
    if path.endswith("openid-configuration"):
        assert first.json() == {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/.well-known/jwks.json",
            "id_token_signing_alg_values_supported": ["RS256"],
        }


def test_other_paths_are_json_404(issued: Gateway) -> None:
    for path in ("/", "/with-auth", "/auth", "/_verify", "/.well-known/other"):
        response = requests.get(issued.url(path), timeout=TIMEOUT)
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"


# --- failures and changes, each with its own gateway ---------------------------------------


def test_an_instance_killed_under_load_costs_no_request(
    own_gateway: Callable[..., Gateway], make_token: TokenFactory
) -> None:
    running = own_gateway()
    load = Load(running, make_token(), 300)
    load.wait_for(60)
    running.kill("verifier 1")
    load.join()
    assert load.failures == []
    survivor = f"127.0.0.1:{running.ports['verifier 2']}"
    assert load.verifiers[survivor] > 150
    assert "the verifier 1 (port" in running.output()  # reported; the gateway carries on
    running.kill("verifier 2")  # none left: a JSON 503, as from a verifier without keys
    response = requests.get(running.url("/api/x"), timeout=TIMEOUT,
                            headers={"Authorization": f"Bearer {make_token()}"})  # fmt: skip
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"] == "temporarily_unavailable"


def test_killed_with_sigkill_it_leaves_no_process_behind(tmp_path: Path, keys_dir: Path) -> None:
    running = start_gateway(tmp_path, keys_dir)
    running.process.kill()
    running.process.wait(10)
    running.assert_gone()


def test_without_the_jwks_server_instances_and_nginx_serve_from_their_caches(
    own_gateway: Callable[..., Gateway], make_token: TokenFactory, keys_dir: Path
) -> None:
    # One-second caches: by the time the JWKS server is back and gone again, every cache
    # has expired, so what follows is served stale (stale-if-error), not merely cached.
    running = own_gateway(JWKS_CACHE_SECONDS="1")
    token = make_token()
    with requests.Session() as session:
        # Gone before anything was fetched: the instances answer 503, passed on whole.
        running.kill("JWKS API")
        refused = call(session, running, token)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == "temporarily_unavailable"
        assert requests.get(running.url("/keys"), timeout=TIMEOUT).status_code == 503
        # Back (another process on its port): the instances recover by themselves.
        jwks = subprocess.Popen(
            [sys.executable, str(ROOT / "jwks_server.py")],
            env=script_env(JWKS_PORT=str(running.ports["JWKS API"]), JWT_KEYS_DIR=str(keys_dir),
                           JWKS_CACHE_SECONDS="1"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while {call(session, running, token).status_code for _ in range(4)} != {200}:
                assert time.monotonic() < deadline, "the instances did not recover"
                time.sleep(0.2)
            cached = {p: requests.get(running.url(p), timeout=TIMEOUT).content
                      for p in ("/keys", "/.well-known/openid-configuration")}  # fmt: skip
        finally:
            jwks.kill()
            jwks.wait()
        time.sleep(2.1)  # every cache expired (nginx counts whole seconds: max-age=1 is < 2 s)
        answers = Counter(call(session, running, token).status_code for _ in range(20))
        assert answers == {200: 20}
        for path, body in cached.items():
            stale = requests.get(running.url(path), timeout=TIMEOUT)
            assert stale.status_code == 200
            assert stale.content == body
            assert stale.headers["X-Cache-Status"] in {"STALE", "UPDATING"}


def test_key_rotation_with_clients_calling_costs_no_request(
    own_gateway: Callable[..., Gateway], make_token: TokenFactory, keys_dir: Path
) -> None:
    running = own_gateway()
    env = script_env(JWT_KEYS_DIR=str(keys_dir))
    load = Load(running, make_token(), 100_000, clients=2)  # stopped below
    load.wait_for(20)
    for command in (["--next", "--kid", "next-key", "--bits", "2048"], ["--promote"]):
        done = run_script("gen.py", *command, env=env)
        assert done.returncode == 0, done.stderr
    signed = run_script("sign.py", env=env)
    assert signed.returncode == 0, signed.stderr
    new_token = (keys_dir / "token.txt").read_text()
    load.wait_for(load.switch(new_token) + 40)
    load.stop()
    load.join()
    assert load.failures == []
    assert load.done > 60
