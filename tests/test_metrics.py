"Metrics: mAP against sklearn and a plain-loop VOC reference, pedestrian metrics against hand counts and sklearn."
import json, math

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, f1_score,
                             jaccard_score, precision_score, recall_score)

from har_kit.core import UNSPECIFIED, KitError, to_jsonable
from har_kit.metrics import AP_VARIANTS, harmonic_f1, mean_ap, pedestrian_metrics, pr_points


def _voc_ap_loop(scores, labels):
    "Reference: the SRN / DHC WIDER evaluation (get_mAP_eccv16.m) written as a plain loop; distinct scores only."
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    n_pos = sum(1 for l in labels if l == 1)
    tp = fp = 0
    rec, prec = [], []
    for i in order:
        tp += labels[i] == 1
        fp += labels[i] == 0
        rec.append(tp / n_pos)
        prec.append(tp / (tp + fp) if tp + fp else 0.0)   # MATLAB's NaN here is ignored by max(); 0 is equivalent
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def _random_wider(n, c, seed, p_unspec=0.2, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.choice([1, 0, UNSPECIFIED], size=(n, c), p=[0.3, 1 - 0.3 - p_unspec, p_unspec]).astype(np.int8)
    s = rng.random((n, c)) + 0.4 * (y == 1)
    return (np.round(s, 1) if ties else s), y


# ---------------------------------------------------------------- mean_ap

def test_ap_hand_computed():
    # ranked labels 1 0 0 1 1: precision at the positives 1, 2/4, 3/5; envelope lifts 2/4 to 3/5
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([1, 0, 0, 1, 1])
    assert mean_ap(s, y, 'non_interpolated')['mAP'] == pytest.approx((1 + 0.5 + 0.6) / 3, abs=1e-12)
    r = mean_ap(s, y, 'interpolated')
    assert r['mAP'] == pytest.approx((1 + 0.6 + 0.6) / 3, abs=1e-12)
    assert r['variant'] == 'interpolated' and r['ap'] == [pytest.approx(2.2 / 3)]


def test_ap_non_interpolated_matches_sklearn_with_ties_and_unspecified():
    s, y = _random_wider(500, 7, seed=0, ties=True)
    r = mean_ap(s, y, variant='non_interpolated')
    expected = []
    for c in range(y.shape[1]):
        m = y[:, c] != UNSPECIFIED
        expected.append(average_precision_score(y[m, c], s[m, c]))
    np.testing.assert_allclose(r['ap'], expected, rtol=0, atol=1e-12)
    assert r['mAP'] == pytest.approx(np.mean(expected), abs=1e-12)
    assert r['variant'] == 'non_interpolated'


def test_ap_interpolated_matches_voc_reference_loop():
    s, y = _random_wider(400, 5, seed=1)            # continuous scores: no ties, so the loop's order is unambiguous
    r = mean_ap(s, y, variant='interpolated')
    expected = [_voc_ap_loop(s[:, c].tolist(), y[:, c].tolist()) for c in range(5)]
    np.testing.assert_allclose(r['ap'], expected, rtol=0, atol=1e-12)


def test_interpolated_never_below_non_interpolated():
    s, y = _random_wider(300, 6, seed=2, ties=True)
    a, b = mean_ap(s, y, 'interpolated'), mean_ap(s, y, 'non_interpolated')
    assert all(x >= z - 1e-15 for x, z in zip(a['ap'], b['ap']))
    assert a['mAP'] > b['mAP']                       # noisy scores: the envelope must lift something


def test_ap_tie_aware_is_order_independent():
    s, y = _random_wider(400, 4, seed=3, ties=True)
    perm = np.random.default_rng(0).permutation(len(s))
    for v in AP_VARIANTS:
        np.testing.assert_allclose(mean_ap(s[perm], y[perm], v)['ap'], mean_ap(s, y, v)['ap'], atol=1e-12)


def test_unspecified_ignored_not_negative():
    s, y = _random_wider(300, 3, seed=4)
    r = mean_ap(s, y)
    # any score on an unspecified entry changes nothing ...
    s2 = np.where(y == UNSPECIFIED, np.random.default_rng(9).random(s.shape) * 5, s)
    np.testing.assert_allclose(mean_ap(s2, y)['ap'], r['ap'], atol=1e-12)
    # ... whereas reading them as negatives does
    r_neg = mean_ap(s, np.where(y == UNSPECIFIED, 0, y))
    assert not np.allclose(r_neg['ap'], r['ap'])
    assert list(r['n_specified']) == list((y != UNSPECIFIED).sum(0))


def test_attribute_without_positive_is_excluded_never_nan():
    s, y = _random_wider(100, 3, seed=5)
    y[:, 1] = np.where(y[:, 1] == 1, 0, y[:, 1])     # attribute 1: negatives and unspecified only
    r = mean_ap(s, y)
    assert r['ap'][1] is None and r['excluded'] == [1]
    assert r['mAP'] == pytest.approx((r['ap'][0] + r['ap'][2]) / 2)
    json.dumps(to_jsonable(r))                       # JSON-able, no NaN


def test_no_positive_anywhere_gives_none_and_all_unspecified_is_refused():
    r = mean_ap([[0.1, 0.2], [0.3, 0.4]], [[0, 0], [0, UNSPECIFIED]])
    assert r['mAP'] is None and r['ap'] == [None, None] and r['excluded'] == [0, 1]
    with pytest.raises(KitError, match='unspecified'):
        mean_ap([[0.1], [0.2]], [[UNSPECIFIED], [UNSPECIFIED]])


def test_pr_points_area_is_ap():
    s, y = _random_wider(80, 1, seed=6, ties=True)
    p = pr_points(s[:, 0], y[:, 0])
    r = np.concatenate([[0.0], p['recall']])
    assert np.sum(np.diff(r) * p['precision']) == pytest.approx(mean_ap(s, y, 'non_interpolated')['mAP'], abs=1e-12)
    assert np.sum(np.diff(r) * p['interpolated']) == pytest.approx(mean_ap(s, y, 'interpolated')['mAP'], abs=1e-12)
    assert p['recall'][-1] == 1.0 and np.all(np.diff(p['interpolated']) <= 0)
    with pytest.raises(KitError, match='no specified positive'):
        pr_points([0.2, 0.3], [0, UNSPECIFIED])


# ---------------------------------------------------------------- input validation

def test_shape_mismatch_names_both_shapes():
    with pytest.raises(KitError) as e:
        mean_ap(np.zeros((5, 3)), np.zeros((5, 4)))
    assert '(5, 3)' in str(e.value) and '(5, 4)' in str(e.value)
    with pytest.raises(KitError, match=r'\(2, 2\).*\(2, 3\)'):
        pedestrian_metrics(np.zeros((2, 2)), np.zeros((2, 3)))


def test_nan_and_bad_values_rejected():
    with pytest.raises(KitError, match='NaN'):
        mean_ap([[0.1, float('nan')]], [[1, 0]])
    with pytest.raises(KitError, match='NaN'):
        pedestrian_metrics([[0.1, float('nan')]], [[1, 0]])
    with pytest.raises(KitError, match='sigmoid'):
        pedestrian_metrics([[-2.0, 3.0]], [[1, 0]])          # logits instead of probabilities
    with pytest.raises(KitError, match=r'\[2\]'):
        mean_ap([[0.1, 0.2]], [[1, 2]])
    with pytest.raises(KitError, match='variant'):
        mean_ap([[0.1]], [[1]], variant='voc07')
    for kw in (dict(rule='=>'), dict(unspecified='drop'), dict(zero_division=0.5), dict(threshold=float('nan'))):
        with pytest.raises(KitError, match=list(kw)[0]):
            pedestrian_metrics([[0.1]], [[1]], **kw)


def test_torch_and_float_labels_accepted():
    import torch
    s, y = _random_wider(50, 3, seed=7)
    s = np.clip(s / 1.4, 0, 1)
    a = pedestrian_metrics(torch.tensor(s, dtype=torch.float64), torch.tensor(y, dtype=torch.float32))
    b = pedestrian_metrics(s, y)
    assert a['mA'] == b['mA'] and a['f1'] == b['f1'] and a['acc'] == b['acc']   # float64 kept exactly
    assert mean_ap(torch.tensor(s), torch.tensor(y))['mAP'] == mean_ap(s, y)['mAP']
    half = pedestrian_metrics(torch.tensor(s, dtype=torch.bfloat16), torch.tensor(y))
    assert half['mA'] == pytest.approx(b['mA'], abs=0.05)


# ---------------------------------------------------------------- pedestrian metrics

def _hand_case():
    # predicted sets with threshold 0.5 and '>=': {a}, {b, c}, {a, c}, {}; true sets {a, b}, {b}, {a, c}, {}
    s = np.array([[.9, .2, .1], [.3, .8, .7], [.5, .4, .6], [.1, .2, .3]])
    y = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    return s, y


def test_pedestrian_hand_computed():
    s, y = _hand_case()
    m = pedestrian_metrics(s, y)
    # per attribute (TP/P + TN/N)/2: a (2/2 + 2/2)/2, b (1/2 + 2/2)/2, c (1/1 + 2/3)/2
    assert m['ma_per_attr'] == pytest.approx([1.0, 0.75, 5 / 6])
    assert m['mA'] == pytest.approx((1 + 0.75 + 5 / 6) / 3)
    assert m['acc'] == pytest.approx((1 / 2 + 1 / 2 + 1 + 0) / 4)
    assert m['prec'] == pytest.approx((1 + 1 / 2 + 1 + 0) / 4)
    assert m['rec'] == pytest.approx((1 / 2 + 1 + 1 + 0) / 4)
    assert m['f1'] == pytest.approx(0.625)
    assert m['f1_mean_instance'] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)
    np.testing.assert_allclose(m['acc_per_attr'], [1.0, 0.75, 0.75])
    np.testing.assert_allclose(m['prec_per_attr'], [1.0, 1.0, 0.5])
    np.testing.assert_allclose(m['rec_per_attr'], [1.0, 0.5, 1.0])
    assert (m['rule'], m['threshold'], m['zero_division'], m['unspecified']) == ('>=', 0.5, 0.0, 'ignore')
    for k in ('mA', 'acc', 'prec', 'rec', 'f1', 'f1_mean_instance'):
        assert 0.0 <= m[k] <= 1.0


def test_threshold_rule():
    s, y = _hand_case()                              # sample 2 attribute a scores exactly 0.5
    assert pedestrian_metrics(s, y, rule='>=')['rec'] == pytest.approx(0.625)
    assert pedestrian_metrics(s, y, rule='>')['rec'] == pytest.approx((1 / 2 + 1 + 1 / 2 + 0) / 4)
    assert pedestrian_metrics(s, y, threshold=0.85)['prec'] == pytest.approx((1 + 0 + 0 + 0) / 4)


def test_sample_without_positive_or_prediction_uses_zero_division():
    s, y = _hand_case()                              # sample 3: no positive label and no prediction
    m1 = pedestrian_metrics(s, y, zero_division=1)
    assert m1['acc'] == pytest.approx((1 / 2 + 1 / 2 + 1 + 1) / 4)
    assert m1['prec'] == pytest.approx((1 + 1 / 2 + 1 + 1) / 4)
    assert m1['f1_mean_instance'] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    # a sample with positives but no prediction: precision 0/0 -> zero_division, recall 0, F1_i 0
    m = pedestrian_metrics([[0.1, 0.2]], [[1, 0]], zero_division=1)
    assert (m['prec'], m['rec'], m['f1_mean_instance'], m['f1']) == (1.0, 0.0, 0.0, 0.0)


def test_no_predictions_at_all_is_defined():
    _, y = _hand_case()
    m = pedestrian_metrics(np.zeros(y.shape), y)
    assert [m[k] for k in ('mA', 'acc', 'prec', 'rec', 'f1', 'f1_mean_instance')] == [0.5, 0, 0, 0, 0, 0]
    assert all(math.isfinite(v) for v in m['prec_per_attr'])


def test_attribute_without_positive_excluded_from_mA():
    s, y = _hand_case()
    y[:, 2] = 0
    m = pedestrian_metrics(s, y)
    assert m['ma_excluded'] == [2] and m['ma_per_attr'][2] is None
    assert m['mA'] == pytest.approx((1 + 0.75) / 2)
    y[:, :] = 0
    assert pedestrian_metrics(s, y)['mA'] is None
    json.dumps(to_jsonable(pedestrian_metrics(s, y)))


def test_unspecified_modes():
    s, y = _hand_case()
    y[1, 2] = UNSPECIFIED                            # sample 1's false positive on c becomes unspecified
    m = pedestrian_metrics(s, y)
    assert m['prec'] == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert m['ma_per_attr'][2] == pytest.approx(1.0)
    assert pedestrian_metrics(s, y, unspecified='negative')['prec'] == pytest.approx(0.625)
    with pytest.raises(KitError, match='unspecified'):
        pedestrian_metrics(s, y, unspecified='error')
    y[3, :] = UNSPECIFIED                            # a sample with nothing specified leaves the instance means
    m = pedestrian_metrics(s, y)
    assert m['n_samples'] == 3 and m['prec'] == pytest.approx(1.0)


@pytest.mark.parametrize('z', [0, 1])
def test_pedestrian_matches_sklearn(z):
    rng = np.random.default_rng(11)
    y = (rng.random((300, 8)) < np.linspace(0.03, 0.9, 8)).astype(int)
    y[:4] = 0                                        # samples without positives
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    b = (s >= 0.5).astype(int)
    m = pedestrian_metrics(s, y, zero_division=z)
    assert m['prec'] == pytest.approx(precision_score(y, b, average='samples', zero_division=z), abs=1e-12)
    assert m['rec'] == pytest.approx(recall_score(y, b, average='samples', zero_division=z), abs=1e-12)
    assert m['acc'] == pytest.approx(jaccard_score(y, b, average='samples', zero_division=z), abs=1e-12)
    assert m['f1_mean_instance'] == pytest.approx(f1_score(y, b, average='samples', zero_division=z), abs=1e-12)
    for c in range(y.shape[1]):
        assert m['acc_per_attr'][c] == pytest.approx(accuracy_score(y[:, c], b[:, c]), abs=1e-12)
        assert m['prec_per_attr'][c] == pytest.approx(precision_score(y[:, c], b[:, c], zero_division=z), abs=1e-12)
        assert m['rec_per_attr'][c] == pytest.approx(recall_score(y[:, c], b[:, c], zero_division=z), abs=1e-12)
        assert m['ma_per_attr'][c] == pytest.approx(balanced_accuracy_score(y[:, c], b[:, c]), abs=1e-12)


def test_f1_is_harmonic_of_means_not_mean_of_f1():
    m = pedestrian_metrics(*_hand_case())
    assert m['f1'] == pytest.approx(harmonic_f1(m['prec'], m['rec']))
    assert m['f1'] != pytest.approx(m['f1_mean_instance'])


@pytest.mark.parametrize('prec,rec,f1', [(84.54, 76.84, 80.50), (66.50, 84.13, 74.28), (80.14, 81.30, 80.72)])
def test_dahar_table2_f1_identity(prec, rec, f1):
    # Da-HAR Table 2, RAP, BCE / weighted / mixed loss rows; inputs rounded to 0.01, hence the 0.01 tolerance
    assert harmonic_f1(prec, rec) == pytest.approx(f1, abs=0.01)
    assert harmonic_f1(prec / 100, rec / 100) == pytest.approx(f1 / 100, abs=1e-4)
    assert harmonic_f1(0.0, 0.0) == 0.0


def test_rap_sized_arrays():
    "RAP-sized inputs (100k x 51) go through; their speed is the benchmarks' business, not a test's."
    rng = np.random.default_rng(12)
    y = (rng.random((100_000, 51)) < 0.15).astype(np.int8)
    s = rng.random((100_000, 51)).astype(np.float32)
    r = mean_ap(s, y)
    m = pedestrian_metrics(s, y)
    assert r['mAP'] == pytest.approx(0.15, abs=0.01) and m['mA'] == pytest.approx(0.5, abs=0.01)


def test_one_metrics_entry_for_every_section(tmp_path):
    "metrics_entry: per protocol the dataset's headline scalars and per_attribute; read_metrics refuses an older schema."
    from har_kit.core import save_json
    from har_kit.metrics import METRICS_SCHEMA, metrics_entry, read_metrics
    rng = np.random.default_rng(0)
    s, y = rng.random((30, 3)), (rng.random((30, 3)) < .5).astype(np.int8)
    w = metrics_entry('wider', {'full': mean_ap(s, y), 'crops': mean_ap(s[::-1], y)}, list('abc'), epoch=2, final_loss=None)
    assert list(w) == ['schema', 'dataset', 'metric', 'full', 'crops', 'epoch'] and w['schema'] == METRICS_SCHEMA
    assert w['full'] == {'mAP': mean_ap(s, y)['mAP'], 'per_attribute': dict(zip('abc', mean_ap(s, y)['ap']))}
    r = metrics_entry('pa100k', {'full': pedestrian_metrics(s, y)}, list('abc'), extra={'theta_median': 40.0})
    assert list(r['full']) == ['mA', 'acc', 'prec', 'rec', 'f1', 'f1_mean_instance', 'per_attribute'] and r['extra'] == {'theta_median': 40.0}
    with pytest.raises(KitError, match='extra='): metrics_entry('rap', {'full': pedestrian_metrics(s, y)}, list('abc'), theta=1)
    with pytest.raises(KitError, match="lacks"): metrics_entry('rap', {'full': mean_ap(s, y)}, list('abc'))
    save_json({'baseline': r, '_meta': {}}, tmp_path/'metrics.json')
    assert read_metrics(tmp_path, 'baseline') == json.loads(json.dumps(r))
    save_json({'baseline': {'mA': 0.5, 'ma_per_attr': {}}, '_meta': {}}, tmp_path/'metrics.json')
    with pytest.raises(KitError, match=r'schema 1, this kit reads schema \d+: rerun'): read_metrics(tmp_path)


def _brute_balanced_accuracy(s, y, t):   # (TPR + TNR) / 2 of predicting s > t, counted here sample by sample
    tp = sum(1 for a, b in zip(s, y) if a > t and b == 1); tn = sum(1 for a, b in zip(s, y) if a <= t and b == 0)
    return (tp / sum(y) + tn / (len(y) - sum(y))) / 2


def test_balanced_accuracy_thresholds_reach_the_best_cut_counted_by_hand():
    "The 'balanced_accuracy' rule: TPR over the positives P, TNR over the negatives N; P != N here, so a mix-up shows."
    from har_kit.metrics import choose_thresholds
    s = np.array([.05, .15, .25, .35, .45, .55, .65, .75, .85, .95, .5, .6])
    y = np.array([0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0])                       # P = 4, N = 8
    r = choose_thresholds(s[:, None], y[:, None], 'balanced_accuracy')
    cuts = np.r_[0, (np.sort(s)[:-1] + np.sort(s)[1:]) / 2, 1]
    best = max(_brute_balanced_accuracy(s, y, t) for t in cuts)
    assert r['score'][0] == pytest.approx(best) and best == pytest.approx(0.8125)   # cut in (.6, .65): TPR 3/4, TNR 7/8
    assert _brute_balanced_accuracy(s, y, r['thresholds'][0]) == pytest.approx(best)


@pytest.mark.parametrize('level, label', [(None, 'unknown'), (0, '0'), (2, '2'), (3, '3+'), (4, '3+'), (7, '3+')])
def test_distraction_bin_puts_the_cap_itself_in_the_top_bin(level, label):
    from har_kit.metrics import distraction_bin
    assert distraction_bin(level) == label
    assert distraction_bin(5, cap=5) == '5+' and distraction_bin(4, cap=5) == '4'


def test_unspecified_labels_read_as_negative_only_where_the_loss_says_so():
    "False (the loss's negatives) reads them as negative; True, and None (a switch not known), leave them out; WIDER's mAP always does."
    from har_kit.metrics import reads_unspecified_as_negative
    assert reads_unspecified_as_negative('rap', False) and reads_unspecified_as_negative('pa100k', False)
    assert not any(reads_unspecified_as_negative('rap', v) for v in (True, None))
    assert not reads_unspecified_as_negative('wider', False)


def test_target_mass_gives_the_callers_network_back_in_the_mode_it_came_in():
    "Scoring where a network looks between two epochs of a user's loop leaves its BatchNorm and Dropout training."
    import torch
    from torch import nn
    from har_kit.metrics import target_mass
    class Net(nn.Module):
        def __init__(self):
            super().__init__(); self.f = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.5))
        def forward(self, x): return {'map': self.f(x)}
    m = Net().train(); m.f[3].eval()   # a part the caller froze stays frozen
    modes = [x.training for x in m.modules()]
    batch = dict(image=torch.rand(2, 3, 8, 8), mask=torch.ones(2, 1, 8, 8))
    shares = target_mass(m, [batch], lambda out: {'map': out['map']})
    assert set(shares) == {'map', 'chance'} and [x.training for x in m.modules()] == modes
