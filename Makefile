# `make test` and `make demo` work on a fresh machine: they create .venv and install the pinned versions first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: install browser test lint demo app bench clean

$(BIN)/medvqa: setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[train,quant,app,dev]'
	touch $@

# Headless Chromium for the browser test of the app (Debian's package; Playwright's own download is not used).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

# transformers' own model tests are not in its wheel: fetch the installed version's sdist tests/ into .cache/
install: $(BIN)/medvqa browser
	$(BIN)/python tools/fetch_transformers_tests.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/python -m pytest -q --durations=15

demo: install
	$(BIN)/medvqa demo --out demo-out

# The web app on the demo's model (built first if there is none yet); http://127.0.0.1:7860
app: install
	test -f demo-out/model/config.json || $(BIN)/medvqa demo --out demo-out
	$(BIN)/medvqa app --model demo-out/model

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf demo-out .pytest_cache .ruff_cache
