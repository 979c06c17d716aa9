# Two commands for a fresh machine (each creates .venv when missing):
#   make run    set up, train the default VAE, write runs/default (summary.json, figures/)
#   make test   set up, run the test suite
#   make docs   set up, build the documentation site into build/site
#   make lab    set up with JupyterLab, open the learning path's notebooks (examples/*.py) in it
#   make gpu-check [PYTHON=...]   on a GPU machine, first: the cuda tests and short CUDA benchmarks
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_DIR ?= runs/default
# pytest-xdist workers for `make test`, one torch thread each (tests/conftest.py)
TEST_WORKERS ?= auto

.PHONY: run test test-all docs lab screenshots lint gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision, pyro; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| pyro', pyro.__version__)"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pyro-vae train --out $(RUN_DIR) --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

test-all: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m ''

# Uses $(PYTHON) as it is (no venv, no PyPI): a Python that already has torch, pyro-ppl and pytest.
gpu-check:
	$(PYTHON) scripts/gpu_check.py

# The documentation site into build/site (offline; DOCS_MODE=full runs the notebooks in full)
docs: $(STAMP)
	$(BIN)/python scripts/build_docs.py

# JupyterLab on examples/: jupytext opens each .py as a notebook and pairs it with an .ipynb
# (git-ignored; the .py stays the source). Installs the [jupyter] extra into the venv once.
lab: $(STAMP)
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[jupyter]'
	cd examples && ../$(BIN)/jupyter lab

# Headless Chromium on the built site: the pages render, offline; screenshots into docs/screenshots
screenshots: docs
	$(BIN)/python scripts/check_site.py build/site --screenshots docs/screenshots
	$(BIN)/python scripts/build_docs.py --no-execute

lint: $(STAMP)
	$(BIN)/ruff check pyro_vae tests benchmarks scripts examples
	$(BIN)/ruff format --check pyro_vae tests benchmarks scripts examples

clean:
	rm -rf $(VENV) runs
