# Two commands on a fresh machine: `make run` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build CI runs; on a CUDA machine: make TORCH_SPEC='torch==2.11.0' ...
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test test-extended test-matrix validate-published bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m compileall -q planner presets runtime tui  # editable installs skip this
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/llmplan

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal -q -p no:cacheprovider -m "not extended"

# What the suite samples, in full: more families and cases of the heaviest runtime checks.
test-extended: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal -q -p no:cacheprovider -m extended

# Every layout the contract accepts, for four tiny model families, against one process.
test-matrix: $(STAMP)
	$(BIN)/python bench/layout_matrix.py

# The cost model against every published GPU run, each held out of its own fit (~2 min).
validate-published: $(STAMP)
	$(BIN)/llmplan validate --published

bench: $(STAMP)
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/planner_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
