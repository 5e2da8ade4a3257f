"The reproduce runner: the paper protocol dry-runs, failures are isolated, an interrupted reproduce resumes."
import subprocess, sys
from pathlib import Path

from har_kit.reproduce import PROFILES, execute, missing_roots, plan
from har_kit.runs import RunFailed

EXE = str(Path(sys.executable).parent/'har-kit')


def test_paper_dry_run_lists_full_protocol():
    r = subprocess.run([EXE, 'reproduce', '--profile', 'paper', '--dry-run', '--data-root', 'wider=/data/WIDER'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'arch="resnet101"' in r.stdout and 'arch="resnet50"' in r.stdout and 'weights="DEFAULT"' in r.stdout
    assert 'data_root="/data/WIDER"' in r.stdout and 'needs --data-root for: pa100k, rap' in r.stdout
    assert r.stdout.count('[cfar]') == 2


def test_paper_without_roots_is_refused_with_names(tmp_path):
    r = subprocess.run([EXE, 'reproduce', 'campar_t2', '--profile', 'paper', '--out', str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and 'rap=PATH' in r.stderr


def test_interrupted_reproduce_resumes(tmp_path):
    runs = plan(['campar_t2'], 'quick', seeds=2, root=tmp_path)
    calls = []
    def interrupted(r, dev):
        calls.append(r.name)
        if len(calls) == 4: raise KeyboardInterrupt  # the machine goes away mid-run
        r.out_dir.mkdir(parents=True, exist_ok=True); (r.out_dir/'done').write_text('')
    try: execute(runs, run_fn=interrupted, progress=False)
    except KeyboardInterrupt: pass
    assert len(calls) == 4
    second = []
    status = execute(runs, run_fn=lambda r, dev: (second.append(r.name), r.out_dir.mkdir(parents=True, exist_ok=True),
                                                  (r.out_dir/'done').write_text('')), progress=False)
    assert len(status['skipped']) == 3 and len(second) == len(runs) - 3 == len(status['done'])
    assert calls[3] in second   # the interrupted run is redone


def test_sample_profile_only_plans_pa100k_rows():
    runs = plan(profile='sample')
    assert runs and {r.params['dataset'] for r in runs} == {'pa100k'}
    assert all(r.params.get('data_root') for r in runs) or missing_roots(runs) == ['pa100k']
