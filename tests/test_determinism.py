"""Results independent of scheduling (issue 17): a run fixes its intra-op threads and seeds, so the same tiny
training run gives bit-identical metrics alone and while another run executes beside it."""
import json
from concurrent.futures import ThreadPoolExecutor

from har_kit.core import load_json
from har_kit.runs import run_notebook

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
