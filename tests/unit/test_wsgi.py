"""jwt_guide.wsgi.BearerAuth around a plain WSGI app (werkzeug's test client)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from werkzeug.test import Client

from jwt_guide import Verifier
from jwt_guide.config import DEFAULT_KID, load_config
from jwt_guide.jwks_client import FetchError, JwksClient
from jwt_guide.wsgi import Answer, BearerAuth, BearerEndpoints
from tests.helpers import FakeClock, TokenFactory, assert_clean_error, jwk_of

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def plain_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A WSGI app without any framework: echoes the claims it was given."""
    body = json.dumps({"path": environ["PATH_INFO"], "claims": environ.get("jwt_guide.claims")})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]


def client_for(private_key: RSAPrivateKey | None, exempt: Iterable[str] = ()) -> Client:
    def fetch(uri: str) -> tuple[Any, float | None]:
        if private_key is None:
            raise FetchError("down")
        return {"keys": [jwk_of(private_key, DEFAULT_KID)]}, None

    keys = JwksClient("http://127.0.0.1:9/keys", 600, 5, fetch=fetch, clock=FakeClock())
    verifier = Verifier(keys=keys, config=load_config({}))
    return Client(BearerAuth(plain_app, verifier, exempt=exempt))


def test_claims_reach_the_app(private_key: RSAPrivateKey, make_token: TokenFactory) -> None:
    answer = client_for(private_key).get(
        "/api/orders", headers={"Authorization": f"bearer {make_token(role='x')}"}
    )
    assert answer.status_code == 200
    assert answer.json is not None
    assert answer.json["claims"]["role"] == "x"


def test_exempt_paths_are_exact(private_key: RSAPrivateKey) -> None:
    client = client_for(private_key, exempt={"/health"})
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json is not None and health.json["claims"] is None
    assert client.get("/health/").status_code == 401
    assert client.get("/healthz").status_code == 401


@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [(None, 401, "unauthorized"), ("Bearer", 400, "invalid_request"),
     ("Bearer e30.e30.", 401, "invalid_token")],
    ids=["none", "bearer-alone", "garbage"],
)  # fmt: skip
def test_refusals_never_reach_the_app(
    private_key: RSAPrivateKey, authorization: str | None, status: int, error: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = client_for(private_key).get("/api", headers=headers)
    assert answer.status_code == status
    body = answer.json
    assert body is not None and set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert len(answer.headers.getlist("WWW-Authenticate")) == 1
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="')
    assert_clean_error(answer.text)


def test_jwks_down_is_503_with_retry_after(make_token: TokenFactory) -> None:
    answer = client_for(None).get("/api", headers={"Authorization": f"Bearer {make_token()}"})
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.json is not None and answer.json["error"] == "temporarily_unavailable"


def test_default_verifier_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWKS_URI", "http://127.0.0.1:1/env-keys")
    middleware = BearerAuth(plain_app)
    assert isinstance(middleware.verifier.keys, JwksClient)
    assert middleware.verifier.keys.uri == "http://127.0.0.1:1/env-keys"


def claims_echo(claims: bytes) -> Answer:
    """A view of the claims alone: echoes them."""
    return 200, [("Content-Type", "application/json")], claims


def endpoints_for(private_key: RSAPrivateKey | None) -> Client:
    """BearerEndpoints answering /me and /check (204) in front of plain_app."""
    auth = client_for(private_key).application
    assert isinstance(auth, BearerAuth)
    views = {"/me": claims_echo, "/check": lambda claims: (204, [("X-Claims", "yes")], b"")}
    return Client(BearerEndpoints(plain_app, auth.verifier, views))


def test_endpoints_answer_get_and_head_from_the_claims(
    private_key: RSAPrivateKey, make_token: TokenFactory
) -> None:
    client = endpoints_for(private_key)
    headers = {"Authorization": f"Bearer {make_token(role='x')}"}
    answer = client.get("/me", headers=headers)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json is not None and answer.json["role"] == "x"
    assert answer.headers["Content-Length"] == str(len(answer.data))
    head = client.head("/me", headers=headers)
    assert (head.status_code, head.data) == (200, b"")
    assert head.headers["Content-Length"] == answer.headers["Content-Length"]
    check = client.get("/check", headers=headers)
    assert (check.status_code, check.data, check.headers["X-Claims"]) == (204, b"", "yes")
    assert "Content-Length" not in check.headers  # RFC 9110 8.6: never on a 204


def test_endpoints_leave_other_paths_and_methods_to_the_app(
    private_key: RSAPrivateKey, make_token: TokenFactory
) -> None:
    client = endpoints_for(private_key)
    headers = {"Authorization": f"Bearer {make_token()}"}
    for answer in (client.get("/me/", headers=headers), client.post("/me", headers=headers),
                   client.get("/other")):  # fmt: skip
        assert answer.status_code == 200
        assert answer.json is not None and answer.json["claims"] is None  # plain_app's echo


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(None, 401), ("Bearer", 400), ("Bearer e30.e30.", 401), ("basic x", 401)],
    ids=["none", "bearer-alone", "garbage", "basic"],
)  # fmt: skip
def test_endpoints_refuse_exactly_as_bearer_auth(
    private_key: RSAPrivateKey, authorization: str | None, status: int
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = endpoints_for(private_key).get("/me", headers=headers)
    reference = client_for(private_key).get("/me", headers=headers)
    assert answer.status_code == status
    assert (answer.status_code, answer.data) == (reference.status_code, reference.data)
    assert answer.headers.getlist("WWW-Authenticate") == reference.headers.getlist(
        "WWW-Authenticate"
    )


def test_endpoints_answer_503_when_the_jwks_is_down(make_token: TokenFactory) -> None:
    answer = endpoints_for(None).get("/me", headers={"Authorization": f"Bearer {make_token()}"})
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) >= 1
