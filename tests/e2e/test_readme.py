"""Every Python snippet of the README's "Use it in your own app" runs as written.

The snippets run in a virtual environment where the package was installed with pip, from a
host app's folder with its own config.py and web.py, against the real JWKS server (its URL
put in place of the README's localhost:3344). Each snippet has a check below, in README
order: a snippet added without one fails the test, so the README cannot drift.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, ServerFactory, assert_clean_error, script_env

pytestmark = pytest.mark.e2e

SECTION = "## Use it in your own app"
README_URL = "http://localhost:3344"

# Runs each snippet in a fresh namespace, then its check; prints one result per snippet.
HARNESS = '''
import json, sys
from werkzeug.test import Client
from jwt_guide import Signer, Verifier

snippets = json.load(open(sys.argv[1]))
token = Signer.from_keys_dir("keys").sign({"userId": "a-b-c-d"})
bearer = {"Authorization": "Bearer " + token}
results = []


def check_signer(ns):
    claims = Verifier(keys_dir="keys").verify(ns["token"])
    return [claims["userId"], claims["exp"] - claims["iat"]]


def check_flask(ns):
    client = ns["app"].test_client()
    ok, missing = client.get("/orders", headers=bearer), client.get("/orders")
    return [ok.status_code, ok.get_json(), missing.status_code, missing.get_json()["error"]]


def check_endpoint(ns):
    client = ns["app"].test_client()
    ok, missing = client.get("/me", headers=bearer), client.get("/me")
    return [ok.status_code, ok.get_json()["userId"], missing.status_code]


def check_wsgi(ns):
    client = Client(ns["application"])
    ok, health, missing = client.get("/", headers=bearer), client.get("/health"), client.get("/")
    return [ok.status_code, ok.get_data(as_text=True), health.get_data(as_text=True),
            missing.status_code]


def check_worker(ns):
    return [ns["handle"]({"token": token}), ns["handle"]({"token": "x.y.z"}),
            ns["handle"]({"token": token[:-2] + "AA"})]


checks = [check_signer, check_flask, check_endpoint, check_wsgi, check_worker]
assert len(snippets) == len(checks), f"{len(snippets)} snippets, {len(checks)} checks"
for snippet, check in zip(snippets, checks):
    namespace = {"__name__": "readme"}
    exec(compile(snippet, "README.md", "exec"), namespace)
    results.append(check(namespace))
print(json.dumps(results))
'''


def readme_snippets() -> list[str]:
    """The fenced Python blocks of the README's "Use it in your own app" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_every_snippet_of_use_it_in_your_own_app_runs(
    installed_python: Path, host_dir: Path, start_server: ServerFactory
) -> None:
    jwks = start_server("jwks_server.py", "JWKS_PORT", JWT_KEYS_DIR=str(host_dir / "keys"))
    snippets = [s.replace(README_URL, jwks.base) for s in readme_snippets()]
    assert all(jwks.base in s for s in snippets[1:]), "a verifying snippet lost its JWKS URL"
    (host_dir / "snippets.json").write_text(json.dumps(snippets))
    (host_dir / "harness.py").write_text(HARNESS)
    result = subprocess.run(
        [str(installed_python), "harness.py", "snippets.json"], cwd=host_dir, env=script_env(),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    signer, flask, endpoint, wsgi, worker = json.loads(result.stdout)
    assert signer == ["a-b-c-d", 900]
    assert flask == [200, {"user": "a-b-c-d"}, 401, "unauthorized"]
    assert endpoint == [200, "a-b-c-d", 401]
    assert wsgi == [200, "hello a-b-c-d", "hello anonymous", 401]
    assert worker == ["hello a-b-c-d", "refused: malformed", "refused: invalid signature"]
    assert_clean_error(result.stdout + result.stderr)
