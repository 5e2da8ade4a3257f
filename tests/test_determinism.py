"""Results independent of scheduling (issue 17): a run fixes its intra-op threads and seeds, so the same tiny
training run gives bit-identical metrics alone and while another run executes beside it; and a tiny real training
(synthetic PA100K-like set, Da-HAR on resnet-tiny, one epoch) still gives the committed golden numbers, kept as a
`metrics.json` entry (`har_kit.metrics.metrics_entry`).

Regenerate the golden numbers after a change that is meant to move them: `python tests/test_determinism.py --regenerate`."""
import json, math, subprocess, sys, tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from har_kit.core import load_json, save_json
from har_kit.runs import run_notebook

GOLDEN = Path(__file__).resolve().parent/'golden'/'tiny_training.json'
REGENERATE = 'python tests/test_determinism.py --regenerate'
TOLERANCE = 1e-6   # relative (and absolute near 0), per number: low-bit differences between CPUs, nothing a real change hides behind

TRAIN = '''import os, torch, torch.nn as nn
from har_kit.core import seed_everything, save_metrics
seed_everything(seed)
x, y = torch.randn(64, 3, 16, 16), (torch.rand(64, 4) > 0.5).float()
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(steps):
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
save_metrics(dict(loss=loss.item(), weight_sum=sum(p.double().sum().item() for p in model.parameters()),
                  hash_order=hash('abc'), threads=torch.get_num_threads(), train_seconds=0.0), out_dir)
'''
TIMING = {'train_seconds'}


def _nb(path):
    path.write_text(json.dumps({'cells': [
        {'cell_type': 'code', 'metadata': {'tags': ['parameters']}, 'source': 'seed = 0\nsteps = 20\nout_dir = None',
         'outputs': [], 'execution_count': None},
        {'cell_type': 'code', 'metadata': {}, 'source': TRAIN, 'outputs': [], 'execution_count': None}],
        'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
        'nbformat': 4, 'nbformat_minor': 5}))
    return path


def test_same_metrics_alone_and_beside_another_run(tmp_path, monkeypatch):
    monkeypatch.delenv('HAR_KIT_THREADS', raising=False)
    monkeypatch.setenv('OMP_NUM_THREADS', '2')                    # the launcher's own setting must not leak into runs
    nb = _nb(tmp_path/'train.ipynb')
    alone = load_json(run_notebook(nb, {'seed': 0}, tmp_path/'alone', progress=False)/'metrics.json')
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(run_notebook, nb, {'seed': 1, 'steps': 40}, tmp_path/'neighbour', progress=False)
        beside = pool.submit(run_notebook, nb, {'seed': 0}, tmp_path/'beside', progress=False)
        beside, _ = load_json(beside.result()/'metrics.json'), busy.result()
    assert alone['threads'] == 1
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING}
    assert strip(alone) == strip(beside)
    assert load_json(tmp_path/'beside'/'env.json')['threads'] == 1


def tiny_training(work):  # an empty folder for the data and the run
    "A tiny real training through the public APIs: 64 synthetic PA100K-like images, Da-HAR on resnet-tiny, one epoch."
    import torch
    from har_kit.core import seed_everything
    from har_kit.dahar import dahar_variant
    from har_kit.loading import dahar_transforms, make_loader
    from har_kit.data import load_dataset
    from har_kit.engine import TrainConfig, fit, predict
    from har_kit.metrics import metrics_entry, pedestrian_metrics
    from har_kit.synth import make_synthetic
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        data = load_dataset('pa100k', root=make_synthetic('pa100k', Path(work)/'data', n=64, seed=0, progress=False))
        seed_everything(0)
        model = dahar_variant('dahar', num_attributes=len(data.attributes), arch='resnet-tiny', weights=None)
        bce = lambda out, batch: dict(loss=torch.nn.functional.binary_cross_entropy_with_logits(out['logits'], batch['labels']))
        train = make_loader(data.split('train'), dahar_transforms(True, 2, 0.25), 8, True, seed=0)
        history = fit(model, bce, train, TrainConfig(epochs=1, lr=0.01, device='cpu', progress=False, seed=0), Path(work)/'run')
        p = predict(model, make_loader(data.split('val', 'test'), dahar_transforms(False, 2, 0.25), 8, False), torch.device('cpu'))
    finally: torch.set_num_threads(threads)
    return metrics_entry('pa100k', {'full': pedestrian_metrics(p['scores'], p['labels'])}, data.attributes, final_loss=history[-1]['loss'],
                         extra=dict(n_train=len(data.split('train')), n_eval=len(p['scores']),
                                    logits_sum=float(p['logits'].astype('float64').sum()),
                                    logits_abs_sum=float(abs(p['logits'].astype('float64')).sum()),
                                    weight_sum=sum(float(v.double().sum()) for v in model.state_dict().values() if v.is_floating_point())))


def _flat(entry, prefix=''):  # a metrics.json entry -> {'full.mA': .., 'extra.n_train': .., ...}
    out = {}
    for k, v in entry.items():
        if isinstance(v, dict): out.update(_flat(v, f'{prefix}{k}.'))
        else: out[f'{prefix}{k}'] = v
    return out


def _same(a, b):  # a golden value and a fresh one
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
    return a == b


def test_tiny_training_matches_golden(tmp_path):
    "The numbers of `tiny_training` are the committed ones: a change that moves them must regenerate them, on purpose."
    assert GOLDEN.exists(), f'{GOLDEN} is missing: run `{REGENERATE}` and commit it'
    want, got = _flat(load_json(GOLDEN)['metrics']), _flat(tiny_training(tmp_path))
    off = {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if k not in want or k not in got or not _same(want[k], got[k])}
    assert not off, (f'{GOLDEN.name} is stale or the tiny training changed: (golden, now) = {off}. If the change is '
                     f'meant to move these numbers, run `{REGENERATE}` and commit {GOLDEN.relative_to(GOLDEN.parents[2])}')



def test_augmentation_independent_of_workers(tmp_path):
    "An epoch's augmented batches, as the engine iterates a loader, are the same with 0 and 2 workers (both methods' transforms)."
    import torch
    from har_kit.data import read_pa100k, read_wider, tiny_fixture
    from har_kit.distributed import set_epoch, shard_loader
    from har_kit.loading import campar_transforms, dahar_transforms, make_loader
    wd, pa = read_wider(tiny_fixture('wider', tmp_path/'wider', n=12)), read_pa100k(tiny_fixture('pa100k', tmp_path/'pa', n=12))
    for data, tf, mask in ((wd, dahar_transforms(True, scale=0.25), True), (pa, campar_transforms(True, scale=0.25), False)):
        def epoch(workers):
            ld = shard_loader(make_loader(data.samples, tf, 3, True, with_mask=mask, seed=5, num_workers=workers), seed=5)
            set_epoch(ld, 5, 3)
            return [b for b in ld]
        a, b = epoch(0), epoch(2)
        assert len(a) == len(b) and all(torch.equal(x['index'], y['index']) and torch.equal(x['image'], y['image']) for x, y in zip(a, b)), \
            f'{data.name}: the augmentation depends on the worker count'


if __name__ == '__main__':
    if sys.argv[1:] != ['--regenerate']: sys.exit(f'usage: {REGENERATE}')
    import torch, har_kit
    with tempfile.TemporaryDirectory() as work: metrics = tiny_training(work)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=GOLDEN.parent).stdout.strip()
    save_json(dict(regenerate=REGENERATE, commit=commit, torch=torch.__version__, har_kit=har_kit.__version__,
                   tolerance=TOLERANCE, metrics=metrics), GOLDEN)
    print(f'wrote {GOLDEN}: {metrics}')
