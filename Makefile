# har-kit: the README's two commands are `make main` and `make test`; both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat settings.ini setup.py | cksum | cut -d' ' -f1)
PROFILE ?= quick
export MPLBACKEND := agg
export PYTHONHASHSEED := 0
# the venv is installed without byte-compiling its 6 GB (pip's compile step is half of a fresh setup); Python caches
# the modules the kit actually imports on their first import, so these targets let it write bytecode
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup main studies sample test export check-export check-clean pytest nbtest gpu-check

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

## the studies beyond the papers (distraction, where the maps look, training length, method x dataset matrix) on the same profile, reusing shared runs
studies: setup
	$(BIN)/har-kit reproduce --profile $(PROFILE) --studies

## the real-image table on the PA100K sample beside the clone (../shared/data/pa100k-sample or $$HAR_KIT_PA100K_SAMPLE)
sample: setup
	$(BIN)/har-kit reproduce --profile sample

## the tests: exported modules and cleaned notebooks match what is committed, then pytest and nbdev_test
test: setup check-export check-clean pytest nbtest

check-export:
	$(BIN)/nbdev_export
	@git status --porcelain -- har_kit | grep . && { echo "har_kit/ differs from what nbs/ exports: run nbdev_export and commit both"; exit 1; } || echo "nbdev_export: no diff"

check-clean:
	$(BIN)/nbdev_clean
	@git status --porcelain -- nbs | grep . && { echo "nbs/ is not clean: run nbdev_clean and commit"; exit 1; } || echo "nbdev_clean: no diff"

## two test files at a time (pytest-xdist), one thread each; the longest files start first (tests/conftest.py)
pytest:
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest tests -q -n 2 --dist loadfile --durations=15

## two notebooks at a time, one thread each: parallel jobs must not oversubscribe the cores
nbtest:
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

export:
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && $(BIN)/python tools/nb2readme.py

## the paper-size GPU check on whatever GPU it finds -> outputs/reference/gpu/report.{json,md} (ARGS=--cpu-tiny: CPU rehearsal)
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) tools/gpu_check.py $(ARGS)
