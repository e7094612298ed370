"""sign.py, step 2: the signed token's header and claims, the lifetime, and what it refuses."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

import sign
import verify
from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_KID
from jwt_guide.keystore import KEYRING_FILE
from tests.helpers import assert_clean_error, error_line, refusal

pytestmark = pytest.mark.usefixtures("fast_key_loading")

NOW = 1_700_000_000


def segment(token: str, index: int) -> Any:
    """Decode one JSON segment of a compact JWS, keeping member order."""
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def signed(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run sign.py successfully and return the token it printed."""
    assert sign.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Signed token: ")
    assert_clean_error(captured.out)
    return lines[0].removeprefix("Signed token: ")


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> int:
    """time.time() returns NOW + 0.9 s (iat must be the whole seconds)."""
    monkeypatch.setattr(time, "time", lambda: NOW + 0.9)
    return NOW


# --- the token -----------------------------------------------------------------------------


def test_signs_the_guides_token(
    keys_dir: Path, private_key: RSAPrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    token = signed(capsys, [])
    assert segment(token, 0) == {"alg": "RS256", "typ": "JWT", "kid": DEFAULT_KID}
    assert list(segment(token, 1)) == ["userId", "iat", "exp", "iss"]
    claims = jwt.decode(
        token, private_key.public_key(), algorithms=["RS256"], issuer=DEFAULT_ISSUER,
        options={"require": ["exp", "iat", "iss"]},
    )  # fmt: skip
    assert claims["userId"] == "a-b-c-d"
    assert isinstance(claims["iat"], int)
    assert claims["exp"] - claims["iat"] == 86400
    assert claims["iss"] == DEFAULT_ISSUER


def test_token_txt_is_readable_by_its_owner_only(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sign.main([]) == 0
    assert (keys_dir / "token.txt").stat().st_mode & 0o777 == 0o600


def test_writes_token_txt(keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (keys_dir / "token.txt").write_text("an old token\n")
    token = signed(capsys, [])
    # The token and nothing else, no newline: the guide's Node scripts read the file as is.
    assert (keys_dir / "token.txt").read_bytes() == token.encode("ascii")


def test_claims_are_payload_then_iat_exp_iss(
    keys_dir: Path, frozen_clock: int, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = '{"zeta": 1, "alpha": {"b": [1, 2]}, "nbf": 1600000000, "name": "été"}'
    token = signed(capsys, ["--payload", payload])
    claims = segment(token, 1)
    assert list(claims) == ["zeta", "alpha", "nbf", "name", "iat", "exp", "iss"]
    assert claims == {
        "zeta": 1, "alpha": {"b": [1, 2]}, "nbf": 1600000000, "name": "été",
        "iat": NOW, "exp": NOW + 86400, "iss": DEFAULT_ISSUER,
    }  # fmt: skip


def test_issuer_and_kid_from_environment(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A folder holding only the guide's two files: the kid comes from JWT_KID.
    (keys_dir / KEYRING_FILE).unlink(missing_ok=True)
    monkeypatch.setenv("JWT_ISSUER", "https://issuer.example")
    monkeypatch.setenv("JWT_KID", "kid-from-env")
    token = signed(capsys, [])
    assert segment(token, 0)["kid"] == "kid-from-env"
    assert segment(token, 1)["iss"] == "https://issuer.example"


LIFETIMES = [
    ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1 day", 86400), ("3600", 3600),
]  # fmt: skip
LIFETIME_IDS = [text.replace(" ", "_") for text, _ in LIFETIMES]


@pytest.mark.parametrize(("text", "seconds"), LIFETIMES, ids=LIFETIME_IDS)
def test_expires_in_option(
    text: str,
    seconds: int,
    keys_dir: Path,
    frozen_clock: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    claims = segment(signed(capsys, ["--expires-in", text]), 1)
    assert (claims["iat"], claims["exp"]) == (NOW, NOW + seconds)


@pytest.mark.parametrize(("text", "seconds"), LIFETIMES, ids=LIFETIME_IDS)
def test_expires_in_environment(
    text: str,
    seconds: int,
    *,
    keys_dir: Path,
    frozen_clock: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("JWT_EXPIRES_IN", text)
    claims = segment(signed(capsys, []), 1)
    assert (claims["iat"], claims["exp"]) == (NOW, NOW + seconds)


def test_option_overrides_environment(
    keys_dir: Path,
    frozen_clock: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("JWT_EXPIRES_IN", "2h")
    claims = segment(signed(capsys, ["--expires-in", "30s"]), 1)
    assert claims["exp"] == NOW + 30


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--payload", "not json"], ["JSON"]),
        (["--payload", "[1, 2]"], ["object"]),
        (["--payload", '"a string"'], ["object"]),
        (["--payload", "42"], ["object"]),
        (["--payload", "null"], ["object"]),
        (["--payload", '{"iat": 1}'], ["iat"]),
        (["--payload", '{"exp": 1}'], ["exp"]),
        (["--payload", '{"iss": "me"}'], ["iss"]),
        (["--payload", '{"a": 1, "exp": 1, "iss": "x"}'], ["exp", "iss"]),
        (["--payload", '{"aud": "someone"}'], ["aud"]),
        (["--payload", '{"n": NaN}'], ["JSON"]),
        (["--payload", "[" * 100_000], ["JSON"]),
        (["--payload", '{"x": 1e400}'], ["JSON"]),
        (["--payload", '{"x": 1, "x": 2}'], ["JSON"]),
        (["--payload", '{"x": "\\ud800"}'], ["JSON"]),
        (["--expires-in", "soon"], ["soon"]),
        (["--expires-in", "0"], ["0"]),
        (["--expires-in", "-5"], []),
        (["--expires-in", "5 fortnights"], ["fortnight"]),
        (["--expires-in", "9" * 400], []),
        (["--expires-in", "30d"], ["30d", "1 day", "too old"]),
        (["--expires-in", "86401"], ["86401", "1 day", "too old"]),
        (["--expires-in", "25h"], ["25h", "1 day", "too old"]),
        (["--audience", ""], ["audience"]),
        (["--audience", "a\nb"], ["audience"]),
        (["--unknown"], ["--unknown"]),
    ],
    ids=[
        "payload-not-json", "payload-array", "payload-string", "payload-number",
        "payload-null", "payload-iat", "payload-exp", "payload-iss", "payload-two-reserved",
        "payload-aud", "payload-nan", "payload-deeply-nested", "payload-infinite-number",
        "payload-duplicate-member", "payload-lone-surrogate", "expires-word",
        "expires-zero", "expires-negative", "expires-unknown-unit", "expires-huge",
        "expires-30d", "expires-1-day-1s", "expires-25h", "audience-empty", "audience-newline",
        "unknown-option",
    ],
)  # fmt: skip
def test_usage_errors(
    argv: list[str],
    needles: list[str],
    keys_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        code = sign.main(argv)
    except SystemExit as e:
        code = e.code  # type: ignore[assignment]
    assert code == 2
    captured = capsys.readouterr()
    line = error_line(captured.err)
    for needle in needles:
        assert needle in line
    assert captured.out == ""
    assert not (keys_dir / "token.txt").exists()


@pytest.mark.parametrize(
    "value", ["soon", "0", "1 fortnight", "9" * 400, "30d", "86401"],
    ids=["word", "zero", "unknown-unit", "huge", "30d", "1-day-1s"],
)  # fmt: skip
def test_bad_lifetime_in_environment(
    value: str,
    keys_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("JWT_EXPIRES_IN", value)
    assert sign.main([]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("sign: JWT_EXPIRES_IN")
    assert not (keys_dir / "token.txt").exists()


def test_missing_private_key(empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refusal(sign.main, [], 2, capsys)
    assert line.startswith("sign: ")
    assert str(empty_keys_dir / ".private.key") in line
    assert line.endswith("run gen.py first")


def test_wrong_passphrase(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JWT_PASSPHRASE", "wrong-phrase-123")
    assert sign.main([]) == 1
    captured = capsys.readouterr()
    line = error_line(captured.err)
    assert line.startswith("sign: ")
    assert "passphrase" in line
    assert "wrong-phrase-123" not in captured.err + captured.out
    assert captured.out == ""
    assert not (keys_dir / "token.txt").exists()


def test_private_key_file_is_not_a_key(keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (keys_dir / ".private.key").write_text("this is not a PEM file\n")
    assert sign.main([]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("sign: ")
    assert ".private.key" in line
    assert not (keys_dir / "token.txt").exists()


# --- audience ------------------------------------------------------------------------------

AUD = "https://api.example"


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [({"JWT_AUDIENCE": AUD}, [], AUD), ({}, ["--audience", AUD], AUD),
     ({"JWT_AUDIENCE": "from-env"}, ["--audience", AUD], AUD)],
    ids=["environment", "option", "option-overrides-environment"],
)  # fmt: skip
def test_audience_is_set_after_iss(
    env: dict[str, str], argv: list[str], expected: str, *, keys_dir: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    token = signed(capsys, argv)
    claims = segment(token, 1)
    assert list(claims) == ["userId", "iat", "exp", "iss", "aud"]
    assert claims["aud"] == expected
    # ...and verify.py, with the same configuration, accepts it.
    monkeypatch.setenv("JWT_AUDIENCE", expected)
    assert verify.main([]) == 0
    assert capsys.readouterr().err == ""


def test_max_lifetime_is_accepted(
    keys_dir: Path, frozen_clock: int, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("JWT_EXPIRES_IN", "24h")
    claims = segment(signed(capsys, []), 1)
    assert claims["exp"] - claims["iat"] == 86400


def test_lifetime_over_max_age_in_environment_says_why(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JWT_EXPIRES_IN", "30d")
    assert sign.main([]) == 2
    line = error_line(capsys.readouterr().err)
    assert line == (
        "sign: JWT_EXPIRES_IN (2592000s) is longer than the maximum token age of 1 day: every "
        "verifier would refuse the token as too old before it expires"
    )


# --- Ctrl-C --------------------------------------------------------------------------------


