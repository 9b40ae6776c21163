# dbpaper: `make test` and `make book` work on a fresh machine with Python 3.11 and make.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# The chapters' stored outputs are computed with AVX2 kernels on every x86 machine: ATen, MKL and
# oneDNN would otherwise take AVX-512 paths where a CPU has them and round differently, and a
# training run in a chapter would print other digits than the machine that stored its outputs.
# (No effect on other architectures; the package tests and the benchmarks use the machine as it is.)
NOTEBOOK_ISA := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2

.PHONY: all venv test test-package test-notebooks book notebooks figures bench gpu-check lint clean

all: test book

# The book's environment: the library with every extra, at the exact versions of constraints.txt
# (pyproject.toml itself asks only for ranges; torch first, so that the ranges resolve to its pin).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing dbpaper and the book's pinned environment into $(VENV) (log: $(VENV)/pip.log)"
	@$(BIN)/python -m pip install --progress-bar off -q -c constraints.txt torch > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@$(BIN)/python -m pip install --progress-bar off -q -c constraints.txt -e ".[paper,book,test,dev]" >> $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@touch $(STAMP)

# Rewrite constraints.txt from a fresh resolve of the ranges (review the diff, rebuild the book, commit).
.PHONY: lock
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --progress-bar off -q "torch==$$(sed -n 's/^torch==//p' constraints.txt)"
	.venv-lock/bin/python -m pip install --progress-bar off -q ".[paper,book,test,dev,check]"
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude dbpaper | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

venv: $(STAMP)

test: test-package test-notebooks

test-package: $(STAMP)
	$(BIN)/python -m pytest tests -n $(JOBS) -q

test-notebooks: $(STAMP)
	$(NOTEBOOK_ISA) $(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with book/sanitize.cfg \
		-p no:cacheprovider -n $(JOBS) --dist loadfile -q book examples/quickstart.ipynb

# BOOK_EXECUTE=off renders the stored outputs (CI: make test has just executed and compared every chapter)
BOOK_EXECUTE ?=
book: $(STAMP)
	$(NOTEBOOK_ISA) DBPAPER_BOOK_EXECUTE=$(BOOK_EXECUTE) $(BIN)/jupyter-book build . --all --builder html -W -n --keep-going
	@echo "The book is built: open $(CURDIR)/_build/html/index.html"

# Re-execute every chapter (or CHAPTERS="book/a.ipynb book/b.ipynb") in place so that its stored
# outputs are current (then commit them).
notebooks: $(STAMP)
	$(NOTEBOOK_ISA) $(BIN)/python tools/run_notebooks.py $(or $(CHAPTERS),book)

figures: $(STAMP)
	$(NOTEBOOK_ISA) $(BIN)/python -m dbpaper figures

bench: $(STAMP)
	$(BIN)/python -m dbpaper bench

# On a machine with a CUDA GPU: the CUDA tests, then the whole benchmark on the GPU (compiled peers included),
# bounded to 8 minutes in all; the result goes to bench-out/bench-cuda.json (not into the book).
GPU_BENCH_ARGS ?= --budget 4
gpu-check: $(STAMP)
	@$(BIN)/python -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu-check: CUDA is not available here (torch ' + torch.__version__ + ')')"
	timeout 480 bash -c '$(BIN)/python -m pytest tests -q -k cuda && \
		$(BIN)/python -m dbpaper bench --device cuda --out bench-out/bench-cuda.json --no-progress $(GPU_BENCH_ARGS)'

lint: $(STAMP)
	$(BIN)/ruff check dbpaper tests tools

clean:
	rm -rf _build .pytest_cache

# Open every page of the built book (run `make book` first) in headless Chromium, at 1280 and 400 px,
# with MathJax served from node_modules and no network: fails on math errors, raw TeX, unresolved
# references, overflowing content, console errors and broken resources. Screenshots: _build/screenshots/.
# Extra options: make check-html CHECK_HTML_ARGS="--pages errata --no-screenshots --report report.json"
CHECK_HTML_ARGS ?=
.PHONY: check-html
check-html: $(STAMP)
	@test -x /usr/bin/chromium || { echo "check-html needs Debian's Chromium: apt-get install -y chromium"; exit 1; }
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install --progress-bar off -q -c constraints.txt playwright
	@test -f node_modules/mathjax/es5/tex-mml-chtml.js || { command -v npm >/dev/null || { echo "check-html needs npm: apt-get install -y npm"; exit 1; }; npm ci --no-audit --no-fund; }
	$(BIN)/python tools/check_html.py $(CHECK_HTML_ARGS)
