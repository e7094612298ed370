"""The errors the library raises on purpose, under one root: ``JwtGuideError``.

A caller that verifies tokens handles ``InvalidToken`` (refuse the request) and
``KeysUnavailable`` (answer "try again later"); a script maps every ``JwtGuideError`` to its
``exit_code`` and one line on stderr (``jwt_guide.cli.run``). Anything else is a bug and
keeps its traceback. No message holds a secret: neither a passphrase nor key material.
"""

from __future__ import annotations


class JwtGuideError(Exception):
    """Raised for an expected failure the user must act on (a script exits 1)."""

    exit_code = 1


class UsageError(JwtGuideError):
    """Raised for a usage error, a bad setting or a missing input file (a script exits 2)."""

    exit_code = 2


class InvalidToken(JwtGuideError):
    """Raised when a token is refused; ``reason`` names the check that failed.

    Reasons: ``malformed``, ``algorithm``, ``unsupported critical header``, ``unknown kid``,
    ``invalid signature``, ``missing claim <name>``, ``issuer``, ``audience``,
    ``not yet valid``, ``expired``, ``too old``. ``detail`` says more, for a log or an HTTP
    ``error_description``; the message is ``<reason>: <detail>``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class KeysUnavailable(JwtGuideError):
    """Raised when no key can be had: the JWKS is unreachable and nothing usable is cached.

    ``retry_after``: whole seconds (at least 1) until the next fetch may start.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the key set is unavailable; retry in {retry_after} s")
        self.retry_after = retry_after
