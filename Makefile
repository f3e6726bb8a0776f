# The two commands a newcomer needs: `make demo` (install, ingest the samples, ask) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: setup setup-dev demo test test-unit lint bench

setup:
	./scripts/setup

setup-dev:
	./scripts/setup --dev

demo: setup
	$(VENV)/bin/localcat ingest samples/
	$(VENV)/bin/localcat ask "How many vacation days do employees get per year?"

test: setup-dev
	$(PY) -m pytest

test-unit:
	$(PY) -m pytest tests/unit

lint:
	$(VENV)/bin/ruff check .
