# Two commands on a fresh machine: `make run` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build CI runs; on a CUDA machine: make TORCH_SPEC='torch==2.11.0' ...
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test test-extended test-matrix validate-published bench clean lock

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
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

# Upgrade the pinned packages on purpose: resolve pyproject.toml afresh in a scratch venv and
# write what it installed to constraints.txt (then run `make test` before committing it).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q "$(TORCH_SPEC)"
	.venv-lock/bin/pip install -q -e '.[test]'
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/pip freeze --exclude-editable \
	  | grep -viE '^(torch|triton|nvidia-|llmplan)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) build *.egg-info
