"tools/timing.py, the maintainers' collector of measured times: --help writes nothing; a partial plan adds its own row."
import importlib.util, json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1]/'tools'/'timing.py'


@pytest.fixture
def timing(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location('timing_tool', TOOL)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    out = tmp_path/'outputs'; (out/'reference').mkdir(parents=True)
    for k, v in dict(ROOT=tmp_path, OUT=out, REF=out/'reference', STORE=out/'reference'/'timing.json',
                     TABLE=out/'reference'/'timing.md').items(): monkeypatch.setattr(mod, k, v)
    return mod


def _plan(out, profile, tables, start):  # one finished run per table: status.json, timing.json, env.json
    runs = []
    for i, t in enumerate(tables):
        d = out/profile/'runs'/f'{t}-{start}'; d.mkdir(parents=True)
        (d/'timing.json').write_text(json.dumps(dict(total_seconds=10.0, kernel_start_seconds=1.0, imports_seconds=2.0)))
        (d/'env.json').write_text(json.dumps(dict(time=f'2026-12-06T0{start}:00:{10 * i:02d}+00:00', cpu_count=2)))
        (d/'done').write_text('')
        runs.append(dict(out_dir=str(d), rows=[f'{t}/row']))
    (out/profile/'status.json').write_text(json.dumps(dict(profile=profile, runs=runs)))


def test_help_writes_nothing(timing, capsys):
    with pytest.raises(SystemExit) as e: timing.main(['--help'])
    assert e.value.code == 0 and 'usage: python tools/timing.py' in capsys.readouterr().out
    assert not timing.STORE.exists() and not timing.TABLE.exists()
    with pytest.raises(SystemExit): timing.main(['--bogus'])
    assert not timing.STORE.exists()


def test_a_partial_plan_keeps_the_full_profiles_row(timing):
    _plan(timing.OUT, 'quick', ['dahar_t1', 'campar_t2'], 1)
    timing.main([])
    full = [r['job'] for r in json.loads(timing.STORE.read_text())['rows']]
    assert len(full) == 1 and '2 paper tables' in full[0], full
    _plan(timing.OUT, 'quick', ['campar_t2'], 2)   # later, `har-kit reproduce campar_t2` alone
    timing.main([])
    jobs = [r['job'] for r in json.loads(timing.STORE.read_text())['rows']]
    assert full[0] in jobs and any('1 paper tables' in j for j in jobs) and len(jobs) == 2, jobs


def test_a_timed_command_counts_only_the_runs_it_executed(timing):
    "`make studies` after `make main` reuses main's runs: its row counts the runs it executed and says the others were reused."
    import os, sys
    _plan(timing.OUT, 'quick', ['dahar_t1'], 1)   # finished by an earlier command
    for p in timing.OUT.rglob('*'): os.utime(p, (0, 0))   # long before: no clock tick decides which runs count
    new = timing.OUT/'quick'/'runs'/'new'
    script = (f"import json, pathlib; d = pathlib.Path({str(new)!r}); d.mkdir(parents=True); (d/'done').write_text(''); "
              "(d/'timing.json').write_text(json.dumps(dict(total_seconds=5.0))); "
              "(d/'env.json').write_text(json.dumps(dict(time='2026-12-06T03:00:00+00:00', cpu_count=2)))")
    rc, row = timing.time_command([sys.executable, '-c', script])
    assert rc == 0 and '; 1 runs it executed (runs an earlier command finished are reused, not counted), 5 s summed' in row['detail'], row
