# Stable verbs used by the README and CI: install, lint, test, run, bench, clean.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint run bench clean

install: $(VENV)/.installed

# torch is installed first and pinned to 2.13.0 so pip takes the local CPU wheel and never
# resolves the CUDA build from the index.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m model.sparse || echo "sparse kernel not built; the pure-PyTorch reference will be used"
	touch $@

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# The service with its embedded defaults: SQLite and artifacts in the per-user data directory,
# one local worker, http://127.0.0.1:8000 (API docs at /docs).
run: install
	$(BIN)/sweetspot serve --host 127.0.0.1 --port 8000

# Speed is measured by benchmarks that print JSON ratios, never by timed tests.
bench: install
	$(BIN)/sweetspot bench kernel --layers alexnet cifar --json
	$(BIN)/sweetspot bench predict --model resnet50
	$(BIN)/sweetspot bench api --duration 30

clean:
	rm -rf $(VENV) build *.egg-info
