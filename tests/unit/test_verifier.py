"""jwt_guide.Verifier in process: claims out or the reason in, every key source, no shared state.

The JWKS is injected as a fetch function, or served on 127.0.0.1 by the test's own server.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from jwt_guide import InvalidToken, JwtGuideError, KeysUnavailable, UsageError, Verifier
from jwt_guide.algorithms import ALGORITHMS, PrivateKey, algorithm_for_key
from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_KID, load_config
from jwt_guide.jwks_client import FetchError, JwksClient
from jwt_guide.keys import FolderKeys, PemFileKey
from tests.helpers import (
    ALGS,
    FakeClock,
    RecordingServer,
    TokenFactory,
    free_port,
    jwk_of,
    key_set,
)

URI = "http://127.0.0.1:9/keys"  # never contacted: the fetch is injected


class Fetch:
    """An injected JWKS fetch: serves ``keys`` or fails; counts its calls."""

    def __init__(self, *jwks: dict[str, Any]) -> None:
        self.jwks = list(jwks)
        self.failing = False
        self.calls = 0

    def __call__(self, uri: str) -> tuple[Any, float | None]:
        self.calls += 1
        if self.failing:
            raise FetchError(f"cannot fetch {uri}: ConnectionError")
        return {"keys": list(self.jwks)}, None


def jwks_verifier(fetch: Fetch, **options: Any) -> Verifier:
    client = JwksClient(URI, 600, 5, fetch=fetch, clock=FakeClock())
    return Verifier(keys=client, config=load_config({}), **options)


def test_verify_returns_the_claims(private_key: RSAPrivateKey, make_token: TokenFactory) -> None:
    verifier = jwks_verifier(Fetch(jwk_of(private_key, DEFAULT_KID)))
    token = make_token(role="admin")
    claims = verifier.verify(token)
    assert claims["role"] == "admin"
    assert claims["iss"] == DEFAULT_ISSUER
    assert list(claims) == ["userId", "iat", "exp", "iss", "role"]


@pytest.mark.parametrize(
    ("claims", "reason"),
    [({"exp": 1}, "expired"), ({"iss": "someone-else"}, "issuer"), ({"aud": "x"}, "audience"),
     ({"drop": ("iat",)}, "missing claim iat")],
    ids=["expired", "issuer", "audience", "missing-iat"],
)  # fmt: skip
def test_a_refused_token_raises_invalid_token_with_its_reason(
    private_key: RSAPrivateKey, make_token: TokenFactory, claims: dict[str, Any], reason: str
) -> None:
    verifier = jwks_verifier(Fetch(jwk_of(private_key, DEFAULT_KID)))
    with pytest.raises(InvalidToken) as refused:
        verifier.verify(make_token(**claims))
    assert refused.value.reason == reason
    assert isinstance(refused.value, JwtGuideError)


def test_signature_unknown_kid_and_garbage(
    private_key: RSAPrivateKey, other_private_key: RSAPrivateKey, make_token: TokenFactory
) -> None:
    verifier = jwks_verifier(Fetch(jwk_of(private_key, DEFAULT_KID)))
    reasons = []
    for token in (make_token(key=other_private_key), make_token(header={"kid": "nope"}),
                  "not.a.token", "x" * 9000):  # fmt: skip
        with pytest.raises(InvalidToken) as refused:
            verifier.verify(token)
        reasons.append(refused.value.reason)
    assert reasons == ["invalid signature", "unknown kid", "malformed", "malformed"]


def test_audience_and_options(private_key: RSAPrivateKey, make_token: TokenFactory) -> None:
    fetch = Fetch(jwk_of(private_key, DEFAULT_KID))
    verifier = jwks_verifier(fetch, audience="api", issuer="https://issuer.example", leeway=5)
    token = make_token(aud=["other", "api"], iss="https://issuer.example")
    assert verifier.verify(token)["aud"] == ["other", "api"]
    short = jwks_verifier(fetch, max_age=60)
    with pytest.raises(InvalidToken, match="too old"):
        short.verify(make_token(now=int(time.time()) - 120))


def test_jwks_down_is_keys_unavailable_with_whole_seconds(make_token: TokenFactory) -> None:
    fetch = Fetch()
    fetch.failing = True
    verifier = jwks_verifier(fetch)
    with pytest.raises(KeysUnavailable) as unavailable:
        verifier.verify(make_token())
    assert type(unavailable.value.retry_after) is int
    assert unavailable.value.retry_after >= 1
    assert isinstance(unavailable.value, JwtGuideError)


def test_building_never_fetches_nor_raises_when_the_jwks_is_down(
    make_token: TokenFactory,
) -> None:
    verifier = Verifier(f"http://127.0.0.1:{free_port()}/keys")  # nothing listens there
    with pytest.raises(KeysUnavailable):
        verifier.verify(make_token())


def test_unset_arguments_come_from_the_environment(
    private_key: RSAPrivateKey, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_ISSUER", "https://env.example")
    monkeypatch.setenv("JWT_AUDIENCE", "env-api")
    monkeypatch.setenv("JWKS_URI", "http://127.0.0.1:1/from-env")
    monkeypatch.setenv("TOKEN_CACHE_SIZE", "7")
    verifier = Verifier()
    assert verifier.policy.issuer == "https://env.example"
    assert verifier.policy.audience == "env-api"
    assert verifier.cache.size == 7
    assert isinstance(verifier.keys, JwksClient)
    assert verifier.keys.uri == "http://127.0.0.1:1/from-env"
    given = Verifier("http://127.0.0.1:1/given", issuer="i", audience="a", token_cache_size=0)
    assert isinstance(given.keys, JwksClient)
    assert (given.keys.uri, given.policy.issuer, given.policy.audience) == (
        "http://127.0.0.1:1/given", "i", "a",
    )  # fmt: skip


def test_keys_dir_verifies_by_kid_and_sees_new_keys(
    keys_dir: Path, session_keys: Path, make_token: TokenFactory, tmp_path: Path
) -> None:
    verifier = Verifier(keys_dir=keys_dir)
    assert isinstance(verifier.keys, FolderKeys)
    assert verifier.verify(make_token())["userId"] == "a-b-c-d"
    with pytest.raises(InvalidToken, match="unknown kid"):
        verifier.verify(make_token(header={"kid": "later"}))
    # gen.py --force while the verifier lives: another key, read again without a restart.
    ring = (keys_dir / ".keys.json").read_text().replace(f'"{DEFAULT_KID}"', '"later"')
    (keys_dir / ".keys.json").write_text(ring)
    assert verifier.verify(make_token(header={"kid": "later"}))["userId"] == "a-b-c-d"


def test_keys_dir_without_a_key_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"run gen\.py first"):
        Verifier(keys_dir=tmp_path / "missing")


def test_pem_file_key_is_used_whatever_the_kid(
    session_keys: Path, make_token: TokenFactory
) -> None:
    verifier = Verifier(keys=PemFileKey(session_keys / ".public.key.pem"), config=load_config({}))
    assert verifier.verify(make_token(header={"kid": "anything"}))["iss"] == DEFAULT_ISSUER


def test_cached_claims_are_the_callers_own(
    private_key: RSAPrivateKey, make_token: TokenFactory
) -> None:
    verifier = jwks_verifier(Fetch(jwk_of(private_key, DEFAULT_KID)))
    token = make_token(roles=["reader"])
    first = verifier.verify(token)
    first["roles"].append("admin")
    first["userId"] = "someone-else"
    again = verifier.verify(token)  # from the token cache
    assert len(verifier.cache) == 1
    assert again["roles"] == ["reader"] and again["userId"] == "a-b-c-d"


def test_two_verifiers_share_no_state(
    private_key: RSAPrivateKey, other_private_key: RSAPrivateKey, make_token: TokenFactory
) -> None:
    """Two issuers in one process: each verifier has its own key cache, fetch threads,
    header cache and token cache; neither accepts the other's tokens nor clears its caches."""
    first, second = RecordingServer(), RecordingServer()
    try:
        first.serve(key_set(jwk_of(private_key, "a")))
        second.serve(key_set(jwk_of(other_private_key, "b")))
        one = Verifier(first.uri, issuer="issuer-a")
        two = Verifier(second.uri, issuer="issuer-b")
        token_a = make_token(header={"kid": "a"}, iss="issuer-a")
        token_b = make_token(header={"kid": "b"}, iss="issuer-b", key=other_private_key)
        assert one.verify(token_a)["iss"] == "issuer-a"
        assert two.verify(token_b)["iss"] == "issuer-b"
        for verifier, foreign in ((one, token_b), (two, token_a)):
            with pytest.raises(InvalidToken, match="unknown kid"):
                verifier.verify(foreign)
        assert one.verify(token_a) and two.verify(token_b)  # cached, still
        assert (first.count, second.count) == (2, 2)  # one refetch each for the unknown kid
        assert one.keys is not two.keys and one.cache is not two.cache
        assert one.headers is not two.headers
        assert isinstance(one.keys, JwksClient) and isinstance(two.keys, JwksClient)
        assert one.keys._threads is not two.keys._threads
        assert (len(one.cache), len(two.cache)) == (1, 1)
    finally:
        first.stop()
        second.stop()


def test_verify_is_thread_safe(private_key: RSAPrivateKey, make_token: TokenFactory) -> None:
    fetch = Fetch(jwk_of(private_key, DEFAULT_KID))
    verifier = jwks_verifier(fetch, token_cache_size=4)
    tokens = [make_token(n=n) for n in range(8)]
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for token in tokens * 3:
                verifier.verify(token)
        except BaseException as e:  # handed to the test thread
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures
    assert fetch.calls == 1
    assert len(verifier.cache) <= 4


def test_keys_folder_copied_elsewhere_is_independent(
    keys_dir: Path, tmp_path: Path, make_token: TokenFactory
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(keys_dir, copy)
    one, two = Verifier(keys_dir=keys_dir), Verifier(keys_dir=copy)
    (keys_dir / ".keys.json").write_text(
        (keys_dir / ".keys.json").read_text().replace(f'"{DEFAULT_KID}"', '"moved"')
    )
    with pytest.raises(InvalidToken, match="unknown kid"):
        one.verify(make_token())
    assert two.verify(make_token())["userId"] == "a-b-c-d"


# --- keys bound to algorithms ---------------------------------------------------------------


def _jwk(key: PrivateKey, kid: str, alg: str | None) -> dict[str, Any]:
    """The public JWK of ``key`` with ``alg`` (None: without an alg member)."""
    members = algorithm_for_key(key).public_jwk(key.public_key())
    jwk: dict[str, Any] = {**members, "kid": kid, "use": "sig"}
    return jwk if alg is None else {**jwk, "alg": alg}


def _token(key: PrivateKey, alg: str, kid: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iat": now, "exp": now + 60, "iss": DEFAULT_ISSUER, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def alg_keys() -> dict[str, PrivateKey]:
    return {alg: ALGORITHMS[alg].generate(2048 if alg[0] in "RP" else None) for alg in ALGS}


@pytest.mark.parametrize("alg", ALGS)
def test_each_key_verifies_only_its_own_algorithm(
    alg: str, alg_keys: dict[str, PrivateKey]
) -> None:
    fetch = Fetch(*(_jwk(key, name, name) for name, key in alg_keys.items()))
    verifier = jwks_verifier(fetch)
    assert verifier.verify(_token(alg_keys[alg], alg, alg, n=1))["n"] == 1
    for other in ALGS:
        if other == alg:
            continue
        # The token names this key's kid but another algorithm: signed by the key itself
        # where its type allows (RS256 and PS256), else by the other algorithm's key.
        signer = alg_keys[alg] if ALGORITHMS[other].fits(alg_keys[alg]) else alg_keys[other]
        with pytest.raises(InvalidToken) as refused:
            verifier.verify(_token(signer, other, alg))
        assert refused.value.reason == "algorithm"
        assert f"its key is bound to {alg}" in refused.value.detail


def test_fetched_keys_without_alg_get_their_types_default_never_ps256(
    alg_keys: dict[str, PrivateKey],
) -> None:
    fetch = Fetch(*(_jwk(key, name, None) for name, key in alg_keys.items() if name != "RS256"))
    verifier = jwks_verifier(fetch)
    # The RSA key without alg is RS256, even though its owner made it for PS256.
    with pytest.raises(InvalidToken, match=r"^algorithm: .* bound to RS256"):
        verifier.verify(_token(alg_keys["PS256"], "PS256", "PS256"))
    assert verifier.verify(_token(alg_keys["PS256"], "RS256", "PS256", n=2))["n"] == 2
    assert verifier.verify(_token(alg_keys["ES256"], "ES256", "ES256", n=3))["n"] == 3
    assert verifier.verify(_token(alg_keys["EdDSA"], "EdDSA", "EdDSA", n=4))["n"] == 4


def test_a_key_replaced_by_another_algorithm_under_the_same_kid(
    alg_keys: dict[str, PrivateKey],
) -> None:
    """gen.py --force --alg ES256 while a verifier runs: the first ES256 token refetches (as a
    failed signature does) and is accepted; cached RS256 tokens are verified again, refused."""
    fetch = Fetch(_jwk(alg_keys["RS256"], "k", "RS256"))
    verifier = jwks_verifier(fetch)
    old = _token(alg_keys["RS256"], "RS256", "k")
    verifier.verify(old)
    assert len(verifier.cache) == 1
    fetch.jwks = [_jwk(alg_keys["ES256"], "k", "ES256")]
    assert verifier.verify(_token(alg_keys["ES256"], "ES256", "k", n=5))["n"] == 5
    assert fetch.calls == 2
    with pytest.raises(InvalidToken, match=r"^algorithm: token has 'RS256', its key is bound to"):
        verifier.verify(old)  # from the cache no more: its key is not published now


def test_the_token_cache_compares_the_whole_public_jwk(alg_keys: dict[str, PrivateKey]) -> None:
    """A cached token is used only while the same kid, alg and public JWK are published."""
    key = alg_keys["ES256"]
    fetch = Fetch(_jwk(key, "k", "ES256"))
    verifier = jwks_verifier(fetch)
    token = _token(key, "ES256", "k")
    verifier.verify(token)
    assert isinstance(verifier.keys, JwksClient)
    cached = verifier.keys.get_key("k")
    assert cached is not None
    assert verifier._still_published(cached)
    fetch.jwks = [_jwk(alg_keys["EdDSA"], "k", "EdDSA")]
    verifier.keys.get_key("nothing")  # an unknown kid refetches: k is now an Ed25519 key
    assert not verifier._still_published(cached)
    with pytest.raises(InvalidToken, match=r"^algorithm"):
        verifier.verify(token)
