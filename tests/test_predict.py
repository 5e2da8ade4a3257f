"Model file (save_model / load_model), Predictor, explain and export."
import csv, json, os, re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from har_kit.core import KitError
from har_kit.model_file import LoadedModel, load_model, model_digest, register_builder, save_model

NAMES = ['hat', 'bag', 'skirt', 'boots']
PRE = dict(input_size=(64, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _dahar(seed=0):
    from har_kit.dahar import dahar_variant
    kw = dict(name='dahar', num_attributes=4, arch='resnet-tiny', weights=None)
    torch.manual_seed(seed)
    return dahar_variant(**kw).eval(), 'har_kit.dahar:dahar_variant', kw


def _campar(seed=0):
    from har_kit.campar import campar_variant
    kw = dict(name='campar_fusion', num_attributes=4, arch='resnet-tiny', weights=None)
    torch.manual_seed(seed)
    return campar_variant(**kw).eval(), 'campar_variant', kw


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
    with pytest.raises(KitError, match='builder'): _save(tmp_path/'bad.pt', net, 'har_kit.dahar.dahar_variant', kw)
    with torch.no_grad(): next(net.parameters()).view(-1)[0] = float('nan')
    with pytest.raises(KitError, match='NaN'): _save(tmp_path/'bad.pt', net, builder, kw)
    assert not (tmp_path/'bad.pt').exists() and not list(tmp_path.glob('.*tmp'))
    with pytest.raises(KitError, match='variants with a model here'): load_model(tmp_path, variant='nope')
    ck = tmp_path/'ckpt.pt'; torch.save({'model': net.state_dict()}, ck)
    with pytest.raises(KitError, match='not a har-kit model file'): load_model(ck)


def _forge(tmp_path, f, name, edit=None, **meta):  # a model file whose meta (or, with edit(blob), more) was edited and its hash recomputed, as anyone can
    blob = torch.load(f, weights_only=True)
    blob['meta'].update(meta)
    if edit: edit(blob)
    blob['sha256'] = model_digest(blob['meta'], blob['state_dict'], blob['extra'])
    torch.save(blob, tmp_path/name); return tmp_path/name


@pytest.mark.parametrize('builder, kwargs', [
    ('os:system', {'command': 'touch PWNED'}),
    ('har_kit.core:save_json', {'obj': 'x', 'path': 'PWNED'}),
    ('har_kit.runs:run_notebook', {'notebook': 'x.ipynb', 'out_dir': 'PWNED'}),
    ('save_json', {'obj': 'x', 'path': 'PWNED'}),                  # a bare name that is not a registry key
    ('cfar_predictor', {}),                                           # a predictor key used as the model builder
])
def test_a_model_file_cannot_call_a_kit_function(tmp_path, builder, kwargs):
    net, b, kw = _dahar()
    f = _save(tmp_path/'m.pt', net, b, kw)
    kwargs = {k: str(tmp_path/v) if v == 'PWNED' else v for k, v in kwargs.items()}
    evil = _forge(tmp_path, f, 'evil.pt', builder=builder, kwargs=kwargs)
    with pytest.raises(KitError, match='evil.pt: builder=.*(not a function path|not a registered model builder)'): load_model(evil)
    assert not (tmp_path/'PWNED').exists()
    with pytest.raises(KitError, match="extra\\['predictor'\\].*not a function path"):
        _save(tmp_path/'x.pt', net, b, kw, extra={'predictor': 'har_kit.core:save_json'})


def test_model_file_kwargs_and_outputs_are_checked(tmp_path):
    net, b, kw = _dahar()
    f = _save(tmp_path/'run'/'dahar'/'model.pt', net, b, kw)
    assert torch.load(f, weights_only=True)['meta']['builder'] == 'dahar_variant'   # the kit's spelling maps to its key
    with pytest.raises(KitError, match="kwargs.num_attributes='4' is not int"):
        load_model(_forge(tmp_path, f, 'k.pt', kwargs={**kw, 'weights': None, 'num_attributes': '4'}))
    with pytest.raises(KitError, match='kwargs do not fit campar_variant'):
        load_model(_forge(tmp_path, f, 'c.pt', builder='campar_variant', kwargs={'bogus': 1}))
    with pytest.raises(KitError, match='4 logits but 3 attribute names'):
        load_model(_forge(tmp_path, f, 'a.pt', attributes=NAMES[:3], thresholds=None))
    with pytest.raises(KitError, match='4 logits but 3 attribute names'):
        save_model(tmp_path/'b.pt', net, builder=b, kwargs=kw, attributes=NAMES[:3], **PRE)
    with pytest.raises(KitError, match='distinct names'):
        save_model(tmp_path/'b.pt', net, builder=b, kwargs=kw, attributes=NAMES[:3] + NAMES[:1], **PRE)
    with pytest.raises(KitError, match='three channel values'): _save(tmp_path/'b.pt', net, b, kw, mean=(0.5,))
    (tmp_path/'run'/'other').mkdir(); (tmp_path/'run'/'other'/'model.pt').write_bytes(f.read_bytes())
    with pytest.raises(KitError, match="saved as variant 'dahar', found in 'other'"): load_model(tmp_path/'run', variant='other')


@pytest.mark.parametrize('meta, match', [
    (dict(attributes=['hat'] * 4), 'distinct names'), (dict(attributes=[1, 2, 3, 4]), 'distinct names'),
    (dict(thresholds=[0.5] * 3), 'thresholds: expected 4 finite values'), (dict(thresholds='0.5'), 'thresholds'),
    (dict(thresholds=[float('nan')] * 4), 'thresholds'), (dict(input_size=[64, 32, 3]), 'input_size'),
    (dict(input_size=[-1, 32]), 'input_size'), (dict(mean='abc'), 'mean'), (dict(std=[0, 0, 0]), 'std > 0'),
    (dict(kwargs=dict(name='dahar', num_attributes=4, arch='resnet-tiny', weights=None, foo=1)), 'cannot build its network'),
    # kwargs of a far larger network than the weights: compared on the meta device, never built (no memory taken)
    (dict(kwargs=dict(name='dahar', num_attributes=400_000, arch='resnet-tiny', weights=None)), 'builds another network than the one saved'),
])
def test_a_forged_meta_is_held_to_the_save_checks_on_load(tmp_path, meta, match):
    "A file edited with its hash recomputed: what save_model refuses, load_model refuses too, naming the file."
    net, b, kw = _dahar()
    f = _save(tmp_path/'m.pt', net, b, kw, thresholds=[0.5] * 4)
    with pytest.raises(KitError, match=f'forged.pt: .*{match}'): load_model(_forge(tmp_path, f, 'forged.pt', **meta))


def test_non_finite_weights_are_refused_on_load(tmp_path):
    net, b, kw = _dahar()
    f = _save(tmp_path/'m.pt', net, b, kw)
    k = next(k for k, v in net.state_dict().items() if v.is_floating_point())
    nan = _forge(tmp_path, f, 'nan.pt', edit=lambda blob: blob['state_dict'][k].view(-1).__setitem__(0, float('nan')))
    with pytest.raises(KitError, match=f"nan.pt: model weight '{k}' holds NaN/inf"): load_model(nan)


class _Scaled(nn.Module):
    def __init__(self, net, scale):
        super().__init__(); self.net, self.scale = net, scale
    def forward(self, x):
        out = self.net(x); return {**out, 'logits': out['logits'] * self.scale}


def _wrap(model, extra, meta):  # a composite predictor builder, as CFAR's would be
    return _Scaled(model, extra['scale'])


def test_composite_predictor_from_extra(tmp_path):
    net, builder, kw = _dahar()
    with pytest.raises(KitError, match="not a function path"):
        _save(tmp_path/'m.pt', net, builder, kw, extra={'predictor': 'test_predict:_wrap', 'scale': torch.tensor(2.)})
    register_builder('test_scaled', 'predictor')(_wrap)
    f = _save(tmp_path/'m.pt', net, builder, kw, extra={'predictor': 'test_scaled', 'scale': torch.tensor(2.)})
    lm = load_model(f)
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad(): torch.testing.assert_close(lm.model(x)['logits'], 2 * net(x)['logits'])


def _freezing(model, extra, meta):  # a predictor builder with a side effect on the network it wraps
    model.requires_grad_(False); return _Scaled(model, extra['scale'])


def test_saving_with_a_predictor_leaves_the_callers_network_as_it_was(tmp_path):
    "save_model runs the composite over a copy: a predictor builder that freezes its network does not freeze the caller's."
    net, builder, kw = _dahar()
    register_builder('test_freezing', 'predictor')(_freezing)
    net.train()
    _save(tmp_path/'m.pt', net, builder, kw, extra={'predictor': 'test_freezing', 'scale': torch.tensor(2.)})
    assert net.training and all(p.requires_grad for p in net.parameters())


class _ReadsItsInit(nn.Module):
    "A user network whose construction reads a value (no meta tensor has one)."
    def __init__(self, num_attributes: int = 4):
        super().__init__()
        self.fc = nn.Linear(3, num_attributes)
        if self.fc.weight.abs().max().item() > 0: nn.init.zeros_(self.fc.bias)
    def forward(self, x): return {'logits': self.fc(x.mean((2, 3)))}


def test_a_builder_that_cannot_build_on_the_meta_device_saves_and_loads(tmp_path):
    "The rebuild check builds on the meta device where it can, for real where it cannot; load_model then builds as before."
    register_builder('test_reads_its_init')(_ReadsItsInit)
    net = _ReadsItsInit(4).eval()
    f = save_model(tmp_path/'m.pt', net, builder='test_reads_its_init', kwargs={'num_attributes': 4}, attributes=NAMES, **PRE)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad(): torch.testing.assert_close(load_model(f).model(x)['logits'], net(x)['logits'])
    with pytest.raises(KitError, match='builds another network than the one saved'):   # still checked, built for real
        save_model(tmp_path/'n.pt', net, builder='test_reads_its_init', kwargs={'num_attributes': 5}, attributes=NAMES, **PRE)
    state = torch.random.get_rng_state()   # the real build's random init draws from a generator of its own
    save_model(tmp_path/'o.pt', net, builder='test_reads_its_init', kwargs={'num_attributes': 4}, attributes=NAMES, **PRE)
    assert torch.equal(torch.random.get_rng_state(), state), 'save_model moved the global torch generator'


def test_a_rerun_notebook_cell_registers_its_builder_again(monkeypatch):
    "The cell `@register_builder('my_net') def my_net(...)` run twice in one kernel replaces its entry (load_model's advice is "
    "to run that cell); another function under the name is still refused."
    from har_kit import model_file
    monkeypatch.setattr(model_file, '_REGISTRY', {})
    cell = "@register_builder('my_net')\ndef my_net(num_attributes: int = 3): return num_attributes\n"
    ns = {'__name__': '__main__', 'register_builder': register_builder}   # a notebook's namespace
    exec(cell, ns)
    first = ns['my_net']
    exec(cell, ns)   # the same cell again
    assert ns['my_net'] is not first and model_file._REGISTRY['my_net'] == ('model', ns['my_net'])
    def my_other_net(num_attributes: int = 3): return num_attributes
    with pytest.raises(KitError, match=r"'my_net' is already a builder \(__main__.my_net\); choose another name"):
        register_builder('my_net')(my_other_net)


# ---- Predictor, CLI, explain, export ----
from PIL import Image

from har_kit.explain import explain as explain_images, model_maps
from har_kit.export import cli as export_cli, export_model
from har_kit.formats import load_rgb as read_image   # what `Predictor` decodes images with
from har_kit.predict import Predictor, cli, resolve_thresholds, write_predictions
from har_kit.formats import collect_images

from conftest import needs_module, shared_path, write_cfar_model

SAMPLE = shared_path('data/pa100k-sample')   # conftest's helper: honours HAR_KIT_PA100K_SAMPLE


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path/'imgs'; (d/'sub').mkdir(parents=True)
    for name in ('a.png', 'b.jpg', 'sub/c.png'):
        Image.fromarray(rng.integers(0, 255, (50, 30, 3), dtype=np.uint8)).save(d/name)
    return d


@pytest.fixture
def model_file(tmp_path):
    net, builder, kw = _dahar()
    return _save(tmp_path/'run'/'dahar'/'model.pt', net, builder, kw, thresholds=[0.5, 0.3, 0.7, 0.5])


def test_predictor_batches_and_orders(images, model_file):
    p = Predictor(model_file, threshold='val', batch_size=2)
    recs = p.predict([images], progress=False)
    assert [Path(r['image']).name for r in recs] == ['a.png', 'b.jpg', 'c.png']
    probs = p.probabilities([r['image'] for r in recs])
    p1 = Predictor(model_file, threshold='val', batch_size=1).probabilities([r['image'] for r in recs])
    np.testing.assert_allclose(probs, p1, atol=1e-6)                  # batching does not change a probability
    for r, pr in zip(recs, probs):
        assert r['predicted'] == [n for n, q, t in sorted(zip(NAMES, pr, [0.5, 0.3, 0.7, 0.5]), key=lambda z: -z[1]) if q >= t]



def test_a_predictor_over_a_callers_network_leaves_it_in_the_mode_it_came_in(tmp_path, images, model_file):
    "A user scoring (and explaining) with the network they are training: it scores in eval mode, then trains on as it was."
    files = [images/'a.png', images/'b.jpg']
    lm = load_model(model_file); lm.model.train()
    p = Predictor(lm, device='cpu')
    assert lm.model.training
    np.testing.assert_array_equal(p.probabilities(files), Predictor(model_file, device='cpu').probabilities(files))   # eval mode
    assert all(m.training for m in lm.model.modules())
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    explain_images(p, files[:1], tmp_path/'x', progress=False)
    assert all(m.training for m in lm.model.modules())
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())   # drawn in eval mode: no BatchNorm statistics moved


def test_loading_and_scoring_files_leave_the_callers_torch_draws_as_they_were(images, model_file):
    "A library call that only reads a model and scores images draws nothing from the global torch generator."
    state = torch.random.get_rng_state()
    lm = load_model(model_file)
    assert torch.equal(torch.random.get_rng_state(), state), 'load_model moved the global torch generator'
    p = Predictor(lm, device='cpu')
    p.probabilities([images/'a.png', images/'b.jpg']); p.predict([images], progress=False)
    assert torch.equal(torch.random.get_rng_state(), state), 'scoring image files moved the global torch generator'

def test_threshold_specs(tmp_path, model_file):
    lm = load_model(model_file)
    (tmp_path/'t.csv').write_text('attribute,threshold\nhat,0.1\nbag,0.2\nskirt,0.3\nboots,0.4\n')
    assert resolve_thresholds(tmp_path/'t.csv', lm)[0].tolist() == [.1, .2, .3, .4]
    (tmp_path/'excel.csv').write_text('\ufeffattribute, threshold\nhat, 0.1\nbag,0.2\nskirt,0.3\nboots,0.4\n', encoding='utf-8')
    assert resolve_thresholds(tmp_path/'excel.csv', lm)[0].tolist() == [.1, .2, .3, .4]   # Excel's BOM, spaces after commas
    (tmp_path/'nohead.csv').write_text('hat,0.3\n')   # one line, no header: not read as a header naming nothing
    with pytest.raises(KitError, match="nohead.csv: .*first line must be the header attribute,threshold, found 'hat,0.3'"):
        resolve_thresholds(tmp_path/'nohead.csv', lm)
    (tmp_path/'bad.json').write_text('{"hat": 0.1, "bag": 0.2, "skirt": 0.3, "boots": 0.4, "cap": 0.5}')
    with pytest.raises(KitError, match="bad.json: the model has no attribute 'cap'"): resolve_thresholds(tmp_path/'bad.json', lm)
    (tmp_path/'junk.json').write_text('{not json')
    with pytest.raises(KitError, match='junk.json'): resolve_thresholds(tmp_path/'junk.json', lm)
    net, builder, kw = _dahar()
    no_val = load_model(_save(tmp_path/'nv.pt', net, builder, kw))
    with pytest.raises(KitError, match="nv.pt.*no validation thresholds"): resolve_thresholds('val', no_val)
    import pandas as pd   # a pandas Series (df.set_index('attribute')['threshold']) is read by name, never by position
    assert resolve_thresholds(pd.Series({'boots': 0.4, 'hat': 0.1, 'bag': 0.2, 'skirt': 0.3}), lm)[0].tolist() == [.1, .2, .3, .4]
    with pytest.raises(KitError, match="threshold <object .*: not a number, 'val', a file"): resolve_thresholds(object(), lm)


def test_bad_images_named_before_any_work(tmp_path, images, model_file):
    (images/'broken.jpg').write_bytes(b'\xff\xd8 truncated')
    with pytest.raises(KitError, match='broken.jpg'): Predictor(model_file).predict([images], progress=False)
    with pytest.raises(KitError, match='ndarray given where image files'):   # an array has no file name to name its figure after
        explain_images(Predictor(model_file), [np.zeros((8, 4, 3), np.uint8)], tmp_path/'x', progress=False)


def test_explain_takes_any_path_like(tmp_path, images, model_file):
    "os.DirEntry, PurePath and an array of file names are files, as collect_images reads them."
    p, files = Predictor(model_file), sorted((e for e in os.scandir(images) if e.name.endswith('.png')), key=lambda e: e.name)[:1]
    out = explain_images(p, files, tmp_path/'a', progress=False)
    assert len(out) == 1 and out[0].exists()
    assert len(explain_images(p, np.array([files[0].path]), tmp_path/'b', progress=False)) == 1
    with pytest.raises(KitError, match='nothing.png: no such'): collect_images([tmp_path/'nothing.png'])
    with pytest.raises(KitError, match='matches no image'): collect_images([str(tmp_path/'*.tif')])



def test_a_failing_explain_leaves_no_figure_open_and_names_an_out_dir_that_is_a_file(tmp_path, images, model_file, monkeypatch):
    "A save that failed (Ctrl-C, a full disk) left its figure open and current in the caller's pyplot; a file as out_dir gave a raw FileExistsError."
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    p, mine = Predictor(model_file), plt.figure()
    try:
        (tmp_path/'a-file').write_text('x')
        with pytest.raises(KitError, match=r'out_dir .*a-file is a file, not a folder'):
            explain_images(p, [images/'a.png'], tmp_path/'a-file', progress=False)
        def interrupted(self, *a, **kw): raise KeyboardInterrupt
        monkeypatch.setattr(Figure, 'savefig', interrupted)
        with pytest.raises(KeyboardInterrupt): explain_images(p, [images/'a.png'], tmp_path/'x', progress=False)
        assert plt.get_fignums() == [mine.number] and plt.gcf() is mine
        assert not (tmp_path/'x').exists() or list((tmp_path/'x').iterdir()) == []
    finally: plt.close('all')


def test_a_figure_that_fails_while_drawn_is_closed(monkeypatch):
    "plot_explanation called by itself (a notebook, a caller's report): a failure part way through drawing left the half-drawn figure open and current."
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from har_kit.explain import plot_explanation
    mine = plt.figure()
    try:
        def interrupted(self, *a, **kw): raise KeyboardInterrupt
        monkeypatch.setattr(Figure, 'tight_layout', interrupted)
        maps = dict(global_maps={'mask': torch.rand(1, 4, 2)}, attribute_maps=torch.rand(2, 4, 2), kind='attention')
        with pytest.raises(KeyboardInterrupt):
            plot_explanation(np.zeros((8, 4, 3), np.uint8), maps, np.array([.9, .1]), np.array([True, False]), ['hat', 'bag'])
        assert plt.get_fignums() == [mine.number] and plt.gcf() is mine
    finally: plt.close('all')

def test_sixteen_bit_png_is_not_white(tmp_path):
    a = (np.linspace(0, 65535, 600).reshape(20, 30)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path/'g16.png')
    g = read_image(tmp_path/'g16.png')
    assert g.dtype == np.uint8 and g.shape == (20, 30, 3) and g.min() == 0 and g.max() == 255 and 100 < g.mean() < 155


def test_the_written_probabilities_give_the_written_predictions(tmp_path, images):
    "Thresholds at an image's own probabilities (every attribute on its threshold): the files' numbers, read back, clear them all."
    net, b, kw = _dahar()
    p = Predictor(_save(tmp_path/'m0.pt', net, b, kw), threshold=0.5).probabilities([images/'a.png'])[0]
    f = _save(tmp_path/'m.pt', net, b, kw, thresholds=[float(v) for v in p])
    out = tmp_path/'out'
    assert cli([str(f), str(images/'a.png'), '--threshold', 'val', '--out', str(out), '--quiet']) == 0
    row = next(csv.DictReader((out/'predictions.csv').open()))
    th = json.loads((out/'predictions.json').read_text())['thresholds']
    assert set(row['predicted'].split(';')) == set(NAMES) == {a for a in NAMES if float(row[a]) >= th[a]}
    rec = json.loads((out/'predictions.json').read_text())['images'][0]
    assert all(rec['probabilities'][a] >= th[a] for a in NAMES)


def test_cli_writes_csv_json_and_explain(tmp_path, images, model_file, capsys):
    out = tmp_path/'out'
    assert cli([str(model_file.parent.parent), str(images/'*.png'), '--threshold', '0.4', '--out', str(out), '--explain']) == 0
    printed = capsys.readouterr().out
    assert 'a.png' in printed and 'threshold 0.4 for every attribute' in printed
    rows = (out/'predictions.csv').read_text().splitlines()
    assert rows[0] == 'image,predicted,hat,bag,skirt,boots' and len(rows) == 2
    js = json.loads((out/'predictions.json').read_text())
    assert js['thresholds'] == {n: 0.4 for n in NAMES} and len(js['images']) == 1
    assert [p.name for p in (out/'explain').iterdir()] == ['0000_a.png']
    assert cli([str(model_file), str(tmp_path/'nope.jpg'), '--out', str(tmp_path/'o2')]) == 2
    assert 'nope.jpg' in capsys.readouterr().err and not (tmp_path/'o2').exists()



def test_cli_output_inside_the_image_folder_is_not_scored_again(tmp_path, images, model_file, monkeypatch, capsys):
    """The default --out ($HAR_KIT_OUTPUTS/predictions) inside the image folder: a second run scores the same images, not
    the first run's figures."""
    monkeypatch.chdir(images)
    monkeypatch.setenv('HAR_KIT_OUTPUTS', str(images/'outputs'))
    scored, out = [], images/'outputs'/'predictions'
    for _ in range(2):
        assert cli([str(model_file), '.', '--explain', '--force', '--quiet']) == 0
        rows = (out/'predictions.csv').read_text().splitlines()[1:]
        scored.append([r.split(',')[0] for r in rows])
        assert len(list((out/'explain').iterdir())) == len(rows)   # a figure per scored image, no more
    assert scored[0] == scored[1] and len(scored[0]) == 3 and not [p for p in scored[0] if 'predictions' in p], scored
    capsys.readouterr()

def test_run_with_two_variants_predicts_with_its_main_method(tmp_path, images, capsys):
    "A run directory with baseline and dahar: the CLI uses dahar and says so; --variant baseline picks the other."
    run = tmp_path/'run'
    for v in ('baseline', 'dahar'): _save(run/v/'model.pt', *_dahar(seed=len(v)))
    assert cli([str(run), str(images/'a.png'), '--out', str(tmp_path/'o1'), '--quiet']) == 0
    err = capsys.readouterr().err
    assert "note: " in err and "using 'dahar', the run's main method; --variant NAME" in err, err
    assert json.loads((tmp_path/'o1'/'predictions.json').read_text())['model'] == str(run/'dahar'/'model.pt')
    assert cli([str(run), str(images/'a.png'), '--variant', 'baseline', '--out', str(tmp_path/'o2'), '--quiet']) == 0
    assert 'note' not in capsys.readouterr().err
    assert json.loads((tmp_path/'o2'/'predictions.json').read_text())['model'] == str(run/'baseline'/'model.pt')
    _save(run/'fusion'/'model.pt', *_dahar()); (run/'dahar'/'model.pt').unlink(); _save(run/'self_mask'/'model.pt', *_dahar())
    assert cli([str(run), str(images/'a.png'), '--out', str(tmp_path/'o3')]) == 2
    err = capsys.readouterr().err
    assert 'baseline, fusion, self_mask' in err and '--variant NAME' in err and 'variant=NAME' in err, err


def test_a_cfar_run_over_campar_without_fusion_predicts_with_its_cfar(tmp_path):
    "phase1_variant='campar': the run holds campar, campar_cfar and campar_fc2; its main method is the CFAR, not phase 1."
    from har_kit.predict import default_variant
    run = tmp_path/'cfar_run'
    for v in ('campar', 'campar_cfar', 'campar_fc2'): _save(run/v/'model.pt', *_dahar())
    assert default_variant(run)[0] == 'campar_cfar'


def test_export_of_a_run_with_two_variants_takes_its_main_method(tmp_path, capsys):
    "`har-kit export RUN` picks the run's main method as predict does, and says so."
    run = tmp_path/'run'
    for v in ('baseline', 'dahar'): _save(run/v/'model.pt', *_dahar(seed=len(v)))
    assert export_cli([str(run), '--format', 'torchscript']) == 0
    out = capsys.readouterr()
    assert "using 'dahar', the run's main method" in out.err and (run/'dahar'/'model.ts.pt').exists() and not (run/'baseline'/'model.ts.pt').exists()


def test_thresholds_file_naming_some_attributes(tmp_path, images, model_file, capsys):
    "The attributes a file does not name keep 0.5, with a notice naming them; a name the model lacks is an error."
    (tmp_path/'t.json').write_text('{"hat": 0.2, "skirt": 0.9}')
    assert cli([str(model_file), str(images/'a.png'), '--threshold', str(tmp_path/'t.json'), '--out', str(tmp_path/'o')]) == 0
    out, err = capsys.readouterr()
    assert f"note: {tmp_path/'t.json'} names no threshold for 2 attribute(s), which keep 0.5: bag, boots" in err, err
    assert '0.5 for the 2 attribute(s) it does not name: bag, boots: wrote' in out, out
    assert json.loads((tmp_path/'o'/'predictions.json').read_text())['thresholds'] == {'hat': .2, 'bag': .5, 'skirt': .9, 'boots': .5}
    (tmp_path/'t.json').write_text('{"hat": 0.2, "Hat": 0.9}')
    assert cli([str(model_file), str(images/'a.png'), '--threshold', str(tmp_path/'t.json'), '--out', str(tmp_path/'o2')]) == 2
    assert "t.json: the model has no attribute 'Hat'; its attributes: hat, bag, skirt, boots" in capsys.readouterr().err

def test_predict_out_and_device_are_checked_before_any_image_is_scored(tmp_path, images, model_file, capsys, monkeypatch, read_only):
    scored = []
    monkeypatch.setattr(Predictor, 'probabilities', lambda self, *a, **k: scored.append(1))
    (tmp_path/'file').write_text('x')
    (tmp_path/'done').mkdir(); (tmp_path/'done'/'predictions.csv').write_text('old')
    ro = tmp_path/'ro'; ro.mkdir(); read_only(ro)   # as root too (chmod does not bite there)
    cases = [(['--out', str(tmp_path/'file')], 'is a file'),
             (['--out', str(tmp_path/'done')], 'exists: pass --force'),
             (['--device', 'bogus', '--out', str(tmp_path/'o')], "device='bogus' is not a device name"),
             (['--device', '', '--out', str(tmp_path/'o')], "device='' is not a device name"),
             (['--top', '-1', '--out', str(tmp_path/'o')], '--top -1: must be at least 1'),
             (['--max-attributes', '0', '--out', str(tmp_path/'o')], '--max-attributes 0: must be at least 1')]
    cases.append((['--out', str(ro/'sub')], 'is not a writable folder'))
    for args, message in cases:
        assert cli([str(model_file), str(images), '--quiet', *args]) == 2
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err, (args, err)
    assert scored == [] and (tmp_path/'done'/'predictions.csv').read_text() == 'old'
    # a misspelt model beside an earlier output: the model is named first (--force would not have helped)
    assert cli([str(tmp_path/'no-such-run'), str(images), '--quiet', '--out', str(tmp_path/'done')]) == 2
    err = capsys.readouterr().err
    assert 'no-such-run' in err and 'exists: pass --force' not in err, err


@pytest.mark.parametrize('make, kind, panels', [
    (_dahar, 'attention', ['self-mask (stage 1)', 'self-mask (stage 2)', 'self-mask (stage 3)', 'self-mask (stage 4)', 'mask branch']),
    (_campar, 'CAM', [])])
def test_model_maps(make, kind, panels):
    net = make()[0]
    m = model_maps(net, torch.randn(2, 3, 64, 32))
    assert m['kind'] == kind and m['attribute_maps'].shape[:2] == (2, 4) and list(m['global_maps']) == panels
    assert float(m['attribute_maps'].min()) >= 0


def test_model_maps_of_a_plain_classifier():
    from har_kit.campar import campar_variant
    m = model_maps(campar_variant('baseline', 4, 'resnet-tiny').eval(), torch.randn(1, 3, 64, 32))
    assert m['kind'] == 'CAM' and m['attribute_maps'].shape[:2] == (1, 4)


@pytest.mark.parametrize('make', [_dahar, _campar])
def test_export_matches_pytorch(tmp_path, make):
    "ONNX (onnxruntime) and TorchScript against PyTorch on one batch: max |diff| < 1e-4, named input/output."
    ort = needs_module('onnxruntime')
    net, builder, kw = make()
    f = _save(tmp_path/'m.pt', net, builder, kw)
    x = torch.randn(5, 3, 64, 32)
    with torch.no_grad(): ref = torch.sigmoid(net(x)['logits']).numpy()
    rep = export_model(f, tmp_path/'m.onnx', 'onnx')
    sess = ort.InferenceSession(str(rep['path']), providers=['CPUExecutionProvider'])
    assert [i.name for i in sess.get_inputs()] == ['images'] and [o.name for o in sess.get_outputs()] == ['probabilities']
    assert np.abs(sess.run(None, {'images': x.numpy()})[0] - ref).max() < 1e-4
    assert json.loads(rep['sidecar'].read_text())['attributes'] == NAMES
    ts = export_model(f, tmp_path/'m.ts.pt', 'torchscript')
    assert np.abs(torch.jit.load(str(ts['path']))(x).detach().numpy() - ref).max() < 1e-4



def test_a_torchscript_export_names_its_archive_folder_archive_not_after_its_temporary_file(tmp_path, model_file):
    "torch.jit.save named the archive's top folder after the random temporary file (.m.ts.pt.<random>.tmp): two exports of one model differed in bytes."
    import zipfile
    for out in ('a.ts.pt', 'b.ts.pt'):   # (two fresh processes now write the same bytes; within one, torch's trace counter renames classes)
        export_model(model_file, tmp_path/out, 'torchscript')
        with zipfile.ZipFile(tmp_path/out) as z: names = z.namelist()
        assert {n.split('/')[0] for n in names} == {'archive'} and not any('.tmp' in n or out in n for n in names), names[:3]

def test_non_finite_probabilities_write_nothing(tmp_path, images, model_file, capsys, monkeypatch):
    "NaN probabilities are refused naming the model: no predictions.csv without its JSON, no earlier outputs removed."
    import re
    lm = load_model(model_file)
    with torch.no_grad(): next(lm.model.parameters()).view(-1)[0] = float('nan')   # a diverged network, in memory
    p = Predictor(lm)
    with pytest.raises(KitError, match=re.escape(f'{model_file}: non-finite probabilities')): p.predict([images], progress=False)
    recs = Predictor(model_file).predict([images], progress=False)
    recs[1]['probabilities']['bag'] = float('nan')
    with pytest.raises(KitError, match=re.escape(f'{model_file}: non-finite probabilities (NaN/inf) for 1 image(s)')):
        write_predictions(recs, p, tmp_path/'w')
    assert not (tmp_path/'w').exists()
    out = tmp_path/'out'
    assert cli([str(model_file), str(images), '--out', str(out), '--quiet']) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    monkeypatch.setattr(Predictor, 'probabilities', lambda self, paths, *a: np.full((len(paths), 4), np.nan, np.float32))
    for args in (['--out', str(tmp_path/'o')], ['--out', str(out), '--force']):
        assert cli([str(model_file), str(images), '--quiet', *args]) == 2
        err = capsys.readouterr().err
        assert f'{model_file}: non-finite probabilities' in err and 'Traceback' not in err, err
        assert not (tmp_path/'o').exists() and {f.name: f.read_bytes() for f in out.iterdir()} == before
    monkeypatch.undo()
    assert cli([str(model_file), str(images), '--out', str(tmp_path/'o'), '--quiet']) == 0   # a rerun is not told 'exists'


def test_export_failing_on_its_sidecar_writes_neither_file(tmp_path, model_file):
    "A sidecar that cannot be written (NaN thresholds) is refused before the export: no model.ts.pt without its .json."
    import dataclasses
    bad = dataclasses.replace(load_model(model_file), thresholds=np.full(4, np.nan))
    out = tmp_path/'m.ts.pt'
    with pytest.raises(KitError, match=r'thresholds\[0\] is nan.*nothing written'): export_model(bad, out, 'torchscript')
    assert not out.exists() and not out.with_name('m.ts.pt.json').exists() and not list(tmp_path.glob('.*tmp'))
    assert export_model(load_model(model_file), out, 'torchscript')['sidecar'].exists()   # a rerun is not told 'exists'


def test_export_cli_errors(tmp_path, model_file, capsys):
    assert export_cli([str(tmp_path/'none.pt')]) == 2 and 'none.pt' in capsys.readouterr().err


@pytest.mark.shared('data/pa100k-sample/annotation.mat')
def test_real_sample_images_predict(tmp_path):
    "The real PA100K sample's images go through collect/check/read/predict (any model of its attribute count)."
    from har_kit.data import read_pa100k
    data = read_pa100k(SAMPLE)
    from har_kit.campar import campar_variant
    kw = dict(name='campar', num_attributes=len(data.attributes), arch='resnet-tiny', weights=None)
    f = save_model(tmp_path/'m.pt', campar_variant(**kw).eval(), builder='har_kit.campar:campar_variant', kwargs=kw,
                   attributes=data.attributes, **PRE)
    paths = [s.image for s in data.split('test')[:6]]
    recs = Predictor(f).predict(paths, progress=False)
    assert len(recs) == len(paths) and set(recs[0]['probabilities']) == set(data.attributes)


class _LogitsOnly(nn.Module):  # a composite that returns only its own logits (as CFAR's predictor does)
    def __init__(self, net):
        super().__init__(); self.phase1 = net
    def forward(self, x): return {'logits': self.phase1(x)['logits'] + 1}


def test_model_maps_of_a_composite_use_its_network():
    net = _campar()[0]
    x = torch.randn(1, 3, 64, 32)
    m = model_maps(_LogitsOnly(net), x)
    assert m['kind'] == 'CAM' and torch.equal(m['logits'], net(x)['logits'] + 1)
    with pytest.raises(KitError, match='no maps'): model_maps(_Plain(), x)


class _Plain(nn.Module):
    def forward(self, x): return {'logits': x.mean((2, 3))}


def test_export_never_replaces_its_model_or_an_existing_file(tmp_path, model_file, capsys):
    "`har-kit export --out` onto the model file is refused even with --force; onto an existing file only with --force."
    before = model_file.read_bytes()
    assert export_cli([str(model_file), '--format', 'torchscript', '--out', str(model_file), '--force']) == 2
    assert 'is the model file being exported' in capsys.readouterr().err and model_file.read_bytes() == before
    other = tmp_path/'other.pt'; other.write_bytes(b'keep me')
    assert export_cli([str(model_file), '--format', 'torchscript', '--out', str(other)]) == 2
    assert 'exists: pass --force' in capsys.readouterr().err and other.read_bytes() == b'keep me'
    assert export_cli([str(model_file), '--format', 'torchscript', '--out', str(other), '--force']) == 0
    assert other.read_bytes() != b'keep me'


def test_readme_python_snippet_trains_loads_and_predicts(tmp_path, monkeypatch):
    "README's Python route, run as written (in a fresh folder): it ends with a loaded model, predictions and an export."
    needs_module('onnx')
    import re
    readme = (Path(__file__).resolve().parents[1]/'README.md').read_text()
    code = [b for b in re.findall(r'```python\n(.*?)```', readme, re.S) if 'train_variant(' in b]
    assert len(code) == 1, 'README has one Python snippet that trains'
    monkeypatch.chdir(tmp_path)
    env = {}
    exec(compile(code[0], 'README.md', 'exec'), env)
    assert env['lm'].path.resolve() == tmp_path/'outputs'/'python'/'dahar'/'model.pt' and len(env['records']) == 4
    assert set(env['records'][0]['probabilities']) == set(env['lm'].attributes)
    assert (tmp_path/'outputs'/'python'/'dahar.onnx').exists()
    exec(compile(code[0], 'README.md', 'exec'), {})   # and again, as a reader re-running the cell does: nothing refuses


# ---- in-memory arrays, threshold lists, --force, threads, a variant's own folder ----
def test_arrays_are_read_like_files_or_refused_naming_them(tmp_path, model_file):
    "Greyscale uint8 arrays are replicated as greyscale files are; floats and RGBA are refused, never cast."
    p = Predictor(model_file)
    rgb = np.random.default_rng(1).integers(0, 255, (50, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path/'grey.png')
    from_file = p.probabilities([tmp_path/'grey.png'])
    np.testing.assert_allclose(p.probabilities([rgb[..., 0], rgb[..., :1]]), from_file[[0, 0]], atol=1e-6)
    cases = [(rgb / 255, 'dtype float64): expected uint8 pixels 0..255', '(x * 255).round().astype(np.uint8)'),
             (np.dstack([rgb, rgb[..., :1]]), 'images[1] (shape (50, 30, 4)', "flatten it onto the background you mean"),
             (rgb.astype(np.uint16) * 256, 'dtype uint16', '(x >> 8).astype(np.uint8)')]
    for bad, where, what in cases:
        for call in (p.probabilities, lambda imgs: p.predict(imgs, progress=False)):
            with pytest.raises(KitError) as e: call([rgb, bad])
            assert where in str(e.value) and what in str(e.value) and 'images[1]' in str(e.value), str(e.value)


@pytest.mark.parametrize('bad', [[-1, .5, .5, .5], [.5, .5, 2, .5], np.array([.5, .5, .5, 1.01]), torch.tensor([.5, -.1, .5, .5])])
def test_per_attribute_threshold_lists_are_range_checked(model_file, bad):
    with pytest.raises(KitError, match=r'must lie in \[0, 1\]'): Predictor(model_file, threshold=bad)
    with pytest.raises(KitError, match='4 finite numbers'): Predictor(model_file, threshold=[.5, .5, float('inf'), .5])
    assert Predictor(model_file, threshold=[0, 1, .5, .5]).thresholds.tolist() == [0, 1, .5, .5]


def test_force_leaves_exactly_this_runs_outputs(tmp_path, images, model_file, capsys):
    "--force removes the earlier run's figures (and explain/ itself without --explain), never the user's files."
    out = tmp_path/'out'
    assert cli([str(model_file), str(images), '--out', str(out), '--explain', '--quiet']) == 0
    assert sorted(f.name for f in (out/'explain').iterdir()) == ['0000_a.png', '0001_b.png', '0002_c.png']
    assert cli([str(model_file), str(images/'b.jpg'), '--out', str(out), '--explain', '--quiet']) == 2   # no --force
    assert 'exists: pass --force' in capsys.readouterr().err
    (out/'notes.txt').write_text('mine'); (out/'explain'/'mine.png').write_text('mine')
    assert cli([str(model_file), str(images/'b.jpg'), '--out', str(out), '--explain', '--quiet', '--force']) == 0
    assert sorted(f.name for f in (out/'explain').iterdir()) == ['0000_b.png', 'mine.png']
    assert cli([str(model_file), str(images/'b.jpg'), '--out', str(out), '--quiet', '--force']) == 0
    assert sorted(str(f.relative_to(out)) for f in out.rglob('*')) == ['explain', 'explain/mine.png', 'notes.txt',
                                                                       'predictions.csv', 'predictions.json']
    (out/'explain'/'mine.png').unlink()
    assert cli([str(model_file), str(images/'b.jpg'), '--out', str(out), '--quiet', '--explain', '--force']) == 0
    assert cli([str(model_file), str(images/'b.jpg'), '--out', str(out), '--quiet', '--force']) == 0
    assert not (out/'explain').exists()                                       # an emptied explain/ goes too
    (out/'predictions.csv').unlink(); (out/'predictions.json').unlink(); (out/'explain').mkdir(); (out/'explain'/'0000_x.png').touch()
    assert cli([str(model_file), str(images/'b.jpg'), '--out', str(out), '--quiet']) == 2   # figures alone are checked too
    assert 'figure(s) of an earlier run' in capsys.readouterr().err


def test_predict_fixes_its_threads(tmp_path, images, model_file, monkeypatch):
    "The CLI scores with --threads / $HAR_KIT_THREADS / 1 threads and records it; the caller's count is restored."
    seen = []
    real = Predictor.probabilities
    monkeypatch.setattr(Predictor, 'probabilities', lambda self, *a, **k: seen.append(torch.get_num_threads()) or real(self, *a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.delenv('HAR_KIT_THREADS', raising=False)
        assert cli([str(model_file), str(images), '--out', str(tmp_path/'o1'), '--quiet']) == 0
        assert seen == [1] and json.loads((tmp_path/'o1'/'predictions.json').read_text())['threads'] == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setenv('HAR_KIT_THREADS', '2')
        assert cli([str(model_file), str(images), '--out', str(tmp_path/'o2'), '--quiet']) == 0
        assert cli([str(model_file), str(images), '--out', str(tmp_path/'o3'), '--quiet', '--threads', '1']) == 0
        assert seen == [1, 2, 1] and json.loads((tmp_path/'o3'/'predictions.json').read_text())['threads'] == 1
        p = Predictor(model_file)                                    # Python: the caller's count unless threads=
        p.probabilities([images/'a.png']); assert p.scored_threads == 2
        p = Predictor(model_file, threads=1); p.probabilities([images/'a.png'])
        assert p.scored_threads == 1 and torch.get_num_threads() == 2
        with pytest.raises(KitError, match='threads'): Predictor(model_file, threads=0)
    finally: torch.set_num_threads(before)


def test_variant_of_a_variant_folder_says_so(tmp_path, images, model_file, capsys):
    "A variant's own folder with --variant: the message says what the folder is and what to pass."
    variant_dir = str(model_file.parent)
    for run, args in ((export_cli, [variant_dir]), (cli, [variant_dir, str(images), '--out', str(tmp_path/'o')])):
        assert run([*args, '--variant', 'baseline']) == 2
        err = capsys.readouterr().err
        assert "is itself a variant's folder (it holds model.pt)" in err and 'drop --variant' in err and 'none' not in err, err


def test_export_tol_and_folder_out_are_checked_first(tmp_path, model_file, capsys, monkeypatch):
    "--tol must be finite and >= 0 before any export; a folder --out is answered with the format's own file name."
    import har_kit.export as ex
    exported = []
    monkeypatch.setattr(ex, '_write_torchscript', lambda *a: exported.append(1))
    for tol in ('-1', 'nan', 'inf'):
        assert export_cli([str(model_file), '--format', 'torchscript', '--tol', tol, '--out', str(tmp_path/'m.pt')]) == 2
        assert '--tol): the largest allowed |exported - PyTorch| must be a finite number >= 0' in capsys.readouterr().err
    assert exported == [] and not (tmp_path/'m.pt').exists()
    for fmt, name in (('torchscript', 'model.ts.pt'), ('onnx', 'model.onnx')):
        assert export_cli([str(model_file), '--format', fmt, '--out', str(tmp_path)]) == 2
        assert f'is a folder: name a file inside it, e.g. {tmp_path/name}' in capsys.readouterr().err


def test_previous_outputs_know_figures_past_the_ten_thousandth_image(tmp_path):
    "explain names figures {i:04d}_...: from image 10,000 on the number has five digits, still the kit's own file."
    from har_kit.predict import EXPLAIN_DIR, previous_outputs
    ex = tmp_path/EXPLAIN_DIR; ex.mkdir()
    for n in ('0001_a.png', '12345_b.png', 'notes.png'): (ex/n).write_bytes(b'')
    assert sorted(p.name for p in previous_outputs(tmp_path)) == ['0001_a.png', '12345_b.png']


def test_a_model_trained_on_a_synthetic_set_says_so(tmp_path, images, model_file, capsys):
    "Its run read no data_root: predict notes that its decisions on real photographs say nothing; a real-data run's model is quiet."
    from har_kit.core import save_json
    run = model_file.parent.parent
    save_json({'epochs': 2}, run/'params.json'); save_json({'defaults': {'dataset': 'rap'}}, run/'env.json')
    Predictor(model_file)
    assert 'was trained on the synthetic rap set: its decisions on real photographs say nothing' in capsys.readouterr().err
    save_json({'data_root': '/data/RAP', 'dataset': 'rap'}, run/'params.json')
    Predictor(model_file)
    assert 'synthetic' not in capsys.readouterr().err


def test_export_of_a_model_trained_on_a_synthetic_set_says_so(tmp_path, model_file, capsys):
    "`har-kit export` notes it on the terminal as predict does, and the sidecar records it also for a file saved without the record (its run says it)."
    from har_kit.core import save_json
    run = model_file.parent.parent
    save_json({'epochs': 2}, run/'params.json'); save_json({'defaults': {'dataset': 'rap'}}, run/'env.json')
    assert export_cli([str(model_file), '--format', 'torchscript', '--out', str(tmp_path/'a.ts.pt')]) == 0
    assert "model.pt was trained on the synthetic rap set: the exported file's decisions on real photographs say nothing" in capsys.readouterr().err
    assert json.loads((tmp_path/'a.ts.pt.json').read_text())['synthetic'] == {'kind': 'rap'}
    save_json({'data_root': '/data/RAP', 'dataset': 'rap'}, run/'params.json')
    assert export_cli([str(model_file), '--format', 'torchscript', '--out', str(tmp_path/'b.ts.pt')]) == 0
    assert 'synthetic' not in capsys.readouterr().err and json.loads((tmp_path/'b.ts.pt.json').read_text())['synthetic'] is None


def test_a_model_file_that_records_a_synthetic_set_says_so_anywhere(tmp_path, capsys):
    "A model trained from Python (no run folder beside it) records its synthetic set in the file (`save_model(synthetic=)`, "
    "which train_variant fills from the recipe's data): predict notes it wherever the file goes."
    net, builder, kw = _dahar()
    f = _save(tmp_path/'mine.pt', net, builder, kw, synthetic={'kind': 'pa100k', 'n': 240})
    Predictor(f)
    assert 'mine.pt was trained on the synthetic pa100k set' in capsys.readouterr().err


def test_in_memory_images_are_read_as_a_file_of_their_kind_would_be(tmp_path, model_file):
    "A PIL image of any mode is converted as its file would be; a (3, H, W) tensor is refused, not read as three grey images."
    from PIL import Image
    p = Predictor(model_file, device='cpu')
    rgb = np.random.default_rng(1).integers(0, 255, (48, 24, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(32); pal.save(tmp_path/'pal.png')   # palette indices are not grey levels
    np.testing.assert_allclose(p.probabilities(pal, progress=False), p.probabilities([tmp_path/'pal.png'], progress=False), atol=1e-6)
    ycc = Image.fromarray(rgb).convert('YCbCr')   # its planes are not R, G and B
    np.testing.assert_allclose(p.probabilities(ycc, progress=False), p.probabilities(np.asarray(ycc.convert('RGB')), progress=False), atol=1e-6)
    for chw in (torch.from_numpy(rgb).permute(2, 0, 1), rgb.transpose(2, 0, 1)):
        with pytest.raises(KitError, match=r'channels first\? pass \(H, W, 3\)'): p.probabilities(chw, progress=False)


def test_booleans_and_strings_where_numbers_and_lists_belong_are_refused(model_file):
    lm = load_model(model_file)
    for t in (True, np.True_):
        with pytest.raises(KitError, match='a boolean is not a threshold'): Predictor(lm, threshold=t)
    with pytest.raises(KitError, match=r"attributes='hat': pass a list of names, e\.g\. \['hat'\]"): Predictor(model_file, attributes='hat')
    assert Predictor(lm, batch_size=np.int64(8)).batch_size == 8


def _snapshot(folder): return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob('*')) if p.is_file()}


def test_a_predict_stopped_while_explaining_leaves_the_folder_as_it_was_and_reruns(tmp_path, images, model_file, monkeypatch, capsys):
    "Ctrl-C part way through the figures: no predictions beside a part of their figures; with --force the earlier run's outputs stay whole."
    import har_kit.predict as P
    real, out = P.explain, tmp_path/'o'
    def stop_after_one(pred, imgs, where, *a, **k):
        real(pred, imgs[:1], where, *a, **k); raise KeyboardInterrupt
    monkeypatch.setattr(P, 'explain', stop_after_one)
    with pytest.raises(KeyboardInterrupt): cli([str(model_file), str(images), '--out', str(out), '--explain', '--quiet'])
    assert f'stopped while explaining; {out} is as it was' in capsys.readouterr().err and P.previous_outputs(out) == []
    monkeypatch.setattr(P, 'explain', real)
    assert cli([str(model_file), str(images), '--out', str(out), '--explain', '--quiet']) == 0
    earlier = _snapshot(out)
    assert len(earlier) == 5   # predictions.csv / .json and three figures
    monkeypatch.setattr(P, 'explain', stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        cli([str(model_file), str(images), '--out', str(out), '--explain', '--quiet', '--force', '--threshold', '0.9'])
    assert _snapshot(out) == earlier and not (out/P.STAGED).exists()


def test_a_stop_while_the_outputs_land_waits_until_they_have_landed(tmp_path, images, model_file, monkeypatch):
    "A Ctrl-C between two figure moves left new predictions beside part of their figures (the rest in .explain.staged), "
    "and the same command then refused to run; now the landing finishes first, then the stop is delivered."
    import signal, threading
    import har_kit.predict as P
    assert threading.current_thread() is threading.main_thread()   # the signal must reach this test's handler
    def stop(signum, frame): raise KeyboardInterrupt
    old = signal.signal(signal.SIGINT, stop)
    real, moved = os.replace, []
    def replace(a, b):
        real(a, b)
        if Path(b).parent.name == P.EXPLAIN_DIR:   # a figure moved into explain/, the predictions written before it
            moved.append(b)
            if len(moved) == 1: os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(P.os, 'replace', replace)
    out = tmp_path/'o'
    try:
        with pytest.raises(KeyboardInterrupt): cli([str(model_file), str(images), '--out', str(out), '--explain', '--quiet'])
    finally: signal.signal(signal.SIGINT, old)
    assert len(list((out/P.EXPLAIN_DIR).iterdir())) == 3 and not (out/P.STAGED).exists() and (out/'predictions.json').is_file()


def test_an_earlier_runs_figures_elsewhere_are_not_scored(tmp_path, images, model_file, capsys):
    "Figures `--explain` wrote into another --out inside the image folder are left out, and named, when the folder is scored again."
    assert cli([str(model_file), str(images), '--out', str(images/'res1'), '--explain', '--quiet']) == 0
    assert cli([str(model_file), str(images), '--out', str(tmp_path/'res2'), '--quiet']) == 0
    got = json.loads((tmp_path/'res2'/'predictions.json').read_text())['images']
    assert len(got) == 3 and 'left out 3 figure(s) an earlier har-kit predict --explain wrote' in capsys.readouterr().err


def test_file_names_that_are_not_utf8_long_or_hold_dollars_are_predicted_and_explained(tmp_path, model_file, capsys):
    "A name with bytes that are not UTF-8 keeps them in the CSV; a 240-character name and a '$...$' name get their figures."
    d = tmp_path/'imgs'; d.mkdir()
    names = [os.fsdecode(b'caf\xe9.png'), 'x' * 240 + '.png', 'shop_$x^$_2.png']
    for n in names: Image.fromarray(np.zeros((40, 20, 3), np.uint8)).save(d/n)
    assert cli([str(model_file), str(d), '--out', str(tmp_path/'o'), '--explain']) == 0, capsys.readouterr().err
    assert 'caf\\udce9.png: ' in capsys.readouterr().out
    csv_bytes = (tmp_path/'o'/'predictions.csv').read_bytes()
    assert os.fsencode(str(d/names[0])) in csv_bytes   # the file's own bytes: the path opens again
    assert len(list((tmp_path/'o'/'explain').iterdir())) == 3


def test_val_threshold_on_a_cfar_model_says_why_there_is_none(tmp_path):
    "A CFAR model file stores no thresholds because phase 2 has no validation split, not because training had none."
    write_cfar_model(tmp_path/'campar_fusion_cfar'/'model.pt')
    with pytest.raises(KitError, match=r"model.pt: threshold 'val', but CFAR's phase-2 classifier .*stores none.*"
                                       r"pass a number .* or a thresholds file") as e:
        Predictor(tmp_path, threshold='val')
    assert 'trained without a validation split' not in str(e.value)


def test_a_variant_named_beside_a_model_file_must_be_its_own(tmp_path, images, model_file, capsys):
    "--variant cannot choose inside a file: another variant's name is refused by predict and export instead of ignored."
    for run in (lambda: cli([str(model_file), str(images), '--variant', 'campar', '--out', str(tmp_path/'o'), '--quiet']),
                lambda: export_cli([str(model_file), '--variant', 'campar', '--format', 'torchscript', '--out', str(tmp_path/'x.ts.pt')])):
        assert run() == 2 and "a model file of variant 'dahar', not 'campar': drop --variant" in capsys.readouterr().err
    assert not (tmp_path/'o').exists() and not (tmp_path/'x.ts.pt').exists()


def test_a_forged_input_size_is_refused_naming_the_file(tmp_path, images, model_file, capsys):
    blob = torch.load(model_file, weights_only=True)
    for size in ([10 ** 6, 10 ** 6], [5000, 32]):   # beyond any picture; past the largest side a model file may state
        blob['meta']['input_size'] = size
        blob['sha256'] = model_digest(blob['meta'], blob['state_dict'], blob['extra'])
        torch.save(blob, tmp_path/'forged.pt')
        assert cli([str(tmp_path/'forged.pt'), str(images), '--out', str(tmp_path/'o'), '--quiet']) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'har-kit predict: {tmp_path/"forged.pt"}') or 'forged.pt' in err, err


def test_explain_refuses_non_finite_probabilities_and_odd_panel_counts(tmp_path, images, model_file):
    "explain draws no figure of NaN probabilities (predict refuses them too); max_attributes is a whole number >= 1."
    lm = load_model(model_file)
    with torch.no_grad(): next(lm.model.parameters()).view(-1)[0] = float('nan')   # a diverged network, in memory
    with pytest.raises(KitError, match=r'non-finite probabilities \(NaN/inf\) for .*a\.png: .*no figure drawn for it \(0 drawn'):
        explain_images(Predictor(lm), images, tmp_path/'x', progress=False)
    assert not (tmp_path/'x').exists() or not list((tmp_path/'x').iterdir())
    for bad in (0, -1, True, 2.5, '3'):
        with pytest.raises(KitError, match=re.escape(f'max_attributes={bad!r}: a whole number >= 1')):
            explain_images(Predictor(model_file), images, tmp_path/'y', max_attributes=bad, progress=False)
    assert not (tmp_path/'y').exists()


def test_self_mask_panels_name_their_stages_in_any_order():
    "self_mask_after=[2, 0]: the masks come in stage order, so the panel names must too."
    from har_kit.dahar import dahar_variant
    torch.manual_seed(0)
    net = dahar_variant(name='self_mask', num_attributes=4, arch='resnet-tiny', weights=None, self_mask_after=[2, 0]).eval()
    x = torch.randn(1, 3, 64, 32)
    m, out = model_maps(net, x), net(x)
    assert [k for k in m['global_maps'] if k.startswith('self-mask')] == ['self-mask (stage 1)', 'self-mask (stage 3)']
    assert m['global_maps']['self-mask (stage 1)'].shape == out['self_masks'][0].shape != out['self_masks'][1].shape


def _interrupt_fsync_of(monkeypatch, name):  # a file name: Ctrl-C while its temporary file is synced
    import har_kit.core as core
    real = core.os.fsync
    def fsync(fd):
        if re.fullmatch(rf'\.{re.escape(name)}\.[^.]+\.tmp', Path(os.readlink(f'/proc/self/fd/{fd}')).name): raise KeyboardInterrupt
        return real(fd)
    monkeypatch.setattr(core.os, 'fsync', fsync)


@pytest.mark.parametrize('stopped_at', ['m.ts.pt', 'm.ts.pt.json'])
def test_an_export_stopped_while_syncing_leaves_the_old_model_and_sidecar(tmp_path, model_file, monkeypatch, stopped_at):
    "--force over an earlier export: stopped while either file is synced, both earlier files stay, neither replaced alone."
    out = tmp_path/'m.ts.pt'
    out.write_bytes(b'OLD MODEL'); (tmp_path/'m.ts.pt.json').write_text('{"old": true}')
    _interrupt_fsync_of(monkeypatch, stopped_at)
    with pytest.raises(KeyboardInterrupt): export_model(model_file, out, 'torchscript', force=True)
    assert out.read_bytes() == b'OLD MODEL' and json.loads((tmp_path/'m.ts.pt.json').read_text()) == {'old': True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m.ts.pt', 'm.ts.pt.json', 'run']   # no temporary left


@pytest.mark.parametrize('stopped_at', ['predictions.csv', 'predictions.json'])
def test_predictions_stopped_while_syncing_leave_both_earlier_files(tmp_path, images, model_file, monkeypatch, stopped_at):
    "A --force rerun stopped while either file is synced keeps the earlier csv and json, a pair."
    out = tmp_path/'out'
    assert cli([str(model_file), str(images), '--out', str(out), '--quiet']) == 0
    before = {n: (out/n).read_bytes() for n in ('predictions.csv', 'predictions.json')}
    _interrupt_fsync_of(monkeypatch, stopped_at)
    with pytest.raises(KeyboardInterrupt): cli([str(model_file), str(images/'a.png'), '--out', str(out), '--force', '--quiet'])
    assert {n: (out/n).read_bytes() for n in before} == before
    assert sorted(p.name for p in out.iterdir()) == ['predictions.csv', 'predictions.json']


def test_an_exported_model_is_on_disk_before_its_rename(tmp_path, model_file, monkeypatch):
    "Its sidecar is synced (save_json): the model it describes must be too, or a power loss leaves a sidecar beside an empty file."
    import har_kit.core as core
    synced = []
    monkeypatch.setattr(core.os, 'fsync', lambda fd: synced.append(Path(os.readlink(f'/proc/self/fd/{fd}')).name))
    export_model(model_file, tmp_path/'m.ts.pt', 'torchscript')
    assert any(n.startswith('.m.ts.pt.') and not n.startswith('.m.ts.pt.json') for n in synced), synced


def test_a_missing_model_path_and_an_interrupted_run_say_what_to_do(tmp_path):
    "predict before any run: 'no such model file' now says to train one; a run stopped by Ctrl-C is 'interrupted', as status says."
    from har_kit.model_file import find_model_file
    from har_kit.predict import default_variant
    with pytest.raises(KitError, match=r'nope: no such model file or run directory: train one first \(har-kit run'):
        find_model_file(tmp_path/'nope')
    run = tmp_path/'run'
    for v in ('baseline', 'campar'): (run/v).mkdir(parents=True); (run/v/'model.pt').write_bytes(b'')
    (run/'params.json').write_text('{}')   # params.json and no done, no failed.json: the run stopped without finishing
    with pytest.raises(KitError, match=r'the run is interrupted \(interrupted: the run stopped'):
        default_variant(run)


def test_a_device_this_machine_lacks_is_not_blamed_on_the_model_file(model_file):
    if torch.backends.mps.is_available(): pytest.skip('this machine has mps')
    with pytest.raises(KitError) as e: load_model(model_file, map_location='mps')
    assert "device='mps' is not usable here" in str(e.value) and 'corrupted' not in str(e.value)
    with pytest.raises(KitError, match="device='mps' is not usable here"): Predictor(model_file, device='mps')


@pytest.mark.parametrize('method', ['campar', 'dahar'])
def test_preprocess_is_the_evaluation_transform_bit_for_bit(method):
    "Probabilities on a validation image are those its validation thresholds were chosen on: the same input bits."
    from har_kit.loading import IMAGENET_MEAN, IMAGENET_STD, campar_sizes, campar_transforms, dahar_sizes, dahar_transforms
    from har_kit.predict import preprocess
    tf, size = ((campar_transforms(False, .375), campar_sizes(.375)[0]) if method == 'campar'
                else (dahar_transforms(False, 2, .5), dahar_sizes(2, .5)[0]))
    rng = np.random.default_rng(0)
    for shape in [(300, 120, 3), (97, 41, 3), (1, 1, 3), (400, 260, 3)]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        assert torch.equal(preprocess(a, size, IMAGENET_MEAN, IMAGENET_STD), tf(a)), shape


def test_explain_scores_with_the_predictors_threads(tmp_path, images, model_file, monkeypatch):
    "A figure's probabilities are computed with Predictor.threads, as predict's: never the caller's count."
    import har_kit.explain as E
    seen, real = [], E.model_maps
    monkeypatch.setattr(E, 'model_maps', lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        explain_images(Predictor(model_file, threads=1), [images/'a.png'], tmp_path/'x', progress=False)
        assert seen == [1] and torch.get_num_threads() == 2
    finally: torch.set_num_threads(before)


def test_an_exported_torchscript_models_outputs_need_no_grad(tmp_path, model_file):
    "As a deployer calls it: torch.jit.load(f)(x).numpy(), outside torch.no_grad."
    import warnings
    ts = export_model(model_file, tmp_path/'m.ts.pt', 'torchscript')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        y = torch.jit.load(str(ts['path']))(torch.zeros(2, 3, 64, 32))
    assert not y.requires_grad and y.numpy().shape == (2, 4)


def _scene(tmp_path):  # a group photo with one target's box (fractional, running past the right edge), as WIDER's
    from har_kit.data import Sample
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(tmp_path/'scene.png')
    return Sample(tmp_path/'scene.png', np.array([1, 0, 0, 1], np.int8), 'test', box=(101.5, 12.25, 70, 90.5))


@pytest.mark.parametrize('make', [_dahar, _campar])
def test_a_boxed_target_scores_as_the_evaluation_loader_scores_it(tmp_path, make):
    "Predictor(boxes=) cuts the box as HarDataset(crop_to_box=True) does: the probabilities evaluation computed for that sample."
    from har_kit.loading import HarDataset, campar_sizes, campar_transforms, dahar_sizes, dahar_transforms
    s = _scene(tmp_path)
    net, builder, kw = make()
    size, tf = ((dahar_sizes(1, .25)[0], dahar_transforms(False, 1, .25)) if make is _dahar
                else (campar_sizes(.25)[0], campar_transforms(False, .25)))
    f = save_model(tmp_path/'m.pt', net, builder=builder, kwargs=kw, attributes=NAMES, input_size=size,
                   mean=PRE['mean'], std=PRE['std'], dataset='wider')
    with torch.no_grad(): ev = torch.sigmoid(net(HarDataset([s], tf)[0]['image'][None])['logits']).numpy()
    p = Predictor(f, device='cpu')
    np.testing.assert_allclose(p.probabilities([s.image], boxes=[s.box]), ev, atol=1e-6)
    np.testing.assert_allclose(p.probabilities(s.image, boxes=s.box), ev, atol=1e-6)   # one image, its one box
    rec = p.predict([s.image], boxes=[s.box], progress=False)[0]
    np.testing.assert_allclose([rec['probabilities'][a] for a in NAMES], ev[0], atol=1e-6)
    assert rec['box'] == list(s.box)
    np.testing.assert_allclose(p.probabilities([read_image(s.image)], boxes=[s.box]), ev, atol=1e-6)   # an array: the same cut
    with pytest.raises(KitError, match=r'boxes\[0\].*lies entirely outside'): p.probabilities([s.image], boxes=[(500, 0, 5, 5)])
    with pytest.raises(KitError, match=r'boxes\[1\] = .*expected \(x, y, w, h\)'): p.probabilities([s.image] * 2, boxes=[None, (1, 2)])


def test_a_wider_model_scoring_whole_images_warns_once(tmp_path, recwarn):
    s = _scene(tmp_path)
    net, builder, kw = _dahar()
    p = Predictor(_save(tmp_path/'w.pt', net, builder, kw, dataset='wider'), device='cpu')
    with pytest.warns(UserWarning, match=r"trained on 'wider' targets: person crops cut out of their scenes.*boxes="):
        p.predict([s.image], progress=False)
    recwarn.clear()
    p.predict([s.image], progress=False); p.probabilities([s.image])
    q = Predictor(_save(tmp_path/'w2.pt', net, builder, kw, dataset='wider'), device='cpu')
    q.predict([s.image], boxes=[None], progress=False)   # boxes given (None: this one is a crop already): nothing to say
    Predictor(_save(tmp_path/'p.pt', net, builder, kw, dataset='pa100k'), device='cpu').predict([s.image], progress=False)
    assert not [w for w in recwarn if 'person crops' in str(w.message)]


def test_predict_gives_one_record_per_entry_in_order(images, model_file):
    "An explicit list: a file named twice is scored twice, as probabilities() does; a folder's images once each."
    p = Predictor(model_file)
    files = [images/'b.jpg', images/'a.png', images/'b.jpg', images/'sub'/'..'/'a.png']
    recs = p.predict(files, progress=False)
    assert [r['image'] for r in recs] == [str(f) for f in files]
    np.testing.assert_allclose([[r['probabilities'][a] for a in NAMES] for r in recs], p.probabilities(files), atol=1e-6)
    assert len(p.predict([images, images/'a.png'], progress=False)) == 4   # the folder's 3 images, then a.png again


def test_a_photo_turned_by_its_exif_orientation_says_so(tmp_path, images, model_file, capsys):
    ex = Image.new('RGB', (30, 50)).getexif(); ex[0x0112] = 6
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(images/'turned.jpg', exif=ex)
    recs = {Path(r['image']).name: r for r in Predictor(model_file).predict(images, progress=False)}
    assert recs['turned.jpg']['rotated'] == 6 and not any('rotated' in r for n, r in recs.items() if n != 'turned.jpg')
    assert cli([str(model_file), str(images), '--out', str(tmp_path/'o'), '--quiet']) == 0
    assert '1 image(s) turned by their EXIF orientation' in capsys.readouterr().err
    doc = json.loads((tmp_path/'o'/'predictions.json').read_text())
    assert [Path(r['image']).name for r in doc['images'] if r.get('rotated') == 6] == ['turned.jpg']


def test_box_and_rotation_reach_the_csv_and_a_box_on_a_turned_photo_warns(tmp_path, images, model_file):
    "Two targets of one scene gave two CSV rows with the same image and nothing to tell them apart (box and rotated were in the JSON only)."
    import csv as _csv
    ex = Image.new('RGB', (30, 50)).getexif(); ex[0x0112] = 6
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(images/'turned.jpg', exif=ex)
    p = Predictor(model_file)
    with pytest.warns(UserWarning, match=r'1 image\(s\) with a box were turned by their EXIF orientation first .*turned.jpg'):
        recs = p.predict([images/'a.png', images/'a.png', images/'turned.jpg'], boxes=[(0, 0, 10, 12.5), (5, 5, 8, 8), (1, 1, 20, 20)], progress=False)
    write_predictions(recs, p, tmp_path/'o')
    rows = list(_csv.reader(open(tmp_path/'o'/'predictions.csv')))
    assert rows[0][:4] == ['image', 'box', 'rotated', 'predicted']
    assert [r[1:3] for r in rows[1:]] == [['0.0 0.0 10.0 12.5', ''], ['5.0 5.0 8.0 8.0', ''], ['1.0 1.0 20.0 20.0', '6']]
    write_predictions(p.predict([images/'a.png'], progress=False), p, tmp_path/'plain')   # neither: the columns as before
    assert next(_csv.reader(open(tmp_path/'plain'/'predictions.csv')))[:2] == ['image', 'predicted']
