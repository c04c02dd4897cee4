# Quick start: `make demo` (the demo pipeline on embedded defaults) and `make test`
# (the whole suite on real Mosquitto, VictoriaMetrics and MicroPython).  Both set up
# what they need themselves and are safe to run again.

PYTHON ?= python3
VENV   := .venv
STAMPS := .stamps
MPY_JS := tools/micropython

.PHONY: demo test setup setup-test lint clean

demo: $(STAMPS)/venv
	$(VENV)/bin/dordt demo $(ARGS)

test: $(STAMPS)/venv-test $(STAMPS)/apt $(STAMPS)/npm
	$(VENV)/bin/python -m pytest $(ARGS)

setup: $(STAMPS)/venv
setup-test: $(STAMPS)/venv-test $(STAMPS)/apt $(STAMPS)/npm

lint: $(STAMPS)/venv-test
	$(VENV)/bin/ruff check .

$(STAMPS)/venv: pyproject.toml scripts/ensure-venv.sh
	@scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)" ""
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/venv-test: pyproject.toml scripts/ensure-venv.sh
	@scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)" "[test]"
	@mkdir -p $(STAMPS) && touch $(STAMPS)/venv $@

$(STAMPS)/apt: scripts/ensure-apt.sh
	@scripts/ensure-apt.sh
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/npm: $(MPY_JS)/package.json
	@command -v node >/dev/null || scripts/ensure-apt.sh nodejs npm
	cd $(MPY_JS) && npm install --no-audit --no-fund --loglevel=error
	@mkdir -p $(STAMPS) && touch $@

clean:
	rm -rf $(VENV) $(STAMPS) $(MPY_JS)/node_modules dordt-demo
