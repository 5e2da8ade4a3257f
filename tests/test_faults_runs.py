"""Fault catalogue of the run side (issue 13): each test tries one fault and states the clear outcome.

Most tests replace papermill's executor with a fake (no kernel, milliseconds); the last ones start real kernels.
"""
import errno, json, os, re
from pathlib import Path

import papermill
import pytest

from har_kit.core import KitError, load_json
from har_kit.runs import RunFailed, cli, run_lock, run_notebook, run_status
from har_kit.run_params import check_parameters, notebook_parameters


def _nb(path, params_src='seed = 0\nbatch_size = 8\nthreshold = 0.5\nvariants = ["a", "b"]\nextra = None\nout_dir = None',
        body='from har_kit.core import save_metrics\nsave_metrics({"seed": seed}, out_dir)'):
    path.write_text(json.dumps({'cells': [
        {'cell_type': 'code', 'metadata': {'tags': ['parameters']}, 'source': params_src, 'outputs': [], 'execution_count': None},
        {'cell_type': 'code', 'metadata': {}, 'source': body, 'outputs': [], 'execution_count': None}],
        'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
        'nbformat': 4, 'nbformat_minor': 5}))
    return path


def _fake(monkeypatch, behaviour=None):
    "Replace papermill's executor: write the output notebook (as papermill does) and metrics, then `behaviour`."
    calls = []
    def execute(inp, outp, parameters=None, **kw):
        calls.append(dict(parameters))
        nb = json.loads(Path(inp).read_text())
        for c in nb['cells']: c['metadata']['papermill'] = {'status': 'completed', 'duration': 0.01,
                                                             'start_time': '2026-01-01T00:00:00', 'end_time': None}
        Path(outp).write_text(json.dumps(nb))
        if behaviour: behaviour(Path(outp), parameters)
        else: (Path(parameters['out_dir'])/'metrics.json').write_text(json.dumps({'seed': parameters.get('seed', 0)}))
    monkeypatch.setattr(papermill, 'execute_notebook', execute)
    return calls


def test_run_skips_demonstrations_unless_asked(tmp_path, monkeypatch):
    "`har-kit run` runs the experiment only: a `demo` cell is replaced by its note; `--demos` keeps it; `--batch` still parses."
    calls = []
    def behaviour(outp, parameters):
        calls.append([''.join(c['source']) for c in json.loads(outp.read_text())['cells']])
        (Path(parameters['out_dir'])/'metrics.json').write_text('{}')
    _fake(monkeypatch, behaviour)
    nb = _nb(tmp_path/'n.ipynb')
    d = json.loads(nb.read_text())
    d['cells'].insert(1, {'cell_type': 'code', 'metadata': {'tags': ['demo']}, 'source': 'print("a demonstration")',
                          'outputs': [], 'execution_count': None})
    nb.write_text(json.dumps(d))
    for args, ran in (([], False), (['--batch'], False), (['--demos'], True)):
        run = tmp_path/f'run{len(calls)}'
        assert cli([str(nb), '--out', str(run), '--quiet', *args]) == 0
        assert ('print("a demonstration")' in calls[-1]) is ran, (args, calls[-1])
        assert load_json(run/'env.json')['demos'] is ran


# --- parameters: checked before anything runs ---------------------------------------------------------------------

def test_unknown_name_is_refused_with_close_match_and_nothing_created(tmp_path):
    nb = _nb(tmp_path/'n.ipynb')
    with pytest.raises(KitError, match=r"unknown parameter 'sead'.*did you mean 'seed'.*seed, batch_size"):
        run_notebook(nb, {'sead': 1}, tmp_path/'run', progress=False)
    assert not (tmp_path/'run').exists()


def test_parameter_name_cannot_inject_code(tmp_path, capsys):
    "The exploit of issue 13: a name holding code is refused before any kernel starts; the command never runs."
    nb, marker = _nb(tmp_path/'n.ipynb'), tmp_path/'pwned'
    assert cli([str(nb), '-p', f"__import__('os').system('touch {marker}'); z", '1', '--out', str(tmp_path/'run')]) == 1
    assert 'not a Python identifier' in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path/'run').exists()


@pytest.mark.parametrize('params, message', [
    ({'seed': 'abc'}, "'seed': expects a whole number \\(default 0\\), got a string 'abc'"),
    ({'batch_size': 0}, "'batch_size': must be at least 1"),
    ({'seed': {'a': 1}}, "'seed': expects a whole number \\(default 0\\), got a dict"),
    ({'threshold': '0.5'}, "'threshold': expects a number .*without quotes"),
    ({'variants': 'campar'}, "'variants': expects a list .*'\\[campar\\]'"),
    ({'variants': '[baseline,'}, "'variants': expects a list .*write a list, e.g. -p variants '\\[a, b\\]'"),   # a broken list: a good one shown
    ({'out_dir': '/x'}, 'set by the runner'),
])
def test_bad_values_get_clear_errors(tmp_path, params, message):
    with pytest.raises(KitError, match=message):
        check_parameters(_nb(tmp_path/'n.ipynb'), params)


@pytest.mark.parametrize('section, params, message', [
    ('dahar', {'train_splits': []}, 'would train on every split'),          # split() of nothing is every split
    ('dahar', {'train_splits': ['test']}, "includes 'test', the split this run scores"),
    ('campar', {'train_splits': ['train', 'test']}, "includes 'test'"),
    ('dahar', {'eval_split': 'val', 'train_splits': ['train', 'val']}, "includes 'val'"),
    ('dahar', {'epochs': 0}, "'epochs': must be at least 1"),              # no untrained model marked done
    ('dahar', {'seed': 2**32}, 'below 2\\^32'),
    ('dahar', {'scale': 0}, "'scale': must be above 0"),                  # not "non-finite loss ... learning rate"
    ('dahar', {'scale': -5.0}, "'scale': must be above 0"),
    ('dahar', {'data_root': 3}, "'data_root': expects a path"),
    ('campar', {'data_root': ['a']}, "'data_root': expects a path"),
    ('campar', {'data_root': {'a': 1}}, "'data_root': expects a path"),
    ('campar', {'data_root': True}, "'data_root': expects a path"),
    ('dahar', {'variants': []}, "'variants': must not be empty"),
    ('dahar', {'device': ''}, "'device': must not be empty"),
    ('campar', {'fuse_at': ''}, "'fuse_at': must not be empty"),
    ('campar', {'fusion_width': -5}, "'fusion_width': must be at least 1"),
    ('campar', {'fusion_width': 0}, "'fusion_width': must be at least 1"),
    ('dahar', {'batch_size': 1e26}, "'batch_size': expects a whole number"),
    ('dahar', {'scale': 1e26}, "'scale': must be at most 4.0, got 1e\\+26"),    # absurd sizes stop at documented caps
    ('campar', {'epochs': 10**9}, "'epochs': must be at most 1000"),
    ('dahar', {'batch_size': 10**12}, "'batch_size': must be at most 4096"),
    ('cfar', {'num_threads': 99999}, "'num_threads': must be at most"),
    ('cfar', {'p_t': 1.5}, r"p_t=1.5: the preference threshold of Eq. 17 must lie in \[0, 1\]"),   # refused after phase 1 before
    ('cfar', {'als_tol': 0}, r"als_tol=0(\.0)?: use a relative change > 0"),
    ('cfar', {'phase2_lr': 0}, "'phase2_lr': must be above 0"),
    ('campar', {'lr': 0}, "'lr': must be above 0, got 0 \\(the step size"),   # TrainConfig's error inside the kernel otherwise
    ('dahar', {'lr': -0.1}, "'lr': must be above 0"),
    ('cfar', {'phase2_epochs': 0}, "'phase2_epochs': must be at least 1, got 0 \\(0 trains no fc_2"),
    ('campar', {'partition': 7}, "'partition': must be one of 0, 1, 2, 3, 4, got 7 \\(RAP v1's five train/test partitions\\)"),
    ('dahar', {'partition': 5}, "'partition': must be one of 0, 1, 2, 3, 4"),     # recorded but ignored on WIDER before
    ('dahar', {'lr_step': 0}, "'lr_step': must be at least 1"),                  # StepLR's ZeroDivisionError
    ('loading', {'n_show': -3}, "'n_show': must be at least 1"),
    ('dahar', {'momentum': 7.0}, "'momentum': must be below 1"),                 # not 'diverged loss: lower the learning rate'
    ('bench', {'num_attributes': -1}, "'num_attributes': must be at least 1"),   # torch: 'negative dimension -1'
    ('bench', {'num_attributes': 0}, "'num_attributes': must be at least 1"),    # a model with no outputs, timed
    ('bench', {'input_size': [3]}, "'input_size': must be \\[C, H, W\\]"),        # conv2d: 'Expected 3D or 4D input'
    ('bench', {'input_size': [3, 0, 0]}, "'input_size': must be \\[C, H, W\\]: 3 whole numbers from 1 to 4096"),
])
def test_training_on_the_scored_split_and_empty_runs_are_refused_before_a_kernel(tmp_path, section, params, message):
    with pytest.raises(KitError, match=message): check_parameters(section, params)
    with pytest.raises(KitError, match=message): run_notebook(section, params, tmp_path/'run', progress=False)
    assert not (tmp_path/'run').exists()


def test_the_training_code_refuses_them_too():
    from har_kit.run_config import check_train_splits
    for bad in ([], None, ['test'], 'test'):
        with pytest.raises(KitError, match='train_splits'): check_train_splits(bad, 'test')


@pytest.mark.parametrize('config, field, value, message', [
    ('DaHarConfig', 'epochs', 0, "DaHarConfig 'epochs': must be at least 1, got 0"),     # an untrained model.pt otherwise
    ('DaHarConfig', 'scale', 0.0, "DaHarConfig 'scale': must be above 0"),             # a (1, 1) input otherwise
    ('DaHarConfig', 'batch_size', 0, "DaHarConfig 'batch_size': must be at least 1"),   # torch's sampler error otherwise
    ('DaHarConfig', 'seed', -1, "DaHarConfig 'seed': must be at least 0"),             # numpy's error otherwise
    ('CamParConfig', 'epochs', 0, "CamParConfig 'epochs': must be at least 1"),
    ('CamParConfig', 'grad_clip', -1.0, "CamParConfig 'grad_clip': must be at least 0"),
    ('CFARRunConfig', 'phase2_lr', -0.1, "CFARRunConfig 'phase2_lr': must be above 0"),
    ('CFARRunConfig', 'phase2_lr', 0.0, "CFARRunConfig 'phase2_lr': must be above 0"),        # TrainConfig's error after phase 1 otherwise
    ('CFARRunConfig', 'phase2_epochs', 0, "'phase2_epochs': must be at least 1, got 0 \\(0 trains no fc_2"),          # +CFAR rows = phase 1's, silently, otherwise
    ('CFARRunConfig', 'phase2_epochs', -1, "CFARRunConfig 'phase2_epochs': must be at least 1"),
    ('CFARRunConfig', 'p_t', 1.5, r"p_t=1.5: the preference threshold of Eq. 17 must lie in \[0, 1\]"),   # the ALS fit's message
    ('CFARRunConfig', 'p_t', -0.1, r"p_t=-0.1: the preference threshold of Eq. 17 must lie in \[0, 1\]"),
    ('CFARRunConfig', 'als_tol', 0.0, r"als_tol=0.0: use a relative change > 0"),              # the ALS fit's message
])
def test_configs_built_in_python_refuse_what_the_cli_refuses(config, field, value, message):
    "The Python route (`train_variant(Recipe(Config(...)))`) checks the same ranges as `har-kit run`."
    from har_kit.campar_train import CamParConfig
    from har_kit.cfar import CFARRunConfig
    from har_kit.dahar_train import DaHarConfig
    cls = dict(DaHarConfig=DaHarConfig, CamParConfig=CamParConfig, CFARRunConfig=CFARRunConfig)[config]
    with pytest.raises(KitError, match=message): cls(**{field: value})


def test_config_specific_messages_come_first_and_documented_values_pass():
    from har_kit.cfar import CFARRunConfig
    from har_kit.dahar_train import DaHarConfig
    assert CFARRunConfig(num_threads=0).num_threads == 0                      # documented: 0 = implicit's all cores
    assert (CFARRunConfig(p_t=0.0).p_t, CFARRunConfig(p_t=1.0).p_t) == (0.0, 1.0)   # Eq. 17's threshold on r in [0, 1]: both ends
    with pytest.raises(KitError, match='0 = no mask supervision'): DaHarConfig(mask_weight=-1.0)
    with pytest.raises(KitError, match=r'must lie in \[0, 1\]'): DaHarConfig(mix=-0.5)


def test_none_default_accepts_plain_values_and_ints_widen_to_float(tmp_path):
    nb = _nb(tmp_path/'n.ipynb')
    assert check_parameters(nb, {'extra': {'k': [1, 'x']}, 'threshold': 1}) == {'extra': {'k': [1, 'x']}, 'threshold': 1.0}
    assert notebook_parameters(nb)['variants'] == ['a', 'b']


def test_cli_reads_values_by_the_defaults_type(tmp_path, capsys):
    assert cli([str(_nb(tmp_path/'n.ipynb')), '-p', 'seed', 'abc', '--out', str(tmp_path/'r')]) == 1
    assert "expects a whole number" in capsys.readouterr().err and not (tmp_path/'r').exists()


# --- one writer, no result lost ------------------------------------------------------------------------------------

def test_second_writer_is_refused_naming_the_holder(tmp_path, monkeypatch):
    calls = _fake(monkeypatch)
    with run_lock(tmp_path/'run'):
        with pytest.raises(KitError, match=rf'in use by another run \(pid {os.getpid()} on .*, started '):
            run_notebook(_nb(tmp_path/'n.ipynb'), {'seed': 1}, tmp_path/'run', progress=False)
        assert run_status(tmp_path/'run')['state'] == 'running'
    assert calls == []


@pytest.mark.parametrize('err', [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_filesystem_without_locks_is_one_line_naming_the_folder_and_status_still_reads(tmp_path, monkeypatch, capsys, err):
    "Lustre without -o flock (ENOSYS), NFS without its lock daemon (ENOLCK): `har-kit run` ended in a raw OSError traceback, "
    "and `run_status` (status, the tables) could not read a run there."
    import fcntl
    calls, nb = _fake(monkeypatch), _nb(tmp_path/'n.ipynb')
    def flock(fd, op): raise OSError(err, os.strerror(err))
    monkeypatch.setattr(fcntl, 'flock', flock)
    run = tmp_path/'run'
    with pytest.raises(KitError, match=rf'^{re.escape(str(run))}: this filesystem does not support file locks \(flock: '
                                       rf'{re.escape(os.strerror(err))}\).*-o flock.*\$HAR_KIT_OUTPUTS'):
        run_notebook(nb, {}, run, progress=False)
    assert calls == [] and (run/'.lock').exists()
    assert run_status(run) == {'state': 'missing', 'error': None}   # a lock that cannot be taken: no runner holds it
    (run/'params.json').write_text('{}'); (run/'metrics.json').write_text('{}'); (run/'done').write_text('2026-01-01T00:00:00\n')
    assert run_status(run)['state'] == 'done'
    assert cli([str(nb), '--out', str(tmp_path/'r2'), '--quiet']) == 1
    out = capsys.readouterr().err
    assert 'does not support file locks' in out and 'Traceback' not in out and len(out.strip().splitlines()) == 1, out


def test_other_parameters_are_refused_and_force_moves_the_old_run_aside(tmp_path, monkeypatch):
    _fake(monkeypatch)
    nb = _nb(tmp_path/'n.ipynb')
    run_notebook(nb, {'seed': 0}, tmp_path/'run', progress=False)
    with pytest.raises(KitError, match=r'other parameters \(differs in: seed: 0 -> 1\).*--force'):
        run_notebook(nb, {'seed': 1}, tmp_path/'run', progress=False)
    assert load_json(tmp_path/'run'/'metrics.json') == {'seed': 0}
    (tmp_path/'run'/'checkpoints').mkdir(); (tmp_path/'run'/'checkpoints'/'last.pt').write_bytes(b'seed 0 weights')
    run_notebook(nb, {'seed': 1}, tmp_path/'run', progress=False, force=True)
    assert load_json(tmp_path/'run'/'metrics.json') == {'seed': 1}
    assert not (tmp_path/'run'/'checkpoints').exists()           # the new run cannot resume the old one's checkpoint
    (aside,) = tmp_path.glob('run.old-*')
    assert load_json(aside/'metrics.json') == {'seed': 0} and (aside/'done').exists()
    assert (aside/'checkpoints'/'last.pt').read_bytes() == b'seed 0 weights'
    assert load_json(aside/'params.json') == {'seed': 0}


def test_done_run_with_same_parameters_is_skipped(tmp_path, monkeypatch):
    calls = _fake(monkeypatch)
    nb = _nb(tmp_path/'n.ipynb')
    run_notebook(nb, {'seed': 2}, tmp_path/'run', progress=False)
    run_notebook(nb, {'seed': 2}, tmp_path/'run', progress=False)
    assert len(calls) == 1


def test_torchrun_ranks_above_zero_never_touch_the_run_directory(tmp_path, monkeypatch):
    "Under torchrun every rank executes the notebook; rank 0 owns the run dir, rank k writes <run>.rank<k> (no lock clash)."
    calls = _fake(monkeypatch)
    nb = _nb(tmp_path/'n.ipynb')
    monkeypatch.setenv('RANK', '1')
    with run_lock(tmp_path/'run'):   # rank 0 holds the run directory meanwhile
        out = run_notebook(nb, {'seed': 2}, tmp_path/'run', progress=False)
    assert out == (tmp_path/'run.rank1').resolve() and calls[0]['out_dir'] == str(out)
    monkeypatch.setenv('RANK', '0')
    assert run_notebook(nb, {'seed': 2}, tmp_path/'run', progress=False) == (tmp_path/'run').resolve()
    assert (tmp_path/'run'/'done').exists() and len(calls) == 2


def test_foreign_nonempty_directory_is_refused(tmp_path, monkeypatch):
    _fake(monkeypatch)
    (tmp_path/'mine').mkdir(); (tmp_path/'mine'/'thesis.tex').write_text('x')
    with pytest.raises(KitError, match='is not a run directory'):
        run_notebook(_nb(tmp_path/'n.ipynb'), {}, tmp_path/'mine', progress=False)
    assert (tmp_path/'mine'/'thesis.tex').read_text() == 'x'


# --- nothing half-written ------------------------------------------------------------------------------------------

def test_failed_cell_keeps_the_whole_notebook_and_writes_failed_json(tmp_path, monkeypatch):
    def fail(outp, params):
        raise papermill.PapermillExecutionError(1, 2, 'raise ValueError', 'ValueError', 'bad field: labels', [])
    _fake(monkeypatch, fail)
    with pytest.raises(RunFailed, match='cell 2 raised ValueError: bad field: labels'):
        run_notebook(_nb(tmp_path/'n.ipynb'), {}, tmp_path/'run', progress=False)
    run = tmp_path/'run'
    json.loads((run/'notebook.ipynb').read_text())          # whole, under its final name
    assert not (run/'notebook.running.ipynb').exists() and not (run/'done').exists()
    f = load_json(run/'failed.json')
    assert f['cell'] == 2 and 'bad field' in f['error'] and f['time']
    assert run_status(run)['state'] == 'failed' and 'bad field' in run_status(run)['error']


def test_a_resumed_run_under_an_edited_notebook_says_so_and_keeps_the_old_notebook_on_record(tmp_path, monkeypatch, capsys):
    "A run fails, a code cell is edited, the same command resumes it: done, with a warning naming both sha256s, and "
    "env.json's sessions keep the notebook the first session ran."
    def fail(outp, params): raise papermill.PapermillExecutionError(1, 2, 'raise ValueError', 'ValueError', 'a bug', [])
    _fake(monkeypatch, fail)
    nb, run = _nb(tmp_path/'n.ipynb'), tmp_path/'run'
    assert cli([str(nb), '--out', str(run), '--quiet']) == 1
    first = load_json(run/'env.json')['notebook']['sha256']
    _nb(nb, body='from har_kit.core import save_metrics\nsave_metrics({"seed": seed + 0}, out_dir)')   # the bug fixed
    _fake(monkeypatch)
    capsys.readouterr()
    assert cli([str(nb), '--out', str(run), '--quiet']) == 0 and run_status(run)['state'] == 'done'
    env, err = load_json(run/'env.json'), capsys.readouterr().err
    assert env['notebook']['sha256'] != first and [s['notebook']['sha256'] for s in env['sessions']] == [first], env
    assert f'started with another version of n.ipynb (its code cells changed; sha256 {first} then, {env["notebook"]["sha256"]} now)' in err, err
    assert 'made by the old code' in err and '--force' in err


def test_a_prose_edit_is_no_code_change_for_a_resumed_run(tmp_path, monkeypatch, capsys):
    "Editing only a notebook's markdown between a failure and the resume says nothing about old code."
    def fail(outp, params): raise papermill.PapermillExecutionError(1, 2, 'raise ValueError', 'ValueError', 'a bug', [])
    _fake(monkeypatch, fail)
    nb, run = _nb(tmp_path/'n.ipynb'), tmp_path/'run'
    assert cli([str(nb), '--out', str(run), '--quiet']) == 1
    doc = json.loads(nb.read_text()); doc['cells'].append({'cell_type': 'markdown', 'metadata': {}, 'source': 'A note.'})
    nb.write_text(json.dumps(doc))
    _fake(monkeypatch); capsys.readouterr()
    assert cli([str(nb), '--out', str(run), '--quiet']) == 0 and 'old code' not in capsys.readouterr().err


def test_stale_temporaries_are_cleaned_on_the_next_start(tmp_path, monkeypatch):
    _fake(monkeypatch)
    nb, run = _nb(tmp_path/'n.ipynb'), tmp_path/'run'
    run.mkdir(); (run/'params.json').write_text('{"seed": 3}')
    (run/'notebook.running.ipynb').write_text('{"cells": [')            # torn by a kill
    (run/'.metrics.json.abc.tmp').write_text('{"se')
    (run/'checkpoints').mkdir(); (run/'checkpoints'/'.last.pt.x.tmp').write_bytes(b'\0' * 10)
    assert run_status(run)['state'] == 'failed' and 'interrupted' in run_status(run)['error']
    run_notebook(nb, {'seed': 3}, run, progress=False)
    assert sorted(p.name for p in run.rglob('*') if p.name.endswith('.tmp') or 'running' in p.name) == []
    assert run_status(run)['state'] == 'done'


def test_disk_full_in_the_runner_is_one_line(tmp_path, monkeypatch):
    def full(outp, params): raise OSError(errno.ENOSPC, 'No space left on device', str(outp))
    _fake(monkeypatch, full)
    with pytest.raises(RunFailed) as e:
        run_notebook(_nb(tmp_path/'n.ipynb'), {}, tmp_path/'run', progress=False)
    msg = str(e.value)
    assert '\n' not in msg and 'disk is full' in msg and 'kept: ' in msg and 'params.json' in msg


def test_disk_full_in_the_kernel_is_named(tmp_path, monkeypatch):
    def full(outp, params):
        raise papermill.PapermillExecutionError(3, 5, 'save', 'OSError', '[Errno 28] No space left on device', [])
    _fake(monkeypatch, full)
    with pytest.raises(RunFailed, match='the disk is full .*cell 5'):
        run_notebook(_nb(tmp_path/'n.ipynb'), {}, tmp_path/'run', progress=False)


def test_cell_timeout_is_one_line(tmp_path, monkeypatch):
    from nbclient.exceptions import CellTimeoutError
    def slow(outp, params): raise CellTimeoutError('Cell execution timed out')
    _fake(monkeypatch, slow)
    with pytest.raises(RunFailed, match='ran longer than timeout=5 s'):
        run_notebook(_nb(tmp_path/'n.ipynb'), {}, tmp_path/'run', progress=False, timeout=5)
    assert run_status(tmp_path/'run')['state'] == 'failed'


def test_unknown_kernel_names_the_installed_ones(tmp_path):
    with pytest.raises(KitError, match=r"kernel_name='nope' .*installed kernels: .*python3"):
        run_notebook(_nb(tmp_path/'n.ipynb'), {}, tmp_path/'run', progress=False, kernel_name='nope')
    assert not (tmp_path/'run').exists()


def test_no_metrics_means_failed_not_done(tmp_path, monkeypatch):
    _fake(monkeypatch, lambda outp, params: None)
    with pytest.raises(RunFailed, match='wrote no metrics.json'):
        run_notebook(_nb(tmp_path/'n.ipynb'), {}, tmp_path/'run', progress=False)
    assert run_status(tmp_path/'run')['state'] == 'failed'


def test_run_status_missing(tmp_path):
    assert run_status(tmp_path/'never') == {'state': 'missing', 'error': None}


# --- real kernels --------------------------------------------------------------------------------------------------

def test_dead_kernel_is_one_line_and_keeps_the_notebook(tmp_path):
    nb = _nb(tmp_path/'k.ipynb', 'out_dir = None', 'print("before")')
    cells = json.loads(nb.read_text())
    cells['cells'].append({'cell_type': 'code', 'metadata': {}, 'source': 'import os, signal\nos.kill(os.getpid(), signal.SIGKILL)',
                           'outputs': [], 'execution_count': None})
    nb.write_text(json.dumps(cells))
    with pytest.raises(RunFailed) as e:
        run_notebook(nb, {}, tmp_path/'run', progress=False)   # no cell timeout: the kernel's death alone ends the run
    msg = str(e.value)
    assert '\n' not in msg and 'kernel died while running cell 4' in msg
    kept = json.loads((tmp_path/'run'/'notebook.ipynb').read_text())
    assert 'before' in json.dumps(kept['cells'][2]['outputs'])
    assert load_json(tmp_path/'run'/'failed.json')['cell'] == 4


def test_kernel_sees_the_launchers_folders_threads_and_keeps_figures(tmp_path, monkeypatch):
    "Inside the kernel (cwd = run dir) data_root/outputs_root are the launcher's; threads fixed; figures kept."
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path/'data')); monkeypatch.setenv('HAR_KIT_OUTPUTS', str(tmp_path/'outs'))
    monkeypatch.setenv('MPLBACKEND', 'agg')                      # as the Makefile exports it
    body = ('import os, torch, matplotlib.pyplot as plt\nfrom har_kit.core import data_root, outputs_root, save_figure, save_metrics\n'
            'fig, ax = plt.subplots(figsize=(2, 1)); ax.plot([0, 1])\nsave_figure(fig, "curve", out_dir)\n'
            'save_metrics(dict(data=str(data_root()), outputs=str(outputs_root()), cwd=os.getcwd(), '
            'threads=torch.get_num_threads(), omp=os.environ["OMP_NUM_THREADS"]), out_dir)')
    run = run_notebook(_nb(tmp_path/'f.ipynb', 'out_dir = None', body), {}, tmp_path/'run', progress=False, threads=2)
    m = load_json(run/'metrics.json')
    assert m == dict(data=str(tmp_path/'data'), outputs=str(tmp_path/'outs'), cwd=str(run), threads=2, omp='2')
    outs = json.dumps(json.loads((run/'notebook.ipynb').read_text())['cells'][-1]['outputs'])
    assert 'image/png' in outs and (run/'curve.png').read_bytes()[:4] == b'\x89PNG'
    t = load_json(run/'timing.json')
    assert t['kernel_start_seconds'] > 0 and len(t['cells']) == 3   # with papermill's injected cell
    # the first importing cell is the body (the parameters cells import nothing): its seconds are imports_seconds
    assert t['cells'][-1]['first_line'].startswith('import os, torch') and t['imports_seconds'] == t['cells'][-1]['seconds']
    assert '[har-kit] kernel start' in (run/'log.txt').read_text()


# --- Ctrl-C: the kernels stop, the runs are marked interrupted, exit 130 -------------------------------------------

_BLOCKING = ('import pathlib, time\npathlib.Path(out_dir, "started").touch()\n'
             'while True: time.sleep(0.05)')   # a cell that never finishes by itself


def _interrupt_when_started(cmd, markers, tmp_path, sig=None):
    "Start `cmd`, send SIGINT once a kernel has written a marker (no sleep as synchronisation), return (rc, stderr)."
    import signal, subprocess, sys, time
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path), 'HAR_KIT_OUTPUTS': str(tmp_path/'outputs')}
    p = subprocess.Popen([sys.executable, '-c', cmd], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        hang = time.monotonic() + 600   # hang guards only: a kernel starts in seconds, a stop takes at most the 10 s grace
        while not any(tmp_path.glob(markers)):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < hang, 'no kernel started within 600 s: hung'
            time.sleep(0.05)   # polling the marker; the order of events does not depend on this
        p.send_signal(sig or signal.SIGINT)
        out, err = p.communicate(timeout=600)   # that it returns at all is the check that the signal stopped it
        return p.returncode, err
    finally:
        if p.poll() is None: p.kill(); p.communicate()


def test_ctrl_c_stops_har_kit_run_and_marks_it_interrupted(tmp_path):
    nb = _nb(tmp_path/'n.ipynb', params_src='seed = 0\nout_dir = None', body=_BLOCKING)
    cmd = f'import sys; from har_kit.runs import cli; sys.exit(cli([{str(nb)!r}, "--out", {str(tmp_path/"run")!r}]))'
    rc, err = _interrupt_when_started(cmd, 'run/started', tmp_path)
    assert rc == 130, (rc, err)
    assert 'interrupted' in err and 'rerun the same command' in err and 'Traceback' not in err, err
    assert 'stopping: the running cell gets up to 10 s to end' in err and 'Ctrl-C again stops at once' in err, err
    assert not (tmp_path/'run'/'done').exists()
    st = run_status(tmp_path/'run')
    assert st['state'] == 'failed' and st['interrupted'] and 'Ctrl-C' in st['error']


def test_ctrl_c_while_har_kit_run_reads_its_inputs_stops_it_at_once(tmp_path, monkeypatch, capsys):
    "Hashing a run's inputs (a large mask folder) comes before its kernel: a Ctrl-C there was only noted, silently, until they were all read."
    import signal, threading
    import har_kit.runs as R
    nb, read_on = _nb(tmp_path/'n.ipynb', params_src='seed = 0\nout_dir = None', body='x = 1'), []
    def hashing(params):   # the signal is delivered to this process before os.kill returns; its handler runs in the loop
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000): pass
        read_on.append(True); return {}
    assert threading.current_thread() is threading.main_thread()   # where the CLI installs its handler (else the signal would stop pytest)
    monkeypatch.setattr(R, 'input_fingerprints', hashing)
    monkeypatch.setattr(R, '_STOPPING', threading.Event()); monkeypatch.setattr(R, '_SIGNAL', [0])   # the stop stays in this test
    assert cli([str(nb), '--out', str(tmp_path/'run')]) == 130
    err = capsys.readouterr().err
    assert read_on == [] and 'not started: stopped while it read its inputs' in err and 'rerun the same command' in err, err
    assert not (tmp_path/'run').exists()


def test_a_run_stopped_before_its_first_cell_is_told_to_start_not_resume(tmp_path, monkeypatch):
    "Stopped while its kernel started: nothing ran, so there is no checkpoint to resume from; the message says rerun to start it."
    import threading
    import har_kit.runs as R
    def starting(*a, **kw): R.stop_runs(); raise KeyboardInterrupt   # a Ctrl-C while papermill starts the kernel
    monkeypatch.setattr(papermill, 'execute_notebook', starting)
    monkeypatch.setattr(R, '_STOPPING', threading.Event()); monkeypatch.setattr(R, '_SIGNAL', [0])   # the stop stays in this test
    nb = _nb(tmp_path/'n.ipynb', params_src='seed = 0\nout_dir = None', body='x = 1')
    with pytest.raises(R.RunInterrupted, match='before its first cell ran; rerun the same command to start it$'):
        with R.forward_interrupts(): run_notebook(nb, {}, tmp_path/'run', progress=False)


def test_a_kernel_whose_python_is_gone_is_named_with_the_command_that_reinstalls_it(tmp_path, monkeypatch):
    "A kernel spec left pointing at a moved or deleted environment failed every run in papermill with a bare FileNotFoundError."
    spec = tmp_path/'jp'/'kernels'/'gone'
    spec.mkdir(parents=True)
    (spec/'kernel.json').write_text(json.dumps({'argv': ['/gone/clone/.venv/bin/python', '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                                                'display_name': 'gone', 'language': 'python'}))
    monkeypatch.setenv('JUPYTER_PATH', str(tmp_path/'jp'))
    nb = _nb(tmp_path/'n.ipynb', params_src='seed = 0\nout_dir = None', body='x = 1')
    with pytest.raises(KitError, match=r"kernel 'gone' \(.*kernel\.json\) starts /gone/clone/\.venv/bin/python, which does not exist.*ipykernel install --sys-prefix --name gone"):
        run_notebook(nb, {}, tmp_path/'run', kernel_name='gone', progress=False)
    assert not (tmp_path/'run').exists()


def test_gpu_settings_on_the_cpu_are_named_before_the_run(tmp_path, capsys):
    "The paper profile's config with -p device cpu (as the refusal of 'cuda' advises) kept bf16 and compile: about 100x slower, silently."
    nb = _nb(tmp_path/'n.ipynb', params_src="seed = 0\nout_dir = None\ndevice = 'cpu'\namp = 'none'\ncompile_mode = 'none'", body='x = 1')
    for params, said in (({'amp': 'bf16', 'compile_mode': 'reduce-overhead'}, True), ({}, False), ({'amp': 'bf16', 'device': 'cuda'}, False)):
        with pytest.raises(KitError): run_notebook(nb, {'device': 'cpu', **params}, tmp_path/'run', kernel_name='no-such-kernel', progress=False)
        err = capsys.readouterr().err
        assert ("note: amp='bf16', compile_mode='reduce-overhead' are GPU settings; on the CPU" in err) == said, err


def test_a_stop_between_two_cells_ends_the_run_before_the_next_cell(tmp_path, monkeypatch):
    "An idle kernel ignores SIGINT (ipykernel raises only inside a cell): a stop that lands between two cells ended the "
    "run only after the next cell, which may be the whole training (or SIGKILL after the grace); now before it starts."
    import har_kit.runs as R
    from papermill.engines import NotebookExecutionManager
    complete = NotebookExecutionManager.cell_complete
    def stop_after_the_first(self, cell, cell_index=None, **kw):
        complete(self, cell, cell_index, **kw)
        if 'first' in ''.join(cell.source): R.stop_runs(grace=60)   # the kernel has replied: it is idle now
    monkeypatch.setattr(NotebookExecutionManager, 'cell_complete', stop_after_the_first)
    nb = _nb(tmp_path/'n.ipynb', params_src='out_dir = None', body='import pathlib\npathlib.Path(out_dir, "first").touch()')
    cells = json.loads(nb.read_text())
    cells['cells'].append({'cell_type': 'code', 'metadata': {}, 'source': 'pathlib.Path(out_dir, "second").touch()',
                           'outputs': [], 'execution_count': None})
    nb.write_text(json.dumps(cells))
    try:
        with pytest.raises(R.RunInterrupted, match='rerun the same command'):
            run_notebook(nb, {}, tmp_path/'run', progress=False)
    finally: R._STOPPING.clear(); R._SIGNAL[0] = 0
    assert (tmp_path/'run'/'first').exists() and not (tmp_path/'run'/'second').exists()
    st = run_status(tmp_path/'run')
    assert st['interrupted'] and 'after cell' in st['error'] and not (tmp_path/'run'/'done').exists()


def test_a_schedulers_preemption_exit_is_recorded_and_kept(tmp_path, monkeypatch):
    "submitit's checkpoint stops the runs and exits from its signal handler (144: requeue me); the run is recorded "
    "interrupted and the exit goes on, not turned into an error the job would report as its result."
    import sys as _sys
    import papermill
    import har_kit.runs as R
    def preempted(*a, **k): R.stop_runs(grace=60); _sys.exit(144)
    monkeypatch.setattr(papermill, 'execute_notebook', preempted)
    try:
        with pytest.raises(SystemExit) as e: run_notebook(_nb(tmp_path/'n.ipynb'), {}, tmp_path/'run', progress=False)
    finally: R._STOPPING.clear(); R._SIGNAL[0] = 0
    assert e.value.code == 144 and run_status(tmp_path/'run')['interrupted']


def test_a_signal_the_command_was_started_ignoring_stays_ignored():
    "nohup ignores SIGHUP: closing the terminal must not stop a run started that way (SIGINT and SIGTERM stop runs in any case)."
    import signal
    from har_kit.runs import forward_interrupts
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with forward_interrupts():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert all(callable(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM))
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally: signal.signal(signal.SIGHUP, old)


def test_a_closed_terminal_stops_har_kit_run_as_ctrl_c_does(tmp_path):
    "SIGHUP (the terminal or the SSH session closed) ended the command at once, leaving the kernel's files and no record."
    import signal
    nb = _nb(tmp_path/'n.ipynb', params_src='seed = 0\nout_dir = None', body=_BLOCKING)
    cmd = ('import signal, sys; from har_kit.runs import cli\n'
           'signal.signal(signal.SIGHUP, signal.SIG_DFL)   # as from a terminal, whatever started these tests (nohup ignores it)\n'
           f'sys.exit(cli([{str(nb)!r}, "--out", {str(tmp_path/"run")!r}]))')
    rc, err = _interrupt_when_started(cmd, 'run/started', tmp_path, signal.SIGHUP)
    assert rc == 128 + signal.SIGHUP and 'interrupted' in err and 'Traceback' not in err, (rc, err)
    assert run_status(tmp_path/'run')['interrupted'] and not list((tmp_path/'run').glob('.batch-source*'))


def test_an_interrupted_render_says_a_rerun_renders_again(tmp_path):
    "A tables run reads other runs and gets a new folder each time: it has no checkpoint to resume, as the message claimed."
    nb = _nb(tmp_path/'73_tables.ipynb', params_src='seed = 0\nout_dir = None', body=_BLOCKING)
    cmd = f'import sys; from har_kit.runs import cli; sys.exit(cli([{str(nb)!r}, "--out", {str(tmp_path/"run")!r}]))'
    rc, err = _interrupt_when_started(cmd, 'run/started', tmp_path)
    assert rc == 130 and 'rerun the same command to render again' in err and 'last checkpoint' not in err, (rc, err)


def test_a_resumed_runs_timing_counts_every_session(tmp_path):
    "timing.json was rewritten by each session, so a run stopped or failed once reported only its last session's time."
    body = ('import pathlib\nfrom har_kit.core import save_metrics\np = pathlib.Path(out_dir, "second")\nok = p.exists(); p.touch()\n'
            'assert ok, "first session"\nsave_metrics({"ok": 1}, out_dir)')
    nb = _nb(tmp_path/'n.ipynb', params_src='out_dir = None', body=body)
    with pytest.raises(RunFailed): run_notebook(nb, {}, tmp_path/'run', progress=False)
    first = load_json(tmp_path/'run'/'timing.json')
    run_notebook(nb, {}, tmp_path/'run', progress=False)
    t = load_json(tmp_path/'run'/'timing.json')
    assert len(t['sessions']) == 2 and t['sessions'][0] == first['sessions'][0] and t['sessions'][1]['total_seconds'] == t['total_seconds']
    assert t['all_sessions']['total_seconds'] == pytest.approx(first['total_seconds'] + t['total_seconds'], abs=2e-3)
    assert t['sessions'][0]['started'] < t['sessions'][1]['started']   # the top level is the last session's, as env.json's time
    from har_kit.launch import run_states
    rec = dict(name='r', out_dir=str(tmp_path/'run'), params={}, deps=[])
    assert run_states([rec])[0]['seconds']['total'] == t['all_sessions']['total_seconds']   # status and reproduce sum them all
    (tmp_path/'run'/'timing.json').write_text(json.dumps({'total_seconds': 1, 'sessions': 'oops'}))   # a foreign record: no crash
    (tmp_path/'run'/'done').unlink(); run_notebook(nb, {}, tmp_path/'run', progress=False)
    assert [s['total_seconds'] for s in load_json(tmp_path/'run'/'timing.json')['sessions']][:1] == [1]   # read as an old-shape record


def test_after_the_terminal_closed_the_last_messages_do_not_fail():
    "By SIGHUP the terminal is already hung up (isatty is False then): the descriptors that were a terminal on entry go to "
    "/dev/null, so the command's closing messages do not raise EIO (a traceback and exit 1 instead of 129)."
    import pty, signal, time
    pid, fd = pty.fork()
    if pid == 0:   # the child, in a session of its own whose terminal is the pty
        code = 3
        try:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)   # as from a terminal, whatever started these tests (nohup ignores it)
            from har_kit.runs import forward_interrupts
            with forward_interrupts() as stopped:
                os.write(1, b'ready\n')
                hang = time.monotonic() + 120   # a hang guard only: the SIGHUP comes when the parent closes the pty
                while not stopped() and time.monotonic() < hang: time.sleep(0.01)
                code = 0 if stopped() else 2
            os.write(2, b'har-kit run: interrupted\n'); os.write(1, b'bye\n')   # the descriptors (pytest captures sys.stdout)
        except BaseException: code = 1
        os._exit(code)
    got = b''
    while b'ready' not in got: got += os.read(fd, 100)
    os.close(fd)   # the terminal closes: the kernel sends SIGHUP to the session
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_ctrl_c_stops_a_kernel_that_ignores_sigint(tmp_path):
    "A kernel deaf to SIGINT (a cell that ignores it) is killed after the grace period: the run still stops, exit 130."
    body = 'import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n' + _BLOCKING
    nb = _nb(tmp_path/'n.ipynb', params_src='seed = 0\nout_dir = None', body=body)
    cmd = (f'import sys, har_kit.runs as R\n'
           f'R.forward_interrupts.__wrapped__.__defaults__ = (1.0,)   # the grace before SIGKILL: 1 s instead of 10\n'
           f'sys.exit(R.cli([{str(nb)!r}, "--out", {str(tmp_path/"run")!r}]))')
    rc, err = _interrupt_when_started(cmd, 'run/started', tmp_path)
    assert rc == 130 and 'interrupted' in err and 'Traceback' not in err, (rc, err)
    assert not (tmp_path/'run'/'done').exists() and run_status(tmp_path/'run')['interrupted']


def test_a_stop_kills_a_kernel_still_starting_and_interrupts_one_running_a_cell(monkeypatch):
    "A kernel ignores SIGINT until its first cell (ipykernel starts with SIGINT ignored): one still starting, which has run "
    "nothing, is killed at once rather than after the grace; a kernel running a cell gets SIGINT and the grace."
    import signal, threading
    import har_kit.runs as R
    sent = []
    monkeypatch.setattr(R, '_signal_group', lambda pg, sig: sent.append((pg, sig)))
    monkeypatch.setattr(R, '_KERNELS', {'/runs/a': 11, '/runs/b': 22})
    monkeypatch.setattr(R, '_CELLS', {'/runs/b'})   # b's kernel has been sent a cell; a's is still starting
    monkeypatch.setattr(R, '_STOPPING', threading.Event()); monkeypatch.setattr(R, '_SIGNAL', [0])
    R.stop_runs(grace=600)
    assert sorted(sent) == [(11, signal.SIGKILL), (22, signal.SIGINT)], sent
    R.stop_runs(grace=600)   # a second Ctrl-C: every kernel killed at once
    assert sorted(sent[2:]) == [(11, signal.SIGKILL), (22, signal.SIGKILL)], sent


def test_ctrl_c_stops_har_kit_reproduce_with_a_summary(tmp_path):
    import signal
    nb = _nb(tmp_path/'n.ipynb', params_src='seed = 0\nout_dir = None', body=_BLOCKING)
    cmd = (f'import sys, har_kit.launch as L, har_kit.reproduce as R\n'
           f'from har_kit.runs import run_notebook\n'
           f'L.check_roots = lambda *a: None\n'
           f'L.render_tables = lambda *a, **k: sys.exit("rendered after an interrupt")\n'
           f'R.run_planned = lambda r, dev, force: run_notebook({str(nb)!r}, {{}}, r.out_dir, progress=False)\n'
           f'sys.exit(L.cli(["dahar_t2", "campar_t2", "--profile", "quick", "--jobs", "2", "--out", {str(tmp_path/"o")!r}]))')
    rc, err = _interrupt_when_started(cmd, 'o/**/started', tmp_path, signal.SIGTERM)
    assert rc == 143, (rc, err)   # 128 + SIGTERM, as a process the signal ended (Ctrl-C: 130)
    assert 'har-kit reproduce: interrupted:' in err and 'rerun the same command' in err and 'Traceback' not in err, err
    assert not list((tmp_path/'o').rglob('done'))
    stopped = [load_json(f) for f in (tmp_path/'o').rglob('failed.json')]
    assert stopped and all(f.get('interrupted') for f in stopped)
    # where the runs stand: the stopped ones interrupted, the ones never started missing, none failed
    st = load_json(tmp_path/'o'/'quick'/'status.json')
    assert st['counts']['interrupted'] == len(stopped) and st['counts']['failed'] == 0, st['counts']
    assert st['counts']['missing'] == len(st['runs']) - len(stopped), st['counts']
    never = [r for r in st['runs'] if r['state'] == 'missing']
    assert never and not any(Path(r['out_dir']).exists() for r in never)


# --- a hand-edited params.json ------------------------------------------------------------------------------------

def test_hand_edited_params_json_of_a_done_run_is_refused(tmp_path, monkeypatch):
    calls = _fake(monkeypatch)
    nb = _nb(tmp_path/'n.ipynb')
    run_notebook(nb, {'seed': 1}, tmp_path/'run', progress=False)
    (tmp_path/'run'/'params.json').write_text(json.dumps({'seed': 5}))       # edited to claim other values
    with pytest.raises(KitError, match='params.json was changed after the run finished.*--force'):
        run_notebook(nb, {'seed': 5}, tmp_path/'run', progress=False)
    assert len(calls) == 1
    run_notebook(nb, {'seed': 5}, tmp_path/'run', progress=False, force=True)    # --force reruns it with those values
    assert load_json(tmp_path/'run'/'metrics.json') == {'seed': 5} and len(calls) == 2


# --- the run directory given is a file; an unfinished run on another device --------------------------------------------

def test_a_run_directory_that_is_a_file_is_refused_before_anything(tmp_path, monkeypatch, capsys):
    calls = _fake(monkeypatch)
    nb = _nb(tmp_path/'n.ipynb')
    (tmp_path/'photo.jpg').write_bytes(b'jpeg')
    for out in (tmp_path/'photo.jpg', tmp_path/'photo.jpg'/'run'):
        with pytest.raises(KitError, match='photo.jpg is a file, not a folder; pass a run directory'):
            run_notebook(nb, {}, out, progress=False)
    assert cli([str(nb), '--out', str(tmp_path/'photo.jpg')]) == 1
    err = capsys.readouterr().err
    assert 'is a file, not a folder' in err and 'Traceback' not in err
    assert calls == [] and (tmp_path/'photo.jpg').read_bytes() == b'jpeg'


def test_an_unfinished_run_resumes_on_another_device_and_other_changes_say_how_to_proceed(tmp_path, monkeypatch):
    """A run that failed on one device is rerun on another without --force (the device is not part of a run's identity).
    (A device this machine lacks is refused before a kernel starts: here the run fails on 'auto' for the test's sake.)"""
    def fails_on_auto(outp, params):
        if params['device'] == 'auto':
            raise papermill.PapermillExecutionError(1, 2, 'get_device(device)', 'RuntimeError', 'CUDA error: out of memory', [])
        (Path(params['out_dir'])/'metrics.json').write_text(json.dumps({'seed': params['seed']}))
    calls = _fake(monkeypatch, fails_on_auto)
    nb = _nb(tmp_path/'n.ipynb', params_src="seed = 0\ndevice = 'cpu'\nout_dir = None")
    with pytest.raises(RunFailed, match='out of memory'): run_notebook(nb, {'device': 'auto', 'seed': 0}, tmp_path/'run', progress=False)
    with pytest.raises(KitError, match=r'an unfinished run .*nothing in it is a result.*seed: 0 -> 1.*pass --force'):
        run_notebook(nb, {'device': 'cpu', 'seed': 1}, tmp_path/'run', progress=False)
    run_notebook(nb, {'device': 'cpu', 'seed': 0}, tmp_path/'run', progress=False)
    assert (tmp_path/'run'/'done').exists() and load_json(tmp_path/'run'/'params.json')['device'] == 'cpu' and len(calls) == 2
    with pytest.raises(KitError, match=r'holds a run with other parameters \(differs in: device'):   # a done run stays as it ran
        run_notebook(nb, {'device': 'auto', 'seed': 0}, tmp_path/'run', progress=False)
    with pytest.raises(KitError, match="'tpu' is not a device name.*nothing was started"):
        run_notebook(nb, {'device': 'tpu', 'seed': 0}, tmp_path/'run', progress=False)


def test_a_library_notebook_is_not_run_and_the_sections_are_named(tmp_path, monkeypatch, capsys):
    "`har-kit run core` (a notebook without a parameters cell) is refused before a kernel starts or a folder is made; so is `params`."
    from har_kit.runs import params_cli
    monkeypatch.setenv('HAR_KIT_OUTPUTS', str(tmp_path/'outputs'))
    assert cli(['core']) == 1 and params_cli(['metrics']) == 2   # the run command's refusals exit 1, as a bad -p value's
    err = capsys.readouterr().err
    assert '00_core.ipynb has no cell tagged parameters, so it is not a notebook to run' in err and 'masks, dahar, campar, cfar' in err
    assert '05_metrics.ipynb has no cell tagged parameters' in err and not (tmp_path/'outputs').exists()


def test_a_gpu_this_machine_lacks_is_refused_before_a_kernel_starts(tmp_path, capsys):
    "-p device cuda:99 stops at the parameters, not in the notebook's 44th cell; nothing is created."
    assert cli(['campar', '-p', 'device', 'cuda:99', '--out', str(tmp_path/'r')]) == 1
    err = capsys.readouterr().err
    assert "the parameter device (-p device, or a -f file): device='cuda:99'" in err and 'nothing was started' in err and not (tmp_path/'r').exists()


def test_a_done_run_whose_input_run_was_trained_again_is_refused(tmp_path, monkeypatch):
    "A CFAR-like run reads another run (campar_run): once that run is trained again, the done run's numbers are not returned."
    calls = _fake(monkeypatch)
    nb = _nb(tmp_path/'n.ipynb', params_src='seed = 0\ncampar_run = None\nout_dir = None')
    phase1 = tmp_path/'campar'; phase1.mkdir(); (phase1/'metrics.json').write_text('{}'); (phase1/'done').write_text('2026-12-05T10:00:00\n')
    run_notebook(nb, {'campar_run': str(phase1)}, tmp_path/'run', progress=False)
    assert run_notebook(nb, {'campar_run': str(phase1)}, tmp_path/'run', progress=False) and len(calls) == 1   # unchanged: skipped
    (phase1/'done').write_text('2026-12-05T11:00:00\n')   # phase 1 trained again (--force moved the old one aside)
    with pytest.raises(KitError, match=r'other data \(input campar_run/done changed since it started: an input it reads was rerun'):
        run_notebook(nb, {'campar_run': str(phase1)}, tmp_path/'run', progress=False)
    assert len(calls) == 1


def test_a_done_run_whose_masks_were_made_again_is_refused(tmp_path, monkeypatch):
    "A Da-HAR run on a real dataset reads the masks the readers find (with none it is refused before a kernel starts): once "
    "they are made again with other pixels, the done run's numbers are not returned; a copy of them is no change, and a run "
    "that reads no masks is not concerned."
    import shutil
    from har_kit.data import tiny_fixture
    calls = _fake(monkeypatch)
    root = Path(tiny_fixture('rap', tmp_path/'RAP', n=8, masks=False))
    src = 'seed = 0\ndataset = "rap"\ndata_root = None\nmask_dir = None\nvariants = ["dahar"]\nout_dir = None'
    nb = _nb(tmp_path/'31_dahar.ipynb', params_src=src)   # named as the section, whose config says it reads masks
    with pytest.raises(KitError, match='the run reads person masks and there are none'):   # none yet: no kernel started
        run_notebook(nb, {'data_root': str(root), 'variants': ['dahar']}, tmp_path/'run', progress=False)
    run_notebook(nb, {'data_root': str(root), 'variants': ['baseline']}, tmp_path/'other', progress=False)
    assert not (tmp_path/'run').exists() and len(calls) == 1
    assert 'input masks' not in load_json(tmp_path/'other'/'env.json')['data']   # the baseline learns no mask
    (root/'masks').mkdir(); (root/'masks'/'a_0.png').write_bytes(b'a mask')   # `har-kit masks` wrote some since
    assert run_notebook(nb, {'data_root': str(root), 'variants': ['baseline']}, tmp_path/'other', progress=False) and len(calls) == 1
    run_notebook(nb, {'data_root': str(root), 'variants': ['dahar']}, tmp_path/'run2', progress=False)
    assert list(load_json(tmp_path/'run2'/'env.json')['data']['input masks']) == ['ROOT/masks']
    shutil.copytree(root/'masks', tmp_path/'copy'); shutil.rmtree(root/'masks'); shutil.copytree(tmp_path/'copy', root/'masks')
    assert run_notebook(nb, {'data_root': str(root), 'variants': ['dahar']}, tmp_path/'run2', progress=False) and len(calls) == 2   # same bytes
    (root/'masks'/'a_0.png').write_bytes(b'another mask')   # made again (say, Mask R-CNN replacing the box)
    with pytest.raises(KitError, match=r'other data \(input masks/ROOT/masks changed since it started: the person masks it reads were made'):
        run_notebook(nb, {'data_root': str(root), 'variants': ['dahar']}, tmp_path/'run2', progress=False)


def test_an_input_run_that_never_finished_is_refused_before_the_kernel_starts(tmp_path, monkeypatch, capsys):
    "campar_run naming a run killed after its metrics but before `done` is no result, and its fingerprint (`done`) could not "
    "tell a retraining: the reader is refused, naming the run, its state and what to do; once it is finished it is read."
    calls = _fake(monkeypatch)
    phase1, reader = _nb(tmp_path/'p.ipynb'), _nb(tmp_path/'n.ipynb', params_src='seed = 0\ncampar_run = None\nout_dir = None')
    run_notebook(phase1, {}, tmp_path/'campar', progress=False)
    (tmp_path/'campar'/'done').unlink()   # killed after save_metrics, before done
    assert cli([str(reader), '-p', 'campar_run', str(tmp_path/'campar'), '--out', str(tmp_path/'run'), '--quiet']) == 1
    err = capsys.readouterr().err
    assert f"campar_run={tmp_path/'campar'} is an unfinished run (no `done`" in err and 'rerun that run first' in err, err
    assert not (tmp_path/'run').exists() and len(calls) == 1
    run_notebook(phase1, {}, tmp_path/'campar', progress=False)   # the same command finishes it
    run_notebook(reader, {'campar_run': str(tmp_path/'campar')}, tmp_path/'run', progress=False)
    assert list(load_json(tmp_path/'run'/'env.json')['data']) == ['input campar_run'] and len(calls) == 3


def test_numbers_are_read_as_written_in_decimal(tmp_path):
    "YAML 1.1 reads 010 as 8 and 1:30 as 90: -p epochs 010 is ten, and 1:30 is refused, not trained as 90 epochs."
    from har_kit.runs import cli_params, read_params_file
    nb = _nb(tmp_path/'n.ipynb')
    assert cli_params(nb, [('seed', '010'), ('threshold', '1e-1')]) == {'seed': 10, 'threshold': 0.1}
    with pytest.raises(KitError, match=r"seed.*whole number.*got a string '1:30'"): check_parameters(nb, cli_params(nb, [('seed', '1:30')]))
    (tmp_path/'p.yaml').write_text('seed: 010\nbatch_size: 0x10\n')
    with pytest.raises(KitError, match='batch_size'): read_params_file(tmp_path/'p.yaml', nb)
    (tmp_path/'p.yaml').write_text('seed: 010\n')
    assert read_params_file(tmp_path/'p.yaml', nb) == {'seed': 10}


def test_hash_in_a_path_is_kept_and_a_comment_elsewhere_is_refused(tmp_path, monkeypatch, capsys):
    "YAML reads ' #...' as a comment: -p data_root '/data/run #2' ran on /data/run. A path is now taken as typed; any other "
    "value in which YAML would drop a comment is refused, naming the parameter, before anything is created."
    from har_kit.run_params import parse_params
    assert parse_params('dahar', [('data_root', '/data/run #2'), ('weights', '/models/w #1.pth'), ('mask_dir', 'None')]) == \
        {'data_root': '/data/run #2', 'weights': '/models/w #1.pth', 'mask_dir': None}
    calls = _fake(monkeypatch)
    nb = _nb(tmp_path/'n.ipynb', params_src='data_root = None\nweights = None\nlr = 0.1\nout_dir = None')
    root, w = tmp_path/'h3 #2', tmp_path/'w #1.pth'
    assert cli([str(nb), '-p', 'data_root', str(root), '-p', 'weights', str(w), '--out', str(tmp_path/'run'), '--quiet']) == 0
    assert (calls[0]['data_root'], calls[0]['weights']) == (str(root), str(w))
    assert cli([str(nb), '-p', 'lr', '0.5 # was 0.1', '--out', str(tmp_path/'run2')]) == 1
    assert "-p lr '0.5 # was 0.1': YAML reads" in capsys.readouterr().err and not (tmp_path/'run2').exists() and len(calls) == 1


@pytest.mark.parametrize('name,text,expects', [('lr', 'true', 'a number'), ('lr', 'yes', 'a number'), ('lr', '[0.1]', 'a number'),
                                               ('fusion_width', '64.5', 'a whole number'), ('fusion_width', 'true', 'a whole number'),
                                               ('fusion_width', '[64]', 'a whole number'), ('fusion_width', '1e3', 'a whole number')])
def test_a_parameter_with_a_none_default_is_checked_against_its_declared_type(name, text, expects):
    "lr and fusion_width default to None, so any value passed: -p lr true trained at lr 1.0, -p fusion_width 64.5 failed in a "
    "convolution. CamParConfig's annotations (lr: float | None, fusion_width: int | None) are now checked before a kernel "
    "starts, naming the parameter and the type; 1e3 (1000.0) is not a whole number here, as -p epochs 1e3 is not."
    from har_kit.runs import cli_params
    from har_kit.campar_train import CamParConfig
    with pytest.raises(KitError, match=f"41_campar: CamParConfig '{name}': expects {expects} or None, got"):
        check_parameters('campar', cli_params('campar', [(name, text)]))
    with pytest.raises(KitError, match="CamParConfig 'lr': expects a number or None, got true/false True"): CamParConfig(lr=True, optimizer='adam')
    assert check_parameters('campar', cli_params('campar', [('lr', '0.05'), ('fusion_width', '64')])) == {'lr': 0.05, 'fusion_width': 64}
    assert check_parameters('campar', cli_params('campar', [('lr', 'None'), ('fusion_width', 'null')])) == {'lr': None, 'fusion_width': None}


def test_a_config_built_in_python_checks_every_fields_type():
    "Plain fields are checked too: ignore_unspecified='False' (truthy) ignored the unspecified labels, batch_size=True "
    "reached torch's sampler, mask_weight='1' failed as a bare TypeError; each is now a KitError naming the field."
    from har_kit.campar_train import CamParConfig
    from har_kit.dahar_train import DaHarConfig
    for make, msg in ((lambda: CamParConfig(ignore_unspecified='False'), "CamParConfig 'ignore_unspecified': expects true/false, got a string"),
                      (lambda: CamParConfig(batch_size=True), "CamParConfig 'batch_size': expects a whole number, got true/false"),
                      (lambda: CamParConfig(seed=1.5), "CamParConfig 'seed': expects a whole number, got a number 1.5"),
                      (lambda: CamParConfig(logit_bn=1), "CamParConfig 'logit_bn': expects true/false, got a whole number 1"),
                      (lambda: DaHarConfig(mask_weight='1'), "DaHarConfig 'mask_weight': expects a number, got a string '1' (a number is"),
                      (lambda: DaHarConfig(epochs=None), "DaHarConfig 'epochs': expects a whole number, got None")):
        with pytest.raises(KitError, match=re.escape(msg)): make()
    assert CamParConfig(ignore_unspecified=False, batch_size=8, lr=1).lr == 1   # a whole number is a number


def _with_model(outp, parameters):  # a `_fake` behaviour: the run trains variant 'a' and records where its model went
    out = Path(parameters['out_dir']); (out/'a').mkdir(exist_ok=True); (out/'a'/'model.pt').write_bytes(b'w')
    (out/'metrics.json').write_text(json.dumps({'a': {'model_file': 'a/model.pt'}}))


def test_a_done_run_that_lost_a_model_file_or_its_metrics_resumes_and_says_so(tmp_path, monkeypatch, capsys):
    "A run marked done whose <variant>/model.pt or metrics.json was deleted is no result: `har-kit run` resumes it without "
    "--force and says so (not 'skipped'); a run that reads it is refused, naming what is missing, before anything is created."
    calls = _fake(monkeypatch, _with_model)
    nb, out = _nb(tmp_path/'n.ipynb'), tmp_path/'run'
    assert cli([str(nb), '--out', str(out), '--quiet']) == 0 and cli([str(nb), '--out', str(out), '--quiet']) == 0
    assert len(calls) == 1 and 'skipped: already done' in capsys.readouterr().out
    (out/'a'/'model.pt').unlink()
    st = run_status(out)
    assert st['state'] == 'damaged' and st['missing'] == ['a/model.pt missing'] and 'rerun it' in st['error'], st
    reader = _nb(tmp_path/'r.ipynb', params_src='seed = 0\ncampar_run = None\nout_dir = None')
    with pytest.raises(KitError, match=f'campar_run={out} is marked done but a/model.pt missing: rerun that run first'):
        run_notebook(reader, {'campar_run': str(out)}, tmp_path/'reader', progress=False)
    assert not (tmp_path/'reader').exists()
    assert cli([str(nb), '--out', str(out), '--quiet']) == 0 and len(calls) == 2
    cap = capsys.readouterr()
    assert f'{out} was marked done but a/model.pt missing: resuming it' in cap.err and f'har-kit run: done -> {out}' in cap.out, cap
    assert run_status(out)['state'] == 'done' and (out/'a'/'model.pt').exists() and not list(tmp_path.glob('run.old-*'))
    (out/'metrics.json').unlink()   # resumed in place, as an unfinished run: its session is kept on record
    assert run_notebook(nb, {}, out, progress=False) == out and len(calls) == 3 and run_status(out)['state'] == 'done'
    assert len(load_json(out/'env.json')['sessions']) == 2


def test_a_path_reads_the_same_from_a_parameters_file_as_from_p(tmp_path):
    "-f and -p read a path parameter alike: as typed (ends stripped), never as a number (a folder may be named 2024)."
    from har_kit.runs import cli_params, read_params_file
    f = tmp_path/'p.yaml'
    f.write_text('data_root: "2024"\nweights: " IMAGENET1K_V1 "\n')
    want = {'data_root': '2024', 'weights': 'IMAGENET1K_V1'}
    assert read_params_file(f, 'campar') == want
    assert cli_params('campar', [('data_root', '2024'), ('weights', ' IMAGENET1K_V1 ')]) == want


@pytest.mark.parametrize('params,message', [
    ({'bench': True, 'bench_arch': 'resnet999'}, 'resnet999'),
    ({'profile': 'huge'}, "profile='huge': the synthetic sets come in tiny, quick"),
])
def test_dahar_values_that_failed_inside_the_kernel_are_refused_before_it(params, message):
    "A benchmark backbone or a synthetic profile failed after (or during) training; now before it."
    with pytest.raises(KitError, match=re.escape(message)): check_parameters('dahar', params)


def test_trainval_means_train_and_val_for_every_method():
    "[15]'s 'trainval' was CAM-PAR's alone (Da-HAR failed in its kernel: no split 'trainval'); the data layer reads it now."
    from har_kit.data import load_dataset
    assert check_parameters('dahar', {'train_splits': ['trainval']}) == {'train_splits': ['trainval']}
    wider, rap = load_dataset('wider'), load_dataset('rap')
    assert wider.split('trainval') == wider.split('train', 'val') and rap.split(['trainval']) == rap.split('train')
    with pytest.raises(KitError, match="includes 'val', the split this run scores"):
        check_parameters('dahar', {'train_splits': ['trainval'], 'eval_split': 'val'})


def test_a_mask_rcnn_weights_name_torchvision_lacks_is_refused_before_the_kernel():
    "-p maskrcnn_weights bogus raised a bare KeyError in the masks notebook's Mask R-CNN cell."
    with pytest.raises(KitError, match="maskrcnn_weights: Mask R-CNN weights='bogus': maskrcnn_resnet50_fpn has 'COCO_V1', 'DEFAULT'"):
        check_parameters('masks', {'maskrcnn_weights': 'bogus'})
    assert check_parameters('masks', {'maskrcnn_weights': 'DEFAULT'}) == {'maskrcnn_weights': 'DEFAULT'}


@pytest.mark.parametrize('section', ['campar', 'cfar'])
def test_a_synthetic_profile_that_does_not_exist_is_refused_before_the_kernel(section):
    with pytest.raises(KitError, match=re.escape("profile='huge': the synthetic sets come in tiny, quick, large")):
        check_parameters(section, {'profile': 'huge'})


def test_a_campar_run_of_other_data_is_refused_before_the_cfar_kernel(tmp_path):
    "check_phase1_run ran in the CFAR kernel only; the run config now calls it (and the model-file check) when it is built."
    run = tmp_path/'campar'; run.mkdir()
    (run/'metrics.json').write_text(json.dumps({'_meta': {'dataset': 'pa100k', 'data_root': None, 'profile': 'tiny'}}))
    with pytest.raises(KitError, match="51_cfar: campar_run=.* trained on other data than this run scores .*dataset 'pa100k' there, 'rap' here"):
        check_parameters('cfar', {'campar_run': str(run), 'dataset': 'rap'})


def test_the_renderer_source_on_a_real_dataset_is_refused_before_the_kernel(tmp_path):
    "source 'renderer' (the default) with a real data_root failed in the masks kernel: no sample has a ground-truth mask."
    with pytest.raises(KitError, match="source='renderer' reads the synthetic generator's ground truth, but data_root="):
        check_parameters('masks', {'dataset': 'rap', 'data_root': str(tmp_path)})


@pytest.mark.parametrize('section,params', [('dahar', {'dataset': 'rap', 'eval_split': 'val'}),
                                            ('campar', {'dataset': 'rap', 'train_splits': ['val']}),
                                            ('dahar', {'dataset': 'wider', 'train_splits': ['train', 'valid']})])
def test_a_split_the_dataset_kind_does_not_have_is_refused_before_the_kernel(section, params):
    "RAP has no val split: eval_split val or train_splits [val] failed in the kernel ('no split'); a misspelt split too."
    with pytest.raises(KitError, match=r"'(eval_split|train_splits)': (rap|wider) has the splits train, (val, )?test, not '(val|valid)'"):
        check_parameters(section, params)
    assert check_parameters('campar', {'dataset': 'rap', 'train_splits': ['trainval']})   # CAM-PAR's alias: resolved there


def test_val_fraction_with_selection_on_test_is_refused():
    "[15] selects on test: a val_fraction was recorded and never used."
    with pytest.raises(KitError, match=re.escape("val_fraction=0.1 with selection='[15]'")):
        check_parameters('campar', {'selection': '[15]', 'val_fraction': 0.1})


@pytest.mark.parametrize('params, message', [
    ({'dataset': 'pa100k', 'train_splits': ['train'], 'val_fraction': 0.2}, "the dataset's own 'val' split is held out as it is"),
    ({'dataset': 'wider', 'train_splits': ['trainval'], 'plateau_on': 'eval_loss'}, "plateau_on='eval_loss' needs an evaluation split"),
    ({'dataset': 'rap', 'train_splits': ['train'], 'selection_study': True}, 'selection_study=True needs a validation split')])
def test_a_selection_without_its_evaluation_split_is_refused_before_the_kernel(params, message):
    "The dataset kind names its splits, so these no longer wait for the data to load inside the kernel."
    with pytest.raises(KitError, match=re.escape(message)): check_parameters('campar', params)
    assert check_parameters('campar', {**params, 'train_splits': ['train'], 'val_fraction': 0.1, 'dataset': 'rap'})


@pytest.mark.parametrize('nb, params, match', [
    ('dahar', {'eval_split': 'trainval'}, "eval_split='trainval' would score train \\+ val"),   # scored the images it trained on
    ('dahar', {'dataset': 'rap', 'train_splits': ['train'], 'eval_split': 'trainval'}, "eval_split='trainval'"),
    ('dahar', {'eval_split': ''}, "'eval_split': must not be empty"),   # failed in the kernel, leaving a failed run folder
    ('cfar', {'train_splits': 2}, "'train_splits'=2: pass a list of split names"),   # a raw TypeError traceback
    ('cfar', {'train_splits': True}, "'train_splits'=True: pass a list"),
    ('cfar', {'train_splits': ''}, "'train_splits'='': pass a list"),   # failed in the kernel
    ('masks', {'profile': 'huge'}, "profile='huge': the synthetic sets come in"),   # failed in the kernel (cell 35)
])
def test_split_and_profile_names_are_checked_before_the_kernel(nb, params, match):
    "A reviewer's fuzzing: each of these passed every check and failed inside the kernel (or crashed the command); now refused with the parameter named."
    with pytest.raises(KitError, match=match): check_parameters(nb, params)


def test_an_empty_path_is_refused_not_read_as_the_default():
    "`-p data_root \"$RAP_ROOT\"` with the variable unset trained on the synthetic stand-in (and `-p weights \"\"` from scratch) without a word; null still means the default."
    from har_kit.run_params import parse_params
    from har_kit.runs import coerce_value
    for name in ('data_root', 'weights'):
        with pytest.raises(KitError, match=rf"{name}='': empty \(an unset shell variable\?\)"): parse_params('dahar', [(name, '')])
        with pytest.raises(KitError, match=rf"{name}='  ': empty"): coerce_value('  ', None, name)   # a -f file's value
    assert parse_params('dahar', [('data_root', 'null'), ('weights', 'None')]) == {'data_root': None, 'weights': None}


def test_dahar_trains_on_trainval_as_the_checks_read_it(tmp_path):
    "train_splits=['trainval'] passed the checks (train + val) and then failed in the loaders, which compared the raw name."
    from har_kit.data import read_wider, tiny_fixture
    from har_kit.dahar_train import DaHarConfig, dahar_loaders
    data = read_wider(tiny_fixture('wider', tmp_path/'w'))
    loaders = dahar_loaders(data, DaHarConfig(train_splits=['trainval'], batch_size=2))
    assert len(loaders['train'].dataset) == len(data.split('train', 'val')) and 'val' not in loaders   # val is trained on: not held out


def test_a_csv_set_of_trainval_and_test_says_which_train_splits_to_pass(tmp_path):
    "A csv set split trainval / test, run with the default train_splits: the refusal named the splits there but not the parameter value to pass."
    from PIL import Image
    from har_kit.campar_train import CamParConfig
    from har_kit.formats import write_csv_annotation
    (tmp_path/'images').mkdir()
    for i in range(6): Image.new('RGB', (8, 16)).save(tmp_path/'images'/f'{i}.jpg')
    write_csv_annotation(tmp_path/'labels.csv', ['a', 'b'], [(f'{i}.jpg', 'trainval' if i < 4 else 'test', (1, 0)) for i in range(6)])
    with pytest.raises(KitError, match="has the splits trainval, test, not 'train'.*; pass -p train_splits trainval$"):
        CamParConfig(dataset='csv', data_root=str(tmp_path))
    assert CamParConfig(dataset='csv', data_root=str(tmp_path), train_splits=['trainval']).train_splits == ['trainval']
