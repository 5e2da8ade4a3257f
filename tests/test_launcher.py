"""`--launcher submitit` on submitit's local executor (SLURM's stand-in on CPU): a plan with a dependency runs to
completion, a preempted or cancelled job resumes from its checkpoint, and resubmitting never runs a run twice."""
import signal, sys, time
from pathlib import Path

import cloudpickle

from har_kit.core import atomic_write, load_json
from har_kit.launch import job_file, make_executor, submit
from har_kit.reproduce import plan

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the jobs' processes cannot import this test file


def _log(r, text):
    with open(r.out_dir.parents[2]/'log.txt', 'a') as f: f.write(f'{r.name} {text} {time.time():.3f}\n')   # <root>/<profile>/


def _quick(r, dev):  # a cheap run: logs its start and end, then `done`
    r.out_dir.mkdir(parents=True, exist_ok=True)
    _log(r, 'start'); time.sleep(0.2); _log(r, 'end')
    (r.out_dir/'metrics.json').write_text('{}'); (r.out_dir/'done').write_text('')


def _gated(r, dev, n=6):  # checkpoints each step and resumes from it; from step 2 on it waits for `release`: it cannot finish before the test says
    r.out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = r.out_dir/'ckpt'
    start = int(ckpt.read_text()) if ckpt.exists() else 0
    _log(r, f'resume-from {start}')
    for i in range(start, n):
        while i >= 2 and not (r.out_dir/'release').exists(): time.sleep(0.05)
        _log(r, f'step {i}')
        with atomic_write(ckpt) as f: f.write(str(i + 1))
    (r.out_dir/'metrics.json').write_text('{}'); (r.out_dir/'done').write_text('')


def _lines(root):
    return [l.split()[:-1] for l in (Path(root)/'quick'/'log.txt').read_text().splitlines()]


def _two(root):  # a CAM-PAR run and the CFAR run that needs it
    return [r for r in plan(['campar_t1'], 'quick', root=root) if r.spec.notebook in ('campar', 'cfar')
            and r.params['dataset'] == 'rap' and r.seed == 0]


def _executor(root): return make_executor(root/'jobs', cluster='local', gpus=0, time=10)


def _preempt(job):  # SIGUSR2 to the job's task processes (children of the local job's controller)
    import psutil
    for p in psutil.Process(int(job.job_id)).children(): p.send_signal(signal.SIGUSR2)


def _wait_until(cond, timeout=240):   # generous: a loaded machine must not fail it, a hang still does
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, 'timed out'
        time.sleep(0.1)


def test_plan_with_dependency_runs_to_completion_once(tmp_path):
    runs = _two(tmp_path)
    assert runs[1].deps == [runs[0].out_dir]
    acts = submit(runs, _executor(tmp_path), run_fn=_quick)
    assert [a['action'] for a in acts] == ['submit', 'submit'] and acts[1]['after'] == [acts[0]['job_id']]
    for a in acts: a['job'].result()
    assert all((r.out_dir/'done').exists() and load_json(job_file(r.out_dir))['job_id'] for r in runs)
    log = _lines(tmp_path)
    assert [l[1] for l in log] == ['start', 'end', 'start', 'end'] and log[0][0] == runs[0].name  # CFAR after CAM-PAR
    again = submit(runs, _executor(tmp_path), run_fn=_quick)
    assert [a['action'] for a in again] == ['done', 'done'] and len(_lines(tmp_path)) == 4   # nothing runs twice


def test_preempted_job_is_requeued_and_resumes(tmp_path):
    "Preempted while held at the gate (it cannot finish first); released only once the requeued job has started."
    run = _two(tmp_path)[:1]
    job = submit(run, _executor(tmp_path), run_fn=_gated)[0]['job']
    ckpt = run[0].out_dir/'ckpt'
    _wait_until(lambda: ckpt.exists() and int(ckpt.read_text()) >= 2)     # held at the gate
    _preempt(job)      # what SLURM does on preemption: submitit's checkpoint hook requeues the run
    _wait_until(lambda: sum(l[1] == 'resume-from' for l in _lines(tmp_path)) == 2)   # the requeued job is running
    (run[0].out_dir/'release').touch()
    job.result()
    log = _lines(tmp_path)
    resumes = [int(l[2]) for l in log if l[1] == 'resume-from']
    steps = [int(l[2]) for l in log if l[1] == 'step']
    assert len(resumes) == 2 and resumes[0] == 0 and resumes[1] >= 2
    assert sorted(set(steps)) == list(range(6)) and len(steps) <= 7   # at most the interrupted step is redone
    assert (run[0].out_dir/'done').exists()


def test_cancelled_job_is_resubmitted_and_a_queued_one_is_not(tmp_path):
    run = _two(tmp_path)[:1]
    ex = _executor(tmp_path)
    job = submit(run, ex, run_fn=_gated)[0]['job']
    ckpt = run[0].out_dir/'ckpt'
    _wait_until(lambda: ckpt.exists() and int(ckpt.read_text()) >= 2)     # now held at the gate: it cannot finish
    assert submit(run, ex, run_fn=_gated)[0]['action'] == 'queued'   # still running: not submitted again
    job.cancel()                                                     # killed (no requeue)
    _wait_until(lambda: job.done())
    assert not (run[0].out_dir/'done').exists()
    (run[0].out_dir/'release').touch()                               # the next job may finish
    again = submit(run, ex, run_fn=_gated)
    assert again[0]['action'] == 'submit' and again[0]['job_id'] != str(job.job_id)
    again[0]['job'].result()
    resumes = [int(l[2]) for l in _lines(tmp_path) if l[1] == 'resume-from']
    assert resumes[0] == 0 and resumes[-1] >= 2 and (run[0].out_dir/'done').exists()


def test_dry_run_shows_jobs_and_dependencies(tmp_path):
    runs = _two(tmp_path)
    acts = submit(runs, _executor(tmp_path), profile='quick', root=tmp_path, dry_run=True)
    assert [a['action'] for a in acts] == ['submit', 'submit', 'submit']
    assert acts[1]['after'] == [f'<{runs[0].name}>'] and len(acts[2]['after']) == 2   # the tables job: after all
    assert not any(r.out_dir.exists() for r in runs)


def test_a_preempted_job_interrupts_its_kernel_before_terminating_it(monkeypatch):
    "submitit's checkpoint (preemption, time limit): SIGINT to the kernels first (`stop_runs`: the run is recorded "
    "interrupted, a checkpoint write in flight lands), then the children end; it used to SIGTERM the kernel at once."
    import har_kit.launch as L
    from submitit.helpers import DelayedSubmission
    calls = []
    monkeypatch.setattr(L, 'stop_runs', lambda *a, **k: calls.append('stop_runs'))
    monkeypatch.setattr(L, '_stop_children', lambda *a, **k: calls.append('_stop_children'))
    job = L.RunJob(run=None)
    assert isinstance(job.checkpoint(), DelayedSubmission) and calls == ['stop_runs', '_stop_children']
