"Complexity benchmark: structure, exact parameter counts, positive finite ratios, models left as they were, CLI."
import re
import json, math

import pytest
import torch
import torchvision
from torch import nn

from har_kit import bench
from har_kit.bench import build_model, complexity, plain_baseline
from har_kit.backbones import count_params
from har_kit.cli import main
from har_kit.core import KitError

torch.set_num_threads(1)
SMALL = dict(input_size=(3, 32, 32), warmup=1, iters=3)


class Branchy(nn.Module):
    "Plain resnet-tiny plus a side branch that only the training loss sees."
    def __init__(self):
        super().__init__()
        self.base = plain_baseline('resnet-tiny', 5)
        self.side = nn.Conv2d(128, 4, 1)
    def forward(self, x):
        c5 = self.base.backbone(x)[-1]
        return dict(logits=self.base.fc(c5.mean((2, 3))), side=self.side(c5))


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_plain_baseline_is_torchvision_resnet(arch):
    tv = torchvision.models.get_model(arch, weights=None, num_classes=14)
    assert count_params(plain_baseline(arch, 14)) == count_params(tv)


def test_complexity_structure_and_ratios():
    model, base = Branchy(), plain_baseline('resnet-tiny', 5)
    r = complexity(model, base, **SMALL)
    for k in ('params', 'params_baseline', 'params_ratio', 'latency_ms', 'latency_ms_baseline', 'latency_ratio',
              'train_step_ms', 'train_step_ms_baseline', 'train_ratio'):
        assert isinstance(r[k], (int, float)) and 0 < r[k] < math.inf, k
    assert r['params'] - r['params_baseline'] == 128 * 4 + 4
    assert r['params_ratio'] == pytest.approx(r['params'] / r['params_baseline'])
    assert r['latency_ratio_range'][0] <= r['latency_ratio'] <= r['latency_ratio_range'][1]   # median of per-repeat ratios
    assert r['device'] == 'cpu' and r['input_size'] == [3, 32, 32] and r['iters'] == 3
    assert 'train_ratio' not in complexity(model, base, train_step=False, **SMALL)


def test_models_are_left_as_they_were():
    model = Branchy().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    complexity(model, plain_baseline('resnet-tiny', 5), **SMALL)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm running stats too


def test_bad_arguments():
    with pytest.raises(KitError, match=r'iters=0 \(--iters\): timed repeats must be a whole number >= 1'): complexity(Branchy(), Branchy(), iters=0)
    with pytest.raises(KitError, match='input_size'): complexity(Branchy(), Branchy(), input_size=(32, 32))
    with pytest.raises(KitError, match='package.module:builder'): build_model('nomodule')
    with pytest.raises(KitError, match='not valid JSON'): build_model('har_kit.bench:plain_baseline{"arch": }')


def test_cli_writes_table_and_json(tmp_path, capsys):
    out = tmp_path/'b.json'
    rc = main(['bench', '--model', 'har_kit.bench:plain_baseline{"arch": "resnet-small", "num_attributes": 14}',
               '--model', 'har_kit.bench:plain_baseline{"arch": "resnet-tiny"}', '--baseline', 'resnet-tiny',
               '--input-size', '3', '32', '32', '--warmup', '0', '--iters', '2', '--out', str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and all(r['baseline'] == 'plain resnet-tiny' for r in rows.values())
    tiny = rows['har_kit.bench:plain_baseline{"arch": "resnet-tiny"}']
    assert tiny['params_ratio'] == 1.0 and rows[next(iter(rows))]['params_ratio'] > 1
    assert all(0 < r[k] < math.inf for r in rows.values() for k in ('latency_ratio', 'train_ratio'))
    text = capsys.readouterr().out
    assert 'infer ms' in text and 'resnet-small' in text and str(out) in text


def test_interleaved_rotates_the_order_and_ratios_are_per_repeat():
    calls = []
    fns = [lambda n=n: calls.append(n) for n in 'AB' + 'C']
    times = bench._interleaved(fns, lambda f: (f(), 1.0)[1], warmup=0, iters=3)
    assert calls == list('ABC' 'BCA' 'CAB') and [len(t) for t in times] == [3, 3, 3]
    r = bench.ratio_stats([2.0, 3.0, 10.0], [1.0, 1.0, 1.0])
    assert r['median'] == 3.0 and r['range'] == [2.0, 10.0] and r['iqr'][0] <= 3.0 <= r['iqr'][1]


def test_compare_models_times_all_against_one_baseline():
    rows = bench.compare_models({'a': Branchy(), 'b': plain_baseline('resnet-tiny', 5)}, plain_baseline('resnet-tiny', 5), **SMALL)
    assert list(rows) == ['a', 'b'] and rows['b']['params_ratio'] == 1.0
    for r in rows.values():
        assert r['latency_ratio_range'][0] <= r['latency_ratio'] <= r['latency_ratio_range'][1]
        assert r['train_ratio_iqr'][0] <= r['train_ratio'] <= r['train_ratio_iqr'][1]


def test_builder_without_its_arguments_is_a_kit_error(capsys):
    assert main(['bench', '--model', 'har_kit.bench:PlainClassifier', '--iters', '1']) == 2   # the console script: one line, exit 2
    assert re.search(r'^har-kit bench: .*cannot be called with no arguments.*pass its arguments as JSON', capsys.readouterr().err)


def test_throughput_and_data_pipeline(monkeypatch):
    t = bench.throughput(plain_baseline('resnet-tiny', 5), (3, 32, 32), 2, train=True, amp='bf16', channels_last=True, warmup=0, iters=1)
    assert t['images_per_s'] > 0 and t['amp'] == 'bf16' and t['channels_last']
    assert bench.loader_options(0) == dict(num_workers=0, pin_memory=False)
    monkeypatch.setenv('HAR_KIT_WORKERS', '3')
    assert bench.default_workers() == 3 and bench.loader_options()['num_workers'] == 3
    monkeypatch.setenv('HAR_KIT_WORKERS', 'many')
    with pytest.raises(KitError, match='HAR_KIT_WORKERS'): bench.default_workers()
    res = bench.data_bench('dahar', bench.synthetic_samples(4, (64, 32)), workers=[0], batch_size=2, batches=1, model_batch=1,
                           model_iters=1, arch='resnet-tiny')
    assert res['input_size'] == [3, 224, 224] and res['model'] == 'plain resnet-tiny'
    assert res['ratio']['0'] == pytest.approx(res['data_images_per_s']['0'] / res['model_train_images_per_s'])


def test_cli_checks_out_batch_and_attributes_before_timing(tmp_path, capsys, monkeypatch):
    "A folder --out, --num-attributes 0 and a train step BatchNorm cannot run are KitErrors before any timing."
    timed = []
    monkeypatch.setattr(bench, '_interleaved', lambda *a: timed.append(1) or [[1.0]] * len(a[0]))
    small = ['bench', '--arch', 'resnet18', '--baseline', 'resnet18', '--input-size', '3', '32', '32', '--iters', '1', '--warmup', '0']
    cases = [(['--out', str(tmp_path)], f'is a folder: name the JSON file to write, e.g. {tmp_path/"complexity.json"}'),
             (['--num-attributes', '0', '--out', str(tmp_path/'b.json')], '--num-attributes 0: the classifier needs at least 1'),
             (['--out', str(tmp_path/'b.json')], 'plain resnet18: its training step cannot run on a batch of 1 x 3x32x32: BatchNorm'),
             (['--data', 'campar', '--out', str(tmp_path)], 'e.g. ' + str(tmp_path/'data_campar.json'))]
    for args, message in cases:
        assert main([*small, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err, (args, err)
    assert timed == [] and not (tmp_path/'b.json').exists()
    assert main([*small, '--batch-size', '2', '--out', str(tmp_path/'b.json')]) == 0 and timed   # two images: it runs
    with pytest.raises(KitError, match='at least 1 attribute'): plain_baseline('resnet-tiny', 0)


def test_data_throughput_times_whole_epochs_of_persistent_workers(monkeypatch, tmp_path):
    """Each worker count's loader runs one untimed epoch, then `rounds` timed ones (its workers persist, none restarts):
    an epoch is `batches`, at least 4 a worker and a whole number a worker, drawn from all the samples (repeated when fewer)."""
    made = []
    real = bench.loading.make_loader
    class Counted:
        def __init__(self, loader): self.loader, self.epochs = loader, 0
        def __iter__(self): self.epochs += 1; return iter(self.loader)
    def counted(*a, **kw):
        made.append(Counted(real(*a, **kw))); return made[-1]
    monkeypatch.setattr(bench.loading, 'make_loader', counted)
    samples = bench.synthetic_samples(3, (40, 20), root=tmp_path)
    rates = bench.data_throughput(samples, bench.pipeline_transform('campar'), [0, 2], batch_size=2, batches=3, rounds=2)
    assert set(rates) == {0, 2} and [c.epochs for c in made] == [3, 3] and [len(c.loader.dataset) for c in made] == [6, 16]
    assert made[1].loader.persistent_workers and made[1].loader.num_workers == 2
    many = bench.synthetic_samples(40, (40, 20), root=tmp_path/'many')   # more than one epoch reads: a draw from all of them
    bench.data_throughput(many, bench.pipeline_transform('campar'), [0], batch_size=2, batches=5, rounds=1)
    read = {s.image.name for s in made[-1].loader.dataset.samples}
    assert len(read) == 10 and not read <= {s.image.name for s in many[:10]}


def test_data_throughput_counts_no_batch_made_before_its_clock(monkeypatch):
    """A DataLoader's workers start on `num_workers * prefetch_factor` batches as soon as its iterator is made: every
    batch counted in a timed window was made inside it, and the rate is the window's images over its time. Before, the
    clock started after the first batch, with the prefetched ones already made (up to 2x the true rate at 12 workers).
    Structure, not speed: the loader and the clock are stand-ins that write one log."""
    log, tokens = [], iter(range(10**6))
    class Prefetching:   # a DataLoader's shape: iter() sets `num_workers * prefetch_factor` batches going at once
        def __init__(self, samples, transform, batch_size, shuffle, drop_last, num_workers=0, prefetch_factor=None, **kw):
            self.n, self.bs, self.ahead, self.epochs = len(samples) // batch_size, batch_size, num_workers * (prefetch_factor or 0), 0
        def __iter__(self):
            self.epochs += 1
            todo, ready = self.n, []
            def start():   # a worker takes a batch: it is made from now on
                nonlocal todo
                todo -= 1; ready.append(next(tokens)); log.append(('made', ready[-1]))
            for _ in range(min(self.ahead, todo)): start()
            def batches():
                while ready or todo:
                    if not ready: start()   # no workers: made when asked for
                    k = ready.pop(0)
                    if self.ahead and todo: start()   # the worker that handed it over takes the next one
                    log.append(('used', k, self)); yield {'index': torch.arange(self.bs)}
            return batches()
    made = []
    monkeypatch.setattr(bench.loading, 'make_loader', lambda *a, **kw: made.append(Prefetching(*a, **kw)) or made[-1])
    monkeypatch.setattr(bench.time, 'perf_counter', lambda: log.append(('clock',)) or float(len(log)))
    rates = bench.data_throughput(list('ab'), None, [0, 2], batch_size=2, batches=3)   # rounds: 3 by default
    clocks = [i for i, e in enumerate(log) if e[0] == 'clock']
    made_at = {e[1]: i for i, e in enumerate(log) if e[0] == 'made'}
    per = {id(ld): [] for ld in made}
    for start, end in zip(clocks[::2], clocks[1::2]):
        used = [e for e in log[start:end] if e[0] == 'used']
        assert used and len({id(e[2]) for e in used}) == 1 and all(made_at[e[1]] > start for e in used), log[start:end]
        per[id(used[0][2])].append(2 * len(used) / (end - start))   # images over the window's (stand-in) seconds
    assert len(clocks) == 2 * 2 * 3   # two reads a window, a window per round and worker count
    assert [(ld.n, ld.ahead, ld.epochs) for ld in made] == [(3, 0, 4), (8, 8, 4)]   # 3 batches; 8 for 2 workers (4 each, their prefetch)
    assert [rates[0], rates[2]] == [pytest.approx(sorted(per[id(ld)])[1]) for ld in made]   # the median of the rounds


def test_data_bench_removes_its_synthetic_images_also_when_stopped(monkeypatch, tmp_path):
    "The synthetic JPEGs live in a temporary folder that is gone after the benchmark, finished or interrupted."
    from conftest import TempIn
    monkeypatch.setattr(bench, 'tempfile', TempIn(tmp_path))   # bench's temporary folders only
    res = bench.data_bench('campar', workers=[0], batch_size=2, batches=1, images=3, model_batch=2, model_iters=1, arch='resnet-tiny')
    assert res['images'] == 3 and res['epoch_images'] == {'0': 2} and list(tmp_path.iterdir()) == []
    def stop(*a, **kw): raise KeyboardInterrupt
    monkeypatch.setattr(bench, '_data_rates', stop)
    with pytest.raises(KeyboardInterrupt): bench.data_bench('campar', workers=[0], batch_size=2, batches=1, images=3, arch='resnet-tiny')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('args, says', [
    (['--data', 'campar', '--batches', '0'], 'batches=0 (--batches): timed batches must be a whole number >= 1'),
    (['--data', 'campar', '--batch-size', '-5'], 'batch_size=-5 (--batch-size)'),
    (['--data', 'campar', '--images', '0'], 'images=0 (--images)'),
    (['--data', 'campar', '--rounds', '0'], 'rounds=0 (--rounds): timed epochs per worker count must be a whole number >= 1'),
    (['--data', 'campar', '--workers', '0', '-1'], 'workers=-1 (--workers)'),
    (['--iters', '0'], 'iters=0 (--iters)'),
    (['--input-size', '1', '32', '32'], 'input_size=(1, 32, 32) (--input-size C H W): the models take RGB images'),
    (['--input-size', '3', '0', '32'], 'input_size=(3, 0, 32) (--input-size C H W)'),
    (['--model', 'builtins:dict', '--baseline', 'resnet-tiny'], 'builtins:dict: a dict, not a torch.nn.Module'),
    (['--model', 'torch.nn:Identity', '--baseline', 'resnet-tiny'], 'torch.nn:Identity: no parameter to train'),
    (['--data', 'campar', '--dataset', 'rpa'], '--dataset rpa names the kind of --data-root: pass --data-root too'),   # was ignored
    (['--dataset', 'rap'], '--dataset names the images --data reads: add --data campar or --data dahar'),   # timed models instead
])
def test_bench_cli_names_the_flag_of_a_bad_value(tmp_path, args, says, capsys):
    "Refused before any timing, with the flag named: nothing is written."
    assert main(['bench', *args, '--out', str(tmp_path/'b.json')]) == 2
    assert says in capsys.readouterr().err and not (tmp_path/'b.json').exists()
