"""Step 4.a of the guide: publish the public keys as a JSON Web Key Set.

``python jwks_server.py`` serves ``GET /keys`` (and ``/.well-known/jwks.json``) on
``JWKS_PORT`` (default 3344): the next, current and retired public keys of the keys folder,
picked up without a restart when gen.py changes them. The app itself is
``jwt_guide.http.jwks_app.create_app``, which a production WSGI server can run
(``make serve``); ``--export`` writes the same JSON to a file for a static host.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load: exit 130, no traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import argparse
from collections.abc import Sequence
from pathlib import Path

from jwt_guide.cli import ArgumentParser, run
from jwt_guide.config import load_config
from jwt_guide.errors import JwtGuideError
from jwt_guide.http.devserver import run_dev_server
from jwt_guide.http.jwks_app import JwksCache, create_app
from jwt_guide.keystore import apply_changes

__all__ = ["build_parser", "create_app", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of step 4.a."""
    parser = ArgumentParser(
        prog="jwks_server.py",
        description="Step 4.a: serve the public keys as a JWKS on http://$JWT_BIND_HOST:$JWKS_PORT"
        "/keys (default 127.0.0.1:3344), or write it to a file with --export.",
    )
    parser.add_argument(
        "--export", metavar="PATH",
        help="write the JWKS (the same JSON as /keys) to PATH for a static host or CDN, and exit",
    )  # fmt: skip
    return parser


def _step(args: argparse.Namespace) -> None:
    config = load_config()
    # Built once before serving: with no key to publish (UsageError, exit 2) or a broken
    # one, the server refuses to start rather than answer nothing but 500s.
    body, _ = JwksCache(config.keys_dir, config.kid).get()
    if args.export:
        path = Path(args.export).absolute()
        try:
            apply_changes(path.parent, {path.name: body})
        except OSError as e:
            raise JwtGuideError(f"cannot write {e.filename}: {e.strerror}") from e
        print(f"JWKS written to {path}")
        return
    # Ctrl-C before serving is run's one line; once serving, it stops the server (exit 130).
    run_dev_server(
        create_app(config), config.bind_host, config.jwks_port, "JWKS_PORT",
        f"JWKS API is on port {config.jwks_port}",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run step 4.a; return the exit code."""
    args = build_parser().parse_args(argv)
    return run("jwks_server", lambda: _step(args))


if __name__ == "__main__":
    sys.exit(main())
