# The two commands of the README: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit kafka-jars ops-tools install install-dev bench bench-detection chaos dist clean

demo: $(VENV)/.installed
	$(BIN)/ae-monitor demo

test: $(VENV)/.installed-dev lint typecheck unit

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check ae_monitor tests scripts
	$(BIN)/ruff format --check ae_monitor tests scripts

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev kafka-jars ops-tools
	$(BIN)/pytest

# Prometheus, promtool, Alertmanager, amtool (Debian packages) and systemd-analyze for tests/test_deploy_*.py
# (apt-get as root or with passwordless sudo; instant once installed; without them those tests skip, saying why).
ops-tools:
	sh scripts/install_ops_tools.sh

# The Kafka broker jars for the integration tests (Maven; instant once scripts/kafka/libs is there).
kafka-jars:
	$(PYTHON) scripts/kafka_broker.py fetch

bench: $(VENV)/.installed
	$(BIN)/python scripts/bench_offline.py

# The detection benchmark (GutenTAG, SKAB, demo; ae_monitor against a rolling z-score and PCA T²+Q), 2-5 min on
# 2 idle cores. GutenTAG needs scipy < 1.15, so it runs in its own virtual environment (pyproject's `bench` extra).
BENCH_VENV := out/.venv-bench
bench-detection: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python scripts/bench_detection.py --out out/bench-detection

$(BENCH_VENV)/.installed: pyproject.toml
	mkdir -p out && $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e '.[bench]'
	touch $@

# Fault drills through a real local broker (scripts/chaos.py); prints the table of docs/serve.md (~25 min).
chaos: $(VENV)/.installed kafka-jars
	$(BIN)/python scripts/chaos.py

# The wheel to install elsewhere (docs/operations.md): dist/ae_monitor-<version>-py3-none-any.whl. ae-monitor is
# not on a package index. Built without isolation from the venv's setuptools and wheel, so it needs no network.
dist: $(VENV)/.installed
	$(BIN)/pip install --quiet -c constraints.txt "setuptools>=77" wheel
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall whenever the dependencies in pyproject.toml or their pinned versions (constraints.txt) change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,onnx,mlflow]'
	touch $@ $(VENV)/.installed

# The audio benchmark (docs/audio.md): real clips from ../shared/data/audio (skipped when absent) and the synthetic
# fault suite, the shipped recipe against two baselines; results.json, results.md and plots in build/bench-audio.
.PHONY: bench-audio
bench-audio: $(VENV)/.installed
	$(BIN)/python scripts/bench_audio.py --out build/bench-audio

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
