# BrainFM-Lightning developer targets. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# Pinned first so that no CUDA build of torch is pulled in by lightning/monai/transformers.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-fast lint bench clean test-slurm slurm-deps compare label-efficiency

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet "$(TORCH_SPEC)" -e ".[dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/brainfm fit --config configs/pretrain/quickstart.yaml

test: install slurm-deps
	$(PY) -m pytest -q tests

# The Slurm tests (part of `make test`) run a real single-node cluster; as root, install its daemons when missing.
slurm-deps:
	@if [ "$$(id -u)" = 0 ] && ! { [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ]; }; then \
		echo "installing slurm-wlm and munge for the Slurm tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; \
	fi

# A real single-node Slurm (slurm-wlm + munge, installed if missing; needs root) runs scripts/slurm/pretrain.sbatch
# with 2 CPU ranks, preempts it with SIGUSR1 and checks the requeued job resumes (~3 min).
test-slurm: install slurm-deps
	$(PY) -m pytest -q -m slurm tests/slurm

lint: install
	$(VENV)/bin/ruff check src data_modules tests benchmarks scripts

bench: install
	$(PY) benchmarks/run.py
	$(PY) benchmarks/loader.py --out loader-results.json
	$(PY) benchmarks/end_to_end.py --out bench-end-to-end.json
	$(PY) benchmarks/whole_volume.py --out bench-whole-volume.json

# BrainFM (pretrained, from scratch) vs a fixed-channel U-Net on a SYNTHETIC 4 mm demo set, with all modalities and
# each one missing: writes compare/results.md and .csv (~20 min on 2 CPU cores; e.g. COMPARE_ARGS="--steps 600").
compare: install
	$(PY) scripts/compare.py $(COMPARE_ARGS)

# Label efficiency (scripts/label_efficiency.py): BrainFM pretrained on 200 unlabelled SYNTHETIC sessions vs scratch vs
# a U-Net (and a frozen random encoder at N = 8) at 2 and 8 labelled subjects, 3 seeds, every sequence and each one
# missing, and frozen-feature probes, 800 augmented fine-tuning steps each; writes label-efficiency/results.md, .csv
# and label_efficiency.png in about three hours on 2 CPU cores (LE_ARGS="--steps 200": about an hour, too short for
# BrainFM to learn). LE_ARGS="--full" adds N = 4 and 16 and every ablation; LE_ARGS="--quick" runs every stage in
# minutes.
label-efficiency: install
	$(PY) scripts/label_efficiency.py $(LE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
