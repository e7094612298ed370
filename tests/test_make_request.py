"""make_request.py, step 4.c: the Bearer call, its answers, and an unreachable server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import make_request
from tests.helpers import (
    RecordingServer,
    assert_clean_error,
    error_line,
    free_port,
    refusal,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJ1c2VySWQiOiJhLWItYy1kIn0.c2lnbmF0dXJl"


URL_PATH = "/with-auth"


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingServer]:
    """A recording server set as PROTECTED_URL, with token.txt holding TOKEN."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "token.txt").write_text(TOKEN + "\n")
    with RecordingServer() as server:
        monkeypatch.setenv("JWT_KEYS_DIR", str(keys))
        monkeypatch.setenv("PROTECTED_URL", server.base + URL_PATH)
        yield server


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, 'Result: {"userId":"a-b-c-d","iss":"my-issuer-name"}'), (201, "created"),
     (299, "odd but fine")],
    ids=["200", "201", "299"],
)  # fmt: skip
def test_success_prints_the_body(
    status: int, body: str, backend: RecordingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.serve(body, status)
    assert make_request.main([]) == 0
    captured = capsys.readouterr()
    assert captured.out == body + "\n"
    assert captured.err == ""


def test_sends_the_token_as_bearer(
    backend: RecordingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.serve("ok")
    assert make_request.main([]) == 0
    [(path, headers)] = backend.requests  # a GET: the only method it answers
    assert path == URL_PATH
    assert headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.usefixtures("netrc_home")
def test_netrc_credentials_never_replace_the_bearer_token(backend: RecordingServer) -> None:
    """requests' trust_env would send ~/.netrc's login for the host instead of the token."""
    backend.serve("ok")
    assert make_request.main([]) == 0
    [(_, headers)] = backend.requests
    assert headers["Authorization"] == f"Bearer {TOKEN}"


ERRORS = [
    (401, {"error": "invalid_token", "error_description": "expired: exp passed 5s ago"},
     "HTTP 401: expired: exp passed 5s ago"),
    (400, {"error": "invalid_request", "error_description": "malformed Authorization header"},
     "HTTP 400: malformed Authorization header"),
    (403, {"error": "insufficient_scope", "error_description": "no access"}, "HTTP 403: no access"),
    (503, {"error": "temporarily_unavailable", "error_description": "JWKS unreachable"},
     "HTTP 503: JWKS unreachable"),
    (404, {"error": "not_found", "error_description": "The requested URL was not found"},
     "HTTP 404: The requested URL was not found"),
    (500, "<html>Internal Server Error</html>", "HTTP 500: "),
    (502, '["not", "an", "object"]', "HTTP 502: "),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    ERRORS,
    ids=["401-invalid-token", "400-invalid-request", "403", "503", "404", "500-html",
         "502-json-array"],
)  # fmt: skip
def test_error_answer_is_one_line(
    status: int,
    body: str | dict[str, Any],
    expected: str,
    *,
    backend: RecordingServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend.serve(body, status)
    assert make_request.main([]) == 1
    captured = capsys.readouterr()
    line = error_line(captured.err)
    assert line.startswith("make_request: ")
    assert line.removeprefix("make_request: ").startswith(expected)
    assert len(line) > len("make_request: HTTP 500: ")
    assert captured.out == ""
    assert TOKEN not in captured.err


def test_unreachable_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/with-auth"
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "token.txt").write_text(TOKEN)
    monkeypatch.setenv("JWT_KEYS_DIR", str(keys))
    monkeypatch.setenv("PROTECTED_URL", url)
    line = refusal(make_request.main, [], 1, capsys)
    assert line.startswith("make_request: ")
    assert url in line
    assert "protected_server.py" in line


def test_every_call_has_a_timeout(
    backend: RecordingServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    def timing_out_get(session: requests.Session, url: str, **kwargs: Any) -> requests.Response:
        calls.append({"url": url, **kwargs})
        raise requests.ReadTimeout("read timed out")

    monkeypatch.setattr(requests.Session, "get", timing_out_get)
    assert make_request.main([]) == 1
    assert len(calls) == 1
    timeout = calls[0].get("timeout")
    assert timeout is not None
    values = timeout if isinstance(timeout, tuple) else (timeout,)
    assert all(isinstance(v, int | float) and 0 < v <= 60 for v in values)
    line = error_line(capsys.readouterr().err)
    assert backend.base + URL_PATH in line


def test_missing_token(
    backend: RecordingServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_path = tmp_path / "keys" / "token.txt"
    token_path.unlink()
    line = refusal(make_request.main, [], 2, capsys)
    assert str(token_path) in line
    assert line.endswith("run sign.py first")
    assert backend.requests == []


def test_unexpected_argument(backend: RecordingServer, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        make_request.main(["--bogus"])
    assert exited.value.code == 2
    error_line(capsys.readouterr().err)
    assert backend.requests == []


@pytest.mark.parametrize(
    "content", ["ab€c.d.e", "a b.c.d", "   "], ids=["non-ascii", "space", "blank"]
)
def test_token_file_that_is_no_jwt(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: str,
) -> None:
    (tmp_path / "token.txt").write_text(content, encoding="utf-8")
    monkeypatch.setenv("JWT_KEYS_DIR", str(tmp_path))
    assert make_request.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "run sign.py" in err
    assert_clean_error(err)


