"""The paper route rehearsed: `har-kit reproduce --profile paper --smoke` executes every run the paper profile plans
(masks steps included, box masks since COCO weights cannot download in CI; RAP on 2 of its 5 partitions) through
papermill on CPU, on tiny datasets
written in the published layouts, and renders the five paper tables from those runs."""
import json, os, subprocess, sys, time
from pathlib import Path

from har_kit.core import load_json
from har_kit.formats import write_fixture
from har_kit.reproduce import plan
from har_kit.results import PAPER_TABLES
from har_kit.runs import run_notebook

EXE = str(Path(sys.executable).parent/'har-kit')


def test_paper_smoke_rehearsal(tmp_path):
    roots = {kind: write_fixture(kind, tmp_path/'data'/kind) for kind in ('wider', 'rap', 'pa100k')}
    args = [a for k, v in roots.items() for a in ('--data-root', f'{k}={v}')]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'MPLBACKEND': 'agg'}
    t0 = time.time()
    r = subprocess.run([EXE, 'reproduce', '--profile', 'paper', '--smoke', '--out', str(tmp_path/'out'), *args],
                       capture_output=True, text=True, env=env)
    seconds = time.time() - t0
    status = json.loads((tmp_path/'out'/'smoke'/'paper'/'status.json').read_text())
    planned = plan(profile='paper', data_roots=roots, root=tmp_path/'out'/'smoke', smoke=True)
    t = status['seconds']
    print(f'paper smoke rehearsal: {len(planned)} runs in {seconds:.0f}s (summed over runs: {t["total"]:.0f}s, kernel '
          f'start {t["kernel_start"]:.0f}s, first imports {t["imports"]:.0f}s)')
    assert r.returncode == 0, r.stderr[-3000:] + json.dumps([x for x in status['runs'] if x['state'] != 'done'])[:3000]
    assert status['counts']['done'] == len(status['runs']) == len(planned)
    assert {x['notebook'] for x in status['runs']} == {'masks', 'dahar', 'campar', 'cfar'}
    tables = tmp_path/'out'/'smoke'/'paper'/'tables'
    for key in PAPER_TABLES:
        rows = (tables/f'{key}.md').read_text().split('**Protocol card**')[0].split('|---|')[-1]
        assert not any(why in rows for why in ('no run', 'failed:', 'not done')), (key, rows)   # every cell filled
    t2 = (tables/'campar_t2.md').read_text().split('**Protocol card**')[0]
    for row in ('| baseline |', '| + CAM-PAR + fusion + CFAR |'):   # both selection modes, labelled, CFAR included
        ours = [l for l in t2.splitlines() if l.startswith(row) and '| ours' in l]
        assert any('selected on test' in l for l in ours) and any('held-out' in l for l in ours), (row, ours)

    # batch runs skip the demonstration cells; executing one run again with them must give the same metrics
    one = next(p for p in planned if p.spec.notebook == 'dahar')
    again = run_notebook(one.spec.notebook, one.params, tmp_path/'with-demos', progress=False, threads=one.threads)
    assert load_json(one.out_dir/'env.json')['demos'] is False and load_json(again/'env.json')['demos'] is True
    assert _untimed(load_json(again/'metrics.json')) == _untimed(load_json(one.out_dir/'metrics.json'))


def _untimed(m):
    "Metrics without wall-clock entries (any key naming seconds)."
    if isinstance(m, dict): return {k: _untimed(v) for k, v in m.items() if 'second' not in k}
    if isinstance(m, list): return [_untimed(v) for v in m]
    return m
