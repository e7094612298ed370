"""jwt_guide.discovery: configuration by issuer. When to discover, which documents are used,
how the discovered URL is cached and refreshed, and that a Verifier, JwtAuth and the protected
server built from an issuer alone find the key set this way. The fetch is injected, except
for the redirect check (a RecordingServer on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from flask import Flask

import protected_server
from jwt_guide import KeysUnavailable, Verifier
from jwt_guide.config import DEFAULT_KID, load_config
from jwt_guide.discovery import (
    DiscoveringJwksClient,
    IssuerDiscovery,
    discovery_url,
    jwks_uri_from,
    uses_discovery,
)
from jwt_guide.flask import JwtAuth
from jwt_guide.jwks_client import FetchError, JwksClient
from jwt_guide.keys import FolderKeys
from tests.helpers import FakeClock, RecordingServer, TokenFactory, jwk_of

ISSUER = "https://issuer.example"
DOCUMENT_URL = "https://issuer.example/.well-known/openid-configuration"
KEYS_URL = "https://keys.example/jwks.json"


# --- when --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, False), ({"JWT_ISSUER": ISSUER}, True), ({"JWT_ISSUER": "http://127.0.0.1:3344"}, True),
     ({"JWT_ISSUER": ISSUER, "JWKS_URI": KEYS_URL}, False),
     ({"JWT_ISSUER": "urn:my-issuer"}, False), ({"JWT_ISSUER": "https:/no-host"}, False)],
    ids=["default", "https", "http", "jwks-uri-set", "urn", "no-host"],
)  # fmt: skip
def test_discovery_only_for_an_http_issuer_without_jwks_uri(
    environ: dict[str, str], expected: bool
) -> None:
    assert uses_discovery(load_config(environ)) is expected


def test_arguments_count_as_the_environment_does() -> None:
    config = load_config({})
    assert uses_discovery(config, issuer=ISSUER)
    assert not uses_discovery(config, KEYS_URL, ISSUER)
    assert not uses_discovery(load_config({"JWT_ISSUER": ISSUER}), issuer="my-issuer")


def test_discovery_url_drops_a_final_slash() -> None:
    assert discovery_url("https://issuer.example/") == DOCUMENT_URL
    assert discovery_url("https://issuer.example/tenant") == (
        "https://issuer.example/tenant/.well-known/openid-configuration"
    )


def test_verifier_by_issuer_discovers_otherwise_not(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_issuer = Verifier(issuer=ISSUER, config=load_config({}))
    assert isinstance(by_issuer.keys, DiscoveringJwksClient)
    assert by_issuer.keys.uri == DOCUMENT_URL
    from_env = Verifier(config=load_config({"JWT_ISSUER": ISSUER}))
    assert isinstance(from_env.keys, DiscoveringJwksClient)
    for plain in (Verifier(KEYS_URL, issuer=ISSUER),
                  Verifier(config=load_config({"JWT_ISSUER": ISSUER, "JWKS_URI": KEYS_URL})),
                  Verifier(issuer="my-issuer-name")):  # fmt: skip
        assert type(plain.keys) is JwksClient
    assert isinstance(Verifier(issuer=ISSUER, keys_dir=keys_dir).keys, FolderKeys)
    monkeypatch.setenv("JWT_ISSUER", ISSUER)  # Verifier() and JwtAuth read the environment
    assert isinstance(Verifier().keys, DiscoveringJwksClient)
    app = Flask(__name__)
    app.config["JWT_ISSUER"] = "https://other.example"
    JwtAuth(app)
    keys = app.extensions["jwt_guide"].verifier.keys
    assert isinstance(keys, DiscoveringJwksClient)
    assert keys.discovery.issuer == "https://other.example"


# --- documents ---------------------------------------------------------------------------------


class FakeWeb:
    """The two documents, served by an injected fetch that records what it is asked."""

    def __init__(self, private_key: RSAPrivateKey) -> None:
        self.documents: dict[str, Any] = {
            DOCUMENT_URL: {"issuer": ISSUER, "jwks_uri": KEYS_URL},
            KEYS_URL: {"keys": [jwk_of(private_key, DEFAULT_KID)]},
        }
        self.down: set[str] = set()
        self.asked: list[str] = []
        self.max_age: float | None = None

    def __call__(self, uri: str) -> tuple[Any, float | None]:
        self.asked.append(uri)
        if uri in self.down or uri not in self.documents:
            raise FetchError(f"cannot fetch {uri}: ConnectionError")
        return self.documents[uri], self.max_age


@pytest.fixture
def web(private_key: RSAPrivateKey) -> FakeWeb:
    return FakeWeb(private_key)


def test_the_key_set_is_read_from_the_discovered_uri_and_the_uri_cached(web: FakeWeb) -> None:
    clock = FakeClock()
    client = DiscoveringJwksClient(ISSUER, 600, 5, fetch=web, clock=clock)
    assert web.asked == []  # building fetches nothing
    assert client.get_key(DEFAULT_KID) is not None
    assert web.asked == [DOCUMENT_URL, KEYS_URL]
    clock.advance(601)  # the key set expired; so did the URI
    assert client.get_key(DEFAULT_KID) is not None
    assert web.asked == [DOCUMENT_URL, KEYS_URL, DOCUMENT_URL, KEYS_URL]
    assert client.get_key("unknown") is None  # a refetch within the URI's lifetime
    assert web.asked[-1] == KEYS_URL and web.asked.count(DOCUMENT_URL) == 2


def test_a_shorter_max_age_of_the_document_is_honoured(web: FakeWeb) -> None:
    clock = FakeClock()
    discovery = IssuerDiscovery(ISSUER, 600, fetch=web, clock=clock)
    web.max_age = 30
    assert discovery.jwks_uri() == KEYS_URL
    clock.advance(31)
    assert discovery.jwks_uri() == KEYS_URL
    assert web.asked == [DOCUMENT_URL, DOCUMENT_URL]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "not a JSON object"),
        ({"jwks_uri": KEYS_URL}, "names the issuer None"),
        ({"issuer": ISSUER + "/", "jwks_uri": KEYS_URL}, "not the configured"),
        ({"issuer": "https://ISSUER.example", "jwks_uri": KEYS_URL}, "not the configured"),
        ({"issuer": ISSUER}, "no jwks_uri"),
        ({"issuer": ISSUER, "jwks_uri": 42}, "no jwks_uri"),
        ({"issuer": ISSUER, "jwks_uri": "file:///etc/passwd"}, "no jwks_uri"),
        ({"issuer": ISSUER, "jwks_uri": "/relative/jwks.json"}, "no jwks_uri"),
        ({"issuer": ISSUER, "jwks_uri": "https://a b/jwks.json"}, "no jwks_uri"),
        ({"issuer": ISSUER, "jwks_uri": "http://keys.example/jwks.json"}, "plain http"),
    ],
    ids=["array", "no-issuer", "slash", "case", "no-uri", "number", "file", "relative", "space",
         "downgrade"],
)  # fmt: skip
def test_unusable_documents_are_refused(document: Any, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        jwks_uri_from(document, ISSUER, DOCUMENT_URL)


def test_a_refused_document_is_a_503_never_an_error_at_construction(
    web: FakeWeb, make_token: TokenFactory
) -> None:
    web.documents[DOCUMENT_URL]["issuer"] = "https://attacker.example"
    config = load_config({"JWT_ISSUER": ISSUER})
    app = protected_server.create_app(
        config, jwks=DiscoveringJwksClient(ISSUER, 600, 5, fetch=web)
    )
    assert web.asked == []
    response = app.test_client().get(
        "/with-auth", headers={"Authorization": f"Bearer {make_token(iss=ISSUER)}"}
    )
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert web.asked == [DOCUMENT_URL]  # the key set of the other issuer was never fetched


def test_the_last_uri_stays_in_use_while_the_document_is_unreachable(web: FakeWeb) -> None:
    clock = FakeClock()
    discovery = IssuerDiscovery(ISSUER, 600, fetch=web, clock=clock)
    assert discovery.jwks_uri() == KEYS_URL
    clock.advance(601)
    web.down.add(DOCUMENT_URL)
    assert discovery.jwks_uri() == KEYS_URL
    assert web.asked == [DOCUMENT_URL, DOCUMENT_URL]


def test_a_failed_key_set_fetch_has_the_document_read_again(web: FakeWeb) -> None:
    discovery = IssuerDiscovery(ISSUER, 600, fetch=web)
    web.down.add(KEYS_URL)
    with pytest.raises(FetchError):
        discovery.fetch_key_set(discovery.url)
    web.down.clear()
    web.documents[DOCUMENT_URL]["jwks_uri"] = "https://moved.example/jwks.json"
    web.documents["https://moved.example/jwks.json"] = web.documents[KEYS_URL]
    discovery.fetch_key_set(discovery.url)
    assert web.asked == [DOCUMENT_URL, KEYS_URL, DOCUMENT_URL, "https://moved.example/jwks.json"]


def test_nothing_discovered_yet_raises_unavailable(web: FakeWeb) -> None:
    web.down.add(DOCUMENT_URL)
    client = DiscoveringJwksClient(ISSUER, 600, 5, fetch=web)
    with pytest.raises(KeysUnavailable):
        client.get_key(DEFAULT_KID)


def test_a_redirect_to_the_document_is_not_followed() -> None:
    with RecordingServer() as server, RecordingServer() as target:
        issuer = server.base
        target.serve({"issuer": issuer, "jwks_uri": target.uri})
        server.serve(b"", 302, {"Location": f"{target.base}/doc"})
        client = DiscoveringJwksClient(issuer, 600, 5)
        with pytest.raises(KeysUnavailable):
            client.get_key(DEFAULT_KID)
        assert server.paths() == ["/.well-known/openid-configuration"]
        assert target.count == 0
