"""Where a verifier finds the key for a token: one interface, three sources.

- ``JwksClient`` (jwt_guide.jwks_client): a remote JWKS, cached and rate limited;
- ``FolderKeys``: the published keys of a keys folder (next, current and retired), chosen
  by ``kid`` as the servers choose from the JWKS; read again when a key file changes;
- ``PemFileKey``: one public key file, used whatever the token's ``kid``.

Each returns ``PublishedKey`` objects: a public key, its ``kid`` and the one algorithm it is
bound to (a token must name exactly that one). Two are equal only when ``kid``, algorithm and
public JWK members are: a key replaced under the same ``kid`` (or bound to another
algorithm) is another key, which is how a verifier knows that what it cached no longer holds.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from jwt_guide.algorithms import Algorithm, KeyRejected, PublicKey, algorithm_for_key
from jwt_guide.config import PUBLIC_KEY_FILE
from jwt_guide.errors import InvalidToken, JwtGuideError, UsageError
from jwt_guide.keystore import (
    KEYRING_FILE,
    file_stamps,
    public_key_from_pem,
    read_key_file,
    read_keyring,
)
from jwt_guide.tokens import shown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedKey:
    """A verification key bound to one algorithm; equal to another only if kid, alg and the
    public JWK members (RFC 7638's: RSA n, e; EC crv, x, y; OKP crv, x) are equal."""

    kid: str
    alg: str
    members: tuple[tuple[str, str], ...]
    key: PublicKey = field(compare=False, repr=False)
    algorithm: Algorithm = field(compare=False, repr=False)

    @classmethod
    def of(cls, kid: str, key: PublicKey, alg: str | None = None) -> PublishedKey:
        """The ``PublishedKey`` of a public key under ``kid``, bound to ``alg`` (None: the
        default of its type, RS256 for RSA, never PS256).

        Raises KeyRejected if the key is not supported or ``alg`` does not fit it.
        """
        algorithm = algorithm_for_key(key, alg)
        members = tuple(algorithm.public_jwk(key).items())
        return cls(kid, algorithm.name, members, key, algorithm)


class KeySource(Protocol):
    """What a ``Verifier`` asks for keys (thread-safe in every implementation)."""

    def key_for(self, kid: str | None) -> PublishedKey:
        """The key for a token whose header has ``kid`` (None: no ``kid``).

        Raises InvalidToken (``unknown kid``; ``malformed`` for a missing ``kid`` where one
        is needed), KeysUnavailable when no key can be had at the moment.
        """
        ...

    def refresh_key(self, used: PublishedKey) -> PublishedKey | None:
        """The key now under ``used.kid``, after a signature failed with ``used``: ``used``
        itself if nothing changed, None if the ``kid`` is gone. Never raises KeysUnavailable."""
        ...


def no_kid() -> InvalidToken:
    """The refusal of a token without ``kid`` where keys are chosen by ``kid``."""
    return InvalidToken("malformed", "the token has no kid")


@dataclass(frozen=True)
class _FolderState:
    stamps: object
    keys: dict[str, PublishedKey]
    kidless: str | None  # the kid used for a token without one, if any


class FolderKeys:
    """The published keys of a keys folder (next, current, retired), by ``kid``.

    Read at once, then again whenever a key file changes (seen by ``stat``, so a key added
    or replaced by gen.py is used without a restart). A token without ``kid`` is refused,
    except in a folder holding only the guide's two files, whose one key (``default_kid``)
    it then gets. Construction raises UsageError if the folder has no public key,
    JwtGuideError if a key or the key ring cannot be read.
    """

    def __init__(self, keys_dir: Path, default_kid: str) -> None:
        self.keys_dir = keys_dir
        self.default_kid = default_kid
        self._paths = [keys_dir / KEYRING_FILE, keys_dir / PUBLIC_KEY_FILE]
        self._lock = threading.Lock()
        self._state = self._read(file_stamps(self._paths))

    def _read(self, stamps: object) -> _FolderState:
        ring = read_keyring(self.keys_dir, self.default_kid)
        current = ring.find("current")
        if current is None:
            raise UsageError(
                f"no public key at {self.keys_dir / PUBLIC_KEY_FILE}: run gen.py first"
            )
        keys: dict[str, PublishedKey] = {}
        for r in ring.records:
            key = public_key_from_pem(r.public_pem.encode(), f"key {r.kid!r} of {self.keys_dir}")
            keys[r.kid] = PublishedKey.of(r.kid, key, r.alg)  # read_keyring checked the fit
        guide_only = not (self.keys_dir / KEYRING_FILE).exists()
        return _FolderState(stamps, keys, current.kid if guide_only else None)

    def _current(self) -> _FolderState:
        stamps = file_stamps(self._paths)  # before reading: a change meanwhile is seen next time
        state = self._state
        if state.stamps == stamps:
            return state
        with self._lock:
            if self._state.stamps != stamps:
                try:
                    self._state = self._read(stamps)
                except JwtGuideError as e:
                    # Keep verifying with the keys read last, as a JWKS client keeps its
                    # cached keys while the server is down; try again after the next change.
                    log.warning("keys folder: %s; still using the keys read before", e)
                    self._state = _FolderState(stamps, self._state.keys, self._state.kidless)
            return self._state

    def key_for(self, kid: str | None) -> PublishedKey:
        """The key of ``kid`` among the folder's published keys.

        Raises InvalidToken: ``unknown kid``, or ``malformed`` for a token without ``kid``
        (outside a guide-only folder).
        """
        state = self._current()
        if kid is None:
            if state.kidless is None:
                raise no_kid()
            kid = state.kidless
        key = state.keys.get(kid)
        if key is None:
            raise InvalidToken("unknown kid", f"no key of {self.keys_dir} has kid {shown(kid)}")
        return key

    def refresh_key(self, used: PublishedKey) -> PublishedKey | None:
        """The key now under ``used.kid`` (the folder is read again if it changed)."""
        return self._current().keys.get(used.kid)


class PemFileKey:
    """One public key from a PEM file, used for every token whatever its ``kid``.

    Its algorithm follows the key type: RS256 for RSA (PS256 only when ``alg`` says so),
    ES256 for EC P-256, EdDSA for Ed25519. Construction raises UsageError if the file does
    not exist or ``alg`` does not fit the key, JwtGuideError if it cannot be read or holds
    no supported public key.
    """

    def __init__(self, path: Path, alg: str | None = None) -> None:
        data = read_key_file(path, "public key", fix="the file does not exist")
        key = public_key_from_pem(data, str(path))
        try:
            self.key = PublishedKey.of("", key, alg)
        except KeyRejected as e:
            raise UsageError(f"{path}: {e}") from None

    def key_for(self, kid: str | None) -> PublishedKey:
        """The file's key."""
        return self.key

    def refresh_key(self, used: PublishedKey) -> PublishedKey | None:
        """The file's key: it is read once."""
        return self.key
