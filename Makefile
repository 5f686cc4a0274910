# MergeHub. Two entry points (see README):
#   make demo   set up .venv, prepare demo data, run the web app + a worker on 127.0.0.1:8000
#   make test   set up .venv and run the whole test suite (SQLite; PostgreSQL + Redis when
#               DATABASE_URL / REDIS_URL are set)
# torch 2.13.0 is installed first (CPU build here): an unpinned torch would pull a multi-GB
# CUDA build. GPU users install their own CUDA build of torch before `make`.

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=

include mk/web.mk

.PHONY: test test-engine install browser-deps mergekit-venv bench clean

# mergekit 0.1.5 in its own venv: the parity reference for tests/engine (skipped without it)
# and the benchmark's peer. torch 2.13.0 first, as everywhere.
MERGEKIT_VENV ?= .venv-mergekit
mergekit-venv: $(MERGEKIT_VENV)/.installed
$(MERGEKIT_VENV)/.installed: constraints.txt
	test -x $(MERGEKIT_VENV)/bin/python || $(PYTHON) -m venv $(MERGEKIT_VENV)
	$(MERGEKIT_VENV)/bin/pip install -q $(TORCH_PIP_ARGS) torch==2.13.0
	$(MERGEKIT_VENV)/bin/pip install -q -c constraints.txt mergekit==0.1.5
	touch $@

install: demo-install

# Debian's chromium drives the browser test (never `playwright install`). Best effort: only
# as root with apt-get available; without chromium the browser test is skipped, loudly.
browser-deps:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

test: install browser-deps mergekit-venv
	DJANGO_ALLOW_ASYNC_UNSAFE=true $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-engine: install
	$(VENV)/bin/python -m pytest -q -p no:django tests/engine tests/bench $(PYTEST_ARGS)

# A small benchmark; see bench/README.md for the full one quoted in README.md.
bench: install
	$(VENV)/bin/python -m bench.run --help

clean:
	rm -rf $(VENV) .pytest_cache data
