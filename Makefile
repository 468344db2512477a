# napari-sam2 developer commands. Every target creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Pinned CPU build of torch, installed before anything else so that no package pulls a CUDA build.
TORCH  := torch==2.13.0

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/napari-sam2 demo

bench: $(STAMP)
	$(PY) benchmarks/bench_image_encoder.py
	$(PY) benchmarks/bench_bundled.py
	$(PY) benchmarks/bench_image.py
	$(PY) benchmarks/bench_windows.py
	$(PY) benchmarks/bench_drift.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
