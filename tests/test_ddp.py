"""DDP: two gloo processes on CPU (launched as torchrun would: RANK/WORLD_SIZE env) match one process on the same data,
with each pipeline in turn in the same two processes (one launch: the process group is set up once and reused)."""
import json, os, shutil, socket, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from har_kit.checkpoints import load_checkpoint


class Clean(Dataset):
    "Deterministic toy samples (no read-time noise: the processes' RNG streams differ from one process's)."
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = (self.x.mean((2, 3)) @ torch.randn(3, 3, generator=torch.Generator().manual_seed(7)).T > 0).float()
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return dict(image=self.x[i], labels=self.y[i], index=i)


class Net(nn.Module):  # no BatchNorm: per-process batch statistics would differ from the global batch's
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 3)
    def forward(self, x): return dict(logits=self.head(self.backbone(x)))


def bce(out, batch):
    l = nn.functional.binary_cross_entropy_with_logits(out['logits'], batch['labels'])
    return dict(loss=l, bce=l.detach())


def acc(scores, labels): return dict(acc=float(((scores > 0.5) == (labels > 0.5)).mean()))


def device_loader(ds, batch, shuffle):
    "The same samples as a `har_kit.pipeline.DeviceLoader` (the paper profile's batches from a decoded cache), no augmentation."
    from har_kit.pipeline import DeviceLoader
    imgs = ((ds.x.clamp(-2, 2) + 2) / 4 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return DeviceLoader(dict(images=imgs, masks=None, dir='memory'), ds.y.numpy(), lambda x, m, g: {'image': x.float() / 255}, batch, shuffle)


def job(out, pipeline='loader'):
    "The same script for 1 and 2 processes: train_eval on fixed data, rank 0 saves weights, history, predictions."
    from har_kit.engine import TrainConfig, train_eval
    from har_kit.distributed import is_main_process
    torch.set_num_threads(1)
    if os.environ.get('RANK') == '0' and not hasattr(job, 'late'):   # rank 0's last files land late: no other rank may read best.pt before they have
        import time, har_kit.checkpoints as ck
        real = job.late = ck.save_checkpoint
        def late(state, path):
            if state['epoch'] == 3: time.sleep(1.0)
            return real(state, path)
        ck.save_checkpoint = late
    torch.manual_seed(0)
    model = Net()
    make = DataLoader if pipeline == 'loader' else device_loader
    loaders = dict(train=make(Clean(64, 0), 16, shuffle=True), val=make(Clean(31, 1), 8, shuffle=False),   # 31: a padded validation shard, left out of val_loss
                   test=make(Clean(21, 2), 4, shuffle=False))  # 21: uneven shards, padded by the sampler, gathered back
    cfg = TrainConfig(epochs=3, lr=0.2, momentum=0.9, scheduler='cosine', backbone_lr_mult=0.5, monitor='loss',
                      device='cpu', progress=False, seed=1)   # the training loss falls every epoch here: best.pt is epoch 3's
    res = train_eval(model, bce, loaders, cfg, out, acc)
    assert res['epoch'] == 3, res['epoch']   # on every rank: best.pt was read after rank 0's last files had landed
    if is_main_process():
        torch.save(model.state_dict(), Path(out)/'final.pt')
        np.savez(Path(out)/'pred.npz', **{f'{k}_{a}': v for k, p in res['predictions'].items() for a, v in p.items()})
        (Path(out)/'result.json').write_text(json.dumps(dict(metrics=res['metrics'], history=res['history'])))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


PIPELINES = ('loader', 'device')   # DataLoader; the decoded cache's DeviceLoader


def _ranks(out, logs):  # the runs' folder (one per pipeline); where each rank's output goes
    "Run the two ranks to the end; when one fails, stop the other at once (alone it would wait in a collective for gloo's "
    "timeout). No time limit decides the outcome: the hour below only guards against a real hang."
    env = {**os.environ, 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(_free_port()), 'WORLD_SIZE': '2',
           'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(Path(__file__).parent) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    files = [open(logs/f'rank{r}.log', 'w') for r in range(2)]   # files, not pipes: a full pipe cannot stall a rank
    procs = [subprocess.Popen([sys.executable, __file__, str(out)], env={**env, 'RANK': str(r), 'LOCAL_RANK': str(r)},
                              stdout=files[r], stderr=subprocess.STDOUT) for r in range(2)]
    hang = time.monotonic() + 3600
    while None in (codes := [p.poll() for p in procs]):   # every process polled each round
        if any(c not in (None, 0) for c in codes) or time.monotonic() > hang:
            for p in procs:
                if p.poll() is None: p.kill()
        time.sleep(0.1)   # polling the processes' state; what they compute does not depend on it
    for f in files: f.close()
    return [p.returncode for p in procs], '\n'.join((logs/f'rank{r}.log').read_text() for r in range(2))


def test_two_processes_match_one(tmp_path):
    for pipeline in PIPELINES: job(tmp_path/'one'/pipeline, pipeline)
    for attempt in range(3):   # the free port is found, then released: another process may take it before rank 0 binds it
        shutil.rmtree(tmp_path/'two', ignore_errors=True)
        codes, log = _ranks(tmp_path/'two', tmp_path)
        if codes == [0, 0] or 'address already in use' not in log.lower(): break
    assert codes == [0, 0], log
    for pipeline in PIPELINES: _same_training(tmp_path/'one'/pipeline, tmp_path/'two'/pipeline)


def _same_training(one, two):  # the single process's run folder; the two processes'
    a, b = (torch.load(d/'final.pt', weights_only=True) for d in (one, two))
    for k in a: torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    ra, rb = (json.loads((d/'result.json').read_text()) for d in (one, two))
    assert [r['epoch'] for r in rb['history']] == [1, 2, 3]
    for ha, hb in zip(ra['history'], rb['history']):
        assert ha.keys() == hb.keys() and all(ha[k] == pytest.approx(hb[k], rel=1e-5, abs=1e-6) for k in ha)
    assert ra['metrics'].keys() == rb['metrics'].keys()
    for k in ra['metrics']: assert ra['metrics'][k] == pytest.approx(rb['metrics'][k])
    pa, pb = np.load(one/'pred.npz'), np.load(two/'pred.npz')
    assert pb['test_scores'].shape == (21, 3)
    for k in pa.files: np.testing.assert_allclose(pa[k], pb[k], atol=1e-5)
    # only rank 0 wrote: one history, one set of checkpoints
    assert sorted(p.name for p in (two/'checkpoints').iterdir()) == ['best.pt', 'last.pt']
    assert load_checkpoint(two/'checkpoints'/'last.pt')['world_size'] == 2


if __name__ == '__main__':
    for pipeline in PIPELINES: job(Path(sys.argv[1])/pipeline, pipeline)
