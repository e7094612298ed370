"""jwt_guide.Signer: tokens exactly as sign.py makes them; errors without secrets."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jwt
import pytest

import gen
import sign
from jwt_guide import JwtGuideError, Signer, UsageError, Verifier
from jwt_guide.algorithms import ALGORITHMS, KeyRejected, PrivateKey
from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_KID, load_config
from jwt_guide.signing import make_claims
from tests.helpers import ALGS, alg_args, assert_clean_error

pytestmark = pytest.mark.usefixtures("fast_key_loading")

NOW = 1_700_000_000


def segment(token: str, index: int) -> Any:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_header_and_claims_are_sign_py_s(keys_dir: Path) -> None:
    signer = Signer.from_keys_dir(keys_dir)
    signer.clock = lambda: NOW + 0.7
    token = signer.sign({"userId": "u-1", "role": "admin"})
    assert segment(token, 0) == {"alg": "RS256", "kid": DEFAULT_KID, "typ": "JWT"}
    assert list(segment(token, 1).items()) == [
        ("userId", "u-1"), ("role", "admin"), ("iat", NOW), ("exp", NOW + 86400),
        ("iss", DEFAULT_ISSUER),
    ]  # fmt: skip
    assert signer.alg == "RS256" and signer.kid == DEFAULT_KID


def test_same_token_as_sign_py(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("time.time", lambda: NOW + 0.2)
    assert sign.main(["--payload", '{"userId": "x"}', "--audience", "api"]) == 0
    printed = capsys.readouterr().out.strip().removeprefix("Signed token: ")
    assert Signer.from_keys_dir().sign({"userId": "x"}, audience="api") == printed


def test_overrides_and_environment(keys_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_AUDIENCE", "env-api")
    monkeypatch.setenv("JWT_EXPIRES_IN", "15m")
    signer = Signer.from_keys_dir()
    claims = segment(signer.sign({}), 1)
    assert (claims["aud"], claims["exp"] - claims["iat"]) == ("env-api", 900)
    claims = segment(signer.sign({}, expires_in=60, audience="other"), 1)
    assert (claims["aud"], claims["exp"] - claims["iat"]) == ("other", 60)
    verifier = Verifier(keys_dir=keys_dir, audience="other")
    assert verifier.verify(signer.sign({"a": 1}, audience="other"))["a"] == 1


@pytest.mark.parametrize(
    ("payload", "expires_in", "match"),
    [({"iat": 1}, None, "may not set iat"), ({"aud": "x"}, None, "may not set aud"),
     ({}, 2 * 86400, "longer than the maximum token age"), ({}, 0, "not positive")],
    ids=["iat", "aud", "too-long", "zero"],
)  # fmt: skip
def test_refused_payloads_and_lifetimes(
    keys_dir: Path, payload: dict[str, Any], expires_in: int | None, match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        Signer.from_keys_dir(keys_dir).sign(payload, expires_in=expires_in)


def test_missing_folder_says_run_gen_py_first(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"run gen\.py first") as missing:
        Signer.from_keys_dir(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / ".private.key") in str(missing.value)


def test_wrong_passphrase_is_a_jwt_guide_error_without_the_secret(keys_dir: Path) -> None:
    with pytest.raises(JwtGuideError) as refused:
        Signer.from_keys_dir(keys_dir, passphrase="not the phrase")
    assert not isinstance(refused.value, UsageError)
    assert "not the phrase" not in str(refused.value)
    assert_clean_error(str(refused.value))


def test_config_gives_every_default(keys_dir: Path) -> None:
    config = load_config({"JWT_KEYS_DIR": str(keys_dir), "JWT_ISSUER": "https://i.example"})
    signer = Signer.from_keys_dir(config=config)
    assert signer.issuer == "https://i.example"
    assert segment(signer.sign({}), 1)["iss"] == "https://i.example"


# --- algorithms -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alg_keys() -> dict[str, PrivateKey]:
    """One private key per algorithm (RSA-2048: fast)."""
    return {alg: ALGORITHMS[alg].generate(2048 if alg in ("RS256", "PS256") else None)
            for alg in ALGS}  # fmt: skip


@pytest.mark.parametrize("alg", ALGS)
def test_tokens_are_byte_for_byte_pyjwts(alg: str, alg_keys: dict[str, PrivateKey]) -> None:
    """The hand-assembled token is jwt.encode's: the same header and payload bytes, and the
    same signature where the algorithm is deterministic (RS256, EdDSA)."""
    key = alg_keys[alg]
    signer = Signer(key, "k\u00e9y", issuer="iss", expires_in=60, alg=alg, clock=lambda: NOW)
    payload = {"userId": "\u00fcser", "nested": {"b": [1, 2.5, None, True]}, "z": "</"}
    ours = signer.sign(payload, audience="api")
    claims = make_claims(payload, "iss", 60, NOW, "api")
    theirs = jwt.encode(claims, key, algorithm=alg, headers={"kid": "k\u00e9y", "typ": "JWT"})
    assert ours.split(".")[:2] == theirs.split(".")[:2]
    if alg in ("RS256", "EdDSA"):
        assert ours == theirs
    public = key.public_key()
    assert jwt.decode(ours, public, algorithms=[alg], audience="api", options={
        "verify_exp": False, "verify_iat": False})["userId"] == "\u00fcser"  # fmt: skip


@pytest.mark.parametrize("alg", ALGS)
def test_from_keys_dir_signs_with_the_current_keys_algorithm(
    alg: str, empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen.main(alg_args(alg)) == 0
    capsys.readouterr()
    signer = Signer.from_keys_dir()
    assert signer.alg == alg
    token = signer.sign({"userId": "a"})
    assert segment(token, 0) == {"alg": alg, "kid": DEFAULT_KID, "typ": "JWT"}
    assert Verifier(keys_dir=empty_keys_dir).verify(token)["userId"] == "a"
    assert sign.main([]) == 0
    printed = capsys.readouterr().out.strip().removeprefix("Signed token: ")
    assert segment(printed, 0)["alg"] == alg


def test_default_alg_follows_the_key_type_and_never_guesses_ps256(
    alg_keys: dict[str, PrivateKey],
) -> None:
    defaults = {name: Signer(key, "k", issuer="i", expires_in=60).alg
                for name, key in alg_keys.items()}  # fmt: skip
    assert defaults == {"RS256": "RS256", "PS256": "RS256", "ES256": "ES256", "EdDSA": "EdDSA"}
    with pytest.raises(KeyRejected, match="does not fit"):
        Signer(alg_keys["ES256"], "k", issuer="i", expires_in=60, alg="RS256")
    with pytest.raises(KeyRejected, match="not one of"):
        Signer(alg_keys["RS256"], "k", issuer="i", expires_in=60, alg="HS256")
