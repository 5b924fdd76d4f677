# One command each, from a fresh clone: `make demo` and `make test` build .venv first when needed.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh
	touch $(STAMP)

## demo: FLIP-score sample responses with a tiny judge served by a real vLLM server
demo: $(STAMP)
	bash scripts/demo.sh

## test: the whole suite, end-to-end tests included
test: $(STAMP)
	$(PY) -m pytest -q tests

## test-fast: the suite without the slow end-to-end tests
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(PY) benchmarks/judge_stage.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .cache output
