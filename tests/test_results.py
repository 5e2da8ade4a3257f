"Paper tables as data: transcribed cells match the paper text; rendering never turns a missing run into a number."
import re
from pathlib import Path

import pytest

from har_kit.core import save_json
from har_kit.results import CAMPAR_T1, CAMPAR_T2, DAHAR_T1, DAHAR_T2, DAHAR_T3, TABLES, render, row_runs, run_layout, run_path

PAPERS = Path(__file__).resolve().parents[1].parent/'shared'/'papers'
needs_papers = pytest.mark.skipif(not PAPERS.exists(), reason=f'paper texts not found at {PAPERS} (they live beside the clone)')


def _line(paper, start):
    "The tab-separated cells of the first line of a paper that starts with `start`, tags stripped."
    for l in (PAPERS/paper).read_text().splitlines():
        if l.startswith(start): return [re.sub(r'<[^>]+>', '', c).strip() for c in l.split('\t')]
    raise AssertionError(f'{start!r} not in {paper}')


def _num(s): return None if s in ('-', '') else float(s)


@needs_papers
@pytest.mark.parametrize('row_key,start', [('dahar', 'Da-HAR (Ours)\t<b>97'), ('diaa', 'DIAA'), ('vespa', 'VeSPA <i>BMVC'), ('rcnn', 'R-CNN')])
def test_dahar_t1_matches_paper(row_key, start):
    row = next(r for r in DAHAR_T1.rows if r.key == row_key)
    assert [row.reported[c] for c in DAHAR_T1.columns] == [_num(c) for c in _line('da-har_aaai2020.md', start)[1:16]]


@needs_papers
def test_dahar_t2_and_campar_t1_match_paper():
    cells = _line('da-har_aaai2020.md', 'WPAL')
    row = next(r for r in DAHAR_T2.rows if r.key == 'wpal')
    assert [row.reported[c] for c in DAHAR_T2.columns] == [cells[1]] + [_num(c) for c in cells[2:7]]
    cells = _line('cam-par_unist2023.md', 'DAFL [5]')
    row = next(r for r in CAMPAR_T1.rows if r.key == 'dafl')
    assert [row.reported[c] for c in CAMPAR_T1.columns] == [cells[1]] + [_num(c) for c in cells[2:8]]


def test_ablation_numbers_follow_the_text():
    assert [r.reported['full'] for r in DAHAR_T3.rows] == [86.2, 86.5, 86.6, 86.8, 87.1, 87.3, 88.0]
    assert [r.reported['mA'] for r in CAMPAR_T2.rows] == [78.48, 79.31, 79.54, 81.18, 82.08]


def test_shared_runs_and_unique_layout():
    lay = run_layout()
    assert len(set(lay.values())) == len(lay)
    t1 = next(r for r in DAHAR_T1.rows if r.key == 'dahar').run
    t3 = next(r for r in DAHAR_T3.rows if r.key == 'dahar_ignore0').run
    assert t1.key() == t3.key()


def test_missing_is_missing_never_zero(tmp_path):
    out = render(CAMPAR_T2, tmp_path, 'quick')
    assert out['cells'] == {}
    assert '| missing | missing |' in out['texts']['md'] and 'NOT comparable' in out['texts']['md']
    # one seed of one row: its cells filled, the rest still missing, sd absent with n=1
    spec = CAMPAR_T2.rows[0].run
    d = run_path(tmp_path, 'quick', spec, 0)
    save_json({'baseline': {'mA': 0.7, 'f1': 0.6}}, d/'metrics.json')
    assert render(CAMPAR_T2, tmp_path, 'quick')['cells'] == {}, 'a run without done must not count'
    (d/'done').write_text('')
    out = render(CAMPAR_T2, tmp_path, 'quick')
    assert out['cells'][('baseline', 'mA')]['mean'] == pytest.approx(70.0)
    assert 'ours (n=1)' in out['texts']['md'] and out['texts']['md'].count('| missing') == 8
    for ext in ('md', 'csv', 'tex'): assert (tmp_path/'quick'/'tables'/f'campar_t2.{ext}').exists()
