"""verify.py, step 3: every reason a token is refused, the token and key sources, --inspect."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

import gen
import sign
import verify
from jwt_guide import tokens as tokens_module
from jwt_guide.algorithms import ALGORITHMS, PrivateKey, public_pem
from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_KID, DEFAULT_PASSPHRASE
from jwt_guide.keystore import KEYRING_FILE, NEXT_PRIVATE_KEY_FILE, load_private_key
from tests.helpers import ALGS, TokenFactory, alg_args, assert_clean_error, b64, error_line

HOUR = 3600
DAY = 86400
AUD = "https://api.example"
ENV_AUD = {"JWT_AUDIENCE": AUD}


def assert_reason(line: str, reason: str) -> None:
    """``verify: <reason>``, optionally followed by ``: <detail>``."""
    assert line == f"verify: {reason}" or line.startswith(f"verify: {reason}: "), line


def raw_token(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    key: RSAPrivateKey | None = None,
) -> str:
    """A compact JWS built by hand (any header, any payload bytes); unsigned if no key."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(h)}.{b64(p)}"
    signature = (
        key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()) if key else b""
    )
    return f"{signing_input}.{b64(signature)}"


@dataclass
class Tokens:
    """What a case needs to build its token."""

    make: TokenFactory
    key: RSAPrivateKey
    other: RSAPrivateKey
    now: int

    def claims(self, **extra: Any) -> dict[str, Any]:
        """Valid claims, with ``extra`` added or replaced."""
        return {"userId": "a-b-c-d", "iat": self.now, "exp": self.now + HOUR,
                "iss": DEFAULT_ISSUER, **extra}  # fmt: skip

    def header(self, **extra: Any) -> dict[str, Any]:
        return {"alg": "RS256", "typ": "JWT", "kid": DEFAULT_KID, **extra}

    def public_jwk(self, key: RSAPrivateKey) -> dict[str, Any]:
        return json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))  # type: ignore[no-any-return]


@pytest.fixture
def tokens(
    make_token: TokenFactory, private_key: RSAPrivateKey, other_private_key: RSAPrivateKey
) -> Tokens:
    return Tokens(make_token, private_key, other_private_key, int(time.time()))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run verify.main; return (exit code, stdout, stderr)."""
    try:
        code = verify.main(argv)
    except SystemExit as e:
        code = e.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def decoded(out: str) -> dict[str, Any]:
    """The claims printed by a successful verification."""
    lines = out.splitlines()
    assert len(lines) == 1
    prefix = "Decoded token data "
    assert lines[0].startswith(prefix)
    value = json.loads(lines[0].removeprefix(prefix))
    assert isinstance(value, dict)
    return value


def hs256_with_public_key(t: Tokens) -> str:
    """The classic key confusion: HMAC keyed with the RSA public key's PEM."""
    secret = t.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header, claims = json.dumps(t.header(alg="HS256")), json.dumps(t.claims())
    signing_input = f"{b64(header.encode())}.{b64(claims.encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def non_canonical_signature(t: Tokens) -> str:
    """A valid token whose last signature character has a non-zero unused bit."""
    token = t.make()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(token.split(".")[2]) % 4 in (2, 3)
    last = alphabet[alphabet.index(token[-1]) ^ 1]
    return token[:-1] + last


def swapped_signature(t: Tokens) -> str:
    """The payload of one valid token with the signature of another."""
    first, second = t.make(userId="alice"), t.make(userId="mallory")
    return first.rsplit(".", 1)[0] + "." + second.rsplit(".", 1)[1]


def tampered_payload(t: Tokens) -> str:
    header, _, signature = t.make().split(".")
    return f"{header}.{b64(json.dumps(t.claims(userId='admin')).encode())}.{signature}"


def replace_segment(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


Build = Callable[[Tokens], str]

# (id, token, extra argv, extra environment, reason)
REFUSALS: list[tuple[str, Build, list[str], dict[str, str], str]] = [
    ("expired", lambda t: t.make(now=t.now - 2 * HOUR, exp=t.now - HOUR), [], {}, "expired"),
    ("expired-beyond-leeway", lambda t: t.make(now=t.now - 2 * HOUR, exp=t.now - HOUR),
     ["--leeway", "60"], {}, "expired"),
    ("signed-by-other-key", lambda t: t.make(key=t.other), [], {}, "invalid signature"),
    ("tampered-payload", tampered_payload, [], {}, "invalid signature"),
    ("swapped-signature", swapped_signature, [], {}, "invalid signature"),
    ("empty-signature", lambda t: t.make().rsplit(".", 1)[0] + ".", [], {},
     "invalid signature"),
    ("embedded-jwk-ignored", lambda t: t.make(key=t.other, header={"jwk": t.public_jwk(t.other)}),
     [], {}, "invalid signature"),
    ("jku-x5u-ignored", lambda t: t.make(key=t.other, header={
        "jku": "http://127.0.0.1:9/jwks.json", "x5u": "http://127.0.0.1:9/cert.pem"}),
     [], {}, "invalid signature"),
    ("x5c-ignored", lambda t: t.make(key=t.other, header={"x5c": ["MIIB"]}), [], {},
     "invalid signature"),
    ("issuer-other", lambda t: t.make(iss="someone-else"), [], {}, "issuer"),
    ("issuer-prefix", lambda t: t.make(iss="my-issuer"), [], {}, "issuer"),
    ("issuer-superstring", lambda t: t.make(iss="my-issuer-name-2"), [], {}, "issuer"),
    ("issuer-case", lambda t: t.make(iss="MY-ISSUER-NAME"), [], {}, "issuer"),
    ("issuer-space", lambda t: t.make(iss="my-issuer-name "), [], {}, "issuer"),
    ("issuer-list", lambda t: raw_token(t.header(), t.claims(iss=[DEFAULT_ISSUER]), t.key), [],
     {}, "issuer"),
    ("issuer-configured", lambda t: t.make(), [], {"JWT_ISSUER": "another-issuer"}, "issuer"),
    ("alg-none", lambda t: raw_token(t.header(alg="none"), t.claims()), [], {}, "algorithm"),
    ("alg-none-signed", lambda t: raw_token(t.header(alg="none"), t.claims(), t.key), [], {},
     "algorithm"),
    ("alg-hs256-key-confusion", hs256_with_public_key, [], {}, "algorithm"),
    ("alg-rs512", lambda t: jwt.encode(t.claims(), t.key, algorithm="RS512"), [], {},
     "algorithm"),
    ("alg-ps256", lambda t: jwt.encode(t.claims(), t.key, algorithm="PS256",
                                       headers={"kid": DEFAULT_KID}), [], {}, "algorithm"),
    ("alg-lowercase", lambda t: raw_token(t.header(alg="rs256"), t.claims(), t.key), [], {},
     "algorithm"),
    ("alg-missing", lambda t: raw_token({"typ": "JWT"}, t.claims(), t.key), [], {},
     "algorithm"),
    ("alg-list", lambda t: raw_token(t.header(alg=["RS256"]), t.claims(), t.key), [], {},
     "algorithm"),
    ("malformed-empty", lambda t: "", [], {}, "malformed"),
    ("malformed-one-segment", lambda t: "abc", [], {}, "malformed"),
    ("malformed-two-segments", lambda t: t.make().rsplit(".", 1)[0], [], {}, "malformed"),
    ("malformed-four-segments", lambda t: t.make() + ".e30", [], {}, "malformed"),
    ("malformed-header-base64", lambda t: replace_segment(t.make(), 0, "e!!!"), [], {},
     "malformed"),
    ("malformed-payload-base64", lambda t: replace_segment(t.make(), 1, "eyJ+/"), [], {},
     "malformed"),
    ("malformed-signature-base64", lambda t: t.make() + "*", [], {}, "malformed"),
    ("malformed-padding", lambda t: replace_segment(
        t.make(), 0, b64(json.dumps(t.header()).encode()) + "=" * 2), [], {}, "malformed"),
    ("malformed-non-canonical", non_canonical_signature, [], {}, "malformed"),
    ("malformed-space-inside", lambda t: t.make().replace(".", ". ", 1), [], {}, "malformed"),
    ("malformed-header-not-json", lambda t: raw_token(b"{alg: RS256}", t.claims(), t.key),
     [], {}, "malformed"),
    ("malformed-header-array", lambda t: raw_token(b'["RS256"]', t.claims(), t.key), [], {},
     "malformed"),
    ("malformed-header-duplicate", lambda t: raw_token(
        b'{"alg":"RS256","alg":"RS256","typ":"JWT"}', t.claims(), t.key), [], {}, "malformed"),
    ("malformed-payload-not-json", lambda t: raw_token(t.header(), b"not json", t.key), [], {},
     "malformed"),
    ("malformed-payload-array", lambda t: raw_token(t.header(), b"[1]", t.key), [], {},
     "malformed"),
    ("malformed-exp-string", lambda t: t.make(exp=str(t.now + HOUR)), [], {}, "malformed"),
    ("malformed-iat-boolean", lambda t: t.make(iat=True), [], {}, "malformed"),
    ("malformed-too-large", lambda t: t.make(padding="x" * 9000), [], {}, "malformed"),
    ("not-yet-valid-nbf", lambda t: t.make(nbf=t.now + HOUR), [], {}, "not yet valid"),
    ("not-yet-valid-iat", lambda t: t.make(iat=t.now + HOUR, exp=t.now + 2 * HOUR), [], {},
     "not yet valid"),
    ("too-old-default-1d", lambda t: t.make(now=t.now - DAY - HOUR, exp=t.now + HOUR), [], {},
     "too old"),
    ("too-old-max-age-seconds", lambda t: t.make(now=t.now - 2 * HOUR, exp=t.now + HOUR),
     ["--max-age", "3600"], {}, "too old"),
    ("too-old-max-age-1h", lambda t: t.make(now=t.now - 2 * HOUR, exp=t.now + HOUR),
     ["--max-age", "1h"], {}, "too old"),
    ("missing-exp", lambda t: t.make(drop=("exp",)), [], {}, "missing claim exp"),
    ("missing-iat", lambda t: t.make(drop=("iat",)), [], {}, "missing claim iat"),
    ("missing-iss", lambda t: t.make(drop=("iss",)), [], {}, "missing claim iss"),
    ("crit", lambda t: raw_token(t.header(crit=["exp"], exp=t.now + HOUR), t.claims(), t.key),
     [], {}, "unsupported critical header"),
    ("crit-empty", lambda t: raw_token(t.header(crit=[]), t.claims(), t.key), [], {},
     "unsupported critical header"),
    # No audience configured: a token carrying aud is meant for someone else (RFC 7519 4.1.3).
    ("aud-string-none-configured", lambda t: t.make(aud=AUD), [], {}, "audience"),
    ("aud-array-none-configured", lambda t: t.make(aud=[AUD]), [], {}, "audience"),
    ("aud-empty-array-none-configured", lambda t: t.make(aud=[]), [], {}, "audience"),
    ("aud-null-none-configured", lambda t: t.make(aud=None), [], {}, "audience"),
    # An audience configured: aud must be it, or an array of strings holding it.
    ("aud-missing", lambda t: t.make(), [], ENV_AUD, "audience"),
    ("aud-missing-option", lambda t: t.make(), ["--audience", AUD], {}, "audience"),
    ("aud-wrong", lambda t: t.make(aud="https://other.example"), [], ENV_AUD, "audience"),
    ("aud-prefix", lambda t: t.make(aud=AUD[:-1]), [], ENV_AUD, "audience"),
    ("aud-superstring", lambda t: t.make(aud=AUD + "/v2"), [], ENV_AUD, "audience"),
    ("aud-case", lambda t: t.make(aud=AUD.upper()), [], ENV_AUD, "audience"),
    ("aud-array-without-it", lambda t: t.make(aud=["https://other.example"]), [], ENV_AUD,
     "audience"),
    ("aud-empty-array", lambda t: t.make(aud=[]), [], ENV_AUD, "audience"),
    ("aud-array-non-string-member", lambda t: t.make(aud=[AUD, 1]), [], ENV_AUD, "audience"),
    ("aud-array-nested", lambda t: t.make(aud=[[AUD]]), [], ENV_AUD, "audience"),
    ("aud-array-null", lambda t: t.make(aud=[None]), [], ENV_AUD, "audience"),
    ("aud-number", lambda t: t.make(aud=1), [], ENV_AUD, "audience"),
    ("aud-object", lambda t: t.make(aud={"aud": AUD}), [], ENV_AUD, "audience"),
    ("aud-null", lambda t: t.make(aud=None), [], ENV_AUD, "audience"),
    ("aud-true", lambda t: t.make(aud=True), [], ENV_AUD, "audience"),
    ("aud-option-overrides-env", lambda t: t.make(aud=AUD),
     ["--audience", "https://other.example"], ENV_AUD, "audience"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "argv", "env", "reason"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_refusals(
    build: Build,
    argv: list[str],
    env: dict[str, str],
    reason: str,
    *,
    tokens: Tokens,
    keys_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (keys_dir / "token.txt").write_text(build(tokens) + "\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(argv, capsys)
    assert code == 1
    assert_reason(error_line(err), reason)
    assert out == ""


@pytest.mark.parametrize(
    "build",
    [lambda t: raw_token(t.header(alg="none"), t.claims()), hs256_with_public_key,
     lambda t: jwt.encode(t.claims(), t.key, algorithm="RS384")],
    ids=["none", "hs256", "rs384"],
)  # fmt: skip
def test_algorithm_is_refused_before_the_key_is_used(
    build: Build,
    tokens: Tokens,
    keys_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_signature_check(*args: object) -> bool:
        raise AssertionError("the signature was checked before the algorithm")

    monkeypatch.setattr(tokens_module, "signature_is_valid", no_signature_check)
    code, _, err = run(["--token", build(tokens)], capsys)
    assert code == 1
    assert_reason(error_line(err), "algorithm")


@pytest.mark.parametrize("claim", ["nbf", "exp", "iat"])
def test_huge_integer_date_is_refused_cleanly(
    claim: str, tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = raw_token(tokens.header(), tokens.claims(**{claim: 10**400}), tokens.key)
    code, _, err = run(["--token", token], capsys)
    assert code == 1
    line = error_line(err)
    assert line.startswith(("verify: malformed", "verify: not yet valid", "verify: expired")), line


# --- success -------------------------------------------------------------------------------

# (id, token, extra argv, extra environment)
ACCEPTED: list[tuple[str, Build, list[str], dict[str, str]]] = [
    ("default", lambda t: t.make(), [], {}),
    ("nbf-passed", lambda t: t.make(nbf=t.now - 60), [], {}),
    ("extra-claims", lambda t: t.make(roles=["a", "b"], nested={"x": 1}), [], {}),
    ("leeway-on-exp", lambda t: t.make(now=t.now - HOUR, exp=t.now - 30),
     ["--leeway", "3600"], {}),
    ("leeway-on-nbf", lambda t: t.make(nbf=t.now + 30), ["--leeway", "1h"], {}),
    ("leeway-on-iat", lambda t: t.make(iat=t.now + 30), ["--leeway", "3600"], {}),
    ("max-age-longer", lambda t: t.make(now=t.now - DAY - HOUR, exp=t.now + HOUR),
     ["--max-age", "2d"], {}),
    ("max-age-default-1d", lambda t: t.make(now=t.now - DAY + HOUR, exp=t.now + HOUR), [], {}),
    ("issuer-configured", lambda t: t.make(iss="https://issuer.example"), [],
     {"JWT_ISSUER": "https://issuer.example"}),
    ("aud-string", lambda t: t.make(aud=AUD), [], ENV_AUD),
    ("aud-array-holding-it", lambda t: t.make(aud=["https://other.example", AUD]), [], ENV_AUD),
    ("aud-option", lambda t: t.make(aud=[AUD]), ["--audience", AUD], {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "argv", "env"), [case[1:] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED]
)
def test_accepted(
    build: Build,
    argv: list[str],
    env: dict[str, str],
    *,
    tokens: Tokens,
    keys_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = build(tokens)
    (keys_dir / "token.txt").write_text(token + "\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert decoded(out) == json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


@pytest.mark.parametrize(
    ("source", "text"),
    [("token.txt", "{t}\n"), ("token.txt", "\n\t  {t}  \r\n\n"), ("--token", "{t}"),
     ("--token", "  {t}\n"), ("--token-file", "{t}"), ("--token-file", "\n {t} \n")],
    ids=["token.txt", "token.txt-whitespace", "--token", "--token-whitespace", "--token-file",
         "--token-file-whitespace"],
)  # fmt: skip
def test_token_sources(
    source: str,
    text: str,
    *,
    tokens: Tokens,
    keys_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = tokens.make(userId=source)
    content = text.format(t=token)
    # A stale token.txt must lose against an explicit source.
    (keys_dir / "token.txt").write_text(tokens.make(userId="stale") + "\n")
    if source == "token.txt":
        (keys_dir / "token.txt").write_text(content)
        argv: list[str] = []
    elif source == "--token":
        argv = ["--token", content]
    else:
        path = tmp_path / "elsewhere" / "my token.txt"
        path.parent.mkdir()
        path.write_text(content)
        argv = ["--token-file", str(path)]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert decoded(out)["userId"] == source


def test_public_key_option(
    tokens: Tokens, keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other_pem = tmp_path / "other.pem"
    other_pem.write_bytes(
        tokens.other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    signed_by_other = tokens.make(key=tokens.other)
    code, out, err = run(["--token", signed_by_other, "--public-key", str(other_pem)], capsys)
    assert (code, err) == (0, "")
    assert decoded(out)["userId"] == "a-b-c-d"
    # ...and the option really replaces the default key.
    code, out, err = run(["--token", tokens.make(), "--public-key", str(other_pem)], capsys)
    assert code == 1
    assert_reason(error_line(err), "invalid signature")


# --- input errors --------------------------------------------------------------------------


def test_missing_token(empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([], capsys)
    assert code == 2
    line = error_line(err)
    assert line.startswith("verify: ")
    assert str(empty_keys_dir / "token.txt") in line
    assert line.endswith("run sign.py first")
    assert out == ""


def test_missing_token_file(
    keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.txt"
    code, _, err = run(["--token-file", str(missing)], capsys)
    assert code == 2
    assert str(missing) in error_line(err)


def test_missing_public_key(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (keys_dir / ".public.key.pem").unlink()
    code, _, err = run(["--token", tokens.make()], capsys)
    assert code == 2
    line = error_line(err)
    assert str(keys_dir / ".public.key.pem") in line
    assert "run gen.py first" in line


def test_missing_public_key_option(
    tokens: Tokens, keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pem"
    code, _, err = run(["--token", tokens.make(), "--public-key", str(missing)], capsys)
    assert code == 2
    assert str(missing) in error_line(err)


@pytest.mark.parametrize("kind", ["garbage", "ec-p384-key", "private-key"])
def test_public_key_that_is_not_a_supported_public_key(
    kind: str, tokens: Tokens, keys_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = tmp_path / "key.pem"
    if kind == "garbage":
        path.write_text("not a key\n")
    elif kind == "ec-key":
        path.write_bytes(
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    else:
        path.write_bytes((keys_dir / ".private.key").read_bytes())
    code, out, err = run(["--token", tokens.make(), "--public-key", str(path)], capsys)
    assert code == 1
    line = error_line(err)
    assert line.startswith("verify: ")
    assert str(path) in line
    assert out == ""


@pytest.mark.parametrize(
    "argv",
    [["--token", "x", "--token-file", "y"], ["--max-age", "soon"], ["--leeway", "abc"],
     ["--max-age", "9" * 400 + "d"], ["--bogus"]],
    ids=["token-and-token-file", "max-age-word", "leeway-word", "max-age-huge", "unknown-option"],
)  # fmt: skip
def test_usage_errors(argv: list[str], keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    error_line(err)
    assert out == ""


# --- --inspect -----------------------------------------------------------------------------


def inspected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code, out, err = run(["--inspect", *argv], capsys)
    assert_clean_error(out + err)
    assert err == ""
    return code, out.splitlines()


def line_starting(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.lstrip().startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


def test_inspect_valid_token(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tokens.make(nbf=tokens.now - 60)
    code, lines = inspected(["--token", token], capsys)
    assert code == 0
    assert "NOT VERIFIED" in lines[0].upper()
    header = json.loads(line_starting(lines, "header:").split(":", 1)[1])
    assert header == {"alg": "RS256", "kid": DEFAULT_KID, "typ": "JWT"}
    claims = json.loads(line_starting(lines, "claims:").split(":", 1)[1])
    assert claims["userId"] == "a-b-c-d"
    for claim in ("iat", "exp", "nbf"):
        assert "UTC" in line_starting(lines, f"{claim}:")
    assert "in " in line_starting(lines, "exp:")  # time left
    assert line_starting(lines, "signature:").startswith("signature: valid")
    assert lines[-1] == "checks: all pass"


def test_inspect_lists_every_failing_check(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tokens.make(
        key=tokens.other, iss="someone-else", now=tokens.now - 2 * HOUR, exp=tokens.now - HOUR
    )
    code, lines = inspected(["--token", token], capsys)
    assert code == 1
    assert "INVALID" in line_starting(lines, "signature:")
    assert "ago" in line_starting(lines, "exp:")
    failing = lines[-1]
    assert failing.startswith("checks failing")
    for reason in ("invalid signature", "issuer", "expired"):
        assert reason in failing


@pytest.mark.parametrize(
    ("build", "reason"),
    [(lambda t: raw_token(t.header(alg="none"), t.claims()), "algorithm"),
     (lambda t: "abc", "malformed"),
     (lambda t: replace_segment(t.make(), 1, "eyJ+/"), "malformed"),
     (lambda t: t.make(drop=("iss",)), "missing claim iss")],
    ids=["alg-none", "one-segment", "bad-payload", "missing-iss"],
)  # fmt: skip
def test_inspect_refused_tokens(
    build: Build, reason: str, tokens: Tokens, keys_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    code, lines = inspected(["--token", build(tokens)], capsys)
    assert code == 1
    assert "NOT VERIFIED" in lines[0].upper()
    assert lines[-1].startswith("checks failing")
    assert reason in lines[-1]


def test_inspect_shows_header_and_claims_of_an_unverifiable_token(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = raw_token(tokens.header(alg="HS256"), tokens.claims(userId="shown"))
    code, lines = inspected(["--token", token], capsys)
    assert code == 1
    assert '"HS256"' in line_starting(lines, "header:")
    assert '"shown"' in line_starting(lines, "claims:")


def test_inspect_huge_dates_without_traceback(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = raw_token(tokens.header(), tokens.claims(iat=10**400, exp=-(10**400)))
    code, lines = inspected(["--token", token], capsys)
    assert code == 1
    assert lines[-1].startswith("checks failing")


def test_inspect_missing_token(empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["--inspect"], capsys)
    assert code == 2
    assert "run sign.py first" in error_line(err)
    assert out == ""


# --- the key, chosen by kid among the folder's published keys ------------------------------

BITS = ["--bits", "2048"]  # the key choice does not depend on the key size; keep tests fast


def test_retired_and_next_keys_verify_after_rotation(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed_by_first = tokens.make()  # kid my-key-id, the session key
    assert gen.main(["--next", "--kid", "k2", *BITS]) == 0
    next_key = load_private_key(keys_dir / NEXT_PRIVATE_KEY_FILE, DEFAULT_PASSPHRASE)
    signed_by_next = tokens.make(key=next_key, header={"kid": "k2"}, userId="next")
    assert gen.main(["--promote"]) == 0  # my-key-id is now retired, k2 current
    assert sign.main(["--payload", '{"userId": "current"}']) == 0
    capsys.readouterr()
    for token, user in ((signed_by_first, "a-b-c-d"), (signed_by_next, "next"), (None, "current")):
        code, out, err = run([] if token is None else ["--token", token], capsys)
        assert (code, err) == (0, "")
        assert decoded(out)["userId"] == user
    # The right kid with another key's signature is still refused.
    forged = tokens.make(key=tokens.other, header={"kid": "k2"})
    code, _, err = run(["--token", forged], capsys)
    assert code == 1
    assert_reason(error_line(err), "invalid signature")


@pytest.mark.parametrize("kid", ["nope", "", "../.public.key.pem", "MY-KEY-ID"])
def test_unknown_kid(
    kid: str, tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["--token", tokens.make(header={"kid": kid})], capsys)
    assert (code, out) == (1, "")
    assert_reason(error_line(err), "unknown kid")


def test_token_without_kid_is_malformed_when_the_folder_has_a_key_ring(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (keys_dir / KEYRING_FILE).exists()
    token = raw_token({"alg": "RS256", "typ": "JWT"}, tokens.claims(), tokens.key)
    code, _, err = run(["--token", token], capsys)
    assert code == 1
    assert_reason(error_line(err), "malformed")


def test_guide_folder_with_only_two_files(
    tokens: Tokens, keys_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # The guide's two files alone: the current key has kid JWT_KID, and is the only key, so a
    # token without kid is verified with it (the guide's verify.ts looks at no kid).
    (keys_dir / KEYRING_FILE).unlink()
    monkeypatch.setenv("JWT_KID", "from-env")
    no_kid = raw_token({"alg": "RS256", "typ": "JWT"}, tokens.claims(), tokens.key)
    for token in (no_kid, tokens.make(header={"kid": "from-env"})):
        code, out, err = run(["--token", token], capsys)
        assert (code, err) == (0, ""), token
        assert decoded(out)["userId"] == "a-b-c-d"
    code, _, err = run(["--token", tokens.make()], capsys)  # kid my-key-id
    assert code == 1
    assert_reason(error_line(err), "unknown kid")


def test_public_key_option_needs_no_kid(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = str(keys_dir / ".public.key.pem")
    for header in ({"alg": "RS256", "typ": "JWT"}, tokens.header(kid="anything")):
        token = raw_token(header, tokens.claims(), tokens.key)
        code, _, err = run(["--token", token, "--public-key", pem], capsys)
        assert (code, err) == (0, "")


# --- messages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [(lambda t: "abc", "verify: malformed: a JWT has 3 dot-separated segments, this has 1"),
     (lambda t: "a.b", "verify: malformed: a JWT has 3 dot-separated segments, this has 2"),
     (lambda t: t.make(iss="x"), "verify: issuer: token has 'x', expected 'my-issuer-name'"),
     (lambda t: t.make(aud=AUD), f"verify: audience: token has aud '{AUD}' but no audience "
      "is configured (JWT_AUDIENCE): it is meant for another service")],
    ids=["one-segment", "two-segments", "issuer", "audience-none-configured"],
)  # fmt: skip
def test_messages_say_what_was_expected(
    build: Build, expected: str, tokens: Tokens, keys_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    code, _, err = run(["--token", build(tokens)], capsys)
    assert code == 1
    assert error_line(err) == expected


def test_audience_messages_name_both_sides(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["--token", tokens.make(aud="other"), "--audience", AUD], capsys)
    assert code == 1
    assert error_line(err) == f"verify: audience: token has 'other', expected '{AUD}'"
    code, _, err = run(["--token", tokens.make(), "--audience", AUD], capsys)
    assert error_line(err) == f"verify: audience: token has no aud, expected '{AUD}'"


@pytest.mark.parametrize("option", ["--public-key", "--token-file"])
def test_missing_file_given_as_option_is_named_absolute_without_wrong_advice(
    option: str, *, tokens: Tokens, keys_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    argv = [option, "nope.pem"] + (["--token", tokens.make()] if option == "--public-key" else [])
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, "")
    line = error_line(err)
    assert str(tmp_path / "nope.pem") in line
    assert "does not exist" in line
    assert "gen.py" not in line and "sign.py" not in line


def test_missing_public_key_in_a_relative_keys_folder_is_named_absolute(
    tokens: Tokens, keys_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (keys_dir / ".public.key.pem").unlink()
    monkeypatch.chdir(keys_dir.parent)
    monkeypatch.setenv("JWT_KEYS_DIR", "keys")
    code, _, err = run(["--token", tokens.make()], capsys)
    assert code == 2
    line = error_line(err)
    assert f"no public key at {keys_dir / '.public.key.pem'}: run gen.py first" in line


def test_inspect_shows_contents_before_and_results_after_verification(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = inspected(["--token", tokens.make()], capsys)
    assert code == 0
    split = lines.index("Verification:")
    before, after = lines[:split], lines[split + 1 :]
    assert "NOT VERIFIED yet" in before[0]
    assert [line.split(":")[0] for line in before[1:3]] == ["header", "claims"]
    assert not any("VERIFIED" in line.upper() for line in after)  # no "NOT VERIFIED ... verified"
    assert after == ["signature: valid (checked with the public key, RS256)", "checks: all pass"]


def test_inspect_unknown_kid(
    tokens: Tokens, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = inspected(["--token", tokens.make(header={"kid": "nope"})], capsys)
    assert code == 1
    assert line_starting(lines, "signature:").startswith("signature: not checked")
    assert lines[-1].startswith("checks failing: unknown kid")


# --- the header cache ----------------------------------------------------------------------


# --- Ctrl-C --------------------------------------------------------------------------------




# --- algorithms ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alg_keys() -> dict[str, PrivateKey]:
    """One private key per algorithm (RSA-2048: fast)."""
    return {alg: ALGORITHMS[alg].generate(2048 if alg in ("RS256", "PS256") else None)
            for alg in ALGS}  # fmt: skip


def _pem_file(tmp_path: Path, key: PrivateKey) -> Path:
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem(key.public_key()))
    return path


def _signed(alg: str, key: PrivateKey, tokens: Tokens, kid: str = DEFAULT_KID) -> str:
    return jwt.encode(tokens.claims(), key, algorithm=alg, headers={"kid": kid})


@pytest.mark.parametrize(
    ("key_alg", "option", "token_alg"),
    [("RS256", [], "RS256"), ("PS256", ["--alg", "PS256"], "PS256"), ("ES256", [], "ES256"),
     ("EdDSA", [], "EdDSA"), ("ES256", ["--alg", "ES256"], "ES256")],
    ids=["rsa-rs256", "rsa-ps256-option", "ec-es256", "ed25519-eddsa", "ec-es256-option"],
)  # fmt: skip
def test_public_key_option_follows_the_key_type(
    key_alg: str, option: list[str], token_alg: str, *, alg_keys: dict[str, PrivateKey],
    tokens: Tokens, keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = _pem_file(tmp_path, alg_keys[key_alg])
    token = _signed(token_alg, alg_keys[key_alg], tokens)
    code, out, err = run(["--token", token, "--public-key", str(path), *option], capsys)
    assert (code, err) == (0, "")
    assert decoded(out)["userId"] == "a-b-c-d"


@pytest.mark.parametrize(
    ("key_alg", "option", "token_alg"),
    [("RS256", [], "PS256"), ("PS256", ["--alg", "PS256"], "RS256"), ("ES256", [], "EdDSA"),
     ("EdDSA", [], "ES256"), ("RS256", [], "ES256")],
    ids=["rsa-key-ps256-token", "ps256-key-rs256-token", "ec-key-eddsa-token",
         "ed25519-key-es256-token", "rsa-key-es256-token"],
)  # fmt: skip
def test_public_key_option_refuses_another_algorithm(
    key_alg: str, option: list[str], token_alg: str, *, alg_keys: dict[str, PrivateKey],
    tokens: Tokens, keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = _pem_file(tmp_path, alg_keys[key_alg])
    # Signed by the key itself where the type allows: only the binding can refuse it.
    signer = alg_keys[key_alg] if ALGORITHMS[token_alg].fits(alg_keys[key_alg]) else (
        alg_keys[token_alg])  # fmt: skip
    token = _signed(token_alg, signer, tokens)
    code, out, err = run(["--token", token, "--public-key", str(path), *option], capsys)
    assert (code, out) == (1, "")
    bound = option[1] if option else key_alg
    assert error_line(err) == (
        f"verify: algorithm: token has {token_alg!r}, its key is bound to {bound}"
    )


@pytest.mark.parametrize(("key_alg", "alg"), [("ES256", "RS256"), ("RS256", "EdDSA"),
                                                ("EdDSA", "ES256")])  # fmt: skip
def test_alg_option_that_does_not_fit_the_key(
    key_alg: str, alg: str, *, alg_keys: dict[str, PrivateKey], tokens: Tokens, keys_dir: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = _pem_file(tmp_path, alg_keys[key_alg])
    token = _signed(key_alg, alg_keys[key_alg], tokens)
    code, out, err = run(["--token", token, "--public-key", str(path), "--alg", alg], capsys)
    assert (code, out) == (2, "")
    line = error_line(err)
    assert line.startswith(f"verify: {path}: {alg} does not fit a key of type")


@pytest.mark.parametrize("argv", [["--alg", "PS256"], ["--alg", "HS256"], ["--alg", "none"]])
def test_alg_option_usage_errors(
    argv: list[str], keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, "")
    assert "--alg" in error_line(err)


@pytest.mark.parametrize("alg", ALGS)
def test_keys_folder_of_every_algorithm(
    alg: str, empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gen.py --alg, sign.py, verify.py and --inspect: the folder records the key's alg."""
    assert gen.main(alg_args(alg)) == 0
    assert sign.main([]) == 0
    capsys.readouterr()
    code, out, err = run([], capsys)
    assert (code, err) == (0, "")
    assert decoded(out)["userId"] == "a-b-c-d"
    code, lines = inspected([], capsys)
    assert code == 0
    assert f"signature: valid (checked with the public key, {alg})" in lines


def test_inspect_names_the_algorithm_mismatch(
    alg_keys: dict[str, PrivateKey], tokens: Tokens, keys_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    token = jwt.encode(tokens.claims(), tokens.key, algorithm="PS256", headers={"kid": DEFAULT_KID})
    code, lines = inspected(["--token", token], capsys)
    assert code == 1
    assert "signature: not checked, the key is bound to RS256" in lines
    assert lines[-1].startswith("checks failing: algorithm: token has 'PS256'")
