"Da-HAR: every Table 3 variant trains and evaluates on CPU, a run resumes exactly, mask supervision teaches the mask, the paper's parameter count (the notebook itself runs under nbdev_test, once)."
import math

import numpy as np
import pytest
import torch

from har_kit.core import KitError
from har_kit.loading import dahar_transforms, make_loader
from har_kit.data import read_rap, read_wider, tiny_fixture
from har_kit.dahar import PAPER_PARAMS_M, VARIANTS, DaHarLoss, dahar_variant, param_table
from har_kit.dahar_train import DaHarConfig, DaHarRecipe, predict_masks
from har_kit.model_file import train_variant as train_recipe
from har_kit.losses import pos_ratio
from har_kit.metrics import METRICS_SCHEMA, target_share

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def wider(tmp_path_factory):
    return read_wider(tiny_fixture('wider', tmp_path_factory.mktemp('wider'), n=12))


def train_variant(name, data, vdir, cfg):
    "One Da-HAR variant trained in `vdir` by the kit's one `train_variant`."
    return train_recipe(DaHarRecipe(cfg, data), name, vdir.parent, name=vdir.name)


def _cfg(epochs=1, **kw):
    "A small CPU run: the notebook's defaults, batches of 4, `epochs` epochs."
    return DaHarConfig(epochs=epochs, batch_size=4, **kw)


@pytest.mark.parametrize('name', list(VARIANTS))
def test_table3_variant_trains_and_evaluates(name, wider, tmp_path):
    res = train_variant(name, wider, tmp_path/name, _cfg())
    m = res['metrics']
    assert (m['schema'], m['dataset'], m['metric']) == (METRICS_SCHEMA, 'wider', 'mAP')
    assert 0 <= m['full']['mAP'] <= 1 and 0 <= m['crops']['mAP'] <= 1
    assert list(m['full']['per_attribute']) == list(wider.attributes) == list(m['crops']['per_attribute'])
    assert math.isfinite(m['final_loss']) and m['epoch'] == 1 and m['model_file'] == f'{name}/model.pt'
    assert (tmp_path/name/'checkpoints'/'last.pt').exists()
    from har_kit.model_file import load_model
    loaded = load_model(tmp_path/name/'model.pt')   # rebuilt from builder + JSON kwargs, same outputs
    assert loaded.attributes == list(wider.attributes) and len(loaded.thresholds) == len(wider.attributes)
    x = torch.randn(2, 3, *loaded.input_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)['logits'], res['model'].eval().cpu()(x)['logits'])
    assert 'val' in res['loaders'] and res['loaders']['crops'].dataset.transform is not None
    # the loader for the five-crop protocol yields (N, 5, 3, H, W)
    assert next(iter(res['loaders']['crops']))['image'].dim() == 5


def test_paper_reading_matches_the_reported_parameter_counts():
    "ResNet-101, 14 attributes (weights=None, meta device, no forward): Da-HAR within 1% of 52.4M, baseline 45.4M."
    counts = param_table(14, 'resnet101')
    assert abs(counts['paper']['dahar'] / PAPER_PARAMS_M['dahar'] - 1) < 0.01
    assert counts['paper']['baseline'] == pytest.approx(PAPER_PARAMS_M['baseline'], abs=0.1)
    assert counts['paper']['coarse_to_fine'] < counts['paper']['dahar']  # the first reading had it the other way round
    assert counts['bottleneck']['dahar'] == pytest.approx(46.8, abs=0.1)  # the first reading stays available
    with torch.device('meta'):
        assert len(dahar_variant('dahar_bottleneck', 14).self_masks) == 3 and len(dahar_variant('dahar', 14).self_masks) == 4


@pytest.mark.shared('papers/da-har_aaai2020.md')
def test_paper_params_are_the_papers():
    "PAPER_PARAMS_M is parsed against the paper's text (Computational Complexity Analysis), not retyped."
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1].parent/'shared'/'papers'/'da-har_aaai2020.md').read_text()
    base = re.search(r'baseline network has ([\d.]+)M parameters', text).group(1)
    full = re.search(r'\(Da-HAR\) has ([\d.]+)M parameters', text).group(1)
    assert PAPER_PARAMS_M == {'baseline': float(base), 'dahar': float(full)}


def test_table3_training_options(wider, tmp_path):
    "Rows 6-7 of Table 3: ignore 0-labeled, and the validation split in training (no val loader left)."
    res = train_variant('dahar', wider, tmp_path/'r7', _cfg(ignore_unspecified=True, train_splits=['train', 'val']))
    assert 'val' not in res['loaders']
    assert len(res['loaders']['train'].dataset) == len(wider.split('train', 'val'))
    for loss in ('weighted', 'mixed'):
        r = train_variant('baseline', wider, tmp_path/loss, _cfg(loss=loss))
        assert math.isfinite(r['metrics']['final_loss'])


def test_rap_like_uses_pedestrian_metrics(tmp_path):
    rap = read_rap(tiny_fixture('rap', tmp_path/'rap', n=16))
    res = train_variant('dahar', rap, tmp_path/'run', _cfg(loss='mixed', dataset='rap'))
    m = res['metrics']
    assert list(m['full']) == list(m['crops']) == ['mA', 'acc', 'prec', 'rec', 'f1', 'f1_mean_instance', 'per_attribute'] and m['metric'] == 'mA'
    img = next(iter(res['loaders']['train']))['image']
    assert img.shape[-2] == 2 * img.shape[-1]  # RAP keeps height / width = 2


def test_dahar_run_resumes(wider, tmp_path):
    "An interrupted Da-HAR run (1 of 2 epochs) resumed from last.pt ends with the weights of an uninterrupted run."
    straight = train_variant('dahar', wider, tmp_path/'straight', _cfg(2))
    first = train_variant('dahar', wider, tmp_path/'resumed', _cfg(1))
    resumed = train_variant('dahar', wider, tmp_path/'resumed', _cfg(2))
    assert [h['epoch'] for h in resumed['history']] == [1, 2]
    assert resumed['history'][0]['loss'] == pytest.approx(first['history'][0]['loss'])
    assert resumed['history'][1]['loss'] == pytest.approx(straight['history'][1]['loss'], rel=1e-5)
    a, b = straight['model'].state_dict(), resumed['model'].state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    assert resumed['metrics']['full']['mAP'] == pytest.approx(straight['metrics']['full']['mAP'], abs=1e-6)


def test_a_resume_with_other_augmentation_or_masks_is_refused(wider, tmp_path):
    "max_distort, the pipeline and the masks were not in the checkpoints' params: a resume under others went on without a word."
    import shutil
    from PIL import Image
    from har_kit.data import read_wider
    root = tmp_path/'data'; shutil.copytree(wider.samples[0].image.parents[3], root)
    data = read_wider(root)
    train_variant('dahar', data, tmp_path/'run', _cfg(1))
    for kw, what in ((dict(max_distort=2), 'max_distort: 1 -> 2'), (dict(pipeline='device'), "pipeline: 'loader' -> 'device'")):
        with pytest.raises(KitError, match=f'other parameters \\({what}\\)'): train_variant('dahar', data, tmp_path/'run', _cfg(2, **kw))
    shutil.copytree(root/'masks', tmp_path/'other_masks')
    one = next(s.mask for s in data.split('train') if s.mask is not None)
    Image.new('L', Image.open(one).size, 255).save(tmp_path/'other_masks'/one.relative_to(root/'masks'))   # another mask for one target
    with pytest.raises(KitError, match=r'other parameters \(masks: '):
        train_variant('dahar', read_wider(root, mask_dir=tmp_path/'other_masks'), tmp_path/'run', _cfg(2))
    shutil.move(root, tmp_path/'moved')   # the same data and masks elsewhere (staged to a node's disk): it resumes
    assert [h['epoch'] for h in train_variant('dahar', read_wider(tmp_path/'moved'), tmp_path/'run', _cfg(2))['history']] == [1, 2]
    box = DaHarRecipe(_cfg(mask_supervision='box'), wider)
    assert box.params('dahar')['masks'] is None and DaHarRecipe(_cfg(), wider).params('baseline')['masks'] is None


def test_mask_supervision_teaches_the_mask(wider):
    "Overfitting one batch: with the mask loss the masked-attention mask moves onto the target; without it, it does not learn the person."
    torch.manual_seed(0)
    loader = make_loader(wider.split('train'), dahar_transforms(False, scale=0.25), 8, False, with_mask=True)
    batch = next(iter(loader))
    y = torch.as_tensor(batch['labels'])
    masses = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        net = dahar_variant('dahar', y.shape[1], 'resnet-tiny')
        crit = DaHarLoss('bce', mask_weight=weight)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        net.train()
        for _ in range(80):   # enough steps that the supervised mask converges on every seed tried (0-3), not just one
            opt.zero_grad(); crit(net(batch['image']), batch)['loss'].backward(); opt.step()
        out = predict_masks(net, loader)
        masses[weight] = float(target_share(out['pred'], out['gt']).mean())
        chance = float(out['gt'].flatten(1).mean(1).mean())
    assert masses[5.0] > chance + 0.3, (masses, chance)
    assert masses[5.0] > masses[0.0] + 0.3, (masses, chance)


def test_bad_inputs_name_the_field(wider, tmp_path):
    with pytest.raises(KitError, match='unknown Da-HAR variant'):
        train_variant('srn', wider, tmp_path, _cfg())
    with pytest.raises(KitError, match='eval_split|no split'):
        train_variant('baseline', wider, tmp_path, _cfg(eval_split='holdout'))
    with pytest.raises(KitError, match='needs pos_ratio'):
        DaHarLoss('weighted')
    with pytest.raises(KitError, match='predict_masks needs'):
        predict_masks(dahar_variant('fusion', 5, 'resnet-tiny'), None)
    np.testing.assert_allclose(pos_ratio(np.array([[1, -1], [0, 1]]), True), [0.5, 1.0])


@pytest.mark.parametrize('splits', [[], ['test'], ['train', 'test']])
def test_training_on_the_scored_split_is_refused(splits):
    "train_splits=[] (every split) or one holding the scored split would train on the test images: refused for both methods."
    from har_kit.core import KitError
    from har_kit.dahar_train import DaHarConfig
    from har_kit.campar_train import split_train_eval
    from har_kit.data import load_dataset
    with pytest.raises(KitError, match='train_splits'): DaHarConfig(train_splits=splits)
    with pytest.raises(KitError, match='train_splits'): split_train_eval(load_dataset('pa100k', profile='tiny'), splits, '[15]')


def test_max_distort_reaches_the_training_windows(tmp_path):
    "The run parameter max_distort (SRN's 1 by default) sets the window pairs the training loader draws; below 0 is refused."
    from har_kit.dahar_train import dahar_loaders
    data = read_wider(tiny_fixture('wider', tmp_path/'w'))
    crop = lambda cfg: dahar_loaders(data, cfg)['train'].dataset.transform.transforms[2]
    assert len(crop(DaHarConfig(batch_size=2)).pairs) == 13 and len(crop(DaHarConfig(batch_size=2, max_distort=4)).pairs) == 25
    with pytest.raises(KitError, match='max_distort'): DaHarConfig(max_distort=-1)


def test_criterion_pos_ratio_follows_ignore_unspecified(wider):
    "w_c of Eq. 2 is pos_ratio(training labels, ignore_unspecified): among specified labels when they are ignored."
    y = wider.labels('train')
    assert not np.allclose(pos_ratio(y, True), pos_ratio(y, False))   # the fixture's unspecified labels tell them apart
    for ignore in (True, False):
        crit = DaHarRecipe(_cfg(loss='weighted', ignore_unspecified=ignore), wider).criterion('dahar')
        assert crit.kind == 'weighted' and crit.ignore_unspecified is ignore
        np.testing.assert_allclose(crit.pos_ratio.numpy(), pos_ratio(y, ignore), rtol=1e-6)


def test_mixed_loss_is_mix_times_bce_plus_the_rest_weighted():
    "DaHarLoss('mixed', mix=0.25) = 0.25 x Eq. 1 + 0.75 x Eq. 2 (mix = 1 is plain BCE)."
    from har_kit.losses import bce_loss, weighted_bce_loss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    labels = torch.tensor([[1, 0, -1, 1], [0, 0, 1, 1], [1, -1, 0, 0], [0, 1, 1, 0], [1, 1, 0, -1], [0, 0, 0, 1]])
    ratio = np.array([.2, .3, .6, .5], np.float32)
    for ignore in (False, True):
        got = DaHarLoss('mixed', ratio, mix=0.25, mask_weight=0, ignore_unspecified=ignore)(dict(logits=logits), dict(labels=labels))
        want = 0.25 * bce_loss(logits, labels, ignore) + 0.75 * weighted_bce_loss(logits, labels, torch.as_tensor(ratio), ignore)
        assert float(want) != pytest.approx(float(0.75 * bce_loss(logits, labels, ignore) + 0.25 * weighted_bce_loss(
            logits, labels, torch.as_tensor(ratio), ignore)))   # the two weightings differ on these numbers
        torch.testing.assert_close(got['loss'], want)


def test_fusion_block_area_averages_a_larger_level_after_reducing_it():
    "A level finer than the target is reduced (1x1 conv + BN) and then area-averaged (adaptive_avg_pool2d) to its size."
    import torch.nn.functional as F
    from har_kit.dahar import FusionBlock
    torch.manual_seed(0)
    fb = FusionBlock([4, 6], out_channels=5, target=1, blocks=0).eval()   # blocks=0: the output is relu(sum of the levels)
    for bn in (fb.reduce[0][1], fb.reduce[1][1]):                         # non-trivial BN statistics, as after training
        bn.running_mean.uniform_(-.5, .5); bn.running_var.uniform_(.5, 2)
    c3, c4 = torch.randn(2, 4, 8, 6), torch.randn(2, 6, 4, 3)
    with torch.no_grad():
        want = F.relu(F.adaptive_avg_pool2d(fb.reduce[0](c3), (4, 3)) + fb.reduce[1](c4))
        torch.testing.assert_close(fb([c3, c4]), want)


def test_confidence_attention_is_a_softmax_over_positions_weighting_confident_scores():
    "Per attribute map a sums to 1 over the H x W positions (not over attributes); side logits = sum(a * sigma(s) * W x) + b."
    import torch.nn.functional as F
    from har_kit.dahar import ConfidenceAttention
    torch.manual_seed(0)
    att = ConfidenceAttention(6, 3, hidden=4).eval()
    x = torch.randn(2, 6, 5, 4)
    with torch.no_grad():
        logits, a, s = att(x)
        torch.testing.assert_close(a.sum((2, 3)), torch.ones(2, 3))
        assert not torch.allclose(a.sum(1), torch.ones(2, 5, 4))          # a softmax over attributes would sum to 1 here
        want = (a * torch.sigmoid(att.confidence(x)) * F.conv2d(x, att.classifier.weight)).sum((2, 3)) + att.classifier.bias
        torch.testing.assert_close(logits, want)
        torch.testing.assert_close(a, torch.softmax(att.att(x).flatten(2), -1).view(2, 3, 5, 4))


def test_dahar_logits_are_the_mean_of_the_main_and_side_logits():
    torch.manual_seed(0)
    net = dahar_variant('dahar', 3, 'resnet-tiny').eval()
    with torch.no_grad(): out = net(torch.randn(2, 3, 64, 32))
    assert not torch.allclose(out['logits_main'], out['logits_side'])
    torch.testing.assert_close(out['logits'], (out['logits_main'] + out['logits_side']) / 2)


def test_the_distraction_bins_read_unspecified_labels_as_the_full_metric_does():
    "by_distractors followed `full`'s reading of unspecified labels: it left them out while `full` read them as negatives."
    from types import SimpleNamespace
    from har_kit.dahar_train import _by_distraction
    from har_kit.metrics import dataset_metric
    test = [SimpleNamespace(meta={'distractors': 0}, mask=None) for _ in range(3)]
    data = SimpleNamespace(name='rap', attributes=['a', 'b'], split=lambda name: test)
    full = dict(scores=np.array([[.9, .2], [.4, .7], [.6, .9]]), labels=np.array([[1, 0], [0, -1], [1, 1]]))
    for ignore in (False, True):
        cfg = SimpleNamespace(eval_split='test', ignore_unspecified=ignore)
        got = _by_distraction(None, data, cfg, full)['by_distractors']['0']['mA']
        assert got == pytest.approx(dataset_metric('rap', ignore)(full['scores'], full['labels'])['mA'])


@pytest.mark.parametrize('dataset, scale, size', [('wider', 0.01, '2 x 2'), ('wider', 0.1, '22 x 22'), ('rap', 0.1, '22 x 11'),
                                                  ('pa100k', 0.14, '31 x 16')])
def test_a_scale_giving_a_tiny_input_is_refused_naming_scale_and_the_size(dataset, scale, size):
    "scale=0.01 trained a 2 x 2 input without a word: an input under 32 px high (16 wide on the pedestrian sets) is a KitError."
    with pytest.raises(KitError, match=f'scale={scale}: the network input would be {size} px'): DaHarConfig(dataset=dataset, scale=scale)
    DaHarConfig(dataset=dataset, scale=0.1875); DaHarConfig(dataset=dataset, scale=0.143)   # the quick profile (RAP: 42 x 21); the least


def test_the_masks_learn_from_the_classification_loss():
    "Eq. 1's gradient reaches the self-mask blocks (no loss of their own) and the masked-attention mask (its only signal at "
    "mask_weight 0, Fig. 5's unsupervised model): a detached mask would freeze them silently."
    torch.manual_seed(0)
    net = dahar_variant('dahar', 4, 'resnet-tiny')
    out = net(torch.randn(2, 3, 64, 64))
    DaHarLoss('bce', mask_weight=0)(out, dict(labels=torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]])))['loss'].backward()
    grads = {'side.mask': net.side.mask[-1].weight.grad, **{f'self_masks.{k}': b.mask[0].weight.grad for k, b in net.self_masks.items()}}
    assert len(grads) > 1 and all(g is not None and float(g.norm()) > 0 for g in grads.values()), grads


def test_branch_weight_adds_both_branches_losses():
    "branch_weight w: L(logits) + w (L(main) + L(side)), each with the configured classification loss."
    from har_kit.losses import bce_loss
    g = torch.Generator().manual_seed(0)
    out = {k: torch.randn(3, 4, generator=g) for k in ('logits', 'logits_main', 'logits_side')}
    y = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]])
    got = DaHarLoss('bce', mask_weight=0, branch_weight=0.5)(out, dict(labels=y))['loss']
    torch.testing.assert_close(got, bce_loss(out['logits'], y) + 0.5 * (bce_loss(out['logits_main'], y) + bce_loss(out['logits_side'], y)))


def test_the_metric_and_the_saved_thresholds_read_unspecified_labels_as_the_loss_does(tmp_path):
    "ignore_unspecified=False: the loss reads -1 as negative, so do the run's metric and the thresholds its model file keeps."
    from har_kit.core import UNSPECIFIED
    from har_kit.metrics import choose_thresholds, pedestrian_metrics
    data = read_rap(tiny_fixture('rap', tmp_path/'rap', n=12), uncertain='unspecified', mask_dir=False)
    rec = DaHarRecipe(DaHarConfig(dataset='rap', ignore_unspecified=False, mask_weight=0.0, cache_mb=0), data=data)
    s = np.array([[.9, .2], [.4, .7], [.6, .9], [.3, .1]]); y = np.array([[1, 0], [0, UNSPECIFIED], [1, 1], [0, UNSPECIFIED]])
    assert rec.evaluate(s, y)['mA'] == pedestrian_metrics(s, y, unspecified='negative')['mA'] != pedestrian_metrics(s, y)['mA']
    m = len(data.attributes)
    sv, yv = np.tile(s, (1, m))[:, :m], np.tile(y, (1, m))[:, :m]
    rec.predict = lambda model, loader: dict(scores=sv, labels=yv)   # the validation split's predictions
    th = rec.model_file(None, 'dahar', {'val': None}, {})['thresholds']
    assert th == [float(t) for t in choose_thresholds(sv, np.where(yv == UNSPECIFIED, 0, yv))['thresholds']]
    assert th != [float(t) for t in choose_thresholds(sv, yv)['thresholds']]
