"""Test-session setup.

- With `pytest -n 2 --dist loadfile --no-loadscope-reorder` (the test command), files are handed out longest first
  (`LONGEST_FIRST`, then collection order), so the wheel's paper smoke rehearsal runs beside the rest of the suite and
  the two workers end together. xdist's default order (most tests first) started that rehearsal last: 40 s of one
  worker idle at the end.
- `@pytest.mark.shared('data/pa100k-sample/annotation.mat')`: the test needs that file under `../shared` (beside the
  clone; the PA-100K sample may be elsewhere via HAR_KIT_PA100K_SAMPLE). Missing, it is skipped on a developer's
  machine and **fails** in CI (`CI` set), where `../shared` is always laid out: a vanished input must not pass quietly.
- `slow` marks tests that start kernels or processes; `make test-fast` runs the rest.
- The session imports jupyter's classes as the kit's own processes do (`har_kit.core.lean_jupyter_imports`: without
  jsonschema's IRI format checker, seconds of import in each worker).
- The session's data and outputs are its own (`$HAR_KIT_DATA`, `$HAR_KIT_OUTPUTS` in a temporary folder shared by the
  workers, removed at the end): the synthetic sets are made once per session, and no test writes into the clone's
  `data/` or a user's folders (caches and mask homes keyed by temporary paths grew there with every run).
- SIGINT has its normal meaning in the session and the processes it starts, also when the session itself was started
  in the background (`make test &`), which starts it with SIGINT ignored: the tests that interrupt or cancel a job need it.
"""
import importlib, os, shutil, signal, tempfile
from pathlib import Path

import pytest

from har_kit.core import lean_jupyter_imports

signal.signal(signal.SIGINT, signal.default_int_handler)
# the suite is the CPU's: on a GPU workstation the kit's 'auto' devices would pick CUDA (TF32, cudnn.benchmark) and
# compare at other tolerances; kernels and subprocesses inherit this. HAR_KIT_TEST_CUDA=1 leaves the GPUs visible
if not os.environ.get('HAR_KIT_TEST_CUDA'): os.environ['CUDA_VISIBLE_DEVICES'] = ''
lean_jupyter_imports()

# the files that take longest in the test command (seconds of one worker, measured 2026-12-07 on 2 cores): longest first
LONGEST_FIRST = ('test_wheel.py',        # 100: the wheel, its venv and the paper smoke rehearsal (two kernels at a time)
                 'test_predict.py',      # 69
                 'test_runs.py',         # 48
                 'test_faults_runs.py',  # 43
                 'test_launcher.py',     # 32
                 'test_gpu_check.py',    # 28
                 'test_ddp.py')          # 20
SHARED = Path(__file__).resolve().parents[1].parent/'shared'
_HOME = pytest.StashKey[Path]()   # the session's own data and outputs folders: never the clone's data/ or outputs/, nor a user's
# files whose tests start papermill kernels, subprocesses or process pools: not in `make test-fast`
SLOW_FILES = {'test_wheel.py', 'test_determinism.py', 'test_runs.py', 'test_ddp.py', 'test_faults_runs.py', 'test_launcher.py',
              'test_packaging.py', 'test_reproduce.py', 'test_gpu_check.py', 'test_faults_cache.py'}


def shared_path(rel):  # path under ../shared, e.g. 'data/pa100k-sample'
    "Where a shared input lives: the PA-100K sample may be moved with HAR_KIT_PA100K_SAMPLE."
    rel = Path(rel)
    if rel.parts[:2] == ('data', 'pa100k-sample') and os.environ.get('HAR_KIT_PA100K_SAMPLE'):
        return Path(os.environ['HAR_KIT_PA100K_SAMPLE']).joinpath(*rel.parts[2:])
    return SHARED/rel


def pytest_configure(config):
    config.addinivalue_line('markers', 'shared(path): needs PATH under ../shared (skipped when missing, failed in CI)')
    config.addinivalue_line('markers', 'slow: starts kernels or processes (left out of make test-fast)')
    if not hasattr(config, 'workerinput'):   # the session's first process; its xdist workers and their kernels inherit these
        home = Path(tempfile.mkdtemp(prefix='har-kit-tests-'))
        config.stash[_HOME] = home
        for var, sub in (('HAR_KIT_DATA', 'data'), ('HAR_KIT_OUTPUTS', 'outputs')): os.environ[var] = str(home/sub)
        os.environ.pop('HAR_KIT_CACHE', None)   # under HAR_KIT_DATA


def pytest_unconfigure(config):
    if (home := config.stash.get(_HOME, None)) is not None: shutil.rmtree(home, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    rank = lambda item: next((i for i, name in enumerate(LONGEST_FIRST) if item.path.name == name), len(LONGEST_FIRST))
    items.sort(key=rank)   # stable: every other file keeps its order
    for item in items:
        if item.path.name in SLOW_FILES: item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item):
    for m in item.iter_markers('shared'):
        p = shared_path(m.args[0])
        if p.exists(): continue
        msg = f'{p} is missing: lay out ../shared beside the clone (or set HAR_KIT_PA100K_SAMPLE for the sample)'
        if os.environ.get('CI'): pytest.fail(f'{msg}; in CI it must be there')
        pytest.skip(msg)


def needs_module(name):  # an optional dependency (settings.ini's dev extras), e.g. 'onnxruntime'
    "Import it; skip where it is not installed, but fail in CI, where the test command installs the dev extras: a test must not pass by skipping."
    try: return importlib.import_module(name)
    except ImportError as e:
        msg = f"{name} is not installed ({e}): `pip install -e '.[dev]'` (make setup) installs it"
        if os.environ.get('CI'): pytest.fail(f'{msg}; in CI it must be there')
        pytest.skip(msg)


@pytest.fixture
def read_only(monkeypatch):
    "`read_only(folder)` makes the folder read-only to the kit's writability check (`har_kit.core.check_writable`): chmod does not bite as root, which CI may be."
    real, folders = os.access, set()
    monkeypatch.setattr('har_kit.core.os.access', lambda p, mode: False if Path(p) in folders and mode & os.W_OK else real(p, mode))
    return lambda folder: folders.add(Path(folder))


def write_cfar_model(path):  # where model.pt goes: <run>/<variant>/model.pt
    "A CFAR variant's model file (a tiny phase 1 + a fitted CFAR in `extra`) over five attributes 'a'..'e': (path, the CFAR, phase 1)."
    from har_kit import cfar
    from har_kit.campar import campar_model_file, campar_variant
    from har_kit.model_file import save_model
    l, y = cfar.synthetic_phase1(200, 5, 3, seed=0)
    fitted = cfar.fit_cfar(l, y, cfar.CFARConfig(num_threads=1, epochs=2, n_prototypes=4, tol=None, iterations=15))
    phase1 = campar_variant('campar', 5, arch='resnet-tiny').eval()
    save_model(path, phase1, **campar_model_file(phase1, list('abcde'), (64, 48), None, 'rap', extra=cfar.cfar_extra(fitted)))
    return path, fitted, phase1


class TempIn:
    "A module's `tempfile` whose folders go in `d` (`monkeypatch.setattr(module, 'tempfile', TempIn(d))`): the real module's `tempdir` stays, under which multiprocessing keeps sockets whose paths have a length limit."
    def __init__(self, d): self.d = d
    def __getattr__(self, name): return getattr(tempfile, name)
    def mkdtemp(self, **kw): return tempfile.mkdtemp(dir=self.d, **kw)
    def TemporaryDirectory(self, **kw): return tempfile.TemporaryDirectory(dir=self.d, **kw)
