"""The JWKS app's discovery document (jwt_guide.http.discovery): its members, caching headers
and 304s like the key set's, the algorithms of the published keys, a JSON 500 without a key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gen
from jwt_guide.config import load_config
from jwt_guide.http import jwks_app
from jwt_guide.http.discovery import DiscoveryDocument

ISSUER = "https://issuer.example"
PATH = "/.well-known/openid-configuration"


def test_jwks_app_serves_the_discovery_document(keys_dir: Path) -> None:
    config = load_config({"JWT_KEYS_DIR": str(keys_dir), "JWT_ISSUER": ISSUER,
                          "JWT_PUBLIC_URL": "https://keys.example/base/"})  # fmt: skip
    client = jwks_app.create_app(config).test_client()
    response = client.get(PATH)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {
        "issuer": ISSUER,
        "jwks_uri": "https://keys.example/base/.well-known/jwks.json",
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    keys = client.get("/keys")
    assert response.headers["Cache-Control"] == keys.headers["Cache-Control"]
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag != keys.headers["ETag"]
    again = client.get(PATH, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.get_data() == b""
    assert again.headers["ETag"] == etag
    assert client.head(PATH).status_code == 200
    assert client.post(PATH).status_code == 405


def test_jwks_uri_follows_the_jwks_port_by_default(keys_dir: Path) -> None:
    config = load_config({"JWT_KEYS_DIR": str(keys_dir), "JWKS_PORT": "4001"})
    document = jwks_app.create_app(config).test_client().get(PATH).get_json()
    assert document["issuer"] == "my-issuer-name"
    assert document["jwks_uri"] == "http://localhost:4001/.well-known/jwks.json"


def test_without_a_key_it_is_a_json_500(keys_dir: Path) -> None:
    client = jwks_app.create_app(load_config({"JWT_KEYS_DIR": str(keys_dir)})).test_client()
    (keys_dir / ".public.key.pem").unlink()
    response = client.get(PATH)
    assert response.status_code == 500
    assert response.get_json()["error"]


def test_algorithms_are_those_of_the_published_keys(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = jwks_app.create_app(load_config({"JWT_KEYS_DIR": str(keys_dir)})).test_client()
    first = client.get(PATH)
    assert first.get_json()["id_token_signing_alg_values_supported"] == ["RS256"]
    assert gen.main(["--next", "--kid", "k2", "--alg", "ES256"]) == 0
    capsys.readouterr()
    changed = client.get(PATH, headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200  # picked up without a restart
    assert changed.get_json()["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]


def test_the_document_is_rebuilt_only_when_the_key_set_changes() -> None:
    served: list[tuple[str, ...]] = [("RS256",)]
    reads: list[int] = []

    def algorithms() -> tuple[str, ...]:
        reads.append(1)
        return served[-1]

    document = DiscoveryDocument(
        lambda: (b"{}", f"etag-{len(served)}"), algorithms, ISSUER, ISSUER
    )
    first, etag = document.get()
    assert document.get() == (first, etag)
    assert len(reads) == 1
    served.append(("RS256", "EdDSA"))
    body, changed = document.get()
    assert json.loads(body)["id_token_signing_alg_values_supported"] == ["RS256", "EdDSA"]
    assert changed != etag
    assert len(reads) == 2
