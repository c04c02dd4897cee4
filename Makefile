# Quick start: `make demo` (the demo pipeline on embedded defaults) and `make test`
# (the whole suite on real Mosquitto, VictoriaMetrics and MicroPython).  Both set up
# what they need themselves and are safe to run again.

PYTHON ?= python3
VENV   := .venv
MPY_JS := tools/micropython
# Stamps live inside what they stand for, so deleting .venv or node_modules redoes the setup.
VENV_STAMP := $(VENV)/.dordt-installed
TEST_STAMP := $(VENV)/.dordt-test-installed
NPM_STAMP  := $(MPY_JS)/node_modules/.dordt-installed
# micropython-lib's umqtt.simple for the virtual board's ROM (fetched once, then offline)
UMQTT      := $(MPY_JS)/packages/umqtt/simple.py

.PHONY: demo test setup setup-test apt lint clean fuzz

demo: $(VENV_STAMP)
	$(VENV)/bin/dordt demo $(ARGS)

# Both cores: a test file runs on one worker (its module fixtures stay together).
test: setup-test
	$(VENV)/bin/python -m pytest -n auto --dist loadfile $(ARGS)

# Every fuzz target for FUZZ_S seconds (fuzz/run.sh says how: coverage-guided, then the C
# targets under ASan + UBSan, with libasan preloaded).  Summary: build/fuzz/summary.txt.
FUZZ_S ?= 60
fuzz: setup-test
	fuzz/run.sh $(FUZZ_S) $(TARGETS)

setup: $(VENV_STAMP)
# apt first: the venv's install builds the C frame path with libcrypto's headers.
setup-test: apt $(TEST_STAMP) $(NPM_STAMP) $(UMQTT)

# Checks for the programs each time (cheap) and installs only what is missing.
apt:
	@scripts/ensure-apt.sh

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

$(VENV_STAMP): pyproject.toml setup.py gateway/_speedups.c scripts/ensure-venv.sh
	@scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)" ""
	@touch $@

$(TEST_STAMP): pyproject.toml setup.py gateway/_speedups.c scripts/ensure-venv.sh
	@scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)" "[test]"
	@touch $(VENV_STAMP) $@

$(NPM_STAMP): $(MPY_JS)/package.json $(MPY_JS)/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || scripts/ensure-apt.sh nodejs npm
	cd $(MPY_JS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(UMQTT): provisioning/vboard_net.py | $(TEST_STAMP)
	$(VENV)/bin/python -m provisioning.vboard_net fetch-umqtt
	@touch $@

clean:
	rm -rf $(VENV) $(MPY_JS)/node_modules $(MPY_JS)/packages dordt-demo .stamps
