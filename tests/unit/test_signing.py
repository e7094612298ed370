"""jwt_guide.Signer: tokens exactly as sign.py makes them; errors without secrets."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

import sign
from jwt_guide import JwtGuideError, Signer, UsageError, Verifier
from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_KID, load_config
from tests.helpers import assert_clean_error

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
