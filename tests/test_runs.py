"The papermill spine: injected parameters reach the notebook; failures leave no `done`; done runs are skipped."
import json, subprocess, sys
from pathlib import Path

import pytest

from har_kit.core import KitError, load_json
from har_kit.metrics import METRICS_SCHEMA
from har_kit.runs import RunFailed, run_notebook

ROOT = Path(__file__).resolve().parent.parent


def _nb(path, cells):
    path.write_text(json.dumps({'cells': [
        {'cell_type': 'code', 'metadata': {'tags': tags} if tags else {}, 'source': src, 'outputs': [], 'execution_count': None}
        for src, tags in cells],
        'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
        'nbformat': 4, 'nbformat_minor': 5}))
    return path


def test_injected_parameter_reaches_notebook(tmp_path):
    nb = _nb(tmp_path/'p.ipynb', [('epochs = 1\nname = "tiny"\nout_dir = None', ['parameters']),
                                  ('from har_kit.core import save_metrics\nsave_metrics({"epochs": epochs, "name": name}, out_dir)', None)])
    out = run_notebook(nb, {'epochs': 5, 'name': 'real'}, tmp_path/'run', progress=False)
    assert load_json(out/'metrics.json') == {'epochs': 5, 'name': 'real'}
    assert load_json(out/'params.json') == {'epochs': 5, 'name': 'real'}
    assert (out/'done').exists() and load_json(out/'env.json')['packages']['torch']


def test_failed_cell_keeps_notebook_and_writes_no_done(tmp_path):
    nb = _nb(tmp_path/'f.ipynb', [('out_dir = None', ['parameters']), ('raise ValueError("bad field: labels")', None)])
    with pytest.raises(RunFailed, match='bad field: labels'):
        run_notebook(nb, {}, tmp_path/'run', progress=False)
    assert not (tmp_path/'run'/'done').exists()
    assert (tmp_path/'run'/'notebook.ipynb').exists()


def test_done_run_is_skipped(tmp_path):
    nb = _nb(tmp_path/'c.ipynb', [('out_dir = None', ['parameters']),
                                  ('import pathlib\nfrom har_kit.core import save_metrics\n'
                                   'p = pathlib.Path(out_dir)/"count"\np.write_text(str(int(p.read_text()) + 1 if p.exists() else 1))\n'
                                   'save_metrics({"ok": 1}, out_dir)', None)])
    run_notebook(nb, {}, tmp_path/'run', progress=False)
    run_notebook(nb, {}, tmp_path/'run', progress=False)
    assert (tmp_path/'run'/'count').read_text() == '1'



def test_without_a_run_directory_the_same_parameters_find_their_run(tmp_path, monkeypatch):
    "No --out: the run folder is named by the parameters, so a failed (or interrupted) run resumes and a done one is returned."
    from har_kit.runs import default_run_dir
    monkeypatch.setenv('HAR_KIT_OUTPUTS', str(tmp_path/'outputs'))
    nb = _nb(tmp_path/'41_toy.ipynb', [('x = 1\ndevice = "cpu"\nout_dir = None', ['parameters']),
                                       ('import pathlib\nfrom har_kit.core import save_metrics\n'
                                        'p = pathlib.Path(out_dir)/"count"\np.write_text(str(int(p.read_text()) + 1 if p.exists() else 1))\n'
                                        'assert p.read_text() != "1", "first session fails"\nsave_metrics({"x": x}, out_dir)', None)])
    with pytest.raises(RunFailed, match='first session fails') as e: run_notebook(nb, {'x': 2}, progress=False)
    first = e.value.out_dir
    assert first == default_run_dir(nb, {'x': 2}) and first.parent == tmp_path/'outputs'/'runs' and first.name.startswith('toy-')
    assert run_notebook(nb, {'x': 2}, progress=False) == first                   # the second session, in the same folder
    assert run_notebook(nb, {'x': 2, 'device': 'cpu'}, progress=False) == first  # done: returned (the device aside; 'cpu' is its default too)
    assert (first/'count').read_text() == '2' and load_json(first/'metrics.json') == {'x': 2}
    assert default_run_dir(nb, {'x': 3}) != first


def test_the_data_notebook_runs_as_har_kit_run_runs_it(tmp_path):
    "`har-kit run data` with its defaults: batch runs skip the demonstration cells, and the command's kernel asks for "
    "data warnings once per folder; 14_data's assertions about the library's warnings failed under it."
    from har_kit.cli import main
    assert main(['run', 'data', '--out', str(tmp_path/'run'), '--quiet']) == 0
    assert (tmp_path/'run'/'done').exists()


def test_resume_keeps_earlier_sessions_and_refuses_another_thread_count(tmp_path):
    "A failed run resumed records its earlier session in env.json; resuming with another thread count is refused, --force starts afresh."
    from har_kit.core import KitError
    nb = _nb(tmp_path/'r.ipynb', [('out_dir = None', ['parameters']),
                                  ('import pathlib\np = pathlib.Path(out_dir)/"tries"\np.write_text(str(int(p.read_text()) + 1 if p.exists() else 1))\n'
                                   'assert p.read_text() != "1", "first try fails"\n'
                                   'from har_kit.core import save_metrics\nsave_metrics({"ok": 1}, out_dir)', None)])
    with pytest.raises(RunFailed, match='first try fails'): run_notebook(nb, {}, tmp_path/'run', progress=False, threads=1)
    with pytest.raises(KitError, match='started with 1 intra-op thread'): run_notebook(nb, {}, tmp_path/'run', progress=False, threads=2)
    run_notebook(nb, {}, tmp_path/'run', progress=False, threads=1)
    env = load_json(tmp_path/'run'/'env.json')
    assert (tmp_path/'run'/'done').exists() and env['threads'] == 1 and env['cpu']['capability']
    assert [s['threads'] for s in env['sessions']] == [1] and env['sessions'][0]['time'] <= env['time']


def _tagged_parameters(nb):
    return [c for c in json.loads(nb.read_text())['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]


# the notebooks runs execute: each paper section's main notebook, the data check, the tables and the reproduce plan
SECTIONS = ('data', 'masks', 'dahar', 'campar', 'cfar', 'tables', 'reproduce')


def test_section_notebooks_keep_parameters_tag():
    """Every section notebook has exactly one cell tagged `parameters` with out_dir; any other notebook at most one."""
    from har_kit.run_params import find_notebook
    sections = {find_notebook(s).name for s in SECTIONS}
    for nb in sorted((ROOT/'nbs').glob('[0-8]*.ipynb')):
        tagged = _tagged_parameters(nb)
        if not tagged and nb.name not in sections: continue
        assert len(tagged) == 1, f'{nb.name}: {len(tagged)} cells tagged parameters'
        assert 'out_dir' in ''.join(tagged[0]['source']), f'{nb.name}: parameters cell lacks out_dir'


def test_cli_run_end_to_end(tmp_path):
    nb = _nb(tmp_path/'e.ipynb', [('lr = 0.1\nout_dir = None', ['parameters']),
                                  ('from har_kit.core import save_metrics\nsave_metrics({"lr": lr}, out_dir)', None)])
    exe = Path(sys.executable).parent/'har-kit'
    r = subprocess.run([str(exe), 'run', str(nb), '-p', 'lr', '0.003', '--out', str(tmp_path/'run')],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_json(tmp_path/'run'/'metrics.json') == {'lr': 0.003}
    assert 'IPKernelApp' not in r.stderr, r.stderr   # the kernel's own start-up warnings stay out of the run's output
    bad = _nb(tmp_path/'b.ipynb', [('out_dir = None', ['parameters']), ('1/0', None)])
    r = subprocess.run([str(exe), 'run', str(bad), '--out', str(tmp_path/'bad')], capture_output=True, text=True)
    assert r.returncode == 1 and 'ZeroDivisionError' in r.stderr and f"log: {tmp_path/'bad'/'log.txt'}" in r.stderr, r.stderr


LEAN = '''import sys
from har_kit.cli import main
assert main(['params', NB]) == 0 and sys.modules.get('rfc3987_syntax', 'absent') is not None   # a caller passing argv: untouched
sys.argv = ['har-kit', 'run', NB, '--out', OUT, '--quiet']
rc = main()                                   # as the console script calls it
import jsonschema
print(rc, sys.modules.get('rfc3987_syntax', 'absent') is None, 'iri' in jsonschema.FormatChecker.checkers)
'''


def test_the_command_leaves_out_jsonschemas_iri_checker(tmp_path):
    "The `har-kit` process validates notebooks without jsonschema's IRI format checker (its grammar costs seconds at import), and runs."
    nb = _nb(tmp_path/'e.ipynb', [('out_dir = None', ['parameters']), ('from har_kit.core import save_metrics\nsave_metrics({"x": 1}, out_dir)', None)])
    code = f'NB, OUT = {str(nb)!r}, {str(tmp_path/"run")!r}\n' + LEAN
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split()[-3:] == ['0', 'True', 'False'], r.stdout + r.stderr
    assert load_json(tmp_path/'run'/'metrics.json') == {'x': 1}


def test_parameters_cells_parse_with_papermill():
    "papermill must parse every parameter line (an '=' inside a comment breaks its parser, and `har-kit run` help)."
    import papermill as pm
    for nb in sorted((ROOT/'nbs').glob('0[1-7]*.ipynb')):
        if not _tagged_parameters(nb): continue   # a section's piece without parameters (the test above)
        src = ''.join(_tagged_parameters(nb)[0]['source'])
        names = [l.split('=')[0].strip() for l in src.splitlines() if '=' in l and not l.lstrip().startswith('#')]
        parsed = pm.inspect_notebook(str(nb))
        assert [n for n in names if n not in parsed] == [], nb.name


def _names(src):
    "Names a cell defines and names it reads (IPython magics and shell lines dropped)."
    import ast, builtins
    tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
    made, read = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name): (made if isinstance(n.ctx, (ast.Store, ast.Del)) else read).add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): made.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)): made.update((a.asname or a.name).split('.')[0] for a in n.names)
        elif isinstance(n, ast.arg): made.add(n.arg)
    return made, read - set(dir(builtins))


def test_demo_cells_define_nothing_the_run_needs():
    "Runs skip cells tagged `demo` (unless asked): no other cell of a section notebook may read a name only a demo cell defines."
    from har_kit.run_params import DEMO_TAG
    tagged = 0
    for nb in sorted((ROOT/'nbs').glob('[0-8]*.ipynb')):
        cells = [c for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']
        demo = [DEMO_TAG in c.get('metadata', {}).get('tags', []) for c in cells]
        names = [_names(''.join(c['source'])) for c in cells]
        by_run = set().union(*(m for (m, _), d in zip(names, demo) if not d))
        by_demo = set().union(*(m for (m, _), d in zip(names, demo) if d))
        for c, (_, read), d in zip(cells, names, demo):
            if d: continue
            missing = (read & by_demo) - by_run
            assert not missing, f'{nb.name}: cell {c.get("id")} reads {sorted(missing)}, defined only in demo cells'
        tagged += sum(demo)
    assert tagged >= 40, tagged   # the four experiment notebooks tag their demonstrations


def test_relative_path_parameter_is_read_from_the_callers_directory(tmp_path, monkeypatch):
    "The kernel starts in the run directory; a relative `data_root` must still name the caller's folder."
    (tmp_path/'mydata').mkdir()
    nb = _nb(tmp_path/'paths.ipynb', [('data_root = None\nout_dir = None', ['parameters']),
        ('import os\nfrom har_kit.core import save_metrics\nsave_metrics({"found": float(os.path.isdir(data_root))}, out_dir)', None)])
    monkeypatch.chdir(tmp_path)
    out = run_notebook(nb, {'data_root': 'mydata'}, tmp_path/'run', progress=False)
    assert load_json(out/'metrics.json') == {'found': 1.0}
    assert load_json(out/'params.json')['data_root'] == str(tmp_path/'mydata')


def _entry(mA, f1):
    return {'schema': METRICS_SCHEMA, 'dataset': 'rap', 'metric': 'mA', 'epoch': 1, 'full': {'mA': mA, 'f1': f1, 'per_attribute': {'A': mA}}}


def test_cli_run_shows_output_live_then_a_summary_and_skips_a_done_run(tmp_path):
    "The epoch line reaches the terminal while its cell still runs (the cell waits on a FIFO the test opens only after "
    "reading that line); the end names each model's numbers and the files; a rerun says skipped."
    import os, threading
    gate = tmp_path/'gate'; os.mkfifo(gate)
    nb = _nb(tmp_path/'live.ipynb', [('epochs = 1\nout_dir = None', ['parameters']),
        ('import sys\nfrom har_kit.core import save_metrics\n'
         f'print("epoch 1/1 loss 0.5", flush=True)\nopen({str(gate)!r}).read()\n'
         'sys.stderr.write("bar 1/2\\rbar 2/2"); sys.stderr.flush()\n'   # a bar left unfinished by the run's last cell
         f'save_metrics({{"_meta": {{}}, "campar_fusion": {_entry(0.526, 0.632)!r}}}, out_dir)', None)])
    exe, out = Path(sys.executable).parent/'har-kit', tmp_path/'run'
    p = subprocess.Popen([str(exe), 'run', str(nb), '--out', str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(300, p.kill); guard.start()   # only a hang (a failure either way) ever meets it
    try:
        seen = []
        for line in p.stdout:
            seen.append(line)
            if 'epoch 1/1 loss 0.5' in line:
                with open(gate, 'w') as g: g.write('go')
                break
        rest, err = p.communicate()
    finally: guard.cancel()
    assert p.returncode == 0 and seen and 'epoch 1/1' in seen[-1], (seen, err)
    assert f'har-kit run: done -> {out}' in rest and 'campar_fusion  mA 0.526 f1 0.632  (epoch 1)' in rest, rest
    assert f'log: {out/"log.txt"}' in rest and f'metrics: {out/"metrics.json"}' in rest, rest
    assert 'Executing' not in err, err    # papermill's cell counter is off while the output is shown
    log = (out/'log.txt').read_text()
    assert 'epoch 1/1 loss 0.5' in log
    # whole lines, each bar at its last state, and the unfinished bar before the run's closing line
    assert '\r' not in log and 'bar 1/2' not in log and log.index('bar 2/2') < log.index('[har-kit] kernel start'), log
    (out/'count').write_text('x')
    r = subprocess.run([str(exe), 'run', str(nb), '--out', str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and 'skipped: already done' in r.stdout and '--force' in r.stdout, r.stdout
    assert 'campar_fusion  mA 0.526' in r.stdout and 'epoch 1/1' not in r.stdout


def test_cli_run_parameters_file_under_p_values(tmp_path):
    nb = _nb(tmp_path/'pf.ipynb', [('variants = ["a"]  # rows to train\nlr = 0.1  # learning rate\nname = "x"\nout_dir = None', ['parameters']),
        ('from har_kit.core import save_metrics\nsave_metrics({"variants": variants, "lr": lr, "name": name}, out_dir)', None)])
    exe = Path(sys.executable).parent/'har-kit'
    r = subprocess.run([str(exe), 'params', str(nb)], capture_output=True, text=True)
    assert r.returncode == 0 and 'variants: [a]  # rows to train' in r.stdout and 'out_dir' not in r.stdout.split('\n', 1)[1], r.stdout
    (tmp_path/'p.yaml').write_text(r.stdout.replace('variants: [a]', 'variants: [b, c]').replace('lr: 0.1', 'lr: 1e-4'))
    r = subprocess.run([str(exe), 'run', str(nb), '-f', str(tmp_path/'p.yaml'), '-p', 'name', 'y', '--quiet',
                        '--out', str(tmp_path/'run')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_json(tmp_path/'run'/'metrics.json') == {'variants': ['b', 'c'], 'lr': 1e-4, 'name': 'y'}
    assert '  lr 0.0001 (and 2 more in metrics.json)' in r.stdout, r.stdout   # no model entries: its numbers
    (tmp_path/'bad.yaml').write_text('lr: fast\n')
    r = subprocess.run([str(exe), 'run', str(nb), '-f', str(tmp_path/'bad.yaml')], capture_output=True, text=True)
    assert r.returncode == 1 and f"{tmp_path/'bad.yaml'}: parameter 'lr': expects a number" in r.stderr, r.stderr


CHECK_RESOLVED = '''
from har_kit.core import lean_jupyter_imports
lean_jupyter_imports()   # as the kit's own processes import jupyter's classes
from traitlets.traitlets import ClassBasedTraitType
from nbclient import NotebookClient
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.provisioning import KernelProvisionerFactory, LocalProvisioner
def pending():
    return [f'{C.__name__}.{n}' for C in (NotebookClient, AsyncKernelManager, AsyncKernelClient, LocalProvisioner, KernelProvisionerFactory)
            for n, t in C.class_traits().items() if isinstance(t, ClassBasedTraitType)
            and (isinstance(getattr(t, 'klass', None), str) or isinstance(getattr(t, 'default_value', None), str))]
assert pending(), 'a fresh process should hold unresolved traits (else this test checks nothing)'
from har_kit.runs import _resolve_jupyter_traits
_resolve_jupyter_traits('python3')
assert pending() == [], pending()
'''


def test_jupyter_classes_resolved_before_concurrent_kernel_starts():
    "The first run of a process resolves every string-named jupyter class a kernel start builds (traitlets' lazy resolution races between threads)."
    subprocess.run([sys.executable, '-c', CHECK_RESOLVED], check=True, timeout=120)


def test_papermill_error_before_the_first_cell_is_recorded(tmp_path, monkeypatch):
    "An error of the kernel's start (not a cell's) leaves failed.json naming it, so status says failed and why, not 'killed?'."
    import papermill
    from har_kit.runs import run_status
    def broken(*a, **k): raise TypeError("import_item accepts strings, not '<class 'X'>'.")
    monkeypatch.setattr(papermill, 'execute_notebook', broken)
    nb = _nb(tmp_path/'k.ipynb', [('out_dir = None', ['parameters']), ('x = 1', None)])
    with pytest.raises(RunFailed, match='before the first cell: TypeError: import_item'): run_notebook(nb, {}, tmp_path/'run', progress=False)
    st = run_status(tmp_path/'run')
    assert st['state'] == 'failed' and 'import_item' in st['error'] and not st.get('interrupted')


def test_without_out_a_second_command_says_skipped_and_a_moved_default_is_not_taken_for_the_old(tmp_path, monkeypatch, capsys):
    """`har-kit run` twice without --out: the second says 'skipped: already done'. A run made when x's default was 1,
    asked for with -p x 2 after the default became 2, is refused: it ran with 1, whatever the default says now."""
    from har_kit.core import KitError
    from har_kit.runs import cli
    monkeypatch.setenv('HAR_KIT_OUTPUTS', str(tmp_path/'outputs'))
    src = lambda x: [(f'x = {x}\nout_dir = None', ['parameters']),
                     ('from har_kit.core import save_metrics\nsave_metrics({"x": x}, out_dir)', None)]
    nb = _nb(tmp_path/'42_toy.ipynb', src(1))
    assert cli([str(nb), '--quiet']) == 0 and 'har-kit run: done -> ' in capsys.readouterr().out
    assert cli([str(nb), '--quiet']) == 0 and 'har-kit run: skipped: already done' in capsys.readouterr().out
    (run,) = (tmp_path/'outputs'/'runs').iterdir()
    _nb(nb, src(2))   # the notebook's default moves
    with pytest.raises(KitError, match=r'differs in: x: 1 \(default\) -> 2\)'): run_notebook(nb, {'x': 2}, run, progress=False)
    assert run_notebook(nb, {'x': 1}, run, progress=False) == run and load_json(run/'metrics.json') == {'x': 1}   # what it ran with


def test_the_tables_notebook_outside_a_run_writes_no_profile_tables(tmp_path):
    "Opened, or run by nbdev_test, with its defaults, 73_tables renders into a temporary folder, never over outputs/<profile>/tables."
    import os
    env = {k: v for k, v in os.environ.items() if k != 'HAR_KIT_RUN_DIR'}
    env.update(HAR_KIT_OUTPUTS=str(tmp_path/'outputs'), OMP_NUM_THREADS='1', MPLBACKEND='agg')
    code = ('from execnb.nbio import read_nb; from execnb.shell import CaptureShell; '
            "CaptureShell().run_all(read_nb('73_tables.ipynb'), exc_stop=True)")
    r = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT/'nbs', capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path/'outputs'/'quick').exists()


@pytest.mark.parametrize('section', ['dahar', 'campar', 'cfar', 'masks', 'tables'])
def test_a_sections_run_config_has_its_notebooks_parameters_and_defaults(section):
    "`har-kit run` checks a run through the section's RunConfig before a kernel starts: its fields must be the notebook's parameters."
    import dataclasses, importlib
    from har_kit.run_params import RUN_CONFIGS, parameter_defaults
    mod, name = RUN_CONFIGS[section].split(':')
    cls = getattr(importlib.import_module(mod), name)
    fields = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in dataclasses.fields(cls)}
    defaults = parameter_defaults(section)
    assert {k: v for k, v in fields.items() if k in defaults} == {k: defaults[k] for k in fields if k in defaults}
    assert set(fields) <= set(defaults), set(fields) - set(defaults)


def test_the_tables_run_refuses_unknown_profiles_tables_and_roots_before_a_kernel_starts(tmp_path):
    "`har-kit run tables` checks its parameters (`TablesConfig`) before a kernel starts: no bare KeyError inside, no 'done' over an unknown profile, no folder made under a missing runs_root."
    from har_kit.run_params import check_config
    with pytest.raises(KitError, match="73_tables: no table 'campar_t9'; choose from dahar_t1, "): check_config('tables', {'tables': ['campar_t9']})
    with pytest.raises(KitError, match="73_tables: profile='quik': no such profile; choose one of quick, sample, paper"):
        check_config('tables', {'profile': 'quik'})
    with pytest.raises(KitError, match="runs_root='/nonexistent/x': no such folder"): check_config('tables', {'runs_root': '/nonexistent/x'})
    with pytest.raises(KitError, match="'real_pa100k' not part of profile 'quick'"): check_config('tables', {'tables': ['real_pa100k']})
    with pytest.raises(KitError, match="pass a list of table keys"): check_config('tables', {'tables': 'campar_t2'})
    check_config('tables', {'profile': 'sample', 'tables': ['real_pa100k'], 'runs_root': str(tmp_path)})   # a valid one passes
    assert not (tmp_path/'sample').exists()


def test_a_masks_run_with_an_unknown_source_is_refused_before_a_kernel_starts(tmp_path):
    from har_kit.run_params import check_config
    with pytest.raises(Exception, match="21_masks: source='foo': choose one of"): check_config('masks', {'source': 'foo'})
    with pytest.raises(Exception, match="mask_directory='/nonexistent': no such folder"):
        check_config('masks', {'source': 'directory', 'mask_directory': '/nonexistent'})


def test_a_dahar_run_on_a_real_dataset_without_masks_is_refused_before_a_kernel_starts(tmp_path, monkeypatch):
    "Da-HAR's default variants learn person masks: on a real dataset with none, `har-kit run` says how to make them, and starts nothing."
    import shutil
    from har_kit.formats import write_fixture
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path/'kit-data'))   # no mask home holding this root's masks
    root = tmp_path/'RAP'; write_fixture('rap', root); shutil.rmtree(root/'masks')
    with pytest.raises(KitError, match=r'the run reads person masks and there are none .*har-kit masks --dataset rap --root .*'
                                       r'-p mask_supervision box .* Nothing was started'):
        run_notebook('dahar', {'dataset': 'rap', 'data_root': str(root)}, out_dir=tmp_path/'run')
    assert not (tmp_path/'run').exists()
    from har_kit.runs import mask_input   # each way out the message names reads no mask file
    for way in ({'mask_supervision': 'box', 'fig5': False}, {'mask_weight': 0.0}):
        assert mask_input('dahar', {'dataset': 'rap', 'data_root': str(root), **way}) == {}, way


def test_the_parameters_file_of_your_own_notebook_names_its_path(tmp_path):
    "A copy of a section outside nbs/ runs as its path: the YAML's header and the unknown-parameter hint say so, not the packaged section."
    import shutil
    from har_kit.run_params import find_notebook
    from har_kit.runs import params_yaml, read_params_file
    own = tmp_path/'my_tables.ipynb'; shutil.copy(find_notebook('tables'), own)
    assert params_yaml(own).splitlines()[0].startswith(f'# parameters of my_tables.ipynb: har-kit run {own.resolve()} -f THIS.yaml')
    (tmp_path/'p.yaml').write_text('profyle: quick\n')
    with pytest.raises(KitError, match=f'`har-kit params {own.resolve()}` lists its parameters'): read_params_file(tmp_path/'p.yaml', own)


def test_a_demonstration_edited_only_is_not_a_code_change_of_the_runs(tmp_path):
    "Runs skip `demo` cells: editing one leaves every run's code as it was (no 'made by earlier code' note, no rerun warning)."
    from har_kit.run_params import code_changed, notebook_record
    def nb(demo, work):
        cells = [{'cell_type': 'code', 'metadata': {}, 'source': work, 'outputs': [], 'execution_count': None},
                 {'cell_type': 'code', 'metadata': {'tags': ['demo']}, 'source': demo, 'outputs': [], 'execution_count': None}]
        p = tmp_path/'31_dahar.ipynb'; p.write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
        return notebook_record(p)
    was = nb('print(1)', 'x = 1')
    assert not code_changed(was, nb('print(2)', 'x = 1')) and code_changed(was, nb('print(1)', 'x = 2'))
    assert code_changed({k: v for k, v in was.items() if k != 'run_code_sha256'}, nb('print(2)', 'x = 1'))   # an older record: all code cells


def test_a_section_whose_config_reads_masks_names_a_mask_folder():
    "`mask_input` imports a section's config only where its parameters name a `mask_dir` (so `har-kit status` stays "
    "torch-free): every config that may read person masks (`reads_masks`) must have that parameter."
    from har_kit.run_params import RUN_CONFIGS, config_class, notebook_parameters
    readers = {s for s in RUN_CONFIGS if hasattr(config_class(s), 'reads_masks')}
    assert readers and readers <= {s for s in RUN_CONFIGS if 'mask_dir' in notebook_parameters(s)}, readers


def test_the_log_keeps_no_stale_state_of_a_bar_that_cleared_itself():
    "tqdm's leave=False bar (the engine's epochs) leaves nothing in log.txt or a piped output: its last drawn state is whatever the rate limit let through."
    import io
    from tqdm import tqdm
    from har_kit.runs import Echo
    log, shown = io.StringIO(), io.StringIO()
    err = Echo(log, shown)
    for epoch in (1, 2):
        with tqdm(range(40), desc=f'epoch {epoch}/2', leave=False, file=err, mininterval=3600, miniters=1) as bar:
            for _ in bar: pass   # a rate limit of an hour: the last state drawn is 0%, a finished epoch
        err.write(f'epoch {epoch}/2: loss 0.{epoch}\n')
    for x in tqdm(range(3), desc='masks', file=err, mininterval=0): pass   # a bar that stays ends at its last state
    err.write('stopped  40%|'); err.close()
    want = 'epoch 1/2: loss 0.1\nepoch 2/2: loss 0.2\nmasks: 100%|'
    for out in (log.getvalue(), shown.getvalue()):
        assert out.startswith(want) and out.count('\n') == 4 and out.endswith('stopped  40%|\n') and 'epoch 1/2:   0%' not in out, out


def test_the_compile_cache_is_the_kits_after_torchvision_put_torchs_default_in_the_environment(tmp_path, monkeypatch):
    "Importing torchvision sets $TORCHINDUCTOR_CACHE_DIR to torch's default (/tmp/torchinductor_<user>), which was taken as the user's choice."
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    from har_kit.runs import kernel_env
    monkeypatch.setenv('HAR_KIT_CACHE', str(tmp_path/'cache'))
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', default_cache_dir())   # as `import torchvision` leaves it
    assert kernel_env(tmp_path/'r')['TORCHINDUCTOR_CACHE_DIR'] == str(tmp_path/'cache'/'torchinductor')
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path/'mine'))   # a folder the user chose is kept
    assert kernel_env(tmp_path/'r')['TORCHINDUCTOR_CACHE_DIR'] == str(tmp_path/'mine')


def test_a_run_shown_on_an_ascii_stream_escapes_what_it_cannot_show():
    "A run's live output on a stream that cannot encode Δ (an ASCII locale, a caller's Python) dropped the whole chunk: the line was missing on screen, kept only in log.txt."
    import io
    from har_kit.runs import Echo
    log, raw = io.StringIO(), io.BytesIO()
    shown = io.TextIOWrapper(raw, encoding='ascii')
    e = Echo(log, shown)
    e.write('mA 0.71 (\u0394 +0.02)\n'); e.close(); shown.flush()
    assert log.getvalue() == 'mA 0.71 (\u0394 +0.02)\n' and raw.getvalue() == b'mA 0.71 (\\u0394 +0.02)\n', raw.getvalue()
