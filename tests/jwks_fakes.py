"""Fakes for the JWKS client's tests: a counting JWKS server on 127.0.0.1, a hand-moved clock.

Shared by tests/test_jwks_client.py and tests/test_protected_server.py.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm

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
