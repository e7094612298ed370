"""jwks_server.py in process: the key set, its caching headers, errors, and --export."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from flask.testing import FlaskClient

import jwks_server
from jwt_guide.config import DEFAULT_KID, Config, load_config
from jwt_guide.keystore import public_pem
from tests.conftest import assert_clean_error, free_port, run_script, script_env

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
    return jwks_server.create_app(config).test_client()


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


def test_export_writes_the_same_json_as_keys(
    client: FlaskClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "public" / "jwks.json"
    target.parent.mkdir()
    assert jwks_server.main(["--export", str(target)]) == 0
    assert target.read_bytes() == client.get("/keys").data
    assert json.loads(target.read_text())["keys"][0]["kid"] == DEFAULT_KID
    assert str(target) in capsys.readouterr().out


def test_export_without_a_key_names_the_fix(
    empty_keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_keys_dir.mkdir()
    target = tmp_path / "jwks.json"
    code = jwks_server.main(["--export", str(target)])
    err = capsys.readouterr().err
    assert code == 2  # SPEC: a missing input file is exit 2
    assert "run gen.py first" in err
    assert len(err.strip().splitlines()) == 1
    assert_clean_error(err)
    assert not target.exists()


def test_export_to_a_missing_folder_is_one_line(
    keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no-such-folder" / "jwks.json"
    code = jwks_server.main(["--export", str(target)])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert_clean_error(err)


def test_key_folder_without_keyring_uses_configured_kid(keys_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(keys_dir / ".public.key.pem", bare / ".public.key.pem")
    config = load_config({"JWT_KEYS_DIR": str(bare), "JWT_KID": "from-config"})
    response = jwks_server.create_app(config).test_client().get("/keys")
    assert [k["kid"] for k in response.get_json()["keys"]] == ["from-config"]


# --- starting ---------------------------------------------------------------------------------


def _no_serving(*args: object, **kwargs: object) -> None:
    raise AssertionError("the server must not start")


@pytest.mark.parametrize("present", [False, True], ids=["no-folder", "empty-folder"])
def test_refuses_to_start_without_a_key(
    present: bool,
    empty_keys_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if present:
        empty_keys_dir.mkdir()
    monkeypatch.setattr(jwks_server, "run_dev_server", _no_serving)
    assert jwks_server.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"jwks_server: no public key at {empty_keys_dir / '.public.key.pem'}: run gen.py first\n"
    )


def test_ctrl_c_at_startup_is_one_line_and_130(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the server binds its port

    monkeypatch.setattr(jwks_server, "run_dev_server", interrupted)
    try:
        code = jwks_server.main([])
    except KeyboardInterrupt:  # not raised on: it would stop this pytest session
        pytest.fail("Ctrl-C escaped main() with a traceback")
    assert code == 130
    assert capsys.readouterr().err == "jwks_server: interrupted\n"


def test_export_names_the_file_by_absolute_path(
    keys_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert jwks_server.main(["--export", "jwks.json"]) == 0
    assert capsys.readouterr().out == f"JWKS written to {tmp_path / 'jwks.json'}\n"
    assert jwks_server.main(["--export", "missing/jwks.json"]) == 1
    assert str(tmp_path / "missing") in capsys.readouterr().err


@pytest.mark.e2e
def test_server_without_keys_exits_at_once(empty_keys_dir: Path) -> None:
    env = script_env(JWT_KEYS_DIR=str(empty_keys_dir), JWKS_PORT=str(free_port()))
    result = run_script("jwks_server.py", env=env, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.endswith(": run gen.py first\n")
    assert len(result.stderr.splitlines()) == 1
