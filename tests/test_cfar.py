"Tests of har_kit.cfar and har_kit.cfar_factors: the exactness of the implicit encoding of Eq. 17-18, the dictionary, phase 2 and bad input."

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import expit

from har_kit.core import KitError
from har_kit import cfar
from har_kit import cfar_factors as cf
from conftest import write_cfar_model


def _grid_r(n=30, m=6, seed=0):
    "Confidences on a 1/64 grid: with alpha a power of two every stored confidence is exact in float32."
    return np.random.default_rng(seed).integers(0, 65, size=(n, m)) / 64


@pytest.mark.parametrize('p_t,alpha,lam', [(.5, 4., .25), (.25, 16., .01), (.75, 1., 1.)])
def test_library_sweeps_equal_numpy_normal_equations(p_t, alpha, lam):
    r = _grid_r()
    rng = np.random.default_rng(1)
    x0, y0 = rng.random((30, 3)) * .01, rng.random((6, 3)) * .01
    lib = cf.fit_latent_factors(r, 3, lam, alpha, p_t, iterations=4, init=(x0, y0), dtype=np.float64, num_threads=1)
    xr, yr = cf.als_reference(r, x0, y0, p_t, alpha, lam, iterations=4)
    np.testing.assert_allclose(lib.x_f, xr, atol=1e-9)
    np.testing.assert_allclose(lib.y_f, yr, atol=1e-9)
    assert lib.objective == pytest.approx(cf.eq18_objective(r, xr, yr, p_t, alpha, lam), rel=1e-10)


def test_converged_factors_are_a_stationary_point_of_eq18():
    r = np.random.default_rng(2).random((40, 7))       # arbitrary confidences (float32 rounding of c only)
    kw = dict(p_t=.5, alpha=10., regularization=.1)
    lf = cf.fit_latent_factors(r, 4, kw['regularization'], kw['alpha'], kw['p_t'], iterations=4000, dtype=np.float64, num_threads=1)
    gx, gy = cf.eq18_gradient(r, lf.x_f, lf.y_f, **kw)   # ALS converges linearly: many cheap sweeps
    assert max(abs(gx).max(), abs(gy).max()) < 1e-4
    # the naive encoding (only liked entries, library alpha) is not a minimiser of Eq. 18
    from implicit.cpu.als import AlternatingLeastSquares
    als = AlternatingLeastSquares(factors=4, regularization=.1, alpha=10., use_cg=False, iterations=400,
                                  dtype=np.float64, num_threads=1, random_state=0)
    als.fit(sp.csr_matrix(np.where(r >= .5, r, 0)), show_progress=False)
    ngx, ngy = cf.eq18_gradient(r, als.user_factors, als.item_factors, **kw)
    assert max(abs(ngx).max(), abs(ngy).max()) > 100 * max(abs(gx).max(), abs(gy).max(), 1e-6)
    assert cf.eq18_objective(r, als.user_factors, als.item_factors, **kw) > lf.objective


def test_implicit_loss_maps_to_eq18():
    from implicit.cpu import _als
    r = _grid_r(seed=3); r[:4] = 0                     # some entries missing from the CSR
    cui = cf.confidence_matrix(r, .5, 4.)
    assert cui.nnz < r.size
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(6, 3))
    loss = _als.calculate_loss(cui, x, y, .3, num_threads=1)
    assert cf.implicit_loss_to_eq18(loss, cui) == pytest.approx(cf.eq18_objective(r, x, y, .5, 4., .3), rel=1e-6)


def test_confidence_matrix_encoding():
    m = cf.confidence_matrix(np.array([[0., .25, .5, 1.]]), p_t=.5, alpha=2.)
    np.testing.assert_array_equal(m.toarray(), [[0, -1.5, 2, 3]])
    m = cf.confidence_matrix(np.array([[0., .25]]), p_t=0., alpha=2.)   # p_t = 0: r = 0 is preferred, stored +1
    np.testing.assert_array_equal(m.toarray(), [[1, 1.5]])


@pytest.mark.parametrize('bad,match', [(np.array([[np.nan, .5]]), 'non-finite'), (np.array([[1.5, .5]]), 'outside'),
                                       (np.array([.5, .5]), 'matrix')])
def test_bad_confidences(bad, match):
    with pytest.raises(KitError, match=match): cf.fit_latent_factors(bad)


def test_bad_hyperparameters():
    r = _grid_r()
    with pytest.raises(KitError, match='p_t'): cf.confidence_matrix(r, p_t=2.)
    with pytest.raises(KitError, match='alpha'): cf.confidence_matrix(r, alpha=-1.)
    with pytest.raises(KitError, match='factors'): cf.fit_latent_factors(r, factors=0)
    lf = cf.fit_latent_factors(r, 3, num_threads=1)
    with pytest.raises(KitError, match='K <= N'): cfar.build_dictionary(r, lf.x_f, n_prototypes=31)
    with pytest.raises(KitError, match='rows'): cfar.build_dictionary(r, lf.x_f[:5], n_prototypes=3)
    rng = np.random.default_rng(0)   # starting factors of another width or count: named, not a quiet D or a raw broadcast error
    for init in [(rng.random((30, 2)), rng.random((6, 2))), (rng.random((29, 3)), rng.random((6, 3))), rng.random((30, 3))]:
        with pytest.raises(KitError, match=r'init: .*\(30, 3\) \(images x D\)'): cf.fit_latent_factors(r, 3, num_threads=1, init=init)


def test_never_positive_warning_names_the_attribute():
    "Given the attribute names (a run's recipe passes them), the warning names the attribute, not its index."
    r = _grid_r(); r[:, 2] = np.minimum(r[:, 2], .3)
    with pytest.warns(UserWarning, match=r'attributes Hat have r < p_t=0.5'):
        lf = cf.fit_latent_factors(r, 3, num_threads=1, iterations=2, names=['a', 'b', 'Hat', 'c', 'd', 'e'])
    assert lf.never_positive == [2]
    with pytest.raises(KitError, match='names: 2 attribute names for 6 columns'): cf.fit_latent_factors(r, 3, names=['a', 'b'])
    with pytest.warns(UserWarning, match=r'attributes Hat have'):
        cfar.fit_dictionary(np.log(r.clip(1e-6, 1 - 1e-6) / (1 - r.clip(1e-6, 1 - 1e-6))),
                            cfar.CFARConfig(num_threads=1, iterations=2, tol=None, n_prototypes=3), ['a', 'b', 'Hat', 'c', 'd', 'e'])


def test_never_positive_attribute_is_documented_not_fatal():
    r = _grid_r(); r[:, 2] = np.minimum(r[:, 2], .3)
    with pytest.warns(UserWarning, match=r'\[2\]'):
        lf = cf.fit_latent_factors(r, 3, num_threads=1)
    assert lf.never_positive == [2]
    d = cfar.build_dictionary(r, lf.x_f, 4)
    assert np.abs(cfar.infer_confidence(d, lf.y_f, r)[:, 2]).max() < .2


def test_dictionary_values_are_cluster_means():
    r = _grid_r(n=50, m=5)
    x = np.random.default_rng(0).normal(size=(50, 3))
    d = cfar.build_dictionary(r, x, 5)
    lab = d.nearest(r)
    for k in range(5):
        if (lab == k).any(): np.testing.assert_allclose(d.values[k], x[lab == k].mean(0))
    assert d.counts.sum() == 50
    y_f = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_allclose(cfar.infer_confidence(d, y_f, r), d.values[lab] @ y_f.T)


def test_cfar_beats_phase1_and_round_trips(tmp_path):
    l, y = cfar.synthetic_phase1(1500, 12, 6, seed=1)
    cfg = cfar.CFARConfig(num_threads=1, tol=None, iterations=15, epochs=10)   # convergence is tested below; this is the gain
    model = cfar.fit_cfar(l[:1000], y[:1000], cfg)
    from har_kit.metrics import pedestrian_metrics
    ma0 = pedestrian_metrics(expit(l[1000:]), y[1000:])['mA']
    ma = pedestrian_metrics(expit(model.logits(l[1000:])), y[1000:])['mA']
    assert ma > ma0 + 0.01
    np.testing.assert_allclose(cfar.CFAR.from_state(model.state()).logits(l[1000:]), model.logits(l[1000:]), atol=1e-6)


def test_phase2_identity_init_and_unspecified_mask():
    h = cfar.CFARHead(4)
    l = torch.randn(3, 4)
    torch.testing.assert_close(h(torch.randn(3, 4), l), l)
    y = np.full((64, 4), -1, np.int8); y[:, 0] = 1                 # only attribute 0 specified
    l = np.zeros((64, 4), np.float32)
    head, losses = cfar.train_phase2(np.zeros_like(l), l, y, epochs=20, lr=.1, ignore_unspecified=True)
    out = head(torch.zeros(1, 4), torch.zeros(1, 4))[0]
    assert out[0] > 1 and torch.allclose(out[1:], torch.zeros(3), atol=1e-6)   # masked attributes never trained
    with pytest.raises(KitError, match='shape'): cfar.train_phase2(l[:, :2], l, y)


def test_unspecified_labels_are_negatives_by_default_in_phase2():
    y = np.full((64, 2), -1, np.int8); y[:, 0] = 1
    l = np.zeros((64, 2), np.float32)
    head, _ = cfar.train_phase2(np.zeros_like(l), l, y, epochs=20, lr=.1)
    out = head(torch.zeros(1, 2), torch.zeros(1, 2))[0]
    assert out[0] > 1 and out[1] < -1                               # read as negatives ([15], CAM-PAR's rule)


def test_als_runs_until_the_eq18_objective_converges():
    "Issue 16: ALS stops when the relative change of Eq. 18 falls under tol, and records the sweeps."
    r = expit(3 * np.random.default_rng(3).normal(size=(200, 10)))
    tol = 1e-4
    lf = cf.fit_latent_factors(r, 4, .1, 10., .5, iterations=2000, num_threads=1, tol=tol)
    o = lf.objectives
    assert lf.converged and lf.sweeps == len(o) < 2000
    assert abs(o[-2] - o[-1]) <= tol * o[-2] and abs(o[-3] - o[-2]) > tol * o[-3]   # stopped at the first sweep under tol
    assert lf.objective == pytest.approx(o[-1], rel=1e-9)
    fixed = cf.fit_latent_factors(r, 4, .1, 10., .5, iterations=15, num_threads=1)
    assert lf.objective < fixed.objective and fixed.converged is None and fixed.sweeps == 15
    with pytest.warns(UserWarning, match='als_max_iterations'):
        short = cf.fit_latent_factors(r, 4, .1, 10., .5, iterations=3, num_threads=1, tol=1e-12)
    assert (short.sweeps, short.converged) == (3, False)


def test_fit_cfar_records_sweeps():
    l, y = cfar.synthetic_phase1(300, 6, 3, seed=0)
    m = cfar.fit_cfar(l, y, cfar.CFARConfig(num_threads=1, epochs=2, tol=1e-3, iterations=500, n_prototypes=4))
    assert m.info['als_converged'] and 1 < m.info['als_sweeps'] == len(m.info['als_objectives'])


def test_cfar_predictor_equals_the_numpy_path_and_survives_a_weights_only_load(tmp_path):
    from har_kit.campar import campar_variant
    l, y = cfar.synthetic_phase1(300, 5, 3, seed=0)
    fitted = cfar.fit_cfar(l, y, cfar.CFARConfig(num_threads=1, epochs=3, n_prototypes=4, tol=None, iterations=15))
    phase1 = campar_variant('campar', 5, arch='resnet-tiny').eval()
    x = torch.randn(4, 3, 64, 48)
    with torch.no_grad(): ls = phase1(x)['logits_specific'].numpy()
    torch.save(cfar.cfar_extra(fitted), tmp_path/'extra.pt')
    pred = cfar.cfar_predictor(phase1, torch.load(tmp_path/'extra.pt', weights_only=True), {})
    with torch.no_grad(): out = pred(x)
    np.testing.assert_allclose(out['logits'].numpy(), fitted.logits(ls), atol=1e-5)
    np.testing.assert_allclose(out['logits_specific'].numpy(), ls, atol=0)


def test_cfar_model_file_loads_as_one_predictor_and_exports(tmp_path):
    "A CFAR variant's model.pt (phase 1 + extra['cfar']) comes back through load_model and exports to TorchScript."
    from har_kit.model_file import load_model
    from har_kit.export import export_model
    _, fitted, phase1 = write_cfar_model(tmp_path/'campar_cfar'/'model.pt')
    lm = load_model(tmp_path, 'campar_cfar')
    assert isinstance(lm.model, cfar.CFARPredictor)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        np.testing.assert_allclose(lm.model(x)['logits'].numpy(), fitted.logits(phase1(x)['logits_specific'].numpy()), atol=1e-5)
    rep = export_model(lm, tmp_path/'cfar.ts', 'torchscript')
    assert rep['max_abs_diff'] is not None and rep['max_abs_diff'] < 1e-4


def test_a_cfar_model_file_loaded_onto_a_device_moves_as_one_predictor(tmp_path, monkeypatch):
    "With `map_location` a device, the CFAR state (loaded there too) is read, and the whole predictor moves, buffers included."
    from har_kit.model_file import load_model
    write_cfar_model(tmp_path/'campar_cfar'/'model.pt')
    st = torch.load(tmp_path/'campar_cfar'/'model.pt', weights_only=True)['extra']['cfar']
    # a tensor with grad stands in for a CUDA one: `.numpy()` refuses both; what the state is read with must not
    cfar.CFAR.from_state({k: v.clone().requires_grad_(True) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in st.items()})
    moved, to = [], torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, 'to', lambda self, *a, **k: moved.append(type(self).__name__) or to(self, *a, **k))
    assert isinstance(load_model(tmp_path, 'campar_cfar', map_location=torch.device('cpu')).model, cfar.CFARPredictor)
    assert moved == ['CFARPredictor'], moved   # not phase 1 alone, with the CFAR's buffers left behind


def test_phase2_does_not_resume_over_another_phase1(tmp_path):
    "fc_2's checkpoints name the phase 1 (weights) and labels they trained over: a replaced phase 1 is refused, the same one resumes."
    import types
    from har_kit.campar import campar_variant
    from har_kit.model_file import train_variant
    class Data:
        attributes = list('abcde')
        def split(self, n): return [types.SimpleNamespace(meta={}) for _ in range(40)]
    l, y = cfar.synthetic_phase1(240, 5, 3, seed=0)
    outs = {'train': dict(l_specific=l[:200], labels=y[:200]), 'test': dict(l_specific=l[200:], labels=y[200:])}
    cfg = cfar.CFARRunConfig(phase1_variant='campar', variants=['campar', 'campar_cfar'], phase2_epochs=1, als_max_iterations=5, als_tol=0.5, num_threads=1)
    phase1 = lambda seed: (torch.manual_seed(seed), campar_variant('campar', 5, arch='resnet-tiny'))[1]
    train_variant(cfar.CFARRecipe(cfg, Data(), phase1(0), outs, (64, 48)), 'campar_cfar', tmp_path)
    train_variant(cfar.CFARRecipe(cfg, Data(), phase1(0), outs, (64, 48)), 'campar_cfar', tmp_path)   # the same: resumes
    with pytest.raises(KitError, match='phase1'):
        train_variant(cfar.CFARRecipe(cfg, Data(), phase1(1), outs, (64, 48)), 'campar_cfar', tmp_path)
    other = {**outs, 'train': dict(outs['train'], labels=1 - outs['train']['labels'])}
    with pytest.raises(KitError, match='phase1'):
        train_variant(cfar.CFARRecipe(cfg, Data(), phase1(0), other, (64, 48)), 'campar_cfar', tmp_path)


def test_a_cfar_saved_before_loss2_was_weighted_reads_as_unweighted():
    "A model file's CFAR state without `sample_weighting` was trained with Eq. 13's plain BCE: it must not read as weighted."
    l, y = cfar.synthetic_phase1(300, 6, 3, seed=0)
    st = cfar.fit_cfar(l, y, cfar.CFARConfig(num_threads=1, iterations=3, tol=None, epochs=1, n_prototypes=4)).state()
    assert cfar.CFAR.from_state(st).config.sample_weighting is True
    old = {**st, 'config': {k: v for k, v in st['config'].items() if k != 'sample_weighting'}}
    assert cfar.CFAR.from_state(old).config.sample_weighting is False


def test_phase1_run_must_have_trained_on_the_data_scored(tmp_path):
    "A phase-1 CAM-PAR run of another RAP partition, dataset folder, dataset or input size is refused (its training images could be in the test split)."
    from har_kit.cfar import check_phase1_run
    from har_kit.core import save_json
    run, root = tmp_path/'campar', tmp_path/'RAP'
    save_json({'_meta': dict(dataset='rap', data_root=str(root), partition=0, scale=1.0, profile='quick')}, run/'metrics.json')
    check_phase1_run(run, dataset='rap', data_root=str(tmp_path/'x'/'..'/'RAP'), partition=0, scale=1.0)   # the same folder, spelled otherwise
    for kw, msg in ((dict(partition=3), 'partition 0 there, 3 here'), (dict(data_root=str(tmp_path/'RAP2')), 'data_root'),
                    (dict(scale=0.5), 'scale 1.0 there, 0.5 here'), (dict(dataset='pa100k'), "dataset 'rap' there")):
        with pytest.raises(KitError, match=msg): check_phase1_run(run, **{**dict(dataset='rap', data_root=str(root), partition=0, scale=1.0), **kw})
    with pytest.raises(KitError, match='no metrics.json'): check_phase1_run(tmp_path/'missing', dataset='rap')
    with pytest.raises(KitError, match=f"the real dataset at {root} there, the synthetic set \\(profile 'tiny'\\) here"):
        check_phase1_run(run, dataset='rap', profile='tiny')
    save_json({'variants': ['baseline']}, run/'metrics.json')
    with pytest.raises(KitError, match='records no `_meta`'): check_phase1_run(run, dataset='rap')


def test_a_real_data_phase1_run_asks_for_its_data_root_not_a_profile(tmp_path):
    "A CAM-PAR run that read a real dataset (profile 'real' recorded) refused for a CFAR run on the synthetic set: the fix offered is its data_root, which then passes."
    from har_kit.cfar import check_phase1_run
    from har_kit.core import save_json
    run, root = tmp_path/'campar', tmp_path/'pa100k'
    save_json({'_meta': dict(dataset='pa100k', profile='real', data_root=str(root), partition=None, scale=0.25,
                             unspecified='negative in loss and metric (WIDER mAP: ignored, its protocol)')}, run/'metrics.json')
    with pytest.raises(KitError) as e: check_phase1_run(run, dataset='pa100k', scale=0.25, profile='tiny', ignore_unspecified=False)
    msg = str(e.value)
    assert f'the real dataset at {root} there' in msg and f"score that run's data: -p data_root {root}" in msg, msg
    assert '-p profile' not in msg and 'partition' not in msg.split("data: ")[-1], msg   # profile 'real' is no profile a run takes
    check_phase1_run(run, dataset='pa100k', scale=0.25, data_root=str(root), ignore_unspecified=False)   # following the new one passes
    # the converse: a phase-1 run of the synthetic set, a real data_root here
    save_json({'_meta': dict(dataset='rap', profile='quick', data_root=None, partition=0, scale=0.25)}, run/'metrics.json')
    with pytest.raises(KitError, match=f"the synthetic set \\(profile 'quick'\\) there, the real dataset at {root} here.*"
                                       "-p data_root null -p profile quick"):
        check_phase1_run(run, dataset='rap', scale=0.25, data_root=str(root), partition=0)
    check_phase1_run(run, dataset='rap', scale=0.25, profile='quick')


@pytest.mark.parametrize('there, recorded', [(False, dict(unspecified='negative in loss and metric (WIDER mAP: ignored, its protocol)')),
                                             (True, dict(unspecified='ignored in loss and metric')),   # an earlier kit's run: its label
                                             (True, dict(ignore_unspecified=True, unspecified='ignored in loss and metric'))])
def test_phase1_run_of_another_ignore_unspecified_is_refused(tmp_path, there, recorded):
    "CFAR's phase-1 row and Loss_2 read unspecified labels by this run's ignore_unspecified: a CAM-PAR run trained with the other is refused, naming both and the fix."
    from har_kit.cfar import check_phase1_run
    from har_kit.core import save_json
    run = tmp_path/'campar'
    meta = dict(dataset='rap', profile='tiny', data_root=None, partition=0, scale=0.25)
    save_json({'_meta': {**meta, **recorded}}, run/'metrics.json')
    check_phase1_run(run, dataset='rap', scale=0.25, profile='tiny', ignore_unspecified=there)
    with pytest.raises(KitError, match=f'trained with ignore_unspecified={there} .*this run has ignore_unspecified={not there}: .*'
                                       f'pass -p ignore_unspecified {str(there).lower()}, or a CAM-PAR run trained with ignore_unspecified={not there}'):
        check_phase1_run(run, dataset='rap', scale=0.25, profile='tiny', ignore_unspecified=not there)
    save_json({'_meta': meta}, run/'metrics.json')   # nothing recorded: nothing to trust
    with pytest.raises(KitError, match='records no `unspecified`'): check_phase1_run(run, dataset='rap', ignore_unspecified=False)
    check_phase1_run(run, dataset='rap', scale=0.25)   # not asked: not compared


def test_phase1_run_of_another_sample_weighting_is_refused_and_an_unrecorded_one_is_the_default(tmp_path):
    "Loss_2 is phase 1's L: a CAM-PAR run trained with the other sample_weighting is refused; one that records none trained with the default (True)."
    from har_kit.cfar import check_phase1_run
    from har_kit.core import save_json
    run, meta = tmp_path/'campar', dict(dataset='rap', profile='tiny', data_root=None, partition=0, scale=0.25)
    save_json({'_meta': meta}, run/'metrics.json')
    check_phase1_run(run, dataset='rap', profile='tiny', sample_weighting=True)
    with pytest.raises(KitError, match='trained with sample_weighting=True .*default.*this run has sample_weighting=False.*-p sample_weighting true'):
        check_phase1_run(run, dataset='rap', profile='tiny', sample_weighting=False)
    save_json({'_meta': {**meta, 'sample_weighting': False}}, run/'metrics.json')
    check_phase1_run(run, dataset='rap', profile='tiny', sample_weighting=False)
    with pytest.raises(KitError, match='trained with sample_weighting=False .*-p sample_weighting false'):
        check_phase1_run(run, dataset='rap', profile='tiny', sample_weighting=True)


def test_phase1_selection_is_read_from_the_run_and_labels_every_row(tmp_path):
    "A phase 1 kept on test ([15]) makes every CFAR row a test-selected number: the record and the rows' labels say so."
    from har_kit.cfar import phase1_labels, phase1_selection
    from har_kit.core import save_json
    run = tmp_path/'campar'
    (run/'campar').mkdir(parents=True); (run/'campar'/'model.pt').touch(); (run/'baseline').mkdir(); (run/'baseline'/'model.pt').touch()
    label = "[15]: best test-split mA per epoch (selected on test, as [15]'s code)"
    save_json({'_meta': dict(selection=label, selection_mode='[15]', selected_on='test'),
               'campar': {'epoch': 3, 'extra': dict(selection='[15]', selected_on='test', selected_value=0.52)}}, run/'metrics.json')
    kept = phase1_selection(run, 'campar')
    assert kept == dict(selection=label, selection_mode='[15]', selected_on='test', epoch=3, selected_value=0.52)
    assert phase1_labels(kept) == dict(selection='[15]', selected_on='test', phase1_epoch=3)
    save_json({'_meta': dict(selection=label), 'campar': {'epoch': 3}}, run/'metrics.json')   # only the label: still [15]
    assert phase1_selection(run, 'campar')['selection_mode'] == '[15]'


def test_a_missing_phase1_variant_names_this_notebooks_parameter(tmp_path):
    from har_kit.cfar import phase1_selection
    run = tmp_path/'campar'
    for v in ('baseline', 'campar'): (run/v).mkdir(parents=True); (run/v/'model.pt').touch()
    with pytest.raises(KitError, match=r"has no campar_fusion/model.pt \(variants with a model there: \['baseline', 'campar'\]\): "
                                       'choose one with -p phase1_variant NAME') as e:
        phase1_selection(run, 'campar_fusion')
    assert '--variant' not in str(e.value)


def test_a_synthetic_rap_run_reads_and_checks_its_partition():
    "CFAR on the synthetic RAP set reads the partition asked and compares it with the phase-1 run's, as on a real root."
    from har_kit.cfar import CFARRunConfig
    c = CFARRunConfig(partition=2)
    assert c.phase1_expected() == dict(dataset='rap', scale=0.25, profile='tiny', partition=2, ignore_unspecified=False, sample_weighting=True)
    assert c.load_data().meta['partition'] == 2
    assert 'partition' not in CFARRunConfig(dataset='pa100k', variants=['campar_fusion']).phase1_expected()


@pytest.mark.parametrize('kw, msg', [(dict(phase1_variant='baseline', variants=['baseline', 'baseline_cfar', 'baseline_fc2']),
                                      "'baseline' has no CAM-specific logits"),
                                     (dict(train_splits=['train', 'test']), "includes 'test', the split this run scores")])
def test_a_cfar_config_refuses_what_its_run_would_fail_on(kw, msg):
    "Built in Python, as `har-kit run` builds it: refused before phase 1 is read or trained, naming the parameter."
    from har_kit.cfar import CFARRunConfig
    with pytest.raises(KitError, match=msg): CFARRunConfig(**kw)


def test_als_and_the_cfar_config_refuse_what_implicit_or_torch_would_choke_on():
    "Each value named before implicit's OpenMP (a negative thread count aborts the process) or torch sees it; one sweep with a tol warns."
    import warnings
    r = _grid_r()
    for threads in (None, 1.5):
        with pytest.raises(KitError, match="implicit's threads must be a whole number >= 0"): cf.fit_latent_factors(r, 3, num_threads=threads)
    for lam in (float('inf'), float('nan')):
        with pytest.raises(KitError, match='lambda of Eq. 18 must be a finite number'): cf.fit_latent_factors(r, 3, regularization=lam, num_threads=1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert cf.fit_latent_factors(r, 3, iterations=1, tol=1e-4, num_threads=1).converged is False   # not an IndexError
    assert any('after 1 sweep' in str(x.message) for x in w)
    for kw, msg in ((dict(num_threads=-1), "'num_threads': must be at least 0"), (dict(regularization=float('inf')), 'must be a finite number'),
                    (dict(batch_size=0), "'batch_size': must be at least 1"), (dict(init='zeros'), "'init'")):
        with pytest.raises(KitError, match=msg): cfar.CFARConfig(**kw)
    with pytest.raises(KitError, match="'regularization': must be a finite number"): cfar.CFARRunConfig(regularization=float('nan'))
    with pytest.raises(KitError, match=r'als_tol=None: use a relative change > 0 \(e.g. 1e-4\)$'): cfar.check_als_tol(None, none_ok=False)


def test_a_malformed_cfar_state_or_an_infinite_logit_is_named():
    "A state's 1-D or NaN arrays and an infinite phase-1 logit are refused by name, not met as an IndexError or a 'lower the learning rate'."
    l, y = cfar.synthetic_phase1(120, 5, 3, seed=0)
    fitted = cfar.fit_cfar(l, y, cfar.CFARConfig(num_threads=1, epochs=1, n_prototypes=3, tol=None, iterations=3))
    st = fitted.state()
    with pytest.raises(KitError, match='keys is a 1-d array'): cfar.CFAR.from_state({**st, 'keys': st['keys'][0]})
    with pytest.raises(KitError, match='non-finite values'): cfar.CFAR.from_state({**st, 'keys': st['keys'] * float('nan')})
    bad = l.copy(); bad[2, 1] = np.inf
    with pytest.raises(KitError, match=r'l_specific\[2, 1\] is inf'): fitted.logits(bad)
    with pytest.raises(KitError, match='phase-1 logits must be finite'): cfar.fit_cfar(bad, y, cfar.CFARConfig(num_threads=1, epochs=1, n_prototypes=3, tol=None, iterations=3))


def test_fitting_in_a_kernel_without_ipywidgets_says_nothing_of_ipywidgets():
    "implicit imports tqdm.auto, which warns 'IProgress not found ... update jupyter and ipywidgets' in a kernel: a run's log is not the place for it."
    import os, subprocess, sys
    code = ('import sys, types, warnings\n'
            'class ZMQInteractiveShell: pass\n'
            'ip = types.ModuleType("IPython"); ip.get_ipython = lambda: ZMQInteractiveShell()\n'
            'sys.modules["IPython"], sys.modules["ipykernel.zmqshell"] = ip, types.ModuleType("zmqshell")   # a Jupyter kernel, as tqdm.autonotebook sees one\n'
            'import tqdm.notebook; tqdm.notebook.IProgress = None   # ... without ipywidgets\n'
            'import numpy as np\n'
            'from tqdm import TqdmWarning\n'
            'from har_kit.cfar_factors import fit_latent_factors\n'
            'with warnings.catch_warnings(record=True) as w:\n'
            '    warnings.simplefilter("always")\n'
            '    fit_latent_factors(np.random.default_rng(0).random((20, 4)), factors=2, iterations=2, num_threads=1)\n'
            'print([str(x.message)[:60] for x in w if issubclass(x.category, TqdmWarning)])\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0 and r.stdout.strip() == '[]', (r.stdout, r.stderr[-2000:])


def test_a_scale_giving_a_tiny_input_is_refused_before_phase1(tmp_path):
    "CFAR's phase 1 is CAM-PAR at this scale: CAM-PAR's least input (33 px each way) is refused by CFAR's own config, naming "
    "scale (not phase1_params), with or without a campar_run."
    for kw in ({}, {'campar_run': str(tmp_path)}):
        with pytest.raises(KitError, match=r'^scale=0.05: the network input would be 13 x 10 px'): cfar.CFARRunConfig(scale=0.05, **kw)
    for ok in (0.1875, 0.25, 0.375, 1.0): cfar.CFARRunConfig(scale=ok)
