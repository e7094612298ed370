"""jwt_guide.http.errors: JSON errors, the RFC 6750 answers, the Bearer header."""

from __future__ import annotations

import pytest
from werkzeug.test import Client

from jwt_guide.errors import InvalidToken, KeysUnavailable
from jwt_guide.http.errors import ApiError, bearer_token, invalid_token, refusal


def test_an_api_error_answers_as_a_wsgi_app_in_json() -> None:
    answer = Client(invalid_token("expired: exp passed 1s ago")).get("/")
    assert answer.status_code == 401
    assert answer.json == {"error": "invalid_token",
                           "error_description": "expired: exp passed 1s ago"}  # fmt: skip
    assert answer.headers.getlist("WWW-Authenticate") == [
        'Bearer realm="protected", error="invalid_token", '
        'error_description="expired: exp passed 1s ago"'
    ]


def test_the_challenge_holds_only_safe_ascii_and_bounded_text() -> None:
    challenge = dict(invalid_token('bad "kid" \\ é\r\n' + "x" * 500).extra_headers)
    value = challenge["WWW-Authenticate"]
    assert value.isascii() and "\r" not in value and "\\" not in value
    assert value.count('"') == 6  # realm, error, error_description: no quote from the token
    assert len(value) < 300


def test_refusal_of_each_verifier_error() -> None:
    assert refusal(InvalidToken("expired")).code == 401
    unavailable = refusal(KeysUnavailable(7))
    assert (unavailable.code, unavailable.error) == (503, "temporarily_unavailable")
    assert dict(unavailable.extra_headers) == {"Retry-After": "7"}


@pytest.mark.parametrize(
    ("header", "result"),
    [("Bearer abc", "abc"), ("bEaReR  abc ", "abc"), (None, 401), ("", 401), ("Basic x", 401),
     ("Bearer", 400), ("Bearer a b", 400)],
)  # fmt: skip
def test_bearer_token(header: str | None, result: str | int) -> None:
    if isinstance(result, str):
        assert bearer_token(header) == result
        return
    with pytest.raises(ApiError) as refused:
        bearer_token(header)
    assert refused.value.code == result
