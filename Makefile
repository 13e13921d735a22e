# Two commands for a fresh machine with Python 3.11+ and pip:
#   make serve   set up .venv, fetch the default model once, serve on http://127.0.0.1:8000
#   make test    same set-up, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test model lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Without a CUDA GPU take the CPU build of torch first, so nothing pulls a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install torch==2.13.0; fi
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

model: $(STAMP)
	$(VENV)/bin/atenea pull

serve: model
	$(VENV)/bin/atenea serve $(ARGS)

# Node tools the tests run against a live server (newman, the OpenAI Node SDK), pinned by the lock file.
NODE_TOOLS := tests/node/node_modules/.installed-stamp
$(NODE_TOOLS): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund
	touch $(NODE_TOOLS)

# The playground tests drive Debian's Chromium through Playwright, which cannot download a browser here.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

test: model $(NODE_TOOLS) $(CHROMIUM)
	$(VENV)/bin/ruff check app model_runtime tests
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check app model_runtime tests

clean:
	rm -rf $(VENV)
