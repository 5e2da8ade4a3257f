# har-kit: the README's two commands are `make main` and `make test`; both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat settings.ini setup.py | cksum | cut -d' ' -f1)
PROFILE ?= quick
export MPLBACKEND := agg
export PYTHONHASHSEED := 0
# one target at a time, even under make -jN (or MAKEFLAGS=-jN): the checks rewrite har_kit/ and nbs/ that the tests import
.NOTPARALLEL:
# the venv is installed without byte-compiling its 6 GB (pip's compile step is half of a fresh setup); Python caches
# the modules the kit actually imports on their first import, so these targets let it write bytecode
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup main studies sample test test-fast export check-export check-clean lint pytest pytest-fast nbtest gpu-check

setup: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install --no-compile -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name 'Python 3 (har-kit)'
	rm -f $(VENV)/.installed-* && touch $@

## the main job: regenerate every table on the embedded synthetic benchmark, on CPU
main: setup
	$(BIN)/har-kit reproduce --profile $(PROFILE)

## the studies beyond the papers (distraction, where the maps look, training length, method x dataset matrix, selection optimism, Eq. 12 against the public code) on the same profile, reusing shared runs
studies: setup
	$(BIN)/har-kit reproduce --profile $(PROFILE) --studies

## the real-image table on the PA100K sample beside the clone (../shared/data/pa100k-sample or $$HAR_KIT_PA100K_SAMPLE)
sample: setup
	$(BIN)/har-kit reproduce --profile sample

## the tests: har_kit/ is what nbs/ exports and nbs/ is clean (compared with the working tree, so an uncommitted
## change can pass), ruff, then pytest and nbdev_test
test: setup check-export check-clean lint pytest nbtest

## under a minute: the same checks and the tests that start no kernel or process (see tests/conftest.py)
test-fast: setup check-export check-clean lint pytest-fast

SNAP := $(shell mktemp -u /tmp/har-kit-check.XXXXXX)
check-export:
	@mkdir -p $(SNAP) && cp -r har_kit $(SNAP)/
	$(BIN)/nbdev_export
	@diff -rq -x __pycache__ $(SNAP)/har_kit har_kit && echo "nbdev_export: no diff" || { echo "har_kit/ was not what nbs/ exports (nbdev_export has now rewritten it): review and commit both"; rm -rf $(SNAP); exit 1; }
	@rm -rf $(SNAP)

check-clean:
	@mkdir -p $(SNAP) && cp -r nbs $(SNAP)/
	$(BIN)/nbdev_clean
	@diff -rq -x .ipynb_checkpoints $(SNAP)/nbs nbs && echo "nbdev_clean: no diff" || { echo "nbs/ was not clean (nbdev_clean has now cleaned it): review and commit"; rm -rf $(SNAP); exit 1; }
	@rm -rf $(SNAP)

lint:
	$(BIN)/ruff check har_kit tests tools

## two test files at a time (pytest-xdist), one thread each; the longest files start first (tests/conftest.py)
pytest:
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest tests -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

pytest-fast:
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest tests -q -n 2 -m 'not slow'

## two notebooks at a time, one thread each: parallel jobs must not oversubscribe the cores
nbtest:
	T=$$(mktemp -d) && trap 'rm -rf "$$T"' EXIT && TMPDIR=$$T OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

export:
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && $(BIN)/python tools/nb2readme.py

## the paper-size GPU check on whatever GPU it finds -> outputs/reference/gpu/report.{json,md} (ARGS=--cpu-tiny: CPU rehearsal)
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) tools/gpu_check.py $(ARGS)
