"""``BearerAuth``: WSGI middleware that lets through only requests with a valid Bearer token.

For any WSGI application (Django, Flask, Falcon...)::

    application = BearerAuth(application, Verifier(), exempt={"/health"})

Every request whose path (``PATH_INFO``) is not one of the ``exempt`` paths (exact
matches) needs ``Authorization: Bearer <token>`` with a token the verifier accepts; the app
then finds the claims in ``environ["jwt_guide.claims"]``. Other requests never reach the
app: they get the RFC 6750 answers of protected_server.py (401 or 400 with a JSON body and
one ``WWW-Authenticate: Bearer realm="..."``, 503 with ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from jwt_guide.errors import InvalidToken, KeysUnavailable
from jwt_guide.http.errors import ApiError, bearer_token, refusal
from jwt_guide.verifier import Verifier

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

CLAIMS_KEY = "jwt_guide.claims"


class BearerAuth:
    """WSGI middleware requiring a valid Bearer token on every path but ``exempt``.

    ``verifier`` None builds one from the environment (``Verifier()``); that raises
    UsageError for a bad setting.
    """

    def __init__(
        self, app: WSGIApplication, verifier: Verifier | None = None, exempt: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.verifier = verifier or Verifier()
        self.exempt = frozenset(exempt)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI entry point."""
        if environ.get("PATH_INFO", "") in self.exempt:
            return self.app(environ, start_response)
        try:
            token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
            try:
                environ[CLAIMS_KEY] = self.verifier.verify(token)
            except (InvalidToken, KeysUnavailable) as e:
                raise refusal(e) from e
        except ApiError as e:
            return e(environ, start_response)
        return self.app(environ, start_response)
