"""jwt_guide.config: defaults, environment overrides, validation; a bad value stops every
script cleanly."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import gen
import jwks_server
import make_request
import protected_server
import sign
import verify
from jwt_guide.config import (
    DEFAULT_ISSUER,
    DEFAULT_KID,
    DEFAULT_PASSPHRASE,
    Config,
    load_config,
    parse_duration,
)
from jwt_guide.errors import UsageError
from tests.helpers import ROOT, assert_clean_error, error_line, script_env

HUGE = "9" * 400  # a number of seconds too large for a float

MainFunction = Callable[[Sequence[str] | None], int]
MAINS: dict[str, MainFunction] = {
    "gen": gen.main,
    "sign": sign.main,
    "verify": verify.main,
    "jwks_server": jwks_server.main,
    "protected_server": protected_server.main,
    "make_request": make_request.main,
}


# --- defaults and overrides ----------------------------------------------------------------


def test_defaults_are_the_guides() -> None:
    config = load_config({})
    assert config.passphrase == DEFAULT_PASSPHRASE == "some-secret-phrase"
    assert config.kid == DEFAULT_KID == "my-key-id"
    assert config.issuer == DEFAULT_ISSUER == "my-issuer-name"
    # Made absolute at once, so that every message names the folder unambiguously.
    assert config.keys_dir == Path.cwd() / "keys"
    assert config.keys_dir.is_absolute()
    assert config.audience is None
    assert config.expires_in == 86400
    assert config.jwks_port == 3344
    assert config.protected_port == 2233
    assert config.bind_host == "127.0.0.1"
    assert config.jwks_uri == "http://localhost:3344/keys"
    assert config.protected_url == "http://localhost:2233/with-auth"
    assert config.jwks_requests_per_minute == 5
    assert config.jwks_cache_seconds == 600
    assert config.token_cache_size >= 0
    assert config.server_workers == (os.cpu_count() or 1)
    assert config.alg == "RS256"


def test_guide_file_names_in_the_keys_folder(tmp_path: Path) -> None:
    config = load_config({"JWT_KEYS_DIR": str(tmp_path)})
    assert config.private_key_path == tmp_path / ".private.key"
    assert config.public_key_path == tmp_path / ".public.key.pem"
    assert config.token_path == tmp_path / "token.txt"


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("JWT_PASSPHRASE", "another phrase", "passphrase", "another phrase"),
        ("JWT_KID", "key-2", "kid", "key-2"),
        ("JWT_ISSUER", "https://issuer.example", "issuer", "https://issuer.example"),
        ("JWT_KEYS_DIR", "/srv/keys", "keys_dir", Path("/srv/keys")),
        ("JWT_EXPIRES_IN", "90", "expires_in", 90),
        ("JWT_EXPIRES_IN", "15m", "expires_in", 900),
        ("JWKS_PORT", "4000", "jwks_port", 4000),
        ("PROTECTED_PORT", "5000", "protected_port", 5000),
        ("JWT_BIND_HOST", "0.0.0.0", "bind_host", "0.0.0.0"),  # noqa: S104
        ("JWKS_URI", "http://127.0.0.1:9/jwks.json", "jwks_uri", "http://127.0.0.1:9/jwks.json"),
        ("PROTECTED_URL", "https://api.example/x", "protected_url", "https://api.example/x"),
        ("JWKS_REQUESTS_PER_MINUTE", "10", "jwks_requests_per_minute", 10),
        ("JWKS_CACHE_SECONDS", "60", "jwks_cache_seconds", 60),
        ("TOKEN_CACHE_SIZE", "0", "token_cache_size", 0),
        ("TOKEN_CACHE_SIZE", "50", "token_cache_size", 50),
        ("SERVER_WORKERS", "3", "server_workers", 3),
        ("JWT_AUDIENCE", "https://api.example", "audience", "https://api.example"),
        ("JWT_ALG", "PS256", "alg", "PS256"),
        ("JWT_ALG", "ES256", "alg", "ES256"),
        ("JWT_ALG", "EdDSA", "alg", "EdDSA"),
        ("JWT_PUBLIC_URL", "https://keys.example/", "public_url", "https://keys.example"),
        ("GATEWAY_PORT", "9090", "gateway_port", 9090),
        ("GATEWAY_INSTANCES", "3", "gateway_instances", 3),
    ],
    ids=lambda v: str(v) if not isinstance(v, Path) else "path",
)
def test_every_value_has_an_environment_variable(
    variable: str, value: str, field: str, expected: Any
) -> None:
    config = load_config({variable: value})
    assert getattr(config, field) == expected
    unchanged = load_config({})
    derived = {"jwks_uri", "protected_url", "public_url", "jwks_uri_set"}  # follow ports, JWKS_URI
    others = [f.name for f in dataclasses.fields(Config) if f.name not in {field, *derived}]
    assert {n: getattr(config, n) for n in others} == {n: getattr(unchanged, n) for n in others}


def test_urls_follow_the_ports_unless_set() -> None:
    config = load_config({"JWKS_PORT": "4001", "PROTECTED_PORT": "4002"})
    assert config.jwks_uri == "http://localhost:4001/keys"
    assert config.protected_url == "http://localhost:4002/with-auth"
    assert config.public_url == "http://localhost:4001"
    assert not config.jwks_uri_set
    config = load_config({"JWKS_PORT": "4001", "JWKS_URI": "http://127.0.0.1:9/keys"})
    assert config.jwks_uri == "http://127.0.0.1:9/keys"
    assert config.jwks_uri_set


def test_gateway_defaults() -> None:
    config = load_config({})
    assert (config.gateway_port, config.gateway_instances) == (8080, 2)
    assert config.public_url == "http://localhost:3344"


def test_load_config_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_ISSUER", "from-the-environment")
    assert load_config().issuer == "from-the-environment"


def test_config_is_immutable() -> None:
    config = load_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.issuer = "changed"  # type: ignore[misc]


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600),
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1 day", 86400),
        ("2 days", 172800),
        ("1 DAY", 86400),
        (" 2h ", 7200),
        ("1.5h", 5400),
        ("1w", 604800),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else str(v),
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "soon", "1 fortnight", "-5", "0", "0s", "0.2s", "1h30", "h", "1 d d", HUGE + "d",
     "3651d"],
    ids=["empty", "word", "unknown-unit", "negative", "zero", "zero-s", "under-1s",
         "two-numbers", "unit-only", "two-units", "huge", "over-10-years"],
)  # fmt: skip
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|second|large|long"):
        parse_duration(text)


# --- bad values ----------------------------------------------------------------------------

BAD_VALUES = [
    ("JWKS_PORT", "abc"),
    ("JWKS_PORT", "0"),
    ("PROTECTED_PORT", "70000"),
    ("PROTECTED_PORT", "22.5"),
    ("JWT_EXPIRES_IN", "soon"),
    ("JWT_EXPIRES_IN", "0"),
    ("JWT_EXPIRES_IN", HUGE),
    ("JWKS_REQUESTS_PER_MINUTE", "0"),
    ("JWKS_CACHE_SECONDS", "-1"),
    ("TOKEN_CACHE_SIZE", "many"),
    ("SERVER_WORKERS", "0"),
    ("JWKS_URI", "not a url"),
    ("PROTECTED_URL", "ftp://example/with-auth"),
    ("JWT_KID", ""),
    ("JWT_ISSUER", "  "),
    ("JWT_KEYS_DIR", ""),
    ("JWT_BIND_HOST", ""),
    ("JWT_PASSPHRASE", ""),
    ("JWT_AUDIENCE", ""),
    ("JWT_AUDIENCE", "api\nx"),
    ("JWT_ALG", "HS256"),
    ("JWT_ALG", "none"),
    ("JWT_ALG", "es256"),
    ("JWT_ALG", "ES256 "),
    ("JWT_ALG", ""),
    ("JWT_ALG", "x" * 1000),
    ("JWT_PUBLIC_URL", "ftp://keys.example"),
    ("JWT_PUBLIC_URL", "keys.example"),
    ("GATEWAY_PORT", "http"),
    ("GATEWAY_PORT", "70000"),
    ("GATEWAY_INSTANCES", "0"),
    ("GATEWAY_INSTANCES", "65"),
]
BAD_IDS = [f"{name}={value[:8]!r}" for name, value in BAD_VALUES]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES, ids=BAD_IDS)
def test_bad_value_is_a_usage_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(UsageError) as raised:
        load_config({variable: value})
    message = str(raised.value)
    assert variable in message
    assert "\n" not in message
    assert raised.value.exit_code == 2


@pytest.mark.parametrize("script", list(MAINS), ids=list(MAINS))
@pytest.mark.parametrize(
    ("variable", "value"),
    [("JWKS_PORT", "abc"), ("JWT_EXPIRES_IN", "soon"), ("JWT_ALG", "HS256")],
    ids=["port-not-a-number", "lifetime-unparsable", "unknown-alg"],
)
def test_bad_value_stops_every_script_with_one_line(
    script: str,
    variable: str,
    value: str,
    *,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server started despite a bad setting")

    monkeypatch.setattr(jwks_server, "run_dev_server", no_server)
    monkeypatch.setattr(protected_server, "run_dev_server", no_server)
    monkeypatch.setenv("JWT_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv(variable, value)
    assert MAINS[script]([]) == 2
    captured = capsys.readouterr()
    line = error_line(captured.err)
    assert line.startswith(f"{script}: ")
    assert variable in line
    assert_clean_error(captured.out)
    assert not (tmp_path / "keys").exists()


# --- --help --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["JWT_KID", "JWT_ISSUER"])
@pytest.mark.parametrize(
    "value", ["bad\x01id", "bad\nid", "\udcff"], ids=["control", "newline", "not-utf8"]
)
def test_kid_and_issuer_must_be_printable_text(name: str, value: str) -> None:
    with pytest.raises(UsageError, match=name):
        load_config({name: value})


def test_relative_keys_folder_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config({"JWT_KEYS_DIR": "some/keys"})
    assert config.keys_dir == tmp_path / "some" / "keys"
    assert config.private_key_path == tmp_path / "some" / "keys" / ".private.key"


# (script, argv, the file or folder its error names, relative to the keys folder's parent)
MISSING_FILES = [
    ("sign", [], "keys/.private.key"),
    ("verify", [], "keys/token.txt"),
    ("make_request", [], "keys/token.txt"),
    ("gen", ["--list"], "keys"),
]


@pytest.mark.parametrize(
    ("script", "argv", "named"), MISSING_FILES, ids=[m[0] for m in MISSING_FILES]
)
def test_errors_name_files_by_absolute_path(
    script: str, argv: list[str], named: str, *, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JWT_KEYS_DIR", "keys")
    assert MAINS[script](argv) in (1, 2)
    line = error_line(capsys.readouterr().err)
    assert f" {tmp_path / named}" in line, line


NOT_UTF8 = "my-\udcffsecret"  # what os.environ holds for the bytes b"my-\xffsecret"


def test_passphrase_that_is_not_utf8_is_refused_without_showing_it() -> None:
    with pytest.raises(UsageError) as raised:
        load_config({"JWT_PASSPHRASE": NOT_UTF8})
    message = str(raised.value)
    assert "JWT_PASSPHRASE" in message
    assert raised.value.exit_code == 2
    for part in ("my-", "secret", "\udcff", "xff", "0xff", "position"):
        assert part not in message


@pytest.mark.parametrize("script", ["gen.py", "sign.py", "verify.py"])
def test_passphrase_that_is_not_utf8_stops_scripts_in_one_line(script: str, keys_dir: Path) -> None:
    env = {
        os.fsencode(k): os.fsencode(v) for k, v in script_env(JWT_KEYS_DIR=str(keys_dir)).items()
    }
    env[b"JWT_PASSPHRASE"] = b"my-\xffsecret"
    argv = ["--force", "--bits", "2048"] if script == "gen.py" else []
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *argv],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert "JWT_PASSPHRASE" in line
    for part in ("my-", "secret", "xff", "position"):
        assert part not in result.stderr + result.stdout
