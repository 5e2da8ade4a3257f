"GPU check in its CPU mode: every step runs at tiny sizes, the report is complete, the notebook runs it plans still fit the notebooks."
import importlib.util, json

import pytest
from pathlib import Path

import torch

from conftest import TempIn

TOOL = Path(__file__).resolve().parents[1]/'tools'/'gpu_check.py'
spec = importlib.util.spec_from_file_location('gpu_check', TOOL)
gpu_check = importlib.util.module_from_spec(spec); spec.loader.exec_module(gpu_check)


def test_cpu_tiny_writes_a_complete_report(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    tmp = tmp_path/'tmp'; tmp.mkdir()
    monkeypatch.setattr(gpu_check, 'tempfile', TempIn(tmp))   # the check's own temporary folders, e.g. the loaders' JPEGs
    try: rc = gpu_check.main(['--cpu-tiny', '--out', str(tmp_path)])
    finally: torch.set_num_threads(threads)
    rep = json.loads((tmp_path/'report.json').read_text())
    assert rc == 0, {k: v for k, v in rep['sections'].items() if 'error' in v}
    assert set(rep['sections']) == {'environment', 'steps', 'configured', 'latency', 'latency_compiled', 'end_to_end', 'loaders', 'pipeline', 'maskrcnn',
                                    'checkpoints', 'projection', 'concurrency', 'concurrency_configured', 'notebooks', 'recipes'}
    # a paper run's route at toy sizes, each method trained and scored with the paper profile's values (no ignored key)
    assert {k: (v['state'], v['ignored'], v['resumed']) for k, v in rep['recipes'].items()} == {'campar': ('done', [], True), 'dahar': ('done', [], True)}
    assert all(v['params']['pipeline'] == 'device' for v in rep['recipes'].values())
    rows = [v for v in rep['steps'].values()]
    assert len(rows) == len(gpu_check.MODELS) * 2 + 1 and all(v['images_per_s'] > 0 for v in rows), rows
    assert {v['model'] for v in rows} == set(gpu_check.MODELS) and {v['amp'] for v in rows} == {'none', 'bf16'}
    assert {'dahar/baseline (eager)', 'dahar/baseline (graph)', 'campar_fusion/plain (graph)'} <= set(rep['latency'])
    parts = [rep['latency'][f'dahar {v}/baseline (graph)'] for v in gpu_check.DAHAR_PARTS]   # where Da-HAR's extra time goes
    full = rep['latency']['dahar/baseline (graph)']
    assert all(full['ops_baseline'] < v['ops'] < full['ops'] for v in parts), (full, parts)   # each part adds blocks, none all
    comp = rep['latency_compiled']['dahar/baseline (compiled, graph)']   # both compiled (dynamo's eager backend on the CPU)
    assert comp['backend'] == 'eager' and comp['ms'] > 0 and comp['ms_baseline'] > 0 and comp['compile_s'] >= 0
    conf = rep['configured']   # the configured step, end to end through the decoded cache where the job asks for it
    assert len(conf) == len(gpu_check.CONFIGURED_JOBS) and all(v['images_per_s'] > 0 for v in conf.values()), conf
    e2e = [v for v in conf.values() if 'e2e_images_per_s' in v]
    assert len(e2e) == sum(j[2] for j in gpu_check.CONFIGURED_JOBS) and all(v['e2e_images_per_s'] > 0 for v in e2e)
    assert all(v['pipeline_input_size'] == v['input_size'] for v in e2e), e2e   # the pipeline feeds the size the step was timed at
    assert set(rep['end_to_end']) == {'campar_baseline', 'campar_fusion', 'dahar'}
    assert all(0 <= v['e2e_host_in_loader'] <= 1 for v in e2e), e2e
    # the same loader preparing batches ahead on a thread: timed beside it, and its batches checked equal first
    assert all(v['e2e_prefetch_images_per_s'] > 0 and v['prefetch_same_batches'] is True and v['prefetch'] == 2 for v in e2e), e2e
    cc = rep['concurrency_configured']['dahar_rap|2']   # two configured Da-HAR trainings at once, each fed by the decoded cache
    assert cc['model'] == 'dahar_rap' and len(cc['images_per_s_each']) == 2 and all(v > 0 for v in cc['images_per_s_each'])
    assert cc['timed'] == 'e2e' and len(list((tmp_path/'workers'/'dahar_rap-2').glob('*.err'))) == 2   # their logs kept with the report
    assert not [k for k, v in rep['sections'].items() if 'state' in v]   # no section left marked running
    assert not [p.name for p in tmp.iterdir() if p.name.startswith('har-kit')]   # no temporary folder of the kit's left behind
    assert rep['concurrency']['2']['images_per_s_total'] > 0 and len(rep['concurrency']['2']['images_per_s_each']) == 2
    assert {v['workers'] for v in rep['loaders'].values() if isinstance(v, dict)} == {0, 1} and rep['maskrcnn']['images_per_s'] > 0
    ck = rep['checkpoints']   # one epoch's files: the training thread waits for the host copy only
    assert set(ck) == {'dahar', 'campar_fusion'} and all(v['megabytes'] > 0 and 0 < v['wait_s'] <= v['background_s'] and
                                                         v['host_lost_s'] >= 0 for v in ck.values()), ck
    p = rep['projection']
    assert p['total_hours'] > 0 and p['total_hours_torchvision_loader'] >= p['total_hours'] and p['runs']
    assert 0 < p['total_hours_prefetch'] <= p['total_hours']   # what-if: each run at the faster of its measured rates
    assert {r['notebook'] for r in p['runs']} == {'masks', 'dahar', 'campar', 'cfar'}
    # the notebook runs the GPU mode would make: every parameter is one the section notebook has
    assert set(rep['notebooks']) == {'masks', 'dahar', 'campar', 'cfar'}
    assert all(not v['dropped'] for v in rep['notebooks'].values()), {k: v['dropped'] for k, v in rep['notebooks'].items()}
    md = (tmp_path/'report.md').read_text()
    assert '| dahar | 2 | 32x32 | bf16 | channels_last | none | sgd |' in md and 'Paper anchor: 1.079' in md and 'Compiled (eager, default mode)' in md and 'GPU-hours as configured' in md
    assert '| campar_fusion | ' in md.split('checkpoint files')[1] and 'the background write takes from it (the checkpoints section)' in md


def test_a_section_shows_as_running_in_the_saved_report_while_it_runs(tmp_path):
    "A run cut by a device's time limit leaves a report saying which section it was in."
    chk = gpu_check.Check(tmp_path, {})
    seen = chk.step('probe', lambda: json.loads((tmp_path/'report.json').read_text())['sections']['probe'])
    assert seen['state'] == 'running' and 'probe running' not in (tmp_path/'report.md').read_text()
    assert set(json.loads((tmp_path/'report.json').read_text())['sections']['probe']) == {'seconds'}
    chk.report['sections']['steps'] = dict(state='running', started='12:00:00'); chk.save()
    assert 'steps running' in (tmp_path/'report.md').read_text()


def test_projection_prices_masks_as_mask_rcnn_passes_and_rap_dahar_at_its_own_size():
    "The projection's workload: a masks run costs its images at the Mask R-CNN rate; Da-HAR on RAP uses the 224x112 rate."
    from har_kit.reproduce import plan
    runs = plan(profile='paper', seeds=1)
    rep = dict(maskrcnn=dict(images_per_s=10.0), steps={
        f'{m}|{a}': dict(model=m, amp=a, channels_last=cl, compile='none', images_per_s=r)
        for m, r in (('campar_baseline', 1000.), ('campar', 1000.), ('campar_fusion', 500.), ('dahar_baseline', 400.),
                     ('dahar', 200.), ('dahar_rap', 400.)) for a in ('none', 'bf16') for cl in (False, True)})
    masks = next(r for r in runs if r.spec.notebook == 'masks' and r.params['dataset'] == 'wider')
    h = gpu_check._run_hours(rep, masks, 'none', False, 0, cached=True)
    assert abs(h['hours'] - (13789 / 10 + gpu_check.FIXED_S) / 3600) < 1e-9
    rap = next(r for r in runs if r.spec.notebook == 'dahar' and r.params['dataset'] == 'rap')
    base = gpu_check._run_hours(rep, rap, 'bf16', True, 0, cached=True)['hours']   # each epoch's checkpoint wait adds to a training run
    ck = dict(rep, checkpoints=dict(dahar=dict(wait_s=2.0, host_lost_s=0.5), campar_fusion=dict(wait_s=1.0, host_lost_s=0.5)))
    assert abs(gpu_check._run_hours(ck, rap, 'bf16', True, 0, cached=True)['hours'] - base - 2.5 * rap.params['epochs'] / 3600) < 1e-9
    cp = next(r for r in runs if r.spec.notebook == 'campar')   # a GPU-bound step: the write's host time is not its loss
    cp_base = gpu_check._run_hours(rep, cp, 'bf16', True, 0, cached=True)['hours']
    n_var = len(cp.params.get('variants') or [cp.spec.variant])
    assert abs(gpu_check._run_hours(ck, cp, 'bf16', True, 0, cached=True)['hours'] - cp_base - 1.0 * cp.params['epochs'] * n_var / 3600) < 1e-9
    assert gpu_check._run_hours(ck, masks, 'none', False, 0, cached=True) == h
    fast = gpu_check._run_hours(rep, rap, 'bf16', True, 0, cached=True)['hours']
    rep['steps'] = {k: dict(v, images_per_s=200.) if v['model'] == 'dahar_rap' else v for k, v in rep['steps'].items()}
    assert gpu_check._run_hours(rep, rap, 'bf16', True, 0, cached=True)['hours'] > 1.5 * fast


def test_wheel_list_is_pinned_and_unique():
    names = [w.split('==')[0] for w in gpu_check.DEVICE_WHEELS]
    assert all('==' in w for w in gpu_check.DEVICE_WHEELS) and len(names) == len(set(names))
    assert {'papermill', 'nbdev', 'fastcore', 'implicit', 'ipykernel'} <= set(names)


def test_merge_keys_runs_sharing_the_gpu_by_model_and_sums_a_sections_seconds(tmp_path):
    "Reports from several leases: older count-keyed concurrency rows re-keyed MODEL|N, later rows win, seconds summed."
    import json
    share = lambda m, tot: dict(processes=3, model=m, images_per_s_each=[tot / 3] * 3, images_per_s_total=tot, compile='none')
    a = dict(started='2026-01-01T00:00:00+0000', finished='2026-01-01T00:10:00+0000', environment=dict(memory_gib=141),
             sections=dict(configured=dict(seconds=100.0)), concurrency_configured={'3': share('dahar_rap', 300.0)})
    b = dict(started='2026-01-02T00:00:00+0000', finished='2026-01-02T00:05:00+0000', environment=dict(memory_gib=141),
             sections=dict(configured=dict(seconds=50.0)), concurrency_configured={'campar_baseline|3': share('campar_baseline', 90.0)})
    paths = [tmp_path/'a.json', tmp_path/'b.json']
    for p, r in zip(paths, (a, b)): p.write_text(json.dumps(r))
    rep = gpu_check.merge(paths, tmp_path/'out')
    assert set(rep['concurrency_configured']) == {'dahar_rap|3', 'campar_baseline|3'}
    assert rep['sections']['configured']['seconds'] == 150.0 and len(rep['merged_from']) == 2
    assert (tmp_path/'out'/'report.md').exists()
    cut = dict(b, finished=None, sections=dict(configured=dict(state='running', started='00:01:00'), latency=dict(seconds=0, skipped='time budget')))
    paths.append(tmp_path/'cut.json'); paths[-1].write_text(json.dumps({k: v for k, v in cut.items() if v is not None}))
    assert gpu_check.merge(paths, tmp_path/'out2')['sections']['configured'] == dict(seconds=150.0)   # a lease cut short: the earlier entry stands
    c = tmp_path/'c.json'; c.write_text(json.dumps(dict(b, environment=dict(name='NVIDIA H100 80GB HBM3'))))
    paths = [tmp_path/'a2.json', c]; paths[0].write_text(json.dumps(dict(a, environment=dict(name='NVIDIA H200'))))
    with pytest.raises(SystemExit, match='measured on NVIDIA H100 80GB HBM3, the reports before it on NVIDIA H200'):
        gpu_check.merge(paths, tmp_path/'mixed')   # one report names one device
    assert not (tmp_path/'mixed').exists()


REFERENCE = Path(__file__).resolve().parents[1]/'outputs'/'reference'/'gpu'/'report.json'   # the committed report


def test_a_lease_that_skipped_or_failed_a_row_keeps_the_measured_one(tmp_path):
    "Merged over the committed report: a row this lease skipped for time or lost to an error leaves the measured row and the projection as they were."
    import json
    ref = json.loads(REFERENCE.read_text())
    env = ref['environment']
    lease = dict(started='2027-01-01T00:00:00+0000', finished='2027-01-01T00:08:00+0000', environment=env, sections={}, configured={
        'dahar|bf16|channels_last|reduce-overhead': dict(model='dahar', amp='bf16', channels_last=True, compile='reduce-overhead', skipped='time budget'),
        'dahar_rap|bf16|channels_last|reduce-overhead': dict(model='dahar_rap', amp='bf16', channels_last=True, compile='reduce-overhead', error='OOM')})
    paths = [tmp_path/'ref.json', tmp_path/'lease.json']
    paths[0].write_text(json.dumps(ref)); paths[1].write_text(json.dumps(lease))
    rep = gpu_check.merge(paths, tmp_path/'out')
    assert rep['configured'] == ref['configured'] and rep['projection']['total_hours'] == pytest.approx(ref['projection']['total_hours'])


def test_a_report_without_every_runs_rate_projects_no_total():
    "One lease's Da-HAR rows alone price Da-HAR's runs only: no total, and the runs without a rate named (not priced at 0 or left out)."
    import json
    ref = json.loads(REFERENCE.read_text())
    alone = dict(environment=ref['environment'], configured={k: v for k, v in ref['configured'].items() if v['model'].startswith('dahar')})
    p = gpu_check.projection(alone)
    assert p['total_hours'] is None and p['unpriced'] and any(u.startswith('masks') for u in p['unpriced'])
    assert len(p['runs']) + len(p['unpriced']) == len(gpu_check.projection(ref)['runs'])
    assert '**no total**' in gpu_check.to_markdown(dict(alone, projection=p))


def test_unknown_sections_are_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: gpu_check.main(['--cpu-tiny', '--out', str(tmp_path), '--only', 'configured', 'latencies'])
    assert e.value.code == 2 and 'unknown section(s) latencies' in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_concurrency_counts_below_one_are_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: gpu_check.main(['--cpu-tiny', '--out', str(tmp_path), '--concurrency-counts', '0'])
    assert e.value.code == 2 and '--concurrency-counts: each count must be at least 1' in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _workers(tmp_path, codes, deadline, procs):
    "Run `gpu_check._run_workers` over python workers that exit with `codes` in start order (None: sleep an hour); `procs` gets the processes."
    import sys
    real = gpu_check.subprocess.Popen
    def spy(*a, **k): procs.append(real(*a, **k)); return procs[-1]
    gpu_check.subprocess.Popen = spy
    try:
        # every worker runs the same command; each claims the first free role by creating its file (O_EXCL: atomic)
        cmd = [sys.executable, '-c', 'import os, sys, time\n'
               'def claim(i):\n'
               '    try: os.close(os.open(os.path.join(sys.argv[1], str(i)), os.O_CREAT | os.O_EXCL)); return True\n'
               '    except FileExistsError: return False\n'
               'i = next(i for i in range(99) if claim(i))\n'
               'codes = ' + repr(codes) + '; print("RESULT", i, flush=True); c = codes[i]\n'
               'time.sleep(3600) if c is None else sys.exit(c)', str(tmp_path/'roles')]
        (tmp_path/'roles').mkdir()
        return gpu_check._run_workers(cmd, len(codes), None, deadline, tmp_path)
    finally: gpu_check.subprocess.Popen = real


def test_one_failing_worker_stops_the_others(tmp_path):
    "A worker that dies (before the barrier, say) stops its siblings instead of leaving them on the GPU; its stderr is named."
    import time
    procs = []
    with pytest.raises(RuntimeError, match=r'worker \d of 2 failed \(exit 3\); the others were stopped'):
        _workers(tmp_path, [None, 3], time.time() + 3600, procs)   # the first sleeps an hour: only the stop ends it
    assert sorted(p.returncode for p in procs) == sorted([3, -9])   # the sleeper killed, nothing left running


def test_workers_past_the_deadline_are_stopped(tmp_path):
    "A worker still running at the deadline (a hung compile, a barrier never met) is stopped; so is every other one."
    with pytest.raises(RuntimeError, match=r"[12] of 2 workers still running at the section's deadline; stopped"):
        _workers(tmp_path, [0, None], 0, procs := [])   # a deadline already past; the second would sleep an hour
    assert -9 in [p.returncode for p in procs] and all(p.returncode is not None for p in procs)


def test_workers_that_all_succeed_return_their_output(tmp_path):
    import time
    outs = _workers(tmp_path, [0, 0, 0], time.time() + 3600, procs := [])
    assert sorted(o.split()[1] for o in outs) == ['0', '1', '2'] and all(p.returncode == 0 for p in procs)


def test_same_batches_tells_a_different_loader():
    "The device check of prefetching would notice batches that are not the loader's own (it is not true by construction)."
    import numpy as np
    from har_kit.pipeline import DeviceLoader
    imgs = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
    aug = lambda x, m, g: {'image': x.float() + torch.rand(x.shape, generator=g)}
    ld = DeviceLoader(dict(images=imgs, masks=None, dir='memory'), np.zeros((6, 1)), aug, 2, shuffle=True)
    ahead = gpu_check.prefetching(ld, 2)
    assert ahead.prefetch == 2 and ld.prefetch == 0 and gpu_check.same_batches(ld, ahead, 3)
    other = DeviceLoader(dict(images=imgs, masks=None, dir='memory'), np.zeros((6, 1)), lambda x, m, g: {'image': x.float()}, 2, shuffle=True)
    assert not gpu_check.same_batches(ld, other, 3)


def test_prefetch_what_if_takes_only_a_checked_faster_rate():
    "The projection's prefetch what-if prices a run at the prepared-ahead rate only where it was faster and its batches were the loader's own."
    from har_kit.reproduce import plan
    rap = next(r for r in plan(profile='paper', seeds=1) if r.spec.notebook == 'dahar' and r.params['dataset'] == 'rap')
    row = dict(model='dahar_rap', amp='bf16', channels_last=True, compile='reduce-overhead', images_per_s=2000.,
               e2e_images_per_s=1000., e2e_prefetch_images_per_s=1500., prefetch_same_batches=True)
    hours = lambda r, p: gpu_check._run_hours(dict(configured={'x': r}), rap, 'bf16', True, 0, cached=True,
                                              compile_mode='reduce-overhead', prefetch=p)['hours']
    assert hours(row, True) < hours(row, False) == hours(dict(row, prefetch_same_batches=False), True)   # differing batches: not taken
    assert hours(dict(row, e2e_prefetch_images_per_s=500.), True) == hours(row, False)                 # slower: the plain rate
    assert gpu_check._measured_prefetch(dict(configured={'x': row})) and not gpu_check._measured_prefetch(
        dict(configured={'x': dict(row, prefetch_same_batches=False)}))


def test_a_record_section_comes_whole_from_one_lease(tmp_path):
    "The pipeline section is one record, not rows: a lease that measured it replaces an earlier 'not in this checkout' whole (a merge kept that note beside the rates)."
    import json
    env = dict(name='NVIDIA H200')
    none = dict(available=False, note='har_kit.pipeline is not in this checkout')
    measured = dict(available=True, device='cuda', campar_images_per_s=12580.7)
    leases = [dict(started=f'2026-01-0{i}T00:00:00+0000', finished=f'2026-01-0{i}T00:05:00+0000', environment=env, pipeline=p)
              for i, p in ((1, none), (2, measured), (3, none))]
    paths = [tmp_path/f'{i}.json' for i in range(3)]
    for p, r in zip(paths, leases): p.write_text(json.dumps(r))
    assert gpu_check.merge(paths[:2], tmp_path/'a')['pipeline'] == measured
    assert gpu_check.merge(paths, tmp_path/'b')['pipeline'] == measured   # a later lease without it keeps the measured record
