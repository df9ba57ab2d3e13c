# hashplane: two commands on a fresh machine.
#   make demo   installs into .venv and runs the whole system embedded
#   make test   installs the test dependencies and runs every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install install-test demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls only when the project's dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

install: $(STAMP)

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	@# The MQTT tests use a real Mosquitto broker when one is installed, and the dashboard
	@# test drives Debian's headless Chromium. As root we install both from Debian; without
	@# root the MQTT tests use the amqtt broker pip installed, and Chromium must be there.
	@missing=""; \
	if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then missing="mosquitto"; fi; \
	if [ ! -x /usr/bin/chromium ]; then missing="$$missing chromium"; fi; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: running as root: apt-get install$$missing (test dependencies)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	    || echo "make: apt-get failed; the MQTT tests use amqtt, the dashboard test needs /usr/bin/chromium"; \
	else echo "make: not root: MQTT tests use amqtt; the dashboard test needs /usr/bin/chromium (apt-get install chromium)"; fi
	touch $@

install-test: $(TEST_STAMP)

demo: install
	$(BIN)/hashplane demo $(DEMO_ARGS)

test: install-test
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

lint: install
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/ruff check schemas streams agents connectors api sim bench tests
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/agent_throughput.py
	$(BIN)/python bench/reaction.py
	$(BIN)/python bench/actuator.py
	$(BIN)/python bench/tuner.py
	$(BIN)/python bench/api_load.py
	$(BIN)/python bench/discover.py
	$(BIN)/python bench/control_quality.py
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) var .pytest_cache
