"""jwt_guide.flask.JwtAuth in a host's own Flask app (test client, JWKS fetch injected)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from flask import Flask, g
from werkzeug.exceptions import HTTPException
from werkzeug.test import Client

from jwt_guide import Verifier
from jwt_guide.config import DEFAULT_KID, load_config
from jwt_guide.flask import JwtAuth
from jwt_guide.jwks_client import FetchError, JwksClient
from jwt_guide.wsgi import Answer, BearerEndpoints
from tests.helpers import FakeClock, TokenFactory, assert_clean_error, jwk_of

URI = "http://127.0.0.1:9/keys"


def verifier_for(*jwks: dict[str, Any], down: bool = False) -> Verifier:
    def fetch(uri: str) -> tuple[Any, float | None]:
        if down:
            raise FetchError("down")
        return {"keys": list(jwks)}, None

    client = JwksClient(URI, 600, 5, fetch=fetch, clock=FakeClock())
    return Verifier(keys=client, config=load_config({}))


def host_app(auth: JwtAuth) -> Flask:
    """A host app with one open and one protected route, and its own error handler."""
    app = Flask("host")

    @app.get("/open")
    def open_route() -> str:
        return "open"

    @app.get("/orders")
    @auth.required
    def orders() -> dict[str, Any]:
        """A protected view of the host."""
        return {"user": g.jwt_claims["userId"], "claims": g.jwt_claims}

    @app.errorhandler(HTTPException)
    def html_errors(e: HTTPException) -> tuple[str, int]:  # the host's own error pages
        return "<h1>host error</h1>", e.code or 500

    return app


@pytest.fixture
def auth(private_key: RSAPrivateKey) -> JwtAuth:
    return JwtAuth(verifier=verifier_for(jwk_of(private_key, DEFAULT_KID)))


def test_valid_token_reaches_the_view_with_its_claims(
    auth: JwtAuth, make_token: TokenFactory
) -> None:
    client = host_app(auth).test_client()
    auth.init_app(client.application)
    answer = client.get("/orders", headers={"Authorization": f"Bearer {make_token()}"})
    assert answer.status_code == 200
    assert answer.json is not None and answer.json["user"] == "a-b-c-d"
    assert client.get("/open").text == "open"


@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [(None, 401, None), ("Basic abc", 401, None), ("Bearer a b", 400, "invalid_request"),
     ("Bearer not.a.token", 401, "invalid_token")],
    ids=["none", "basic", "two-parts", "garbage"],
)  # fmt: skip
def test_refusals_are_rfc_6750_json_whatever_the_host_renders(
    auth: JwtAuth, authorization: str | None, status: int, error: str | None
) -> None:
    app = host_app(auth)
    auth.init_app(app)
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = app.test_client().get("/orders", headers=headers)
    assert answer.status_code == status
    assert answer.mimetype == "application/json"
    body = answer.json
    assert body is not None and set(body) == {"error", "error_description"}
    assert answer.headers.getlist("WWW-Authenticate") == [
        answer.headers["WWW-Authenticate"]
    ]  # exactly one
    challenge = answer.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="')
    if error is None:
        assert "error=" not in challenge
    else:
        assert body["error"] == error and f'error="{error}"' in challenge
    assert_clean_error(answer.text)


def test_expired_token_says_why(auth: JwtAuth, make_token: TokenFactory) -> None:
    app = host_app(auth)
    auth.init_app(app)
    answer = app.test_client().get(
        "/orders", headers={"Authorization": f"Bearer {make_token(exp=1)}"}
    )
    assert answer.status_code == 401
    assert answer.json is not None and answer.json["error_description"].startswith("expired")


def test_jwks_down_is_503_with_retry_after(make_token: TokenFactory) -> None:
    auth = JwtAuth(verifier=verifier_for(down=True))
    app = host_app(auth)
    auth.init_app(app)
    answer = app.test_client().get("/orders", headers={"Authorization": f"Bearer {make_token()}"})
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.json is not None and answer.json["error"] == "temporarily_unavailable"


def test_app_given_to_the_constructor(private_key: RSAPrivateKey, make_token: TokenFactory) -> None:
    app = Flask("host")
    auth = JwtAuth(app, verifier_for(jwk_of(private_key, DEFAULT_KID)))

    @app.get("/me")
    @auth.required
    def me() -> str:
        return str(g.jwt_claims["userId"])

    assert app.extensions["jwt_guide"].verifier is auth.verifier
    assert app.test_client().get("/me", headers={"Authorization": f"Bearer {make_token()}"}).text \
        == "a-b-c-d"  # fmt: skip


def test_default_verifier_comes_from_app_config_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JWT_ISSUER", "from-env")
    monkeypatch.setenv("JWT_AUDIENCE", "env-audience")
    app = Flask("host")
    app.config.update(JWT_JWKS_URI="http://127.0.0.1:1/jwks.json", JWT_AUDIENCE="cfg-api")
    JwtAuth(app)
    verifier = app.extensions["jwt_guide"].verifier
    assert isinstance(verifier.keys, JwksClient)
    assert verifier.keys.uri == "http://127.0.0.1:1/jwks.json"
    assert (verifier.policy.issuer, verifier.policy.audience) == ("from-env", "cfg-api")


def test_each_app_has_its_own_verifier() -> None:
    auth = JwtAuth()
    first, second = Flask("first"), Flask("second")
    first.config["JWT_ISSUER"], second.config["JWT_ISSUER"] = "one", "two"
    auth.init_app(first)
    auth.init_app(second)
    one, two = first.extensions["jwt_guide"].verifier, second.extensions["jwt_guide"].verifier
    assert one is not two and (one.policy.issuer, two.policy.issuer) == ("one", "two")


def test_a_view_of_an_app_without_init_app_is_a_bug() -> None:
    auth = JwtAuth()
    app = Flask("host")
    app.testing = True  # the RuntimeError propagates instead of becoming a 500

    @app.get("/x")
    @auth.required
    def x() -> str:
        return "x"

    with pytest.raises(RuntimeError, match="init_app"):
        app.test_client().get("/x", headers={"Authorization": "Bearer a.b.c"})


def endpoint_app(auth: JwtAuth, hooks: list[str]) -> Flask:
    """A host app with a claims endpoint /me (JSON) and /check (204), recording its hooks."""
    app = host_app(auth)
    auth.init_app(app)

    @auth.endpoint(app, "/me")
    def me(claims: bytes) -> Answer:
        """The caller's claims, as JSON."""
        return 200, [("Content-Type", "application/json")], claims

    @auth.endpoint(app, "/check")
    def check(claims: bytes) -> Answer:
        return 204, [("X-Checked", str(len(claims)))], b""

    @app.before_request
    def before() -> None:
        hooks.append("before")

    return app


def test_endpoint_is_answered_before_flask_and_routed_by_it_alike(
    auth: JwtAuth, make_token: TokenFactory
) -> None:
    hooks: list[str] = []
    app = endpoint_app(auth, hooks)
    headers = {"Authorization": f"Bearer {make_token(role='x')}"}
    fast = app.test_client().get("/me", headers=headers)
    assert (fast.status_code, fast.mimetype) == (200, "application/json")
    assert fast.json is not None and fast.json["role"] == "x"
    assert hooks == []  # the WSGI fast path: Flask did not run
    # The same rule as Flask routes it (the app without its fast path in front) answers alike.
    assert isinstance(app.wsgi_app, BearerEndpoints)
    routed = Client(app.wsgi_app.app).get("/me", headers=headers)
    assert hooks == ["before"]
    assert (routed.status_code, routed.data) == (fast.status_code, fast.data)
    assert sorted(routed.headers.items()) == sorted(fast.headers.items())
    for path in ("/check", "/me"):  # refusals: the RFC 6750 answers, whatever the host renders
        fast, routed = (Client(a).get(path) for a in (app, app.wsgi_app.app))
        assert fast.status_code == routed.status_code == 401
        assert fast.data == routed.data and fast.json is not None
    checked = [Client(a).get("/check", headers=headers) for a in (app, app.wsgi_app.app)]
    assert [c.status_code for c in checked] == [204, 204]
    assert sorted(checked[0].headers.items()) == sorted(checked[1].headers.items())
    assert "Content-Type" not in checked[0].headers


def test_endpoint_other_methods_get_flask_s_405(auth: JwtAuth) -> None:
    hooks: list[str] = []
    answer = endpoint_app(auth, hooks).test_client().post("/me")
    assert (answer.status_code, answer.text) == (405, "<h1>host error</h1>")  # the host's page
    assert hooks == ["before"]


def test_endpoint_needs_init_app_first(auth: JwtAuth) -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        auth.endpoint(Flask("host"), "/me")
