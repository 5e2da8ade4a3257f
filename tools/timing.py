#!/usr/bin/env python3
"""Measured timings -> outputs/reference/timing.md (README includes it; no timing in README is typed by hand).

    python tools/timing.py                          # collect what the run directories and reference files measured
    python tools/timing.py time -- make test        # run a command, record its wall time, then collect
    python tools/timing.py --fresh                  # forget earlier rows first
    python tools/timing.py --help                   # this, and nothing written

Sources, each row naming its own:
- a command run through `time`: wall seconds from start to exit, and the runs it executed (the run directories whose
  `timing.json` it wrote), with their seconds summed;
- `outputs/<profile>/status.json` (written by each `har-kit reproduce`): the runs of the profile's last plan, their
  seconds summed over runs (from each run's `timing.json`) and the span from the first run's start (its `env.json`)
  to the last run's end (left out when some of them ran in an earlier invocation);
- `outputs/reference/use/metrics.json`: the training loop's seconds of each model there (the model README uses);
- `outputs/reference/gpu/report.json`: the GPU check from start to finish.
Rows live in `outputs/reference/timing.json`, one per job: a new measurement replaces its job's row, rows whose source
is gone stay (a clone without run directories keeps the reference's numbers). Standard library only.
"""
import datetime, json, os, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT/'outputs'
REF = OUT/'reference'
STORE, TABLE = REF/'timing.json', REF/'timing.md'


def _load(p):
    try: return json.loads(Path(p).read_text())
    except (OSError, ValueError): return None


def _ts(s):  # ISO time -> epoch seconds
    return datetime.datetime.fromisoformat(s.replace('Z', '+00:00').replace('+0000', '+00:00')).timestamp()


def _day(t): return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%d')


def _rel(p): return str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(ROOT) else str(p)


def _cpu_model():  # this machine's processor, as the runs' env.json name it (Linux: /proc/cpuinfo), or ''
    try: return next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '')
    except OSError: return ''


def _machine(env):  # a run's env.json
    dev, model = [d for d in env.get('devices', []) if d != 'cpu'], (env.get('cpu') or {}).get('model')
    return f"{model + ', ' if model else ''}{env.get('cpu_count')} CPUs" + (f", {', '.join(dev)}" if dev else '') + \
        (f", threads per run: {env['threads']}" if env.get('threads') else '')


def _run(run_dir):  # one finished run: (start, seconds, timing, env) or None
    run_dir = Path(run_dir)
    t, env = _load(run_dir/'timing.json'), _load(run_dir/'env.json')
    if not (t and env and t.get('total_seconds') and (run_dir/'done').exists()): return None
    return _ts(env['time']), t['total_seconds'], t, env


def _runs_detail(runs, what=''):  # [(start, seconds, timing, env)], words after the count -> text
    s = lambda k: sum(r[2].get(k) or 0 for r in runs)
    tables = sum(1 for r in runs if (r[3].get('notebook') or {}).get('section') == 'tables')   # `--dry-run` counts the plan's runs only
    return (f"{len(runs)} runs{what}{' (the tables run included)' if tables == 1 else f' ({tables} tables runs included)' if tables else ''}, "
            f"{s('total_seconds'):.0f} s summed over runs (kernel start {s('kernel_start_seconds'):.0f} s, "
            f"first imports {s('imports_seconds'):.0f} s)")


def from_profiles():
    "One row per `outputs/<profile>/status.json`, named by the tables of its last plan: its finished runs, summed, and their span."
    rows = []
    for st_path in sorted(p for p in OUT.rglob('status.json') if REF not in p.parents):
        st = _load(st_path) or {}
        runs = [r for r in (_run(rec['out_dir']) for rec in st.get('runs', [])) if r]
        if not runs: continue
        start, end = min(r[0] for r in runs), max(r[0] + r[1] for r in runs)
        summed = sum(r[1] for r in runs)
        one_go = end - start <= summed + 60          # else some runs finished in an earlier invocation
        smoke = ' --smoke' if 'smoke' in st_path.relative_to(OUT).parts else ''
        tables = {row.split('/')[0] for rec in st.get('runs', []) for row in rec.get('rows', [])}
        paper = {t for t in tables if re.fullmatch(r'(dahar|campar)_t\d+', t)}   # the papers' tables; the rest are studies
        what = ' + '.join(f'{n} {w}' for n, w in ((len(paper), 'paper tables'), (len(tables - paper), 'studies')) if n)
        rows.append(dict(job=f"`har-kit reproduce --profile {st.get('profile', st_path.parent.name)}{smoke}`, a plan of {what}",
                         seconds=round(end - start, 1) if one_go else None,
                         detail=('first run start to last run end; ' if one_go else 'runs of several invocations: no span; ')
                         + _runs_detail(runs),
                         machine=_machine(runs[0][3]), date=_day(start), source=_rel(st_path)))
    return rows


def from_use():
    "The training loop's seconds of each model under outputs/reference/use (metrics.json + env.json)."
    m, env = _load(REF/'use'/'metrics.json'), _load(REF/'use'/'env.json')
    if not (m and env): return []
    return [dict(job=f"training {name} (outputs/reference/use)", seconds=round(e['seconds'], 1),
                 detail=f"training loop (metrics.json `seconds`): {e.get('dataset')}, {e.get('epoch')} epochs, "
                        f"{e.get('params_M', 0):.2f}M parameters; the model README uses",
                 machine=_machine(env), date=_day(_ts(env['time'])), source='outputs/reference/use/metrics.json')
            for name, e in m.items() if not name.startswith('_') and e.get('seconds')]


def from_gpu():
    "The GPU check from start to finish (outputs/reference/gpu/report.json)."
    r = _load(REF/'gpu'/'report.json')
    if not (r and r.get('started') and r.get('finished')): return []
    env = r.get('environment', {})
    steps = ', '.join(f"{k} {v['seconds']:.0f} s" for k, v in r.get('sections', r.get('steps', {})).items() if v.get('seconds') is not None)
    runs = r.get('merged_from') or [r]   # a merged report: its leases' own durations, not the hours between them
    secs = sum(_ts(m['finished']) - _ts(m['started']) for m in runs if m.get('started') and m.get('finished'))
    what = (f"{len(runs)} partial runs (leases) merged, their durations summed (a section can run in several)" if r.get('merged_from')
            else 'start to finish')
    made = f"torch {env.get('torch')}, torchvision {env.get('torchvision')}"   # the device image's, not the pins
    rows = [dict(job='`make gpu-check`', seconds=round(secs, 1),
                 detail=f"{what}; {made}; {steps}", machine=f"{env.get('name', r.get('mode'))}, {env.get('cpus')} CPUs",
                 date=_day(_ts(r['started'])), source='outputs/reference/gpu/report.json')]
    p = r.get('projection') or {}
    if p.get('total_hours'):   # the paper profile priced from the check's measured rates: a projection, said so
        rows.append(dict(job='`har-kit reproduce --profile paper` (projected, not run)', seconds=round(p['total_hours'] * 3600, 1),
                         detail=f"{p['total_hours']:.1f} GPU-hours as configured: {len(p.get('runs') or [])} runs, one seed, priced "
                                f"from the GPU check's measured rates ({made}, the rates of the commits its report names: its "
                                "note says how and what they leave out)",
                         machine=f"{env.get('name', r.get('mode'))}, {env.get('cpus')} CPUs", date=_day(_ts(r['finished'])),
                         source='outputs/reference/gpu/report.json'))
    return rows


def time_command(cmd):
    "Run `cmd` in the repository, record its wall time and the runs it executed; return its exit status."
    t0, load = time.time(), os.getloadavg()[0]
    rc = subprocess.call(cmd, cwd=ROOT)
    wall = time.time() - t0
    runs = [r for r in (_run(p.parent) for p in OUT.rglob('timing.json') if REF not in p.parents and p.stat().st_mtime >= t0) if r]
    try: commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError: commit = ''
    row = dict(job=f"`{' '.join(cmd)}`", seconds=round(wall, 1),
               detail=f"wall, start to exit (status {rc}" + (f", commit {commit})" if commit else ')') + (f"; {_runs_detail(runs, ' it executed (runs an earlier command finished are reused, not counted)')}" if runs else ''),
               machine=f"{_cpu_model() + ', ' if _cpu_model() else ''}{os.cpu_count()} CPUs, load {load:.1f} at start", date=_day(t0),
               source='tools/timing.py time')
    return rc, row


def render(rows):
    "The Markdown table of `rows`: timed commands first, then what run directories and reports measured."
    order = lambda r: (r['source'] != 'tools/timing.py time', r['job'])
    out = ['| job | seconds | what was measured | machine | date | source |', '|---|---|---|---|---|---|']
    for r in sorted(rows, key=order):
        secs = '' if r['seconds'] is None else f"{r['seconds']:,.0f}"
        out.append(f"| {r['job']} | {secs} | {r['detail']} | {r['machine']} | {r['date']} | `{r['source']}` |")
    return '\n'.join(out) + '\n'


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog='python tools/timing.py', description=__doc__.split('\n\n')[0],
                                 epilog='It rewrites outputs/reference/timing.json and timing.md (README includes them at the next '
                                        '`python tools/nb2readme.py`); tools/refresh_reference.sh runs it after regenerating the references.')
    ap.add_argument('--fresh', action='store_true', help='forget the stored rows first')
    sub = ap.add_subparsers(dest='cmd')
    t = sub.add_parser('time', help='run a command, record its wall time, then collect: time -- COMMAND [ARGS...]')
    t.add_argument('command', nargs=argparse.REMAINDER, help='the command to time, after --')
    a = ap.parse_args(argv)
    rc, new = 0, []
    if a.cmd == 'time':
        cmd = a.command[1:] if a.command[:1] == ['--'] else a.command
        if not cmd: ap.error('time needs a command: python tools/timing.py time -- COMMAND [ARGS...]')
        rc, row = time_command(cmd)
        new.append(row)
    before = {} if a.fresh else {r['job']: r for r in (_load(STORE) or {}).get('rows', [])}
    plans, files = from_profiles(), from_use() + from_gpu()
    # a reference file's rows are what it holds now; a profile's plan replaces the row of the same plan only (a partial plan,
    # `har-kit reproduce campar_t2`, adds its own row beside the full profile's)
    stored = {k: r for k, r in before.items() if r['source'] not in {d['source'] for d in files}}
    for r in plans + files + new: stored[r['job']] = r
    rows = sorted(stored.values(), key=lambda r: r['job'])
    STORE.write_text(json.dumps(dict(rows=rows), indent=1) + '\n')
    TABLE.write_text(render(rows))
    changed = [r['job'] for r in rows if before.get(r['job']) != r]
    print(f'{_rel(TABLE)}: {len(rows)} rows' + (f'; new or re-measured: {"; ".join(changed)}' if changed else '; none changed'))
    return rc


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
