"""The guide's ``config.ts``: the passphrase, key id and issuer every step shares.

Each value has the guide's default and an environment variable (see the README's
"Configuration"); ``load_config`` reads and validates them all. The implementation is
``jwt_guide.config``, which services importing the package use directly.
"""

from __future__ import annotations

from jwt_guide.config import (
    DEFAULT_ISSUER,
    DEFAULT_KID,
    DEFAULT_PASSPHRASE,
    MAX_TOKEN_AGE,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    TOKEN_FILE,
    Config,
    load_config,
    parse_duration,
)

__all__ = [
    "DEFAULT_ISSUER",
    "DEFAULT_KID",
    "DEFAULT_PASSPHRASE",
    "MAX_TOKEN_AGE",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "TOKEN_FILE",
    "Config",
    "load_config",
    "parse_duration",
]
