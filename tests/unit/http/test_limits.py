"""jwt_guide.http.limits in both apps (test client): headers over 64 KiB get a JSON 431,
a token over 8 KiB still reaches the protected app (its 401), no redirect from Host."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

import protected_server
from jwt_guide.config import load_config
from jwt_guide.http import jwks_app, limits
from tests.helpers import TokenFactory


@pytest.fixture(params=["jwks", "protected"])
def app(request: pytest.FixtureRequest, keys_dir: Path) -> Flask:
    """Each of the two apps, built from the environment (keys_dir sets JWT_KEYS_DIR)."""
    if request.param == "jwks":
        return jwks_app.create_app(load_config())
    return protected_server.create_app(load_config())


def test_headers_over_64_kib_in_all_get_a_json_431(app: Flask) -> None:
    client = app.test_client()
    base = limits.header_bytes(client.get("/", headers={"X-Pad": ""}).request.environ)
    at_limit = {"X-Pad": "p" * (limits.MAX_HEADER_BYTES - base)}
    sent = client.get("/", headers=at_limit).request.environ
    assert limits.header_bytes(sent) == limits.MAX_HEADER_BYTES
    over = {"X-Pad": at_limit["X-Pad"] + "p"}
    for path in ("/keys", "/.well-known/jwks.json", "/with-auth", "/nowhere"):
        assert client.get(path, headers=at_limit).status_code != 431, path
        refused = client.get(path, headers=over)
        assert refused.status_code == 431, path
        assert refused.json == {
            "error": "invalid_request",
            "error_description": f"request headers over {limits.MAX_HEADER_BYTES} bytes in all",
        }


def test_a_token_over_8_kib_reaches_the_protected_app(
    keys_dir: Path, make_token: TokenFactory
) -> None:
    client = protected_server.create_app(load_config()).test_client()
    token = make_token(blob="x" * 9000)
    headers = {"Authorization": f"Bearer {token}", "X-Pad": "p" * 50_000}
    answer = client.get("/with-auth", headers=headers)
    assert answer.status_code == 401
    assert answer.json is not None and answer.json["error"] == "invalid_token"


REDIRECT_BAIT = ["/.well-known//jwks.json", "//keys", "/keys/", "//with-auth", "/with-auth/",
                 "/a//b/"]  # fmt: skip


@pytest.mark.parametrize("path", REDIRECT_BAIT)
def test_no_redirect_is_built_from_the_host_header(app: Flask, path: str) -> None:
    answer = app.test_client().get(path, headers={"Host": "evil.example"})
    assert "Location" not in answer.headers
    assert answer.status_code == 404
    assert answer.json is not None and answer.json["error"] == "not_found"


def test_a_route_with_a_trailing_slash_is_never_a_redirect(keys_dir: Path) -> None:
    """werkzeug redirects /dir to /dir/ for such a route, with the Host header in Location."""
    app = jwks_app.create_app(load_config())
    app.add_url_rule("/dir/", "dir", lambda: "dir", strict_slashes=True)
    answer = app.test_client().get("/dir", headers={"Host": "evil.example"})
    assert answer.status_code == 404
    assert "Location" not in answer.headers


def _answer(environ: dict[str, object], start_response: object) -> list[bytes]:
    return [b"ok"]


def test_header_limit_learns_only_the_server_s_keys_and_still_counts_every_header() -> None:
    limit = limits.HeaderLimit(_answer, limit=100)
    statuses: list[str] = []

    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        statuses.append(status)

    server = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": None, "PATH": "/bin"}
    assert limit({**server, "HTTP_X": "a" * 50}, start_response) == [b"ok"]  # type: ignore[arg-type]
    assert limit.known == frozenset(server)  # never a header: they are all counted each time
    for big in ({"HTTP_X": "a" * 100}, {"CONTENT_TYPE": "a" * 90}, {"HTTP_PATH": "a" * 99}):
        limit({**server, **big}, start_response)  # type: ignore[arg-type]
        assert statuses.pop().startswith("431"), big


def test_header_limit_learns_a_bounded_number_of_keys() -> None:
    limit = limits.HeaderLimit(_answer)
    for n in range(limits.MAX_KNOWN_KEYS + 100):
        limit({f"server.key{n}": "x"}, lambda *a: None)  # type: ignore[arg-type]
    assert len(limit.known) == limits.MAX_KNOWN_KEYS
