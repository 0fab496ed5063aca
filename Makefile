# The two commands of the README. Each installs what it needs first.
.PHONY: demo test install lint typecheck unit bench clean

VENV := .venv
PY := $(VENV)/bin/python
# Tests run on 2 workers: the CI machine has 2 cores.
PYTEST_ARGS ?= -n 2

demo:
	@scripts/bootstrap.sh
	$(VENV)/bin/policyfabric demo examples/demo.yaml

test:
	@scripts/bootstrap.sh test
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

install:
	@scripts/bootstrap.sh test

bench:
	@scripts/bootstrap.sh test
	$(PY) bench/api.py
	$(PY) bench/opflex_fanout.py
	$(PY) bench/converge.py --n 50,500,1000
	$(PY) bench/secgroups.py
	$(PY) bench/vs_ovn.py
	$(PY) bench/failover.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis src/*.egg-info
