"""Step 4.c of the guide: call the protected endpoint with the token as a Bearer header."""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load: exit 130, no traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import argparse
from collections.abc import Sequence

import requests

from jwt_guide.cli import ArgumentParser, run
from jwt_guide.config import load_config
from jwt_guide.errors import JwtGuideError, UsageError
from jwt_guide.jwks_client import environment_settings

TIMEOUT = (5.0, 30.0)  # connect, read


def call(url: str, token: str) -> str:
    """GET ``url`` with ``Authorization: Bearer <token>`` and return the body of a 2xx answer.

    Raises JwtGuideError with ``HTTP <status>: <error_description>`` for any other answer, or a
    line naming the URL if the server cannot be reached.
    """
    try:
        with requests.Session() as session:
            session.trust_env = False  # else .netrc credentials replace the Bearer header
            response = session.get(
                url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT,
                **environment_settings(url),
            )  # fmt: skip
    except requests.ConnectionError:
        raise JwtGuideError(
            f"cannot connect to {url}: is protected_server.py running? (make protected-server)"
        ) from None
    except requests.RequestException as e:
        raise JwtGuideError(f"request to {url} failed: {type(e).__name__}") from None
    if response.ok:
        return response.text
    try:
        description = response.json().get("error_description") or response.reason
    except (ValueError, AttributeError):
        description = response.reason or "error"
    raise JwtGuideError(f"HTTP {response.status_code}: {description}")


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 4.c."""
    return ArgumentParser(
        prog="make_request.py",
        description="Step 4.c: send token.txt as a Bearer token to $PROTECTED_URL "
        "(default http://localhost:2233/with-auth) and print the answer.",
    )


def _step() -> None:
    config = load_config()
    try:
        token = config.token_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UsageError(f"no token at {config.token_path}: run sign.py first") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {config.token_path}: {e}") from None
    if not token or not token.isascii() or any(c.isspace() for c in token):
        raise UsageError(f"{config.token_path} does not hold a JWT: run sign.py again")
    print(call(config.protected_url, token))


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 4.c; return the exit code."""
    build_parser().parse_args(argv)
    return run("make_request", _step)


if __name__ == "__main__":
    sys.exit(main())
