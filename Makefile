# The README's two commands: `make sweep` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.prunesweep-installed
STORAGE ?= $(CURDIR)/results
NAME   ?= quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: venv sweep test test-fast bench gpu-check clean

# pip's progress in one line per step (its whole output in .venv/pip.log)
SHELL := /bin/bash
PIP_PROGRESS := awk '/^Collecting/ {n++; open = 1; printf "\r  %d packages collected, the last %-45s", n, $$2; fflush()} \
	/^Installing collected/ {open = 0; printf "\n  installing them (torch and Ray take the longest)...\n"; fflush()} \
	/^(ERROR|error)/ {print; fflush()} END {if (open) printf "\n"}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@echo "make: installing prunesweep and what it needs (torch, Ray, pandas, ...) into $(VENV); minutes on a fresh machine"
	$(PY) -m pip install -q --upgrade pip
	@set -o pipefail; $(PY) -m pip install -e '.[test]' 2>&1 | tee $(VENV)/pip.log | $(PIP_PROGRESS) \
	  || { echo "make: pip install failed; its whole output is in $(VENV)/pip.log"; exit 1; }
	touch $(STAMP)

venv: $(STAMP)

sweep: $(STAMP)
	$(VENV)/bin/prunesweep run sweeps/configs/quickstart.yaml --storage $(STORAGE) --name $(NAME)
	$(VENV)/bin/prunesweep analyze $(STORAGE)/$(NAME) --out $(STORAGE)/$(NAME)/analysis
	@echo "report: $(STORAGE)/$(NAME)/analysis/report.md"
	@echo "plots:  $(STORAGE)/$(NAME)/analysis/*.png"

# pytest's exit code 5 (no tests collected) is a failure, not a pass.
test: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider -n 2 --dist loadscope --durations=20; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: no tests were collected"; exit 1; fi; exit $$rc

# the unit tier: everything that needs neither Ray nor an S3 server (markers in pyproject.toml)
test-fast: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider -m unit --durations=10; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test-fast: no tests were collected"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m benchmarks --json benchmarks/results.json

# on a CUDA machine, offline, with torch, Ray and pytest importable (no install step): the tests
# marked gpu and the GPU benchmark, figures in gpu-check.json (at most ~8 minutes on one GPU)
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) -m benchmarks.gpu_check --json gpu-check.json

clean:
	rm -rf $(VENV) build *.egg-info
