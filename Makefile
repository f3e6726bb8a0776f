# The two commands a newcomer needs: `make demo` (install, ingest the samples, ask) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: setup setup-dev demo test test-unit lint bench eval-set eval-answers

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

# Figures go to BENCHMARKS.md; each script compares LocalCat with the raw library in one run.
bench:
	$(PY) bench/pipeline_overhead.py
	$(PY) bench/retrieval.py
	$(PY) bench/ingest.py
	$(PY) bench/server.py

# The retrieval and answer eval sets from Debian's python3.11-doc (apt-get install -y python3.11-doc).
FAQ_SET = $${XDG_DATA_HOME:-$$HOME/.local/share}/localcat/eval/python-faq
eval-set:
	$(PY) scripts/build_eval_set.py
	$(VENV)/bin/localcat eval $(FAQ_SET)

# Answer quality on the FAQ's held-out questions (slow: every question runs the model).
eval-answers:
	$(VENV)/bin/localcat eval $(FAQ_SET) --answers $(FAQ_SET)/answers.jsonl --split heldout --work-dir /tmp/localcat-faq-eval
