"""The wheel stands alone (issue 14): what the shipped code imports is a requirement, an installed wheel runs a
notebook outside any clone, with its outputs and data where `har_kit.core` documents them, and it rehearses the whole
paper route (`reproduce --profile paper --smoke`) with the notebooks it ships.

The fresh environment reuses the cached torch & co.: a venv without pip gets the wheel (`pip --python ... --no-deps`)
and a `.pth` line naming this environment's site-packages (a plain path line: the editable install's finder there
is not loaded, so `import har_kit` is the wheel's). Offline: the wheel and its venv about 20 s, the paper rehearsal
(16 runs, two at a time) about 1.7 min.
"""
import ast, configparser, json, os, re, shutil, subprocess, sys, sysconfig, time, zipfile
from importlib import metadata
from pathlib import Path

import pytest

from har_kit.core import load_json
from har_kit.formats import write_fixture
from har_kit.reproduce import plan
from har_kit.results import PAPER_TABLES
from har_kit.runs import run_notebook

ROOT = Path(__file__).resolve().parent.parent


def _top_level_imports(src):
    "Top-level modules imported by code that runs when the cell/module runs (not inside defs or try/except ImportError)."
    try: tree = ast.parse(src)
    except SyntaxError: return set()
    mods = set()
    def visit(nodes):
        for n in nodes:
            if isinstance(n, ast.Import): mods.update(a.name.split('.')[0] for a in n.names)
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module: mods.add(n.module.split('.')[0])
            elif isinstance(n, ast.Try):
                guarded = any(isinstance(h.type, ast.Name) and h.type.id in ('ImportError', 'ModuleNotFoundError', 'Exception')
                              or isinstance(h.type, ast.Tuple) and any(getattr(e, 'id', '') in ('ImportError', 'ModuleNotFoundError') for e in h.type.elts)
                              for h in n.handlers)
                if not guarded: visit(n.body)
                visit(n.finalbody)
            elif isinstance(n, (ast.If, ast.With, ast.For)): visit(n.body); visit(getattr(n, 'orelse', []))
    visit(tree.body)
    return mods


def _code(nb):
    for c in json.loads(nb.read_text())['cells']:
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        yield '\n'.join('' if l.lstrip().startswith(('%', '!')) else l for l in src.splitlines())


def _closure(reqs):
    "Distribution names reachable from `reqs` through installed metadata (extras ignored)."
    norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
    seen, todo = set(), [norm(re.split(r'[<>=!~ ;\[]', r)[0]) for r in reqs]
    while todo:
        n = todo.pop()
        if n in seen: continue
        seen.add(n)
        try: deps = metadata.requires(n) or []
        except metadata.PackageNotFoundError: continue
        todo += [norm(re.split(r'[<>=!~ ;\[(]', d)[0]) for d in deps if 'extra ==' not in d]
    return seen


def test_runtime_imports_are_runtime_requirements():
    "Every module the package and the shipped notebooks import when they run comes with `pip install har_kit`."
    c = configparser.ConfigParser(delimiters=['=']); c.read(ROOT/'settings.ini')
    have = _closure(c['DEFAULT']['requirements'].split())
    dists = metadata.packages_distributions()
    norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
    missing = {}
    sources = [(p.name, p.read_text()) for p in (ROOT/'har_kit').glob('*.py')]
    sources += [(nb.name, src) for nb in sorted((ROOT/'nbs').glob('*.ipynb')) for src in _code(nb)]
    for where, src in sources:
        for mod in _top_level_imports(src):
            if mod in sys.stdlib_module_names or mod in ('har_kit', '__future__'): continue
            names = {norm(d) for d in dists.get(mod, [mod])}
            if not names & have: missing.setdefault(mod, where)
    assert missing == {}, f'imported at run time but not in settings.ini requirements (nor pulled by them): {missing}'


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    "The wheel built from this checkout; a notebook left in setuptools' build folder by an earlier build does not ship."
    d, stale = tmp_path_factory.mktemp('wheel'), ROOT/'build'/'lib'/'har_kit'/'notebooks'/'98_renamed_since.ipynb'
    ours = not (ROOT/'build').exists()   # a build folder this test makes is removed after the build; a developer's stays
    stale.parent.mkdir(parents=True, exist_ok=True); stale.write_text('{}')
    try: r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(d), str(ROOT)],
                            capture_output=True, text=True)
    finally:
        if ours: shutil.rmtree(ROOT/'build', ignore_errors=True)
    assert r.returncode == 0, r.stderr[-2000:]
    whl = next(d.glob('har_kit-*.whl'))
    assert not stale.exists() and not [n for n in zipfile.ZipFile(whl).namelist() if stale.name in n]
    return whl


def test_wheel_declares_the_notebook_runtime(wheel):
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith('METADATA'))
    reqs = [l.split(':', 1)[1].strip() for l in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
            if l.startswith('Requires-Dist:') and 'extra ==' not in l]
    for pin in ('nbdev==2.4.14', 'execnb<0.2', 'papermill>=2.6', 'ipykernel>=6.29'):
        assert pin in reqs, (pin, reqs)
    assert any(r.startswith('fastcore') and '<2' in r for r in reqs)


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory):
    "A fresh venv outside the clone with the wheel installed (dependencies from this environment): (venv, purelib, env)."
    venv = tmp_path_factory.mktemp('wheel-env')/'venv'
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTHON', 'HAR_KIT_', 'VIRTUAL_ENV', 'JUPYTER'))}
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, env=env)
    py = venv/'bin'/'python'
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '--no-deps', '--no-index', str(wheel)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and (venv/'bin'/'har-kit').exists(), (r.stdout + r.stderr)[-2000:]
    purelib = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, 'cached-deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    env['PATH'] = f'{venv/"bin"}:/usr/bin:/bin'
    env['JUPYTER_DATA_DIR'] = str(venv.parent/'jupyter')           # no user-level kernelspec: `python3` is the venv's
    return venv, purelib, env


def test_installed_wheel_runs_a_notebook_outside_the_clone(installed, tmp_path):
    (venv, purelib, env), work = installed, tmp_path/'work'
    work.mkdir()
    nb = work/'tiny.ipynb'
    nb.write_text(json.dumps({'cells': [
        {'cell_type': 'code', 'metadata': {'tags': ['parameters']}, 'source': 'x = 1\nout_dir = None', 'outputs': [], 'execution_count': None},
        {'cell_type': 'code', 'metadata': {}, 'source': (
            'import har_kit, matplotlib.pyplot as plt\nfrom nbdev.showdoc import show_doc\nfrom fastcore.test import test_eq\n'
            'from har_kit.core import data_root, outputs_root, repo_root, save_figure, save_metrics\n'
            'from har_kit.runs import find_notebook\n'
            'fig, ax = plt.subplots(figsize=(2, 1)); ax.plot([0, x])\nsave_figure(fig, "fig", out_dir)\n'
            'save_metrics(dict(x=x, har_kit=har_kit.__file__, repo=repo_root(), data=str(data_root()), '
            'outputs=str(outputs_root()), dahar=str(find_notebook("dahar"))), out_dir)'), 'outputs': [], 'execution_count': None}],
        'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
        'nbformat': 4, 'nbformat_minor': 5}))
    r = subprocess.run([str(venv/'bin'/'har-kit'), 'run', str(nb), '-p', 'x', '3'], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (run,) = (work/'outputs'/'runs').iterdir()                  # the documented place: ./outputs of the command
    m = json.loads((run/'metrics.json').read_text())
    assert m['x'] == 3 and m['repo'] is None and m['har_kit'].startswith(purelib)
    assert m['data'] == str(work/'har-kit-data') and m['outputs'] == str(work/'outputs')
    assert m['dahar'] == str(Path(purelib)/'har_kit'/'notebooks'/'31_dahar.ipynb')
    assert (run/'fig.png').exists() and (run/'done').exists() and f'done -> {run}' in r.stdout


def test_installed_wheel_rehearses_the_paper_route(installed, tmp_path, monkeypatch):
    "The paper route rehearsed as users install it: the wheel's `har-kit reproduce --profile paper --smoke` executes every"
    " run the paper profile plans (masks steps included, box masks since COCO weights cannot download in CI; RAP on"
    " partition 0 of 5) through papermill on CPU, with the notebooks shipped in the wheel, on tiny datasets written in the"
    " published layouts, and renders the five paper tables from those runs with the shipped tables notebook."
    (venv, _purelib, env), work = installed, tmp_path/'work'
    work.mkdir()
    roots = {kind: write_fixture(kind, tmp_path/'data'/kind) for kind in ('wider', 'rap', 'pa100k')}
    args = [a for k, v in roots.items() for a in ('--data-root', f'{k}={v}')]
    env = {**env, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'MPLBACKEND': 'agg'}
    t0 = time.time()
    r = subprocess.run([str(venv/'bin'/'har-kit'), 'reproduce', '--profile', 'paper', '--smoke', '--out', 'outputs', *args],
                       cwd=work, env=env, capture_output=True, text=True, timeout=900)
    seconds, out = time.time() - t0, work/'outputs'/'smoke'
    status = load_json(out/'paper'/'status.json')
    planned = plan(profile='paper', data_roots=roots, root=out, smoke=True)
    t = status['seconds']
    print(f'paper smoke rehearsal: {len(planned)} runs in {seconds:.0f}s (summed over runs: {t["total"]:.0f}s, kernel '
          f'start {t["kernel_start"]:.0f}s, first imports {t["imports"]:.0f}s)')
    assert r.returncode == 0, r.stderr[-3000:] + json.dumps([x for x in status['runs'] if x['state'] != 'done'])[:3000]
    assert status['counts']['done'] == len(status['runs']) == len(planned), (status['counts'], [(x['name'], x['state'], x.get('error')) for x in status['runs'] if x['state'] != 'done'], r.stderr[-2000:])
    assert {x['notebook'] for x in status['runs']} == {'masks', 'dahar', 'campar', 'cfar'}
    env_json = load_json(next((out/'paper').glob('dahar/*/seed0/env.json')))
    assert env_json['packages']['har_kit'] and 'git_commit' not in env_json   # the wheel ran, not a clone...
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if head: assert env_json['built_from']['git_commit'] == head, env_json.get('built_from')   # ...built from this checkout, which it names
    tables = out/'paper'/'tables'
    for key in PAPER_TABLES:
        rows = (tables/f'{key}.md').read_text().split('**Protocol card**')[0].split('|---|')[-1]
        assert not any(why in rows for why in ('no run', 'failed:', 'not done')), (key, rows)   # every cell filled
    assert '| Da-HAR (Ours) | ours (n=1) |' in (tables/'dahar_t1.md').read_text()
    assert 'Profile `paper (smoke)`: a smoke rehearsal' in (tables/'dahar_t1.md').read_text()   # toy sizes, never captioned as the paper's
    assert all(l.endswith(',paper (smoke)') for l in (tables/'dahar_t1.csv').read_text().splitlines()[1:])
    t2 = (tables/'campar_t2.md').read_text().split('**Protocol card**')[0]
    for row in ('| baseline |', '| + CAM-PAR + fusion + CFAR |'):   # both selection modes, labelled, CFAR included
        ours = [l for l in t2.splitlines() if l.startswith(row) and '| ours' in l]
        assert any('selected on test' in l for l in ours) and any('held-out' in l for l in ours), (row, ours)

    # runs skip the demonstration cells; executing one run again with them, from this clone's notebook, must
    # give the same metrics as the wheel's run
    one = next(p for p in planned if p.spec.notebook == 'dahar')
    monkeypatch.setenv('HAR_KIT_DATA', str(work/'har-kit-data'))   # the wheel's data location: its masks steps' mask homes
    again = run_notebook(one.spec.notebook, one.params, tmp_path/'with-demos', progress=False, threads=one.threads,
                         demos=True)
    assert load_json(one.out_dir/'env.json')['demos'] is False and load_json(again/'env.json')['demos'] is True
    assert _untimed(load_json(again/'metrics.json')) == _untimed(load_json(one.out_dir/'metrics.json'))


def _untimed(m):
    "Metrics without wall-clock entries (any key naming seconds)."
    if isinstance(m, dict): return {k: _untimed(v) for k, v in m.items() if 'second' not in k}
    if isinstance(m, list): return [_untimed(v) for v in m]
    return m
