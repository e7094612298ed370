# The guide's yarn scripts as make targets. Every target installs .venv on first use, and
# honours the environment variables of SPEC.md (JWT_KEYS_DIR, JWKS_PORT, PROTECTED_PORT...).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install gen sign verify jwks-server protected-server jwks-client-server make-request \
        demo serve bench test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed: set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[serve,test]'
	@touch $(STAMP)

gen: $(STAMP)
	$(PY) gen.py $(ARGS)

sign: $(STAMP)
	$(PY) sign.py $(ARGS)

verify: $(STAMP)
	$(PY) verify.py $(ARGS)

jwks-server: $(STAMP)
	$(PY) jwks_server.py

protected-server jwks-client-server: $(STAMP)
	$(PY) protected_server.py

make-request: $(STAMP)
	$(PY) make_request.py

demo: $(STAMP)
	$(PY) demo.py

serve: $(STAMP)
	$(PY) serve.py

bench: $(STAMP)
	$(PY) bench.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
