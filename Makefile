# The two commands of the README's quick start:
#   make demo   - the whole job on the sandbox PACS, SQLite and a local Prefect server
#   make test   - every test, starting the real servers they need
# .ci/run calls `make test`.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# pytest-xdist workers for `make test`. The integration tests mostly wait on servers, so
# two workers halve the suite on a 2-core machine; each starts its own servers.
TEST_WORKERS ?= 2

.PHONY: demo test lint bench system-deps bytecode clean

# The demo needs pacsflow only; the tests and benchmarks also its test extra.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(BIN)/.installed bytecode
	$(BIN)/pacsflow demo

# An editable install leaves this checkout's modules uncompiled, and with
# PYTHONDONTWRITEBYTECODE set (as in many containers, and on this machine kind) every
# `pacsflow` start, flow run and sender process compiled them again: 0.15 s of each
# start-up, measured. compileall writes what is missing or stale and skips the rest.
bytecode: $(BIN)/.installed
	$(BIN)/python -m compileall -q pacsflow flows blocks deployments

system-deps:
	bash scripts/system-deps.sh

test: $(BIN)/.installed-test system-deps bytecode
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

bench: $(BIN)/.installed-test system-deps bytecode
	$(BIN)/python -m bench.deidentify
	$(BIN)/python -m bench.source_limits
	$(BIN)/python -m bench.idle_associations
	$(BIN)/python -m bench.manifest_scale
	@# End to end (goals 1-4 and 6 of issue 6): each prints PASS/FAIL and exits 1 on FAIL; all run.
	@status=0; for b in saturation small_studies large_studies shell_loop two_workers; do \
	  echo; echo "== bench.$$b"; $(BIN)/python -m bench.$$b || status=1; done; exit $$status

# pacsflow's own Prefect server keeps its database under .pacsflow/, and the demo's served
# deployments their sandbox: stop both (by the pids they recorded, waiting for them to exit)
# before deleting that. deployments/server.py and background.py need only the standard
# library, so this works without the venv too.
clean:
	$(PYTHON) -c 'from deployments.background import stop_served as stop; s = stop(); print(f"stopped the served demo deployments, pid {s.pid}" if s else "no served demo running")'
	$(PYTHON) -c 'from deployments.server import stop_local_server as stop; s = stop(); print(f"stopped the Prefect server, pid {s.pid}" if s else "no pacsflow Prefect server running")'
	rm -rf $(VENV) .pacsflow
