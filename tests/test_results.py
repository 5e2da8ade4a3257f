"Paper tables as data: transcribed cells match the paper text; rendering never turns a missing run into a number."
import re
from pathlib import Path

import pytest

from har_kit.core import KitError, load_json, save_json
from har_kit.metrics import metrics_entry
from har_kit.render import paired_interval, render
from har_kit.results import (CAMPAR_T1, CAMPAR_T2, DAHAR_T1, DAHAR_T2, DAHAR_T3, TABLES, WIDER_COLUMNS, row_runs, run_path,
                              spec_dir)

PAPERS = Path(__file__).resolve().parents[1].parent/'shared'/'papers'
needs_papers = pytest.mark.shared('papers')


def _line(paper, start):
    "The tab-separated cells of the first line of a paper that starts with `start`, tags stripped."
    for l in (PAPERS/paper).read_text().splitlines():
        if l.startswith(start): return [re.sub(r'<[^>]+>', '', c).strip() for c in l.split('\t')]
    raise AssertionError(f'{start!r} not in {paper}')


def _num(s): return None if s in ('-', '') else float(s)


def _block(paper, header, end):
    "The lines of a paper's table between its header line (starting with `header`) and its caption (`end`)."
    lines = (PAPERS/paper).read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(header))
    stop = next(i for i in range(start, len(lines)) if lines[i].startswith(end))
    return [re.sub(r'<[^>]+>', '', l) for l in lines[start + 1:stop] if l.strip()]


@needs_papers
def test_ablation_numbers_follow_the_text():
    "Da-HAR Table 3 (crops / full per row) and CAM-PAR Table 2 (mA, F1 per row), parsed from the paper texts."
    t3 = [tuple(float(x) for x in l.split('\t')[-1].split('/')) for l in _block('da-har_aaai2020.md', 'Multi-Level Feature', 'Table 3:')]
    assert [(r.reported['crops'], r.reported['full']) for r in DAHAR_T3.rows] == t3 and len(t3) == 7
    t2 = [[float(c) for c in l.split('\t')[3:5]] for l in _block('cam-par_unist2023.md', 'CAM-PAR\tFusion\tCFAR', 'Table 2:')]
    assert [[r.reported['mA'], r.reported['F1']] for r in CAMPAR_T2.rows if r.reported] == t2 and len(t2) == 5
    assert [r.key for r in CAMPAR_T2.rows if not r.reported] == ['campar_fusion_fc2']   # the kit's control, which the thesis lacks


@needs_papers
def test_dahar_t1_matches_paper():
    "Every row of Da-HAR Table 1: the 14 attribute APs and the mAP, in order (VeSPA reports the mAP only)."
    block = _block('da-har_aaai2020.md', 'Method\tMale', 'Table 1:')
    rows = [l.split('\t') for l in block if not l.startswith('Imbalance')]
    measured = [r for r in DAHAR_T1.rows if r.key != 'imbalance']
    assert [[r.reported[c] for c in DAHAR_T1.columns] for r in measured] == [[_num(x.strip()) for x in c[1:16]] for c in rows]
    # the Imbalance Ratio row, in the paper's place (first), as printed; reported only (no run)
    imb = next(l.split('\t') for l in block if l.startswith('Imbalance'))
    assert DAHAR_T1.rows[0].key == 'imbalance' and DAHAR_T1.rows[0].run is None
    assert [DAHAR_T1.rows[0].reported[c] for c in DAHAR_T1.columns] == [x.strip() for x in imb[1:15]] + [None]
    assert list(WIDER_COLUMNS) == [c.strip() for c in _line('da-har_aaai2020.md', 'Method\tMale')[1:15]]


@needs_papers
def test_dahar_t2_and_campar_t1_match_paper():
    "Every row of Da-HAR Table 2 (loss, mA, Acc, Prec, Rec, F1) and CAM-PAR Table 1 (backbone, six numbers), in order."
    t2 = [l.split('\t') for l in _block('da-har_aaai2020.md', 'Method\tloss', 'Table 2:') if not l.startswith('\t\t')]
    assert [[r.reported[c] for c in DAHAR_T2.columns] for r in DAHAR_T2.rows] == \
           [[c[1].strip()] + [_num(x.strip()) for x in c[2:7]] for c in t2]
    t1 = [l.split('\t') for l in _block('cam-par_unist2023.md', 'Method\tDackbone', 'Table 1:')]
    assert [[r.reported[c] for c in CAMPAR_T1.columns] for r in CAMPAR_T1.rows] == \
           [[c[1].strip()] + [_num(x.strip()) for x in c[2:8]] for c in t1]


def test_runs_are_named_by_what_they_ran():
    "One directory per distinct run, shared by rows that run the same thing; no table or row name in it."
    specs = {s.key(): s for t in TABLES.values() for r in t.rows for s in row_runs(r)}
    dirs = {k: spec_dir('o', 'quick', s) for k, s in specs.items()}
    assert len(set(dirs.values())) == len(dirs)
    assert all(d.parent.name == specs[k].notebook and d.name.startswith('+'.join(specs[k].kwargs['variants']) + '-')
               for k, d in dirs.items())
    assert not any(t in str(d) for d in dirs.values() for t in TABLES)
    t1 = next(r for r in DAHAR_T1.rows if r.key == 'dahar').run
    t3 = next(r for r in DAHAR_T3.rows if r.key == 'dahar_ignore0').run
    assert t1.key() == t3.key() and spec_dir('o', 'quick', t1) == spec_dir('o', 'quick', t3)
    assert run_path('o', 'quick', t1, 2).relative_to('o') == Path('quick', 'dahar', spec_dir('o', 'quick', t1).name, 'seed2')


def _ped(mA, f1, f1_mean_instance=None):  # a pedestrian-metric entry as the sections write it (har_kit.metrics.metrics_entry)
    full = dict(mA=mA, acc=0.5, prec=0.5, rec=0.5, f1=f1, f1_mean_instance=f1 if f1_mean_instance is None else f1_mean_instance, ma_per_attr=[])
    return metrics_entry('rap', {'full': full}, [])


def _numbers(cells): return {k: v for k, v in cells.items() if len(k) == 2}


def test_missing_is_missing_never_zero(tmp_path):
    out = render(CAMPAR_T2, tmp_path, 'quick')
    assert _numbers(out['cells']) == {}
    assert '| no run | no run |' in out['texts']['md'] and 'NOT comparable' in out['texts']['md']
    # one seed of one row: its cells filled, the rest still missing, sd absent with n=1
    spec = CAMPAR_T2.rows[0].run
    d = run_path(tmp_path, 'quick', spec, 0)
    save_json({'baseline': _ped(0.7, 0.6)}, d/'metrics.json')
    out = render(CAMPAR_T2, tmp_path, 'quick')
    assert _numbers(out['cells']) == {}, 'a run without done must not count'
    assert out['cells'][('baseline', 'mA', 'missing')] == 'not done'
    (d/'done').write_text('')
    out = render(CAMPAR_T2, tmp_path, 'quick')
    assert out['cells'][('baseline', 'mA')]['mean'] == pytest.approx(70.0)
    assert 'ours (n=1)' in out['texts']['md'] and out['texts']['md'].count('| no run') == 4   # CFAR's two rows (+CFAR, its control); the others share the run
    for ext in ('md', 'csv', 'tex', 'card.csv'): assert (tmp_path/'quick'/'tables'/f'campar_t2.{ext}').exists()


def test_old_metrics_schema_is_reported_not_misread(tmp_path):
    "A finished run whose metrics.json predates the schema gives its cells no number and says which seed to rerun; the table still renders."
    d = run_path(tmp_path, 'quick', CAMPAR_T2.rows[0].run, 1)
    _run(tmp_path, 'quick', CAMPAR_T2.rows[0].run, 0, QUICK, _ped(0.7, 0.6))
    save_json({'baseline': {'mA': 0.7, 'f1': 0.6, 'ma_per_attr': {}}}, d/'metrics.json'); (d/'done').write_text('')
    out = render(CAMPAR_T2, tmp_path, 'quick')
    assert ('baseline', 'mA') not in out['cells']   # seed0 alone is not shown as the run's number
    assert 'seed1 done by an older kit (another metrics schema): rerun it (har-kit reproduce --force)' in out['texts']['md']


def _run(root, profile, spec, seed, params, metrics=None, failed=None):
    d = run_path(root, profile, spec, seed)
    save_json({**spec.kwargs, **params, 'seed': seed}, d/'params.json')
    if failed: save_json({'error': failed, 'cell': 3, 'time': 0}, d/'failed.json')
    if metrics is not None:   # rows that differ only in the variant share the run: their entries accumulate
        old = load_json(d/'metrics.json') if (d/'metrics.json').exists() else {}
        save_json({**old, spec.variant: metrics}, d/'metrics.json'); (d/'done').write_text('')
    return d


QUICK = dict(arch='resnet-tiny', weights=None, scale=0.25, epochs=3, batch_size=32, optimizer='adam', lr=1e-3, device='cpu')


def test_failed_run_says_why(tmp_path):
    _run(tmp_path, 'quick', CAMPAR_T2.rows[1].run, 0, QUICK,
         failed="ModuleNotFoundError: No module named 'nbdev'\nTraceback (most recent call last)")
    out = render(CAMPAR_T2, tmp_path, 'quick')
    assert out['cells'][('fusion', 'mA', 'missing')] == "failed: ModuleNotFoundError: No module named 'nbdev'"
    line = next(l for l in out['texts']['md'].splitlines() if l.startswith('| + fusion | ours'))
    assert "failed: ModuleNotFoundError: No module named 'nbdev' | failed |" in line


def test_protocol_card_lists_every_difference_with_its_reason(tmp_path):
    for s in range(2): _run(tmp_path, 'quick', CAMPAR_T2.rows[0].run, s, QUICK, _ped(0.7, 0.6))
    card = render(CAMPAR_T2, tmp_path, 'quick')['card']
    diff = {d['parameter']: d for d in card['differs']}
    assert {'data_root', 'arch', 'weights', 'scale', 'optimizer', 'epochs', 'batch_size', 'device', 'lr'} <= set(diff)
    assert diff['arch']['paper'] == 'resnet50' and diff['arch']['runs'] == 'resnet-tiny' and 'CPU' in diff['arch']['reason']
    assert diff['weights']['paper'] == 'IMAGENET1K_V1' and diff['lr']['runs'] == '0.001'
    assert 'variants' not in diff and 'dataset' not in diff   # row-defining parameters are the paper's by construction
    md = (tmp_path/'quick'/'tables'/'campar_t2.md').read_text()
    assert '**Protocol card** (2 runs, 2 finished' in md and '| campar | `arch` | resnet50' in md
    assert 'Weights: None (from scratch).' in md and 'Selection: held-out' in md
    assert 'arch,resnet50' in (tmp_path/'quick'/'tables'/'campar_t2.card.csv').read_text()
    # a run that follows the paper in a parameter drops it from the card; undeclared reasons say so
    _run(tmp_path, 'paper', CAMPAR_T2.rows[0].run, 0, dict(QUICK, arch='resnet50', weights='IMAGENET1K_V1'), _ped(0.7, 0.6))
    paper = {d['parameter']: d for d in render(CAMPAR_T2, tmp_path, 'paper')['card']['differs']}
    assert 'arch' not in paper and 'weights' not in paper and 'no reason declared' in paper['scale']['reason']



def _one_row_table(protocol, **params):   # a table of one CAM-PAR row whose protocol the test declares
    from har_kit.results import Row, Table, spec
    run = spec('campar', 'baseline', **params)
    return Table('t', 'T', 'test', ['mA'], [Row('b', 'baseline', {'mA': None}, run=run, metrics={'mA': 'full.mA'})],
                 protocol={'campar': protocol}), run


def test_protocol_card_a_mix_of_runs_differs_from_the_paper_and_lists_every_value(tmp_path):
    "Two seeds, only one with the paper's lr: lr differs, and the card shows both values with their counts."
    from har_kit.cards import protocol_card
    from har_kit.results import Paper
    table, run = _one_row_table({'lr': Paper(0.01, 'Sec. 4')}, dataset='pa100k')
    _run(tmp_path, 'quick', run, 0, dict(QUICK, lr=0.01), _ped(0.7, 0.6))
    assert not protocol_card(table, tmp_path, 'quick')['differs']                    # all runs as the paper: nothing to say
    _run(tmp_path, 'quick', run, 1, dict(QUICK, lr=0.001), _ped(0.7, 0.6))
    (lr,) = protocol_card(table, tmp_path, 'quick')['differs']
    assert lr['parameter'] == 'lr' and lr['paper'] == '0.01'
    assert '0.01 (1 run)' in lr['runs'] and '0.001 (1 run)' in lr['runs']


def test_protocol_card_applies_a_dataset_scoped_declaration_to_its_datasets_only(tmp_path):
    "A RAP-only declaration (partition) says nothing about a PA-100K run's partition, and does bind a RAP run's."
    from har_kit.cards import protocol_card
    from har_kit.results import Paper
    decl = {'partition': Paper([0], 'code', datasets=('rap',), across=True)}
    for dataset, differs in (('pa100k', []), ('rap', ['partition'])):
        table, run = _one_row_table(decl, dataset=dataset)
        _run(tmp_path/dataset, 'quick', run, 0, dict(QUICK, partition=3), _ped(0.7, 0.6))
        card = protocol_card(table, tmp_path/dataset, 'quick')
        assert card['runs'] == 1 and [d['parameter'] for d in card['differs']] == differs, dataset


def _planned_card(key, profile, root, **kw):
    "The card of table `key` over its planned runs' params.json (no run executed)."
    import json
    from har_kit.cards import protocol_card
    from har_kit.reproduce import plan
    for r in plan([key], profile, root=root, **kw):
        d = Path(r.out_dir); d.mkdir(parents=True, exist_ok=True); (d/'params.json').write_text(json.dumps(r.params, default=str))
    return {(d['notebook'], d['parameter']): d for d in protocol_card(TABLES[key], root, profile)['differs']}


def test_a_value_a_study_row_sets_is_on_the_card_and_a_paper_rows_is_not(tmp_path):
    "Cards skipped every row-defining parameter: training_length said campar epochs '3' though half its runs trained 12."
    length = _planned_card('training_length', 'quick', tmp_path/'a')
    assert length['campar', 'epochs']['runs'] == '3 (3 runs), 12 (3 runs)'
    assert "this table's rows set it" in length['campar', 'epochs']['reason']
    selection = _planned_card('epoch_selection', 'quick', tmp_path/'b')
    assert selection['campar', 'epochs']['runs'] == '12' and ('campar', 'val_fraction') in selection
    assert ('dahar', 'loss') not in _planned_card('dahar_t2', 'quick', tmp_path/'c')   # Table 2's columns are the paper's losses


def test_the_sample_profile_card_names_its_data_and_an_idle_decay_is_not_a_match(tmp_path):
    "The sample's runs read a 2,000-image subset, which the card called the paper's data; gamma never applied in 3 epochs."
    from har_kit.cards import CHOICE_REASONS
    sample = _planned_card('real_pa100k', 'sample', tmp_path/'s', data_roots={'pa100k': str(tmp_path/'pa100k')})
    assert sample['campar', 'data_root']['runs'] == 'sample'
    assert sample['campar', 'data_root']['reason'] == CHOICE_REASONS['sample']['data_root']
    gamma = _planned_card('dahar_t3', 'quick', tmp_path/'q')['dahar', 'gamma']
    assert gamma['runs'].startswith('not in effect: the rate never decays')


def test_rap_partitions_and_both_selection_modes(tmp_path):
    spec = CAMPAR_T2.rows[0].run
    for part in range(5):
        _run(tmp_path, 'paper', spec, part, dict(QUICK, partition=part, selection='held-out'), _ped(0.70 + part / 100, 0.6))
    d = spec_dir(tmp_path, 'paper', spec)
    for part in range(5):   # the [15]-selected replicate of each run, in its own directory
        e = d/f'seed{part}-sel15'   # named like results.run_dir_name: seed<S>[-part<P>][-sel<mode>]
        save_json({**spec.kwargs, **QUICK, 'partition': part, 'selection': '[15]', 'seed': part}, e/'params.json')
        save_json({'baseline': _ped(0.72 + part / 100, 0.6)}, e/'metrics.json'); (e/'done').write_text('')
    out = render(CAMPAR_T2, tmp_path, 'paper')
    md = out['texts']['md']
    assert 'RAP: mean ± sd over partitions 0, 1, 2, 3, 4' in md and 'both shown' in md
    assert "| baseline | ours, held-out, mean over partitions: the kit's addition (n=5) | 72.00 ± 1.58 |" in md
    # [15]'s code (and so CAM-PAR's reported RAP rows) read partition 0: the five-partition mean is labelled the kit's addition
    part = next(x for x in out['card']['differs'] if x['parameter'] == 'partition')
    assert part['paper'] == '[0]' and 'pedes.py' in part['source'] and "the kit's addition" in part['reason']
    assert "For campar the mean over partitions is the kit's addition: its paper's RAP rows ran partition [0]" in md
    # partition 0 alone, as [15] ran it, beside the mean (labelled the kit's addition)
    assert "| baseline | ours, [15]: selected on test, mean over partitions: the kit's addition (n=5) | 74.00 ± 1.58 |" in md
    assert '| baseline | ours, [15]: selected on test, partition 0 alone (n=1) | 72.00 |' in md
    assert '| baseline | ours, held-out, partition 0 alone (n=1) | 70.00 |' in md


def test_15_selection_on_partition_0_only_beside_the_five_partition_held_out_mean(tmp_path):
    "The paper plan runs [15]'s selection where [15] ran it: its rows say partition 0; the mean over partitions is held-out's."
    spec = CAMPAR_T2.rows[0].run
    for part in range(5):
        _run(tmp_path, 'paper', spec, part, dict(QUICK, partition=part, selection='held-out'), _ped(0.70 + part / 100, 0.6))
    e = spec_dir(tmp_path, 'paper', spec)/'seed0-sel15'
    save_json({**spec.kwargs, **QUICK, 'partition': 0, 'selection': '[15]', 'seed': 0}, e/'params.json')
    save_json({'baseline': _ped(0.72, 0.6)}, e/'metrics.json'); (e/'done').write_text('')
    md = render(CAMPAR_T2, tmp_path, 'paper')['texts']['md']
    assert '| baseline | ours, [15]: selected on test, partition 0 alone (n=1) | 72.00 |' in md
    assert "| baseline | ours, held-out, mean over partitions: the kit's addition (n=5) | 72.00 ± 1.58 |" in md
    assert 'ours, [15]: selected on test (n=' not in md and "[15]: selected on test, mean over partitions" not in md


def test_rap_partitions_of_each_paper():
    "Da-HAR keeps Li et al.'s five RAP partitions; CAM-PAR's tables declare [15]'s partition 0 (CFAR rows too)."
    for t in (DAHAR_T2,): assert t.protocol['dahar']['partition'].value == [0, 1, 2, 3, 4]
    for t in (CAMPAR_T1, CAMPAR_T2):
        for nb in ('campar', 'cfar'): assert t.protocol[nb]['partition'].value == [0], (t.key, nb)


def test_cards_state_the_open_choices(tmp_path):
    "Every open choice of issue 28 is on the rendered card with its reason: parameters (open) and code (fixed)."
    from har_kit.cards import FIXED_CHOICES
    choices = {(nb, c[0]) for nb, cs in FIXED_CHOICES.items() for c in cs}
    assert {('dahar', 'mask source'), ('dahar', 'training windows'), ('dahar', 'side-branch head'), ('dahar', 'supervised logits'),
            ('dahar', 'architecture'), ('dahar', 'RAP label 2'), ('campar', 'CAM normalisation (Eq. 10)'), ('campar', 'RAP label 2'),
            ('campar', 'loss heads (Eq. 16)'), ('campar', 'test-time logits'), ('cfar', 'phase 2')} <= choices
    assert all(c[1] and c[2] for cs in FIXED_CHOICES.values() for c in cs)
    from har_kit.cards import choice_reason   # the paper profile's GPU precision has its reason on the card
    assert 'no reason declared' not in choice_reason('paper', 'dahar', 'amp') and 'bf16' in choice_reason('paper', 'campar', 'amp')
    assert CAMPAR_T2.protocol['campar']['fusion_project_deepest'].value is False
    for k in ('phase2_epochs', 'phase2_lr'): assert CAMPAR_T2.protocol['cfar'][k].open
    assert DAHAR_T2.protocol['dahar']['mix'].open and DAHAR_T1.protocol['dahar']['mask_weight'].open
    for s in range(2): _run(tmp_path, 'quick', CAMPAR_T2.rows[0].run, s, QUICK, _ped(0.7, 0.6))
    render(CAMPAR_T2, tmp_path, 'quick')
    md = (tmp_path/'quick'/'tables'/'campar_t2.md').read_text()
    assert 'Left open by the papers and fixed in code' in md and 'max + 1e-5' in md and 'infer.py' in md and 'self.logits[1]' in md
    assert '| campar | `fusion_project_deepest` | False' in md
    assert 'fixed,campar,test-time logits' in (tmp_path/'quick'/'tables'/'campar_t2.card.csv').read_text()
    assert '| campar | `logit_bn_shared` | True' in md and 'not in effect: no logit BatchNorm to share' in md


def test_paired_interval_marks_differences_beyond_seed_noise(tmp_path):
    base, fus = CAMPAR_T2.rows[0].run, CAMPAR_T2.rows[1].run
    for s, (a, b) in enumerate([(0.70, 0.75), (0.72, 0.76), (0.71, 0.77)]):
        _run(tmp_path, 'quick', base, s, QUICK, _ped(a, 0.5))
        _run(tmp_path, 'quick', fus, s, QUICK, _ped(b, 0.5 + (s - 1) / 100))
    out = render(CAMPAR_T2, tmp_path, 'quick')
    line = next(l for l in out['texts']['md'].splitlines() if l.startswith('| + fusion | Δ vs baseline'))
    iv = paired_interval(out['cells'][('fusion', 'mA')], out['cells'][('baseline', 'mA')])
    assert iv['n'] == 3 and iv['mean'] == pytest.approx(5.0) and iv['exceeds']
    cells = line.strip(' |').split(' | ')
    assert cells[2].endswith('*') and not cells[3].endswith('*')   # mA beyond seed noise, F1 not
    assert paired_interval(dict(values=[1.0], seeds=['seed0']), dict(values=[0.0], seeds=['seed0']))['lo'] is None



def test_a_row_significantly_below_its_baseline_is_marked_too(tmp_path):
    "5 points below the baseline in every seed is beyond seed noise as much as 5 above: exceeds and the '*'."
    base, fus = CAMPAR_T2.rows[0].run, CAMPAR_T2.rows[1].run
    for s, (a, b) in enumerate([(0.75, 0.70), (0.76, 0.72), (0.77, 0.71)]):
        _run(tmp_path, 'quick', base, s, QUICK, _ped(a, 0.5))
        _run(tmp_path, 'quick', fus, s, QUICK, _ped(b, 0.5 + (s - 1) / 100))
    out = render(CAMPAR_T2, tmp_path, 'quick')
    iv = paired_interval(out['cells'][('fusion', 'mA')], out['cells'][('baseline', 'mA')])
    assert iv['mean'] == pytest.approx(-5.0) and iv['hi'] < 0 and iv['exceeds']
    line = next(l for l in out['texts']['md'].splitlines() if l.startswith('| + fusion | Δ vs baseline'))
    cells = line.strip(' |').split(' | ')
    assert cells[2].startswith('-5.00 [') and cells[2].endswith('*') and not cells[3].endswith('*')


T_975_2 = 4.302652729911275   # Student's t, 97.5% quantile, 2 degrees of freedom (two-sided 95%)


@pytest.mark.parametrize('d, exceeds', [((1.0, 2.0, 3.0), False), ((-5.0, -4.0, -6.0), True), ((4.0, 5.0, 6.0), True)])
def test_paired_interval_is_the_t_interval_of_the_per_seed_differences(d, exceeds):
    "Row minus baseline per common seed (paired by seed name, not position), two-sided t-interval of their mean."
    b = dict(seeds=['seed0', 'seed1', 'seed2', 'seed9'], values=[10.0, 50.0, 90.0, 70.0])   # seed9: not in the row, left out
    bv = dict(zip(b['seeds'], b['values']))
    seeds = ['seed2', 'seed0', 'seed1']                                    # another order than the baseline's
    a = dict(seeds=seeds, values=[bv[s] + x for s, x in zip(seeds, d)])
    iv = paired_interval(a, b)
    mean, h = sum(d) / 3, T_975_2 * 1.0 / 3 ** .5                         # each d has standard deviation 1
    assert iv['n'] == 3 and iv['mean'] == pytest.approx(mean)
    assert (iv['lo'], iv['hi']) == pytest.approx((mean - h, mean + h))
    assert iv['exceeds'] is exceeds


def test_baseline_15_f1_in_15s_definition_compared_in_eq25(tmp_path):
    "[15]'s quoted F1 is its code's mean per-image F1: the baseline row shows ours so; Δ vs baseline compares Eq. 25's F1 of both runs."
    base, fus = CAMPAR_T2.rows[0].run, CAMPAR_T2.rows[1].run
    for s, (fb, fmi, ff) in enumerate([(0.60, 0.55, 0.66), (0.62, 0.56, 0.67), (0.61, 0.50, 0.68)]):
        _run(tmp_path, 'quick', base, s, QUICK, _ped(0.7, fb, fmi))
        _run(tmp_path, 'quick', fus, s, QUICK, _ped(0.7, ff))
    out = render(CAMPAR_T2, tmp_path, 'quick')
    cells = out['cells']
    assert cells[('baseline', 'F1')]['mean'] == pytest.approx(53.67, abs=0.01)   # f1_mean_instance, against [15]'s 78.94
    assert cells[('fusion', 'F1', cells[('fusion', 'F1')]['mode'], 'vs')]['values'] == pytest.approx([60.0, 62.0, 61.0])
    line = next(l for l in out['texts']['md'].splitlines() if l.startswith('| + fusion | Δ vs baseline'))
    assert line.strip(' |').split(' | ')[3].startswith('+6.00 [')   # 66, 67, 68 against Eq. 25's 60, 62, 61: not 11.67
    assert 'except in the baseline row' in out['texts']['md'] and 'np.mean(instance_f1)' in out['texts']['md']
    t1 = {r.key: r for r in CAMPAR_T1.rows}
    assert t1['baseline'].metrics['RAPv1 F1'][1] == 'full.f1_mean_instance' and t1['ours'].metrics['RAPv1 F1'][1] == 'full.f1'
    assert t1['baseline'].compared_in == {'PA100K F1': 'full.f1', 'RAPv1 F1': 'full.f1'}


def test_the_card_reads_the_defaults_a_run_recorded(tmp_path):
    "A run that trained before a default changed (no gradient clip then) is shown with its own value, not today's."
    from har_kit.run_params import parameter_defaults
    for s in range(2):
        _run(tmp_path, 'quick', CAMPAR_T2.rows[0].run, s, QUICK, _ped(0.7, 0.6))
        d = run_path(tmp_path, 'quick', CAMPAR_T2.rows[0].run, s)
        save_json({'defaults': {**parameter_defaults('campar'), 'grad_clip': 0.0}}, d/'env.json')
    md = render(CAMPAR_T2, tmp_path, 'quick')['texts']['md']
    assert '| campar | `grad_clip` | 10.0' in md and '| 0.0 |' in md


def test_dahar_says_what_the_parameter_count_decides():
    "30_dahar_model no longer lets the 45.4M/52.4M counts 'confirm' a placement two readings share; it says what they decide."
    import json
    from har_kit.core import repo_root
    nb = json.loads((repo_root()/'nbs'/'30_dahar_model.ipynb').read_text())
    md = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    assert 'This reading is confirmed by the parameter count' not in md
    assert 'does not\ndecide *where* they sit' in md and 'it does not decide the placement or order of blocks' in md


def test_selection_study_pairs_both_rules_of_one_training_and_shows_epochs_as_read(tmp_path):
    "One run per seed gives both rows of a pair; the Δ row is their paired difference; the epoch column is not x100."
    from har_kit.results import SELECTION
    held, test = (next(r for r in SELECTION.rows if r.key == f'rap_baseline_{k}') for k in ('held_out', 'test_15'))
    assert held.run == test.run
    for seed, (e_val, e_test, gain) in enumerate([(4, 6, .01), (5, 5, 0.), (3, 7, .02)]):
        m = dict(mA=.6, acc=.4, prec=.5, rec=.5, f1=.5, f1_mean_instance=.5)
        study = dict(held_out=dict(epoch=e_val, **m), test_15=dict(epoch=e_test, **{**m, 'mA': .6 + gain}))
        _run(tmp_path, 'quick', held.run, seed, QUICK, metrics_entry('rap', {'full': dict(m, ma_per_attr=[])}, [], extra=dict(selection_study=study)))
    out = render(SELECTION, tmp_path, 'quick')
    assert out['cells'][(held.key, 'epoch')]['mean'] == pytest.approx(4.0) and out['cells'][(test.key, 'epoch')]['mean'] == pytest.approx(6.0)
    assert out['cells'][(test.key, 'mA')]['mean'] == pytest.approx(61.0)
    assert '+1.00 [' in out['texts']['md'] and "epoch chosen on test ([15]'s rule) | Δ vs" in out['texts']['md']


def test_run_hash_holds_the_runs_it_needs(tmp_path):
    "Two CFAR runs that differ only in their phase-1 CAM-PAR run are two runs: other keys, hashes and directories."
    from har_kit.results import spec, spec_hash
    phase1 = [spec('campar', 'campar_fusion', dataset='pa100k', sample_weighting=w) for w in (True, False)]
    cfar = [spec('cfar', 'campar_fusion_cfar', needs={'campar_run': p}, dataset='pa100k', phase1_variant='campar_fusion')
            for p in phase1]
    assert cfar[0].params == cfar[1].params
    assert cfar[0].key() != cfar[1].key() and spec_hash(cfar[0]) != spec_hash(cfar[1])
    assert spec_dir(tmp_path, 'quick', cfar[0]) != spec_dir(tmp_path, 'quick', cfar[1])
    assert spec_hash(cfar[0]) == spec_hash(spec('cfar', 'campar_fusion_cfar', needs={'campar_run': phase1[0]}, dataset='pa100k',
                                                phase1_variant='campar_fusion'))


def test_left_out_attributes_are_named_and_seeds_traceable(tmp_path):
    "An mA that averaged without an attribute (no positive in the scored split) says which beside its row; seeds.csv holds every seed's number and run."
    import csv, io
    def entry(mA, per):
        full = dict(mA=mA, acc=0.5, prec=0.5, rec=0.5, f1=0.5, f1_mean_instance=0.5, ma_per_attr=per)
        return metrics_entry('rap', {'full': full}, ['hat', 'bag', 'boots'])
    spec = CAMPAR_T2.rows[0].run
    for s, (m, per) in enumerate([(0.7, [0.6, None, 0.8]), (0.72, [0.64, None, 0.8]), (0.71, [0.62, 0.5, 0.8])]):
        _run(tmp_path, 'quick', spec, s, QUICK, entry(m, per))
    out = render(CAMPAR_T2, tmp_path, 'quick')
    line = next(l for l in out['texts']['md'].splitlines() if '| ours' in l and l.startswith(f'| {CAMPAR_T2.rows[0].label} |'))
    assert 'mA over 2 of 3 attributes (bag: no positive or no negative in the scored split of some seeds, left out)' in line
    rows = [r for r in csv.DictReader(io.StringIO(out['texts']['seeds.csv'])) if r['column'] == 'mA' and r['kind'] == 'ours']
    assert [(r['seed'], float(r['value'])) for r in rows] == [('seed0', 70.0), ('seed1', 72.0), ('seed2', 71.0)]
    assert all((tmp_path/r['run']/'metrics.json').exists() for r in rows)
    with open(tmp_path/'quick'/'tables'/'campar_t2.seeds.csv', newline='') as f: assert f.read() == out['texts']['seeds.csv']


def _entry_t2(mA, f1=0.5):
    full = dict(mA=mA, acc=0.5, prec=0.5, rec=0.5, f1=f1, f1_mean_instance=0.5, ma_per_attr=[0.6, 0.7])
    return metrics_entry('rap', {'full': full}, ['hat', 'bag'])


def test_a_failed_seed_is_named_not_silently_dropped(tmp_path):
    "A seed holding failed.json beside two finished ones: the row's n is 2 and it says which seed it left out and why, as seeds.csv does."
    import csv, io
    spec = CAMPAR_T2.rows[0].run
    for s in (0, 2): _run(tmp_path, 'quick', spec, s, QUICK, _entry_t2(0.5 + s / 100))
    _run(tmp_path, 'quick', spec, 1, QUICK, failed='FloatingPointError: the loss diverged\nTraceback ...')
    out = render(CAMPAR_T2, tmp_path, 'quick')
    line = next(l for l in out['texts']['md'].splitlines() if l.startswith('| baseline | ours'))
    assert '(n=2) — left out: seed1 (failed: FloatingPointError: the loss diverged)' in line, line
    gone = [r for r in csv.DictReader(io.StringIO(out['texts']['seeds.csv'])) if r['kind'].startswith('left out')]
    assert {(r['method'], r['column'], r['seed'], r['kind']) for r in gone} >= {
        ('baseline', c, 'seed1', 'left out: failed: FloatingPointError: the loss diverged') for c in ('mA', 'F1')}


def test_a_finished_seed_without_the_columns_number_is_named(tmp_path):
    "A done seed whose entry lacks the column's number, or has it None or NaN, while the others have it: left out of that column, named in the row."
    import json
    spec = CAMPAR_T2.rows[0].run
    for s in range(4): _run(tmp_path, 'quick', spec, s, QUICK, _entry_t2(0.5 + s / 100))
    for s, how in ((1, None), (2, 'del'), (3, float('nan'))):
        p = run_path(tmp_path, 'quick', spec, s)/'metrics.json'
        m = json.loads(p.read_text())
        if how == 'del': del m['baseline']['full']['mA']
        else: m['baseline']['full']['mA'] = how
        p.write_text(json.dumps(m))   # NaN as Python's json writes it
    out = render(CAMPAR_T2, tmp_path, 'quick')
    assert out['cells'][('baseline', 'mA')]['n'] == 1 and out['cells'][('baseline', 'F1')]['n'] == 4
    line = next(l for l in out['texts']['md'].splitlines() if l.startswith('| baseline | ours'))
    assert ("(n=4; mA: n=1) — left out of mA: seed1, seed2 (done, but no full.mA of 'baseline' in its metrics.json)"
            " — left out of mA: seed3 (done, but full.mA of 'baseline' in its metrics.json is NaN)") in line, line


def test_the_protocol_card_counts_one_run_in_the_singular(tmp_path):
    "One run: '(1 run, 1 finished', and a parameter's runs counted the same way ('3 (1 run)')."
    _run(tmp_path, 'quick', CAMPAR_T2.rows[0].run, 0, QUICK, _entry_t2(0.5))
    md = render(CAMPAR_T2, tmp_path, 'quick')['texts']['md']
    assert '**Protocol card** (1 run, 1 finished;' in md and '(1 runs' not in md
    _run(tmp_path, 'quick', CAMPAR_T2.rows[0].run, 1, {**QUICK, 'epochs': 4}, _entry_t2(0.5))
    md = render(CAMPAR_T2, tmp_path, 'quick')['texts']['md']
    assert '**Protocol card** (2 runs, 2 finished;' in md and '(1 run)' in md and '(1 runs' not in md


def test_a_distraction_bin_that_left_an_attribute_out_says_so(tmp_path):
    "A bin's mAP averaged without an attribute (no positive among its targets) is named beside the row, as the headline's is."
    from har_kit.results import DISTRACTION
    def entry(seed):
        full = dict(mAP=0.6, ap=[0.6, 0.6], variant='interpolated', excluded=[], degenerate=[], n_pos=[3, 3], n_specified=[9, 9])
        bins = {b: dict(mAP=0.5 + seed / 100, per_attribute={'hat': 0.5, 'bag': None if b == '0' else 0.5}, n=4)
                for b in ('0', '1', '2', '3+')}
        return metrics_entry('wider', {'full': full}, ['hat', 'bag'], by_distractors=bins)
    row = next(r for r in DISTRACTION.rows if r.key == 'campar')
    for s in range(3): _run(tmp_path, 'quick', row.run, s, QUICK, entry(s))
    md = render(DISTRACTION, tmp_path, 'quick')['texts']['md']
    line = next(l for l in md.splitlines() if '| ours' in l and l.startswith(f'| {row.label} |'))
    assert '— 0 distractors over 1 of 2 attributes (bag: no positive or no negative in the scored split, left out)' in line, line


def test_the_kits_addition_is_said_only_on_lines_that_average_partitions(tmp_path):
    "A row over PA-100K and RAP, as CAM-PAR's Table 1: [15] ran RAP's partition 0 only, held-out all five. The [15] line holds "
    "PA-100K's one run and no mean over partitions, so only the held-out line says its mean is the kit's addition."
    from har_kit.results import Paper, Row, Table, spec
    sp, sr = spec('campar', 'baseline', dataset='pa100k'), spec('campar', 'baseline', dataset='rap')
    t = Table('t', 'T', 'test', ['P', 'R'], [Row('b', 'baseline', {'P': None, 'R': None}, metrics={'P': (sp, 'full.mA'), 'R': (sr, 'full.mA')})],
              protocol={'campar': {'partition': Paper([0], 'code', datasets=('rap',), across=True)}})
    def put(s, name, params, mA):   # one finished seed directory of a run
        d = run_path(tmp_path, 'paper', s, 0).parent/name
        save_json({**s.kwargs, **QUICK, 'seed': 0, **params}, d/'params.json')
        save_json({'baseline': _ped(mA, 0.6)}, d/'metrics.json'); (d/'done').write_text('')
    for sel, tag in (('held-out', 'selheldout'), ('[15]', 'sel15')):
        put(sp, f'seed0-{tag}', dict(selection=sel), 0.80)
    for part in range(5): put(sr, f'seed0-part{part}-selheldout', dict(partition=part, selection='held-out'), 0.70 + part / 100)
    put(sr, 'seed0-part0-sel15', dict(partition=0, selection='[15]'), 0.75)
    lines = [l for l in render(t, tmp_path, 'paper')['texts']['md'].splitlines() if l.startswith('| baseline | ours')]
    assert "| baseline | ours, held-out, mean over partitions: the kit's addition (n=5; P: n=1) | 80.00 | 72.00 ± 1.58 |" in lines, lines
    assert '| baseline | ours, [15]: selected on test (n=1) | 80.00 | not in this mode |' in lines, lines
    assert '| baseline | ours, [15]: selected on test, partition 0 alone (n=1) | not in this mode | 75.00 |' in lines, lines


def test_the_card_says_held_out_runs_train_without_their_carved_validation_images(tmp_path):
    "[15] trains on all of trainval; a held-out run that carves val_fraction of it out trains on the rest, and its card says so."
    from har_kit.cards import protocol_card
    spec = CAMPAR_T2.rows[0].run
    _run(tmp_path, 'paper', spec, 0, dict(QUICK, selection='held-out', val_fraction=0.1, train_splits=['trainval']), _ped(0.7, 0.6))
    vf = next(d for d in protocol_card(CAMPAR_T2, tmp_path, 'paper')['differs'] if d['parameter'] == 'val_fraction')
    assert vf['paper'] == '0.0' and '0.1' in vf['runs'] and 'carved out' in vf['reason'], vf


def test_a_seed_made_by_earlier_notebook_code_is_said_in_its_row_and_seeds_csv(tmp_path):
    "A done seed whose env.json records other code cells of 41_campar.ipynb is kept (as runs.prepare keeps it), and said so."
    import csv, io
    from har_kit.run_params import find_notebook
    from har_kit.run_params import notebook_record
    now, spec = notebook_record(find_notebook('campar')), CAMPAR_T2.rows[0].run
    for s in range(3):
        d = _run(tmp_path, 'quick', spec, s, QUICK, _entry_t2(0.5 + s / 100))
        save_json({'notebook': {**now, 'run_code_sha256': 'f' * 64, 'code_sha256': 'f' * 64, 'sha256': 'e' * 64} if s == 0 else now}, d/'env.json')
    out = render(CAMPAR_T2, tmp_path, 'quick')
    line = next(l for l in out['texts']['md'].splitlines() if l.startswith('| baseline | ours'))
    assert '(n=3) — seed0: 1 of 3 seeds made by earlier code of 41_campar.ipynb' in line, line
    assert "move a seed's folder aside and har-kit reproduce makes it again" in line   # reproduce --force skips a done, current run
    kinds = {(r['seed'], r['kind']) for r in csv.DictReader(io.StringIO(out['texts']['seeds.csv'])) if r['method'] == 'baseline'}
    assert kinds == {('seed0', 'ours, made by earlier code of 41_campar.ipynb'), ('seed1', 'ours'), ('seed2', 'ours')}, kinds



def test_a_seed_resumed_across_a_change_of_its_notebook_code_is_said_in_part(tmp_path):
    "A resume overwrites env.json's notebook record with today's; the session before it, which ran the earlier code, is in `sessions`."
    import csv, io
    from har_kit.run_params import find_notebook, notebook_record
    now, spec = notebook_record(find_notebook('campar')), CAMPAR_T2.rows[0].run
    old = {**now, 'run_code_sha256': 'f' * 64, 'code_sha256': 'f' * 64, 'sha256': 'e' * 64}
    for s in range(3):
        d = _run(tmp_path, 'quick', spec, s, QUICK, _entry_t2(0.5 + s / 100))
        save_json({'notebook': now, **({'sessions': [{'notebook': old}]} if s == 2 else {})}, d/'env.json')
    out = render(CAMPAR_T2, tmp_path, 'quick')
    line = next(l for l in out['texts']['md'].splitlines() if l.startswith('| baseline | ours'))
    assert '(n=3) — seed2: 1 of 3 seeds made by earlier code of 41_campar.ipynb, in part (resumed)' in line, line
    kinds = {(r['seed'], r['kind']) for r in csv.DictReader(io.StringIO(out['texts']['seeds.csv'])) if r['method'] == 'baseline'}
    assert ('seed2', 'ours, made by earlier code of 41_campar.ipynb, in part (resumed)') in kinds, kinds


def test_seeds_made_by_different_kit_code_are_named_in_their_row(tmp_path):
    "Seeds of one row made at other commits of the kit, from a changed tree, or with another torch: the row names what made each, only what differs."
    spec = CAMPAR_T2.rows[0].run
    made = [dict(git_commit='a' * 40, git_dirty=False), dict(git_commit='a' * 40, git_dirty=False), dict(git_commit='b' * 40, git_dirty=True)]
    for s, m in enumerate(made):
        d = _run(tmp_path, 'quick', spec, s, QUICK, _entry_t2(0.5 + s / 100))
        save_json({**m, 'packages': {'har_kit': '0.1.0', 'torch': '2.14.1', 'torchvision': '0.29.1'}}, d/'env.json')
    line = lambda: next(l for l in render(CAMPAR_T2, tmp_path, 'quick')['texts']['md'].splitlines() if l.startswith('| baseline | ours'))
    assert ' — made by different code: seed0, seed1 (commit aaaaaaa); seed2 (commit bbbbbbb+dirty) (one code for all: ' in line(), line()
    d = _run(tmp_path, 'quick', spec, 2, QUICK, _entry_t2(0.52))   # seed2 made again, with the same commit, by another torch
    save_json({**made[0], 'packages': {'har_kit': '0.1.0', 'torch': '2.9.0', 'torchvision': '0.29.1'}}, d/'env.json')
    assert ' — made by different code: seed0, seed1 (torch 2.14.1); seed2 (torch 2.9.0) (' in line(), line()
    save_json({**made[0], 'packages': {'har_kit': '0.1.0', 'torch': '2.14.1', 'torchvision': '0.29.1'},   # resumed from a session
               'sessions': [{**made[0], 'git_commit': 'c' * 40, 'packages': {'torch': '2.14.1', 'torchvision': '0.29.1', 'har_kit': '0.1.0'}}]}, d/'env.json')
    assert ' — made by different code: seed0, seed1 (commit aaaaaaa); seed2 (commit ccccccc then commit aaaaaaa) (' in line(), line()
    save_json({**made[0], 'packages': {'har_kit': '0.1.0', 'torch': '2.14.1', 'torchvision': '0.29.1'}}, d/'env.json')
    assert 'made by different code' not in line(), line()   # one code: nothing said


def _wider(v): return metrics_entry('wider', {'full': dict(mAP=v, ap=[]), 'crops': dict(mAP=v - 0.01, ap=[])}, [])


def test_a_compared_row_says_why_its_baseline_gives_no_delta(tmp_path):
    "Table 3's baseline run failed in every seed: the rows compared with it keep a Δ vs baseline line that says why."
    for s in range(2):
        _run(tmp_path, 'quick', DAHAR_T3.rows[0].run, s, QUICK, failed='RuntimeError: out of memory\nTraceback ...')
        _run(tmp_path, 'quick', DAHAR_T3.rows[5].run, s, QUICK, _wider(0.6 + s / 100))
    md = render(DAHAR_T3, tmp_path, 'quick')['texts']['md'].splitlines()
    line = next((l for l in md if l.startswith(f'| {DAHAR_T3.rows[5].label} | Δ vs')), None)
    assert line and line.endswith('| baseline: failed: RuntimeError: out of memory | baseline: failed |'), line


def test_the_training_curves_leave_out_failed_and_held_back_runs(tmp_path):
    "A failed seed's history.json and a done one held back (stale) draw no curve; a done, current seed draws one."
    import matplotlib; matplotlib.use('Agg')
    from har_kit.render import plot_curves
    spec = CAMPAR_T2.rows[0].run
    hist = [{'epoch': 1, 'train_loss': 1.0, 'val_mA': 0.5}, {'epoch': 2, 'train_loss': 50.0, 'val_mA': 0.1}]
    dirs = [_run(tmp_path, 'quick', spec, 0, QUICK, failed='FloatingPointError: loss diverged'),
            _run(tmp_path, 'quick', spec, 1, QUICK, _entry_t2(0.5)), _run(tmp_path, 'quick', spec, 2, QUICK, _entry_t2(0.5))]
    for d in dirs: save_json(hist, d/'baseline'/'history.json')
    axes = plot_curves(tmp_path, 'quick', held={dirs[2]: 'stale: finished with other parameters (epochs)'})
    assert (len(axes[0].lines), len(axes[1].lines)) == (1, 1)


def test_a_cell_whose_every_seed_is_nan_or_inf_says_so(tmp_path):
    "An inf mA is called inf (not NaN); when every seed's number is NaN the cell says that, not that the entry is missing."
    import json
    spec = CAMPAR_T2.rows[0].run
    for s in range(3):
        d = _run(tmp_path, 'quick', spec, s, QUICK, {v: _entry_t2(0.5) for v in ('fusion', 'campar')})
        m = {v: _entry_t2(0.5) for v in ('fusion', 'campar')}
        m['campar']['full']['mA'] = float('nan')
        if s == 0: m['fusion']['full']['mA'] = float('inf')
        (d/'metrics.json').write_text(json.dumps(m))
    md = render(CAMPAR_T2, tmp_path, 'quick')['texts']['md'].splitlines()
    assert "left out of mA: seed0 (done, but full.mA of 'fusion' in its metrics.json is inf)" in next(l for l in md if l.startswith('| + fusion | ours'))
    assert "| done, but full.mA of 'campar' in its metrics.json is NaN (seed0, seed1, seed2) |" in next(l for l in md if l.startswith('| + CAM-PAR | ours'))


def test_our_backbone_cell_never_shows_the_papers_without_a_run(tmp_path):
    "CAM-PAR Table 1's backbone on an ours line: the reason there is no run, never the reported ResNet50."
    md = render(CAMPAR_T1, tmp_path, 'quick')['texts']['md'].splitlines()
    ours = [l for l in md if '| ours' in l]
    assert len(ours) == 2 and all(l.split(' | ')[2] == 'no run' for l in ours), ours


def test_a_tables_files_land_together(tmp_path):
    "An error part way through writing a table's five files (here a folder where its .tex goes) replaces none of them: never old and new mixed."
    out = tmp_path/'tables'
    render(CAMPAR_T2, tmp_path, 'quick', out=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 5
    save_json({'baseline': _ped(0.7, 0.6)}, run_path(tmp_path, 'quick', CAMPAR_T2.rows[0].run, 0)/'metrics.json')   # a new number
    (out/'campar_t2.tex').unlink(); (out/'campar_t2.tex').mkdir()
    with pytest.raises((KitError, OSError)): render(CAMPAR_T2, tmp_path, 'quick', out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == {k: v for k, v in before.items() if k != 'campar_t2.tex'}
    assert [p.name for p in out.iterdir() if p.name.endswith('.tmp')] == []
    (out/'campar_t2.tex').rmdir()
    render(CAMPAR_T2, tmp_path, 'quick', out=out)
    assert all((out/n).read_bytes() != before[n] for n in ('campar_t2.md', 'campar_t2.csv', 'campar_t2.tex'))   # then the new set lands whole


def test_a_figure_of_a_table_with_several_selections_says_which_it_plots_and_a_csv_says_its_profile(tmp_path):
    "Bars beside the paper's say which selection (and mean over partitions) they show when the table has other lines; every CSV line names its profile."
    import matplotlib; matplotlib.use('Agg')
    from har_kit.render import OURS_LABEL, collect, plot_ablation
    from har_kit.results import Paper, Row, Table, spec
    sr = spec('campar', 'baseline', dataset='rap')
    t = Table('t', 'T', 'test', ['R'], [Row('b', 'baseline', {'R': 70.0}, metrics={'R': (sr, 'full.mA')})],
              protocol={'campar': {'partition': Paper([0], 'code', datasets=('rap',), across=True)}})
    def put(name, params, mA):
        d = run_path(tmp_path, 'paper', sr, 0).parent/name
        save_json({**sr.kwargs, **QUICK, 'seed': 0, **params}, d/'params.json')
        save_json({'baseline': _ped(mA, 0.6)}, d/'metrics.json'); (d/'done').write_text('')
    for part in range(2): put(f'seed0-part{part}-selheldout', dict(partition=part, selection='held-out'), 0.70 + part / 100)
    ax = plot_ablation(t, collect(t, tmp_path, 'paper'), 'R')
    labels = ax.get_legend_handles_labels()[1]
    assert labels[1] == 'ours, held-out, mean over partitions (mean ± sd over seeds; the table has the other lines)', labels
    lines = render(t, tmp_path, 'paper')['texts']['csv'].splitlines()
    assert lines[0].endswith(',profile') and all(l.endswith(',paper') for l in lines[1:]), lines
    for part in range(2): (run_path(tmp_path, 'paper', sr, 0).parent/f'seed0-part{part}-selheldout'/'done').unlink()
    put('seed0', {}, 0.7)   # one selection only: the plain label
    assert plot_ablation(t, collect(t, tmp_path, 'paper'), 'R').get_legend_handles_labels()[1][1] == OURS_LABEL


def test_the_protocol_card_names_each_copy_of_a_real_dataset_the_runs_read(tmp_path):
    "Three seeds of one paper row, one on RAP copy A: the card said nothing (both roots were 'real'); it lists each root and annotation."
    from har_kit.cards import card_csv, card_markdown, protocol_card
    spec = CAMPAR_T2.rows[0].run
    def seed(s, root, sha):
        d = _run(tmp_path, 'paper', spec, s, dict(QUICK, dataset='rap', data_root=root), _ped(0.7, 0.6))
        save_json({'data': {'annotation': {'RAP_annotation.mat': sha}}}, d/'env.json')
    for s in (1, 2): seed(s, '/data/rapB', 'b' * 64)
    assert 'data_root' not in {d['parameter'] for d in protocol_card(CAMPAR_T2, tmp_path, 'paper')['differs']}   # one copy: the paper's 'real'
    seed(0, '/data/rapA', 'a' * 64)
    card = protocol_card(CAMPAR_T2, tmp_path, 'paper')
    (root,) = [d for d in card['differs'] if d['parameter'] == 'data_root']
    assert root['runs'] == 'rap: /data/rapB (annotation bbbbbbbb, 2 runs), /data/rapA (annotation aaaaaaaa, 1 run)', root
    assert root['reason'].startswith('its runs read different copies of the dataset'), root
    assert '/data/rapA (annotation aaaaaaaa, 1 run)' in card_markdown(card) and '/data/rapA' in card_csv(card)
    seed(0, '/data/rapB', 'c' * 64)   # the same root, its annotation edited between the runs
    (root,) = [d for d in protocol_card(CAMPAR_T2, tmp_path, 'paper')['differs'] if d['parameter'] == 'data_root']
    assert root['runs'] == 'rap: /data/rapB (annotation bbbbbbbb, 2 runs), /data/rapB (annotation cccccccc, 1 run)', root
    # a seed held back from the numbers is off the card too: the card describes the runs the numbers come from
    held = {run_path(tmp_path, 'paper', spec, 0): 'stale: what it reads changed since it finished'}
    assert 'data_root' not in {d['parameter'] for d in protocol_card(CAMPAR_T2, tmp_path, 'paper', held=held)['differs']}
