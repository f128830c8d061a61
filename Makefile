# Two commands do all set-up: `make demo` and `make test`. Both create or refresh .venv first.
VENV := .venv
PY := $(VENV)/bin/python
LOOKALIKE := $(VENV)/bin/lookalike
STAMP := $(VENV)/.installed
SAMPLE := var/sample/marketplace.db

.PHONY: demo test week-test stack-test install clean sample

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	bash scripts/bootstrap.sh

install: $(STAMP)

$(SAMPLE): | $(STAMP)
	$(LOOKALIKE) sample-data --out var/sample

sample: $(SAMPLE)

## demo: sample marketplace (if missing) + the nightly pipeline through Airflow + a summary
demo: $(STAMP) $(SAMPLE)
	$(LOOKALIKE) run --config lookalike.demo.yaml

## test: the whole test suite
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

## week-test: a week of nights backfilled on a real Airflow scheduler, with a killed extract and an unreachable source
week-test: $(STAMP)
	$(PY) -m pytest -q -m week

## stack-test: build every image of docker-compose.yml and run the DAGs in the stack (root; see scripts/stack-test.sh)
stack-test: $(STAMP)
	bash scripts/stack-test.sh

clean:
	rm -rf var
