# The guide's yarn scripts as make targets. Every target installs .venv on first use, with
# only what it runs: the runtime dependencies for the guide's steps and the demo, the test
# tools for test/lint, uvloop and httptools for serve/gateway/bench. Every target honours the
# environment variables of SPEC.md (JWT_KEYS_DIR, JWKS_PORT, PROTECTED_PORT...).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# One stamp per level of installation; each is redone when pyproject.toml changes.
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test
SERVING := $(VENV)/.installed-serve

.PHONY: install gen sign verify jwks-server protected-server jwks-client-server make-request \
        demo serve gateway bench test lint clean

install: $(TESTING) $(SERVING)

# setuptools prints a boxed note on every editable install (newer pips show it even with
# --quiet): "be careful with folders named like your package", which is the point here.
$(RUNTIME) $(TESTING) $(SERVING): export PYTHONWARNINGS = ignore:Editable installation

$(RUNTIME): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed: set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The former distribution, jwt-asymmetric-guide, installed config, web... as
	@# top-level modules: remove it from a venv made then.
	@if ls $(VENV)/lib/python3*/site-packages/jwt_asymmetric_guide-* >/dev/null 2>&1; then \
		$(PY) -m pip uninstall --quiet --yes jwt-asymmetric-guide; fi
	$(PIP) -e .
	@touch $@

$(TESTING): $(RUNTIME)
	$(PIP) -e '.[test]'
	@touch $@

$(SERVING): $(RUNTIME)
	$(PIP) -e '.[serve]'
	@touch $@

gen: $(RUNTIME)
	$(PY) gen.py $(ARGS)

sign: $(RUNTIME)
	$(PY) sign.py $(ARGS)

verify: $(RUNTIME)
	$(PY) verify.py $(ARGS)

jwks-server: $(RUNTIME)
	$(PY) jwks_server.py

protected-server jwks-client-server: $(RUNTIME)
	$(PY) protected_server.py

make-request: $(RUNTIME)
	$(PY) make_request.py

demo: $(RUNTIME)
	$(PY) tools/demo.py

serve: $(SERVING)
	$(PY) -m jwt_guide.http.serve

gateway: $(SERVING)  # nginx + GATEWAY_INSTANCES verifier instances + the JWKS server
	$(PY) tools/gateway.py

bench: $(SERVING)
	$(PY) -m tools.bench

lint: $(TESTING)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
