# derainkit — one entry point for set-up, tests, benchmarks and the paper's tables.
#   make setup             virtual environment in .venv with the kit (CPU torch unless a GPU is present)
#   make test              set up if needed, then the whole test suite (what CI runs)
#   make bench             benchmarks -> results/bench/*.csv and results/bench/SUMMARY.md
#   make evaluate-prenet   PReNet's official weights on Rain100L test, three metric protocols
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.derainkit-installed
SHARED ?= ../shared
EXTRAS ?= dev,notebooks

.PHONY: setup test test-fast bench evaluate-prenet clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	$(PY) -c "import torch, derainkit; print('derainkit', derainkit.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
	touch $@

test: setup
	$(PY) -m pytest tests -q

test-fast: setup
	$(PY) -m pytest tests -q -m "not slow"

bench: setup
	$(PY) -m bench.run_all --out results/bench

evaluate-prenet: setup
	$(PY) -m derainkit.cli evaluate --model prenet \
	  --weights $(SHARED)/weights/prenet/Rain100L/PReNet6_net_latest.pth \
	  --data $(SHARED)/data/rain100l/test --protocol matlab-y --protocol msgnn-rgb --protocol y-float \
	  --out results/prenet_rain100l

clean-venv:
	rm -rf $(VENV)
