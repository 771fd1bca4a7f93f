# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install system-deps run lint test bench clean

# Servers the tests start for real: Redis (shared quota counters), Chromium (the
# usage page) and PostgreSQL (the shared stores; Debian keeps its programs under
# /usr/lib/postgresql/N/bin). Installed from Debian's packages when missing.
SYSTEM_DEPS := redis-server chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	# llama-cpp-python is pinned in pyproject.toml, so pip reuses its cached wheel.
	# constraints.txt pins every package to a set known to work together (no resolver backtracking).
	$(BIN)/pip install -c constraints.txt -e '.[test,examples,embedded-s3,validate,postgres,ray]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=""; for cmd in $(SYSTEM_DEPS); do command -v $$cmd >/dev/null || missing="$$missing $$cmd"; done; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq$$missing; \
	fi

run: $(STAMP)
	$(BIN)/llmfn start-api

# Style and layering, checked before the tests: ruff ([tool.ruff]) and the
# import contracts of DESIGN.md's layout ([tool.importlinter]).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Every test but those that load a model (marked llama): under a minute. A test that
# starts a llama.cpp worker without the marker fails this run (tests/conftest.py).
.PHONY: test-fast
test-fast: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not llama"

# Benchmark-only extras: llama-cpp-python's own server (FastAPI, uvicorn, ...), one of
# the peers in bench/peers.py. constraints.txt pins them and llama-cpp-python itself,
# so pip only adds the extras.
$(BENCH_STAMP): $(STAMP) constraints.txt
	$(BIN)/pip install -c constraints.txt 'llama-cpp-python[server]'
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/invoke_overhead.py
	$(BIN)/python bench/accounting_overhead.py
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/scale_out.py

clean:
	rm -rf $(VENV) build dist *.egg-info .ruff_cache .import_linter_cache
