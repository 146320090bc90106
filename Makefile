# BrainFM-Lightning developer targets. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# Pinned first so that no CUDA build of torch is pulled in by lightning/monai/transformers.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-fast lint bench clean test-slurm compare

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet "$(TORCH_SPEC)" -e ".[dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/brainfm fit --config configs/pretrain/quickstart.yaml

test: install
	$(PY) -m pytest -q tests

# A real single-node Slurm (slurm-wlm + munge, installed if missing; needs root) runs scripts/slurm/pretrain.sbatch
# with 2 CPU ranks, preempts it with SIGUSR1 and checks the requeued job resumes (~3 min).
test-slurm: install
	$(PY) -m pytest -q -m slurm tests/slurm

lint: install
	$(VENV)/bin/ruff check src data_modules tests benchmarks scripts

bench: install
	$(PY) benchmarks/run.py
	$(PY) benchmarks/loader.py --out loader-results.json

# BrainFM (pretrained, from scratch) vs a fixed-channel U-Net on a SYNTHETIC 4 mm demo set, with all modalities and
# each one missing: writes compare/results.md and .csv (~20 min on 2 CPU cores; e.g. COMPARE_ARGS="--steps 600").
compare: install
	$(PY) scripts/compare.py $(COMPARE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
