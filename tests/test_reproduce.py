"""The reproduce runner: the paper protocol as planned (`plan` objects and `--dry-run --json` records), smoke mode
changes only size keys, data roots are checked before any kernel starts, failures are isolated, an interrupted
reproduce resumes, status is recorded."""
from types import SimpleNamespace
import json, shutil
import pytest
from pathlib import Path

from har_kit.core import save_json
from har_kit.launch import cli, save_status, status_cli, status_path
from har_kit.reproduce import PROFILES, SMOKE, SMOKE_KEYS, default_jobs, execute, gpu_slots, missing_roots, plan, runs_per_gpu
from har_kit.runs import RunFailed

ROOTS = ['--data-root', 'wider=/data/WIDER', '--data-root', 'rap=/data/RAP', '--data-root', 'pa100k=/data/PA100K']


def _json_plan(capsys, *args):
    "`har-kit reproduce --profile paper --dry-run --json` (in this process): one record per planned run."
    capsys.readouterr()
    assert cli(['--profile', 'paper', '--dry-run', '--json', *ROOTS, *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_paper_plan_lists_full_protocol(capsys):
    runs = plan(profile='paper', data_roots={'wider': '/data/WIDER'})
    nb = lambda name: [r for r in runs if r.spec.notebook == name]
    assert {r.params['arch'] for r in nb('dahar')} == {'resnet101'} and {r.params['arch'] for r in nb('campar')} == {'resnet50'}
    assert all(r.params['weights'] == 'IMAGENET1K_V1' for r in runs if 'weights' in r.params)
    assert {r.params['data_root'] for r in runs if r.params.get('dataset') == 'wider'} == {'/data/WIDER'}
    assert missing_roots(runs) == ['pa100k', 'rap']
    assert len(nb('cfar')) == (1 + 5) + (1 + 1)   # held-out: PA100K + RAP's 5 partitions; [15]: PA100K + RAP's partition 0
    # the text dry run names every planned run and the missing roots
    assert cli(['--profile', 'paper', '--dry-run', '--data-root', 'wider=/data/WIDER']) == 0
    out = capsys.readouterr().out
    assert all(r.name in out for r in runs) and '# needs --data-root for: pa100k, rap' in out


@pytest.mark.parametrize('profile', list(PROFILES))
def test_every_planned_run_passes_its_config_checks(profile):
    "Each run of every profile, studies included, builds its section's run config: a contradiction in a profile would "
    "otherwise surface only in that run's kernel, hours into a paper reproduction (the matrix study's CAM-PAR on WIDER did)."
    from har_kit.reproduce import default_tables
    from har_kit.run_params import check_config, notebook_parameters, section_notebook
    runs = plan(default_tables(profile, studies=True), profile)
    assert runs
    for r in runs:
        declared = notebook_parameters(section_notebook(r.spec.notebook))
        check_config(r.spec.notebook, {k: v for k, v in {**declared, **r.params}.items() if type(v).__name__ != 'Unparsed'})


def test_paper_json_plan_follows_the_papers(capsys):
    runs = _json_plan(capsys)
    assert all({'notebook', 'params', 'out_dir', 'deps'} <= set(r) for r in runs)
    by_dir = {r['out_dir']: r for r in runs}
    assert all(d in by_dir for r in runs for d in r['deps'])
    assert all(r['params']['weights'] == 'IMAGENET1K_V1' for r in runs if r['notebook'] in ('dahar', 'campar', 'cfar'))
    campar = [r for r in runs if r['notebook'] == 'campar']
    for r in campar:
        p = r['params']
        assert (p['logit_bn'], p['logit_bn_shared'], p['plateau_on'], p['fusion_width'], p['fusion_lr']) == (True, True, 'eval_loss', 128, 'backbone')
        assert p['train_splits'] == {'rap': ['trainval'], 'pa100k': ['train', 'val'], 'wider': ['trainval']}[p['dataset']]
        assert r['out_dir'].endswith({'[15]': '-sel15', 'held-out': '-selheldout'}[p['selection']])
        assert p['val_fraction'] == {'[15]': 0.0, 'held-out': 0.1}[p['selection']]   # held-out: a carved validation split
    # both selection modes for every CAM-PAR configuration on PA100K and RAP partition 0; held-out alone on partitions 1-4
    configs = {}
    for r in campar:
        configs.setdefault(json.dumps({k: v for k, v in r['params'].items() if k not in ('selection', 'val_fraction')}),
                           set()).add(r['params']['selection'])
    assert configs and all(s == ({'[15]', 'held-out'} if json.loads(c).get('partition', 0) == 0 else {'held-out'}) for c, s in configs.items())
    rap = [r for r in runs if r['params'].get('dataset') == 'rap' and r['notebook'] != 'masks']
    assert sorted({r['params']['partition'] for r in rap}) == [0, 1, 2, 3, 4]
    assert all(f"-part{r['params']['partition']}" in Path(r['out_dir']).name for r in rap)
    cfar = [r for r in runs if r['notebook'] == 'cfar']
    assert all(r['params']['als_tol'] > 0 and r['params']['campar_run'] in r['deps'] for r in cfar)
    assert all(Path(r['params']['campar_run']).name == Path(r['out_dir']).name for r in cfar)  # same partition, selection
    masks = {r['params']['dataset']: r for r in runs if r['notebook'] == 'masks'}
    assert set(masks) == {'wider', 'rap'}
    assert all(m['params']['source'] == 'maskrcnn' and m['params']['maskrcnn_weights'] == 'DEFAULT' for m in masks.values())
    assert all(masks[r['params']['dataset']]['out_dir'] in r['deps'] for r in runs if r['notebook'] == 'dahar')


def test_smoke_changes_only_size_and_length(capsys):
    assert all(set(v) <= SMOKE_KEYS for k, v in SMOKE.items() if not k.startswith('_'))
    paper, smoke = _json_plan(capsys, '--out', '/tmp/o'), _json_plan(capsys, '--smoke', '--out', '/tmp/o')
    assert all(s['out_dir'].startswith('/tmp/o/smoke/paper/') for s in smoke)   # never beside real paper runs
    rel = lambda x, root: str(Path(x).relative_to(root))
    paper = [r for r in paper if r['dims'].get('partition', 0) < SMOKE['_partitions']['rap']]   # RAP: partition 0 of 5
    assert [r['name'] for r in smoke] == [r['name'] for r in paper]
    assert len(smoke) == 16 and len(_json_plan(capsys)) == 36   # the README's smoke count; the paper plan's, which the GPU report prices
    for s, p in zip(smoke, paper):
        assert s['notebook'] == p['notebook'] and s['dims'] == p['dims']
        assert [rel(d, '/tmp/o/smoke') for d in s['deps']] == [rel(d, '/tmp/o') for d in p['deps']]
        for name in ('campar_run',):   # parameters that name another run's directory
            if name in p['params']:
                s['params'][name], p['params'][name] = rel(s['params'][name], '/tmp/o/smoke'), rel(p['params'][name], '/tmp/o')
        assert {k: v for k, v in s['params'].items() if k not in SMOKE_KEYS} == \
               {k: v for k, v in p['params'].items() if k not in SMOKE_KEYS}, s['name']
        assert s['params'].get('device', 'cpu') == 'cpu'


def test_paper_without_roots_is_refused_with_names(tmp_path, capsys):
    assert cli(['campar_t2', '--profile', 'paper', '--out', str(tmp_path)]) == 2
    assert 'rap=PATH' in capsys.readouterr().err and not (tmp_path/'paper').exists()


def test_bad_data_root_is_named_before_any_kernel(tmp_path, capsys):
    from har_kit.formats import write_fixture
    write_fixture('rap', tmp_path/'rap', n_images=8)
    (tmp_path/'pa100k').mkdir(); (tmp_path/'pa100k'/'readme.txt').write_text('not a dataset')
    rc = cli(['campar_t1', '--profile', 'paper', '--smoke', '--out', str(tmp_path/'out'),
              '--data-root', f'rap={tmp_path/"rap"}', '--data-root', f'pa100k={tmp_path/"pa100k"}'])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert 'pa100k=' in err and 'readme.txt' in err and 'rap=' not in err.split('nothing was started')[1]
    assert not (tmp_path/'out').exists()   # no run directory, no status: nothing started


def _finish(r):
    "What a finished run leaves that `execute` and status read: its metrics.json (no model entries here), then `done`."
    r.out_dir.mkdir(parents=True, exist_ok=True); (r.out_dir/'metrics.json').write_text('{}'); (r.out_dir/'done').write_text('')


def test_interrupted_reproduce_resumes(tmp_path):
    runs = plan(['campar_t2'], 'quick', seeds=2, root=tmp_path)
    calls = []
    def interrupted(r, dev):
        calls.append(r.name)
        if len(calls) == 4: raise KeyboardInterrupt  # the machine goes away mid-run
        _finish(r)
    try: execute(runs, run_fn=interrupted, progress=False, jobs=1)
    except KeyboardInterrupt: pass
    assert len(calls) == 4
    second = []
    status = execute(runs, run_fn=lambda r, dev: (second.append(r.name), _finish(r)), progress=False, jobs=1)
    assert len(status['skipped']) == 3 and len(second) == len(runs) - 3 == len(status['done'])
    assert calls[3] in second   # the interrupted run is redone


def test_default_jobs_from_cores_and_threads(monkeypatch):
    monkeypatch.setattr('os.sched_getaffinity', lambda pid: {0, 1})   # taskset, a cpuset or SLURM's --cpus-per-task: 2 of 64
    monkeypatch.setattr('os.cpu_count', lambda: 64)
    assert default_jobs(plan(['campar_t2'], 'quick')) == max(1, 2 // PROFILES['quick']['_threads'])
    monkeypatch.setattr('os.sched_getaffinity', lambda pid: set(range(8)))
    quick = plan(['campar_t2'], 'quick')
    assert default_jobs(quick) == 8 // PROFILES['quick']['_threads']
    paper = plan(['campar_t2'], 'paper', data_roots={'rap': '/r'})
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    assert default_jobs(quick, ['cuda:0', 'cuda:1']) == 2 and default_jobs(paper) == 1   # a GPU it cannot see: one run each
    for gib, per_gpu in ((141, 3), (80, 3), (40, 1), (16, 1)):   # runs_per_gpu from the card's memory, at most three
        monkeypatch.setattr('torch.cuda.is_available', lambda: True)
        monkeypatch.setattr('torch.cuda.get_device_properties', lambda i, g=gib: SimpleNamespace(total_memory=g * 2**30))
        assert runs_per_gpu('cuda:1') == per_gpu and default_jobs(paper) == per_gpu
        assert default_jobs(quick, ['cuda:0', 'cuda:1']) == 2 * per_gpu and default_jobs(quick, ['cpu']) == 8 // PROFILES['quick']['_threads']


def test_auto_is_placed_as_the_gpu_where_there_is_one(monkeypatch):
    "'auto' (the sample profile's device, or --device auto) on a GPU machine takes the GPU's jobs and slots; without one, the CPU's."
    monkeypatch.setattr('torch.cuda.is_available', lambda: True)
    monkeypatch.setattr('torch.cuda.get_device_properties', lambda i: SimpleNamespace(total_memory=80 * 2**30))
    run = lambda nb, dev: SimpleNamespace(spec=SimpleNamespace(notebook=nb), params={'device': dev}, threads=1)
    assert default_jobs([run('campar', 'cuda')], ['auto']) == default_jobs([run('campar', 'auto')]) == runs_per_gpu('cuda') == 3
    assert gpu_slots(run('campar', 'auto'), None, 3) == gpu_slots(run('campar', 'cuda'), 'auto', 3) == 3   # CAM-PAR never shares
    assert gpu_slots(run('dahar', 'auto'), None, 3) == 1
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    monkeypatch.setattr('os.sched_getaffinity', lambda pid: {0, 1})
    assert default_jobs([run('campar', 'auto')]) == 2 and gpu_slots(run('campar', 'auto'), None, 3) == 1


def test_execute_shares_a_gpu_among_dahar_runs_and_gives_the_others_a_whole_one(tmp_path):
    "Three slots on one GPU: the first three Da-HAR runs meet at a barrier (they run at once); a CAM-PAR run never shares."
    import threading
    spec = lambda nb: SimpleNamespace(notebook=nb)
    runs = [SimpleNamespace(name=f'{nb}{i}', spec=spec(nb), out_dir=tmp_path/f'{nb}{i}', deps=(), params={'device': 'cuda'})
            for i, nb in enumerate(['dahar'] * 3 + ['campar'] * 2 + ['dahar'] * 2)]
    assert [gpu_slots(r, 'cuda:0', 3) for r in runs[2:4]] == [1, 3] and gpu_slots(runs[3], 'cpu', 3) == 1
    lock, active, alone, barrier = threading.Lock(), set(), [], threading.Barrier(3, timeout=120)
    def run_fn(r, dev):
        with lock: active.add(r.name); seen = set(active)
        if r.name in ('dahar0', 'dahar1', 'dahar2'): barrier.wait()   # broken (an error) unless all three run at once
        if r.spec.notebook == 'campar': alone.append(seen == {r.name})
        with lock: active.discard(r.name)
    status = execute(runs, devices=['cuda:0'], jobs=3, run_fn=run_fn, progress=False)
    assert not status['failed'] and len(status['done']) == len(runs), status
    assert alone == [True, True]


def test_status_names_failures_and_blocked_runs(tmp_path, capsys):
    runs = [r for r in plan(['dahar_t2', 'campar_t2'], 'quick', root=tmp_path) if r.seed == 0]   # one seed of each run
    def run_fn(r, dev):
        r.out_dir.mkdir(parents=True, exist_ok=True)
        if r.spec.notebook == 'campar':   # the CAM-PAR run fails; the CFAR run that needs it is blocked
            save_json(dict(error='cell 12 raised RuntimeError: out of memory', cell=12, time='t'), r.out_dir/'failed.json')
            raise RunFailed(r.out_dir, 'out of memory')
        _finish(r)
    execute(runs, run_fn=run_fn, progress=False, jobs=1)
    save_status(runs, tmp_path, 'quick')
    assert json.loads(status_path(tmp_path, 'quick').read_text())['counts']['done'] == 3
    capsys.readouterr()
    assert status_cli(['--profile', 'quick', '--out', str(tmp_path), '--json']) == 1   # refreshed from the run directories
    st = json.loads(capsys.readouterr().out)
    assert {k: n for k, n in st['counts'].items() if n} == {'done': 3, 'failed': 1, 'missing': 1}
    failed = next(r for r in st['runs'] if r['state'] == 'failed')
    blocked = next(r for r in st['runs'] if r['state'] == 'missing')
    assert 'out of memory' in failed['error'] and blocked['error'] == f"not started: needs {failed['out_dir']}, which failed"


@pytest.mark.shared('data/pa100k-sample/annotation.mat')
def test_sample_profile_only_plans_pa100k_rows():
    runs = plan(profile='sample')
    assert runs and {r.params['dataset'] for r in runs} == {'pa100k'}
    assert all(r.params.get('data_root') for r in runs) and missing_roots(runs) == []   # the sample beside the project is found
    cfar = [r for r in runs if r.spec.notebook == 'cfar']
    campar = {str(r.out_dir): r for r in runs if r.spec.notebook == 'campar'}
    assert all(c.params['scale'] == campar[c.params['campar_run']].params['scale'] for c in cfar)


def test_every_subcommand_resolves_to_its_function():  # read from the sources: importing them all takes seconds
    import ast, importlib.util
    from har_kit.cli import CLI_FUNCTIONS, SUBCOMMANDS
    for name, (module, _) in SUBCOMMANDS.items():
        spec = importlib.util.find_spec(module)
        assert spec, f'{name}: module {module} not found'
        defs = {n.name for n in ast.parse(Path(spec.origin).read_text()).body if isinstance(n, ast.FunctionDef)}
        assert CLI_FUNCTIONS.get(name, 'cli') in defs, f'{name}: {module} has no {CLI_FUNCTIONS.get(name, "cli")}(argv)'


def test_status_keeps_errors_raised_before_the_run_directory_existed(tmp_path, capsys):
    from har_kit.core import KitError
    runs = plan(['campar_t2'], 'quick', root=tmp_path)[:1]
    def refused(r, dev): raise KitError("unknown parameter 'fusion_width' for notebook 41_campar.ipynb")
    st = save_status(runs, tmp_path, 'quick', execute(runs, run_fn=refused, progress=False)['failed'])
    assert st['runs'][0]['state'] == 'failed' and 'fusion_width' in st['runs'][0]['error']
    capsys.readouterr()
    status_cli(['--profile', 'quick', '--out', str(tmp_path), '--json'])
    assert 'fusion_width' in json.loads(capsys.readouterr().out)['runs'][0]['error']   # kept when the status is refreshed


def test_devices_are_spread_over_concurrent_runs(tmp_path):
    import threading
    runs = plan(['campar_t2'], 'quick', root=tmp_path)[:4]
    seen, live, peak, lock = [], set(), [0], threading.Lock()
    both = threading.Barrier(2, timeout=60)   # the first two runs meet here: they overlap whatever the machine's load
    def run_fn(r, dev):
        with lock: clash = dev in live; seen.append((dev, clash)); live.add(dev); peak[0] = max(peak[0], len(live)); first = len(seen) <= 2
        if first: both.wait()
        with lock: live.discard(dev)
        r.out_dir.mkdir(parents=True, exist_ok=True); (r.out_dir/'done').write_text('')
    execute(runs, devices=['cuda:0', 'cuda:1'], run_fn=run_fn, progress=False, jobs=2)   # one per device (a GPU machine's default: runs_per_gpu each)
    # both devices in use at once, never two runs on one device (which device the later runs get depends on which ends first)
    assert len(seen) == 4 and {d for d, _ in seen[:2]} == {'cuda:0', 'cuda:1'} and not any(c for _, c in seen) and peak[0] == 2


def test_submitit_dry_run_lists_jobs_and_dependencies(tmp_path, capsys):
    from har_kit.launch import submit
    runs = [r for r in plan(['campar_t2'], 'quick', root=tmp_path) if r.seed == 0]   # one seed of each run
    acts = submit(runs, None, 'quick', tmp_path, dry_run=True)
    assert [a['action'] for a in acts] == ['submit'] * 3 and acts[-1]['name'] == 'quick/tables'   # 2 runs + the tables job
    cfar = next(i for i, r in enumerate(runs) if r.spec.notebook == 'cfar')
    assert acts[cfar]['after'] == [f'<{r.name}>' for r in runs if r.out_dir in runs[cfar].deps]
    assert cli(['campar_t2', '--profile', 'quick', '--launcher', 'submitit', '--cluster', 'local', '--dry-run',
                '--out', str(tmp_path)]) == 0
    assert not (tmp_path/'quick').exists()   # a dry run creates nothing


def test_run_directories_do_not_depend_on_tables_or_their_order(tmp_path):
    "A run's directory is named by what it ran: planning tables in another order, or one table alone, moves no run."
    one = {(r.spec.key(), r.seed): r.out_dir for r in plan(['dahar_t3'], 'quick', root=tmp_path)}
    both = {(r.spec.key(), r.seed): r.out_dir for r in plan(['dahar_t1', 'dahar_t3'], 'quick', root=tmp_path)}
    back = {(r.spec.key(), r.seed): r.out_dir for r in plan(['dahar_t3', 'dahar_t1'], 'quick', root=tmp_path)}
    assert both == back and all(both[k] == d for k, d in one.items())
    assert all(d.relative_to(tmp_path).parts[:2] == ('quick', 'dahar') and d.name == f'seed{k[1]}' for k, d in both.items())


def test_paper_fusion_runs_build_the_public_codes_mca():
    "Every +fusion run the paper profile plans builds MCA as 40_campar_model states the paper profile does: latent 128, c5 BN only (4.08M)."
    from har_kit.campar import MCAFusion
    from har_kit.backbones import count_params
    from har_kit.reproduce import plan
    runs = [r for r in plan(profile='paper', seeds=1) if r.spec.notebook == 'campar'
            and any(v in ('fusion', 'campar_fusion') for v in r.params['variants'])]
    assert runs
    for r in runs: assert (r.params['fusion_width'], r.params['fusion_project_deepest']) == (128, False), r.params
    n = count_params(MCAFusion([512, 1024, 2048], latent=128, project_deepest=False))
    assert round(n / 1e6, 2) == 4.08, n


def test_paper_rap_partitions_cover_what_each_paper_ran():
    "The paper plan runs every RAP row on partitions 0-4 (Da-HAR's five, Li et al.; CAM-PAR's held-out rows), CAM-PAR's [15] selection on [15]'s partition 0."
    from har_kit.reproduce import plan
    from har_kit.results import CAMPAR_T2, DAHAR_T2
    runs = plan(['dahar_t2', 'campar_t2'], 'paper', seeds=1)
    for nb, t in (('dahar', DAHAR_T2), ('campar', CAMPAR_T2), ('cfar', CAMPAR_T2)):
        parts = {r.params['partition'] for r in runs if r.spec.notebook == nb and r.params.get('dataset') == 'rap'}
        assert parts == {0, 1, 2, 3, 4} and set(t.protocol[nb]['partition'].value) <= parts, (nb, parts)
        if nb != 'dahar':   # [15]'s selection on test where [15] ran it; the five-partition mean is held-out's
            by = lambda sel: {r.dims['partition'] for r in runs if r.spec.notebook == nb and r.dims.get('selection') == sel and 'partition' in r.dims}
            assert by('[15]') == {0} and by('held-out') == {0, 1, 2, 3, 4}, nb


def test_paper_fusion_card_matches_the_profile():
    "The fusion the CAM-PAR card declares is the one the paper profile builds: same parameters, 4.08M at ResNet-50, not 8.27M."
    from har_kit.backbones import count_params
    from har_kit.campar import MCAFusion
    from har_kit.reproduce import PROFILES
    from har_kit.results import TABLES
    prof = PROFILES['paper']['campar']
    for t in TABLES.values():
        decl = t.protocol.get('campar', {})
        if 'fusion_project_deepest' in decl:
            assert (decl['fusion_project_deepest'].value, decl['fusion_width'].value) == (prof['fusion_project_deepest'], prof['fusion_width']), t.key
    counts = {d: round(count_params(MCAFusion([512, 1024, 2048], latent=128, project_deepest=d)) / 1e6, 2) for d in (False, True)}
    assert counts == {False: 4.08, True: 8.27}, counts


def test_status_reports_unreadable_run_records_without_a_traceback(tmp_path, capsys):
    "A run directory's params/env/metrics/timing/job/failed JSON that is not a JSON object, or not UTF-8, is reported, never a crash."
    runs = [r for r in plan(['campar_t2'], 'quick', root=tmp_path) if r.seed == 0][:3]
    for r in runs: r.out_dir.mkdir(parents=True, exist_ok=True); (r.out_dir/'done').write_text('')
    save_status(runs, tmp_path, 'quick')
    bad = {'params.json': '[1, 2]', 'env.json': b'\xff\xfe{', 'metrics.json': '[1, 2]', 'timing.json': '7'}
    for name, text in bad.items():
        f = runs[0].out_dir/name
        f.write_bytes(text) if isinstance(text, bytes) else f.write_text(text)
    runs[1].out_dir.joinpath('done').unlink(); runs[1].out_dir.joinpath('failed.json').write_text('[1, 2]')
    capsys.readouterr()
    assert status_cli(['--profile', 'quick', '--out', str(tmp_path), '--json']) == 1
    st = {r['name']: r for r in json.loads(capsys.readouterr().out)['runs']}
    first = st[runs[0].name]
    assert first['state'] == 'stale' and all(f'{n} unreadable' in first['error'] for n in ('params.json', 'env.json', 'metrics.json')), first
    assert st[runs[1].name]['state'] == 'failed' and 'failed.json: holds a JSON array' in st[runs[1].name]['error']


def test_a_plan_of_no_runs_renders_nothing(tmp_path, capsys):
    "A table the profile does not have plans no run: reproduce says so and renders no table (before: every table, all 'no run')."
    assert cli(['dahar_t1', '--profile', 'sample', '--out', str(tmp_path)]) == 0
    assert 'nothing rendered' in capsys.readouterr().out and not (tmp_path/'sample'/'tables').exists()


def test_a_run_held_by_another_process_is_busy_not_failed(tmp_path):
    "A second reproduce on the same outputs: runs another process holds (and those needing them) are 'busy', never 'failed'."
    from har_kit.runs import RunBusy
    runs = plan(['campar_t2'], 'quick', root=tmp_path)
    held = runs[0]
    def run_fn(r, dev):
        if r is held: raise RunBusy(f'{r.out_dir} is in use by another run (pid 1)')
    st = execute(runs, run_fn=run_fn, progress=False, jobs=1)
    assert held.name in st['busy'] and not st['failed'], st
    assert all(r.name in st['busy'] for r in runs if held.out_dir in r.deps), st


def test_a_dry_run_checks_the_roots_and_names_roots_no_run_reads(capsys, tmp_path):
    "The dry run is where a setup is checked: an unusable root is said (the plan still shown); a root no planned run reads is said."
    sample = Path(__file__).resolve().parents[2]/'shared'/'data'/'pa100k-sample'
    assert cli(['campar_t2', '--profile', 'paper', '--dry-run', '--data-root', f'rap={sample}']) == 0
    cap = capsys.readouterr()
    assert 'a real run would stop here: dataset roots are not usable' in cap.err and f'rap={sample}' in cap.err and 'campar/' in cap.out
    assert cli(['campar_t2', '--profile', 'quick', '--dry-run', '--out', str(tmp_path), '--data-root', f'pa100k={sample}']) == 0
    assert "no planned run reads --data-root pa100k (profile 'quick' runs on the synthetic sets)" in capsys.readouterr().err


def test_a_profile_that_contradicts_itself_stops_before_its_first_run(capsys, tmp_path, monkeypatch):
    "Every planned run's parameters are checked before any starts: the real command stops (nothing created), the dry run says so."
    monkeypatch.setitem(PROFILES['quick'], 'campar', {**PROFILES['quick']['campar'], 'selection': '[15]', 'val_fraction': 0.1})
    for launcher in ('local', 'submitit'):   # a scheduler's dry run says it too
        assert cli(['campar_t2', '--profile', 'quick', '--dry-run', '--out', str(tmp_path), '--launcher', launcher,
                    *(['--cluster', 'local'] if launcher == 'submitit' else [])]) == 0
        assert "a real run would stop here: " in capsys.readouterr().err, launcher
    assert cli(['campar_t2', '--profile', 'quick', '--out', str(tmp_path), '--jobs', '1']) == 2
    err = capsys.readouterr().err
    assert "planned run(s) would be refused; nothing was started" in err and "val_fraction=0.1 with selection='[15]'" in err
    assert not (tmp_path/'quick'/'campar').exists() and not list(tmp_path.rglob('params.json'))


def test_check_planned_reads_a_dependency_only_when_it_is_done_and_current(tmp_path, monkeypatch):
    "CFAR's campar_run is checked against the run on disk only when the plan will not run it first (done, current)."
    import har_kit.reproduce as R
    from har_kit.core import KitError
    runs = plan(['campar_t2'], 'quick', root=tmp_path)
    cfar = next(r for r in runs if r.spec.notebook == 'cfar')
    Path(cfar.params['campar_run']).mkdir(parents=True); Path(cfar.params['campar_run'], 'metrics.json').write_text('{}')
    R.check_planned(runs)                                            # not done: the plan runs it first
    monkeypatch.setattr(R, 'is_complete', lambda d: True)
    monkeypatch.setattr(R, 'stale_params', lambda r: ['scale'])
    R.check_planned(runs)                                            # done but stale: rerun first
    monkeypatch.setattr(R, 'stale_params', lambda r: [])
    with pytest.raises(KitError, match='records no `_meta`'): R.check_planned(runs)   # done and current: read now


def test_a_dry_run_with_a_missing_root_still_checks_the_runs_that_have_theirs(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES['paper'], 'masks', {**PROFILES['paper']['masks'], 'fig4_size': -1})   # a refused value
    assert cli(['dahar_t1', 'dahar_t2', '--profile', 'paper', '--dry-run', '--out', str(tmp_path), '--data-root', f'wider={tmp_path}']) == 0
    refused = [l for l in capsys.readouterr().err.splitlines() if 'fig4_size' in l]
    assert refused and all('wider' in l and 'rap' not in l for l in refused), refused   # RAP's masks run waits for its root


def test_the_papers_sections_are_the_notebooks_reproduce_runs():
    "run_params.PAPER_SECTIONS (what messages call the papers' sections) is what a paper plan executes, plus the tables."
    from har_kit.run_params import PAPER_SECTIONS, section_names
    assert [n for n in PAPER_SECTIONS if n != 'tables'] == list(dict.fromkeys(r.spec.notebook for r in plan(profile='paper')))
    assert set(PAPER_SECTIONS) <= set(section_names())


def test_a_run_whose_input_run_was_trained_again_is_stale(tmp_path):
    "status / reproduce call a done run 'stale' (inputs) once the run it reads (CFAR's campar_run) was trained again."
    from har_kit.core import save_json
    from har_kit.reproduce import stale_params
    from har_kit.run_params import parameter_defaults
    from har_kit.runs import input_fingerprints
    phase1, out = tmp_path/'campar', tmp_path/'run'
    phase1.mkdir(); out.mkdir(); (phase1/'done').write_text('t1\n')
    planned = {'campar_run': str(phase1)}
    save_json(planned, out/'params.json')
    save_json({'data': input_fingerprints(planned), 'defaults': parameter_defaults('masks')}, out/'env.json')
    rec = dict(out_dir=str(out), notebook='masks', params=planned)
    assert stale_params(rec) == []
    (phase1/'done').write_text('t2\n')
    assert stale_params(rec) == ['inputs']
    save_json({'defaults': parameter_defaults('masks')}, out/'env.json')   # recorded by an earlier kit: no inputs to compare
    assert stale_params(rec) == []


def test_force_reruns_a_done_run_after_the_run_it_reads_reruns(tmp_path, monkeypatch):
    "reproduce --force: a CAM-PAR run retrained here takes the CFAR run that reads it along, after it (not 'skipped')."
    import har_kit.reproduce as R
    runs = plan(['campar_t2'], 'quick', seeds=1, root=tmp_path)
    cfar = next(r for r in runs if r.spec.notebook == 'cfar'); (campar,) = [r for r in runs if r.out_dir in cfar.deps]
    for r in runs: _finish(r)
    monkeypatch.setattr(R, 'stale_params', lambda r: ['epochs'] if r.out_dir == campar.out_dir else [])
    ran = []
    st = execute(runs, run_fn=lambda r, dev: ran.append(r.name), progress=False, jobs=1, force=True)
    assert ran == [campar.name, cfar.name] and st['done'] == ran and cfar.name not in st['skipped'], st
    ran.clear()
    st = execute(runs, run_fn=lambda r, dev: ran.append(r.name), progress=False, jobs=1)   # without --force: neither runs
    assert not ran and campar.name in st['failed'] and st['failed'][cfar.name] == 'not started: a run it needs failed', st


def test_a_damaged_done_run_is_reported_and_rerun_before_the_run_that_reads_it(tmp_path, capsys):
    "A run marked done that lost a model file: status says 'damaged', what is missing and the fix; reproduce reruns it "
    "without --force (run_notebook resumes it), and the CFAR run that reads it runs after it instead of being skipped."
    runs = plan(['campar_t2'], 'quick', seeds=1, root=tmp_path)
    cfar = next(r for r in runs if r.spec.notebook == 'cfar'); (campar,) = [r for r in runs if r.out_dir in cfar.deps]
    for r in runs: _finish(r)
    from har_kit.metrics import METRICS_SCHEMA
    save_json({'campar': {'schema': METRICS_SCHEMA, 'model_file': 'campar/model.pt'}}, campar.out_dir/'metrics.json')   # deleted since
    save_status(runs, tmp_path, 'quick'); capsys.readouterr()
    assert status_cli(['--profile', 'quick', '--out', str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f'damaged  {campar.name}: marked done but campar/model.pt missing: rerun it (`har-kit reproduce`' in out, out
    assert '1 damaged of' in out and cfar.name not in out, out   # the CFAR run itself is whole: done
    ran = []
    st = execute(runs, run_fn=lambda r, dev: ran.append(r.name), progress=False, jobs=1)
    assert ran == [campar.name, cfar.name] and st['done'] == ran and len(st['skipped']) == len(runs) - 2, st


def _fake_campar_t2(root, stale_seed=None, failed_seed=None):
    "The three planned CAM-PAR seeds of campar_t2 (quick) as a finished run leaves them; one with other parameters, or one failed."
    from har_kit.core import save_json
    from har_kit.metrics import metrics_entry
    runs = [r for r in plan(['campar_t2'], 'quick', root=root) if r.spec.notebook == 'campar']
    assert [r.seed for r in runs] == [0, 1, 2]
    for r in runs:
        save_json({**r.params, **({'epochs': 30} if r.seed == stale_seed else {})}, r.out_dir/'params.json')
        if r.seed == failed_seed:
            save_json({'error': 'FloatingPointError: the loss diverged\nTraceback ...', 'cell': 3, 'time': 0}, r.out_dir/'failed.json'); continue
        mA = 0.9 if r.seed == stale_seed else 0.5
        full = dict(mA=mA, acc=0.5, prec=0.5, rec=0.5, f1=0.5, f1_mean_instance=0.5, ma_per_attr=[0.6, 0.7])
        save_json({v: metrics_entry('rap', {'full': full}, ['hat', 'bag']) for v in r.params['variants']}, r.out_dir/'metrics.json')
        (r.out_dir/'done').write_text('')
    return runs


def test_the_tables_leave_out_what_status_calls_stale_and_name_it(tmp_path):
    "A seed `har-kit status` calls stale (params.json says epochs 30) is not in the table's mean: n=2, and the row and seeds.csv name it."
    import csv, io
    from har_kit.launch import held_back, make_status
    from har_kit.render import render
    from har_kit.results import CAMPAR_T2
    runs = _fake_campar_t2(tmp_path, stale_seed=2)
    assert make_status(plan(['campar_t2'], 'quick', root=tmp_path), 'quick')['counts']['stale'] == 1
    held = held_back(['campar_t2'], 'quick', tmp_path)
    assert held[runs[2].out_dir] == 'stale: finished with other parameters (epochs)' and runs[0].out_dir not in held
    out = render(CAMPAR_T2, tmp_path, 'quick', held=held)
    assert out['cells'][('baseline', 'mA')]['n'] == 2 and out['cells'][('baseline', 'mA')]['mean'] == 50.0   # not 63.33 ± 23.09
    line = next(l for l in out['texts']['md'].splitlines() if l.startswith('| baseline | ours'))
    assert '(n=2) — left out: seed2 (stale: finished with other parameters (epochs))' in line, line
    assert '| no run | no run |' in next(l for l in out['texts']['md'].splitlines() if l.startswith('| + CAM-PAR + fusion + CFAR | ours'))
    ep = lambda card: next(d['runs'] for d in card['differs'] if d['parameter'] == 'epochs')   # the card: the runs the numbers use
    assert out['card']['runs'] == 2 and '30' not in ep(out['card']), ep(out['card'])
    assert '30 (1 run)' in ep(render(CAMPAR_T2, tmp_path, 'quick')['card'])   # without held: every run found
    gone = [r for r in csv.DictReader(io.StringIO(out['texts']['seeds.csv'])) if r['kind'].startswith('left out')]
    assert {(r['method'], r['column'], r['seed']) for r in gone if r['kind'] == 'left out: stale: finished with other parameters (epochs)'} \
        == {(row.label, c, 'seed2') for row in CAMPAR_T2.rows[:4] for c in ('mA', 'F1')}


def test_the_tables_name_a_failed_or_missing_seed(tmp_path):
    "A failed seed (failed.json) and a seed never run are left out by name, and the paired interval says it has fewer seeds."
    import shutil
    from har_kit.launch import held_back
    from har_kit.render import render
    from har_kit.results import CAMPAR_T2
    runs = _fake_campar_t2(tmp_path, failed_seed=1)
    out = render(CAMPAR_T2, tmp_path, 'quick', held=held_back(['campar_t2'], 'quick', tmp_path))
    md = out['texts']['md'].splitlines()
    assert '(n=2) — left out: seed1 (failed: FloatingPointError: the loss diverged)' in next(l for l in md if l.startswith('| + fusion | ours'))
    shutil.rmtree(runs[1].out_dir)   # never run: missing from the plan
    out = render(CAMPAR_T2, tmp_path, 'quick', held=held_back(['campar_t2'], 'quick', tmp_path))
    assert '(n=2) — left out: seed1 (missing (not run))' in next(l for l in out['texts']['md'].splitlines() if l.startswith('| + fusion | ours'))


def _finish(r, stamp='2024-01-01T00:00:00', models=False, **extra):
    "A planned campar/cfar run as a finished run leaves it (params, metrics, env with its inputs' fingerprints, done)."
    from har_kit.core import save_json
    from har_kit.metrics import metrics_entry
    from har_kit.run_params import parameter_defaults
    from har_kit.runs import input_fingerprints, params_digest
    p = {**r.params, **extra}
    save_json(p, r.out_dir/'params.json')
    full = dict(mA=0.5, acc=0.5, prec=0.5, rec=0.5, f1=0.5, f1_mean_instance=0.5, ma_per_attr=[0.6, 0.7])
    m = {v: metrics_entry('rap', {'full': full}, ['hat', 'bag'], **({'model_file': f'{v}/model.pt'} if models else {})) for v in p['variants']}
    save_json(m, r.out_dir/'metrics.json')
    for v in p['variants'] if models else []: (r.out_dir/v).mkdir(parents=True, exist_ok=True); (r.out_dir/v/'model.pt').write_bytes(b'x')
    save_json({'defaults': parameter_defaults(r.spec.notebook), 'data': {**r.data, **input_fingerprints(p)}, 'threads': r.threads}, r.out_dir/'env.json')
    (r.out_dir/'done').write_text(f'{stamp}\nparams-sha256 {params_digest(p)}\n')


def test_a_done_run_that_reads_a_stale_one_is_stale_in_status_tables_and_submit(tmp_path):
    "CFAR seed 0 finished on a CAM-PAR seed 0 that now has other parameters: status calls it stale, the tables leave it out, submit blocks it."
    from har_kit.launch import describe_jobs, held_back, make_status, submit
    runs = plan(['campar_t2'], 'quick', root=tmp_path)
    for r in sorted(runs, key=lambda r: r.spec.notebook != 'campar'): _finish(r, **({'epochs': 30} if r.spec.notebook == 'campar' and r.seed == 0 else {}))
    cfar0 = next(r for r in runs if r.spec.notebook == 'cfar' and r.seed == 0)
    st = make_status(runs, 'quick')
    assert st['counts']['stale'] == 2 and st['counts']['done'] == len(runs) - 2, st['counts']
    rec = next(x for x in st['runs'] if x['out_dir'] == str(cfar0.out_dir))
    assert rec['state'] == 'stale' and rec['error'].startswith('reads campar/') and '(epochs)' in rec['error'], rec
    assert held_back(['campar_t2'], 'quick', tmp_path)[cfar0.out_dir].startswith('stale: reads campar/')
    for force in (False, True):
        jobs = {a['name']: a['action'] for a in submit(runs, None, 'quick', tmp_path, dry_run=True, force=force)}
        assert jobs[cfar0.name] == ('submit' if force else 'blocked'), describe_jobs(submit(runs, None, 'quick', tmp_path, dry_run=True, force=force))


def test_a_run_reading_a_repaired_damaged_run_is_rerun_without_force(tmp_path, monkeypatch):
    "A damaged CAM-PAR run resumed by a plain reproduce rewrites done: the CFAR run reading it reruns (its old run moved aside), not refused."
    import har_kit.reproduce as R
    from har_kit.runs import run_status
    runs = [r for r in plan(['campar_t2'], 'quick', root=tmp_path, seeds=1) if r.seed == 0]
    camp, cf = (next(r for r in runs if r.spec.notebook == nb) for nb in ('campar', 'cfar'))
    _finish(camp, models=True); _finish(cf, '2024-01-01T00:10:00', models=True)
    (camp.out_dir/'baseline'/'model.pt').unlink()
    assert run_status(camp.out_dir)['state'] == 'damaged'
    forced = {}
    def run_notebook(nb, params, out, **kw):   # the campar run resumes (rewriting done); the cfar run records how it was asked
        forced[nb] = kw['force']
        if nb == 'campar': _finish(camp, '2024-06-01T00:00:00', models=True)
    monkeypatch.setattr(R, 'run_notebook', run_notebook)
    st = R.execute([camp, cf], progress=False, jobs=1)   # no --force
    assert st['failed'] == {} and st['done'] == [camp.name, cf.name], st
    assert forced == {'campar': False, 'cfar': True}   # its input changed: the old CFAR run is moved aside, not a refusal


def test_a_seed_folder_no_plan_makes_is_left_out_of_the_tables_and_named(tmp_path):
    "seed0-sel15 beside the quick plan's CFAR seeds (an earlier plan's, other parameters, mA 0.99) is held back, not averaged in."
    from har_kit.launch import held_back
    from har_kit.render import collect
    from har_kit.results import CAMPAR_T2
    runs = plan(['campar_t2'], 'quick', root=tmp_path)
    for r in sorted(runs, key=lambda r: r.spec.notebook != 'campar'): _finish(r)
    c0 = next(r for r in runs if r.spec.notebook == 'cfar' and r.seed == 0)
    import dataclasses
    orphan = dataclasses.replace(c0, out_dir=c0.out_dir.parent/'seed0-sel15')
    _finish(orphan, phase2_epochs=1)
    held = held_back(['campar_t2'], 'quick', tmp_path)
    assert held == {orphan.out_dir: 'not in the plan (an earlier version of the kit planned it): move it aside'}, held
    cell = collect(CAMPAR_T2, tmp_path, 'quick', held=held)[('campar_fusion_cfar', 'mA')]
    assert cell['n'] == 3 and 'seed0-sel15' not in cell['seeds'] and [e[0] for e in cell['excluded']] == ['seed0-sel15'], cell


@pytest.mark.parametrize('profile, kw', [('quick', {}), ('sample', {}), ('paper', dict(smoke=True))])
def test_no_folder_a_plan_makes_is_held_as_not_in_the_plan(tmp_path, profile, kw):
    "Every seed folder the profile's plans make (its paper tables and studies alike) counts as planned in every table that reads it."
    from har_kit.launch import held_back
    from har_kit.results import TABLES
    keys = [k for k in TABLES if TABLES[k].in_profile(profile)]
    for r in plan(keys, profile, root=tmp_path, **kw): r.out_dir.mkdir(parents=True, exist_ok=True)
    for k in keys:
        held = held_back([k], profile, tmp_path)
        assert not [d for d, why in held.items() if why.startswith('not in the plan')], (k, held)


def _finished_with_two_epochs(root):
    "campar_t2's quick runs finished with epochs=2, the status.json an earlier reproduce saved recording 2: the runs."
    from har_kit.launch import save_status
    runs = plan(['campar_t2'], 'quick', root=root)
    for r in runs:
        if r.spec.notebook == 'campar': r.params['epochs'] = 2   # the earlier kit's quick profile
    for r in sorted(runs, key=lambda r: r.spec.notebook != 'campar'): _finish(r)
    save_status(runs, root, 'quick')
    return runs


def test_the_tables_judge_runs_against_todays_plan_not_a_saved_status(tmp_path):
    "Runs finished with epochs=2, recorded so in the status.json an earlier reproduce saved, are stale when today's plan says 3."
    from har_kit.launch import held_back, save_status
    runs = _finished_with_two_epochs(tmp_path)
    held = held_back(['campar_t2'], 'quick', tmp_path)
    assert {held.get(r.out_dir) for r in runs if r.spec.notebook == 'campar'} == {'stale: finished with other parameters (epochs)'}, held
    smoke = [r for r in plan(['campar_t2'], 'paper', root=tmp_path, smoke=True) if r.spec.notebook == 'campar']   # what today's plan
    for r in smoke: _finish(r)                                                         # cannot know comes from status.json:
    save_status(smoke, tmp_path, 'paper')                                              # --smoke's sizes, not the paper's
    assert not set(held_back(['campar_t2'], 'paper', tmp_path)) & {r.out_dir for r in smoke}


def test_a_root_given_to_a_later_reproduce_of_other_tables_leaves_these_runs_current(tmp_path):
    "campar_t2 finished on rap=/data/old; the last reproduce (dahar_t2) was given rap=/data/new: the campar_t2 runs keep the root they recorded."
    from har_kit.launch import held_back, save_status
    a = plan(['campar_t2'], 'paper', root=tmp_path, data_roots={'rap': '/data/old'})
    for r in sorted(a, key=lambda r: r.spec.notebook != 'campar'): _finish(r)
    save_status(plan(['dahar_t2'], 'paper', root=tmp_path, data_roots={'rap': '/data/new', 'wider': '/data/w'}), tmp_path, 'paper')
    assert not set(held_back(['campar_t2', 'dahar_t2'], 'paper', tmp_path)) & {r.out_dir for r in a}


def test_status_judges_runs_against_todays_plan_as_the_tables_do(tmp_path, capsys):
    "Runs finished with epochs=2 under a status.json that recorded 2: `har-kit status` calls them stale, as the tables hold them back."
    from har_kit.launch import held_back, status_cli
    runs = _finished_with_two_epochs(tmp_path)
    assert status_cli(['--profile', 'quick', '--out', str(tmp_path), '--json']) == 0   # stale: not failed, a rerun brings it up to date
    st = json.loads(capsys.readouterr().out)
    stale = {r['out_dir'] for r in st['runs'] if r['state'] == 'stale'}
    assert stale == {str(d) for d in held_back(['campar_t2'], 'quick', tmp_path)} and len(stale) == len(runs), st['counts']


class _Executor:   # submitit's executor as `submit` uses it: records each job; every job is this process, so it reads as alive
    cluster, folder = 'local', '/nowhere'
    def __init__(self): self.sent = []
    def update_parameters(self, **kw): pass
    def submit(self, fn):
        import os
        self.sent.append(fn); return SimpleNamespace(job_id=str(os.getpid()))


def _alive():   # a job record of this process: a job that is queued or running
    import os, psutil
    return dict(cluster='local', job_id=str(os.getpid()), started=psutil.Process().create_time(), submitted='2026-01-01T00:00:00')


def test_the_tables_job_waits_only_for_runs_that_have_a_job(tmp_path, monkeypatch):
    "A stale CAM-PAR seed (no --force) blocks its CFAR seed, which is never submitted: on a scheduler without dependencies "
    "(--cluster local) the tables job waited for that run for ever. It waits for the runs sent or queued, as SLURM's afterany does."
    from har_kit import launch as L
    runs = [r for r in plan(['campar_t2'], 'quick', root=tmp_path) if r.seed == 0 or r.spec.notebook == 'campar']
    camp0 = next(r for r in runs if r.spec.notebook == 'campar' and r.seed == 0)
    _finish(camp0, epochs=30)   # done with other epochs than the plan's: stale
    ex = _Executor()
    acts = L.submit(runs, ex, 'quick', tmp_path)
    assert {a['name']: a['action'] for a in acts} == {**{r.name: 'submit' for r in runs if r.seed != 0}, camp0.name: 'stale',
                                                      **{r.name: 'blocked' for r in runs if r.seed == 0 and r is not camp0},
                                                      'quick/tables': 'submit'}, L.describe_jobs(acts)
    render = next(j for j in ex.sent if isinstance(j, L.RenderJob))
    assert render.wait_deps and sorted(render.dirs) == sorted(str(r.out_dir) for r in runs if r.seed != 0)
    assert L.load_json(L.job_file(tmp_path/'quick'/'tables'))['dirs'] == render.dirs
    for r in runs:   # the jobs sent end, their runs done: the tables job must not wait another moment
        if r.seed != 0: _finish(r); L.save_json({**_alive(), 'started': -1.0}, L.job_file(r.out_dir))
    def sleep(s): raise AssertionError(f'the tables job waits for {[d for d, st in states().items() if st == "missing"]}')
    states = lambda: {d: L.run_status(d)['state'] for d in render.dirs}
    monkeypatch.setattr(L, 'time', SimpleNamespace(sleep=sleep))
    assert set(L.wait_for(render.dirs, need_done=False).values()) == {'done'}


def test_a_done_run_whose_params_json_was_edited_is_stale_everywhere(tmp_path):
    "A run made with epochs=1 whose params.json was edited to the plan's epochs since: `har-kit run` refused it, but reproduce "
    "skipped it as done and status and the tables counted it current. Now it is stale everywhere, and --force reruns it."
    from har_kit.launch import held_back, make_status, submit
    from har_kit.reproduce import stale_params
    camp = next(r for r in plan(['campar_t2'], 'quick', root=tmp_path) if r.seed == 0 and r.spec.notebook == 'campar')
    _finish(camp, epochs=1)
    save_json(camp.params, camp.out_dir/'params.json')   # edited to claim the plan's epochs
    assert stale_params(camp) == ['params.json edited']
    ran = []
    st = execute([camp], progress=False, jobs=1, run_fn=lambda r, d: ran.append(r.name))
    assert ran == [] and st['failed'][camp.name].startswith('params.json edited after the run') and '--force' in st['failed'][camp.name], st
    assert make_status([camp], 'quick')['runs'][0]['state'] == 'stale'
    assert held_back(['campar_t2'], 'quick', tmp_path)[camp.out_dir].startswith('stale: params.json edited after the run')
    assert [a['action'] for a in submit([camp], None, dry_run=True)] == ['stale']
    st = execute([camp], progress=False, jobs=1, force=True, run_fn=lambda r, d: ran.append(r.name))
    assert ran == [camp.name] and st['done'] == [camp.name]
    _finish(camp)   # run with the plan's values: current
    assert stale_params(camp) == [] and make_status([camp], 'quick')['runs'][0]['state'] == 'done'


def test_a_stale_run_whose_rerun_is_queued_is_queued_and_its_readers_follow_it(tmp_path):
    "An earlier `reproduce --force` queued the rerun of a stale CAM-PAR run and of its CFAR run: a plain reproduce called the "
    "first 'stale' and the second 'blocked', though both jobs are alive and will run."
    from har_kit.launch import describe_jobs, job_file, submit
    runs = [r for r in plan(['campar_t2'], 'quick', root=tmp_path) if r.seed == 0]
    for r in runs: _finish(r, **({'epochs': 30} if r.spec.notebook == 'campar' else {}))   # the CAM-PAR run: stale
    for r in runs: save_json(_alive(), job_file(r.out_dir))
    acts = submit(runs, _Executor(), 'quick', tmp_path)
    assert [a['action'] for a in acts[:2]] == ['queued', 'queued'], describe_jobs(acts)
    for r in runs: save_json({**_alive(), 'started': -1.0}, job_file(r.out_dir))   # the jobs have ended: stale again
    assert [a['action'] for a in submit(runs, None, dry_run=True)] == ['stale', 'blocked']


def test_status_notes_a_done_run_made_by_an_earlier_version_of_its_notebook(tmp_path):
    "A done run whose notebook's code changed since is not stale (its results count), but status, reproduce and submit "
    "never said so: `har-kit run` alone warned."
    from har_kit.launch import format_status, held_back, make_status, submit
    from har_kit.run_params import find_notebook, notebook_record
    runs = [r for r in plan(['campar_t2'], 'quick', root=tmp_path) if r.seed == 0]
    for r in runs: _finish(r)
    camp = next(r for r in runs if r.spec.notebook == 'campar')
    now = notebook_record(find_notebook('campar'))
    env = json.loads((camp.out_dir/'env.json').read_text())
    save_json({**env, 'notebook': now}, camp.out_dir/'env.json')
    assert [r.get('note') for r in make_status(runs, 'quick')['runs']] == [None, None]   # the same code: nothing to say
    save_json({**env, 'notebook': {**now, 'run_code_sha256': 'an earlier one'}}, camp.out_dir/'env.json')
    st = make_status(runs, 'quick')
    rec = next(r for r in st['runs'] if r['name'] == camp.name)
    assert rec['state'] == 'done' and st['counts']['done'] == 2, st['counts']
    assert rec['note'].startswith(f"done with an earlier version of {now['file']}'s code"), rec
    assert f'  done     {camp.name}: done with an earlier version of {now["file"]}' in format_status(st)
    assert camp.out_dir not in held_back(['campar_t2'], 'quick', tmp_path)
    acts = submit(runs, None, dry_run=True)
    assert [a['action'] for a in acts] == ['done', 'done'] and now['file'] in acts[0].get('note', ''), acts


def test_a_cfar_run_without_campar_run_trains_the_paper_profiles_campar_recipe():
    """`har-kit run cfar` on the paper profile's values (no campar_run) trains phase 1 as the profile's CAM-PAR run
    would, apart from what an inline phase 1 cannot do: it holds nothing out, so it keeps its last epoch and its plateau watches
    the training loss."""
    from dataclasses import fields
    from har_kit.campar_train import CamParConfig
    from har_kit.cfar import CFARRunConfig
    paper = PROFILES['paper']
    inline = CFARRunConfig(dataset='rap', **paper['cfar']).phase1_config()
    own = CamParConfig(dataset='rap', variants=['campar_fusion'], selection='[15]', **paper['campar'])   # the plan's selection
    assert {f.name for f in fields(CamParConfig) if getattr(inline, f.name) != getattr(own, f.name)} == {'plateau_on', 'selection'}


def test_a_failed_run_is_said_when_it_fails_not_after_the_last(tmp_path, capsys):
    "On the paper profile the other runs may take hours: a failure is written above the bar at once, with its log."
    runs = [SimpleNamespace(name=f'r{i}', spec=SimpleNamespace(notebook='campar'), out_dir=tmp_path/f'r{i}', deps=(),
                            params={'device': 'cpu'}) for i in range(2)]
    seen = []
    def run_fn(r, dev):
        if r.name == 'r0': raise RunFailed(r.out_dir, 'cell 3 raised KitError: labels.csv line 4: label 2\nmore')
        seen.append(capsys.readouterr().err)   # what the terminal showed when the next run started
    status = execute(runs, jobs=1, run_fn=run_fn, progress=True)
    assert list(status['failed']) == ['r0'] and status['done'] == ['r1']
    assert f"FAILED r0: run {tmp_path/'r0'} failed: cell 3 raised KitError: labels.csv line 4: label 2 (log: {tmp_path/'r0'/'log.txt'})" in seen[0], seen


def _rap_copy(base, name, annotation):
    "A RAP root in the published layout (images folder, annotation file) whose annotation holds `annotation`: its path."
    r = base/name
    (r/'RAP_dataset').mkdir(parents=True); (r/'RAP_dataset'/'x.png').write_bytes(b'x')
    (r/'RAP_annotation.mat').write_bytes(annotation)
    return str(r)


def _campar_seeds(root, data_root, seeds, n=3):
    "campar_t2's paper-profile CAM-PAR runs of `seeds`, finished on `data_root` (their env.json recording its annotation)."
    runs = [r for r in plan(['campar_t2'], 'paper', root=root, data_roots={'rap': data_root}, seeds=n) if r.spec.notebook == 'campar']
    for r in runs:
        if r.seed in seeds: _finish(r)
    return runs


def test_the_tables_hold_back_a_seed_trained_on_another_copy_of_the_dataset(tmp_path):
    "reproduce rap=A (seed 0), then rap=B (--seeds 3): one row pooled A's seed 0 with B's; it is left out, named, and status agrees."
    import csv, io
    from har_kit.launch import held_back
    from har_kit.render import render
    from har_kit.results import CAMPAR_T2
    out = tmp_path/'out'
    A, B = _rap_copy(tmp_path, 'rapA', b'annotation version 1'), _rap_copy(tmp_path, 'rapB', b'annotation version 2 (relabelled)')
    save_status(_campar_seeds(out, A, {0}, n=1), out, 'paper')
    runs = _campar_seeds(out, B, {1, 2})
    save_status(plan(['campar_t2'], 'paper', root=out, data_roots={'rap': B}, seeds=3), out, 'paper')   # the last reproduce's plan
    held = held_back(['campar_t2'], 'paper', out)
    camp = {r.out_dir: r for r in runs}
    assert {d for d in held if d in camp} == {d for d, r in camp.items() if r.seed == 0}, held
    assert all(held[d].startswith('stale: finished with other parameters (data_root)') for d in held if d in camp), held
    md = render(CAMPAR_T2, out, 'paper', held=held)['texts']
    line = next(l for l in md['md'].splitlines() if l.startswith('| baseline | ours, held-out, mean over partitions'))
    assert '(n=10) — left out: seed0-part0-selheldout' in line and 'stale: finished with other parameters (data_root)' in line, line
    gone = {r['seed'] for r in csv.DictReader(io.StringIO(md['seeds.csv'])) if r['kind'].startswith('left out: stale')}
    assert gone and all(s.startswith('seed0-') for s in gone), gone
    assert status_cli(['--profile', 'paper', '--out', str(out), '--json']) == 0
    # copy B's annotation edited in place since seeds 1 and 2 trained on it: they are stale too, as reproduce judges them
    Path(B, 'RAP_annotation.mat').write_bytes(b'annotation version 3')
    held = held_back(['campar_t2'], 'paper', out)
    assert set(camp) <= set(held), sorted(set(camp) - set(held))
    assert {held[d] for d, r in camp.items() if r.seed > 0} == {'stale: what it reads changed since it finished (data: its dataset or synthetic set)'}


def test_without_a_saved_plan_seeds_on_two_copies_of_a_dataset_are_none_of_them_current(tmp_path):
    "No status.json: the seeds' own roots were taken as the plan's, so copies A and B averaged; one root: current until edited in place."
    from har_kit.launch import held_back
    out = tmp_path/'out'
    A, B = _rap_copy(tmp_path, 'rapA', b'annotation version 1'), _rap_copy(tmp_path, 'rapB', b'annotation version 2')
    runs = _campar_seeds(out, A, {0, 1, 2})
    assert not set(held_back(['campar_t2'], 'paper', out)) & {r.out_dir for r in runs}   # one copy: every seed current
    Path(A, 'RAP_annotation.mat').write_bytes(b'annotation version 1, edited')
    held = held_back(['campar_t2'], 'paper', out)
    assert {held.get(r.out_dir) for r in runs} == {'stale: what it reads changed since it finished (data: its dataset or synthetic set)'}
    Path(A, 'RAP_annotation.mat').write_bytes(b'annotation version 1')
    _campar_seeds(out, B, {1, 2})   # seeds 1 and 2 made again on copy B: which copy counts, no plan says
    held = held_back(['campar_t2'], 'paper', out)
    assert {held.get(r.out_dir) for r in runs} == {'stale: no --data-root names the copy of its dataset to judge it by (data_root)'}


def test_a_smoke_rehearsals_tables_say_so_and_why_their_sizes_differ(tmp_path):
    "A --smoke plan's tables (resnet-tiny, 1 epoch, CPU) were captioned as the paper protocol, their card's sizes 'no reason declared'."
    from har_kit.cards import SMOKE_REASON
    from har_kit.launch import held_back, saved_smoke
    from har_kit.render import render
    from har_kit.results import CAMPAR_T2
    rap = tmp_path/'RAP'; rap.mkdir()
    root = tmp_path/'smoke'
    runs = plan(['campar_t2'], 'paper', root=root, smoke=True, data_roots={'rap': str(rap)})
    for r in sorted(runs, key=lambda r: r.spec.notebook != 'campar'): _finish(r)
    save_status(runs, root, 'paper')
    assert saved_smoke('paper', root) and not saved_smoke('paper', tmp_path/'elsewhere')
    shutil.copytree(root, tmp_path/'copied'); status_path(tmp_path/'copied', 'paper').unlink()
    assert saved_smoke('paper', tmp_path/'copied')   # a rehearsal's runs copied without their status.json: their params say so
    for r in plan(['campar_t2'], 'paper', root=tmp_path/'real', data_roots={'rap': str(rap)}): _finish(r)
    assert not saved_smoke('paper', tmp_path/'real')   # the paper profile's own sizes, no status.json either
    out = render(CAMPAR_T2, root, 'paper', held=held_back(['campar_t2'], 'paper', root), smoke=SMOKE)
    head = out['texts']['md'].splitlines()[2]
    assert head.split('. Profile ', 1)[1].startswith('`paper (smoke)`: a smoke rehearsal of the paper profile') and 'NOT comparable' in head, head
    why = {d['parameter']: d['reason'] for d in out['card']['differs']}
    assert why['arch'] == SMOKE_REASON and why['epochs'] == SMOKE_REASON, why
    assert all(l.endswith(',paper (smoke)') for l in out['texts']['csv'].splitlines()[1:])
    runs = plan(['campar_t2'], 'quick', root=tmp_path/'q')
    save_status(runs, tmp_path/'q', 'quick')
    assert not saved_smoke('quick', tmp_path/'q')


def test_a_place_spelled_another_way_is_the_same_place(tmp_path, monkeypatch):
    "One outputs root reached through a link, a copy of it, a sample root given relative or through a link: the runs stay done (every CFAR run read as stale by its campar_run string; every sample run stale the moment it finished)."
    from har_kit.core import shared_sample_root
    from har_kit.launch import make_status
    from har_kit.reproduce import param_diff, stale_params
    from har_kit.runs import absolute_paths
    q = tmp_path/'q'
    runs = plan(['campar_t2'], 'quick', root=q)
    for r in sorted(runs, key=lambda r: r.spec.notebook != 'campar'): _finish(r)
    assert make_status(runs, 'quick')['counts']['done'] == len(runs)
    (tmp_path/'qlink').symlink_to(q)
    shutil.copytree(q, tmp_path/'q2')
    for root in (tmp_path/'qlink', tmp_path/'q2'):
        again = plan(['campar_t2'], 'quick', root=root)
        assert {str(r.out_dir) for r in again} == {str(r.out_dir).replace(str(q), str(root.resolve())) for r in runs}   # one spelling of the root
        assert {r.name: stale_params(r) for r in again if stale_params(r)} == {}, root
    from har_kit.launch import read_status_runs, save_status, todays_runs
    save_status([r for r in runs if r.seed == 0], q, 'quick')   # the saved plan, read through the link: its seeds and records count
    recs, found = todays_runs(['campar_t2'], 'quick', tmp_path/'qlink', read_status_runs(status_path(q, 'quick')))
    assert set(recs) == {str(r.out_dir) for r in runs} and found == set(recs)
    camp0 = next(r for r in plan(['campar_t2'], 'quick', root=tmp_path/'q2') if r.spec.notebook == 'campar' and r.seed == 0)
    (camp0.out_dir/'done').write_text((camp0.out_dir/'done').read_text() + 'trained again\n')   # the copy's CAM-PAR run is another run now
    cfar0 = next(r for r in plan(['campar_t2'], 'quick', root=tmp_path/'q2') if r.spec.notebook == 'cfar' and r.seed == 0)
    assert stale_params(cfar0) == ['campar_run', 'inputs']   # elsewhere and another run: both said
    sample = tmp_path/'sample'; sample.mkdir(); (tmp_path/'slink').symlink_to(sample)
    monkeypatch.chdir(tmp_path)
    for spelled in ('sample', './sample/', str(tmp_path/'slink'), str(tmp_path/'x'/'..'/'sample')):
        monkeypatch.setenv('HAR_KIT_PA100K_SAMPLE', spelled)
        assert shared_sample_root() == sample.resolve(), spelled
        assert param_diff({'data_root': str(sample)}, {'data_root': spelled}) == [], spelled
        assert absolute_paths({'data_root': spelled}) == {'data_root': str(sample.resolve())}   # `har-kit run`'s folder and record too
    from har_kit.runs import _prepare
    run = tmp_path/'run'; run.mkdir()   # an unfinished run that recorded its dataset through the link (a kit before this one)
    (run/'params.json').write_text(json.dumps({'data_root': str(tmp_path/'slink'), 'epochs': 2}))
    assert _prepare(run, absolute_paths({'data_root': str(tmp_path/'slink'), 'epochs': 2}), False) == 'run'   # resumes


def test_one_status_reads_a_mask_folder_once(tmp_path, monkeypatch):
    "`har-kit status` fingerprinted a mask folder once per Da-HAR run reading it (the paper plan: 18 walks of up to 57k masks per call, and again after every finished run)."
    import har_kit.formats as F
    from har_kit.launch import run_states
    masks = tmp_path/'masks'; (masks/'sub').mkdir(parents=True)
    for n in ('a_0.png', 'sub/b_0.png'): (masks/n).write_bytes(b'png ' + n.encode())
    runs = [r for r in plan(['dahar_t1'], 'quick', root=tmp_path/'o') if r.spec.notebook == 'dahar']
    for r in runs: r.params['mask_dir'] = str(masks); _finish(r)
    walks = []
    real = F._walk_pngs
    monkeypatch.setattr(F, '_walk_pngs', lambda folder: walks.append(folder) or real(folder))
    from har_kit.runs import mask_input
    assert len(runs) > 1 and mask_input('dahar', runs[0].params)['input masks']   # each run reads the folder
    walks.clear()
    run_states(runs)
    assert len(walks) == 1, walks
    with F.fingerprints_once():
        fp = F.masks_fingerprint(masks)
        (masks/'a_0.png').write_bytes(b'edited')
        assert F.masks_fingerprint(masks) == fp   # one snapshot per command
    assert F.masks_fingerprint(masks) != fp and F._FINGERPRINTS.get() is None   # outside it, every call reads the folder
