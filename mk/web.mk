# Web application targets; included from the Makefile.
#   make demo   create .venv if needed, migrate, collect static files, prepare the demo data and
#               run gunicorn + a worker (manage.py worker) on 127.0.0.1:8000 (Ctrl-C stops both)

DEMO_PYTHON ?= python3
DEMO_VENV ?= .venv
DEMO_BIND ?= 127.0.0.1:8000
DEMO_USER ?= admin
DEMO_PASSWORD ?= mergehub-demo
DEMO_SIZE ?= 100MB
# Extra pip arguments for torch, e.g. --index-url https://download.pytorch.org/whl/cpu
TORCH_PIP_ARGS ?=
DEMO_ENV = DEBUG=true
DEMO_MANAGE = $(DEMO_ENV) $(DEMO_VENV)/bin/python manage.py

.PHONY: demo demo-install demo-setup build-deps

$(DEMO_VENV)/bin/python:
	$(DEMO_PYTHON) -m venv $(DEMO_VENV)

# setup.py builds the compiled kernels (mergehub/engine/kernels/kernels.c) with the C compiler
# A C compiler for it: installed when missing, as root, where apt-get exists (best effort: without
# one the install still succeeds and the engine runs its torch path).
build-deps:
	@if ! command -v cc >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; \
	fi

$(DEMO_VENV)/.mergehub-installed: $(DEMO_VENV)/bin/python pyproject.toml setup.py mergehub/engine/kernels/kernels.c mergehub/engine/kernels/mergehub_kernels.h constraints.txt | build-deps
	$(DEMO_VENV)/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
		|| $(DEMO_VENV)/bin/pip install $(TORCH_PIP_ARGS) torch==2.13.0
	$(DEMO_VENV)/bin/pip install -c constraints.txt -e '.[web,test]'
	touch $@

demo-install: $(DEMO_VENV)/.mergehub-installed

demo-setup: demo-install
	$(DEMO_MANAGE) migrate --noinput
	$(DEMO_MANAGE) collectstatic --noinput --verbosity 0
	$(DEMO_MANAGE) demo_setup --username $(DEMO_USER) --password '$(DEMO_PASSWORD)' --size $(DEMO_SIZE)

demo: demo-setup
	$(DEMO_MANAGE) serve_demo --bind $(DEMO_BIND) --username $(DEMO_USER) --password '$(DEMO_PASSWORD)'
