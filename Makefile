# All set-up happens here: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow test-all bench bench-accuracy bench-parity clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job: a small sweep on the embedded digits dataset, then the report table and plot.
demo: $(STAMP)
	$(PY) -m qresearch.demo

# Fast suite (long tests are marked `slow`: tests/slow.txt, keras.applications models), on two pytest-xdist
# workers: one test file per worker at a time, the deployment tests together (tests/conftest.py).
# `make test-slow` runs the slow ones; CI (.ci/run) runs both; `make test-all` runs everything in one session.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15
test: $(STAMP)
	$(PYTEST)

test-slow: $(STAMP)
	$(PYTEST) -m slow

test-all: $(STAMP)
	$(PYTEST) -m ''

bench: $(STAMP)
	$(PY) -m benchmarks

# Issue #12's accuracy benchmark (not a test): tfmot vs every preset, W8 PTQ and W4/W3/W2 PTQ + QAT, both layer
# policies, 2 seeds, MNIST LeNet-5 and CIFAR-10 ResNet-8 -> outputs/benchmarks/accuracy/ (notes/accuracy.md);
# then tfmot's QAT recipe on what the "same ordering under both recipes" target compares (--recipe-check).
# Options: make bench-accuracy ARGS="--datasets mnist --bits 4,2" (ARGS=--no-recipe-check: one recipe only)
bench-accuracy: $(STAMP)
	$(PY) -m benchmarks.accuracy --recipe-check $(ARGS)

# Deployment parity on models not in the tests: 20 random CNNs, then the keras.applications networks, each
# tflite_int8-quantized and verified under the three LiteRT kernel sets (benchmarks/parity.py, notes/schemes.md).
# Options: make bench-parity ARGS="--seeds 100:140"
bench-parity: $(STAMP)
	$(PY) -m benchmarks.parity $(ARGS)
	$(PY) -m benchmarks.parity --apps all $(ARGS)

clean:
	rm -rf outputs multirun wandb
