"""tools/bench_peers: the peers of make bench, rendered and checked without the network.

The fastify peer needs npm (network or a warm cache), so only its files are checked here;
nginx starts in a few milliseconds, so the nginx peer is run for real when nginx is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tools.bench_peers import peers

PEERS_DIR = Path(peers.__file__).resolve().parent
JWKS = b'{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "k", "alg": "RS256"}]}'


def test_rotating_lua_reads_the_tokens_file_and_sends_each_in_turn(tmp_path: Path) -> None:
    script = peers.write_rotating_tokens(tmp_path, ["t1", "t2", "t3"])

    assert (tmp_path / "tokens.txt").read_text() == "t1\nt2\nt3\n"
    lua = script.read_text()
    assert f'io.lines("{tmp_path}/tokens.txt")' in lua
    assert 'wrk.format("GET", "/with-auth"' in lua
    assert '"Bearer " .. token' in lua
    assert "i = i % #requests + 1" in lua


def test_rotating_lua_takes_another_path(tmp_path: Path) -> None:
    assert 'wrk.format("GET", "/auth"' in peers.rotating_tokens_lua(tmp_path / "t.txt", "/auth")


@pytest.mark.parametrize("path", ['/x/a"b.txt', "/x/a b.txt", "/x/a\nb"],
                         ids=["quote", "space", "newline"])  # fmt: skip
def test_rotating_lua_refuses_paths_it_would_have_to_escape(path: str) -> None:
    with pytest.raises(ValueError, match="not a plain path"):
        peers.rotating_tokens_lua(Path(path))


def test_package_json_pins_exact_versions_of_the_issue_s_majors() -> None:
    package = json.loads((PEERS_DIR / "package.json").read_text())
    lock = json.loads((PEERS_DIR / "package-lock.json").read_text())

    dependencies = package["dependencies"]
    assert set(dependencies) == {"fastify", "fast-jwt", "get-jwks"}
    for name, version in dependencies.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version} is not pinned"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert dependencies["fastify"].startswith("5.")
    assert dependencies["fast-jwt"].startswith("6.")
    assert lock["packages"][""]["dependencies"] == dependencies


def test_fastify_peer_source_parses() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    subprocess.run([node, "--check", str(PEERS_DIR / "fastify_peer.js")], check=True, timeout=30)


def test_skip_reasons_name_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(peers, "SBIN_PATH", ())

    assert peers.fastify_skip_reason() == (
        "node/npm not found (Node.js 20+: apt-get install nodejs npm)"
    )
    assert peers.nginx_skip_reason() == "nginx not found (apt-get install nginx-light)"
    with pytest.raises(peers.PeerUnavailable, match="nginx not found"), \
            peers.nginx_peer(tmp_path / "jwks.json"):  # fmt: skip
        pass
    with pytest.raises(peers.PeerUnavailable, match="node/npm not found"), peers.fastify_build():
        pass


def test_nginx_conf_serves_the_file_at_both_paths(tmp_path: Path) -> None:
    conf = peers.render_nginx_conf(tmp_path, tmp_path / "jwks.json", 8123, workers=3,
                                   max_age=42)  # fmt: skip

    assert "worker_processes 3;" in conf
    assert "listen 127.0.0.1:8123;" in conf
    assert 'add_header Cache-Control "public, max-age=42";' in conf
    assert "default_type application/json;" in conf
    assert "access_log off;" in conf
    assert f"error_log {tmp_path}/error.log" in conf
    for location in ("/keys", "/.well-known/jwks.json"):
        assert f"location = {location} {{\n            alias {tmp_path}/jwks.json;" in conf
    assert "user " not in conf


def test_nginx_conf_refuses_paths_nginx_would_expand(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a plain path"):
        peers.render_nginx_conf(tmp_path / "$x", tmp_path / "jwks.json", 8123)


def _nginx() -> str:
    if peers.nginx_skip_reason() is not None:
        pytest.skip("nginx not installed (apt-get install nginx-light)")
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin") or "nginx"


def test_nginx_accepts_the_rendered_conf(tmp_path: Path) -> None:
    nginx = _nginx()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "jwks.json").write_bytes(JWKS)
    conf = tmp_path / "nginx.conf"
    conf.write_text(peers.render_nginx_conf(tmp_path, tmp_path / "jwks.json", peers.free_port()))

    result = subprocess.run(
        [nginx, "-t", "-q", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "e.log")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + (tmp_path / "e.log").read_text()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (http on loopback)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.e2e
def test_nginx_peer_serves_the_key_set_with_etag_and_stops_clean(tmp_path: Path) -> None:
    _nginx()
    exported = tmp_path / "exported.json"
    exported.write_bytes(JWKS)

    with peers.nginx_peer(exported, workers=1, max_age=600) as peer:
        status, headers, body = _get(peer.url("/keys"))
        assert (status, body) == (200, JWKS)
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "public, max-age=600"
        assert _get(peer.url("/.well-known/jwks.json"))[2] == JWKS
        status, headers, body = _get(peer.url("/keys"), {"If-None-Match": headers["ETag"]})
        assert (status, body) == (304, b"")
        assert headers["Cache-Control"] == "public, max-age=600"
        assert _get(peer.url("/other"))[0] == 404
        folder, group = peer.folder, peer.pid

    assert not folder.exists()
    assert peers._living_members(group) == []
