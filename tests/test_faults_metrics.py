"Metric fault catalogue (issue 13): each bad input gets a clear KitError or a stated, reported outcome."
import json
import numpy as np
import pytest
import torch

from har_kit.core import UNSPECIFIED, KitError
from har_kit.metrics import choose_thresholds, mean_ap, pedestrian_metrics

RNG = np.random.default_rng(0)
Y = (RNG.random((50, 4)) < .4).astype(np.int8); Y[0] = 1; Y[1] = 0
S = np.clip(RNG.normal(.3 + .4 * Y, .15), 0, 1)


def test_all_positive_column_is_excluded_and_reported_not_ap_1():
    y = Y.copy(); y[:, 3] = 1
    r = mean_ap(S, y)
    assert r['ap'][3] is None and 3 in r['excluded'] and r['degenerate']['no_negative'] == [3]
    assert r['degenerate']['rule'] == 'exclude'
    assert r['mAP'] == pytest.approx(np.mean([a for a in r['ap'] if a is not None]))
    old = mean_ap(S, y, degenerate='include')                        # the old count, by name only
    assert old['ap'][3] == 1.0 and old['mAP'] > r['mAP'] and old['degenerate']['no_negative'] == [3]


def test_unchanged_without_degenerate_columns():
    r, inc = mean_ap(S, Y), mean_ap(S, Y, degenerate='include')
    assert r['mAP'] == inc['mAP'] and r['excluded'] == [] and r['degenerate']['no_negative'] == []


def test_pedestrian_degenerate_columns_reported():
    y = Y.copy(); y[:, 0] = 0; y[:, 2] = 1; y[5, 1] = UNSPECIFIED
    m = pedestrian_metrics(S, y)
    assert m['degenerate'] == dict(no_positive=[0], no_negative=[2], rule='exclude')
    assert m['ma_excluded'] == [0, 2] and m['ma_per_attr'][0] is None and m['ma_per_attr'][2] is None


@pytest.mark.parametrize('bad, match', [
    (dict(scores=np.where(Y == 1, np.nan, S)), 'NaN'),
    (dict(scores=S * 8 - 4), 'sigmoid'),
    (dict(scores=S[:, :3]), 'shape'),
    (dict(labels=np.where(Y == 1, 2, Y)), 'only 1'),
    (dict(labels=np.full(Y.shape, UNSPECIFIED)), 'every entry is unspecified'),
    (dict(threshold='0.5'), 'threshold'),
    (dict(threshold=[.5, .5]), '4 finite numbers'),
    (dict(threshold=[.5, .5, np.inf, .5]), 'threshold'),
    (dict(threshold=None), 'threshold'),
    (dict(rule='=>'), 'rule'),
    (dict(unspecified='drop'), 'unspecified'),
    (dict(zero_division=.5), 'zero_division'),
])
def test_pedestrian_bad_inputs(bad, match):
    kw = {'scores': S, 'labels': Y, **bad}
    with pytest.raises(KitError, match=match): pedestrian_metrics(**kw)


@pytest.mark.parametrize('bad, match', [
    (dict(scores=np.where(Y == 1, np.inf, S)), 'NaN/inf'), (dict(variant='voc07'), 'variant'),
    (dict(degenerate='keep'), 'degenerate'), (dict(labels=Y.astype(str)), 'dtype'),
    (dict(scores=np.zeros((0, 4)), labels=np.zeros((0, 4))), 'non-empty'),
])
def test_mean_ap_bad_inputs(bad, match):
    with pytest.raises(KitError, match=match): mean_ap(**{'scores': S, 'labels': Y, **bad})


def test_tensors_of_any_float_dtype_score_like_numpy():
    t = torch.tensor(S, dtype=torch.bfloat16)
    assert mean_ap(t, torch.tensor(Y))['mAP'] == mean_ap(t.float().numpy(), Y)['mAP']


@pytest.mark.parametrize('bad, match', [
    (dict(criterion='accuracy'), 'criterion'), (dict(default=1.5), 'default'), (dict(default=[.5, .5]), 'default'),
    (dict(scores=S * 3), 'probabilities'), (dict(labels=Y[:10]), 'shape'),
])
def test_choose_thresholds_bad_inputs(bad, match):
    with pytest.raises(KitError, match=match): choose_thresholds(**{'scores': S, 'labels': Y, **bad})


def test_choose_thresholds_degenerate_and_unspecified():
    y = Y.copy(); y[:, 1] = UNSPECIFIED; y[:3, 1] = 1                # only positives specified
    r = choose_thresholds(S, y, default=.4)
    assert r['thresholds'][1] == .4 and r['score'][1] is None and r['degenerate']['no_negative'] == [1]
    assert all(0 <= t <= 1 for t in r['thresholds'])
    m = pedestrian_metrics(S, y, threshold=r['thresholds'])           # feeds straight into the metric
    assert m['threshold'] == r['thresholds'].tolist()


@pytest.mark.parametrize('bad', [True, False, np.True_, [0.5, True], np.array([True, False]), torch.tensor(True)])
def test_a_boolean_threshold_is_refused(bad):
    s, y = np.array([[.9, .2], [.3, .8]]), np.array([[1, 0], [0, 1]])
    with pytest.raises(KitError, match='a boolean is not a threshold'): pedestrian_metrics(s, y, threshold=bad)


def test_metric_results_are_plain_json():
    rng = np.random.default_rng(0)
    y = rng.choice([1, 0, -1], size=(20, 3)); s = rng.random((20, 3))
    for r in (pedestrian_metrics(s, y), mean_ap(s, y)): assert json.loads(json.dumps(r)) == r
