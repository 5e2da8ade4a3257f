"Model file (save_model / load_model), Predictor, explain and export."
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from har_kit.core import KitError
from har_kit.predict import LoadedModel, load_model, model_digest, save_model

NAMES = ['hat', 'bag', 'skirt', 'boots']
PRE = dict(input_size=(64, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _dahar(seed=0):
    from har_kit.dahar import dahar_variant
    kw = dict(name='dahar', num_classes=4, arch='resnet-tiny', weights=None)
    torch.manual_seed(seed)
    return dahar_variant(**kw).eval(), 'har_kit.dahar:dahar_variant', kw


def _campar(seed=0):
    from har_kit.campar import campar_variant
    kw = dict(name='campar_fusion', num_attributes=4, arch='resnet-tiny', weights=None)
    torch.manual_seed(seed)
    return campar_variant(**kw).eval(), 'har_kit.campar:campar_variant', kw


def _save(path, net, builder, kw, **more):
    return save_model(path, net, builder=builder, kwargs=kw, attributes=NAMES, **{**PRE, **more})


@pytest.mark.parametrize('make', [_dahar, _campar])
def test_round_trip_same_outputs(tmp_path, make):
    net, builder, kw = make()
    f = _save(tmp_path/'run'/'v'/'model.pt', net, builder, kw, thresholds=[0.5, 0.3, 0.7, 0.5], dataset='pa100k')
    lm = load_model(tmp_path/'run', variant='v')
    assert isinstance(lm, LoadedModel) and lm.path == f and not lm.model.training
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(lm.model(x)['logits'], net(x)['logits'])
    assert lm.attributes == NAMES and lm.input_size == (64, 32) and lm.meta['dataset'] == 'pa100k'
    np.testing.assert_allclose(lm.thresholds, [0.5, 0.3, 0.7, 0.5])
    assert load_model(f).thresholds is not None and load_model(tmp_path/'run').path == f   # the only variant


def test_pretrained_request_is_not_replayed(tmp_path, monkeypatch):
    net, builder, kw = _dahar()
    f = _save(tmp_path/'m.pt', net, builder, {**kw, 'weights': 'IMAGENET1K_V1'})
    calls = []
    import har_kit.dahar as dahar
    real = dahar.dahar_variant
    monkeypatch.setattr(dahar, 'dahar_variant', lambda **k: calls.append(k) or real(**k))
    lm = load_model(f)
    assert calls[0]['weights'] is None and lm.meta['pretrained'] == 'IMAGENET1K_V1'


@pytest.mark.parametrize('where', [0.1, 0.5, 0.9, 'truncate', 'empty'])
def test_corrupted_file_is_refused_naming_it(tmp_path, where):
    net, builder, kw = _dahar()
    f = _save(tmp_path/'m.pt', net, builder, kw)
    b = bytearray(f.read_bytes())
    if where == 'truncate': b = b[:len(b) // 2]
    elif where == 'empty': b = b''
    else: b[int(len(b) * where)] ^= 0x55
    bad = tmp_path/'corrupt.pt'; bad.write_bytes(bytes(b))
    with pytest.raises(KitError, match='corrupt.pt'): load_model(bad)


def test_flipped_weight_value_fails_the_hash(tmp_path):
    net, builder, kw = _dahar()
    f = _save(tmp_path/'m.pt', net, builder, kw)
    blob = torch.load(f, weights_only=True)
    k = next(k for k, v in blob['state_dict'].items() if v.is_floating_point() and v.numel())
    blob['state_dict'][k].view(-1)[0] += 1e-3            # a valid file whose content changed
    torch.save(blob, tmp_path/'edited.pt')
    with pytest.raises(KitError, match='edited.pt.*hash mismatch'): load_model(tmp_path/'edited.pt')


def test_checks_on_save_and_load(tmp_path):
    net, builder, kw = _dahar()
    f = _save(tmp_path/'m.pt', net, builder, kw)
    with pytest.raises(KitError, match='4 attributes but 3 were expected'): load_model(f, attributes=NAMES[:3])
    with pytest.raises(KitError, match='another order'): load_model(f, attributes=NAMES[::-1])
    for bad, match in [(dict(thresholds=[0.5] * 3), 'thresholds'), (dict(thresholds=[1.5] * 4), 'thresholds'),
                       (dict(input_size=(64,)), 'input_size'), (dict(mean=(0, 0)), 'mean'),
                       (dict(dataset=object()), 'dataset'), (dict(extra={'x': object()}), 'extra.x')]:
        with pytest.raises(KitError, match=match): _save(tmp_path/'bad.pt', net, builder, kw, **bad)
    with pytest.raises(KitError, match='builder'): _save(tmp_path/'bad.pt', net, 'dahar_variant', kw)
    with torch.no_grad(): next(net.parameters()).view(-1)[0] = float('nan')
    with pytest.raises(KitError, match='NaN'): _save(tmp_path/'bad.pt', net, builder, kw)
    assert not (tmp_path/'bad.pt').exists() and not list(tmp_path.glob('.*tmp'))
    with pytest.raises(KitError, match='variants with a model here'): load_model(tmp_path, variant='nope')
    ck = tmp_path/'ckpt.pt'; torch.save({'model': net.state_dict()}, ck)
    with pytest.raises(KitError, match='not a har-kit model file'): load_model(ck)


def test_untrusted_builder_is_not_called(tmp_path):
    net, builder, kw = _dahar()
    f = _save(tmp_path/'m.pt', net, builder, kw)
    blob = torch.load(f, weights_only=True)
    blob['meta']['builder'] = 'os:system'; blob['meta']['kwargs'] = {'command': 'touch ' + str(tmp_path/'pwned')}
    blob['sha256'] = model_digest(blob['meta'], blob['state_dict'], blob['extra'])
    torch.save(blob, tmp_path/'evil.pt')
    with pytest.raises(KitError, match='only har_kit builders'): load_model(tmp_path/'evil.pt')
    assert not (tmp_path/'pwned').exists()


class _Scaled(nn.Module):
    def __init__(self, net, scale):
        super().__init__(); self.net, self.scale = net, scale
    def forward(self, x):
        out = self.net(x); return {**out, 'logits': out['logits'] * self.scale}


def _wrap(model, extra, meta):  # a composite predictor builder, as CFAR's would be
    return _Scaled(model, extra['scale'])


def test_composite_predictor_from_extra(tmp_path, monkeypatch):
    net, builder, kw = _dahar()
    f = _save(tmp_path/'m.pt', net, builder, kw, extra={'predictor': 'test_predict:_wrap', 'scale': torch.tensor(2.)})
    with pytest.raises(KitError, match="trusted=\\('test_predict',\\)"): load_model(f)
    lm = load_model(f, trusted=('test_predict',))
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad(): torch.testing.assert_close(lm.model(x)['logits'], 2 * net(x)['logits'])
