"""protected_server.py in process: Bearer parsing, RFC 6750 errors, 503s and the token cache.

The JWKS is injected as a fetch function (no network); the JWKS client's clock and the
authenticator's clock are injected so that expiry, cache lifetimes and fetch spacing are
tested by moving time, not by waiting.
"""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from flask import Flask
from flask.testing import FlaskClient

import protected_server
from jwt_guide import tokens
from jwt_guide import verifier as verifier_module
from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_KID, load_config
from jwt_guide.jwks_client import FetchError, JwksClient
from jwt_guide.verifier import Verifier
from tests.helpers import (
    FakeClock,
    RecordingServer,
    TokenFactory,
    assert_clean_error,
    jwk_of,
    key_set,
)

JWKS_URI = "http://127.0.0.1:9/keys"  # never contacted: the fetch is injected
DAY = 24 * 60 * 60


class FakeFetch:
    """The JWKS fetch, injected: returns ``document`` (a copy) or fails; counts its calls."""

    def __init__(self, *jwks: dict[str, Any]) -> None:
        self.document: Any = {"keys": list(jwks)}
        self.failing = False
        self.max_age: float | None = None
        self.calls = 0

    def publish(self, *jwks: dict[str, Any]) -> None:
        self.document = {"keys": list(jwks)}

    def __call__(self, uri: str) -> tuple[Any, float | None]:
        assert uri == JWKS_URI
        self.calls += 1
        if self.failing:
            raise FetchError(f"cannot fetch {uri}: ConnectionError")
        return copy.deepcopy(self.document), self.max_age


@dataclass
class Harness:
    app: Flask
    client: FlaskClient
    fetch: FakeFetch
    jwks_clock: FakeClock
    clock: FakeClock  # the verifier's wall clock (token times)
    verifications: list[str]
    verifier: Verifier

    def get(self, token: str | None = None, scheme: str = "Bearer") -> Any:
        headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
        return self.client.get("/with-auth", headers=headers)


HarnessFactory = Callable[..., Harness]


@pytest.fixture
def harness(private_key: RSAPrivateKey, monkeypatch: pytest.MonkeyPatch) -> HarnessFactory:
    verifications: list[str] = []

    real_verify_token = tokens.verify_token

    def counting_verify(token: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        verifications.append("verify")
        return real_verify_token(token, *args, **kwargs)

    monkeypatch.setattr(verifier_module, "verify_token", counting_verify)

    def factory(cache_size: int = 100, per_minute: int = 5, cache_seconds: int = 600) -> Harness:
        config = load_config({
            "JWKS_URI": JWKS_URI,
            "TOKEN_CACHE_SIZE": str(cache_size),
            "JWKS_REQUESTS_PER_MINUTE": str(per_minute),
            "JWKS_CACHE_SECONDS": str(cache_seconds),
        })  # fmt: skip
        fetch = FakeFetch(jwk_of(private_key, DEFAULT_KID))
        jwks_clock = FakeClock(1000.0)
        jwks = JwksClient(
            config.jwks_uri, config.jwks_cache_seconds, config.jwks_requests_per_minute,
            fetch=fetch, clock=jwks_clock,
        )  # fmt: skip
        clock = FakeClock(float(int(time.time())))
        verifier = Verifier(config=config, keys=jwks, clock=clock)
        app = protected_server.create_app(config, verifier)
        return Harness(app, app.test_client(), fetch, jwks_clock, clock, verifications, verifier)

    return factory


def payload_json(token: str) -> str:
    segment = token.split(".")[1]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()


def assert_error(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert body["error_description"]
    assert_clean_error(response.get_data(as_text=True))
    return dict(body)


# --- success ---------------------------------------------------------------------------------


def test_valid_token_gets_its_claims_as_compact_json_in_order(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness()
    token = make_token(now=int(h.clock.now), zeta=1, alpha="x", nested={"b": 1, "a": [2]})
    response = h.get(token)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert text == "Result: " + payload_json(token)
    assert text.startswith('Result: {"userId":"a-b-c-d","iat":')
    assert text.endswith(
        f'"iss":"{DEFAULT_ISSUER}","zeta":1,"alpha":"x","nested":{{"b":1,"a":[2]}}}}'
    )


def test_auth_is_204_with_the_claims_in_x_jwt_claims(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness()
    token = make_token(now=int(h.clock.now), name="Zoë")
    response = h.client.get("/auth", headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.data) == (204, b"")
    encoded = response.headers["X-Jwt-Claims"]
    assert "=" not in encoded  # base64url without padding
    claims = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    assert "Result: " + claims == h.get(token).get_data(as_text=True)
    assert len(h.verifications) == 1  # the second answer came from the token cache


def test_head_of_with_auth_is_the_get_without_its_body(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness()
    headers = {"Authorization": f"Bearer {make_token(now=int(h.clock.now))}"}
    head = h.client.head("/with-auth", headers=headers)
    get = h.client.get("/with-auth", headers=headers)
    assert (head.status_code, head.data) == (200, b"")
    assert head.headers == get.headers


@pytest.mark.parametrize(
    "authorization", [None, "Basic x", "Bearer a b", "Bearer e30.e30.", "Bearer " + "a" * 9000],
    ids=["none", "basic", "two-parts", "garbage", "over-8-kib"],
)  # fmt: skip
def test_auth_refuses_exactly_as_with_auth(
    harness: HarnessFactory, authorization: str | None
) -> None:
    h = harness()
    headers = {} if authorization is None else {"Authorization": authorization}
    auth, with_auth = (h.client.get(path, headers=headers) for path in ("/auth", "/with-auth"))
    assert auth.status_code in (400, 401)
    assert (auth.status_code, auth.data) == (with_auth.status_code, with_auth.data)
    assert auth.headers == with_auth.headers
    assert "X-Jwt-Claims" not in auth.headers


def test_other_methods_and_paths_are_json_405_and_404(harness: HarnessFactory) -> None:
    h = harness()
    for path in ("/with-auth", "/auth"):
        answer = h.client.post(path)
        assert_error(answer, 405, "method_not_allowed")
        assert set(answer.headers["Allow"].split(", ")) == {"GET", "HEAD"}
    assert_error(h.client.get("/with-auth/"), 404, "not_found")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(
    harness: HarnessFactory, make_token: TokenFactory, scheme: str
) -> None:
    h = harness()
    response = h.get(make_token(now=int(h.clock.now)), scheme=scheme)
    assert response.status_code == 200


# --- missing or malformed credentials ------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "   ", "Basic dXNlcjpwYXNz", "Token abc", "Bearerabc", "Basic"],
    ids=["no-header", "empty", "blank", "basic", "token-scheme", "glued", "basic-alone"],
)
def test_no_bearer_credentials_is_401_without_error_code(
    harness: HarnessFactory, authorization: str | None
) -> None:
    h = harness()
    headers = {} if authorization is None else {"Authorization": authorization}
    response = h.client.get("/with-auth", headers=headers)
    assert_error(response, 401, response.get_json()["error"])
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="')
    assert "error=" not in challenge
    assert response.get_json()["error"] not in {"invalid_token", "invalid_request"}
    assert h.fetch.calls == 0


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer ", "bearer  ", "Bearer a b", "Bearer a.b.c extra", "Bearer a b c"],
    ids=["bearer-alone", "trailing-space", "lowercase-blank", "two-parts", "token-extra",
         "three-parts"],
)  # fmt: skip
def test_malformed_bearer_header_is_400_invalid_request(
    harness: HarnessFactory, authorization: str
) -> None:
    h = harness()
    response = h.client.get("/with-auth", headers={"Authorization": authorization})
    assert_error(response, 400, "invalid_request")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="')
    assert 'error="invalid_request"' in challenge


# --- tokens that do not verify -------------------------------------------------------------


def _no_kid(private_key: RSAPrivateKey, now: int) -> str:
    claims = {"userId": "a-b-c-d", "iat": now, "exp": now + 3600, "iss": DEFAULT_ISSUER}
    token = jwt.encode(claims, private_key, algorithm="RS256")
    assert "kid" not in jwt.get_unverified_header(token)
    return token


def _hs256(now: int) -> str:
    claims = {"userId": "a-b-c-d", "iat": now, "exp": now + 3600, "iss": DEFAULT_ISSUER}
    return jwt.encode(claims, "k" * 64, algorithm="HS256", headers={"kid": DEFAULT_KID})


BAD_TOKENS: list[tuple[str, Callable[[TokenFactory, RSAPrivateKey, RSAPrivateKey, int], str],
                       tuple[str, ...]]] = [
    ("expired", lambda mk, pk, other, now: mk(now=now - 7200), ("expired",)),
    ("signature", lambda mk, pk, other, now: mk(now=now, key=other), ("signature",)),
    ("issuer", lambda mk, pk, other, now: mk(now=now, iss="someone-else"), ("issuer",)),
    ("unknown-kid", lambda mk, pk, other, now: mk(now=now, header={"kid": "nope"}),
     ("unknown kid",)),
    ("no-kid", lambda mk, pk, other, now: _no_kid(pk, now), ("kid",)),
    ("over-8-kib", lambda mk, pk, other, now: mk(now=now, pad="x" * 9000),
     ("8192", "8 KiB", "larger", "too large", "too long")),
    ("algorithm", lambda mk, pk, other, now: _hs256(now), ("algorithm",)),
    ("malformed", lambda mk, pk, other, now: "abc.def", ("malformed",)),
    ("bad-base64", lambda mk, pk, other, now: mk(now=now)[:-1] + "*", ("malformed",)),
    ("too-old", lambda mk, pk, other, now: mk(now=now - 2 * DAY, exp=now + 3600), ("too old",)),
    ("not-yet-valid", lambda mk, pk, other, now: mk(now=now, nbf=now + 600), ("not yet valid",)),
    ("missing-exp", lambda mk, pk, other, now: mk(now=now, drop=("exp",)), ("missing claim exp",)),
    ("crit", lambda mk, pk, other, now: mk(now=now, header={"crit": ["x"], "x": 1}),
     ("critical",)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "build", "reasons"), BAD_TOKENS, ids=[t[0] for t in BAD_TOKENS])
def test_bad_token_is_401_invalid_token_saying_why(
    *,
    harness: HarnessFactory,
    make_token: TokenFactory,
    private_key: RSAPrivateKey,
    other_private_key: RSAPrivateKey,
    name: str,
    build: Callable[[TokenFactory, RSAPrivateKey, RSAPrivateKey, int], str],
    reasons: tuple[str, ...],
) -> None:
    h = harness()
    token = build(make_token, private_key, other_private_key, int(h.clock.now))
    response = h.get(token)
    body = assert_error(response, 401, "invalid_token")
    description = body["error_description"]
    assert any(reason in description for reason in reasons), description
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="')
    assert 'error="invalid_token"' in challenge
    assert token not in response.get_data(as_text=True)


# --- JWKS outages ----------------------------------------------------------------------------


def test_jwks_down_with_nothing_cached_is_503_then_recovers_within_a_second(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness(per_minute=5)  # the spacing is 12 s, but a failed fetch is retried after ~1 s
    token = make_token(now=int(h.clock.now))
    h.fetch.failing = True
    response = h.get(token)
    assert_error(response, 503, "temporarily_unavailable")
    assert response.headers["Retry-After"] == "1"
    h.fetch.failing = False
    h.jwks_clock.advance(0.5)
    again = h.get(token)
    assert again.status_code == 503  # not before the retry delay has passed
    assert again.headers["Retry-After"] == "1"
    assert h.fetch.calls == 1
    h.jwks_clock.advance(0.51)
    assert h.get(token).status_code == 200
    assert h.fetch.calls == 2


def test_jwks_answer_that_is_not_a_key_set_is_503(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness()
    h.fetch.document = ["not", "a", "key", "set"]
    response = h.get(make_token(now=int(h.clock.now)))
    assert_error(response, 503, "temporarily_unavailable")
    assert "Retry-After" in response.headers


def test_jwks_down_with_keys_cached_keeps_verifying(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness(cache_size=0)
    assert h.get(make_token(now=int(h.clock.now))).status_code == 200
    h.fetch.failing = True
    h.jwks_clock.advance(601)
    assert h.get(make_token(now=int(h.clock.now), userId="other")).status_code == 200
    assert h.fetch.calls == 2


def test_malformed_token_does_not_touch_the_jwks(harness: HarnessFactory) -> None:
    h = harness()
    h.fetch.failing = True
    assert_error(h.get("not-a-token"), 401, "invalid_token")
    assert h.fetch.calls == 0


# --- the verified-token cache ----------------------------------------------------------------


def test_cache_hit_avoids_reverification(harness: HarnessFactory, make_token: TokenFactory) -> None:
    h = harness()
    token = make_token(now=int(h.clock.now))
    first = h.get(token)
    second = h.get(token)
    assert first.status_code == second.status_code == 200
    assert first.data == second.data
    assert len(h.verifications) == 1


@pytest.mark.parametrize(
    ("lifetime", "valid_for", "reason"), [(100, 100, "expired"), (3 * DAY, DAY, "too old")],
    ids=["exp", "max-age"],
)  # fmt: skip
def test_cache_entry_never_outlives_exp_nor_max_age(
    harness: HarnessFactory, make_token: TokenFactory, lifetime: int, valid_for: int,
    reason: str,
) -> None:  # fmt: skip
    h = harness()
    now = int(h.clock.now)
    token = make_token(now=now, exp=now + lifetime)
    assert h.get(token).status_code == 200
    h.clock.advance(valid_for - 1)
    assert h.get(token).status_code == 200
    assert len(h.verifications) == 1
    h.clock.advance(1)
    body = assert_error(h.get(token), 401, "invalid_token")
    assert reason in body["error_description"]


def test_cache_entry_is_dropped_when_its_key_leaves_the_jwks(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness()
    token = make_token(now=int(h.clock.now))
    assert h.get(token).status_code == 200
    h.fetch.publish()
    h.jwks_clock.advance(601)  # the cached key set expires; the next lookup refetches
    body = assert_error(h.get(token), 401, "invalid_token")
    assert "unknown kid" in body["error_description"]


def test_cache_entry_is_dropped_when_its_kid_gets_another_key(
    harness: HarnessFactory, make_token: TokenFactory, other_private_key: RSAPrivateKey
) -> None:
    h = harness()
    token = make_token(now=int(h.clock.now))
    assert h.get(token).status_code == 200
    h.fetch.publish(jwk_of(other_private_key, DEFAULT_KID))
    h.jwks_clock.advance(601)
    body = assert_error(h.get(token), 401, "invalid_token")
    assert "signature" in body["error_description"]
    assert len(h.verifications) == 2


def test_cache_is_a_bounded_lru(harness: HarnessFactory, make_token: TokenFactory) -> None:
    h = harness(cache_size=2)
    now = int(h.clock.now)
    a, b, c = (make_token(now=now, userId=name) for name in "abc")

    def verified_after(token: str) -> int:
        assert h.get(token).status_code == 200
        return len(h.verifications)

    assert verified_after(a) == 1
    assert verified_after(b) == 2
    assert verified_after(a) == 2  # hit; a is now the most recently used
    assert verified_after(c) == 3  # evicts b, the least recently used
    assert verified_after(a) == 3  # still cached
    assert verified_after(b) == 4  # was evicted
    for i in range(20):
        h.get(make_token(now=now, userId=f"user-{i}"))
    assert len(h.verifier.cache) <= 2


def test_cache_size_zero_turns_it_off(harness: HarnessFactory, make_token: TokenFactory) -> None:
    h = harness(cache_size=0)
    token = make_token(now=int(h.clock.now))
    for _ in range(3):
        assert h.get(token).status_code == 200
    assert len(h.verifications) == 3
    assert len(h.verifier.cache) == 0


def test_failures_are_never_cached(
    harness: HarnessFactory,
    make_token: TokenFactory,
    other_private_key: RSAPrivateKey,
    private_key: RSAPrivateKey,
) -> None:
    h = harness()
    now = int(h.clock.now)
    forged = make_token(now=now, key=other_private_key)
    for _ in range(2):
        assert_error(h.get(forged), 401, "invalid_token")
    assert len(h.verifications) == 2
    early = make_token(now=now, nbf=now + 50)
    assert_error(h.get(early), 401, "invalid_token")
    h.clock.advance(50)
    assert h.get(early).status_code == 200
    later = make_token(now=now, header={"kid": "later"})
    assert_error(h.get(later), 401, "invalid_token")
    h.fetch.publish(jwk_of(private_key, DEFAULT_KID), jwk_of(private_key, "later"))
    h.jwks_clock.advance(12.01)  # one spacing interval at 5 fetches a minute
    assert h.get(later).status_code == 200


def test_cache_hit_still_needs_a_bearer_header(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness()
    token = make_token(now=int(h.clock.now))
    assert h.get(token).status_code == 200
    assert h.get(token, scheme="Basic").status_code == 401
    assert h.get(token, scheme="Bearer x").status_code == 400


# --- what the key set holds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "value"),
    [("key_ops", None), ("key_ops", 1), ("x5c", 5), ("kty", ["RSA"]), ("n", None)],
    ids=["key_ops-null", "key_ops-number", "x5c-number", "kty-list", "n-null"],
)
def test_malformed_key_set_entry_is_skipped_not_a_500(
    *,
    harness: HarnessFactory,
    make_token: TokenFactory,
    other_private_key: RSAPrivateKey,
    private_key: RSAPrivateKey,
    member: str,
    value: Any,
) -> None:
    h = harness()
    bad = jwk_of(other_private_key, "bad")
    bad[member] = value
    h.fetch.publish(bad, jwk_of(private_key, DEFAULT_KID))
    assert h.get(make_token(now=int(h.clock.now))).status_code == 200
    body = assert_error(h.get(make_token(now=int(h.clock.now), header={"kid": "bad"})), 401,
                        "invalid_token")  # fmt: skip
    assert "unknown kid" in body["error_description"]


def test_key_with_use_enc_is_not_used(
    harness: HarnessFactory, make_token: TokenFactory, private_key: RSAPrivateKey
) -> None:
    h = harness()
    h.fetch.publish(jwk_of(private_key, DEFAULT_KID, use="enc"))
    body = assert_error(h.get(make_token(now=int(h.clock.now))), 401, "invalid_token")
    assert "unknown kid" in body["error_description"]


# --- a key replaced under the same kid (gen.py --force while the servers run) ----------------


def test_key_replaced_under_the_same_kid_is_picked_up_at_once(
    harness: HarnessFactory, make_token: TokenFactory, other_private_key: RSAPrivateKey
) -> None:
    h = harness()  # 5 fetches a minute: spacing 12 s
    now = int(h.clock.now)
    old_token = make_token(now=now)
    assert h.get(old_token).status_code == 200
    h.fetch.publish(jwk_of(other_private_key, DEFAULT_KID))  # gen.py --force
    h.jwks_clock.advance(1)
    new_token = make_token(now=now, key=other_private_key)
    assert h.get(new_token).status_code == 200  # the first fetch did not start the spacing
    assert h.fetch.calls == 2
    assert len(h.verifications) == 3  # old token, new token with the old key, then the new one
    body = assert_error(h.get(old_token), 401, "invalid_token")
    assert "signature" in body["error_description"]
    assert h.fetch.calls == 2  # the refetch started the spacing
    assert h.get(new_token).status_code == 200


def test_key_replaced_during_the_spacing_is_picked_up_within_one_interval(
    harness: HarnessFactory, make_token: TokenFactory, other_private_key: RSAPrivateKey
) -> None:
    h = harness()  # spacing 12 s
    now = int(h.clock.now)
    assert h.get(make_token(now=now)).status_code == 200
    assert_error(h.get(make_token(now=now, header={"kid": "nope"})), 401, "invalid_token")
    assert h.fetch.calls == 2  # the unknown kid started the spacing
    h.fetch.publish(jwk_of(other_private_key, DEFAULT_KID))
    new_token = make_token(now=now, key=other_private_key)
    h.jwks_clock.advance(6)
    body = assert_error(h.get(new_token), 401, "invalid_token")
    assert "signature" in body["error_description"]
    assert h.fetch.calls == 2
    h.jwks_clock.advance(6.01)
    assert h.get(new_token).status_code == 200
    assert h.fetch.calls == 3


@pytest.mark.parametrize(
    "with_unknown_kids", [False, True], ids=["forged-only", "and-unknown-kids"]
)
def test_flood_of_forged_tokens_stays_within_the_fetch_allowance(
    private_key: RSAPrivateKey,
    other_private_key: RSAPrivateKey,
    make_token: TokenFactory,
    with_unknown_kids: bool,
) -> None:
    """Forged signatures under the real kid (alone, or with unknown kids) against the
    counting JWKS server: at most 5 fetches in any 60 s, and a key replaced meanwhile under
    the same kid is accepted within one spacing interval."""
    per_minute, spacing = 5, 12.0
    server = RecordingServer()
    try:
        clock = FakeClock()
        fetch_times: list[float] = []
        server.on_request = lambda: fetch_times.append(clock.now)
        server.serve(key_set(jwk_of(private_key, DEFAULT_KID)))
        config = load_config({"JWKS_URI": server.uri, "JWKS_REQUESTS_PER_MINUTE": str(per_minute)})
        jwks = JwksClient(server.uri, 600, per_minute, clock=clock)
        client = protected_server.create_app(config, jwks=jwks).test_client()

        def status(token: str) -> int:
            return int(client.get("/with-auth", headers={"Authorization": f"Bearer {token}"})
                       .status_code)  # fmt: skip

        forged = [make_token(key=other_private_key, n=i) for i in range(8)]
        unknown = [make_token(header={"kid": f"junk-{i}"}) for i in range(8)]
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        replacement = make_token(key=new_key, userId="after-force")
        assert status(make_token()) == 200
        start, replaced_at, accepted_at = clock.now, None, None
        for step in range(int(180 / 0.5)):
            assert status(forged[step % 8]) == 401
            if with_unknown_kids:
                assert status(unknown[step % 8]) == 401
            if replaced_at is None and clock.now >= start + 70:
                server.serve(key_set(jwk_of(new_key, DEFAULT_KID)))  # gen.py --force
                replaced_at = clock.now
            if replaced_at is not None and accepted_at is None and status(replacement) == 200:
                accepted_at = clock.now
            clock.advance(0.5)
    finally:
        server.stop()
    for first in fetch_times:
        assert sum(first <= t < first + 60 for t in fetch_times) <= per_minute
    assert len(fetch_times) >= 180 / spacing - 1  # the flood did cause refetches
    assert replaced_at is not None and accepted_at is not None
    assert accepted_at - replaced_at <= spacing


# --- end to end: recovery with the guide's 5 fetches a minute --------------------------------


def test_ctrl_c_while_starting_exits_130(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*_: object) -> Flask:
        raise KeyboardInterrupt

    monkeypatch.setattr(protected_server, "create_app", interrupted)
    assert protected_server.main([]) == 130
    assert capsys.readouterr() == ("", "protected_server: interrupted\n")


# --- GET /auth, for a gateway's auth_request ------------------------------------------------


def decode_claims_header(header: str) -> str:
    assert "=" not in header  # base64url without padding
    return base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)).decode()


def test_auth_is_204_with_the_claims_of_with_auth_in_base64url(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness()
    token = make_token(now=int(h.clock.now), name="Zoë", nested={"b": [1, 2]})
    response = h.client.get("/auth", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204
    assert response.get_data() == b""
    compact = decode_claims_header(response.headers["X-Jwt-Claims"])
    assert '"name":"Zoë"' in compact
    assert h.get(token).get_data(as_text=True) == f"Result: {compact}"


AUTH_REFUSALS: dict[str, Callable[[TokenFactory, int], str | None]] = {
    "no-header": lambda make, now: None,
    "basic": lambda make, now: "Basic dXNlcjpwYXNz",
    "bearer-alone": lambda make, now: "Bearer",
    "two-parts": lambda make, now: "Bearer a b",
    "garbage": lambda make, now: "Bearer not-a-token",
    "expired": lambda make, now: f"Bearer {make(now=now - 7200)}",
    "wrong-issuer": lambda make, now: f"Bearer {make(now=now, iss='someone-else')}",
    "unknown-kid": lambda make, now: f"Bearer {make(now=now, header={'kid': 'other'})}",
    "forged": lambda make, now: f"Bearer {make(now=now).rsplit('.', 1)[0]}.{'A' * 683}",
    "oversized": lambda make, now: f"Bearer {make(now=now, pad='x' * 9000)}",
    "alg-none": lambda make, now: "Bearer eyJhbGciOiJub25lIiwia2lkIjoibXkta2V5LWlkIn0.e30.",
}


@pytest.mark.parametrize("case", AUTH_REFUSALS, ids=list(AUTH_REFUSALS))
def test_auth_refusals_are_those_of_with_auth(
    harness: HarnessFactory, make_token: TokenFactory, case: str
) -> None:
    h = harness()
    authorization = AUTH_REFUSALS[case](make_token, int(h.clock.now))
    headers = {} if authorization is None else {"Authorization": authorization}
    auth = h.client.get("/auth", headers=headers)
    guide = h.client.get("/with-auth", headers=headers)
    assert auth.status_code == guide.status_code
    assert auth.status_code in {400, 401}
    assert auth.headers.getlist("WWW-Authenticate") == guide.headers.getlist("WWW-Authenticate")
    assert len(auth.headers.getlist("WWW-Authenticate")) == 1
    assert auth.get_json() == guide.get_json()
    assert "X-Jwt-Claims" not in auth.headers


def test_auth_with_the_jwks_down_is_503_with_retry_after(
    harness: HarnessFactory, make_token: TokenFactory
) -> None:
    h = harness()
    h.fetch.failing = True
    response = h.client.get(
        "/auth", headers={"Authorization": f"Bearer {make_token(now=int(h.clock.now))}"}
    )
    assert_error(response, 503, "temporarily_unavailable")
    assert int(response.headers["Retry-After"]) >= 1


def test_auth_other_methods_are_405(harness: HarnessFactory) -> None:
    assert harness().client.post("/auth").status_code == 405
