"""Configuration by issuer end to end: jwks_server.py serves the discovery document, and the
protected server, a Verifier and a real discovery client (get-jwks with providerDiscovery,
run by Node.js) find the key set from the issuer alone (JWT_ISSUER an http URL, no JWKS_URI)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from jwt_guide import Verifier
from jwt_guide.discovery import DiscoveringJwksClient
from tests.helpers import RecordingServer, ServerFactory, TokenFactory, free_port

pytestmark = pytest.mark.e2e

TIMEOUT = 10


def test_protected_server_configured_by_issuer_only(
    keys_dir: Path, start_server: ServerFactory, make_token: TokenFactory
) -> None:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    start_server("jwks_server.py", "JWKS_PORT", port, JWT_ISSUER=issuer)
    protected = start_server("protected_server.py", "PROTECTED_PORT", JWT_ISSUER=issuer)
    document = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=TIMEOUT).json()
    assert document["issuer"] == issuer
    assert document["jwks_uri"] == f"http://localhost:{port}/.well-known/jwks.json"
    token = make_token(iss=issuer)
    for path in ("/with-auth", "/auth"):
        response = requests.get(
            f"{protected.base}{path}", headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        )  # fmt: skip
        assert response.status_code == (200 if path == "/with-auth" else 204), response.text
    assert "X-Jwt-Claims" in response.headers


def test_verifier_configured_by_issuer_only(
    keys_dir: Path, start_server: ServerFactory, make_token: TokenFactory
) -> None:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    start_server("jwks_server.py", "JWKS_PORT", port, JWT_ISSUER=issuer, JWT_PUBLIC_URL=issuer)
    verifier = Verifier(issuer=issuer)
    assert isinstance(verifier.keys, DiscoveringJwksClient)
    assert verifier.verify(make_token(iss=issuer))["iss"] == issuer
    assert verifier.keys.discovery.fetches == 1


GET_JWKS_SCRIPT = """
const buildGetJwks = require('get-jwks')
const crypto = require('node:crypto')
const [domain, token] = process.argv.slice(2)
const [header, payload, signature] = token.split('.')
const { kid, alg } = JSON.parse(Buffer.from(header, 'base64url'))
const getJwks = buildGetJwks({ providerDiscovery: true })
getJwks.getPublicKey({ domain, kid, alg }).then((pem) => {
  const verified = crypto.verify('RSA-SHA256', Buffer.from(`${header}.${payload}`), pem,
                                 Buffer.from(signature, 'base64url'))
  console.log(JSON.stringify({ verified }))
}).catch((error) => { console.log(JSON.stringify({ error: error.code || error.message })) })
"""


@pytest.fixture(scope="session")
def get_jwks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """get-jwks installed by npm in a temporary folder; skips without node and npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node/npm not found (apt-get install nodejs npm): get-jwks not run")
    folder = tmp_path_factory.mktemp("get-jwks")
    try:
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", "get-jwks@11"],
            cwd=folder, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"npm install get-jwks failed ({type(e).__name__}): no registry?")
    (folder / "check.js").write_text(GET_JWKS_SCRIPT)
    return folder


def run_get_jwks(folder: Path, domain: str, token: str) -> dict[str, Any]:
    node = shutil.which("node") or "node"
    done = subprocess.run(
        [node, "check.js", domain, token],
        cwd=folder, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_get_jwks_with_provider_discovery(
    keys_dir: Path, start_server: ServerFactory, make_token: TokenFactory, get_jwks: Path
) -> None:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    start_server("jwks_server.py", "JWKS_PORT", port, JWT_ISSUER=issuer, JWT_PUBLIC_URL=issuer)
    assert run_get_jwks(get_jwks, issuer, make_token(iss=issuer)) == {"verified": True}
    # Where there is no discovery document (a 404), get-jwks fails with the error of issue 11.
    with RecordingServer() as other:
        other.serve({"error": "not_found"}, 404)
        result = run_get_jwks(get_jwks, other.base, make_token())
    assert result == {"error": "OPENID_CONFIGURATION_REQUEST_FAILED"}
