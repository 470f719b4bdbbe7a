# Every target sets up what it needs. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
DEMO_DIR ?= runs/demo
DEMO_STEPS ?= 800
SHIPPED_MODEL := assets/fmnist-patronus
TRAIN ?= 0
PYTEST_ARGS ?=
# The Triton of the GPU machines (their torch builds ship it): the kernels are also compiled for
# sm_90 with it (tests/test_kernels_compile.py), in a folder of its own beside the venv's Triton.
GPU_TRITON := 3.6.0
GPU_TRITON_DIR := $(VENV)/triton-$(GPU_TRITON)

.PHONY: setup system-deps demo demo-train test bench lint gpu-check clean

$(STAMP): .ci/requirements.txt pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "== installing the pinned dependencies into $(VENV) (about a minute)"
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r .ci/requirements.txt
	@echo "== building the C++ extension patronus._C (1-2 minutes on 2 cores)"
	$(PY) -m pip install --quiet --no-build-isolation -e .
	@echo "== set up: $(VENV)"
	touch $@

$(GPU_TRITON_DIR)/.installed: | $(STAMP)
	@echo "== Triton $(GPU_TRITON), the GPU machines' version, into $(GPU_TRITON_DIR) (for one test)"
	$(PY) -m pip install --quiet --no-deps --target $(GPU_TRITON_DIR) triton==$(GPU_TRITON)
	touch $@

setup: $(STAMP) $(GPU_TRITON_DIR)/.installed system-deps

# Debian packages where apt is available: Fashion-MNIST (else the training demo falls back to
# synthetic data) and Chromium (the report's rendering test; skipped, with the reason, without it).
system-deps:
	@missing=""; \
	[ -d $(FMNIST_DIR) ] || missing="$$missing dataset-fashion-mnist"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then \
		echo "system packages present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "== installing Debian packages:$$missing"; \
		(apt-get update -qq && apt-get install -y -qq $$missing >/dev/null) \
		|| echo "could not install$$missing"; \
	else \
		echo "apt-get unavailable (or not root): not installing$$missing"; \
	fi

# The interpretability report of the shipped Fashion-MNIST model; TRAIN=1 first trains a model
# from scratch (demo-train) and reports on it instead.
demo: setup
	$(PY) -m patronus info
ifeq ($(TRAIN),1)
	$(MAKE) demo-train
	$(PY) -m patronus report $(DEMO_DIR) --out $(DEMO_DIR)/report
else
	rm -rf $(DEMO_DIR)
	@echo "== the report of $(SHIPPED_MODEL) (about 2 minutes on 2 cores)"
	$(PY) -m patronus report $(SHIPPED_MODEL) --out $(DEMO_DIR)/report
	$(PY) -m patronus sample $(SHIPPED_MODEL) --num 16 --variations 2 --steps 50 --clip \
		--out $(DEMO_DIR)/test_samples
endif
	@echo "open $(DEMO_DIR)/report/report.html in a browser"

# Train a small Fashion-MNIST model from scratch, then sample and reconstruct.
demo-train: setup
	rm -rf $(DEMO_DIR)
	@echo "== training $(DEMO_STEPS) steps of fmnist-cpu into $(DEMO_DIR)"
	$(PY) -m patronus train --preset fmnist-cpu --fallback-synthetic --out $(DEMO_DIR) \
		--steps $(DEMO_STEPS) --ema 0.995 --log-every 10 --checkpoint-every 400 --sample-every 400
	$(PY) -m patronus sample $(DEMO_DIR) --num 16 --variations 2 --steps 50 --clip \
		--out $(DEMO_DIR)/test_samples
	$(PY) -m patronus reconstruct $(DEMO_DIR) --num 16 --steps 50 \
		--out $(DEMO_DIR)/test_reconstructions
	@echo "run folder: $(DEMO_DIR) (loss_curve.png, metrics.csv, samples/, checkpoints/," \
		"test_samples/samples.png, test_reconstructions/reconstructions.png)"

test: setup
	PATRONUS_GPU_TRITON=$(GPU_TRITON_DIR) $(PY) -m pytest -q $(PYTEST_ARGS)
	$(PY) -m pytest -q benchmarks --benchmark-disable

bench: setup
	$(PY) -m pytest benchmarks -q --benchmark-min-rounds=3 --benchmark-max-time=2 \
		--benchmark-json=benchmarks/results/latest.json
	$(PY) benchmarks/report.py benchmarks/results/latest.json

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# On a GPU machine, with its own python3 (no venv, no installs): build the extension, run the
# CUDA tests and the benchmarks, write everything under $$OUT.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info patronus/_C*.so .pytest_cache .benchmarks
