"Complexity benchmark: structure, exact parameter counts, positive finite ratios, models left as they were, CLI."
import json, math

import pytest
import torch
import torchvision
from torch import nn

from har_kit.bench import build_model, cli, complexity, count_params, plain_baseline
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
    assert r['latency_ratio'] == pytest.approx(r['latency_ms'] / r['latency_ms_baseline'])
    assert r['device'] == 'cpu' and r['input_size'] == [3, 32, 32] and r['iters'] == 3
    assert 'train_ratio' not in complexity(model, base, train_step=False, **SMALL)


def test_models_are_left_as_they_were():
    model = Branchy().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    complexity(model, plain_baseline('resnet-tiny', 5), **SMALL)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm running stats too


def test_bad_arguments():
    with pytest.raises(KitError, match='iters >= 1'): complexity(Branchy(), Branchy(), iters=0)
    with pytest.raises(KitError, match='input_size'): complexity(Branchy(), Branchy(), input_size=(32, 32))
    with pytest.raises(KitError, match='package.module:builder'): build_model('nomodule')
    with pytest.raises(KitError, match='not valid JSON'): build_model('har_kit.bench:plain_baseline{"arch": }')


def test_cli_writes_table_and_json(tmp_path, capsys):
    out = tmp_path/'b.json'
    rc = main(['bench', '--model', 'har_kit.bench:plain_baseline{"arch": "resnet-small", "num_classes": 14}',
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
