# `make test` and `make demo` work on a fresh machine: they create .venv and install the pinned versions first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: install test lint demo bench clean

$(BIN)/medvqa: setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[train,quant,app,dev]'
	touch $@

install: $(BIN)/medvqa

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/medvqa demo --out demo-out

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf demo-out .pytest_cache .ruff_cache
