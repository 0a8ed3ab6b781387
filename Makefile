# ifkit: make setup | reproduce | test | test-browser | lab | notebooks | figures | clean-notebooks | lint
#
# Everything runs from the project's own .venv. `setup` is idempotent and cheap when nothing changed:
#   - .venv is created only if missing;
#   - pip runs only when pyproject.toml or constraints.txt is newer than the stamp .venv/.installed;
#   - the Debian data packages are installed only when their files are missing.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
IFKIT   := $(VENV)/bin/ifkit
PYTEST  := $(PY) -m pytest
# The unit tests on 2 workers (pytest-xdist); --dist loadfile keeps each test file on one worker, so a module's
# shared fixtures (a trained model, the gloo ranks' one spawn) are built once; files are handed out in collection
# order (tests/conftest.py puts the files with slow tests first), not reordered by their number of tests.
# -p no:nbval: the unit tests run no notebook, and loading the nbval plugin (nbformat, jsonschema, jupyter_client)
# costs ~3 s of CPU in each of the 3 pytest processes before the first test.
# Two tiers, both run by `make test` (and so by CI): the unit tests (-m "not slow", the quick loop while editing)
# and the tests marked slow (fresh interpreters, torch.compile, end-to-end runs and trainings that cannot shrink
# further; pyproject.toml's marker). `pytest tests/` alone runs both.
XDIST   := $(PYTEST) -q -p no:nbval -n 2 --dist loadfile --no-loadscope-reorder
UNIT    := $(XDIST) -m "not slow" tests/
SLOW    := $(XDIST) -m slow tests/
# nbval over every notebook; --nbval-lax checks that cells run (and their asserts hold), not that outputs match.
NBVAL   := MPLBACKEND=Agg $(PYTEST) -q --nbval-lax --nbval-current-env
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNE := /usr/share/games/fortunes/fortunes
APT_PKGS := dataset-fashion-mnist fortunes
# The browser test drives Debian's Chromium with the `playwright` package (the `browser` extra); playwright never
# downloads a browser of its own here.
CHROMIUM ?= /usr/bin/chromium
BROWSER_STAMP := $(VENV)/.installed-browser
# `make lab` listens on this machine only; `make lab LAB_IP=0.0.0.0` to reach it from elsewhere (it keeps its token).
LAB_IP  ?= 127.0.0.1
LAB_ARGS ?=

.PHONY: help setup data reproduce test test-unit test-slow test-notebooks test-solutions test-browser chromium lab notebooks figures \
	clean-notebooks lint

help:
	@echo "make setup            create .venv, install ifkit (CPU torch) and the Debian data packages"
	@echo "make reproduce        run every experiment (full size) and draw the figures"
	@echo "make test             unit + slow tests, every notebook in FAST mode, the browser test (what CI runs)"
	@echo "make test-unit        unit tests, the quick loop while editing (~1.5 min on 2 workers; skips the slow ones)"
	@echo "make test-slow        the tests marked slow: fresh processes, torch.compile, end-to-end runs (~1.3 min)"
	@echo "make test-notebooks   every notebook in FAST mode under nbval (~3.5 min)"
	@echo "make test-solutions   the notebooks with every exercise solved (notebooks/solutions/), checks strict"
	@echo "make test-browser     notebooks 00, 01 and 05 in JupyterLab in headless Chromium: widgets, an exercise (~1.5 min)"
	@echo "make lab              JupyterLab on 127.0.0.1 (as root too: adds --allow-root; LAB_IP=..., LAB_ARGS=...)"
	@echo "make notebooks        run every notebook at full size (slow)"
	@echo "make figures          redraw figures/ from results/"
	@echo "make clean-notebooks  strip outputs and execution counts from notebooks/*.ipynb"
	@echo "make lint             ruff check ifkit tests"
	@echo "make bench-compare    ifkit vs captum/dattri/pyDVL in .venv-compare -> results/bench_compare.csv (~2 h)"
	@echo ""
	@echo "ifkit reproduce --help lists every experiment with its full and --fast run times."

setup: $(STAMP) data

$(PY):
	python3 -m venv $(VENV)

# The constraints file pins the CPU build of torch; without it pip would resolve a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(VENV)/bin/pip install -c constraints.txt -e ".[notebooks,dev]"
	touch $(STAMP)

data:
	@if [ -f $(FASHION) ] && [ -f $(FORTUNE) ]; then \
		: ; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages: $(APT_PKGS)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PKGS); \
	else \
		echo "Fashion-MNIST/fortunes are missing and this is not root; run:"; \
		echo "    sudo apt-get update && sudo apt-get install -y $(APT_PKGS)"; \
	fi

reproduce: setup
	$(IFKIT) reproduce all --jobs 2
	$(IFKIT) figures

# Run the tutorials (notebooks/NN_*.ipynb) with nbval, FAST=$(1); pytest exits 5 when it collects nothing, so an
# empty notebooks/ is skipped.
define run_notebooks
	@if ls notebooks/[0-9][0-9]_*.ipynb >/dev/null 2>&1; then \
		echo "IFKIT_FAST=$(1) $(NBVAL) notebooks/[0-9][0-9]_*.ipynb"; \
		IFKIT_FAST=$(1) $(NBVAL) notebooks/[0-9][0-9]_*.ipynb; \
	else \
		echo "no notebooks in notebooks/"; \
	fi
endef

# The same tutorials with every exercise filled in from notebooks/solutions/ (scripts/fill_solutions.py), FAST,
# where every exercise check must pass (IFKIT_EXERCISES_STRICT=1). The solved copies are removed afterwards.
define run_solutions
	@$(PY) scripts/fill_solutions.py
	@if ls notebooks/solved_*.ipynb >/dev/null 2>&1; then \
		echo "IFKIT_FAST=1 IFKIT_EXERCISES_STRICT=1 $(NBVAL) notebooks/solved_*.ipynb"; \
		IFKIT_FAST=1 IFKIT_EXERCISES_STRICT=1 $(NBVAL) notebooks/solved_*.ipynb; rc=$$?; \
		$(PY) scripts/fill_solutions.py --clean; exit $$rc; \
	fi
endef

# One recipe, so the unit tests always run before the notebooks, and the notebooks before the browser test
# (also under make -j).
test: setup
	$(UNIT)
	$(SLOW)
	$(call run_notebooks,1)
	$(call run_solutions)
	$(MAKE) --no-print-directory test-browser

test-unit: setup
	$(UNIT)

test-slow: setup
	$(SLOW)

test-notebooks: setup
	$(call run_notebooks,1)

test-solutions: setup
	$(call run_solutions)

notebooks: setup
	$(call run_notebooks,0)

# JupyterLab refuses to start as root without --allow-root: add it only then. Its kernels inherit this environment,
# so `IFKIT_FAST=1 make lab` (or `make lab IFKIT_FAST=1`) runs every notebook in FAST mode (tests/test_docs.py).
lab: setup
	@if [ "$${IFKIT_FAST-0}" != 0 ]; then echo "IFKIT_FAST=$$IFKIT_FAST: notebooks run in FAST mode (small sizes)"; \
	else echo "IFKIT_FAST is off: notebooks run at full size (IFKIT_FAST=1 make lab for FAST mode)"; fi
	$(VENV)/bin/jupyter lab --ip=$(LAB_IP) $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

$(BROWSER_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(VENV)/bin/pip install -c constraints.txt -e ".[notebooks,dev,browser]"
	touch $(BROWSER_STAMP)

chromium:
	@if [ -x $(CHROMIUM) ]; then \
		: ; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else \
		echo "the browser test needs Chromium at $(CHROMIUM); run:"; \
		echo "    sudo apt-get update && sudo apt-get install -y chromium"; \
		exit 1; \
	fi

# JupyterLab (IFKIT_FAST=1, 127.0.0.1, a random port and token) in headless Chromium: tests/browser/test_lab.py.
# Screenshots and Lab's log land in .browser-test/.
test-browser: setup $(BROWSER_STAMP) chromium
	IFKIT_BROWSER_TEST=1 IFKIT_CHROMIUM=$(CHROMIUM) $(PYTEST) -q -s tests/browser

figures: setup
	$(IFKIT) figures

# Standard library only: works before `make setup`.
clean-notebooks:
	python3 scripts/strip_notebooks.py

lint: setup
	$(VENV)/bin/ruff check ifkit tests

# ifkit against captum, dattri and pyDVL on the same work (benchmarks/compare_libraries.py), on both workloads.
# Its own venv, so no library becomes an ifkit dependency; constraints.txt keeps torch the CPU build (pip fails
# rather than pull CUDA). pyDVL 0.10's influence package also imports dask.distributed and zarr (< 3), which it
# does not declare. The '*' .gitignore keeps the venv out of git status, as venvs from Python >= 3.13 do.
.PHONY: bench-compare
bench-compare:
	@test -x .venv-compare/bin/python || { python3 -m venv .venv-compare && echo '*' > .venv-compare/.gitignore; }
	.venv-compare/bin/pip install -q -c constraints.txt torch captum dattri pydvl "dask[distributed]" "zarr<3" -e .
	TQDM_DISABLE=1 .venv-compare/bin/python benchmarks/compare_libraries.py --out results/bench_compare.csv
	TQDM_DISABLE=1 OMP_NUM_THREADS=1 .venv-compare/bin/python benchmarks/compare_libraries.py --workload fmnist4k \
		--out results/bench_compare.csv
