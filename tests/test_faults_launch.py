"""Fault catalogue of the launcher and status side (issue 30): each test tries one fault and states the clear outcome."""
import json, os
from pathlib import Path

import pytest

from har_kit.core import KitError, load_json
from har_kit.launch import _read_launcher_config, check_launcher_options, job_queued, read_status_runs, status_cli


@pytest.mark.parametrize('content, message', [
    ('7', 'expected key: value lines, got int'),
    ('[1, 2]', 'expected key: value lines, got list'),
    ('time: [1', 'not YAML/JSON'),
    (b'\xff\xfe\x00binary', 'not YAML/JSON'),
    ('time: abc', "time='abc': expected whole minutes"),
    ('mem_gb: [1]', 'mem_gb=\\[1\\]: expected a positive number'),
    ('cluster: bogus', "cluster='bogus': expected 'slurm' or 'local'"),
    ('gpus: -1', 'gpus=-1: expected a whole number of GPUs'),
    ('partition: 1.0e+26', 'partition=1e\\+26: expected a name'),
    ('colour: red', "unknown key\\(s\\) \\['colour'\\]"),
])
def test_launcher_config_faults_are_one_line(tmp_path, content, message):
    p = tmp_path/'launcher.yaml'
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(KitError, match=message): _read_launcher_config(p)


def test_launcher_config_folder_and_slurm_without_sbatch(tmp_path, monkeypatch):
    with pytest.raises(KitError, match='a folder, not a file'): _read_launcher_config(tmp_path)
    monkeypatch.setenv('PATH', str(tmp_path))
    with pytest.raises(KitError, match="cluster='slurm' but sbatch is not on PATH"): check_launcher_options({'cluster': 'slurm'}, 'x')
    assert check_launcher_options({'cluster': 'local', 'time': 60, 'gpus': 0, 'mem_gb': 2.5}, 'x')['time'] == 60


@pytest.mark.parametrize('content', ['[1, 2]', '{"runs": 3}', '{"runs": [{"name": "x"}]}', b'\x00\xff', 'not json',
                                     '{"runs": [{"name": "a", "out_dir": null, "deps": []}]}',   # the keys, of other types
                                     '{"runs": [{"name": "a", "out_dir": "/x", "deps": null}]}',
                                     '{"runs": [{"name": "a", "out_dir": "/x", "deps": [], "seconds": NaN}]}',
                                     '{"runs": [{"name": ["a"], "out_dir": "/x", "deps": []}]}',
                                     '{"runs": [{"name": "a", "out_dir": "/x", "deps": [], "state": "failed", "error": 5}]}',
                                     '{"runs": [{"name": "a", "out_dir": "/x", "deps": [], "seconds": {"total": "1"}}]}'])
def test_status_json_of_the_wrong_shape_is_one_line(tmp_path, capsys, content):
    p = tmp_path/'quick'/'status.json'; p.parent.mkdir()
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(KitError, match='status.json'): read_status_runs(p)
    assert status_cli(['--out', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('har-kit status:') and 'Traceback' not in err and len(err.strip().splitlines()) == 1


def test_status_json_that_is_a_folder(tmp_path, capsys):
    (tmp_path/'quick'/'status.json').mkdir(parents=True)
    assert status_cli(['--out', str(tmp_path)]) == 2
    assert 'a folder, not a status written by har-kit reproduce' in capsys.readouterr().err


def test_a_reused_pid_is_not_a_queued_job():
    import psutil
    me = psutil.Process(os.getpid()).create_time()
    assert job_queued({'cluster': 'local', 'job_id': str(os.getpid()), 'started': me})
    assert not job_queued({'cluster': 'local', 'job_id': str(os.getpid()), 'started': me - 1000})   # another process had it
    assert not job_queued({'cluster': 'local', 'job_id': str(os.getpid()), 'started': -1.0})        # ended before recorded


# --- status only reads; reproduce refuses what cannot work before anything starts -------------------------------------

def test_status_creates_nothing(tmp_path, capsys):
    from har_kit.launch import status_path
    assert status_cli(['--profile', 'quick', '--out', str(tmp_path/'nowhere')]) == 2
    assert 'nothing at' in capsys.readouterr().err and not (tmp_path/'nowhere').exists()
    (tmp_path/'a-file').write_text('x')
    assert status_cli(['--profile', 'quick', '--out', str(tmp_path/'a-file')]) == 2
    err = capsys.readouterr().err
    assert 'a-file is a file, not a folder' in err and 'Traceback' not in err and (tmp_path/'a-file').read_text() == 'x'
    (tmp_path/'o'/'quick').mkdir(parents=True)   # a profile folder without reproduce's status.json: shown, nothing written
    assert status_cli(['--profile', 'quick', '--out', str(tmp_path/'o')]) == 0
    assert 'missing' in capsys.readouterr().out and not status_path(tmp_path/'o', 'quick').exists()
    assert list((tmp_path/'o').rglob('*')) == [tmp_path/'o'/'quick']


@pytest.mark.parametrize('args, message', [
    (['--jobs', '-1'], '--jobs -1: expected the number of runs executed at once, at least 1'),
    (['--jobs', '0'], '--jobs 0: expected'),
    (['--seeds', '0'], 'seeds=0 \\(--seeds\\): expected a whole number of seeds per run, at least 1'),
    (['--seeds', '-3'], 'seeds=-3'),
    (['--device', 'tpu'], "--device: 'tpu' is not a device name"),
    (['--device', 'cuda:0,cuda:0'], '--device cuda:0,cuda:0: cuda:0 named twice; name each device once'),
    (['--device', 'cpu,'], '--device cpu,: an empty name'),
    (['--data-root', 'wider=a', '--data-root', 'wider=b'], '--data-root wider is given twice'),
    (['--launcher-config', 'no-such.yaml'], '--launcher-config no-such.yaml: no such file'),
    (['--json'], '--json lists the plan without running it: add --dry-run'),   # it started the whole plan
])
def test_reproduce_refuses_options_that_cannot_work_before_anything(tmp_path, capsys, monkeypatch, args, message):
    import re
    from har_kit.launch import cli
    monkeypatch.chdir(tmp_path)
    (tmp_path/'o'/'quick'/'dahar').mkdir(parents=True)   # --jobs -1 was refused only once a run was left to execute
    assert cli(['dahar_t1', '--profile', 'quick', '--out', str(tmp_path/'o'), *args]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and 'Traceback' not in err, err
    assert [p.name for p in (tmp_path/'o').rglob('*')] == ['quick', 'dahar']   # nothing created, no status.json


def test_a_home_relative_out_is_the_same_root_for_reproduce_run_and_status(tmp_path, capsys, monkeypatch):
    "`--out=~/x` (no shell expands a ~ after '='): reproduce and run made a folder named '~' where status looked in $HOME."
    import json
    from har_kit.launch import cli
    from har_kit.runs import run_dir_for
    monkeypatch.setenv('HOME', str(tmp_path/'home')); monkeypatch.chdir(tmp_path)
    assert cli(['dahar_t1', '--profile', 'quick', '--out=~/x', '--dry-run', '--json']) == 0
    dirs = [json.loads(l)['out_dir'] for l in capsys.readouterr().out.splitlines() if l.startswith('{')]
    assert dirs and all(d.startswith(str(tmp_path/'home'/'x'/'quick')) for d in dirs), dirs[:2]
    assert run_dir_for('matfile', {}, '~/r') == tmp_path/'home'/'r' and not (tmp_path/'~').exists()


def test_status_of_a_copied_outputs_root_judges_the_runs_there(tmp_path, capsys):
    "A status.json copied with its outputs root names the runs where reproduce made them: status read those, said they "
    "were done, and wrote them into the copy; it now plans afresh under the root it was given, and says why."
    import shutil
    from har_kit.launch import read_status_runs, save_status, status_path
    from har_kit.reproduce import plan
    a = tmp_path/'a'
    save_status(plan(['dahar_t1'], 'quick', root=a), a, 'quick')
    b = shutil.copytree(a, tmp_path/'b')
    status_cli(['--profile', 'quick', '--out', str(b)])
    assert 'lists runs outside' in capsys.readouterr().err
    runs = read_status_runs(status_path(b, 'quick'))
    assert runs and all(r['out_dir'].startswith(str(b/'quick')) for r in runs), runs[0]['out_dir']


def test_config_into_a_folder_asks_for_a_file_name(tmp_path, capsys):
    "It said 'exists: pass --force', and with --force it died replacing the folder (IsADirectoryError)."
    from har_kit.launch import config_cli
    for force in ([], ['--force']):
        assert config_cli(['dahar', '--out', str(tmp_path), *force]) == 2
        err = capsys.readouterr().err
        assert 'is a folder: name the file to write' in err and 'Traceback' not in err, err
    assert config_cli(['dahar', '--out', f'{tmp_path}/new-folder/']) == 2   # a folder not made yet: it wrote a file named new-folder
    assert 'names a folder (it ends in /): name the file to write' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_reproduce_refuses_an_out_that_is_a_file(tmp_path, capsys):
    from har_kit.launch import cli
    (tmp_path/'some_file.txt').write_text('x')
    for out in ('some_file.txt', 'some_file.txt/deeper'):
        assert cli(['dahar_t1', '--profile', 'quick', '--out', str(tmp_path/out)]) == 2
        err = capsys.readouterr().err
        assert 'some_file.txt is a file, not a folder' in err and 'Traceback' not in err, err
    assert (tmp_path/'some_file.txt').read_text() == 'x'


def test_devices_are_checked_here_only_where_the_runs_execute(monkeypatch):
    from har_kit.runs import check_devices
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert check_devices(['cuda:0', 'cuda:1', 'cpu', 'cuda:0'], '--device') == ['cuda:0', 'cuda:1', 'cpu']
    with pytest.raises(KitError, match="device='cuda:2' but this machine has 2 CUDA device"): check_devices(['cuda:2'], '--device')
    assert check_devices(['cuda:2'], '--device', local=False) == ['cuda:2']   # a scheduler's machines: the name alone
    with pytest.raises(KitError, match="'gpu' is not a device name"): check_devices(['gpu'], '--device', local=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(KitError, match="profile 'paper'.*CUDA is not available"): check_devices(['cuda'], "profile 'paper'")


def test_local_launcher_names_the_scheduler_options_it_ignores(tmp_path, capsys):
    from har_kit.launch import cli
    cfg = tmp_path/'l.yaml'; cfg.write_text('time: 60\n')
    assert cli(['dahar_t1', '--profile', 'quick', '--dry-run', '--partition', 'gpu', '--launcher-config', str(cfg)]) == 0
    assert f'warning: --launcher local ignores --partition, --launcher-config {cfg}' in capsys.readouterr().err
    assert cli(['dahar_t1', '--profile', 'quick', '--dry-run']) == 0 and 'warning' not in capsys.readouterr().err


@pytest.mark.parametrize('args, message', [
    (['--jobs', '1'], '--launcher submitit does not read --jobs 1 \\(how many jobs run at once is the scheduler'),
    (['--device', 'cpu,cuda:3'], '--launcher submitit does not read --device cpu,cuda:3 \\(several devices: a job runs on the GPUs'),
    (['--json'], '--launcher submitit does not read --json'),
    (['--jobs', '2', '--device', 'cuda:0,cuda:1'], 'does not read --jobs 2 .*; --device cuda:0,cuda:1 .*leave them out'),
])
@pytest.mark.parametrize('dry', [True, False])
def test_submitit_refuses_the_local_launchers_options_it_would_ignore(tmp_path, capsys, monkeypatch, args, message, dry):
    "--jobs, several --device names and --json mean nothing to submitit: refused before anything is planned or submitted."
    import re
    import har_kit.launch as L
    def submitted(*a, **k): raise AssertionError('a job was submitted')
    monkeypatch.setattr(L, 'make_executor', submitted)
    assert L.cli(['dahar_t1', '--profile', 'quick', '--launcher', 'submitit', '--cluster', 'local', '--out', str(tmp_path/'o'),
                  *(['--dry-run'] if dry else []), *args]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and 'nothing was submitted' in err and 'Traceback' not in err, err
    assert not (tmp_path/'o').exists()


def test_a_bad_sample_root_from_the_environment_names_the_variable(tmp_path, capsys, monkeypatch):
    from har_kit.launch import cli
    monkeypatch.setenv('HAR_KIT_PA100K_SAMPLE', str(tmp_path/'nonexist'))
    assert cli(['--profile', 'sample', '--out', str(tmp_path/'o')]) == 2
    err = capsys.readouterr().err
    assert f'$HAR_KIT_PA100K_SAMPLE={tmp_path/"nonexist"}' in err and f'--data-root pa100k={tmp_path}' not in err, err
    assert cli(['--profile', 'sample', '--out', str(tmp_path/'o'), '--data-root', f'pa100k={tmp_path/"given"}']) == 2
    assert f'--data-root pa100k={tmp_path/"given"}:' in capsys.readouterr().err


def test_status_calls_stale_what_reproduce_refuses(tmp_path):
    "A run finished by an older kit (or under a default changed since) is 'stale' for status as for reproduce, not 'done'."
    from har_kit.core import save_json
    from har_kit.launch import make_status
    from har_kit.reproduce import plan, stale_params
    r = plan(['campar_t2'], 'quick', root=tmp_path)[0]
    r.out_dir.mkdir(parents=True)
    save_json(r.params, r.out_dir/'params.json'); save_json({'baseline': {'schema': 2, 'mA': 0.5}}, r.out_dir/'metrics.json')
    (r.out_dir/'done').write_text('')
    assert stale_params(r) == ['metrics schema']
    rec = next(x for x in make_status([r], 'quick')['runs'])
    assert rec['state'] == 'stale' and 'metrics schema' in rec['error']


def test_a_table_whose_run_failed_or_is_stale_is_not_rendered(tmp_path, monkeypatch, capsys):
    "reproduce renders the tables all of whose runs finished as planned, and names the others: a stale seed never enters a mean."
    import types
    from har_kit import launch
    from har_kit.reproduce import plan
    runs = plan(['dahar_t1', 'campar_t2'], 'quick', 1, None, tmp_path)
    bad = next(r for r in runs if any(t == 'dahar_t1' for t, _ in r.rows) and all(t != 'campar_t2' for t, _ in r.rows))
    monkeypatch.setattr(launch, 'execute', lambda runs, *a, **k: {
        'done': [], 'skipped': [r.name for r in runs if r is not bad], 'interrupted': [], 'busy': [],
        'failed': {bad.name: 'finished with other parameters (default mix): pass --force'}})
    rendered = []
    monkeypatch.setattr(launch, 'render_tables', lambda profile, root, tables: rendered.append(list(tables)) or tmp_path/'tables'/'run')
    a = types.SimpleNamespace(profile='quick', jobs=1, force=False, tables=None, out=str(tmp_path), smoke=False)
    assert launch._run_here(a, runs, tmp_path, None) == 1
    assert rendered == [['campar_t2']]
    err = capsys.readouterr().err
    assert 'not rendered: dahar_t1' in err and f'har-kit run tables -p profile quick -p tables dahar_t1 -p runs_root {tmp_path}' in err


def test_a_table_none_of_whose_seeds_finished_gets_no_render_hint(tmp_path, monkeypatch, capsys):
    "Every run failed: the summary no longer offers to render the tables 'from the seeds that finished' (there are none)."
    import types
    from har_kit import launch
    from har_kit.reproduce import plan
    runs = plan(['dahar_t1'], 'quick', 1, None, tmp_path)
    monkeypatch.setattr(launch, 'execute', lambda runs, *a, **k: {
        'done': [], 'skipped': [], 'interrupted': [], 'busy': [], 'failed': {r.name: 'cell 3 raised KitError: x' for r in runs}})
    monkeypatch.setattr(launch, 'render_tables', lambda profile, root, tables: pytest.fail('nothing to render'))
    a = types.SimpleNamespace(profile='quick', jobs=1, force=False, tables=None, out=str(tmp_path), smoke=False)
    assert launch._run_here(a, runs, tmp_path, None) == 1
    err = capsys.readouterr().err
    assert 'not rendered: dahar_t1' in err and 'no seed of theirs finished' in err and 'har-kit run tables' not in err, err


def test_param_diff_names_a_parameter_the_run_did_not_record():
    "A parameter the plan adds (absent from params.json) is a difference, like one the plan dropped; the device never is."
    from har_kit.reproduce import param_diff
    assert param_diff({'lr': .1}, {'lr': .1, 'logit_bn': True}) == ['logit_bn']
    assert param_diff({'lr': .1, 'logit_bn': True}, {'lr': .1}) == ['logit_bn']
    assert param_diff({'lr': .1, 'device': 'cpu'}, {'lr': .1, 'device': 'cuda'}) == []
    assert param_diff({'splits': ['train']}, {'splits': ('train',)}) == []   # compared as params.json stores them


def test_stale_params_names_a_moved_default_and_other_data(tmp_path):
    "A done run is stale for a default it did not set that changed since (env.json's record), and for other data; not otherwise."
    from har_kit.core import save_json
    from har_kit.reproduce import plan, stale_params
    from har_kit.run_params import parameter_defaults
    r = plan(['campar_t2'], 'quick', root=tmp_path)[0]
    r.out_dir.mkdir(parents=True)
    save_json(r.params, r.out_dir/'params.json'); (r.out_dir/'done').write_text('')
    now = parameter_defaults(r.spec.notebook)
    free = next(k for k in now if k not in r.params and k not in ('device', 'out_dir') and isinstance(now[k], float))
    save_json({'defaults': now, 'data': r.data}, r.out_dir/'env.json')
    assert stale_params(r) == []
    save_json({'defaults': {**now, free: now[free] + 1}, 'data': r.data}, r.out_dir/'env.json')
    assert stale_params(r) == [f'default {free}']
    save_json({'defaults': now, 'data': {'synthetic': 'another set'}}, r.out_dir/'env.json')
    assert r.data and stale_params(r) == ['data']
    older = {k: v for k, v in now.items() if k != 'specific_logit'}   # a run from before the parameter existed: it ran Eq. 12
    save_json({'defaults': older, 'data': r.data}, r.out_dir/'env.json')
    assert 'specific_logit' in now and stale_params(r) == []


def test_stale_params_names_masks_made_again_for_a_real_dataset(tmp_path):
    "A done Da-HAR run of the paper profile is stale once the masks its dataset's readers attach were made again (e.g. Mask R-CNN's "
    "replacing the box masks), so reproduce reruns it instead of returning numbers of the old masks."
    from har_kit.core import save_json
    from har_kit.data import tiny_fixture
    from har_kit.reproduce import plan, stale_params
    from har_kit.run_params import parameter_defaults
    from har_kit.runs import mask_input
    root = tiny_fixture('rap', tmp_path/'RAP', n=8, masks=False)
    r = next(r for r in plan(['dahar_t2'], 'paper', root=tmp_path/'o', data_roots={'rap': str(root)}) if r.spec.notebook == 'dahar')
    (Path(root)/'masks').mkdir(); (Path(root)/'masks'/'a_0.png').write_bytes(b'a box mask')
    r.out_dir.mkdir(parents=True)
    save_json(r.params, r.out_dir/'params.json'); (r.out_dir/'done').write_text('')
    save_json({'defaults': parameter_defaults('dahar'), 'data': {**r.data, **mask_input('dahar', r.params)}},
              r.out_dir/'env.json')
    assert stale_params(r) == []
    (Path(root)/'masks'/'a_0.png').write_bytes(b'a Mask R-CNN mask')
    assert stale_params(r) == ['masks']


def test_a_dry_run_over_several_devices_says_the_runs_take_them_in_turn(tmp_path, capsys):
    from har_kit.launch import cli
    assert cli(['dahar_t1', '--profile', 'quick', '--out', str(tmp_path/'o'), '--dry-run', '--device', 'cpu,auto']) == 0
    assert '# --device cpu,auto: each run takes one of these in turn when it starts' in capsys.readouterr().out


def test_missing_roots_are_asked_for_in_the_options_own_syntax(tmp_path, capsys):
    "The refusal spells --data-root once per dataset, as argparse takes it (a newcomer copied 'pa100k=PATH rap=PATH' after one flag)."
    from har_kit.launch import cli
    assert cli(['--profile', 'paper', '--out', str(tmp_path/'o')]) == 2
    err = capsys.readouterr().err
    assert 'pass --data-root pa100k=PATH --data-root rap=PATH --data-root wider=PATH' in err, err


def test_a_status_it_wrote_is_read_back_whatever_failed_json_held(tmp_path):
    "run_status hands on failed.json's error as text, so the status.json it feeds passes status's own type check next time."
    import json
    from har_kit.runs import run_status
    d = tmp_path/'run'; d.mkdir()
    (d/'failed.json').write_text(json.dumps({'error': {'type': 'ValueError', 'message': 'x'}, 'cell': 3}))
    st = run_status(d)
    assert st['state'] == 'failed' and isinstance(st['error'], str) and 'ValueError' in st['error']


# --- scheduler jobs: refusals, the tables job, jobs that end before their run, reruns of done runs ----------------------

def _fake_slurm(folder, accepted):  # sbatch that takes `accepted` jobs, then refuses as SLURM does; sacct: every job pending
    folder.mkdir()
    (folder/'sbatch').write_text(f'#!/bin/sh\nn=$(cat {folder}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {folder}/n\n'
                                 f'if [ $n -le {accepted} ]; then echo "Submitted batch job $((1000+n))"; exit 0; fi\n'
                                 'echo "sbatch: error: invalid partition specified: nosuch" >&2\n'
                                 'echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2\nexit 1\n')
    (folder/'sacct').write_text('#!/bin/sh\necho "JobID|State|NodeList"\nfor i in 1001 1002 1003; do echo "$i|PENDING|None"; done\n')
    (folder/'srun').write_text('#!/bin/sh\nexit 0\n')
    for f in folder.iterdir(): f.chmod(0o755)
    return folder


@pytest.mark.parametrize('accepted', [0, 1])
def test_a_job_the_scheduler_refuses_is_one_line_and_what_went_in_is_kept(tmp_path, capsys, monkeypatch, accepted):
    "sbatch refusing a job (an unknown partition, a submit limit) escaped as submitit's FailedJobError, after some jobs "
    "went in unrecorded in status.json; now one line quoting sbatch, the options and the jobs submitted, exit 2."
    from har_kit.launch import cli, job_file, status_path
    from har_kit.reproduce import plan
    monkeypatch.setenv('PATH', f'{_fake_slurm(tmp_path/"bin", accepted)}:{os.environ["PATH"]}')
    out = tmp_path/'o'
    assert cli(['campar_t1', '--launcher', 'submitit', '--partition', 'nosuch', '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith('har-kit reproduce: the scheduler (slurm) refused') and 'Traceback' not in err, err
    assert 'sbatch: error: invalid partition specified: nosuch / sbatch: error: Batch job submission failed' in err, err
    assert 'launcher options in use: --gpus 1 --partition nosuch' in err, err
    runs = plan(['campar_t1'], 'quick', root=out)
    assert [r.name for r in runs if job_file(r.out_dir).exists()] == [r.name for r in runs[:accepted]]
    assert (f'1 jobs were submitted before it and stay queued ({runs[0].name} [job 1001]' if accepted else 'nothing was submitted') in err
    st = load_json(status_path(out, 'quick'))
    assert st['counts']['queued'] == accepted and st['counts']['missing'] == len(runs) - accepted


class _FakeExecutor:   # submitit's executor as `submit` uses it: every job is this process, so it reads as queued (alive)
    cluster, folder = 'local', '/nowhere'
    def __init__(self): self.sent = []
    def update_parameters(self, **kw): pass
    def submit(self, fn):
        import types
        self.sent.append(fn); return types.SimpleNamespace(job_id=str(os.getpid()))


def _two(root):  # a CAM-PAR run and the CFAR run that needs it
    from har_kit.reproduce import plan
    return [r for r in plan(['campar_t1'], 'quick', root=root) if r.spec.notebook in ('campar', 'cfar')
            and r.params['dataset'] == 'rap' and r.seed == 0]


def test_submitting_again_while_the_jobs_are_queued_sends_no_second_tables_job(tmp_path):
    "The runs read as queued, but a second tables job was submitted each time; the tables job is recorded now."
    from har_kit.launch import RenderJob, job_file, submit
    runs, ex = _two(tmp_path), _FakeExecutor()
    assert [a['action'] for a in submit(runs, ex, 'quick', tmp_path)] == ['submit'] * 3
    again = submit(runs, ex, 'quick', tmp_path)
    assert [a['action'] for a in again] == ['queued'] * 3 and again[2]['name'] == 'quick/tables', again
    assert sum(isinstance(f, RenderJob) for f in ex.sent) == 1 and load_json(job_file(tmp_path/'quick'/'tables'))['job_id'] == str(os.getpid())


def test_a_job_that_ended_before_its_run_started_is_interrupted_not_missing(tmp_path):
    "A job cancelled while pending (here: waiting for the run it needs) left the run 'missing', like one never submitted."
    from har_kit.core import save_json
    from har_kit.launch import _process_started, job_file, make_status
    runs = _two(tmp_path)
    save_json({'job_id': str(os.getpid()), 'cluster': 'local', 'started': _process_started(os.getpid())}, job_file(runs[0].out_dir))
    save_json({'job_id': '4242', 'cluster': 'local', 'started': -1.0}, job_file(runs[1].out_dir))   # -1.0: its process ended
    st = make_status(runs, 'quick')
    assert [(r['state'], r['error']) for r in st['runs']] == [('queued', None), ('interrupted', 'job 4242 ended without starting (cancelled?)')]
    assert st['counts']['interrupted'] == 1 and st['counts']['missing'] == 0


def test_a_job_waits_for_the_rerun_of_a_done_run_not_the_old_one(tmp_path, monkeypatch):
    "--force on the local executor: the dependency's old `done` is there until its rerun's job moves it aside, and the job "
    "that needs it read the old run; a dependency whose job is queued or alive is waited for now."
    import types
    from har_kit import launch as L
    from har_kit.core import save_json
    d = tmp_path/'dep'; d.mkdir()
    (d/'metrics.json').write_text('{}'); (d/'done').write_text('')
    alive = {'job_id': str(os.getpid()), 'cluster': 'local', 'started': L._process_started(os.getpid())}
    save_json(alive, L.job_file(d))
    looks = []
    def sleep(s):   # the rerun's job ends between two looks
        looks.append(s); save_json({**alive, 'started': -1.0}, L.job_file(d))
    monkeypatch.setattr(L, 'time', types.SimpleNamespace(sleep=sleep))
    assert L.wait_for([d]) == {d: 'done'} and len(looks) == 1
    for need_done in (True, False):   # the tables job waits the same way
        looks.clear(); save_json(alive, L.job_file(d))
        assert L.wait_for([d], need_done=need_done) == {d: 'done'} and len(looks) == 1


@pytest.mark.parametrize('mem', [0.0005, 1 / 2048])
def test_memory_below_one_megabyte_is_refused(mem):
    "--mem-gb 0.0005 became SLURM's --mem=0MB: all of a node's memory."
    with pytest.raises(KitError, match=f'mem_gb={mem!r}: expected a positive number of GB, at least 1/1024 GB \\(1 MB'):
        check_launcher_options({'mem_gb': mem}, 'reproduce options')
    assert check_launcher_options({'mem_gb': 1 / 1024}, 'x') == {'mem_gb': 1 / 1024}


def test_a_job_the_scheduler_does_not_list_yet_is_not_called_cancelled(tmp_path, monkeypatch):
    "Just after sbatch (or when sacct fails) submitit says UNKNOWN: the run stays missing, with the job named, not 'cancelled?'."
    import submitit
    from har_kit.core import save_json
    from har_kit.launch import job_file, make_status
    runs = _two(tmp_path)
    monkeypatch.setattr(submitit.SlurmJob, 'state', property(lambda self: 'UNKNOWN'))
    for i, r in enumerate(runs): save_json({'job_id': f'90{i}', 'cluster': 'slurm', 'folder': str(tmp_path)}, job_file(r.out_dir))
    st = make_status(runs, 'quick')
    assert [r['state'] for r in st['runs']] == ['missing', 'missing'] and st['counts']['interrupted'] == 0
    assert st['runs'][0]['error'] == 'job 900 submitted; the scheduler does not say its state (yet): see squeue / sacct'
    monkeypatch.setattr(submitit.SlurmJob, 'state', property(lambda self: 'CANCELLED by 0'))
    assert [r['state'] for r in make_status(runs, 'quick')['runs']] == ['interrupted', 'interrupted']


def test_a_run_two_steps_after_a_failure_says_why_it_did_not_start(tmp_path):
    "A failed -> B and C cancelled by their dependencies: both say which run they needed, neither 'cancelled?'."
    from har_kit.core import save_json
    from har_kit.launch import job_file, make_status
    A, B, C = (tmp_path/'p'/n for n in 'ABC')
    A.mkdir(parents=True)
    (A/'failed.json').write_text(json.dumps({'error': {'type': 'ValueError', 'message': 'boom'}, 'cell': 3}))
    for d, jid in ((B, '1002'), (C, '1003')): save_json({'job_id': jid, 'cluster': 'local', 'started': -1.0}, job_file(d))
    recs = [dict(name='C', out_dir=str(C), deps=[str(B)]), dict(name='A', out_dir=str(A), deps=[]),   # any order
            dict(name='B', out_dir=str(B), deps=[str(A)])]
    st = make_status(recs, 'quick')
    assert {r['name']: (r['state'], r['error']) for r in st['runs'] if r['name'] != 'A'} == {
        'B': ('missing', f'not started: needs {A}, which failed'), 'C': ('missing', f'not started: needs {B}, which did not start')}


@pytest.mark.parametrize('job', [{'job_id': 'DEBUG_3', 'cluster': 'debug'}, {'job_id': '1', 'cluster': 'local'},
                                 {'job_id': '1', 'cluster': 'local', 'started': 0.0}])
def test_a_done_run_is_not_held_by_a_job_record_that_proves_nothing(tmp_path, job):
    "A done run's record of a debug job, or of a local pid without a start time (a kit before it was recorded; pid 1 runs "
    "forever): wait_for returns, it neither crashes nor waits for another process."
    from har_kit import launch as L
    from har_kit.core import save_json
    d = tmp_path/'dep'; d.mkdir()
    (d/'metrics.json').write_text('{}'); (d/'done').write_text('')
    save_json(job, L.job_file(d))
    assert L.wait_for([d]) == {d: 'done'}


def test_a_submission_stamp_is_read_with_its_offset_and_an_older_one_as_local_time():
    "In the hour a clock goes back, a local stamp without offset read a job sent 5 s ago as an hour old (then 'unknown', sent again)."
    import time
    from har_kit.launch import _submitted_at
    first, second = _submitted_at('2026-11-01T01:30:00-0400'), _submitted_at('2026-11-01T01:30:00-0500')   # New York's twice-lived 1:30
    assert second - first == 3600
    assert _submitted_at('2026-01-01T00:00:00') == time.mktime(time.strptime('2026-01-01T00:00:00', '%Y-%m-%dT%H:%M:%S'))   # an older record


def test_a_job_just_submitted_counts_as_queued_while_sacct_does_not_list_it(tmp_path, monkeypatch):
    "Right after sbatch, sacct may not list a job yet (UNKNOWN): for SACCT_LAG seconds it is queued, so a second submit does not send it again."
    import time
    import submitit
    from har_kit.core import save_json
    from har_kit.launch import SACCT_LAG, RunJob, job_file, make_status, submit
    runs, ex = _two(tmp_path), _FakeExecutor()
    monkeypatch.setattr(submitit.SlurmJob, 'state', property(lambda self: 'UNKNOWN'))
    def record(ago):
        for i, r in enumerate(runs):
            save_json({'job_id': f'90{i}', 'cluster': 'slurm', 'folder': str(tmp_path),
                       'submitted': time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(time.time() - ago))}, job_file(r.out_dir))
    record(5)
    assert [r['state'] for r in make_status(runs, 'quick')['runs']] == ['queued', 'queued']
    assert [a['action'] for a in submit(runs, ex, 'quick', tmp_path)][:2] == ['queued', 'queued']
    assert not any(isinstance(f, RunJob) for f in ex.sent)   # no run job sent a second time
    record(SACCT_LAG + 60)   # never listed: the scheduler cannot say; the run stays missing, not called cancelled
    assert [r['state'] for r in make_status(runs, 'quick')['runs']] == ['missing', 'missing']
