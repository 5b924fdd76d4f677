# One command each, from a fresh clone: `make demo` and `make test` build .venv first when needed.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup demo demo-score test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh
	touch $(STAMP)

## demo: GRPO with FLIP rewards on the embedded tiny preset: the small world's tiny judge and policy (trained
## offline on first use, a few minutes), real vLLM judge server, Ray, vLLM engine, DeepSpeed learner; the reward
## rises. OUTPUT_DIR defaults to output/grpo_flip_tiny
demo: $(STAMP)
	PRESET=tiny bash scripts/train/grpo_flip.sh

## demo-score: FLIP-score responses of every kind with the small world's judge served by a real vLLM server
demo-score: $(STAMP)
	bash scripts/demo_flip_score.sh

## test: the whole suite, the end-to-end tests in tests/e2e/ included (about 36 minutes on 2 cores the first
## time, when the small world is trained into the user's cache); prints the 25 slowest and the total
test: $(STAMP)
	$(PY) -m pytest -q --durations=25 tests

## test-fast: everything but tests/e2e/ (under 5 minutes)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e" tests

bench: $(STAMP)
	$(PY) benchmarks/judge_stage.py
	$(PY) benchmarks/grpo_step.py

## lint: the linter and the formatter's check (ruff format is the formatter: `.venv/bin/ruff format .`)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .cache output
