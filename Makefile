# make demo : install into .venv if needed, then run the demo on an embedded local Ray cluster (CPU)
# make test : install if needed, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch first, pinned: the pin takes the CPU wheel on machines without CUDA and the CUDA
# build on GPU machines; an unpinned torch would pull several GB of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/python -m raylm.demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check raylm tests bench
	$(BIN)/ruff format --check raylm tests bench

format: install
	$(BIN)/ruff format raylm tests bench
	$(BIN)/ruff check --fix raylm tests bench

bench: install
	$(BIN)/python bench/train_throughput.py
	cd bench && ../$(BIN)/python serve_latency.py
	$(BIN)/python bench/compress.py

clean:
	rm -rf outputs .pytest_cache build *.egg-info
