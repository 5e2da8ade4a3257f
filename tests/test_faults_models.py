"Fault catalogue of the model sections (campar, cfar): bad files and bad parameters end in a clear KitError, never in code run."
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from har_kit import campar, campar_train, cfar, dahar
from har_kit.core import KitError

torch.set_num_threads(1)


class _RunsCode:
    "Unpickling this object calls os.system: a crafted checkpoint."
    def __reduce__(self):
        import os
        return (os.system, ('touch /tmp/har_kit_pwned_cfar',))


@pytest.fixture(scope='module')
def fitted():
    l, y = cfar.synthetic_phase1(200, 4, 2, seed=0)
    return cfar.fit_cfar(l, y, cfar.CFARConfig(num_threads=1, epochs=2, n_prototypes=3, tol=None, iterations=5))


def test_cfar_model_file_refuses_a_pickle_that_runs_code(tmp_path):
    "A CFAR variant lives in its model file, read with weights_only=True: a crafted state never runs."
    from har_kit.model_file import load_model
    marker = Path('/tmp/har_kit_pwned_cfar')
    marker.unlink(missing_ok=True)
    f = tmp_path/'campar_cfar'/'model.pt'
    f.parent.mkdir()
    torch.save({'format': 'har-kit-model', 'extra': {'cfar': {'format': 'har-kit-cfar', 'info': _RunsCode()}}}, f)
    with pytest.raises(KitError, match='cannot be read'): load_model(f)
    with open(f, 'wb') as fh: pickle.dump({'extra': {'y_f': _RunsCode()}}, fh)
    with pytest.raises(KitError, match=str(f)): load_model(tmp_path, 'campar_cfar')
    assert not marker.exists()


def test_cfar_state_round_trips_with_weights_only(fitted, tmp_path):
    torch.save(fitted.state(), tmp_path/'c.pt')
    state = torch.load(tmp_path/'c.pt', weights_only=True)                 # plain tensors and values only
    assert isinstance(state['y_f'], torch.Tensor) and isinstance(state['config'], dict)
    l, _ = cfar.synthetic_phase1(20, 4, 2, seed=5)
    np.testing.assert_allclose(cfar.CFAR.from_state(state).logits(l), fitted.logits(l), atol=1e-6)


@pytest.mark.parametrize('damage,match', [
    ('not_cfar', 'not a CFAR state'),
    ('missing_head', 'incomplete or inconsistent'),
    ('shapes', 'do not fit together'),
])
def test_damaged_cfar_states_are_refused(fitted, damage, match):
    s = fitted.state()
    if damage == 'not_cfar': s = {'model': s['head']}
    if damage == 'missing_head': del s['head']
    if damage == 'shapes': s['keys'] = s['keys'][:, :2]
    with pytest.raises(KitError, match=match): cfar.CFAR.from_state(s, 'model file extra')


def test_model_sections_load_only_with_weights_only():
    "Every torch.load in the model sections' modules reads with weights_only=True."
    import har_kit
    root = Path(har_kit.__file__).parent
    for mod in ('campar.py', 'cfar.py'):
        for call in re.findall(r'torch\.load\([^)]*\)', (root/mod).read_text()):
            assert 'weights_only=True' in call, (mod, call)


@pytest.mark.parametrize('kw,match', [
    (dict(tol=-1.), 'als_tol'), (dict(tol='1e-4'), 'als_tol'), (dict(iterations=0), 'iterations'), (dict(factors=0), 'factors')])
def test_bad_als_parameters(kw, match):
    r = np.random.default_rng(0).random((10, 4))
    with pytest.raises(KitError, match=match): cfar.fit_latent_factors(r, **{'factors': 2, **kw})


def test_diverged_phase1_logits_are_refused():
    l, y = cfar.synthetic_phase1(50, 4, 2, seed=0)
    l[3, 1] = np.nan
    with pytest.raises(KitError, match='non-finite'): cfar.fit_cfar(l, y, cfar.CFARConfig(num_threads=1))


def test_cfar_predictor_without_state():
    with pytest.raises(KitError, match="'cfar'"): cfar.cfar_predictor(torch.nn.Identity(), {}, {})


def test_cfar_model_file_without_state_names_the_file(tmp_path):
    "A model file naming CFAR's predictor but holding no CFAR state is never written: a KitError naming the file, not the predictor's."
    from har_kit.model_file import save_model
    kw = dict(name='campar', num_attributes=4, arch='resnet-tiny', weights=None)
    f = tmp_path/'campar_cfar'/'model.pt'
    with pytest.raises(KitError, match=re.escape(f"{f}: extra['predictor']='cfar_predictor' cannot be built") + ".*'cfar'.*nothing was written"):
        save_model(f, campar.campar_variant(**kw).eval(), builder='campar_variant', kwargs=kw,
                   attributes=list('abcd'), input_size=(64, 32), mean=(0, 0, 0), std=(1, 1, 1), extra={'predictor': 'cfar_predictor'})
    assert not f.exists()


def test_a_cfar_over_another_network_is_never_saved(tmp_path):
    "A CFAR state over a phase 1 without CAM-specific logits (a baseline), or fitted over other attributes: refused by save_model, not a raw error in load_model."
    from conftest import write_cfar_model
    from har_kit.cfar import cfar_extra
    from har_kit.model_file import save_model
    _, fitted, _ = write_cfar_model(tmp_path/'ok'/'model.pt')
    for name, n in (('baseline', 5), ('campar', 4)):
        kw = dict(name=name, num_attributes=n, arch='resnet-tiny', weights=None)
        f = tmp_path/name/'model.pt'
        with pytest.raises(KitError, match=re.escape(str(f)) + '.*nothing was written'):
            save_model(f, campar.campar_variant(**kw).eval(), builder='campar_variant', kwargs=kw, attributes=list('abcde')[:n],
                       input_size=(64, 48), mean=(0, 0, 0), std=(1, 1, 1), extra=cfar_extra(fitted))
        assert not f.exists()


@pytest.mark.parametrize('call,match', [
    (lambda: campar.campar_variant('campar', 0, arch='resnet-tiny'), 'num_attributes'),
    (lambda: campar.campar_variant('nope', 3, arch='resnet-tiny'), 'unknown CAM-PAR variant'),
    (lambda: campar_train.campar_train_config(plateau_on='val_mA'), 'plateau_on'),
    (lambda: campar.MCAFusion([4, 8, 16], out_channels=32, project_deepest=False), 'project_deepest'),
    (lambda: campar.MCAFusion([4, 8, 16])([torch.randn(1, 4, 4, 4)]), '3 stages'),
    (lambda: campar_train.carve_validation(list(range(5)), 0.05), 'val_fraction'),
])
def test_bad_model_parameters(call, match):
    with pytest.raises(KitError, match=match): call()


def test_load_model_without_a_trained_variant(tmp_path):
    from har_kit.model_file import load_model
    with pytest.raises(KitError, match='campar/model.pt'): load_model(tmp_path, 'campar')
    (tmp_path/'campar').mkdir()
    (tmp_path/'campar'/'model.pt').write_bytes(b'not a model file')
    with pytest.raises(KitError, match='model.pt'): load_model(tmp_path, 'campar')

@pytest.mark.parametrize('bad', [True, 0, -3, 2.5, '5', None])
def test_dahar_variant_refuses_a_bad_attribute_count_as_campar_variant_does(bad):
    from har_kit.dahar import dahar_variant
    with pytest.raises(KitError, match=f'num_attributes must be a positive int, got {re.escape(repr(bad))}'):
        dahar_variant('baseline', bad, 'resnet-tiny')
    with torch.no_grad(): out = dahar_variant('baseline', np.int64(3), 'resnet-tiny').eval()(torch.randn(2, 3, 64, 64))
    assert out['logits'].shape == (2, 3)   # a numpy count (labels.shape[1]) is taken


def test_a_recipe_whose_selection_cannot_be_scored_is_refused_before_training(tmp_path):
    "select 'Best' (a typo) kept the last epoch silently; 'best' with key None trained to the end, then failed; evaluate None crashed after epoch 1."
    import dataclasses
    from har_kit.model_file import Recipe, train_variant
    @dataclasses.dataclass
    class Config: seed: int = 0
    class Own(Recipe):
        select, key, evaluate = 'best', 'mA', staticmethod(lambda s, y: {'mA': 0.5})
        def __init__(self, **kw): self.config = Config(); self.__dict__.update(kw)
        def build(self, variant): return torch.nn.Linear(2, 2)
        def criterion(self, variant): return None
        def loaders(self, variant): return {'train': [], 'val': []}
        def train_config(self): return None   # never reaches the engine
    for kw, msg in ((dict(select='Best'), "Own.select='Best': use 'last'"), (dict(key=None), "Own.key is None, but select='best'"),
                    (dict(evaluate=None), 'Own.evaluate is None, but select=best'), (dict(select='last', evaluate=None, watch=('test',)),
                                                                                     "Own.evaluate is None, but watch=('test',)")):
        with pytest.raises(KitError, match=re.escape(msg)): train_variant(Own(**kw), 'v', tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_saving_a_bf16_network_names_its_dtype_not_its_input_size(tmp_path):
    "A network cast to bf16 was refused as 'cannot run on its stored input_size ... save it with the size it was trained at'."
    from har_kit.campar import campar_variant
    from har_kit.model_file import save_model
    kw = dict(name='campar', num_attributes=3, arch='resnet-tiny', weights=None)
    with pytest.raises(KitError, match=r'holds bfloat16 weights; a load rebuilds it in float32.*save model\.float\(\)'):
        save_model(tmp_path/'m.pt', campar_variant(**kw).to(torch.bfloat16), builder='campar_variant', kwargs=kw,
                   attributes=list('abc'), input_size=(64, 48), mean=(0.5,) * 3, std=(0.25,) * 3)
    assert not (tmp_path/'m.pt').exists()


@pytest.mark.parametrize('call,match', [
    (lambda: campar.campar_variant('campar_fusion', 3, 'resnet-tiny', logit_bn='False'), "logit_bn must be True or False, got 'False'"),
    (lambda: campar.campar_variant('campar', 3, 'resnet-tiny', project_deepest='False'), "project_deepest must be True or False"),
    (lambda: campar.campar_variant('campar', 3, 'resnet-tiny', align_corners=0), 'align_corners must be True or False, got 0'),
    (lambda: campar.campar_variant('campar', 3, 'resnet-tiny', detach_cam='no'), "detach_cam must be True or False, got 'no'"),
    (lambda: campar.campar_variant('campar_fusion', 3, 'resnet-tiny', latent=0), 'latent must be a positive int, got 0'),
    (lambda: campar.MCAFusion([4, 8, 16], latent=-4), 'latent must be a positive int, got -4'),
    (lambda: campar.MCAFusion([4, 8, 16], out_channels=2.5), 'out_channels must be a positive int, got 2.5'),
    (lambda: campar.campar_variant(['campar'], 3, 'resnet-tiny'), r"unknown CAM-PAR variant \['campar'\]"),
    (lambda: campar.CamParLoss(ignore_unspecified='False'), "ignore_unspecified must be True or False"),
    (lambda: dahar.dahar_variant('dahar', 3, 'resnet-tiny', fusion='False'), "DaHar: fusion must be True or False"),
    (lambda: dahar.dahar_variant('dahar', 3, 'resnet-tiny', fusion_channels=0), 'DaHar: fusion_channels must be a positive int, got 0'),
    (lambda: dahar.dahar_variant('dahar', 3, 'resnet-tiny', attention_hidden=-1), 'DaHar: attention_hidden must be a positive int'),
    (lambda: dahar.dahar_variant(['dahar'], 3, 'resnet-tiny'), r"unknown Da-HAR variant \['dahar'\]"),
    (lambda: dahar.DaHarLoss(mask_weight=float('nan')), 'mask_weight must be a finite number >= 0, got nan'),
    (lambda: dahar.DaHarLoss(branch_weight=float('inf')), 'branch_weight must be a finite number >= 0, got inf'),
])
def test_the_builders_refuse_string_switches_and_non_positive_widths(call, match):
    "logit_bn='False' built the BatchNorm (and was stored as a string), fusion='False' gave fusion on, a width of 0 silently read as the "
    "default, -4 / 2.5 reached torch's own errors, mask_weight=nan was accepted and a list as the variant name was a TypeError."
    with pytest.raises(KitError, match=match): call()
