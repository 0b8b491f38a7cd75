# derainkit — one entry point for set-up, tests, benchmarks and the paper's tables.
#   make setup             virtual environment in .venv with the kit (CPU torch unless a GPU is present)
#   make test              set up if needed, then the whole test suite (what CI runs)
#   make bench             benchmarks -> results/bench/*.csv and results/bench/SUMMARY.md
#   make gpu-run           on a lent GPU, within BUDGET seconds (600): CUDA tests, GPU benchmarks, then training
#                          the shipped MSGNN further (resumable) -> results/gpu/, results/bench/; DRY=1: on CPU, scaled down
#   make ship-msgnn        CANDIDATE=<run folder or .safetensors> [APPLY=1]: score a longer run of the shipped MSGNN
#                          against it (Rain100L test, three protocols); APPLY=1 replaces it only when it scores higher
#   make evaluate-prenet   PReNet's official weights on Rain100L test, three metric protocols
#   make evaluate-msgnn    the kit's shipped MSGNN checkpoint on Rain100L test, three metric protocols
#   make train-shipped     retrain that checkpoint (about an hour on 2 CPU cores)
#   make train-shipped-longer  the same config at the paper's 500 epochs from the shipped weights, resumable: each call
#                          trains up to MAX_IT more iterations (1000) on DEVICE (cpu) and checkpoints; then ship-msgnn
#   make reproduce-tables  every paper table/figure notebook (PROFILE=smoke|cpu|gpu|paper, FORCE=1 recomputes)
#   make table2            one item (table1..table5, fig7..fig9, code-vs-paper, exemplar-policies, protocol-gap)
#                          PARAMS="eval_limit=5 iterations=100" sets notebook parameters (names are checked)
#   make verdicts          every ablation row's verdict in one table (PROFILE=): results/<profile>/verdicts.{md,csv}
#   make plan              the records a run would compute, with estimated cost (PROFILE=, ITEM=table2,fig8;
#                          CALIBRATE=1 times a few steps of each model config no record has, to scale by;
#                          OUT=file.md keeps it); ends with the budget per item: measured so far, estimated to go
#   make verify            recompute the committed records into a scratch store and compare (PROFILE=, ITEM=)
#   make fill              compute missing records with many workers: EXECUTOR=local|submitit CLUSTER=slurm|local
#                          WORKERS=8 FILL_FLAGS="--partition gpu --gpus 1 --time-min 240"; then renders the tables
#   make lab               JupyterLab on notebooks/
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.derainkit-installed
SHARED ?= ../shared
EXTRAS ?= dev,notebooks

PROFILE ?= smoke
FORCE ?= 0
PARAMS ?=

# paper item -> notebook (make target = key)
NB_table1 := table1_benchmarks
NB_table2 := table2_components
NB_table3 := table3_stride
NB_table4 := table4_patch_size
NB_table5 := table5_neighbours
NB_fig7 := fig7_subnetworks
NB_fig8 := fig8_multiscale
NB_fig9 := fig9_exemplar
NB_code-vs-paper := extra_code_vs_paper
NB_exemplar-policies := extra_exemplar_policies
NB_protocol-gap := extra_protocol_gap
NB_nlcl := nlcl_real_rain
NB_unirain := unirain_four_types
ITEMS := table1 table2 table3 table4 table5 fig7 fig8 fig9 code-vs-paper exemplar-policies protocol-gap nlcl unirain

.PHONY: setup test test-fast test-notebooks bench verdicts gpu-run ship-msgnn train-shipped-longer evaluate-prenet evaluate-msgnn train-shipped clean-venv reproduce-tables lab data-link plan verify fill $(ITEMS)

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	$(PY) -c "import torch, derainkit; print('derainkit', derainkit.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
	touch $@

test: setup
	$(PY) -m pytest tests -q
	$(MAKE) --no-print-directory test-notebooks

# nbval executes every notebook with its smoke defaults into a scratch results folder (the committed
# results are not touched) and compares the outputs of the `# NBVAL_CHECK_OUTPUT` cells.
test-notebooks: setup
	scratch=$$(mktemp -d) && DERAINKIT_RESULTS=$$scratch $(PY) -m pytest -q -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks; \
	  rc=$$?; rm -rf $$scratch; exit $$rc

test-fast: setup
	$(PY) -m pytest tests -q -m "not slow"

bench: setup
	$(PY) -m bench.run_all --out results/bench

BUDGET ?= 600
DRY ?= 0
NO_TRAIN ?= 0
# DRY=1: every step scaled down, on CPU, into a temp folder (OUT=dir to choose it); never writes results/
# NO_TRAIN=1: the CUDA tests and GPU benchmarks only, sharing the whole budget (no training data needed)
gpu-run: setup
	$(PY) scripts/gpu_run.py --budget $(BUDGET) $(if $(filter 1,$(DRY)),--dry-run $(if $(OUT),--out $(OUT)),) \
	  $(if $(filter 1,$(NO_TRAIN)),--no-train)

APPLY ?= 0
ship-msgnn: setup
	@test -n "$(CANDIDATE)" || { echo "make ship-msgnn CANDIDATE=<training run folder or .safetensors file> [APPLY=1]"; exit 2; }
	$(PY) scripts/ship_msgnn.py $(CANDIDATE) $(if $(filter 1,$(APPLY)),--apply)

evaluate-prenet: setup
	$(PY) -m derainkit.cli evaluate --model prenet \
	  --weights $(SHARED)/weights/prenet/Rain100L/PReNet6_net_latest.pth \
	  --data $(SHARED)/data/rain100l/test --protocol matlab-y --protocol msgnn-rgb --protocol y-float \
	  --out results/prenet_rain100l

# The shipped MSGNN checkpoint on Rain100L test (uses the shipped weights: no --weights needed).
evaluate-msgnn: setup
	$(PY) -m derainkit.cli evaluate --model msgnn \
	  --data $(SHARED)/data/rain100l/test --protocol matlab-y --protocol msgnn-rgb --protocol y-float \
	  --out results/msgnn_shipped_rain100l

# Retrain the shipped checkpoint (about an hour on 2 CPU cores); the result is runs/shipped/<hash>/model.safetensors.
train-shipped: setup
	$(PY) -m derainkit.cli train derainkit/weights/msgnn_raintrainl.yaml \
	  --set train_data=$(SHARED)/data/rain100l/train --set val_data=$(SHARED)/data/rain100l/test

# The shipped run made longer on this machine, across sittings (`--resume auto`: the same command starts it, then
# continues it). Its own run (device is part of the run's identity), beside the GPU run's results/gpu/train/shipped/.
MAX_IT ?= 1000
DEVICE ?= cpu
train-shipped-longer: setup
	$(PY) -m derainkit.cli train derainkit/weights/msgnn_raintrainl.yaml \
	  --set train_data=$(SHARED)/data/rain100l/train --set val_data=$(SHARED)/data/rain100l/test \
	  --set epochs=500 --set init_weights=derainkit/weights/msgnn_raintrainl.safetensors --set checkpoint_every=250 \
	  --device $(DEVICE) --out results/$(DEVICE)/train/shipped --resume auto --max-iterations $(MAX_IT)
	@echo "score it against the shipped checkpoint: make ship-msgnn CANDIDATE=<the run folder above> [APPLY=1]"

clean-venv:
	rm -rf $(VENV)

# Links ../shared/data into the data root when it is there and the root lacks it (cpu/gpu profiles).
data-link: setup
	-@if [ -d $(SHARED)/data ]; then $(PY) data_scripts/link_shared.py --shared $(SHARED); fi

reproduce-tables: setup $(if $(filter smoke,$(PROFILE)),,data-link)
	@for item in $(ITEMS); do $(MAKE) --no-print-directory _notebook ITEM=$$item || exit $$?; done
	@echo "tables and figures: results/$(PROFILE)/"

$(ITEMS): setup $(if $(filter smoke,$(PROFILE)),,data-link)
	@$(MAKE) --no-print-directory _notebook ITEM=$@

# Executed copies go to results/<profile>/notebooks/; the committed notebooks are never overwritten.
# Through derainkit.experiments.run_notebook (papermill underneath): unknown parameter names and bad
# values are refused in one line (exit 2) instead of papermill's warning.
_notebook:
	@test -f notebooks/profiles/$(PROFILE).yaml || { echo "unknown PROFILE=$(PROFILE): see notebooks/profiles/"; exit 2; }
	@echo "== $(ITEM) ($(NB_$(ITEM)).ipynb, profile $(PROFILE))"
	$(PY) -m derainkit.experiments.run_notebook --profile $(PROFILE) --cwd notebooks \
	  -p force $(FORCE) -p results_dir $(CURDIR)/results $(foreach p,$(PARAMS),-p $(subst =, ,$(p))) \
	  notebooks/$(NB_$(ITEM)).ipynb results/$(PROFILE)/notebooks/$(NB_$(ITEM)).ipynb
	-@$(PY) -m derainkit.experiments.verdicts --profile $(PROFILE) > /dev/null

# Every ablation row's verdict in one table, from the rendered tables: results/<profile>/verdicts.{md,csv}
# (also refreshed after each notebook above).
verdicts: setup
	$(PY) -m derainkit.experiments.verdicts --profile $(PROFILE)

# Plan, verify and fill (derainkit.experiments.fill): ITEM= names items (comma-separated; default all).
EXECUTOR ?= local
CLUSTER ?= slurm
WORKERS ?= 1
FILL_FLAGS ?=
FILL_ARGS = --profile $(PROFILE) $(if $(ITEM),--items $(ITEM)) $(if $(CALIBRATE),--calibrate) $(foreach p,$(PARAMS),-p $(subst =, ,$(p)))

plan: setup $(if $(filter smoke,$(PROFILE)),,data-link)
	$(PY) -m derainkit.experiments.fill plan $(FILL_ARGS) $(if $(OUT),--out $(OUT))

verify: setup $(if $(filter smoke,$(PROFILE)),,data-link)
	$(PY) -m derainkit.experiments.fill verify $(FILL_ARGS)

fill: setup $(if $(filter smoke,$(PROFILE)),,data-link)
	$(PY) -m derainkit.experiments.fill run $(FILL_ARGS) --executor $(EXECUTOR) --cluster $(CLUSTER) \
	  --workers $(WORKERS) $(FILL_FLAGS)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/
