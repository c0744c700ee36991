# Pi Platform developer entry points. Uses .venv/bin/... directly: no activation needed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
BUF         := node_modules/.bin/buf
PY_STAMP    := $(VENV)/.setup-stamp
NODE_STAMP  := node_modules/.setup-stamp
LINT_PATHS  := pi tests scripts bench chaos
# The web front end (web/): its own package.json and lockfile; built into web/dist, which
# the edge serves (not committed: `make setup` and `make run` build it).
WEB_STAMP   := web/node_modules/.setup-stamp
WEB_DIST    := web/dist/index.html
WEB_SOURCES := $(shell find web/src web/scripts -type f 2>/dev/null) web/index.html \
               web/vite.config.ts web/tsconfig.json $(wildcard generated/openapi/*.json)
# v1 is published: proto changes must not break it. Compared with the main branch, so a
# feature branch is checked against what landed and main against its last commit.
BREAKING_AGAINST ?= .git\#branch=main

.PHONY: help setup proto web lint test test-unit run prometheus bench chaos fuzz clean image

help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(PY_STAMP) $(NODE_STAMP) $(WEB_DIST) ## Create .venv (pinned deps), node_modules (buf) and the web build. Idempotent.

$(PY_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

proto: $(PY_STAMP) $(WEB_STAMP) ## Regenerate generated/ from protos/ (stubs, descriptors, OpenAPI) and the web's typed client.
	$(PY) scripts/gen_protos.py
	cd web && node scripts/gen-client.mjs

$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB_DIST): $(WEB_STAMP) $(WEB_SOURCES)
	cd web && node scripts/gen-client.mjs && npm run --silent build

web: $(WEB_STAMP) ## Regenerate the web's typed client from the OpenAPI document and build web/dist.
	cd web && node scripts/gen-client.mjs && npm run --silent build

lint: setup ## ruff, ruff format --check, mypy, buf lint, buf breaking (runs all, fails if any fails).
	@status=0; \
	echo "+ ruff check"; $(VENV)/bin/ruff check $(wildcard $(LINT_PATHS)) || status=1; \
	echo "+ ruff format --check"; $(VENV)/bin/ruff format --check $(wildcard $(LINT_PATHS)) || status=1; \
	echo "+ mypy"; $(VENV)/bin/mypy || status=1; \
	echo "+ buf lint"; $(BUF) lint && echo "buf lint: ok" || status=1; \
	echo "+ buf breaking (against $(BREAKING_AGAINST))"; \
	$(BUF) breaking --against '$(BREAKING_AGAINST)' && echo "buf breaking: ok" || status=1; \
	exit $$status

test: setup ## Run the whole test suite (starts its own PostgreSQL and Redis; see README).
	$(VENV)/bin/pytest

test-unit: setup ## Only the unit tier: no database, no network (seconds).
	$(VENV)/bin/pytest tests/unit

run: setup ## Start the mesh (PostgreSQL unless DATABASE_URL, three services, Envoy) locally.
	$(PY) -m pi.launcher

prometheus: setup ## A local Prometheus scraping `make run`, with the alert rules (needs Debian's prometheus).
	$(PY) -m pi.launcher.prometheus

bench: setup ## Load-test the mesh on PostgreSQL + Redis (settings: BENCH_*, see bench/README.md).
	scripts/ensure-redis.sh
	$(PY) -m bench $(BENCH_ARGS)

chaos: setup ## Fault run: F1-F9 under load on its own PostgreSQL + Redis (CHAOS_*, chaos/README.md).
	$(PY) -m chaos $(CHAOS_ARGS)

clean: ## Remove caches and build output (keeps .venv, node_modules and generated/).
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache web/dist
	find . -path ./.venv -prune -o -path ./node_modules -prune -o \
	    -name __pycache__ -type d -exec rm -rf {} +

image: setup ## Build the pi-platform image with podman (cached by content; scripts/image.py).
	$(PY) scripts/image.py

fuzz: setup ## Fuzz the HTTP API against /openapi.json through Envoy (schemathesis, 1000 cases/operation).
	PI_FUZZ_MAX_EXAMPLES=$${PI_FUZZ_MAX_EXAMPLES:-1000} $(VENV)/bin/pytest -s -q -p no:cacheprovider \
	    tests/e2e/test_contract_fuzzed.py
