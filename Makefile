# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	# llama-cpp-python is pinned in pyproject.toml, so pip reuses its cached wheel.
	$(BIN)/pip install -e '.[test,examples]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/llmfn start-api

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/invoke_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
