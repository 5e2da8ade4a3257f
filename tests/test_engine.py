"The training engine: exact resume after an interruption, checkpoints, errors, five-crop prediction, sharding."
import csv, json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import har_kit.distributed as D
import har_kit.engine as E
from har_kit.core import KitError
from har_kit.engine import TrainConfig, fit, predict, train_eval
from har_kit.checkpoints import load_checkpoint
from har_kit.distributed import shard_loader

torch.set_num_threads(1)


class Toy(Dataset):
    "3 attributes of random 3x8x8 images; read-time noise from the global torch RNG, like an augmentation."
    def __init__(self, n=48, noise=0.1, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = (self.x.mean((2, 3)) @ torch.randn(3, 3, generator=torch.Generator().manual_seed(7)).T > 0).float()
        self.noise = noise
    def __len__(self): return len(self.x)
    def __getitem__(self, i):
        return dict(image=self.x[i] + self.noise * torch.randn(3, 8, 8), labels=self.y[i], index=i)


class Net(nn.Module):
    def __init__(self, bn=False):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), *( [nn.BatchNorm2d(6)] if bn else []), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop, self.head = nn.Dropout(0.3), nn.Linear(6, 3)
    def forward(self, x): return dict(logits=self.head(self.drop(self.backbone(x))))


def bce(out, batch):
    l = nn.functional.binary_cross_entropy_with_logits(out['logits'], batch['labels'])
    return dict(loss=l, bce=l.detach())


def acc(scores, labels): return dict(acc=float(((scores > 0.5) == (labels > 0.5)).mean()), per_class=np.zeros(3))


TRAIN, VAL = DataLoader(Toy(48), 8, shuffle=True), DataLoader(Toy(20, noise=0, seed=1), 8)
STEPS = 6 + 3  # criterion calls per epoch: 6 train batches + 3 val batches

CONFIGS = {
    'sgd-step-bn': dict(optimizer='sgd', lr=0.1, scheduler='step', step_size=1, gamma=0.5, backbone_lr_mult=0.1, monitor='acc'),
    'sgd-multistep': dict(optimizer='sgd', lr=0.1, scheduler='multistep', milestones=(2, 3), gamma=0.1, monitor='acc'),  # a Counter in its state
    'adam-plateau-fp16': dict(optimizer='adam', lr=0.01, scheduler='plateau', patience=0, amp='fp16', grad_clip=1.0,
                              monitor='val_loss'),
    'adamw-cosine-bf16-cl': dict(optimizer='adamw', lr=0.01, scheduler='cosine', amp='bf16', channels_last=True,
                                 weight_decay=0.01, monitor='acc'),
}


def run(tmp, name, kw, crash_at=None, epochs=4):
    torch.manual_seed(123)
    model, calls = Net(bn='bn' in name), []
    def crit(out, batch):
        calls.append(1)
        if len(calls) == crash_at: raise RuntimeError('simulated crash')
        return bce(out, batch)
    cfg = TrainConfig(epochs=epochs, device='cpu', progress=False, seed=3, **kw)
    hist = fit(model, crit, TRAIN, cfg, tmp/name, VAL, acc)
    return model, hist, len(calls)


def same_weights(a, b): return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize('name', list(CONFIGS))
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, name):
    ref, ref_hist, _ = run(tmp_path, 'ref-' + name, CONFIGS[name])
    with pytest.raises(RuntimeError, match='simulated crash'):
        run(tmp_path, 'int-' + name, CONFIGS[name], crash_at=2 * STEPS + 4)  # crash inside epoch 3
    assert len(json.loads((tmp_path/('int-' + name)/'history.json').read_text())) == 2
    res, res_hist, calls = run(tmp_path, 'int-' + name, CONFIGS[name])
    assert calls == 2 * STEPS  # only epochs 3 and 4 ran
    assert res_hist == ref_hist
    assert same_weights(ref, res)
    a = load_checkpoint(tmp_path/('ref-' + name)/'checkpoints'/'last.pt')
    b = load_checkpoint(tmp_path/('int-' + name)/'checkpoints'/'last.pt')
    assert a['scheduler'] == b['scheduler'] and a['scaler'] == b['scaler'] and a['best'] == b['best']


def test_resume_without_rng_restore_differs(tmp_path, monkeypatch):
    "The equality above is not vacuous: skipping the RNG restore changes the result (noise and dropout)."
    kw = CONFIGS['sgd-step-bn']
    ref, ref_hist, _ = run(tmp_path, 'ref', kw)
    with pytest.raises(RuntimeError): run(tmp_path, 'int', kw, crash_at=2 * STEPS + 4)
    monkeypatch.setattr(E, 'set_rng_state', lambda state, device: None)
    res, res_hist, _ = run(tmp_path, 'int', kw)
    assert not same_weights(ref, res) and res_hist[:2] == ref_hist[:2] and res_hist[2:] != ref_hist[2:]


def test_checkpoints_history_and_best(tmp_path):
    model, hist, _ = run(tmp_path, 'r', CONFIGS['sgd-step-bn'], epochs=3)
    ck = tmp_path/'r'/'checkpoints'
    last = load_checkpoint(ck/'last.pt')
    best = load_checkpoint(ck/'best.pt')
    assert last['epoch'] == 3 and len(last['rng']) == 1 and last['config']['optimizer'] == 'sgd'
    accs = [r['val_acc'] for r in hist]
    assert best['epoch'] == 1 + int(np.argmax(accs)) and best['best']['value'] == max(accs)
    assert [r['epoch'] for r in hist] == [1, 2, 3]
    assert set(hist[0]) == {'epoch', 'lr', 'loss', 'train_bce', 'val_loss', 'val_acc'}  # arrays left out
    assert [r['lr'] for r in hist] == pytest.approx([0.1, 0.05, 0.025])
    assert json.loads((tmp_path/'r'/'history.json').read_text()) == hist
    rows = list(csv.DictReader(open(tmp_path/'r'/'history.csv')))
    assert len(rows) == 3 and float(rows[2]['val_acc']) == pytest.approx(hist[2]['val_acc'])
    assert not list(ck.glob('.*.tmp')) and not list((tmp_path/'r').glob('.*.tmp'))
    # a finished run resumes to the same history without training
    again, hist2, calls = run(tmp_path, 'r', CONFIGS['sgd-step-bn'], epochs=3)
    assert calls == 0 and hist2 == hist and same_weights(model, again)


def test_backbone_gets_its_own_lr():
    opt = E.make_optimizer(Net(), TrainConfig(lr=0.1, backbone_lr_mult=0.1))
    assert [(g['name'], round(g['lr'], 6), len(g['params'])) for g in opt.param_groups] == [('backbone', 0.01, 2), ('head', 0.1, 2)]


def test_nan_loss_stops_with_clear_error(tmp_path):
    def crit(out, batch):
        parts = bce(out, batch)
        return dict(loss=parts['loss'] * float('inf'), bce=parts['bce'])
    with pytest.raises(KitError, match=r'non-finite loss at epoch 1, step 1 \(loss=inf, bce=.*lower the learning rate'):
        fit(Net(), crit, TRAIN, TrainConfig(progress=False, device='cpu'), tmp_path)


@pytest.mark.parametrize('field,value', [('lr', True), ('gamma', True), ('momentum', False), ('epochs', True), ('step_size', True)])
def test_a_bool_is_not_a_number_of_the_config(field, value):
    "True is an int to Python: TrainConfig(lr=True) trained at lr 1.0. A bool for a number field is refused, naming the field."
    with pytest.raises(KitError, match=f'TrainConfig.{field}={value}: must be an? (number|integer)'): TrainConfig(**{field: value})
    assert TrainConfig(lr=1).lr == 1 and TrainConfig(epochs=np.int64(2)).epochs == 2


@pytest.mark.parametrize('field,value,message', [
    ('resume', 'False', 'must be True or False'), ('channels_last', 1, 'must be True or False'), ('progress', None, 'must be True or False'),
    ('seed', -1, 'from 0 to 2\\*\\*32 - 1'), ('seed', 2**40, 'from 0 to'), ('seed', 'a', 'from 0 to'),
    ('milestones', (2.7,), 'whole epoch numbers'), ('milestones', (-3,), 'whole epoch numbers'), ('milestones', 5, 'whole epoch numbers'),
    ('momentum', 1.5, 'must be below 1')])
def test_fields_that_would_be_misread_or_fail_late_are_refused(field, value, message):
    "resume='False' resumed (a non-empty string is true); a seed numpy cannot take failed inside fit; milestones 2.7 became 2."
    with pytest.raises(KitError, match=f'TrainConfig.{field}=.*{message}'): TrainConfig(**{field: value})


def test_adam_takes_momentum_as_its_beta1_zero_included():
    from har_kit.engine import make_optimizer
    for m in (0.0, 0.5, 0.9):   # 0 gave 0.9 (`momentum or 0.9`)
        assert make_optimizer(torch.nn.Linear(2, 2), TrainConfig(optimizer='adam', momentum=m)).param_groups[0]['betas'] == (m, 0.999)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(KitError, match='TrainConfig.scheduler'): TrainConfig(scheduler='exp')
    with pytest.raises(KitError, match='TrainConfig.amp'): TrainConfig(amp='fp8')
    with pytest.raises(KitError, match="monitor='mAP' is not in the epoch record"):
        fit(Net(), bce, TRAIN, TrainConfig(progress=False, monitor='mAP'), tmp_path/'a', VAL, acc)
    with pytest.raises(KitError, match="scheduler='plateau' with no val_loader: monitor='mAP'"):
        fit(Net(), bce, TRAIN, TrainConfig(progress=False, scheduler='plateau', monitor='mAP'), tmp_path/'b')
    tuples = DataLoader([(torch.zeros(3, 8, 8), torch.zeros(3))] * 4, 2)
    with pytest.raises(KitError, match="dict batches with 'image' and 'labels'"):
        fit(Net(), bce, tuples, TrainConfig(progress=False), tmp_path/'c')
    with pytest.raises(KitError, match="'logits'"):
        predict(nn.Conv2d(3, 3, 1), VAL)
    with pytest.raises(KitError, match="yielded no batches"):
        fit(Net(), bce, DataLoader(Toy(0), 4), TrainConfig(progress=False), tmp_path/"e")
    run(tmp_path, 'd', CONFIGS['sgd-step-bn'], epochs=1)
    with pytest.raises(KitError, match=r"another config \(lr: 0.1 -> 0.2\)"):
        run(tmp_path, 'd', {**CONFIGS['sgd-step-bn'], 'lr': 0.2}, epochs=1)


class Crops(Dataset):
    def __init__(self, base, k=5): self.base, self.k = base, k
    def __len__(self): return len(self.base)
    def __getitem__(self, i):
        x = self.base[i]['image']
        return dict(image=torch.stack([x.roll(s, -1) for s in range(self.k)]), labels=self.base[i]['labels'])


def test_predict_averages_crops():
    torch.manual_seed(0)
    m, data = Net().eval(), Crops(Toy(11, noise=0))
    p = predict(m, DataLoader(data, 4))
    with torch.no_grad(): logits = torch.stack([m(data[i]['image'])['logits'] for i in range(11)])  # (11, 5, 3)
    np.testing.assert_allclose(p['scores'], torch.sigmoid(logits).mean(1).numpy(), atol=1e-6)
    np.testing.assert_allclose(p['logits'], logits.mean(1).numpy(), atol=1e-6)
    np.testing.assert_array_equal(p['labels'], Toy(11).y.numpy())
    assert all(v.shape == (11, 3) and v.dtype == np.float32 for v in p.values())



def test_predict_gives_the_callers_network_back_in_the_mode_it_came_in():
    "A user's loop that scores between epochs trains on with BatchNorm and Dropout as they were (a part frozen in eval stays so)."
    m = Net(bn=True).train(); m.backbone[1].eval()   # the caller froze one BatchNorm
    modes = [x.training for x in m.modules()]
    predict(m, DataLoader(Toy(8), 4))
    assert [x.training for x in m.modules()] == modes
    m.eval(); predict(m, DataLoader(Toy(8), 4))
    assert not any(x.training for x in m.modules())

def test_shards_partition_the_global_batch(monkeypatch):
    "With W processes, step t's shards together are exactly the 1-process batch t (what makes DDP == 1 process)."
    def batches(rank, world):
        monkeypatch.setattr(D, 'rank_world', lambda: (rank, world))
        dl = shard_loader(TRAIN, seed=5); D.set_epoch(dl, 5, 2)
        return [b['index'].tolist() for b in dl]
    one = batches(0, 1)
    r0, r1 = batches(0, 2), batches(1, 2)
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(b) for b in one]
    assert all(len(b) == 4 for b in r0)
    monkeypatch.setattr(D, 'rank_world', lambda: (0, 3))
    with pytest.raises(KitError, match='batch_size=8 is not divisible by WORLD_SIZE=3'): shard_loader(TRAIN)


def test_train_eval_uses_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = Net()
    crops = DataLoader(Crops(Toy(10, noise=0, seed=2)), 5)
    out = train_eval(model, bce, dict(train=TRAIN, val=VAL, test_crops=crops),
                     TrainConfig(epochs=3, lr=0.2, progress=False, monitor='acc', device='cpu'), tmp_path, acc)
    assert set(out['metrics']) == {'val', 'test_crops'} and set(out['predictions']['test_crops']) == {'scores', 'logits', 'labels'}
    best = max(out['history'], key=lambda r: r['val_acc'])
    assert out['epoch'] == best['epoch'] and out['metrics']['val']['acc'] == pytest.approx(best['val_acc'])
    w = load_checkpoint(tmp_path/'checkpoints'/'best.pt')['model']
    assert all(torch.equal(w[k], v) for k, v in model.state_dict().items())


def test_every_public_dataclass_field_shows_its_comment():
    "show_doc lists a dataclass's fields with fastcore's docments: every public config/record class of the kit has one per field."
    import dataclasses, importlib, pkgutil
    import har_kit
    from fastcore.docments import docments
    bare = {}
    for m in pkgutil.iter_modules(har_kit.__path__):
        if m.name.startswith('_'): continue
        mod = importlib.import_module(f'har_kit.{m.name}')
        for name, cls in vars(mod).items():
            if name.startswith('_') or not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or cls.__module__ != mod.__name__: continue
            docs = docments(cls)
            missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
            if missing: bare[f'{mod.__name__}.{name}'] = missing
    assert 'epochs' in docments(TrainConfig) and not bare, f'fields without a trailing comment: {bare}'


def test_epoch_loss_weighs_each_batch_by_its_samples(tmp_path):
    "The epoch's loss is the sample-weighted mean over batches of unequal size (50 samples in batches of 8: the last has 2)."
    crit = lambda out, b: dict(loss=out['logits'].sum() * 0 + len(b['labels']), n=float(len(b['labels'])))
    hist = fit(Net(), crit, DataLoader(Toy(50), 8, shuffle=True), TrainConfig(epochs=1, lr=0.1, log_every=4, device='cpu',
                                                                                progress=False, monitor='loss'), tmp_path)
    assert hist[0]['loss'] == hist[0]['train_n'] == (6 * 8 * 8 + 2 * 2) / 50


def test_loss_guard_sums_every_dtype_exactly_and_bounds_in_float32():
    "LossGuard keeps the float64 sums of each part x its samples, whatever the part's dtype and when parts come and go; the first bad step, its own bound."
    from har_kit.engine import LossGuard
    g = torch.Generator().manual_seed(0)
    r = lambda dt=torch.float32: torch.rand((), generator=g, dtype=torch.float64).to(dt)
    steps = [(dict(loss=r(), h=r(torch.bfloat16), f=r(torch.float16), d=r(torch.float64), big=torch.tensor(2**40 + 3 * i), num=0.1 * i,
                   flag=True, **({'extra': r()} if i % 2 else {})), n) for i, n in enumerate([8, 8, 3, 8, 5, 8, 1])]
    guard = LossGuard(capacity=3)
    for s, (parts, n) in enumerate(steps, 1): guard.note(s, parts, None, n)
    guard.check(1, 0.1, 'cpu')
    want = {}
    for parts, n in steps:   # the sums as the device used to keep them: each part in float64, times its samples
        for k, v in parts.items(): want[k] = want.get(k, 0.0) + (float(v.double()) if torch.is_tensor(v) else float(v)) * n
    assert guard.sums == want
    ok = LossGuard()   # 999.99999999 is 1000 in float32: a loss of 1000 is not above it, as on the device
    ok.note(1, dict(loss=torch.tensor(1000.)), 999.99999999); ok.note(2, dict(loss=torch.tensor(1000.)), 1000.0); ok.check(1, 0.1, 'cpu')
    above = float(np.nextafter(np.float32(1000), np.float32(2000)))
    bad = LossGuard(capacity=2)
    for s, (loss, limit) in enumerate([(1.0, None), (above, 1000.0), (float('nan'), 5000.0), (1e9, 20.0)], 1): bad.note(s, dict(loss=torch.tensor(loss), k=2.5), limit)
    with pytest.raises(KitError, match=r'diverged loss \(above 1000 = .* at epoch 1, step 2 \(loss=1000, k=2.5\)'):
        bad.check(1, 0.1, 'cpu')


def test_each_epoch_has_its_own_shuffle_order_and_a_rerun_repeats_them(tmp_path):
    "fit re-seeds the sampler per epoch (set_epoch(loader, seed, epoch)): epoch 1 and 2 differ, a rerun gives both again."
    def orders(name):
        torch.manual_seed(0)
        seen = []
        def crit(out, batch):
            seen.append(batch['index'].tolist())
            return bce(out, batch)
        fit(Net(), crit, DataLoader(Toy(24), 8, shuffle=True), TrainConfig(epochs=2, device='cpu', progress=False, seed=5),
            tmp_path/name)
        assert len(seen) == 6                                   # 3 batches per epoch, no validation
        return sum(seen[:3], []), sum(seen[3:], [])
    first = orders('a')
    assert sorted(first[0]) == sorted(first[1]) == list(range(24))
    assert first[0] != first[1]                                 # a fixed epoch would repeat epoch 1's order
    assert orders('b') == first


def test_each_epoch_prints_its_losses_and_metrics_as_it_ends(tmp_path, capsys):
    "A 30-epoch run on one's own data showed only progress bars until the end; now a line per epoch (progress on), none with progress off."
    cfg = dict(epochs=2, device='cpu', seed=3, monitor='acc')
    hist = fit(Net(), bce, TRAIN, TrainConfig(progress=True, **cfg), tmp_path/'a', VAL, acc)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith('epoch ')]
    assert lines == [f"epoch {h['epoch']}/2: loss {h['loss']:.4g}, val_loss {h['val_loss']:.4g}, lr {h['lr']:.3g}" for h in hist], lines
    fit(Net(), bce, TRAIN, TrainConfig(progress=False, **cfg), tmp_path/'b', VAL, acc)
    assert 'epoch ' not in capsys.readouterr().out
