"""JwksClient and parse_key_set against a real HTTP server on 127.0.0.1 that counts requests.

The client's clock is injected wherever the cache or the fetch spacing is tested, so those
tests advance time instead of waiting; the HTTP exchanges themselves are real.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import string
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import ECAlgorithm
from jwt.utils import base64url_encode

from jwt_guide import jwks_client
from jwt_guide.errors import KeysUnavailable
from jwt_guide.jwks_client import (
    FIRST_RETRY_SECONDS,
    MAX_JWKS_BYTES,
    MIN_CACHE_SECONDS,
    RETRY_JITTER,
    STALE_IF_ERROR_SECONDS,
    FetchError,
    JwksClient,
    parse_key_set,
)
from tests.helpers import WAIT, FakeClock, RecordingServer, free_port, jwk_of, key_set


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    httpd = RecordingServer()
    yield httpd
    httpd.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def small_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (too small on purpose)


@pytest.fixture
def good_jwk(private_key: RSAPrivateKey) -> dict[str, Any]:
    return jwk_of(private_key, "good")


def make_client(
    server: RecordingServer,
    clock: FakeClock | None = None,
    cache_seconds: float = 600,
    per_minute: int = 5,
) -> JwksClient:
    if clock is None:
        return JwksClient(server.uri, cache_seconds, per_minute)
    return JwksClient(server.uri, cache_seconds, per_minute, clock=clock)


def warm_client(
    server: RecordingServer, clock: FakeClock, jwk: dict[str, Any], **options: Any
) -> JwksClient:
    """A client (``make_client`` options) that has fetched a key set holding ``jwk`` once."""
    server.serve(key_set(jwk))
    client = make_client(server, clock, **options)
    assert client.get_key(jwk["kid"]) is not None
    return client


# --- caching --------------------------------------------------------------------------------


def test_keys_are_cached_for_cache_seconds(
    server: RecordingServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    client = warm_client(server, clock, good_jwk, cache_seconds=600)
    clock.advance(599)
    for _ in range(20):
        assert client.get_key("good") is not None
    assert server.count == 1
    clock.advance(2)
    assert client.get_key("good") is not None
    assert server.count == 2


@pytest.mark.parametrize(
    ("cache_control", "expected_ttl"),
    [
        ("public, max-age=30", 30),
        ("max-age=0", MIN_CACHE_SECONDS),
        ("no-store", MIN_CACHE_SECONDS),
        ("public, max-age=86400", 600),
    ],
    ids=["shorter-honoured", "zero-bounded", "no-store-bounded", "longer-capped"],
)
def test_server_max_age_is_honoured_within_bounds(
    server: RecordingServer,
    clock: FakeClock,
    good_jwk: dict[str, Any],
    cache_control: str,
    expected_ttl: float,
) -> None:
    server.serve(key_set(good_jwk), headers={"Cache-Control": cache_control})
    client = make_client(server, clock, cache_seconds=600, per_minute=60)
    assert client.get_key("good") is not None
    clock.advance(expected_ttl - 1)
    assert client.get_key("good") is not None
    assert server.count == 1
    clock.advance(2)
    assert client.get_key("good") is not None
    assert server.count == 2


# --- rate limit on unknown kids ------------------------------------------------------------


def test_unknown_kid_refetch_is_spaced(
    server: RecordingServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    client = warm_client(server, clock, good_jwk, per_minute=60)  # spacing: one second
    assert server.count == 1
    assert client.get_key("unknown") is None  # the cold fetch does not start the spacing
    assert server.count == 2
    clock.advance(0.5)
    assert client.get_key("unknown") is None
    assert client.get_key("other-unknown") is None
    assert server.count == 2
    clock.advance(0.6)
    assert client.get_key("unknown") is None
    assert server.count == 3
    assert client.get_key("unknown") is None
    assert server.count == 3


def test_key_promoted_just_after_a_fetch_is_fetched_at_once(
    server: RecordingServer,
    clock: FakeClock,
    good_jwk: dict[str, Any],
    other_private_key: RSAPrivateKey,
) -> None:
    """A rotation right after the protected server's first fetch: no 401 for the new kid."""
    client = warm_client(server, clock, good_jwk)  # 5 a minute: spacing 12 s
    clock.advance(2)
    server.serve(key_set(good_jwk, jwk_of(other_private_key, "promoted")))
    assert client.get_key("promoted") is not None
    assert server.count == 2
    assert client.get_key("random-junk") is None  # now the spacing applies
    assert server.count == 2


def test_never_more_than_per_minute_fetches_in_60_s(
    server: RecordingServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    """Cache expiries and unknown kids together stay within requests_per_minute."""
    fetch_times: list[float] = []
    server.on_request = lambda: fetch_times.append(clock.now)
    server.serve(key_set(good_jwk), headers={"Cache-Control": "max-age=0"})
    client = make_client(server, clock, cache_seconds=1, per_minute=5)
    for step in range(2400):  # 10 minutes in 0.25 s steps
        client.get_key("good")
        client.get_key(f"junk-{step}")
        clock.advance(0.25)
    for first in fetch_times:
        assert sum(first <= t < first + 60 for t in fetch_times) <= 5
    assert len(fetch_times) >= 40


def test_flood_of_random_kids_is_rate_limited_and_a_new_key_still_arrives(
    server: RecordingServer,
    clock: FakeClock,
    good_jwk: dict[str, Any],
    other_private_key: RSAPrivateKey,
) -> None:
    per_minute = 5
    spacing = 60 / per_minute
    fetch_times: list[float] = []
    server.on_request = lambda: fetch_times.append(clock.now)
    client = warm_client(server, clock, good_jwk, per_minute=per_minute)
    start = clock.now
    published_at: float | None = None
    accepted_at: float | None = None
    rng = random.Random(7)  # noqa: S311 (reproducible junk kids, not a secret)
    while clock.now < start + 180:
        for _ in range(5):
            kid = "".join(rng.choices(string.ascii_letters, k=16))
            assert client.get_key(kid) is None
        if published_at is None and clock.now >= start + 50:
            server.serve(key_set(good_jwk, jwk_of(other_private_key, "rotated")))
            published_at = clock.now
        if published_at is not None and accepted_at is None and client.get_key("rotated"):
            accepted_at = clock.now
        assert client.get_key("good") is not None
        clock.advance(0.25)
    # At most per_minute fetches in any 60 s window, and the flood did cause refetches.
    for first in fetch_times:
        assert sum(first <= t < first + 60 for t in fetch_times) <= per_minute
    assert len(fetch_times) >= 180 / spacing - 1
    # The key published during the flood was accepted within one spacing interval.
    assert published_at is not None
    assert accepted_at is not None
    assert accepted_at - published_at <= spacing


# --- single flight ---------------------------------------------------------------------------


def test_concurrent_cold_requests_share_one_fetch(
    server: RecordingServer, good_jwk: dict[str, Any]
) -> None:
    server.serve(key_set(good_jwk))
    server.delay = 0.3  # a slow JWKS server, so that all requests overlap the fetch
    # A spacing far below the fetch time: only single flight, not the rate limit, keeps
    # the waiting requests from fetching again.
    client = make_client(server, per_minute=6000)
    barrier = threading.Barrier(30)
    results: list[object] = []

    def request() -> None:
        barrier.wait(WAIT)
        results.append(client.get_key("good"))

    threads = [threading.Thread(target=request) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(results) == 30
    assert all(result is not None for result in results)
    assert server.count == 1


def test_concurrent_cold_requests_share_one_failed_fetch(server: RecordingServer) -> None:
    server.serve(b"oops", status=500)
    server.delay = 0.3
    client = make_client(server)
    barrier = threading.Barrier(30)
    outcomes: list[str] = []

    def request() -> None:
        barrier.wait(WAIT)
        try:
            client.get_key("good")
            outcomes.append("key")
        except KeysUnavailable:
            outcomes.append("unavailable")

    threads = [threading.Thread(target=request) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert outcomes == ["unavailable"] * 30
    assert server.count == 1


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_cached_key_does_not_wait_for_a_slow_fetch(
    server: RecordingServer, clock: FakeClock, good_jwk: dict[str, Any], stale: bool
) -> None:
    client = warm_client(server, clock, good_jwk, per_minute=60)
    clock.advance(601 if stale else 2)
    server.gate = threading.Event()  # the next fetch hangs until the test releases it
    fetching, _ = _in_thread(lambda: client.get_key("unknown"))
    server.wait_for_requests(2)
    cached, result = _in_thread(lambda: client.get_key("good"))
    cached.join(WAIT / 2)  # the hanging fetch lasts up to 5 s (FETCH_TIMEOUT), then WAIT
    finished_while_fetch_in_flight = not cached.is_alive() and not server.gate.is_set()
    server.gate.set()
    fetching.join(WAIT)
    cached.join(WAIT)
    assert finished_while_fetch_in_flight
    assert result and result[0] is not None
    assert server.count == 2


# --- failed fetches ------------------------------------------------------------------------


def test_fetch_times_out(server: RecordingServer, monkeypatch: pytest.MonkeyPatch,
                         good_jwk: dict[str, Any]) -> None:  # fmt: skip
    assert jwks_client.FETCH_TIMEOUT == 5  # SPEC: a fetch times out after 5 s
    monkeypatch.setattr(jwks_client, "FETCH_TIMEOUT", 0.3)
    server.serve(key_set(good_jwk))
    server.gate = threading.Event()  # the server never answers in time
    client = make_client(server)
    with pytest.raises(KeysUnavailable):
        client.get_key("good")
    assert server.count == 1


@pytest.mark.parametrize("part", ["body", "headers"])
def test_dripping_server_is_cut_at_the_fetch_deadline(
    server: RecordingServer, monkeypatch: pytest.MonkeyPatch, good_jwk: dict[str, Any], part: str
) -> None:
    """Each byte (or header line) arrives well within the socket timeout; the whole fetch
    must not take longer than FETCH_TIMEOUT."""
    monkeypatch.setattr(jwks_client, "FETCH_TIMEOUT", 0.3)
    server.serve(key_set(good_jwk))
    if part == "body":
        server.drip = True
    else:
        server.drip_headers = True
    client = make_client(server)
    outcome: list[str] = []

    def request() -> None:
        try:
            client.get_key("good")
            outcome.append("key")
        except KeysUnavailable:
            outcome.append("unavailable")

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    thread.join(3.0)  # ten times the (patched) 0.3 s deadline
    gave_up_in_time = not thread.is_alive()
    server.stopping.set()  # end the drip, so that the thread ends either way
    thread.join(WAIT)
    assert gave_up_in_time, f"a server dripping its {part} holds the fetch past FETCH_TIMEOUT"
    assert outcome == ["unavailable"]


def test_body_over_the_cap_is_a_failed_fetch(
    server: RecordingServer, good_jwk: dict[str, Any]
) -> None:
    def padded(size: int) -> bytes:
        base = key_set(good_jwk)
        return base[:-1] + b', "pad": "' + b"x" * (size - len(base) - 11) + b'"}'

    client = make_client(server, per_minute=6000)
    server.serve(padded(MAX_JWKS_BYTES + 1))
    assert len(server.answer.body) == MAX_JWKS_BYTES + 1
    with pytest.raises(KeysUnavailable):
        client.get_key("good")
    server.serve(padded(MAX_JWKS_BYTES - 1000))
    key = _get_after_spacing(client, "good", time.monotonic() + WAIT)
    assert key is not None


def _get_after_spacing(client: JwksClient, kid: str, deadline: float) -> object:
    """get_key, retried while the fetch spacing (real clock, short) has not passed."""
    while True:
        try:
            return client.get_key(kid)
        except KeysUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.005)


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (200, b"<!doctype html><html><body>JWKS</body></html>", "text/html"),
        (500, b"__KEYSET__", "application/json"),
        (404, b"__KEYSET__", "application/json"),
        (200, b"", "application/json"),
        (200, b"not json at all", "application/json"),
        (200, b"\xff\xfe{}", "application/json"),
        (200, b"[]", "application/json"),
        (200, b"null", "application/json"),
        (200, b'{"keys": {}}', "application/json"),
        (200, b'{"key": []}', "application/json"),
        (200, b'"keys"', "application/json"),
        (200, b"[" * 100_000, "application/json"),
    ],
    ids=[
        "html", "500-with-key-set", "404-with-key-set", "empty", "not-json", "not-utf8",
        "array", "null", "keys-not-list", "no-keys-member", "string", "deeply-nested",
    ],
)  # fmt: skip
def test_bad_responses_are_failed_fetches(
    server: RecordingServer,
    good_jwk: dict[str, Any],
    status: int,
    body: bytes,
    content_type: str,
) -> None:
    body = body.replace(b"__KEYSET__", key_set(good_jwk))
    server.serve(body, status=status, headers={"Content-Type": content_type})
    client = make_client(server)
    with pytest.raises(KeysUnavailable) as raised:
        client.get_key("good")
    assert raised.value.retry_after >= 1
    assert server.count == 1


def test_empty_key_set_is_a_successful_fetch_without_keys(server: RecordingServer) -> None:
    server.serve(b'{"keys": []}')
    assert make_client(server).get_key("good") is None


def test_unreachable_server_is_unavailable_with_retry_after() -> None:
    client = JwksClient(f"http://127.0.0.1:{free_port()}/keys", 600, 5)
    with pytest.raises(KeysUnavailable) as raised:
        client.get_key("good")
    assert 1 <= raised.value.retry_after <= 12


def test_redirects_are_not_followed(server: RecordingServer, good_jwk: dict[str, Any]) -> None:
    moved = server.uri.replace("/keys", "/moved")
    server.serve(key_set(good_jwk), status=302, headers={"Location": moved})
    client = make_client(server)
    with pytest.raises(KeysUnavailable):
        client.get_key("good")
    assert server.paths() == ["/keys"]


def test_user_agent_is_the_projects_own(server: RecordingServer, good_jwk: dict[str, Any]) -> None:
    server.serve(key_set(good_jwk))
    assert make_client(server).get_key("good") is not None
    [(_, headers)] = server.requests
    agent = headers.get("User-Agent", "")
    assert agent == jwks_client.USER_AGENT
    assert agent.startswith("jwt-guide")
    assert "python-requests" not in agent


# --- filtering -----------------------------------------------------------------------------


@pytest.fixture
def mixed_document(
    private_key: RSAPrivateKey, other_private_key: RSAPrivateKey, small_key: RSAPrivateKey
) -> dict[str, Any]:
    private_numbers = other_private_key.private_numbers()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_jwk: dict[str, Any] = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    ec_jwk.update({"kid": "ec", "use": "sig"})
    return {
        "keys": [
            jwk_of(private_key, "good"),
            jwk_of(other_private_key, "no-use-no-alg", use=None, alg=None),
            jwk_of(other_private_key, "private", d=str(private_numbers.d)),
            jwk_of(other_private_key, "private-p", p="AQAB", q="AQAB"),
            jwk_of(private_key, "dup"),
            jwk_of(other_private_key, "dup"),
            jwk_of(other_private_key, "enc", use="enc"),
            jwk_of(other_private_key, "rs512", alg="RS512"),
            jwk_of(other_private_key, "ps256", alg="PS256"),
            jwk_of(small_key, "small"),
            ec_jwk,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            jwk_of(other_private_key, "verify-not-allowed", key_ops=["encrypt"]),
            jwk_of(other_private_key, "", use="sig"),
            {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
            {"kty": "RSA", "kid": "bad-n", "n": "!!!", "e": "AQAB"},
            "not an object",
            jwk_of(other_private_key, 42),
        ]
    }


# Each bound to one algorithm: the JWK's alg, else the default of its type (never PS256).
ACCEPTED = {"good": "RS256", "no-use-no-alg": "RS256", "ps256": "PS256", "ec": "ES256"}
REFUSED = [
    "private", "private-p", "dup", "enc", "rs512", "small", "hmac",
    "verify-not-allowed", "", "no-n", "bad-n", "42",
]  # fmt: skip


def test_parse_key_set_keeps_only_public_signing_keys_of_the_table(
    mixed_document: dict[str, Any], private_key: RSAPrivateKey
) -> None:
    keys = parse_key_set(mixed_document)
    assert {kid: key.alg for kid, key in keys.items()} == ACCEPTED
    good = keys["good"].key
    assert isinstance(good, rsa.RSAPublicKey)
    assert good.public_numbers() == private_key.public_key().public_numbers()


@pytest.mark.parametrize("document", [None, [], "keys", {"keys": None}, {"keys": {}}, {}], ids=repr)
def test_parse_key_set_refuses_what_is_not_a_key_set(document: Any) -> None:
    with pytest.raises(FetchError):
        parse_key_set(document)


def test_unusable_keys_are_filtered_from_a_real_fetch(
    server: RecordingServer, mixed_document: dict[str, Any]
) -> None:
    server.serve(json.dumps(mixed_document).encode())
    client = make_client(server)
    for kid in ACCEPTED:
        assert client.get_key(kid) is not None
    for kid in REFUSED:
        assert client.get_key(kid) is None, kid
    # Refused kids count as unknown: the first refetches (the cold fetch does not start the
    # spacing), the others wait for the spacing.
    assert server.count == 2


# --- outages -------------------------------------------------------------------------------


def test_stale_keys_keep_verifying_while_the_server_fails(
    server: RecordingServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    client = warm_client(server, clock, good_jwk, cache_seconds=600)
    server.serve(b"<html>down for maintenance</html>", status=503)
    clock.advance(601)
    assert client.get_key("good") is not None
    assert server.count == 2  # it did try
    clock.advance(STALE_IF_ERROR_SECONDS - 100)
    assert client.get_key("good") is not None
    # Bounded: past the stale-if-error window the old keys are no longer used.
    clock.advance(200)
    with pytest.raises(KeysUnavailable):
        client.get_key("good")


def test_stale_keys_survive_a_stopped_server(
    server: RecordingServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    client = warm_client(server, clock, good_jwk)
    server.stop()
    clock.advance(700)
    assert client.get_key("good") is not None
    assert client.get_key("unknown") is None


def test_recovers_about_one_second_after_a_failed_fetch(
    server: RecordingServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    """Envoy's failed_refetch_duration: the first retry about 1 s after a failure, not after
    the 12 s spacing of 5 fetches a minute."""
    server.serve(b"", status=502)
    client = make_client(server, clock, per_minute=5)
    with pytest.raises(KeysUnavailable) as raised:
        client.get_key("good")
    assert raised.value.retry_after == 1
    server.serve(key_set(good_jwk))
    clock.advance(FIRST_RETRY_SECONDS * (1 - RETRY_JITTER) - 0.01)
    with pytest.raises(KeysUnavailable) as again:  # not before the retry delay has passed
        client.get_key("good")
    assert again.value.retry_after == 1
    assert server.count == 1
    clock.advance(RETRY_JITTER * FIRST_RETRY_SECONDS + 0.01)
    assert client.get_key("good") is not None
    assert server.count == 2


def _fetch_times_while_failing(
    server: RecordingServer, clock: FakeClock, seed: int, seconds: float, step: float = 0.05
) -> tuple[list[float], list[tuple[float, int]]]:
    """Ask a client for a key every ``step`` s of fake time while the server fails: the
    times of its fetches and, for each refusal, (time, Retry-After)."""
    fetch_times: list[float] = []
    server.on_request = lambda: fetch_times.append(clock.now)
    server.serve(b"down", status=503)
    client = JwksClient(server.uri, 600, 5, clock=clock, rng=random.Random(seed))  # noqa: S311
    refusals: list[tuple[float, int]] = []
    end = clock.now + seconds
    while clock.now < end:
        try:
            client.get_key("good")
        except KeysUnavailable as e:
            refusals.append((clock.now, e.retry_after))
        clock.advance(step)
    return fetch_times, refusals


@pytest.mark.parametrize("seed", range(5))
def test_retries_back_off_within_the_allowance_and_retry_after_is_the_next_attempt(
    server: RecordingServer, clock: FakeClock, seed: int
) -> None:
    step = 0.05
    fetch_times, refusals = _fetch_times_while_failing(server, clock, seed, 600, step)
    for first in fetch_times:  # never more than 5 in any 60 s
        assert sum(first <= t < first + 60 for t in fetch_times) <= 5
    gaps = [b - a for a, b in itertools.pairwise(fetch_times)]
    # Exponential from about 1 s (with jitter: up to a quarter shorter), up to the spacing.
    for doubling, gap in enumerate(gaps[:4]):
        delay = min(FIRST_RETRY_SECONDS * 2**doubling, 12)
        assert delay * (1 - RETRY_JITTER) - 1e-6 <= gap <= delay + step + 1e-6, gaps
    assert len(fetch_times) >= 50  # 5 a minute for 10 minutes, give or take the first one
    # Each 503's Retry-After, rounded up to whole seconds, is when the next fetch happened.
    for at, retry_after in refusals:
        if at >= fetch_times[-1]:
            break  # the run ended before that next fetch
        next_fetch = min(t for t in fetch_times if t > at)
        assert at + retry_after - 1 < next_fetch <= at + retry_after + step + 1e-6


@pytest.mark.parametrize("down_seconds", [1, 5, 20, 300])
def test_a_server_that_could_not_be_reached_is_used_within_2_s_of_coming_back(
    clock: FakeClock, good_jwk: dict[str, Any], down_seconds: float
) -> None:
    """Attempts that could not connect cost the JWKS server nothing: they do not use up the
    allowance, so a long outage does not leave the client waiting for it afterwards."""
    attempts: list[float] = []
    up_at = clock.now + down_seconds

    def fetch(uri: str) -> tuple[Any, float | None]:
        attempts.append(clock.now)
        if clock.now < up_at:
            raise FetchError(f"cannot fetch {uri}: ConnectionError", unreached=True)
        return {"keys": [good_jwk]}, None

    client = JwksClient("http://127.0.0.1:1/keys", 600, 5, fetch=fetch, clock=clock)
    step = 0.05
    retry_afters: set[int] = set()
    while True:
        try:
            if client.get_key("good") is not None:
                break
        except KeysUnavailable as e:
            retry_afters.add(e.retry_after)
        clock.advance(step)
    assert retry_afters <= {1, 2}
    assert clock.now - up_at <= 2 + step
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap <= 2 + step for gap in gaps), gaps
    if down_seconds >= 20:  # backing off all the same: about one attempt every 2 s
        assert len(attempts) <= down_seconds / (2 * (1 - RETRY_JITTER)) + 3


def test_refused_connections_are_marked_unreached() -> None:
    with pytest.raises(FetchError) as refused:
        jwks_client.http_fetch(f"http://127.0.0.1:{free_port()}/keys")
    assert refused.value.unreached


def test_an_error_answer_counts_against_the_allowance(server: RecordingServer) -> None:
    server.serve(b"", status=500)
    with pytest.raises(FetchError) as answered:
        jwks_client.http_fetch(server.uri)
    assert not answered.value.unreached


def test_retry_delays_are_jittered(server: RecordingServer) -> None:
    delays = set()
    for seed in range(8):
        clock = FakeClock()
        fetch_times, _ = _fetch_times_while_failing(server, clock, seed, 3, step=0.001)
        delays.add(round(fetch_times[1] - fetch_times[0], 3))
        server.requests.clear()
    assert len(delays) > 1
    assert all(0.749 <= d <= 1.001 for d in delays), delays


def test_success_after_failures_starts_the_backoff_again(
    server: RecordingServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    server.serve(b"", status=500)
    rng = random.Random(3)  # noqa: S311 (reproducible jitter)
    client = JwksClient(server.uri, 600, 60, clock=clock, rng=rng)  # spacing: 1 s
    for _ in range(3):
        with pytest.raises(KeysUnavailable):
            client.get_key("good")
        clock.advance(1.0)
    server.serve(key_set(good_jwk))
    assert client.get_key("good") is not None
    server.serve(b"", status=500)
    clock.advance(601)  # the cache expires; the key stays usable (stale-if-error)
    assert client.get_key("good") is not None
    assert client.retry_after() == 1


def test_real_clock_refetch_with_high_rate(
    server: RecordingServer, good_jwk: dict[str, Any], other_private_key: RSAPrivateKey
) -> None:
    """Without an injected clock: a key published later is found after a short real wait."""
    server.serve(key_set(good_jwk))
    client = make_client(server, per_minute=600)  # 0.1 s spacing
    assert client.get_key("good") is not None
    assert client.get_key("later") is None
    server.serve(key_set(good_jwk, jwk_of(other_private_key, "later")))
    deadline = time.monotonic() + WAIT
    while client.get_key("later") is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert server.count <= 2 + WAIT / 0.1


# --- malformed entries are skipped, the rest of the set keeps working -----------------------

STRING_MEMBERS = ["kty", "kid", "use", "alg", "n", "e", "x5u", "x5t", "x5t#S256", "crv", "x", "y"]
WRONG_FOR_STRING: dict[str, Any] = {
    "null": None, "number": 42, "float": 1.5, "list": ["RSA"], "object": {"a": "b"}, "bool": True,
}  # fmt: skip
WRONG_FOR_LIST: dict[str, Any] = {
    "null": None, "number": 42, "string": "verify", "object": {"verify": True}, "bool": False,
    "list-of-numbers": [1], "list-with-null": ["verify", None],
}  # fmt: skip
MALFORMED: list[tuple[str, Any]] = [
    *((member, value) for member in STRING_MEMBERS for value in WRONG_FOR_STRING.values()),
    *(("key_ops", value) for value in WRONG_FOR_LIST.values()),
    ("key_ops", ["verify", "verify"]),  # RFC 7517 4.3: no duplicates
    *(("x5c", value) for value in WRONG_FOR_LIST.values()),
    ("x5c", []),  # RFC 7517 4.7: one or more certificates
    *(("ext", value) for value in (None, 1, "true", [True], {"a": True})),
]
MALFORMED_IDS = [
    *(f"{member}-{kind}" for member in STRING_MEMBERS for kind in WRONG_FOR_STRING),
    *(f"key_ops-{kind}" for kind in WRONG_FOR_LIST),
    "key_ops-duplicates",
    *(f"x5c-{kind}" for kind in WRONG_FOR_LIST),
    "x5c-empty",
    *(f"ext-{kind}" for kind in ("null", "number", "string", "list", "object")),
]


@pytest.mark.parametrize(("member", "value"), MALFORMED, ids=MALFORMED_IDS)
def test_entry_with_a_member_of_the_wrong_type_is_skipped(
    private_key: RSAPrivateKey,
    other_private_key: RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
    member: str,
    value: Any,
) -> None:
    """Like PyJWT's PyJWKSet: the malformed entry is skipped, never an exception (a key_ops
    of null was a TypeError: a 500 for every request that needed a fetch)."""
    bad = jwk_of(other_private_key, "bad")
    bad[member] = value
    document = {"keys": [bad, jwk_of(private_key, "good")]}
    with caplog.at_level(logging.WARNING, logger="jwks_client"):
        keys = parse_key_set(document)
    assert set(keys) == {"good"}
    if member != "kid":
        assert "'bad'" in caplog.text
        assert member in caplog.text


@pytest.mark.parametrize(
    ("member", "value"),
    [("x5c", ["MIIB"]), ("key_ops", ["verify", "sign"]), ("ext", True), ("x5t", "abc"),
     ("custom", None), ("revoked", {"reason": 1}), ("key_ops", ["verify"])],
    ids=["x5c", "key_ops", "ext", "x5t", "unregistered-null", "unregistered-object",
         "key_ops-verify"],
)  # fmt: skip
def test_members_of_the_right_type_and_unregistered_members_are_accepted(
    private_key: RSAPrivateKey, member: str, value: Any
) -> None:
    good = jwk_of(private_key, "good")
    good[member] = value
    assert set(parse_key_set({"keys": [good]})) == {"good"}


def test_malformed_entry_is_no_outage(
    server: RecordingServer, private_key: RSAPrivateKey, other_private_key: RSAPrivateKey
) -> None:
    """Through a real fetch, an entry with key_ops null leaves the other keys working."""
    bad = jwk_of(other_private_key, "bad", key_ops=None)
    bad["key_ops"] = None  # jwk_of drops None members
    server.serve(key_set(bad, jwk_of(private_key, "good")))
    client = make_client(server)
    assert client.get_key("good") is not None
    assert client.get_key("bad") is None


def test_skipped_entries_are_logged_in_one_escaped_line(
    private_key: RSAPrivateKey, other_private_key: RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    many = [jwk_of(other_private_key, f"bad-{i}\x1b[31m", x5c=7) for i in range(50)]
    with caplog.at_level(logging.WARNING, logger="jwks_client"):
        keys = parse_key_set({"keys": [*many, jwk_of(private_key, "good")]})
    assert set(keys) == {"good"}
    [record] = caplog.records
    message = record.getMessage()
    assert "skipped 50" in message
    assert "\x1b" not in message
    assert "45 more" in message


# --- RSA numbers: BoringSSL's limits ---------------------------------------------------------


def _odd_number(bits: int) -> int:
    rng = random.Random(bits)  # noqa: S311 (reproducible numbers, not a key)
    return rng.getrandbits(bits) | (1 << (bits - 1)) | 1


def _rsa_jwk(kid: str, n: int, e: int) -> dict[str, Any]:
    def b64(number: int) -> str:
        return base64url_encode(number.to_bytes((number.bit_length() + 7) // 8, "big")).decode()

    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(n), "e": b64(e)}


RSA_NUMBERS: list[tuple[str, Callable[[int], tuple[int, int]], bool]] = [
    ("exponent-3071-bits", lambda n: (_odd_number(3072), 2**3070 + 1), False),
    ("exponent-34-bits", lambda n: (n, 2**33 + 1), False),
    ("exponent-33-bits", lambda n: (n, 2**32 + 1), True),
    ("exponent-3", lambda n: (n, 3), True),
    ("exponent-1", lambda n: (n, 1), False),
    ("exponent-even", lambda n: (n, 65536), False),
    ("modulus-even", lambda n: (n + 1, 65537), False),
    ("modulus-16384-bits", lambda n: (_odd_number(16384), 65537), True),
    ("modulus-16385-bits", lambda n: (_odd_number(16385), 65537), False),
    ("modulus-2047-bits", lambda n: (_odd_number(2047), 65537), False),
    ("modulus-2048-bits", lambda n: (_odd_number(2048), 65537), True),
]


@pytest.mark.parametrize(
    ("name", "numbers", "accepted"), RSA_NUMBERS, ids=[r[0] for r in RSA_NUMBERS]
)
def test_rsa_numbers_outside_boringssl_limits_are_refused(
    private_key: RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
    name: str,
    numbers: Callable[[int], tuple[int, int]],
    accepted: bool,
) -> None:
    n, e = numbers(private_key.public_key().public_numbers().n)
    document = {"keys": [_rsa_jwk("tested", n, e), jwk_of(private_key, "good")]}
    with caplog.at_level(logging.WARNING, logger="jwks_client"):
        keys = parse_key_set(document)
    assert set(keys) == ({"tested", "good"} if accepted else {"good"})
    assert ("'tested'" in caplog.text) is not accepted


# --- a key replaced under the same kid -------------------------------------------------------


def test_refresh_key_finds_a_key_replaced_under_the_same_kid(
    server: RecordingServer,
    clock: FakeClock,
    private_key: RSAPrivateKey,
    other_private_key: RSAPrivateKey,
) -> None:
    client = warm_client(server, clock, jwk_of(private_key, "k"))  # 5 a minute: spacing 12 s
    old = client.get_key("k")
    assert old is not None
    clock.advance(1)
    server.serve(key_set(jwk_of(other_private_key, "k")))  # gen.py --force
    new = client.refresh_key(old)
    assert new is not None and new != old
    assert isinstance(new.key, rsa.RSAPublicKey)
    assert new.key.public_numbers() == other_private_key.public_key().public_numbers()
    assert server.count == 2
    assert client.get_key("k") == new
    # The refetch started the spacing, as an unknown kid does: no fetch for 12 s.
    server.serve(key_set(jwk_of(private_key, "k")))
    clock.advance(11)
    assert client.refresh_key(new) == new
    assert server.count == 2
    clock.advance(1.01)
    assert client.refresh_key(new) == old
    assert server.count == 3


def test_refresh_key_when_the_kid_is_gone_or_the_fetch_fails(
    server: RecordingServer,
    clock: FakeClock,
    private_key: RSAPrivateKey,
    other_private_key: RSAPrivateKey,
) -> None:
    client = warm_client(server, clock, jwk_of(private_key, "k"), per_minute=60)
    old = client.get_key("k")
    assert old is not None
    server.serve(b"", status=500)
    assert client.refresh_key(old) == old  # the fetch failed: the cached key stays
    clock.advance(1)
    server.serve(key_set(jwk_of(other_private_key, "other")))
    assert client.refresh_key(old) is None
    assert server.count == 3


def test_refresh_key_uses_a_key_set_another_request_just_fetched(
    server: RecordingServer,
    clock: FakeClock,
    private_key: RSAPrivateKey,
    other_private_key: RSAPrivateKey,
) -> None:
    client = warm_client(server, clock, jwk_of(private_key, "k"))
    old = client.get_key("k")
    assert old is not None
    server.serve(key_set(jwk_of(other_private_key, "k")))
    clock.advance(1)
    new = client.refresh_key(old)
    assert new is not None and new != old
    assert client.refresh_key(old) == new  # a request that still held the old key
    assert server.count == 2


# --- credentials and proxies from the environment --------------------------------------------

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_proxy_env")
def test_netrc_credentials_are_never_sent(
    server: RecordingServer, good_jwk: dict[str, Any], netrc_home: str
) -> None:
    """requests' trust_env would send ~/.netrc's login for the JWKS host as Basic auth."""
    server.serve(key_set(good_jwk))
    assert make_client(server).get_key("good") is not None
    [(_, headers)] = server.requests
    assert "Authorization" not in headers
    assert netrc_home not in json.dumps(headers)


@pytest.mark.usefixtures("no_proxy_env")
def test_proxy_from_the_environment_is_used(
    server: RecordingServer, good_jwk: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is still honoured (the counting server plays the proxy)."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    server.serve(key_set(good_jwk))
    client = JwksClient("http://jwks.invalid/keys", 600, 5)
    assert client.get_key("good") is not None
    assert server.paths() == ["http://jwks.invalid/keys"]


@pytest.mark.usefixtures("no_proxy_env")
def test_no_proxy_from_the_environment_is_honoured(
    server: RecordingServer, good_jwk: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server.serve(key_set(good_jwk))
    assert make_client(server).get_key("good") is not None
    assert server.paths() == ["/keys"]


# --- keys of every algorithm (read by jwt_guide.algorithms.key_from_jwk) -----------------------


def _b64(data: bytes) -> str:
    return base64url_encode(data).decode()


def test_ec_and_okp_entries_off_the_table_are_skipped_the_rest_works(
    private_key: RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed or unsafe entries are warnings; keys for something else only debug lines;
    the rest of the set is used, each key bound to its algorithm."""
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    good_ec = {**ECAlgorithm.to_jwk(p256, as_dict=True), "kid": "ec"}
    off_curve = {**good_ec, "kid": "off-curve", "y": _b64(bytes(31) + b"\x01")}
    p384 = {**ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(),
                                 as_dict=True), "kid": "p384", "alg": "ES256"}  # fmt: skip
    p384_no_alg = {**p384, "kid": "p384-no-alg"}
    del p384_no_alg["alg"]
    k1 = {**ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256K1()).public_key(),
                               as_dict=True), "kid": "k1"}  # fmt: skip
    ed448 = {"kty": "OKP", "crv": "Ed448", "x": _b64(bytes(57)), "kid": "ed448", "alg": "EdDSA"}
    x25519 = {"kty": "OKP", "crv": "X25519", "x": _b64(bytes(32)), "kid": "x25519"}
    ed_short = {"kty": "OKP", "crv": "Ed25519", "x": _b64(bytes(31)), "kid": "ed-short"}
    rsa_as_es256 = jwk_of(private_key, "rsa-es256", alg="ES256")
    document = {"keys": [off_curve, p384, p384_no_alg, k1, ed448, x25519, ed_short,
                         rsa_as_es256, good_ec, jwk_of(private_key, "good")]}  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="jwt_guide.jwks_client"):
        keys = parse_key_set(document)
    assert {kid: key.alg for kid, key in keys.items()} == {"ec": "ES256", "good": "RS256"}
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped 4 key(s)" in warning
    for kid in ("off-curve", "p384", "ed-short", "rsa-es256"):
        assert f"kid {kid!r}" in warning
    assert "not on the P-256 curve" in warning and "does not fit" in warning
    debug = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    for kid in ("p384-no-alg", "k1", "ed448", "x25519"):
        assert f"kid {kid!r}" in debug
