"CAM-PAR (har_kit.campar, har_kit.campar_train): Eq. 9-16 on small tensors, the MCA fusion, the four Table 2 variants trained by the engine."

import numpy as np
from types import SimpleNamespace
import pytest
import torch
import torch.nn.functional as F

from har_kit.core import KitError, UNSPECIFIED
from har_kit.campar import (VARIANTS, CamParLoss, MCAFusion, attribute_activation, attribute_angles,
                            campar_variant, class_activation_map, disentangled_features,
                            l_shared, l_specific, l_specific_materialised, l_specific_public, positive_angles)
from har_kit.campar_train import CamParConfig, CamParRecipe, campar_train_config
from har_kit.model_file import load_model, train_variant
from har_kit.engine import predict
from har_kit.metrics import pedestrian_metrics

torch.set_num_threads(1)


def _maps(n=3, m=6, c=10, h=5, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g), torch.randn(m, c, generator=g), torch.randn(m, generator=g)


def test_eq12_matches_materialised_computation():
    f, w, b = _maps()
    a = attribute_activation(f, w)
    cam = class_activation_map(a)
    # literal Eq. 11-12, written out here independently of the module: f_d = CAM_j * f, GAP, w_j^T . + b_j
    fd = torch.stack([cam[:, j:j + 1] * f for j in range(w.shape[0])], 1)          # (N, M, C, H, W)
    direct = torch.stack([fd[:, j].mean((2, 3)) @ w[j] for j in range(w.shape[0])], 1) + b
    torch.testing.assert_close(l_specific(cam, a, b), direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l_specific_materialised(cam, f, w, b), direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((disentangled_features(cam, f) * w).sum(-1) + b, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l_shared(a, b), F.linear(f.mean((2, 3)), w, b), rtol=1e-5, atol=1e-5)


def test_public_code_formula_differs_from_eq12():
    f, w, _ = _maps(seed=1)
    a = attribute_activation(f, w); cam = class_activation_map(a)
    pub = l_specific_public(cam, f, w)
    torch.testing.assert_close(pub, disentangled_features(cam, f) @ w.sum(0), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(pub, l_specific(cam, a), atol=1e-2)


def test_cam_normalisation_and_all_zero_guard():
    f, w, _ = _maps()
    cam = class_activation_map(attribute_activation(f, w))
    peak = cam.flatten(2).amax(-1)
    assert ((peak == 1) | (peak == 0)).all() and (cam >= 0).all()
    leaf = torch.rand(2, 3, 4, 4, requires_grad=True)
    a = -leaf                                                   # every map non-positive: the guarded case
    c = class_activation_map(a)
    assert c.abs().sum() == 0
    (c.sum() + l_specific(c, a).sum()).backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_mca_fusion_width_and_resolution():
    mca = MCAFusion([32, 64, 128])
    assert (mca.out_channels, mca.latent) == (128, 32)
    feats = [torch.randn(2, 32, 8, 6), torch.randn(2, 64, 4, 3), torch.randn(2, 128, 2, 2)]
    out = mca(feats)
    assert out.shape == (2, 128, 8, 6) and (out >= 0).all()
    assert MCAFusion([32, 64, 128], out_channels=16, fuse_at='deepest')(feats).shape == (2, 16, 2, 2)
    with pytest.raises(KitError, match='fuse_at'): MCAFusion([32, 64, 128], fuse_at='middle')
    with pytest.raises(KitError, match='3 stages'): mca(feats[:2])


def test_resnet50_fusion_width_is_2048():
    mca = MCAFusion([512, 1024, 2048])
    assert mca.out_channels == 2048 and mca.project[0][0].out_channels == 2048


def test_loss_eq13_eq16():
    lg = torch.tensor([[1.5, -0.5, 0.3], [0.2, 0.1, -2.0]])
    y = torch.tensor([[1., 0., UNSPECIFIED], [0., 1., 1.]])
    per = F.binary_cross_entropy_with_logits(lg, (y == 1).float(), reduction='none')
    loss = lambda lg, **kw: CamParLoss(**kw)({'logits_shared': lg}, {'labels': y})['loss']
    torch.testing.assert_close(loss(lg), per.sum(1).mean())
    torch.testing.assert_close(loss(lg, ignore_unspecified=True), (per * (y != UNSPECIFIED)).sum(1).mean())
    r = torch.tensor([0.2, 0.5, 0.9])
    wt = torch.where(y == 1, torch.exp(1 - r), torch.exp(r))
    torch.testing.assert_close(loss(lg, pos_ratio=r), (per * wt).sum(1).mean())
    parts = CamParLoss()({'logits_shared': lg, 'logits_specific': -lg, 'logits': lg}, {'labels': y})
    torch.testing.assert_close(parts['loss'], loss(lg) + loss(-lg))


def test_variant_errors():
    with pytest.raises(KitError, match='campar_fusion'): campar_variant('campar+cfar', 5, arch='resnet-tiny')
    with pytest.raises(KitError, match='predict'): campar_variant('campar', 5, arch='resnet-tiny', predict='max')
    with pytest.raises(KitError, match='num_attributes'): campar_variant('campar', 0, arch='resnet-tiny')
    with pytest.raises(KitError, match='optimizer'): campar_train_config('lbfgs')


def test_theta_never_above_90_for_cam_features():
    model = campar_variant('campar', 5, arch='resnet-tiny').eval()
    with torch.no_grad(): th = attribute_angles(model, torch.randn(4, 3, 64, 48))
    ok = torch.isfinite(th)
    assert ok.any() and (th[ok] <= 90 + 1e-3).all()


class _Toy(torch.utils.data.Dataset):
    "Learnable toy set: attribute j is on when channel (j % 3) of the top / bottom half is bright."
    def __init__(self, n, m, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 64, 48, generator=g) * 0.3
        self.y = (torch.rand(n, m, generator=g) < 0.4).float()
        for j in range(m):
            rows = slice(0, 32) if j < 3 else slice(32, 64)
            self.x[:, j % 3, rows] += self.y[:, j, None, None] * 1.5
    def __len__(self): return len(self.x)
    def __getitem__(self, i):
        mask = torch.zeros(1, 64, 48); mask[:, 16:48, 12:36] = 1                 # the "target": a quarter of the image
        return {'image': self.x[i], 'labels': self.y[i], 'index': i, 'mask': mask}


def _loader(ds, shuffle):
    return torch.utils.data.DataLoader(ds, batch_size=8, shuffle=shuffle, drop_last=shuffle,
                                       generator=torch.Generator().manual_seed(0))


class _ToyRecipe(CamParRecipe):
    "CAM-PAR's recipe on the toy loaders: its build, loss, selection, model file and score; no dataset behind it."
    def __init__(self, loaders, m=5):
        self.config = CamParConfig(optimizer='adam', epochs=5, lr=3e-3, sample_weighting=False, cache_mb=0)
        self.data, self._loaders = type('Toy', (), {'attributes': list('abcde')[:m]}), loaders
        self.key, self.evaluate, self.eval_name, self.pos_ratio = 'mA', pedestrian_metrics, None, None
        self.levels, self.thetas, self.train_set = [i % 3 for i in range(len(loaders['test'].dataset))], {}, []

    def train_config(self): return self.config.train_config(progress=False)


@pytest.mark.parametrize('name', ['baseline', 'campar_fusion'])   # no CAM / no fusion, and both ('campar' trains in 41_campar's run)
def test_variant_trains_evaluates_and_reloads(name, tmp_path):
    test = _loader(_Toy(32, 5, 1), False)
    loaders = {'train': _loader(_Toy(64, 5, 0), True), 'test': test, 'test_masks': test}
    res = train_variant(_ToyRecipe(loaders), name, tmp_path)   # nothing held out: the last epoch
    hist = [h['loss'] for h in res['history']]
    assert all(np.isfinite(hist)) and hist[-1] < hist[0], hist
    if VARIANTS[name]['cam']: assert 'train_specific' in res['history'][0]
    met = res['metrics']
    full = met['full']
    assert all(0 <= full[k] <= 1 for k in ('mA', 'acc', 'prec', 'rec', 'f1')) and list(full['per_attribute']) == list('abcde')
    assert full['mA'] > 0.75, full['mA']    # the toy attributes are learnable: every variant must beat the prior (0.5)
    assert res['epoch'] == 5 and (tmp_path/name/'checkpoints'/'last.pt').exists() and met['model_file'] == f'{name}/model.pt'
    assert met['extra']['selected_on'] == 'last epoch' and met['extra']['thresholds'] == '0.5 (no held-out split)'
    assert ('head_specific' in met['extra']) == ('target_mass_by_distractors' in met) == VARIANTS[name]['cam']
    if VARIANTS[name]['cam']:   # where the CAMs look: per level, shares in [0, 1]; the target is a quarter of each image
        tm = met['target_mass_by_distractors']
        assert sorted(tm) == ['0', '1', '2'] and sum(v['n'] for v in tm.values()) == 32
        assert all(0 <= v['attention'] <= 1 and v['chance'] == pytest.approx(0.25) for v in tm.values())
        assert met['extra']['head_specific']['mA'] == pytest.approx(full['mA'])
    back = load_model(tmp_path, name).model
    np.testing.assert_allclose(predict(back, loaders['test'])['logits'], predict(res['model'], loaders['test'])['logits'], atol=1e-5)
    out = back(next(iter(loaders['test']))['image'])
    assert ('logits_specific' in out) == VARIANTS[name]['cam']
    if VARIANTS[name]['cam']:
        torch.testing.assert_close(out['logits'], out['logits_specific'])
        pa = positive_angles(back, loaders['test'])
        assert len(pa['theta']) + pa['dropped'] == int(loaders['test'].dataset.y.sum())


def test_selection_study_scores_both_rules_from_one_training(tmp_path):
    "The test split scored every epoch beside val: the held-out epoch's test mA is the entry's, [15]'s is the history's best."
    loaders = {'train': _loader(_Toy(64, 5, 0), True), 'val': _loader(_Toy(32, 5, 2), False), 'test': _loader(_Toy(32, 5, 1), False)}
    rec = _ToyRecipe(loaders); rec.select, rec.watch, rec.eval_name = 'best', ('test',), 'toy val'
    rec.config = CamParConfig(dataset='pa100k', train_splits=['train'], optimizer='adam', epochs=5, lr=3e-3, sample_weighting=False,
                              cache_mb=0, selection_study=True)   # PA100K's own val split held out, as the toy's
    res = train_variant(rec, 'baseline', tmp_path)
    st, full = res['metrics']['extra']['selection_study'], res['metrics']['full']
    assert st['held_out']['epoch'] == res['epoch'] and st['held_out']['mA'] == pytest.approx(full['mA'], abs=1e-9)
    assert st['held_out']['f1'] == pytest.approx(full['f1'], abs=1e-9)
    assert st['test_15']['mA'] == max(h['test_mA'] for h in res['history']) >= st['held_out']['mA']
    assert all('test_mA' in h and 'val_mA' in h for h in res['history'])


def test_selection_study_needs_a_split_to_select_on():
    "The config refuses it from the dataset kind's splits; the recipe again from the split it is given."
    with pytest.raises(KitError, match='selection_study=True needs a validation split'):
        CamParConfig(dataset='pa100k', train_splits=['train', 'val'], selection_study=True)
    cfg = CamParConfig(dataset='pa100k', train_splits=['train'], selection_study=True, cache_mb=0)
    data = SimpleNamespace(name='pa100k', attributes=['a'], splits=['train', 'val', 'test'],
                           split=lambda *n: [SimpleNamespace(labels=np.ones(1), meta={}) for s in n for _ in range(4)])
    with pytest.raises(KitError, match='selection_study=True needs a validation split'):
        CamParRecipe(cfg, data=data, split=(data.split('train'), None, None))


@pytest.mark.parametrize('name,value', [('fuse_at', 'deep'), ('predict', 'max')])
def test_a_bad_model_setting_is_refused_before_any_variant_trains(name, value):
    "Checked by the config (and so by `har-kit run` before a kernel starts), not when `build` first reaches a variant that uses it."
    from har_kit.run_params import check_config
    with pytest.raises(KitError, match=f"{name}={value!r}"): CamParConfig(variants=['baseline', 'campar_fusion'], **{name: value})
    with pytest.raises(KitError, match=f"{name}={value!r}"): check_config('41_campar', {name: value, 'variants': ['baseline', 'campar_fusion']})


# --- issue 16: the paper protocol's readings -------------------------------------------------------------------

def test_fusion_at_the_paper_width_counts_as_the_public_code():
    "ResNet-50 CAM-PAR + Fusion at latent 128 with c5 BN-only (the public code): 4.08M fusion parameters."
    model = campar_variant('campar_fusion', 51, arch='resnet50', latent=128, project_deepest=False)
    n = sum(p.numel() for p in model.fusion.parameters())
    assert n == 4_080_256 and model.fusion.latent == 128
    assert sum(p.numel() for p in MCAFusion([512, 1024, 2048], latent=512).parameters()) == 11_030_528   # the kit's old reading


def test_mca_fusion_resamples_as_f_interpolate_with_align_corners():
    "align_corners=True (the public code's F.interpolate) reaches every re-sampling, and moves the output against False."
    import torch.nn.functional as F
    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 16, 12), torch.randn(2, 16, 8, 6), torch.randn(2, 32, 4, 3)]
    mca = MCAFusion([8, 16, 32], latent=4, project_deepest=False, align_corners=True).eval()
    with torch.no_grad():
        v = torch.stack([sq(F.adaptive_avg_pool2d(f, 1)) for sq, f in zip(mca.squeeze, feats)]).prod(0)
        maps = [F.interpolate(p(f * torch.sigmoid(g(v))), size=(16, 12), mode='bilinear', align_corners=True)
                for p, g, f in zip(mca.project, mca.gate, feats)]
        torch.testing.assert_close(mca(feats), maps[0] * maps[1] * maps[2])
        mca.align_corners = False
        assert not torch.allclose(mca(feats), maps[0] * maps[1] * maps[2], atol=1e-3)


def test_mca_fusion_traces_for_torchscript_export():
    "What `har-kit export --format torchscript` does (torch.jit.trace), at another batch size than traced."
    mca = MCAFusion([8, 16, 32], latent=4, project_deepest=False).eval()
    traced = torch.jit.trace(mca, ([torch.randn(2, 8, 16, 12), torch.randn(2, 16, 8, 6), torch.randn(2, 32, 4, 3)],))
    feats = [torch.randn(3, 8, 16, 12), torch.randn(3, 16, 8, 6), torch.randn(3, 32, 4, 3)]
    torch.testing.assert_close(traced(feats), mca(feats))


def test_fusion_lr_backbone_moves_only_the_lr_group():
    from har_kit.campar_train import FusionAtBackboneLr
    from har_kit.engine import param_groups
    model = campar_variant('campar_fusion', 5, arch='resnet-tiny')
    groups = {g['name']: {id(p) for p in g['params']} for g in param_groups(FusionAtBackboneLr(model), 0.1, 0.1)}
    assert {id(p) for p in model.fusion.parameters()} <= groups['backbone']
    assert groups['head'] == {id(p) for p in model.classifier.parameters()}
    assert set(FusionAtBackboneLr(model).state_dict()) == {'model.' + k for k in model.state_dict()}


def test_selection_on_test_keeps_the_best_epoch(tmp_path):
    "'[15]' selection: the epoch with the best eval-split mA is the one restored, and it is found again from history."
    from har_kit.model_file import EpochSelector, selected_epoch
    from har_kit.engine import fit
    from har_kit.checkpoints import load_checkpoint
    m = 5
    train, test = _loader(_Toy(64, m, 0), True), _loader(_Toy(32, m, 1), False)
    torch.manual_seed(0)
    model = campar_variant('campar', m, arch='resnet-tiny')
    score = lambda s, y: pedestrian_metrics(s, y)
    sel = EpochSelector(model, score, 'mA', tmp_path/'checkpoints'/'selected.pt')
    cfg = campar_train_config('adam', epochs=4, lr=3e-2, plateau_on='eval_loss', device='cpu', progress=False)
    hist = fit(model, CamParLoss(), train, cfg, tmp_path, test, sel)
    epoch, value = selected_epoch(hist, 'mA')
    assert value == max(h['val_mA'] for h in hist) and sel.best == pytest.approx(value)
    model.load_state_dict(load_checkpoint(sel.path)['model'])
    assert score(predict(model, test)['scores'], predict(model, test)['labels'])['mA'] == pytest.approx(value, abs=1e-6)
    # a resumed selector starts from the kept value, never from scratch
    assert EpochSelector(model, score, 'mA', sel.path).best == pytest.approx(value)


def test_split_train_eval_modes():
    from types import SimpleNamespace
    from har_kit.campar_train import split_train_eval
    pa = SimpleNamespace(splits=['train', 'val', 'test'], split=lambda *n: [f'{s}{i}' for s in n for i in range(10)])
    rap = SimpleNamespace(splits=['train', 'test'], split=lambda *n: [f'{s}{i}' for s in n for i in range(10)])
    tr, ev, name = split_train_eval(pa, ['trainval'], '[15]')
    assert (len(tr), name, ev[0]) == (20, 'test', 'test0')
    assert split_train_eval(rap, ['trainval'], '[15]')[0] == rap.split('train')      # RAP: trainval is train
    assert split_train_eval(pa, ['train'], 'held-out')[2] == 'val'
    assert split_train_eval(rap, ['train'], 'held-out')[1:] == (None, None)          # last epoch
    tr, ev, name = split_train_eval(rap, ['train'], 'held-out', val_fraction=0.3, seed=1)
    assert (len(tr), len(ev), set(tr) & set(ev)) == (7, 3, set()) and 'carved' in name
    assert split_train_eval(rap, ['train'], 'held-out', val_fraction=0.3, seed=1)[1] == ev   # seeded
    with pytest.raises(KitError, match='selection'): split_train_eval(rap, ['train'], 'test')
    with pytest.raises(KitError, match='val_fraction'): split_train_eval(rap, ['train'], 'held-out', val_fraction=1.5)


def test_uncertain_labels_are_negative_in_metric_as_in_loss():
    from har_kit.campar_train import metric_row
    from har_kit.metrics import dataset_metric
    s = np.array([[.9, .2], [.4, .7], [.6, .9]])
    y = np.array([[1, 0], [0, UNSPECIFIED], [1, 1]])
    row = metric_row('rap', s, y, ['a', 'b'])
    as_negative = pedestrian_metrics(s, np.where(y == UNSPECIFIED, 0, y))
    assert row['full']['mA'] == pytest.approx(as_negative['mA']) and row['full']['per_attribute']['b'] == pytest.approx(0.75)
    assert dataset_metric('rap', ignore_unspecified=True)(s, y)['mA'] == pytest.approx(pedestrian_metrics(s, y)['mA'])


def test_weights_by_name_reach_torchvision_as_the_v1_enum(monkeypatch):
    "weights='IMAGENET1K_V1' (the paper profile) asks torchvision for its original weights; nothing downloads here."
    import torchvision
    seen = {}
    real = torchvision.models.get_model
    def fake(arch, weights=None, **kw):
        seen['weights'] = weights
        return real(arch, weights=None, **kw)
    monkeypatch.setattr(torchvision.models, 'get_model', fake)
    campar_variant('baseline', 5, arch='resnet18', weights='IMAGENET1K_V1')
    assert seen['weights'] == torchvision.models.ResNet18_Weights.IMAGENET1K_V1


def test_a_fresh_start_forgets_a_stale_selection(tmp_path):
    "A selected.pt left by an earlier run (no last.pt beside it) is not taken for this run's best epoch."
    from har_kit.model_file import EpochSelector
    from har_kit.checkpoints import save_checkpoint
    model = campar_variant('campar', 3, arch='resnet-tiny')
    path = tmp_path/'checkpoints'/'selected.pt'
    save_checkpoint(dict(model=model.state_dict(), value=0.99, key='mA'), path)
    assert EpochSelector(model, pedestrian_metrics, 'mA', path).best is None and not path.exists()
    save_checkpoint(dict(model=model.state_dict(), value=0.42, key='mA'), path)
    save_checkpoint(dict(epoch=1), tmp_path/'checkpoints'/'last.pt')          # a run in progress: resumed
    assert EpochSelector(model, pedestrian_metrics, 'mA', path).best == 0.42


def test_a_training_split_smaller_than_a_batch_still_trains(tmp_path):
    "[15]'s loader drops the last incomplete batch; a split of fewer images than one batch keeps its one batch instead of yielding none."
    from har_kit.campar_train import campar_loaders
    from har_kit.data import read_pa100k, tiny_fixture
    data = read_pa100k(tiny_fixture('pa100k', tmp_path/'pa'))
    train, test = data.split('train'), data.split('test')
    assert len(train) < 16
    for pipeline in ('loader', 'device'):
        ld = campar_loaders(train, None, test, scale=0.125, batch_size=16, pipeline=pipeline)
        assert [len(b['labels']) for b in ld['train']] == [len(train)], pipeline
        assert len(campar_loaders(train, None, test, scale=0.125, batch_size=4, pipeline=pipeline)['train']) == len(train) // 4


def test_criterion_weights_by_the_train_labels_pos_ratio_only_with_sample_weighting(tmp_path):
    "sample_weighting=True: [15]'s r_j = pos_ratio(train labels, ignore_unspecified) reaches the loss; False: no weighting."
    from har_kit.data import read_wider, tiny_fixture
    from har_kit.losses import pos_ratio
    data = read_wider(tiny_fixture('wider', tmp_path/'w'))        # has unspecified labels: the switch matters
    for ignore in (True, False):
        rec = CamParRecipe(CamParConfig(dataset='wider', sample_weighting=True, ignore_unspecified=ignore, cache_mb=0), data=data)
        y = np.stack([s.labels for s in rec.train_set])
        crit = rec.criterion('campar')
        assert crit.ignore_unspecified is ignore
        np.testing.assert_allclose(crit.pos_ratio, pos_ratio(y, ignore), rtol=1e-6)
        unweighted = CamParRecipe(CamParConfig(dataset='wider', sample_weighting=False, ignore_unspecified=ignore, cache_mb=0),
                                  data=data).criterion('campar')
        assert unweighted.pos_ratio is None and unweighted.ignore_unspecified is ignore
    assert not np.allclose(pos_ratio(y, True), pos_ratio(y, False))


def test_detach_cam_false_lets_the_gradient_through_the_cam():
    "detach_cam=False: d logits_specific / d w includes the path through the CAM weights; True cuts it (same weights)."
    from torch import nn
    from har_kit.campar import CamParNet
    backbone = nn.Identity(); backbone.channels = [8]            # heads() only reads the feature map
    torch.manual_seed(0)
    f = torch.randn(2, 8, 5, 4)
    grads, logits = {}, {}
    for detach in (False, True):
        net = CamParNet(backbone, 3, cam=True, detach_cam=detach)
        net.classifier.load_state_dict(dict(weight=torch.randn(3, 8, generator=torch.Generator().manual_seed(1)),
                                            bias=torch.zeros(3)))
        out = net.heads(f)
        logits[detach] = out['logits_specific'].detach()
        grads[detach], = torch.autograd.grad(out['logits_specific'].sum(), net.classifier.weight)
        assert out['cam'].requires_grad is not detach
    torch.testing.assert_close(logits[False], logits[True])        # the same forward
    assert not torch.allclose(grads[False], grads[True], atol=1e-4)


def test_model_file_thresholds_maximise_balanced_accuracy_on_the_held_out_split():
    "held_out_thresholds = choose_thresholds(held-out scores, labels, 'balanced_accuracy'), not the F1 rule."
    from torch import nn
    from torch.utils.data import DataLoader
    from har_kit.campar_train import held_out_thresholds
    from har_kit.metrics import choose_thresholds
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < [.1, .3, .5]).astype(np.int64)   # F1 and balanced accuracy pick other thresholds here (asserted)
    logits = torch.tensor(rng.normal(size=(60, 3)) + 1.5 * y, dtype=torch.float32)
    rows = [dict(image=logits[i], labels=torch.tensor(y[i])) for i in range(60)]

    class Scores(nn.Module):   # the logits ride in as the 'image'
        def forward(self, x): return dict(logits=x)

    got = held_out_thresholds(Scores(), DataLoader(rows, batch_size=16), 'pa100k')
    scores = 1 / (1 + np.exp(-logits.numpy()))
    want = choose_thresholds(scores, y, 'balanced_accuracy')['thresholds']
    assert not np.allclose(want, choose_thresholds(scores, y, 'f1')['thresholds'])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_run_folder_reused_with_other_images_is_refused_on_resume(tmp_path):
    "The recipes record which samples they train on: a finished run's folder with other images is refused, not returned."
    import dataclasses
    from har_kit.data import read_pa100k, tiny_fixture
    data = read_pa100k(tiny_fixture('pa100k', tmp_path/'pa'))
    cfg = CamParConfig(dataset='pa100k', variants=['baseline'], optimizer='adam', epochs=1, batch_size=4, scale=0.25,
                       arch='resnet-tiny', weights=None, cache_mb=0)
    tr, test = data.split('train'), data.split('test')
    train_variant(CamParRecipe(cfg, data, (tr[:4], None, None), test), 'baseline', tmp_path/'run')
    train_variant(CamParRecipe(cfg, data, (tr[:4], None, None), test), 'baseline', tmp_path/'run')   # the same: resumes
    with pytest.raises(KitError, match='train_samples'):
        train_variant(CamParRecipe(cfg, data, (tr[1:5], None, None), test), 'baseline', tmp_path/'run')
    with pytest.raises(KitError, match="data is a 'pa100k' set but config.dataset='rap'"):
        CamParRecipe(dataclasses.replace(cfg, dataset='rap'), data)


@pytest.mark.parametrize('trained, other', [('eq12', 'public'), ('public', 'eq12')])
def test_head_rows_read_the_formula_the_variant_was_not_trained_with(trained, other):
    "An Eq. 12 run reads the public formula beside its head, a public run reads Eq. 12: never its own head twice."
    from har_kit.campar import campar_variant, l_specific, l_specific_summed
    from har_kit.campar_train import head_logits, head_rows
    from har_kit.core import evaluating
    torch.manual_seed(0)
    net = campar_variant('campar', 3, 'resnet-tiny', specific_logit=trained)
    with torch.no_grad(): net.classifier.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))   # a bias tells the two forms apart
    g = torch.Generator().manual_seed(1)
    loader = [{'image': torch.randn(4, 3, 64, 48, generator=g), 'labels': torch.randint(0, 2, (4, 3), generator=g).float()}
              for _ in range(2)]
    p = head_logits(net, loader)
    assert set(p) == {'shared', 'specific', 'mean', f'{other}_formula', 'labels'}
    with torch.no_grad(), evaluating(net):   # as head_logits reads it (which gives the network back in its own mode)
        f = net.feature_map(loader[0]['image']); out = net.heads(f); a = attribute_activation(f, net.classifier.weight)
        want = l_specific(out['cam'], a, net.classifier.bias) if other == 'eq12' else l_specific_summed(out['cam'], a)
    np.testing.assert_allclose(p[f'{other}_formula'][:4], want.numpy(), atol=1e-5)
    rows = head_rows(net, loader, 'rap')
    assert f'corr_with_{trained}' in rows[f'{other}_formula'] and f'{trained}_formula' not in rows


def test_val_fraction_with_a_val_split_not_trained_on_is_refused_not_ignored():
    "The dataset's own 'val' split is held out as it is: a val_fraction there would be recorded but never carved."
    from types import SimpleNamespace
    from har_kit.campar_train import split_train_eval
    pa = SimpleNamespace(splits=['train', 'val', 'test'], split=lambda *n: [f'{s}{i}' for s in n for i in range(10)])
    with pytest.raises(KitError, match="val_fraction=0.2: the dataset's own 'val' split is held out as it is.*include 'val' in train_splits"):
        split_train_eval(pa, ['train'], 'held-out', val_fraction=0.2)
    tr, ev, name = split_train_eval(pa, ['train', 'val'], 'held-out', val_fraction=0.1)   # the paper profile's PA100K held-out runs
    assert (len(tr), len(ev), name) == (18, 2, 'carved 0.1 of train+val')
    assert split_train_eval(pa, ['train'], '[15]', val_fraction=0.0)[2] == 'test'


def test_a_val_fraction_that_leaves_nothing_to_train_asks_for_a_smaller_one():
    from har_kit.campar_train import carve_validation
    with pytest.raises(KitError, match='leaves 10 for validation and 0 to train on: choose a smaller fraction'):
        carve_validation(list(range(10)), 0.999)
    with pytest.raises(KitError, match='leaves 0 for validation: choose a larger fraction'): carve_validation(list(range(10)), 0.01)


def test_logit_bn_with_a_batch_of_one_is_refused_before_a_kernel(tmp_path):
    "BatchNorm1d on the logits cannot train on one image per batch (the last incomplete batch is dropped: only batch_size 1 certainly fails)."
    from har_kit.campar_train import CamParConfig
    from har_kit.run_params import check_parameters
    with pytest.raises(KitError, match='logit_bn=True with batch_size=1: .*use batch_size >= 2, or logit_bn=False'):
        check_parameters('campar', {'batch_size': 1, 'logit_bn': True})
    with pytest.raises(KitError, match='logit_bn=True with batch_size=1'): CamParConfig(batch_size=1, logit_bn=True)
    assert CamParConfig(batch_size=2, logit_bn=True).batch_size == 2 and CamParConfig(batch_size=1).batch_size == 1


def test_a_fusion_variant_with_a_batch_of_one_is_refused_before_a_kernel():
    "MCA's squeeze normalises each image's pooled vector over the batch: batch_size 1 was a raw torch ValueError at any scale."
    with pytest.raises(KitError, match=r"variants \['campar_fusion'\] with batch_size=1: .*use batch_size >= 2"):
        CamParConfig(variants=['campar', 'campar_fusion'], batch_size=1)
    CamParConfig(variants=['campar', 'campar_fusion'], batch_size=2)


@pytest.mark.parametrize('scale, size', [(0.01, '3 x 2'), (0.05, '13 x 10'), (0.125, '32 x 24'), (0.169, '43 x 32')])
def test_a_scale_giving_a_tiny_input_is_refused_naming_scale_and_the_size(scale, size):
    "scale=0.01 trained 3 x 2 px inputs (a one-cell CAM) and exited 0, and a batch of one was a raw torch error: inputs under "
    "2 x 2 cells at ResNet's stride 32 (33 px each way) are a KitError before any work; the profiles' scales pass."
    from har_kit.run_params import check_parameters
    with pytest.raises(KitError, match=f'scale={scale}: the network input would be {size} px'): CamParConfig(scale=scale)
    with pytest.raises(KitError, match=r'pass scale >= 0.17 '): check_parameters('campar', {'scale': scale, 'variants': ['campar']})
    for ok in (0.17, 0.1875, 0.25, 0.375, 1.0): CamParConfig(scale=ok)   # the least; quick; smoke and the default; sample; paper


@pytest.mark.slow   # a papermill kernel: not in make test-fast
def test_bench_runs_with_the_default_small_arch(tmp_path):
    "bench=True times each variant against the plain backbone of the run's own arch (resnet-tiny here), logit_bn too."
    from har_kit.runs import run_notebook
    from har_kit.core import load_json
    run_notebook('campar', dict(variants=['campar'], epochs=1, bench=True, logit_bn=True, cache_mb=0), tmp_path/'run', progress=False)
    cx = load_json(tmp_path/'run'/'metrics.json', dict)['_meta']['complexity']['campar']
    assert cx['params_ratio'] > 1, cx
    assert load_json(tmp_path/'run'/'metrics.json', dict)['_meta']['sample_weighting'] is True   # what CFAR's phase-1 check compares


def test_the_synthetic_rap_set_is_read_at_the_partition_asked():
    "The synthetic RAP set has five partitions: `partition` reaches its reader as on a real root (it was recorded, and ignored)."
    from har_kit.campar_train import CamParConfig
    a, b = CamParConfig(partition=0).load_data(), CamParConfig(partition=3).load_data()
    assert (a.meta['partition'], b.meta['partition']) == (0, 3)
    assert [s.image for s in a.split('test')] != [s.image for s in b.split('test')]


def test_held_out_thresholds_read_unspecified_labels_as_the_loss_does(monkeypatch):
    "ignore_unspecified=False: the loss reads -1 as negative, so do the thresholds a CAM-PAR model file keeps (balanced accuracy)."
    import har_kit.campar_train as T
    from har_kit.metrics import choose_thresholds
    s = np.array([[.9, .2], [.4, .7], [.6, .9], [.3, .1], [.8, .6]])
    y = np.array([[1, 0], [0, UNSPECIFIED], [1, 1], [0, UNSPECIFIED], [1, 0]])
    monkeypatch.setattr(T, 'engine_predict', lambda model, loader, device='cpu': dict(scores=s, labels=y))
    got = T.held_out_thresholds(None, None, 'rap', ignore_unspecified=False)
    np.testing.assert_array_equal(got, choose_thresholds(s, np.where(y == UNSPECIFIED, 0, y), 'balanced_accuracy')['thresholds'])
    assert not np.array_equal(got, choose_thresholds(s, y, 'balanced_accuracy')['thresholds'])


def test_the_analysis_passes_give_the_callers_network_back_in_the_mode_it_came_in():
    "positive_angles, head_logits, predict_masks and phase1_outputs ran in eval mode and left a caller's network there (BatchNorm frozen, Dropout off for its next steps)."
    from har_kit.campar import campar_variant
    from har_kit.campar_train import head_logits
    from har_kit.cfar import phase1_outputs
    from har_kit.dahar import dahar_variant
    from har_kit.dahar_train import predict_masks
    g = torch.Generator().manual_seed(1)
    batch = lambda h, w: {'image': torch.randn(4, 3, h, w, generator=g), 'labels': torch.randint(0, 2, (4, 3), generator=g).float(),
                          'mask': torch.rand(4, 1, h, w, generator=g), 'index': torch.arange(4)}
    cam, dah = campar_variant('campar', 3, 'resnet-tiny'), dahar_variant('dahar', 3, 'resnet-tiny')
    for net, run in ((cam, lambda: positive_angles(cam, [batch(64, 48)])), (cam, lambda: head_logits(cam, [batch(64, 48)])),
                     (cam, lambda: phase1_outputs(cam, [batch(64, 48)])), (dah, lambda: predict_masks(dah, [batch(64, 64)]))):
        net.train(); frozen = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)); frozen.eval()   # the caller's own choice
        run()
        assert net.training and not frozen.training and sum(not m.training for m in net.modules()) == 1, run
