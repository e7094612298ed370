"""jwt_guide.tokens: the header cache a Verifier owns (the checks themselves are tested
through verify.py, tests/test_verify.py, and against hostile tokens, tests/e2e/test_attacks.py)."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Callable

import pytest

from jwt_guide.errors import InvalidToken
from jwt_guide.tokens import HeaderCache, parse_token
from tests.helpers import b64

CLAIMS = {"userId": "a-b-c-d", "iat": 1, "exp": 2, "iss": "my-issuer-name"}


def _memory_growth(action: Callable[[], None]) -> int:
    """Bytes still allocated after ``action`` that were not before."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        action()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("passing", [False, True], ids=["refused-headers", "passing-headers"])
def test_header_cache_is_bounded_in_bytes(passing: bool) -> None:
    # 600 distinct 6 KB headers once took a worker from 53 to 94 MiB: each was cached before it
    # was checked, and the cache was bounded only by count.
    signature = b64(bytes(512))
    payload = b64(json.dumps(CLAIMS).encode())

    cache = HeaderCache()

    def parse_all() -> None:
        for n in range(600):
            header = {"alg": "RS256" if passing else "none", "kid": f"{n:06}" + "k" * 4400}
            try:
                parse_token(f"{b64(json.dumps(header).encode())}.{payload}.{signature}", cache)
            except InvalidToken:
                assert not passing

    assert _memory_growth(parse_all) < 512 * 1024


def test_header_cache_keeps_only_checked_headers() -> None:
    cache = HeaderCache(max_entries=3, max_bytes=100)
    for n in range(5):
        cache.put(f"h{n}", {})
    assert len(cache) <= 3
    cache.put("x" * 101, {})
    assert cache.get("x" * 101) is None
    for n in range(4):
        cache.put(f"{n}" * 40, {})
    assert cache.bytes <= 100
    assert cache.get("3" * 40) is not None


def test_a_header_is_cached_only_once_it_passed_its_checks() -> None:
    cache = HeaderCache()
    good = b64(json.dumps({"alg": "RS256", "kid": "k"}).encode())
    bad = b64(json.dumps({"alg": "none"}).encode())
    rest = f"{b64(json.dumps(CLAIMS).encode())}.{b64(b'sig')}"
    with pytest.raises(InvalidToken, match="algorithm"):
        parse_token(f"{bad}.{rest}", cache)
    assert len(cache) == 0
    first = parse_token(f"{good}.{rest}", cache)
    assert cache.get(good) is first.header and first.kid == "k"
    assert parse_token(f"{good}.{rest}", cache).header is first.header
    assert parse_token(f"{good}.{rest}").header == first.header  # no cache: decoded again
