"""The package installed into another environment, used by a host app with its own config.py
and web.py, as a service developer would: JwtAuth, BearerAuth, Signer and Verifier against
the real JWKS server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ServerFactory, assert_clean_error, script_env

pytestmark = pytest.mark.e2e

HOST_APP = '''
import json, os, sys
from config import SETTING, AppError   # the host's, not the project's
from web import render
from flask import Flask, g
from werkzeug.test import Client

import jwt_guide
from jwt_guide import InvalidToken, JwtGuideError, KeysUnavailable, Signer, UsageError, Verifier
from jwt_guide.flask import JwtAuth
from jwt_guide.wsgi import BearerAuth

uri = os.environ["HOST_JWKS_URI"]
report = {"package": jwt_guide.__file__, "config": SETTING, "web": render("x")}

signer = Signer.from_keys_dir("keys")
token = signer.sign({"userId": "host-user"}, audience="orders")

app = Flask("host")
app.config.update(JWT_JWKS_URI=uri, JWT_AUDIENCE="orders")
auth = JwtAuth(app)

@app.get("/orders")
@auth.required
def orders():
    return {"user": g.jwt_claims["userId"], "page": render("orders")}

flask_client = app.test_client()
report["flask"] = [
    (r.status_code, r.get_json()) for r in (
        flask_client.get("/orders", headers={"Authorization": "Bearer " + token}),
        flask_client.get("/orders"),
        flask_client.get("/orders", headers={"Authorization": "Bearer " + token + "x"}),
    )
]

def plain(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    claims = environ.get("jwt_guide.claims") or {}
    return [("hello " + claims.get("userId", "anonymous")).encode()]

verifier = Verifier(uri, audience="orders")
wsgi = Client(BearerAuth(plain, verifier, exempt={"/health"}))
report["wsgi"] = [
    (r.status_code, r.get_data(as_text=True)) for r in (
        wsgi.get("/", headers={"Authorization": "Bearer " + token}),
        wsgi.get("/health"),
        wsgi.get("/", headers={"Authorization": "Basic abc"}),
    )
]
report["wsgi_challenge"] = wsgi.get("/").headers["WWW-Authenticate"]

reasons = []
for bad in (token[:-4] + "AAAA", Signer.from_keys_dir("keys").sign({}), "a.b"):
    try:
        verifier.verify(bad)
    except InvalidToken as e:
        reasons.append(e.reason)
report["reasons"] = reasons
report["claims"] = verifier.verify(token)["userId"]

down = Verifier("http://127.0.0.1:" + os.environ["HOST_DEAD_PORT"] + "/keys")
try:
    down.verify(token)
except KeysUnavailable as e:
    report["retry_after"] = e.retry_after
for build in (lambda: Signer.from_keys_dir("nowhere"),
              lambda: Signer.from_keys_dir("keys", passphrase="wrong")):
    try:
        build()
    except JwtGuideError as e:
        report.setdefault("errors", []).append([type(e).__name__, str(e)])
print(json.dumps(report))
'''


def test_host_app_with_its_own_config_and_web_modules(
    installed_python: Path, host_dir: Path, start_server: ServerFactory
) -> None:
    host = host_dir
    (host / "app.py").write_text(HOST_APP)
    jwks = start_server("jwks_server.py", "JWKS_PORT", JWT_KEYS_DIR=str(host / "keys"))
    env = script_env(HOST_JWKS_URI=f"{jwks.base}/keys", HOST_DEAD_PORT="9")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(installed_python), "app.py"], cwd=host, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["package"].startswith(str(installed_python.parent.parent))
    assert (report["config"], report["web"]) == ("the host config", "<p>x</p>")
    ok, missing, forged = report["flask"]
    assert ok == [200, {"user": "host-user", "page": "<p>orders</p>"}]
    assert missing[0] == 401 and set(missing[1]) == {"error", "error_description"}
    assert forged[0] == 401 and forged[1]["error"] == "invalid_token"
    assert report["wsgi"] == [
        [200, "hello host-user"], [200, "hello anonymous"], [401, report["wsgi"][2][1]]
    ]
    assert json.loads(report["wsgi"][2][1])["error"] == "unauthorized"
    assert report["wsgi_challenge"].startswith('Bearer realm="')
    assert report["reasons"] == ["invalid signature", "audience", "malformed"]
    assert report["claims"] == "host-user"
    assert type(report["retry_after"]) is int and report["retry_after"] >= 1
    (usage, missing_key), (plain, wrong) = report["errors"]
    assert usage == "UsageError" and "run gen.py first" in missing_key
    assert plain == "JwtGuideError" and "wrong passphrase" in wrong
    assert_clean_error(result.stdout + result.stderr)
