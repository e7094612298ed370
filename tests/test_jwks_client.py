"""JwksClient and parse_key_set against a real HTTP server on 127.0.0.1 that counts requests.

The client's clock is injected wherever the cache or the fetch spacing is tested, so those
tests advance time instead of waiting; the HTTP exchanges themselves are real.
"""

from __future__ import annotations

import contextlib
import json
import random
import string
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import jwks_client
from jwks_client import (
    MAX_JWKS_BYTES,
    MIN_CACHE_SECONDS,
    STALE_IF_ERROR_SECONDS,
    FetchError,
    JwksClient,
    JwksUnavailable,
    parse_key_set,
)
from tests.conftest import free_port

WAIT = 10.0  # upper bound for anything that should happen "at once"; never reached when green


def jwk_of(key: Any, kid: Any, **extra: Any) -> dict[str, Any]:
    """The public JWK of an RSA key (private or public) with kid, use and alg."""
    public = key.public_key() if isinstance(key, RSAPrivateKey) else key
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    jwk.update(extra)
    return {k: v for k, v in jwk.items() if v is not None}


def key_set(*jwks: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(jwks)}).encode()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


class _QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print a client hanging up."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class JwksHttpServer:
    """A JWKS server on 127.0.0.1 whose answers the test sets, counting what it is asked."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.delay = 0.0
        self.gate: threading.Event | None = None  # when set, each answer waits for it
        self.drip = False  # headers, then one byte at a time, slowly
        self.drip_headers = False  # one header line at a time, slowly, never ending
        self.stopping = threading.Event()
        self.on_request: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        handler = self._handler()
        self.httpd = _QuietHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/keys"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def paths(self) -> list[str]:
        with self._lock:
            return [path for path, _ in self.requests]

    def serve(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.answer = Answer(status, body, {"Content-Type": "application/json", **(headers or {})})

    def wait_for_requests(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.count < count:
            assert time.monotonic() < deadline, f"only {self.count} requests arrived"
            time.sleep(0.005)

    def stop(self) -> None:
        self.stopping.set()
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(WAIT)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append((self.path, dict(self.headers.items())))
                server.on_request()
                answer = server.answer
                if server.gate is not None:
                    server.gate.wait(WAIT)
                if server.delay:
                    server.stopping.wait(server.delay)
                if server.drip_headers:
                    self._drip_headers()
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if server.drip:
                    self.send_header("Content-Length", str(len(answer.body) + 100_000))
                    self.end_headers()
                    self._drip()
                    return
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # a client that gave up (body cap) hung up
                    self.wfile.write(answer.body)

            def _drip_headers(self) -> None:
                with contextlib.suppress(OSError):
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    # 0.05 s apart: http.client's 100-header limit comes only after 5 s
                    while not server.stopping.wait(0.05):
                        self.wfile.write(b"X-Pad: a\r\n")
                        self.wfile.flush()

            def _drip(self) -> None:
                while not server.stopping.wait(0.02):
                    try:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[JwksHttpServer]:
    httpd = JwksHttpServer()
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
    server: JwksHttpServer,
    clock: FakeClock | None = None,
    cache_seconds: float = 600,
    per_minute: int = 5,
) -> JwksClient:
    if clock is None:
        return JwksClient(server.uri, cache_seconds, per_minute)
    return JwksClient(server.uri, cache_seconds, per_minute, clock=clock)


# --- caching --------------------------------------------------------------------------------


def test_keys_are_cached_for_cache_seconds(
    server: JwksHttpServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    server.serve(key_set(good_jwk))
    client = make_client(server, clock, cache_seconds=600)
    assert client.get_key("good") is not None
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
    server: JwksHttpServer,
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
    server: JwksHttpServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    server.serve(key_set(good_jwk))
    client = make_client(server, clock, per_minute=60)  # spacing: one second
    assert client.get_key("good") is not None
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
    server: JwksHttpServer,
    clock: FakeClock,
    good_jwk: dict[str, Any],
    other_private_key: RSAPrivateKey,
) -> None:
    """A rotation right after the protected server's first fetch: no 401 for the new kid."""
    server.serve(key_set(good_jwk))
    client = make_client(server, clock)  # 5 a minute: spacing 12 s
    assert client.get_key("good") is not None
    clock.advance(2)
    server.serve(key_set(good_jwk, jwk_of(other_private_key, "promoted")))
    assert client.get_key("promoted") is not None
    assert server.count == 2
    assert client.get_key("random-junk") is None  # now the spacing applies
    assert server.count == 2


def test_never_more_than_per_minute_fetches_in_60_s(
    server: JwksHttpServer, clock: FakeClock, good_jwk: dict[str, Any]
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
    server: JwksHttpServer,
    clock: FakeClock,
    good_jwk: dict[str, Any],
    other_private_key: RSAPrivateKey,
) -> None:
    per_minute = 5
    spacing = 60 / per_minute
    fetch_times: list[float] = []
    server.on_request = lambda: fetch_times.append(clock.now)
    server.serve(key_set(good_jwk))
    client = make_client(server, clock, per_minute=per_minute)
    assert client.get_key("good") is not None
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
    server: JwksHttpServer, good_jwk: dict[str, Any]
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


def test_concurrent_cold_requests_share_one_failed_fetch(server: JwksHttpServer) -> None:
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
        except JwksUnavailable:
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
    server: JwksHttpServer, clock: FakeClock, good_jwk: dict[str, Any], stale: bool
) -> None:
    server.serve(key_set(good_jwk))
    client = make_client(server, clock, per_minute=60)
    assert client.get_key("good") is not None
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


def test_fetch_times_out(server: JwksHttpServer, monkeypatch: pytest.MonkeyPatch,
                         good_jwk: dict[str, Any]) -> None:  # fmt: skip
    assert jwks_client.FETCH_TIMEOUT == 5  # SPEC: a fetch times out after 5 s
    monkeypatch.setattr(jwks_client, "FETCH_TIMEOUT", 0.3)
    server.serve(key_set(good_jwk))
    server.gate = threading.Event()  # the server never answers in time
    client = make_client(server)
    with pytest.raises(JwksUnavailable):
        client.get_key("good")
    assert server.count == 1


@pytest.mark.parametrize("part", ["body", "headers"])
def test_dripping_server_is_cut_at_the_fetch_deadline(
    server: JwksHttpServer, monkeypatch: pytest.MonkeyPatch, good_jwk: dict[str, Any], part: str
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
        except JwksUnavailable:
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
    server: JwksHttpServer, good_jwk: dict[str, Any]
) -> None:
    def padded(size: int) -> bytes:
        base = key_set(good_jwk)
        return base[:-1] + b', "pad": "' + b"x" * (size - len(base) - 11) + b'"}'

    client = make_client(server, per_minute=6000)
    server.serve(padded(MAX_JWKS_BYTES + 1))
    assert len(server.answer.body) == MAX_JWKS_BYTES + 1
    with pytest.raises(JwksUnavailable):
        client.get_key("good")
    server.serve(padded(MAX_JWKS_BYTES - 1000))
    key = _get_after_spacing(client, "good", time.monotonic() + WAIT)
    assert key is not None


def _get_after_spacing(client: JwksClient, kid: str, deadline: float) -> object:
    """get_key, retried while the fetch spacing (real clock, short) has not passed."""
    while True:
        try:
            return client.get_key(kid)
        except JwksUnavailable:
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
    server: JwksHttpServer,
    good_jwk: dict[str, Any],
    status: int,
    body: bytes,
    content_type: str,
) -> None:
    body = body.replace(b"__KEYSET__", key_set(good_jwk))
    server.serve(body, status=status, headers={"Content-Type": content_type})
    client = make_client(server)
    with pytest.raises(JwksUnavailable) as raised:
        client.get_key("good")
    assert raised.value.retry_after >= 1
    assert server.count == 1


def test_empty_key_set_is_a_successful_fetch_without_keys(server: JwksHttpServer) -> None:
    server.serve(b'{"keys": []}')
    assert make_client(server).get_key("good") is None


def test_unreachable_server_is_unavailable_with_retry_after() -> None:
    client = JwksClient(f"http://127.0.0.1:{free_port()}/keys", 600, 5)
    with pytest.raises(JwksUnavailable) as raised:
        client.get_key("good")
    assert 1 <= raised.value.retry_after <= 12


def test_redirects_are_not_followed(server: JwksHttpServer, good_jwk: dict[str, Any]) -> None:
    moved = server.uri.replace("/keys", "/moved")
    server.serve(key_set(good_jwk), status=302, headers={"Location": moved})
    client = make_client(server)
    with pytest.raises(JwksUnavailable):
        client.get_key("good")
    assert server.paths() == ["/keys"]


def test_user_agent_is_the_projects_own(server: JwksHttpServer, good_jwk: dict[str, Any]) -> None:
    server.serve(key_set(good_jwk))
    assert make_client(server).get_key("good") is not None
    [(_, headers)] = server.requests
    agent = headers.get("User-Agent", "")
    assert agent == jwks_client.USER_AGENT
    assert agent.startswith("jwt-asymmetric-guide")
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


ACCEPTED = {"good", "no-use-no-alg"}
REFUSED = [
    "private", "private-p", "dup", "enc", "rs512", "ps256", "small", "ec", "hmac",
    "verify-not-allowed", "", "no-n", "bad-n", "42",
]  # fmt: skip


def test_parse_key_set_keeps_only_rs256_public_signing_keys(
    mixed_document: dict[str, Any], private_key: RSAPrivateKey
) -> None:
    keys = parse_key_set(mixed_document)
    assert set(keys) == ACCEPTED
    assert keys["good"].key.public_numbers() == private_key.public_key().public_numbers()


@pytest.mark.parametrize("document", [None, [], "keys", {"keys": None}, {"keys": {}}, {}], ids=repr)
def test_parse_key_set_refuses_what_is_not_a_key_set(document: Any) -> None:
    with pytest.raises(FetchError):
        parse_key_set(document)


def test_unusable_keys_are_filtered_from_a_real_fetch(
    server: JwksHttpServer, mixed_document: dict[str, Any]
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
    server: JwksHttpServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    server.serve(key_set(good_jwk))
    client = make_client(server, clock, cache_seconds=600)
    assert client.get_key("good") is not None
    server.serve(b"<html>down for maintenance</html>", status=503)
    clock.advance(601)
    assert client.get_key("good") is not None
    assert server.count == 2  # it did try
    clock.advance(STALE_IF_ERROR_SECONDS - 100)
    assert client.get_key("good") is not None
    # Bounded: past the stale-if-error window the old keys are no longer used.
    clock.advance(200)
    with pytest.raises(JwksUnavailable):
        client.get_key("good")


def test_stale_keys_survive_a_stopped_server(
    server: JwksHttpServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    server.serve(key_set(good_jwk))
    client = make_client(server, clock)
    assert client.get_key("good") is not None
    server.stop()
    clock.advance(700)
    assert client.get_key("good") is not None
    assert client.get_key("unknown") is None


def test_recovers_once_the_server_answers(
    server: JwksHttpServer, clock: FakeClock, good_jwk: dict[str, Any]
) -> None:
    server.serve(b"", status=502)
    client = make_client(server, clock, per_minute=5)
    with pytest.raises(JwksUnavailable) as raised:
        client.get_key("good")
    assert raised.value.retry_after == 12
    server.serve(key_set(good_jwk))
    clock.advance(5)
    with pytest.raises(JwksUnavailable) as again:  # not before the spacing has passed
        client.get_key("good")
    assert again.value.retry_after == 7
    assert server.count == 1
    clock.advance(7.01)
    assert client.get_key("good") is not None
    assert server.count == 2


def test_real_clock_refetch_with_high_rate(
    server: JwksHttpServer, good_jwk: dict[str, Any], other_private_key: RSAPrivateKey
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
