"""make_request.py, step 4.c: the Bearer call, its answers, and an unreachable server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

import make_request
from tests.helpers import assert_clean_error, error_line, free_port

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJ1c2VySWQiOiJhLWItYy1kIn0.c2lnbmF0dXJl"


@dataclass
class FakeBackend:
    """A tiny HTTP server on 127.0.0.1 that answers every GET with ``status`` and ``body``."""

    url: str
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    seen: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, status: int, body: str | dict[str, Any], content_type: str = "") -> None:
        self.status = status
        if isinstance(body, dict):
            self.body, self.content_type = json.dumps(body).encode(), "application/json"
        else:
            self.body, self.content_type = body.encode(), content_type or "text/plain"


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBackend]:
    """A FakeBackend set as PROTECTED_URL, with token.txt holding TOKEN."""
    holder: list[FakeBackend] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake = holder[0]
            fake.seen.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
            self.send_response(fake.status)
            self.send_header("Content-Type", fake.content_type)
            self.send_header("Content-Length", str(len(fake.body)))
            self.end_headers()
            self.wfile.write(fake.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    port = server.server_address[1]
    fake = FakeBackend(f"http://127.0.0.1:{port}/with-auth")
    holder.append(fake)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "token.txt").write_text(TOKEN + "\n")
    monkeypatch.setenv("JWT_KEYS_DIR", str(keys))
    monkeypatch.setenv("PROTECTED_URL", fake.url)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, 'Result: {"userId":"a-b-c-d","iss":"my-issuer-name"}'), (201, "created"),
     (299, "odd but fine")],
    ids=["200", "201", "299"],
)  # fmt: skip
def test_success_prints_the_body(
    status: int, body: str, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.answer(status, body)
    assert make_request.main([]) == 0
    captured = capsys.readouterr()
    assert captured.out == body + "\n"
    assert captured.err == ""


def test_sends_the_token_as_bearer(
    backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.answer(200, "ok")
    assert make_request.main([]) == 0
    assert len(backend.seen) == 1
    request = backend.seen[0]
    assert request["method"] == "GET"
    assert request["path"] == "/with-auth"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"


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
    backend: FakeBackend,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend.answer(status, body)
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
    assert make_request.main([]) == 1
    captured = capsys.readouterr()
    line = error_line(captured.err)
    assert line.startswith("make_request: ")
    assert url in line
    assert "protected_server.py" in line
    assert captured.out == ""


def test_every_call_has_a_timeout(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    def timing_out_get(url: str, **kwargs: Any) -> requests.Response:
        calls.append({"url": url, **kwargs})
        raise requests.ReadTimeout("read timed out")

    monkeypatch.setattr(requests, "get", timing_out_get)
    assert make_request.main([]) == 1
    assert len(calls) == 1
    timeout = calls[0].get("timeout")
    assert timeout is not None
    values = timeout if isinstance(timeout, tuple) else (timeout,)
    assert all(isinstance(v, int | float) and 0 < v <= 60 for v in values)
    line = error_line(capsys.readouterr().err)
    assert backend.url in line


def test_missing_token(
    backend: FakeBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_path = tmp_path / "keys" / "token.txt"
    token_path.unlink()
    assert make_request.main([]) == 2
    captured = capsys.readouterr()
    line = error_line(captured.err)
    assert str(token_path) in line
    assert line.endswith("run sign.py first")
    assert captured.out == ""
    assert backend.seen == []


def test_unexpected_argument(backend: FakeBackend, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        make_request.main(["--bogus"])
    assert exited.value.code == 2
    error_line(capsys.readouterr().err)
    assert backend.seen == []


def test_help_works_with_no_keys(empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        make_request.main(["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: make_request.py")
    assert not empty_keys_dir.exists()


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


