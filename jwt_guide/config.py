"""The configuration: the guide's constants, each overridable by an environment variable.

The Node.js guide keeps its passphrase, key id and issuer in ``config.ts``; here every value
has the guide's default and an environment variable, validated once by ``load_config``. Only
``load_config`` reads the environment, and only when a caller asks it to (a script's
``main``, an app factory, or a ``Verifier``/``Signer`` given no value).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jwt_guide.algorithms import ALGORITHMS, DEFAULT_ALGORITHM
from jwt_guide.errors import UsageError

DEFAULT_PASSPHRASE = "some-secret-phrase"  # noqa: S105 (the guide's public default)
DEFAULT_KID = "my-key-id"
DEFAULT_ISSUER = "my-issuer-name"
DEFAULT_EXPIRES_IN = 24 * 60 * 60
DEFAULT_JWKS_PORT = 3344
DEFAULT_PROTECTED_PORT = 2233
DEFAULT_TOKEN_CACHE_SIZE = 10_000
DEFAULT_GATEWAY_PORT = 8080  # make gateway (nginx in front of several verifier instances)
DEFAULT_GATEWAY_INSTANCES = 2
MAX_TOKEN_AGE = 24 * 60 * 60  # the guide's maxAge: '1d'; every verifier here refuses older tokens

PRIVATE_KEY_FILE = ".private.key"
PUBLIC_KEY_FILE = ".public.key.pem"
TOKEN_FILE = "token.txt"  # noqa: S105 (a file name)

MAX_DURATION = 10 * 365 * 86400
_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Config:
    """Every setting of the project, validated."""

    passphrase: str
    kid: str
    issuer: str
    keys_dir: Path
    expires_in: int
    jwks_port: int
    protected_port: int
    bind_host: str
    jwks_uri: str
    protected_url: str
    jwks_requests_per_minute: int
    jwks_cache_seconds: int
    token_cache_size: int
    server_workers: int
    audience: str | None = None
    alg: str = DEFAULT_ALGORITHM  # the algorithm gen.py binds new keys to
    # Discovery and make gateway: the discovery document's base URL; whether JWKS_URI was set
    # (if not, and the issuer is an http(s) URL, the JWKS URL is read from the issuer's
    # discovery document, see jwt_guide.discovery); nginx's port and the instances behind it.
    public_url: str = f"http://localhost:{DEFAULT_JWKS_PORT}"
    jwks_uri_set: bool = True
    gateway_port: int = DEFAULT_GATEWAY_PORT
    gateway_instances: int = DEFAULT_GATEWAY_INSTANCES

    @property
    def private_key_path(self) -> Path:
        """Path of the current encrypted private key (the guide's ``.private.key``)."""
        return self.keys_dir / PRIVATE_KEY_FILE

    @property
    def public_key_path(self) -> Path:
        """Path of the current public key (the guide's ``.public.key.pem``)."""
        return self.keys_dir / PUBLIC_KEY_FILE

    @property
    def token_path(self) -> Path:
        """Path of the last signed token (the guide's ``token.txt``)."""
        return self.keys_dir / TOKEN_FILE


def parse_duration(text: str) -> int:
    """Parse a lifetime like ``3600``, ``30s``, ``15m``, ``2h``, ``1d`` or ``1 day`` into seconds.

    Raises ValueError when the text is not such a duration or is not positive.
    """
    match = _DURATION.fullmatch(text)
    if not match or match.group(2).lower() not in {"", *_UNITS}:
        raise ValueError(f"{text!r} is not a duration (examples: 3600, 30s, 15m, 2h, 1d, 1 day)")
    try:
        seconds = int(float(match.group(1)) * _UNITS.get(match.group(2).lower(), 1))
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None
    if seconds < 1:
        raise ValueError(f"{text!r} is shorter than one second")
    if seconds > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than 10 years")
    return seconds


def _integer(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise UsageError(f"{name}={value} is out of range ({low} to {high})")
    return value


def _text(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name, default)
    if not value.strip():
        raise UsageError(f"{name} is set but empty: unset it or give it a value")
    if not value.isprintable():  # control characters, or bytes that are not UTF-8
        raise UsageError(f"{name} holds characters that are not printable text")
    return value


def _passphrase(environ: Mapping[str, str]) -> str:
    passphrase = environ.get("JWT_PASSPHRASE", DEFAULT_PASSPHRASE)
    if not passphrase:
        raise UsageError("JWT_PASSPHRASE is empty: the private key needs a passphrase")
    try:
        # Bytes that are not UTF-8 reach os.environ as lone surrogates; encoding them later
        # would raise an error naming the byte and its position, i.e. part of the secret.
        passphrase.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("JWT_PASSPHRASE is not UTF-8 text: set it again in UTF-8") from None
    return passphrase


def load_config(environ: Mapping[str, str] = os.environ) -> Config:
    """Read and validate every setting from ``environ``.

    Raises UsageError, naming the variable, for the first value that is not valid.
    """
    passphrase = _passphrase(environ)
    lifetime = environ.get("JWT_EXPIRES_IN")
    try:
        expires_in = DEFAULT_EXPIRES_IN if lifetime is None else parse_duration(lifetime)
    except ValueError as e:
        raise UsageError(f"JWT_EXPIRES_IN: {e}") from None
    jwks_port = _integer(environ, "JWKS_PORT", DEFAULT_JWKS_PORT, 1, 65535)
    protected_port = _integer(environ, "PROTECTED_PORT", DEFAULT_PROTECTED_PORT, 1, 65535)
    return Config(
        passphrase=passphrase,
        kid=_text(environ, "JWT_KID", DEFAULT_KID),
        issuer=_text(environ, "JWT_ISSUER", DEFAULT_ISSUER),
        # Absolute from the start, so that every message names the folder unambiguously.
        keys_dir=Path(_text(environ, "JWT_KEYS_DIR", "keys")).absolute(),
        expires_in=expires_in,
        jwks_port=jwks_port,
        protected_port=protected_port,
        bind_host=_text(environ, "JWT_BIND_HOST", "127.0.0.1"),
        jwks_uri=_url(environ, "JWKS_URI", f"http://localhost:{jwks_port}/keys"),
        protected_url=_url(
            environ, "PROTECTED_URL", f"http://localhost:{protected_port}/with-auth"
        ),
        jwks_requests_per_minute=_integer(environ, "JWKS_REQUESTS_PER_MINUTE", 5, 1, 6000),
        jwks_cache_seconds=_integer(environ, "JWKS_CACHE_SECONDS", 600, 0, 7 * 86400),
        token_cache_size=_integer(environ, "TOKEN_CACHE_SIZE", DEFAULT_TOKEN_CACHE_SIZE, 0, 10**7),
        server_workers=_integer(environ, "SERVER_WORKERS", os.cpu_count() or 1, 1, 256),
        audience=_text(environ, "JWT_AUDIENCE", "") if "JWT_AUDIENCE" in environ else None,
        alg=_algorithm(environ),
        # Discovery and make gateway:
        public_url=_url(environ, "JWT_PUBLIC_URL", f"http://localhost:{jwks_port}").rstrip("/"),
        jwks_uri_set="JWKS_URI" in environ,
        gateway_port=_integer(environ, "GATEWAY_PORT", DEFAULT_GATEWAY_PORT, 1, 65535),
        gateway_instances=_integer(environ, "GATEWAY_INSTANCES", DEFAULT_GATEWAY_INSTANCES, 1, 64),
    )


def _algorithm(environ: Mapping[str, str]) -> str:
    value = environ.get("JWT_ALG", DEFAULT_ALGORITHM)
    if value not in ALGORITHMS:  # exact: "rs256" or "ES256 " would be a different JOSE name
        raise UsageError(f"JWT_ALG={value!r:.40} is not one of {', '.join(ALGORITHMS)}")
    return value


def _url(environ: Mapping[str, str], name: str, default: str) -> str:
    value = _text(environ, name, default).strip()
    if not re.match(r"https?://[^/\s]+", value):
        raise UsageError(f"{name}={value!r} is not an http:// or https:// URL")
    return value
