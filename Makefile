# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0 is installed before anything else so that the package's
# `torch>=2.1` requirement is already met and pip never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.pretext3d-installed

.PHONY: install demo test bench bench-modelnet40 clean

$(STAMP): pyproject.toml
	@./scripts/ensure-gl-libs.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pretext3d demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_dgcnn.py
	$(PY) benchmarks/bench_batchnorm_act.py
	$(PY) benchmarks/bench_fps.py
	$(PY) benchmarks/bench_render.py

bench-modelnet40: $(STAMP)
	$(PY) benchmarks/modelnet40_linear_svm.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
