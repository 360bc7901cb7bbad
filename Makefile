# The two quick-start commands: `make demo` and `make test` (README). Each creates .venv if
# missing and installs the project into it (idempotent: a stamp keyed on pyproject.toml), then runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 \
	RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PYTEST_ARGS ?=

.PHONY: venv demo test test-core test-all bench gpu-check mmpose test-mmpose clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, from the releases on this machine's disk, so no other torch is ever resolved
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test,download]"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: venv
	$(OFFLINE) $(PY) -m humanverse.cli demo --out out/demo

test: venv
	$(OFFLINE) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The core alone (no extras) in a fresh virtual environment reads a dataset without torch or Ray.
test-core: venv
	$(OFFLINE) $(PY) -m pytest -m slow tests/test_core_install.py $(PYTEST_ARGS)

test-all: venv
	$(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS)

# The optional MMPose backend (pose.backend: mmpose), installed into .mmpose/lib beside the venv, not
# into it: mmengine needs pkg_resources (setuptools<81) and xtcocotools is built from source (~1 min).
# `make test-mmpose` runs the tests that need it (MMPose's own forward against the converter, the
# backend's coordinate chain and checkpoint checks); they skip without it. Reinstalled when this
# file (its pins) changes.
MMPOSE := .mmpose
mmpose: $(MMPOSE)/.installed

$(MMPOSE)/.installed: Makefile | venv
	rm -rf $(MMPOSE)/lib $(MMPOSE)/build
	$(PY) -m pip install -q --no-deps --target $(MMPOSE)/lib mmengine==0.10.7 mmcv-lite==2.1.0 mmpose==1.3.2 \
		mmdet==3.3.0 mmpretrain==1.2.0 json_tricks==3.17.3 munkres==3.0.0 addict==2.4.0 yapf==0.43.0 \
		terminaltables==3.1.10 shapely==2.2.0 einops==0.8.2 "setuptools<81" model-index==0.1.11 \
		ordered-set==4.1.0 markdown==3.11.4
	$(PY) -m pip install -q --target $(MMPOSE)/build cython
	PYTHONPATH=$(MMPOSE)/build:$(MMPOSE)/lib $(PY) -m pip install -q --no-deps --no-build-isolation \
		--no-binary xtcocotools --target $(MMPOSE)/lib xtcocotools==1.14.3
	@touch $@

test-mmpose: mmpose
	$(OFFLINE) PYTHONPATH=$(MMPOSE)/lib $(PY) -m pytest -k mmpose tests/test_pose.py \
		tests/test_vitpose_convert.py $(PYTEST_ARGS)

bench: venv
	$(OFFLINE) OMP_NUM_THREADS=1 $(PY) bench/shards.py
	$(OFFLINE) OMP_NUM_THREADS=1 $(PY) bench/builder.py
	$(OFFLINE) OMP_NUM_THREADS=1 $(PY) bench/annotators.py
	$(OFFLINE) OMP_NUM_THREADS=1 $(PY) bench/train_loader.py
	$(OFFLINE) OMP_NUM_THREADS=1 $(PY) bench/train_step.py

# Every model class at real size with random weights on one GPU (bf16): stage images/s, one
# training step per stage (time, memory, MFU), stage-1 sampling, the LSDM's SD-2 identity. One JSON
# object; under 5 min on an H100. Without CUDA it runs at reduced size on the CPU.
gpu-check: venv
	$(OFFLINE) $(PY) bench/gpu_check.py

clean:
	rm -rf out .pytest_cache
