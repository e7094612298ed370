"""jwt_guide.http.jwks_app in process (the app of jwks_server.py, step 4.a): the key set's
shape, caching headers and 304s, keys replaced or broken while it serves, JSON errors."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from flask.testing import FlaskClient

import gen
from jwt_guide.algorithms import key_from_jwk
from jwt_guide.config import DEFAULT_KID, Config, load_config
from jwt_guide.http import jwks_app
from jwt_guide.keystore import public_pem, read_keyring
from tests.helpers import alg_args, assert_clean_error

PATHS = ("/keys", "/.well-known/jwks.json")


PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def b64url_int(text: str) -> int:
    """Decode an unpadded base64url big-endian integer, refusing padding and other alphabets."""
    assert "=" not in text
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` the way an operator would: write a new file, rename it over the old."""
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    os.replace(temp, path)


@pytest.fixture
def config(keys_dir: Path) -> Config:
    return load_config({"JWT_KEYS_DIR": str(keys_dir), "JWKS_CACHE_SECONDS": "123"})


@pytest.fixture
def client(config: Config) -> FlaskClient:
    return jwks_app.create_app(config).test_client()


@pytest.mark.parametrize("path", PATHS)
def test_key_set_shape(client: FlaskClient, private_key: RSAPrivateKey, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document = response.get_json()
    assert list(document) == ["keys"]
    [jwk] = document["keys"]
    assert set(jwk) == {"kty", "n", "e", "kid", "use", "alg"}
    assert jwk["kty"] == "RSA"
    assert jwk["e"] == "AQAB"
    assert jwk["kid"] == DEFAULT_KID
    assert jwk["use"] == "sig"
    assert jwk["alg"] == "RS256"
    numbers = private_key.public_key().public_numbers()
    assert b64url_int(jwk["n"]) == numbers.n
    assert b64url_int(jwk["e"]) == numbers.e == 65537


def test_both_paths_serve_the_same_document(client: FlaskClient) -> None:
    assert client.get(PATHS[0]).data == client.get(PATHS[1]).data


def test_no_private_member_ever_appears(client: FlaskClient) -> None:
    response = client.get("/keys")
    for jwk in response.get_json()["keys"]:
        assert not PRIVATE_MEMBERS & jwk.keys()
    assert_clean_error(response.get_data(as_text=True))


def test_cache_control_and_etag(client: FlaskClient) -> None:
    response = client.get("/keys")
    assert response.cache_control.public
    assert response.cache_control.max_age == 123
    assert response.headers["Cache-Control"].replace(" ", "") in {
        "public,max-age=123",
        "max-age=123,public",
    }
    etag = response.headers["ETag"]
    assert etag
    assert client.get("/keys").headers["ETag"] == etag


def test_if_none_match_gets_304(client: FlaskClient) -> None:
    etag = client.get("/keys").headers["ETag"]
    response = client.get("/keys", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == etag
    assert response.cache_control.max_age == 123


def test_304_has_no_body_length_and_head_has_the_full_length(client: FlaskClient) -> None:
    full = client.get("/keys")
    etag = full.headers["ETag"]
    for value in (etag, f"W/{etag}", '"other", ' + etag, "*"):
        not_modified = client.get("/keys", headers={"If-None-Match": value})
        assert not_modified.status_code == 304, value
        assert not_modified.headers["ETag"] == etag
        assert not_modified.headers.get("Content-Length") in (None, str(len(full.data)))
    head = client.head("/keys")
    assert head.status_code == 200
    assert head.data == b""
    assert head.headers["Content-Length"] == str(len(full.data))


def test_other_etag_gets_the_full_document(client: FlaskClient) -> None:
    response = client.get("/keys", headers={"If-None-Match": '"something-else"'})
    assert response.status_code == 200
    assert response.get_json()["keys"]


def test_replaced_public_key_is_picked_up_without_restart(
    client: FlaskClient, keys_dir: Path, other_private_key: RSAPrivateKey
) -> None:
    before = client.get("/keys")
    replace_file(keys_dir / ".public.key.pem", public_pem(other_private_key.public_key()).encode())
    after = client.get("/keys")
    assert after.status_code == 200
    assert after.headers["ETag"] != before.headers["ETag"]
    [jwk] = after.get_json()["keys"]
    assert b64url_int(jwk["n"]) == other_private_key.public_key().public_numbers().n
    old = client.get("/keys", headers={"If-None-Match": before.headers["ETag"]})
    assert old.status_code == 200


def _missing(path: Path) -> None:
    path.unlink()


def _garbage(path: Path) -> None:
    replace_file(path, b"this is not a PEM public key\n")


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _unreadable(path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    path.chmod(0)


@pytest.mark.parametrize(
    "break_key",
    [_missing, _garbage, _directory, _unreadable],
    ids=["missing", "not-pem", "directory", "mode-000"],
)
def test_broken_public_key_is_500_json_and_server_recovers(
    client: FlaskClient, keys_dir: Path, break_key: object
) -> None:
    path = keys_dir / ".public.key.pem"
    saved = path.read_bytes()
    good = client.get("/keys")
    assert callable(break_key)
    break_key(path)
    for _ in range(2):  # the failure is not cached, nor does it stop the app
        response = client.get("/keys")
        assert response.status_code == 500
        assert response.mimetype == "application/json"
        body = response.get_json()
        assert body["error"] == "server_error"
        assert body["error_description"]
        assert "ETag" not in response.headers
        assert_clean_error(response.get_data(as_text=True))
    if path.is_dir():
        path.rmdir()
    elif path.exists():
        path.chmod(0o644)
    replace_file(path, saved)
    back = client.get("/keys")
    assert back.status_code == 200
    assert back.get_json() == good.get_json()


def test_unknown_path_is_404_json(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405_json(client: FlaskClient, method: str) -> None:
    response = client.open("/keys", method=method)
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_key_folder_without_keyring_uses_configured_kid(keys_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(keys_dir / ".public.key.pem", bare / ".public.key.pem")
    config = load_config({"JWT_KEYS_DIR": str(bare), "JWT_KID": "from-config"})
    response = jwks_app.create_app(config).test_client().get("/keys")
    assert [k["kid"] for k in response.get_json()["keys"]] == ["from-config"]


# --- keys of every algorithm ---------------------------------------------------------------


MEMBERS = {
    "RS256": {"kty", "n", "e"}, "PS256": {"kty", "n", "e"},
    "ES256": {"kty", "crv", "x", "y"}, "EdDSA": {"kty", "crv", "x"},
}  # fmt: skip


@pytest.mark.parametrize("alg", ["PS256", "ES256", "EdDSA"])
def test_each_key_has_its_types_members_and_its_alg(
    alg: str, keys_dir: Path, config: Config, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert gen.main(["--next", "--kid", "k2", *alg_args(alg)]) == 0
    capsys.readouterr()
    response = jwks_app.create_app(config).test_client().get("/keys")
    old, new = response.get_json()["keys"]
    assert (old["kid"], old["alg"], old["kty"]) == (DEFAULT_KID, "RS256", "RSA")
    assert set(new) == MEMBERS[alg] | {"kid", "use", "alg"}
    assert (new["kid"], new["use"], new["alg"]) == ("k2", "sig", alg)
    assert not PRIVATE_MEMBERS & set(new)
    # What a client builds from the JWK is the key gen.py made, bound to the same alg.
    key, algorithm = key_from_jwk(new)
    assert algorithm.name == alg
    assert public_pem(key) == read_keyring(keys_dir, DEFAULT_KID).records[1].public_pem
    if alg != "PS256":
        assert new["crv"] == {"ES256": "P-256", "EdDSA": "Ed25519"}[alg]
        assert new["kty"] == {"ES256": "EC", "EdDSA": "OKP"}[alg]


def test_algorithms_of_the_published_keys(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = jwks_app.JwksCache(keys_dir, DEFAULT_KID)
    assert cache.algorithms() == ("RS256",)
    assert gen.main(["--next", "--kid", "k2", "--alg", "EdDSA"]) == 0
    assert cache.algorithms() == ("RS256", "EdDSA")  # picked up without a restart
    assert gen.main(["--promote"]) == 0
    assert gen.main(["--next", "--kid", "k3", "--alg", "ES256"]) == 0
    # The retired RS256 key is still published; the table's order, not the keys'.
    assert cache.algorithms() == ("RS256", "ES256", "EdDSA")
    assert gen.main(["--prune", "--force"]) == 0
    assert cache.algorithms() == ("ES256", "EdDSA")
    capsys.readouterr()
    document = jwks_app.build_jwks(keys_dir, DEFAULT_KID)
    assert jwks_app.published_algorithms(document) == ["ES256", "EdDSA"]
