"""Interop across algorithms: our PS256, ES256 and EdDSA tokens and key set, served by the
running jwks_server.py, are accepted by PyJWT (``PyJWKClient``) and jwcrypto; their tokens,
signed with our private keys, are accepted by verify.py and the running protected_server.py.

The Node original's stack is not run here (see the README, "Choosing an algorithm"):
jwks-rsa 3 reads RSA, EC and OKP keys, but jsonwebtoken 9, which express-jwt uses, has no
EdDSA.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

import verify
from jwt_guide import Signer, rotation
from jwt_guide.algorithms import ALGORITHMS, PrivateKey, load_private_pem
from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_PASSPHRASE, load_config
from jwt_guide.keystore import read_keyring
from tests.helpers import Server, spawn_server, wait_until_listening

pytestmark = pytest.mark.e2e

KIDS = {"PS256": "ps-key", "ES256": "es-key", "EdDSA": "ed-key"}
HTTP_TIMEOUT = 10


@dataclass(frozen=True)
class Issued:
    """What the issuer left: its keys folder, and per algorithm a token of ours and the
    encrypted private key (PEM) that signed it."""

    folder: Path
    tokens: dict[str, str]
    private_pems: dict[str, bytes]


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    """PS256 first, then --next/--promote to ES256, then to EdDSA, as gen.py does it: every
    key stays published (retired ones too) and each signed one token while current."""
    folder = tmp_path_factory.mktemp("interop") / "keys"
    config = load_config({"JWT_KEYS_DIR": str(folder)})
    tokens: dict[str, str] = {}
    pems: dict[str, bytes] = {}
    for n, (alg, kid) in enumerate(KIDS.items()):

        def generate(alg: str = alg) -> PrivateKey:
            return ALGORITHMS[alg].generate(2048 if alg == "PS256" else None)

        with rotation.changing(config, create=n == 0):
            if n == 0:
                rotation.create(config, generate, kid, force=False, alg=alg)
            else:
                ring = read_keyring(folder, config.kid)
                rotation.add_next(config, ring, generate, kid, alg)
                rotation.promote(config, read_keyring(folder, config.kid))
        pems[alg] = config.private_key_path.read_bytes()
        tokens[alg] = Signer.from_keys_dir(config=config).sign({"userId": f"user-{alg}"})
    return Issued(folder, tokens, pems)


@pytest.fixture(scope="module")
def servers(
    issued: Issued, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """jwks_server.py on the issuer's folder, protected_server.py reading its key set."""
    folder = tmp_path_factory.mktemp("interop-servers")
    started: list[Server] = []
    try:
        jwks = spawn_server("jwks_server.py", "JWKS_PORT", folder, JWT_KEYS_DIR=str(issued.folder))
        started.append(jwks)
        protected = spawn_server(
            "protected_server.py", "PROTECTED_PORT", folder, JWKS_URI=f"{jwks.base}/keys"
        )
        started.append(protected)
        for server in started:
            wait_until_listening(server)
        yield {"jwks": jwks, "protected": protected}
    finally:
        for server in started:
            server.stop()


def _key(issued: Issued, alg: str) -> PrivateKey:
    return load_private_pem(issued.private_pems[alg], DEFAULT_PASSPHRASE)


@pytest.mark.parametrize("alg", list(KIDS))
def test_pyjwt_pyjwkclient_accepts_our_tokens_and_key_set(
    alg: str, issued: Issued, servers: dict[str, Server]
) -> None:
    client = jwt.PyJWKClient(f"{servers['jwks'].base}/.well-known/jwks.json", timeout=HTTP_TIMEOUT)
    token = issued.tokens[alg]
    signing_key = client.get_signing_key_from_jwt(token)
    assert (signing_key.key_id, signing_key.algorithm_name) == (KIDS[alg], alg)
    claims = jwt.decode(token, signing_key, algorithms=[alg], issuer=DEFAULT_ISSUER)
    assert claims["userId"] == f"user-{alg}"
    # PyJWT binds the key to its published alg too (since 2.13, #1129): another alg is refused.
    other = "ES256" if alg != "ES256" else "EdDSA"
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(token, signing_key, algorithms=[other], issuer=DEFAULT_ISSUER)


@pytest.mark.parametrize("alg", list(KIDS))
def test_jwcrypto_accepts_our_tokens_and_key_set(
    alg: str, issued: Issued, servers: dict[str, Server]
) -> None:
    body = requests.get(f"{servers['jwks'].base}/keys", timeout=HTTP_TIMEOUT).text
    key_set = jwcrypto_jwk.JWKSet.from_json(body)
    assert {key.get("kid") for key in key_set} == set(KIDS.values())
    token = jwcrypto_jwt.JWT(
        jwt=issued.tokens[alg], key=key_set, algs=[alg], check_claims={"iss": DEFAULT_ISSUER}
    )
    assert json.loads(token.claims)["userId"] == f"user-{alg}"


def _pyjwt_token(key: PrivateKey, alg: str, claims: dict[str, object]) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": KIDS[alg]})


def _jwcrypto_token(key: PrivateKey, alg: str, claims: dict[str, object]) -> str:
    token = jwcrypto_jwt.JWT(header={"alg": alg, "kid": KIDS[alg]}, claims=claims)
    token.make_signed_token(jwcrypto_jwk.JWK.from_pyca(key))
    return str(token.serialize())


THEIRS: dict[str, Callable[[PrivateKey, str, dict[str, object]], str]] = {
    "pyjwt": _pyjwt_token, "jwcrypto": _jwcrypto_token,
}  # fmt: skip


@pytest.mark.parametrize("library", list(THEIRS))
@pytest.mark.parametrize("alg", list(KIDS))
def test_their_tokens_are_accepted_by_ours(
    alg: str, library: str, *, issued: Issued, servers: dict[str, Server],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    claims = jwt.decode(issued.tokens[alg], options={"verify_signature": False})
    claims["userId"] = f"{library}-{alg}"
    token = THEIRS[library](_key(issued, alg), alg, claims)
    monkeypatch.setenv("JWT_KEYS_DIR", str(issued.folder))
    assert verify.main([f"--token={token}"]) == 0
    assert f'"userId": "{library}-{alg}"' in capsys.readouterr().out
    response = requests.get(
        f"{servers['protected'].base}/with-auth",
        headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert f'"userId":"{library}-{alg}"' in response.text
