"Engine faults (issue 13): corrupted or foreign checkpoints, changed parameters on resume, divergence, non-finite state."
import json, re, time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

import har_kit.distributed as D
from har_kit.core import KitError
from har_kit.engine import TrainConfig, fit, train_eval
from har_kit.checkpoints import load_checkpoint, save_checkpoint

torch.set_num_threads(1)


class Toy(Dataset):
    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = (self.x.mean((2, 3)) > 0).float()
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return dict(image=self.x[i], labels=self.y[i], index=i)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(6, 3)
    def forward(self, x): return dict(logits=self.head(self.backbone(x)))


def bce(out, batch): return dict(loss=nn.functional.binary_cross_entropy_with_logits(out['logits'], batch['labels']))


TRAIN = DataLoader(Toy(), 8, shuffle=True)


def run(d, epochs=2, params=None, **kw):
    torch.manual_seed(0)
    return fit(Net(), bce, TRAIN, TrainConfig(epochs=epochs, progress=False, device='cpu', **kw), d, params=params)


def flip(path):
    raw = bytearray(Path(path).read_bytes()); raw[len(raw) // 2] ^= 0x10; Path(path).write_bytes(bytes(raw))


def test_flipped_byte_is_refused_naming_the_file(tmp_path):
    run(tmp_path, 1)
    flip(tmp_path/'checkpoints'/'last.pt')
    with pytest.raises(KitError, match=r'last\.pt: (content hash mismatch|cannot load checkpoint)'):
        run(tmp_path, 2)


def test_checkpoint_without_hash_is_refused(tmp_path):
    (tmp_path/'checkpoints').mkdir()
    torch.save(dict(epoch=1, model={}), tmp_path/'checkpoints'/'last.pt')
    with pytest.raises(KitError, match='last.pt: not a har-kit-checkpoint/2 file'): run(tmp_path, 2)


def test_changed_parameters_refuse_resume_and_fresh_start_is_explicit(tmp_path):
    run(tmp_path, 1, params=dict(sample_weighting=True))
    with pytest.raises(KitError, match=r'other parameters \(sample_weighting: True -> False\)'):
        run(tmp_path, 2, params=dict(sample_weighting=False))
    hist = run(tmp_path, 2, params=dict(sample_weighting=False), resume=False)  # explicit fresh start
    assert [r['epoch'] for r in hist] == [1, 2]
    assert load_checkpoint(tmp_path/'checkpoints'/'last.pt')['params'] == dict(sample_weighting=False)
    assert len(run(tmp_path, 2, params=dict(sample_weighting=False))) == 2  # and it resumes with its own


class Tiny(nn.Module):
    "The CPU profile's backbone with a linear head: at lr 30 its BCE runs to 1e8 within four epochs, staying finite."
    def __init__(self):
        super().__init__()
        from har_kit.backbones import resnet_taps
        self.backbone, self.head = resnet_taps('resnet-tiny'), nn.Linear(128, 3)
    def forward(self, x): return dict(logits=self.head(self.backbone(x)[-1].mean((2, 3))))


def test_divergence_stops_and_keeps_nothing_non_finite(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(KitError, match=r'(diverged loss \(above|non-finite (loss|values)).*nothing of epoch \d is saved'):
        fit(Tiny(), bce, TRAIN, TrainConfig(epochs=4, lr=30.0, progress=False), tmp_path)
    for f in (tmp_path/'checkpoints').glob('*.pt'):
        ck = load_checkpoint(f)
        assert all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())


class Blows(Net):
    "A BatchNorm running variance that turns inf in epoch 2, while the loss stays finite."
    def __init__(self):
        super().__init__(); self.calls = 0
    def forward(self, x):
        self.calls += self.training
        if self.calls > len(TRAIN): self.backbone[1].running_var.fill_(float('inf'))
        return super().forward(x)


def test_non_finite_buffer_stops_before_saving(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(KitError, match=r'non-finite values after epoch 2 in backbone\.1\.running_var'):
        fit(Blows(), bce, TRAIN, TrainConfig(epochs=3, progress=False), tmp_path)
    assert load_checkpoint(tmp_path/'checkpoints'/'last.pt')['epoch'] == 1


def test_best_checkpoint_of_other_parameters_is_not_evaluated(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, progress=False)
    train_eval(Net(), bce, dict(train=TRAIN), cfg, tmp_path/'a', lambda s, l: {}, params=dict(x=1))
    (tmp_path/'b'/'checkpoints').mkdir(parents=True)
    ck = load_checkpoint(tmp_path/'a'/'checkpoints'/'last.pt')
    save_checkpoint(ck, tmp_path/'b'/'checkpoints'/'last.pt')
    save_checkpoint({**load_checkpoint(tmp_path/'a'/'checkpoints'/'best.pt'), 'params': dict(x=2)},
                    tmp_path/'b'/'checkpoints'/'best.pt')
    with pytest.raises(KitError, match=r'best\.pt was trained with other parameters \(x: 2 -> 1\)'):
        train_eval(Net(), bce, dict(train=TRAIN), cfg, tmp_path/'b', lambda s, l: {}, params=dict(x=1))


def test_every_torch_load_of_these_modules_is_weights_only():
    root = Path(__file__).parents[1]/'har_kit'
    for mod in ('engine', 'checkpoints', 'distributed', 'backbones', 'dahar', 'dahar_train', 'losses'):
        f = root/f'{mod}.py'
        if not f.exists(): continue
        for call in re.findall(r'torch\.load\(([^()]*(?:\([^()]*\)[^()]*)*)\)', f.read_text()):
            assert 'weights_only=True' in call, f'{f.name}: torch.load({call})'


def test_a_failed_background_write_stops_the_run_and_resume_starts_after_the_last_whole_file(tmp_path, monkeypatch):
    "Checkpoints are written in the background: a write's error (a full disk) still stops the run, and nothing is half-written."
    import har_kit.checkpoints as ck
    real, calls = ck.save_checkpoint, []
    def disk_full_at_epoch_2(state, path):
        calls.append(state['epoch'])
        if state['epoch'] == 2: raise OSError(28, 'No space left on device')
        return real(state, path)
    monkeypatch.setattr(ck, 'save_checkpoint', disk_full_at_epoch_2)
    with pytest.raises(OSError, match='No space left'): run(tmp_path, 4)
    assert calls == [1, 1, 2]   # best.pt and last.pt of epoch 1, then best.pt of 2 failed: raised when epoch 3 handed its files over
    assert load_checkpoint(tmp_path/'checkpoints'/'last.pt')['epoch'] == 1 and not list((tmp_path/'checkpoints').glob('.*'))
    monkeypatch.setattr(ck, 'save_checkpoint', real)
    hist = run(tmp_path, 4)   # resumed after epoch 1: the run ends as an uninterrupted one
    assert [r['epoch'] for r in hist] == [1, 2, 3, 4] and hist == run(tmp_path/'fresh', 4)


def test_the_last_epochs_files_have_landed_when_fit_returns_or_fails(tmp_path):
    "fit returns (or lets an error out) only after the background writer has written the last epoch's files."
    calls = []
    def crash_in_epoch_3(out, batch):
        calls.append(1)
        if len(calls) == 2 * len(TRAIN) + 1: raise RuntimeError('crash')
        return bce(out, batch)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match='crash'):
        fit(Net(), crash_in_epoch_3, TRAIN, TrainConfig(epochs=4, progress=False, device='cpu'), tmp_path)
    import json
    assert load_checkpoint(tmp_path/'checkpoints'/'last.pt')['epoch'] == 2
    assert [r['epoch'] for r in json.loads((tmp_path/'history.json').read_text())] == [1, 2]


def test_a_run_killed_between_last_and_best_resumes_with_best_of_its_history(tmp_path):
    "last.pt lands first; a run killed before the epoch's best.pt landed rewrites best.pt from last.pt's weights on "
    "resume, so train_eval never reads an epoch the history does not name as best (here: no val, best = the last epoch)."
    import shutil
    ck = tmp_path/'checkpoints'
    run(tmp_path, 1); shutil.copy(ck/'best.pt', tmp_path/'best1.pt')
    run(tmp_path, 2)
    shutil.copy(tmp_path/'best1.pt', ck/'best.pt')          # epoch 2's best.pt never landed: epoch 1's is there
    run(tmp_path, 2)                                        # resumed at its last epoch: nothing to train
    best, last = load_checkpoint(ck/'best.pt'), load_checkpoint(ck/'last.pt')
    assert best['epoch'] == last['epoch'] == 2
    assert all(torch.equal(best['model'][k], v) for k, v in last['model'].items())


def test_a_run_stopped_before_its_last_history_landed_rewrites_it_on_resume(tmp_path):
    "After the last epoch no epoch is left to write history.json / .csv: the resume writes them from last.pt's history."
    import json
    run(tmp_path, 2)
    want = {f: (tmp_path/f).read_bytes() for f in ('history.json', 'history.csv')}
    (tmp_path/'history.json').write_text(json.dumps(json.loads(want['history.json'])[:1])); (tmp_path/'history.csv').unlink()
    run(tmp_path, 2)                                        # resumed at its last epoch: nothing to train
    assert {f: (tmp_path/f).read_bytes() for f in want} == want


def test_evaluate_taking_an_epoch_keyword_is_told_the_epoch(tmp_path):
    seen = []
    def evaluate(scores, labels, epoch=None): seen.append(epoch); return dict(score=float(epoch))
    torch.manual_seed(0)
    fit(Net(), bce, TRAIN, TrainConfig(epochs=2, progress=False, device='cpu'), tmp_path, TRAIN, evaluate)
    assert seen == [1, 2]


def test_a_selection_an_interrupted_epoch_wrote_is_dropped_on_resume(tmp_path):
    "EpochSelector writes an epoch's weights before its last.pt lands; a run killed in between trains that epoch again "
    "(on a GPU, not bit for bit): the weights the killed attempt left are dropped and the best before them restored."
    from har_kit.model_file import EpochSelector, selected_epoch
    path = tmp_path/'checkpoints'/'selected.pt'
    score = lambda s, y: dict(mA=float(-abs(s - y).mean()))   # numpy scores and labels
    def go(epochs):
        torch.manual_seed(0)
        model = Net()
        sel = EpochSelector(model, score, 'mA', path)
        hist = fit(model, bce, TRAIN, TrainConfig(epochs=epochs, progress=False, device='cpu'), tmp_path, TRAIN, sel)
        return sel, hist
    sel, hist = go(2)
    e2, _ = selected_epoch(hist, 'mA')
    kept = load_checkpoint(path)
    assert kept['epoch'] == e2
    # an attempt at epoch 3, killed before its last.pt landed, left a better-looking selection behind
    path.replace(sel.prev); save_checkpoint({**kept, 'value': 99.0, 'epoch': 3}, path)
    sel, hist = go(3)
    e3, v3 = selected_epoch(hist, 'mA')
    kept = load_checkpoint(path)
    assert (kept['epoch'], kept['value']) == (e3, pytest.approx(v3)) and sel.best == pytest.approx(v3)


def test_a_users_sampler_other_than_a_plain_shuffle_is_kept_on_one_process(tmp_path):
    "fit rebuilds only a plain shuffle: a RandomSampler with replacement / num_samples keeps drawing num_samples."
    seen = []
    def counting(out, batch): seen.extend(batch['index'].tolist()); return bce(out, batch)
    ds = Toy()
    drawn = DataLoader(ds, 4, sampler=RandomSampler(ds, replacement=True, num_samples=8))
    torch.manual_seed(0)
    fit(Net(), counting, drawn, TrainConfig(epochs=1, progress=False, device='cpu'), tmp_path)
    assert len(seen) == 8
    for s in (RandomSampler(ds, num_samples=8), RandomSampler(ds, replacement=True)):
        ld = DataLoader(ds, 4, sampler=s)
        assert D.shard_loader(ld, seed=0) is ld
    assert isinstance(D.shard_loader(DataLoader(ds, 4, sampler=RandomSampler(ds)), seed=0).sampler, DistributedSampler)


def test_a_sampler_that_cannot_be_sharded_is_refused_over_processes(monkeypatch):
    ds = Toy()
    monkeypatch.setattr(D, 'rank_world', lambda: (0, 2))
    with pytest.raises(KitError, match=r'RandomSampler\(replacement=True, num_samples=8\).*cannot be sharded over 2 processes'):
        D.shard_loader(DataLoader(ds, 4, sampler=RandomSampler(ds, replacement=True, num_samples=8)))
    assert isinstance(D.shard_loader(DataLoader(ds, 4, shuffle=True)).sampler, DistributedSampler)


def test_a_rebuilt_loader_keeps_the_loaders_options():
    ld = DataLoader(Toy(), 4, shuffle=True, num_workers=1, prefetch_factor=3, persistent_workers=True, timeout=7,
                    pin_memory_device='cpu', in_order=False)
    sh = D.shard_loader(ld, seed=0)
    assert isinstance(sh.sampler, DistributedSampler)
    assert (sh.prefetch_factor, sh.persistent_workers, sh.timeout, sh.pin_memory_device, sh.in_order) == (3, True, 7, 'cpu', False)


def test_a_resume_reads_last_pt_on_the_host_whatever_the_device(tmp_path, monkeypatch):
    "On CUDA, last.pt loaded onto the GPU put the RNG states there and set_rng_state failed: every resumed GPU run crashed. "
    "fit reads it on the host (weights and optimizer state move as they load; set_rng_state also moves states to the host)."
    import har_kit.engine as E
    run(tmp_path, 1)
    seen = []
    real = E.load_checkpoint
    monkeypatch.setattr(E, 'load_checkpoint', lambda path, *a, **k: seen.append((Path(path).name, a, k)) or real(path, *a, **k))
    run(tmp_path, 2)
    assert [s for s in seen if s[0] == 'last.pt'] == [('last.pt', (), {})]   # no device: the host


def test_a_resumed_fit_reports_the_seconds_of_all_its_sessions(tmp_path, monkeypatch):
    "`seconds` of a resumed run counted its last session only (0.03 s against 8 s uninterrupted): last.pt keeps the total."
    import har_kit.engine as E
    now, step = [0.0], [1000.0]   # a clock that moves 1000 s per reading in the first session, 1 s in the second
    def clock(): now[0] += step[0]; return now[0]
    monkeypatch.setattr(E.time, 'time', clock)
    first, second = {}, {}
    torch.manual_seed(0)
    fit(Net(), bce, TRAIN, TrainConfig(epochs=1, progress=False, device='cpu'), tmp_path, stats=first)
    assert first['seconds'] >= 1000
    step[0] = 1.0
    fit(Net(), bce, TRAIN, TrainConfig(epochs=2, progress=False, device='cpu'), tmp_path, stats=second)
    assert second['seconds'] > load_checkpoint(tmp_path/'checkpoints'/'last.pt')['seconds'] - 1e-9 >= 1000   # the first session's time counts


# ---- from a fault hunt of the resume path ----
def test_a_misspelt_key_of_a_dict_config_is_refused(tmp_path):
    "fit/train_eval take a dict of TrainConfig's fields: a key that is none (epoch, learning_rate) would train with the default."
    with pytest.raises(KitError, match=r"no field\(s\) \['epoch', 'learning_rate'\]"):
        fit(Net(), bce, TRAIN, {'epoch': 3, 'learning_rate': 0.5, 'device': 'cpu', 'progress': False}, tmp_path)
    with pytest.raises(KitError, match=r"no field\(s\) \['lr_'\]"):
        train_eval(Net(), bce, dict(train=TRAIN), {'lr_': 0.1}, tmp_path, lambda s, l: {})
    assert fit(Net(), bce, TRAIN, {'epochs': 1, 'device': 'cpu', 'progress': False}, tmp_path/'ok')[-1]['epoch'] == 1


@pytest.mark.parametrize('kw, field', [(dict(monitor=None), 'monitor'), (dict(monitor=3), 'monitor'),
                                       (dict(scheduler='plateau', gamma=1.0), 'gamma'), (dict(scheduler='plateau', gamma=2.0), 'gamma'),
                                       (dict(scheduler='step', gamma=2.0), 'gamma'), (dict(scheduler='multistep', milestones=(1,), gamma=1.5), 'gamma'),
                                       (dict(scheduler='multistep', milestones=(2, 2)), 'milestones'),
                                       (dict(max_loss_ratio=0.5), 'max_loss_ratio')])
def test_values_torch_or_the_engine_would_fail_on_are_refused_by_the_config(kw, field):
    "gamma 2 doubled the rate at every 'decay'; milestones (2, 2) decayed twice at epoch 2; max_loss_ratio 0.5 stopped healthy runs as diverged."
    with pytest.raises(KitError, match=f'TrainConfig.{field}='): TrainConfig(**kw)
    assert TrainConfig(max_loss_ratio=1.0).max_loss_ratio == 1.0 and TrainConfig(scheduler='step', gamma=1.0).gamma == 1.0   # the edges stay


def test_plateau_without_a_val_loader_is_refused_before_an_epoch_trains(tmp_path):
    "Its monitor can only be in the record with a val_loader (or the training loss): refused after epoch 1 before, that epoch lost."
    calls = []
    def counting(out, batch): calls.append(1); return bce(out, batch)
    with pytest.raises(KitError, match="scheduler='plateau' with no val_loader: monitor='val_loss'"):
        fit(Net(), counting, TRAIN, TrainConfig(epochs=1, scheduler='plateau', progress=False, device='cpu'), tmp_path)
    assert calls == []
    assert fit(Net(), bce, TRAIN, TrainConfig(epochs=1, scheduler='plateau', monitor='loss', progress=False, device='cpu'), tmp_path/'ok')


def test_a_batch_of_one_through_a_batchnorm_names_the_batch_size(tmp_path):
    "17 samples in batches of 8 leave one for the last batch: BatchNorm1d's raw ValueError, now a KitError saying what to change."
    class Logits(Net):
        def __init__(self): super().__init__(); self.bn = nn.BatchNorm1d(3)
        def forward(self, x): return dict(logits=self.bn(super().forward(x)['logits']))
    with pytest.raises(KitError, match=r'a training batch of 1 image\(s\) reached a BatchNorm.*batch_size of at least 2.*drop_last=True'):
        fit(Logits(), bce, DataLoader(Toy(17), 8, shuffle=True), TrainConfig(epochs=1, progress=False, device='cpu'), tmp_path)


def test_a_full_loss_buffer_stops_the_run_at_once_not_at_the_next_log_every(tmp_path):
    "With log_every above the buffer's 256 steps, a NaN read back at step 256 raised only at log_every (or the epoch's end)."
    calls = []
    def nan_at_2(out, batch):
        calls.append(1); loss = bce(out, batch)['loss']
        return dict(loss=loss * float('nan') if len(calls) == 2 else loss)
    with pytest.raises(KitError, match='non-finite loss at epoch 1, step 2'):
        fit(Net(), nan_at_2, DataLoader(Toy(300), 1), TrainConfig(epochs=1, log_every=1000, progress=False, device='cpu'), tmp_path)
    assert len(calls) == 256


def test_a_cosine_run_is_not_extended_in_place(tmp_path):
    "Cosine anneals over `epochs`: resuming a 2-epoch run with epochs=4 would follow neither schedule; step schedules extend."
    run(tmp_path/'cos', 2, scheduler='cosine')
    with pytest.raises(KitError, match=r'another config \(epochs: 2 -> 4\)'): run(tmp_path/'cos', 4, scheduler='cosine')
    run(tmp_path/'step', 2, scheduler='step', step_size=1)
    assert [r['epoch'] for r in run(tmp_path/'step', 3, scheduler='step', step_size=1)] == [1, 2, 3]


def test_resuming_with_another_network_names_the_checkpoint(tmp_path):
    run(tmp_path, 1)
    class Wider(Net):
        def __init__(self):
            super().__init__(); self.head = nn.Linear(6, 5)
    with pytest.raises(KitError, match=r'last\.pt holds the state of another model .*size mismatch.*resume=False'):
        fit(Wider(), bce, TRAIN, TrainConfig(epochs=2, progress=False, device='cpu'), tmp_path)


def test_a_non_finite_validation_loss_is_recorded_as_null_and_the_run_resumes(tmp_path):
    "A NaN val loss (training finite) is null in the history with a warning, is never selected, and the run resumes."
    def crit(out, batch):   # NaN on evaluation batches only
        loss = nn.functional.binary_cross_entropy_with_logits(out['logits'], batch['labels'])
        return dict(loss=loss if torch.is_grad_enabled() else loss * float('nan'))
    def go(epochs):
        torch.manual_seed(0)
        return fit(Net(), crit, TRAIN, TrainConfig(epochs=epochs, progress=False, device='cpu'), tmp_path, DataLoader(Toy(8, 1), 4))
    with pytest.warns(UserWarning, match='epoch 1: the validation loss is nan'): h = go(1)
    assert h[0]['val_loss'] is None and (tmp_path/'history.json').exists()
    with pytest.warns(UserWarning, match='epoch 2: the validation loss'): h = go(2)
    assert [r['val_loss'] for r in h] == [None, None] and not (tmp_path/'checkpoints'/'best.pt').exists()


def _selecting(d, table, session, landed=None):
    "A fit whose EpochSelector scores val mA from `table[(session, epoch)]` (a resumed session may score an epoch anew); "
    "`landed`: {epoch: the epoch whose files must have landed (history.json) before it is scored}."
    from har_kit.model_file import EpochSelector
    torch.manual_seed(0); model = Net()
    sel = EpochSelector(model, None, 'mA', d/'checkpoints'/'selected.pt')
    def evaluate(scores, labels, epoch=None):
        while (landed or {}).get(epoch) and not ((d/'history.json').exists() and
                                                 json.loads((d/'history.json').read_text())[-1]['epoch'] >= landed[epoch]):
            time.sleep(0.05)   # waits for the event (the background write of that epoch), however long it takes
        sel.metric_fn = lambda s, y: dict(mA=table[session, epoch])
        return sel(scores, labels, epoch=epoch)
    return model, sel, fit(model, bce, TRAIN, TrainConfig(epochs=3, progress=False, device='cpu'), d, DataLoader(Toy(16, 1), 8), evaluate)


@pytest.mark.parametrize('stop', ['selected.pt', 'last.pt'])
def test_a_stop_while_the_selection_moves_keeps_the_best_so_far(tmp_path, monkeypatch, stop):
    """Stopped while epoch 2's selected.pt was written (only selected.prev.pt left), or while epoch 2's last.pt was still
    being written as epoch 3 was selected: the resumed run (scoring epochs 2 and 3 anew, lower) keeps epoch 1's weights,
    the epoch its history selects."""
    import har_kit.checkpoints as C, har_kit.model_file as MF
    from har_kit.model_file import _keep_selected
    table = {(1, 1): .5, (1, 2): .7, (1, 3): .8, (2, 2): .4, (2, 3): .45}
    module, real = (MF, MF.save_checkpoint) if stop == 'selected.pt' else (C, C.save_checkpoint)
    def dies(state, path):
        if path.name == stop and state.get('epoch') == 2: raise OSError(f'stopped while {stop} was written')
        return real(state, path)
    monkeypatch.setattr(module, 'save_checkpoint', dies)
    with pytest.raises(OSError): _selecting(tmp_path, table, 1, landed={2: 1})   # epoch 1's files land within epoch 2
    monkeypatch.setattr(module, 'save_checkpoint', real)
    assert load_checkpoint(tmp_path/'checkpoints'/'last.pt')['epoch'] == 1
    model, sel, hist = _selecting(tmp_path, table, 2)
    assert _keep_selected(model, sel, hist, 'mA', 'cpu') == (1, .5)
    assert load_checkpoint(sel.path)['epoch'] == 1


def test_weights_of_another_epoch_than_the_history_selects_are_refused(tmp_path):
    from har_kit.model_file import _keep_selected
    model, sel, hist = _selecting(tmp_path, {(1, 1): .5, (1, 2): .7, (1, 3): .6}, 1)
    assert _keep_selected(model, sel, hist, 'mA', 'cpu') == (2, .7)
    ck = load_checkpoint(sel.path); ck['epoch'] = 3; save_checkpoint(ck, sel.path)
    with pytest.raises(KitError, match=r'selected\.pt holds the weights of epoch 3, but the history selects epoch 2 .*--force'):
        _keep_selected(model, sel, hist, 'mA', 'cpu')


@pytest.mark.parametrize('kw', [dict(lr=np.float64(0.01)), dict(lr=np.float32(0.01)), dict(seed=np.int64(3)),
                                dict(step_size=np.int64(1), scheduler='step'), dict(resume=np.bool_(True))])
def test_numpy_numbers_in_the_config_save_checkpoints_that_resume(tmp_path, kw):
    "A numpy number the config accepts is stored as Python's: a checkpoint holding numpy would not load (weights_only)."
    run(tmp_path, 1, **kw)
    assert [r['epoch'] for r in run(tmp_path, 2, **kw)] == [1, 2]
    assert all(not isinstance(v, np.generic) for v in TrainConfig(**kw).to_dict().values())


@pytest.mark.parametrize('field', ['lr', 'weight_decay', 'gamma', 'backbone_lr_mult', 'momentum'])
def test_an_infinite_rate_or_factor_is_refused_naming_it(field):
    with pytest.raises(KitError, match=rf'TrainConfig\.{field}=inf: must be a number >?=? ?0 and finite'): TrainConfig(**{field: float('inf')})
    assert TrainConfig(grad_clip=float('inf'), max_loss_ratio=float('inf')).grad_clip == float('inf')   # inf: no limit


def test_a_non_finite_logged_part_is_null_and_the_run_resumes(tmp_path):
    "A logged part of the criterion that is NaN while the loss is finite: recorded as null with a warning, not a history that cannot be written."
    def crit(out, batch):
        r = bce(out, batch)
        r['pos_share'] = out['logits'][:, 0].detach().sum() / (batch['labels'][:, 0].sum() * 0)   # x/0
        return r
    def go(epochs):
        torch.manual_seed(0)
        return fit(Net(), crit, TRAIN, TrainConfig(epochs=epochs, progress=False, device='cpu'), tmp_path)
    with pytest.warns(UserWarning, match=r"epoch 1: the criterion's logged part\(s\) \['train_pos_share'\] are NaN/inf"): go(1)
    with pytest.warns(UserWarning): h = go(2)
    assert [r['train_pos_share'] for r in h] == [None, None] and json.loads((tmp_path/'history.json').read_text())[1]['epoch'] == 2


def test_non_finite_weights_are_refused_before_an_evaluate_saves_them(tmp_path):
    "An `evaluate` that saves weights (EpochSelector) never sees an epoch whose state went non-finite."
    from har_kit.model_file import EpochSelector
    class Blows(Net):   # a BatchNorm running variance turns inf in epoch 2, the loss stays finite
        calls = 0
        def forward(self, x):
            self.calls += self.training
            if self.calls > len(TRAIN): self.backbone[1].running_var.fill_(float('inf'))
            return super().forward(x)
    torch.manual_seed(0); m = Blows()
    vals = iter([0.5, 0.9])
    sel = EpochSelector(m, lambda s, y: dict(mA=next(vals)), 'mA', tmp_path/'checkpoints'/'selected.pt')
    with pytest.raises(KitError, match='non-finite values after epoch 2'):
        fit(m, bce, TRAIN, TrainConfig(epochs=3, progress=False, device='cpu'), tmp_path, DataLoader(Toy(8, 1), 4), sel)
    assert load_checkpoint(tmp_path/'checkpoints'/'selected.pt')['epoch'] == 1


def test_an_empty_scoring_loader_is_refused_before_training(tmp_path):
    acc = lambda s, y: dict(acc=float(((s > .5) == (y > .5)).mean()))
    trained = []
    def crit(out, batch): trained.append(1); return bce(out, batch)
    empty = DataLoader(Toy(0), 4)
    with pytest.raises(KitError, match=r'val_loader yields no batches: its dataset holds 0 sample\(s\)'):
        fit(Net(), crit, TRAIN, TrainConfig(epochs=1, progress=False, device='cpu'), tmp_path, empty, acc)
    with pytest.raises(KitError, match=r'val_loader yields no batches: its dataset holds 6 sample\(s\) .*with drop_last'):
        fit(Net(), crit, TRAIN, TrainConfig(epochs=1, progress=False, device='cpu'), tmp_path, DataLoader(Toy(6), 8, drop_last=True), acc)
    with pytest.raises(KitError, match=r"watch\['test'\] yields no batches"):
        fit(Net(), crit, TRAIN, TrainConfig(epochs=1, progress=False, device='cpu'), tmp_path, watch={'test': (empty, acc)})
    assert trained == []
    from har_kit.engine import predict
    with pytest.raises(KitError, match='predict: the DataLoader yielded no batches'): predict(Net(), empty)


def _rank_seed_of(tmp_path, monkeypatch, seed, rank):  # the global seed `fit` gives a process of this rank
    import har_kit.engine as E
    class Seeded(Exception): pass
    def seeded(s): raise Seeded(s)   # the rest of a second rank's start needs its process group
    monkeypatch.setattr(E, 'rank_world', lambda: (rank, 2))
    monkeypatch.setattr(E, 'seed_everything', seeded)
    with pytest.raises(Seeded) as e: fit(Net(), bce, TRAIN, TrainConfig(epochs=1, progress=False, device='cpu', seed=seed), tmp_path)
    return e.value.args[0]


def test_the_largest_seed_seeds_every_rank(tmp_path, monkeypatch):
    assert 0 <= _rank_seed_of(tmp_path, monkeypatch, 2**32 - 1, 1) < 2**32   # a seed numpy takes


def test_ranks_of_neighbouring_seeds_draw_apart(tmp_path, monkeypatch):
    "Rank 1 of seed 0 is not rank 0 of seed 1 (`seed + rank` made them one): two seeds of a multi-GPU cell share no draws."
    assert _rank_seed_of(tmp_path, monkeypatch, 0, 0) == 0 and _rank_seed_of(tmp_path, monkeypatch, 1, 0) == 1   # one process: as before
    assert _rank_seed_of(tmp_path, monkeypatch, 0, 1) not in range(1000)


def test_checkpoints_and_model_files_are_on_disk_before_their_rename(tmp_path, monkeypatch):
    "A power loss after the rename must not leave an empty file: each is synced first, as the JSON records are."
    import os
    import har_kit.core as core
    from har_kit.model_file import save_model
    synced = []
    monkeypatch.setattr(core.os, 'fsync', lambda fd: synced.append(os.readlink(f'/proc/self/fd/{fd}')))
    save_checkpoint(dict(w=torch.ones(2)), tmp_path/'last.pt')
    from har_kit.dahar import dahar_variant
    kw = dict(name='dahar', num_attributes=3, arch='resnet-tiny', weights=None)
    save_model(tmp_path/'model.pt', dahar_variant(**kw), builder='dahar_variant', kwargs=kw, attributes=list('abc'),
               input_size=(64, 32), mean=(0., 0., 0.), std=(1., 1., 1.))
    assert [Path(p).name.startswith(('.last.pt.', '.model.pt.')) for p in synced] == [True, True], synced
