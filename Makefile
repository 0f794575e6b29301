# napari-skipseg: `make run` opens napari with the plugin, `make test` runs the test suite.
# Both set everything up first in .venv (Python 3.10+).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup run test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: the CPU build where there is no NVIDIA GPU (a plain `torch` pulls CUDA, GBs)
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install --quiet "torch>=2.1"; \
	else \
		$(BIN)/pip install --quiet torch==2.13.0 || \
		$(BIN)/pip install --quiet "torch>=2.1" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(BIN)/pip install --quiet -e ".[all,test]"
	# pytorch-3dunet's networks need only torch, numpy and scikit-image; its torchvision requirement
	# would bring a wheel that fails to import beside the CPU torch build
	$(BIN)/pip install --quiet --no-deps "pytorch3dunet>=1.9"
	touch $(STAMP)

run: setup
	$(BIN)/skipseg view

# two worker processes (pytest-xdist), each with its own Xvfb: the suite is mostly single-threaded
test: setup
	$(BIN)/python -m pytest -q -ra -n auto --maxprocesses=2

test-fast: setup
	$(BIN)/python -m pytest -q -n auto --maxprocesses=2 -m "not slow"

lint: setup
	$(BIN)/ruff check napari_skipseg tests benchmarks

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) dist build .pytest_cache
