"""Tests of har_kit.data: the three real readers on hand-written files in the exact on-disk layouts (written here with
scipy.io.savemat / json, independently of the module's own writers), the Dataset contract, the transforms and the
real PA-100K sample when it is present."""
import json, os, shutil, warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image
from torchvision import tv_tensors

from har_kit.core import KitError, UNSPECIFIED
from har_kit import check as C, data as D, loading as L

from conftest import shared_path

SAMPLE = shared_path('data/pa100k-sample')   # conftest's helper: honours HAR_KIT_PA100K_SAMPLE


# ---------------------------------------------------------------- hand-written fixtures
def _img(path, h=32, w=16, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((h, w, 3), 90 if value is None else value, np.uint8)
    Image.fromarray(arr).save(path)

def _cell(strings, row=False):
    a = np.empty((1, len(strings)) if row else (len(strings), 1), dtype=object)
    a.ravel()[:] = list(strings)
    return a

def write_pa100k(root, n=(4, 2, 2), C=3, names_row=False, images=True, seed=0, **override):
    "PA-100K layout by hand: annotation.mat + data/*.jpg; `override` replaces/adds .mat fields (None deletes)."
    rng = np.random.default_rng(seed)
    root = Path(root); k = 0; md = {'attributes': _cell([f'attr{i}' for i in range(C)])}
    for sp, m in zip(('train', 'val', 'test'), n):
        names = [f'{k + i + 1:06d}.jpg' for i in range(m)]; k += m
        y = rng.integers(0, 2, (m, C)).astype(np.uint8); y[:, 0] = 1   # no all-zero rows
        md[f'{sp}_images_name'] = _cell(names, row=names_row); md[f'{sp}_label'] = y
        if images:
            for nm in names: _img(root/'data'/nm)
    for key, v in override.items():
        if v is None: md.pop(key)
        else: md[key] = v
    root.mkdir(parents=True, exist_ok=True)
    sio.savemat(root/'annotation.mat', md)
    return root, md

def write_rap(root, N=10, C=92, partion_shape=(1, 5), struct_array=False, images=True, seed=0, **override):
    "RAP v1 layout by hand: RAP_annotation.mat (struct of cells, 5 partitions of 1-based indices) + RAP_dataset/."
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = [f'CAM01_2014-02-15_{i:04d}.png' for i in range(N)]
    y = rng.integers(0, 2, (N, C)).astype(float); y[:, 1] = 1; y[0, 0] = 2   # one 'uncertain' gender
    parts = []
    for p in range(5):
        perm = rng.permutation(N)
        parts.append({'train_index': (np.sort(perm[:N - 3]) + 1.)[None], 'test_index': (np.sort(perm[N - 3:]) + 1.)[None]})
    if struct_array:
        dt = [('train_index', object), ('test_index', object)]
        pa = np.empty(partion_shape, dtype=dt)
        for i, p in enumerate(parts): pa.ravel()[i] = (p['train_index'], p['test_index'])
    else:
        pa = np.empty(partion_shape, dtype=object)
        for i, p in enumerate(parts): pa.ravel()[i] = p
    st = {'imagesname': _cell(names), 'label': y, 'attribute_eng': _cell([f'a{i}' for i in range(C)]), 'partion': pa}
    for key, v in override.items():
        if v is None: st.pop(key)
        else: st[key] = v
    root.mkdir(parents=True, exist_ok=True)
    sio.savemat(root/'RAP_annotation.mat', {'RAP_annotation': st})
    if images:
        for nm in names: _img(root/'RAP_dataset'/nm)
    return root, names, y, parts

ATTRS14 = ['Male', 'longHair', 'sunglass', 'Hat', 'Tshiirt', 'longSleeve', 'formal', 'shorts', 'jeans', 'longPants',
           'skirt', 'faceMask', 'logo', 'stripe']

def write_wider(root, images=True, trainval=None, test=None):
    "WIDER-Attribute layout by hand: two JSON files + Image/<split>/<scene>/<name>.jpg (64 x 96 scenes)."
    root = Path(root)
    a = [1, -1, 0] + [1] * 11
    trainval = trainval if trainval is not None else [
        {'file_name': 'train/0--Parade/0_Parade_1.jpg', 'scene_id': 0,
         'targets': [{'attribute': a, 'bbox': [10, 5, 20, 40]}, {'attribute': [-1] * 14, 'bbox': [80, 30, 30, 50]}]},
        {'file_name': 'val/0--Parade/0_Parade_2.jpg', 'scene_id': 0, 'targets': [{'attribute': [1] * 14, 'bbox': [0, 0, 10, 10]}]}]
    test = test if test is not None else [
        {'file_name': 'test/1--Handshaking/1_H_3.jpg', 'scene_id': 1, 'targets': [{'attribute': [-1] * 14, 'bbox': [5.5, 4.2, 20, 30]}]}]
    head = {'attribute_id_map': {str(i): n for i, n in enumerate(ATTRS14)}, 'scene_id_map': {'0': 'Parade', '1': 'Handshaking'}}
    root.mkdir(parents=True, exist_ok=True)
    (root/'wider_attribute_trainval.json').write_text(json.dumps({'images': trainval, **head}))
    (root/'wider_attribute_test.json').write_text(json.dumps({'images': test, **head}))
    if images:
        for im in trainval + test: _img(root/'Image'/im['file_name'], 64, 96)
    return root


# ---------------------------------------------------------------- PA-100K
@pytest.mark.parametrize('names_row', [False, True])
def test_pa100k_reads_both_cell_orientations(tmp_path, names_row):
    root, md = write_pa100k(tmp_path, names_row=names_row)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        data = D.read_pa100k(root)
    assert data.attributes == ['attr0', 'attr1', 'attr2']
    assert [len(data.split(s)) for s in ('train', 'val', 'test')] == [4, 2, 2]
    np.testing.assert_array_equal(data.labels('val'), md['val_label'])
    assert data.labels().dtype == np.int8
    assert data.split('test')[1].image == root/'data'/'000008.jpg'
    assert data.split('test')[1].box is None and data.split('test')[1].mask is None

def test_pa100k_char_matrix_and_double_labels(tmp_path):
    # a writer that stores names as a char matrix and labels as double must read the same
    root, md = write_pa100k(tmp_path, train_images_name=np.array(['000001.jpg', '000002.jpg', '000003.jpg', '000004.jpg']))
    md2 = sio.loadmat(root/'annotation.mat')
    sio.savemat(root/'annotation.mat', {**{k: v for k, v in md2.items() if not k.startswith('__')},
                                        'train_label': md['train_label'].astype(float)})
    data = D.read_pa100k(root)
    assert [s.meta['file_name'] for s in data.split('train')] == ['000001.jpg', '000002.jpg', '000003.jpg', '000004.jpg']
    np.testing.assert_array_equal(data.labels('train'), md['train_label'])

def test_pa100k_missing_root_and_file(tmp_path):
    with pytest.raises(KitError, match='HydraPlus-Net'): D.read_pa100k(tmp_path/'absent')
    with pytest.raises(KitError, match=r'no known pa100k layout found\. Looked for published: annotation/annotation\.mat.*Found: nothing'):
        D.read_pa100k(tmp_path)

def test_pa100k_missing_field_named(tmp_path):
    root, _ = write_pa100k(tmp_path, val_label=None)
    with pytest.raises(KitError, match='missing field.*val_label'): D.read_pa100k(root)

def test_pa100k_misspelled_field_hint(tmp_path):
    root, md = write_pa100k(tmp_path, test_images_name=None, text_images_name=_cell(['000007.jpg', '000008.jpg']))
    with pytest.raises(KitError, match=r"test_images_name.*unexpected field 'text_images_name' \(a misspelling of 'test_images_name'\?\)"):
        D.read_pa100k(root)

def test_pa100k_count_mismatch(tmp_path):
    root, _ = write_pa100k(tmp_path, train_label=np.ones((3, 3), np.uint8))
    with pytest.raises(KitError, match='train_images_name has 4 entries but train_label has 3 rows'): D.read_pa100k(root)

def test_pa100k_empty_name(tmp_path):
    names = _cell(['000007.jpg', '']); names[1, 0] = np.zeros((0, 0), np.uint8)
    root, _ = write_pa100k(tmp_path, test_images_name=names)
    with pytest.raises(KitError, match='test_images_name has 1 empty entry'): D.read_pa100k(root)

def test_pa100k_bad_label_value(tmp_path):
    y = np.ones((2, 3), np.uint8); y[1, 2] = 3
    root, _ = write_pa100k(tmp_path, val_label=y)
    with pytest.raises(KitError, match='val_label holds value 3 at row 2, column 3'): D.read_pa100k(root)

def test_pa100k_missing_images_listed(tmp_path):
    root, _ = write_pa100k(tmp_path)
    for nm in ('000002.jpg', '000005.jpg'): (root/'data'/nm).unlink()
    with pytest.raises(KitError, match=r'2 of 8 listed images are missing .*000002\.jpg, 000005\.jpg'): D.read_pa100k(root)
    assert len(D.read_pa100k(root, check_images=False)) == 8

def test_pa100k_warns_overlap_zero_row_unused(tmp_path):
    root, md = write_pa100k(tmp_path)
    y = md['train_label'].copy(); y[3] = 0
    names = _cell(['000001.jpg', '000002.jpg', '000003.jpg', '000005.jpg'])   # 000005 is also in val; 000004 unused
    write_pa100k(tmp_path, train_label=y, train_images_name=names)
    with pytest.warns(UserWarning) as rec: D.read_pa100k(root)
    msgs = ' | '.join(str(w.message) for w in rec)
    assert 'more than one split (e.g. 000005.jpg' in msgs
    assert '1 all-zero label rows' in msgs
    assert 'in no split (e.g. 000004.jpg)' in msgs


# ---------------------------------------------------------------- RAP v1
@pytest.mark.parametrize('shape,struct_array', [((1, 5), False), ((5, 1), False), ((1, 5), True)])
def test_rap_partitions_and_protocol(tmp_path, shape, struct_array):
    root, names, y, parts = write_rap(tmp_path, partion_shape=shape, struct_array=struct_array)
    data = D.read_rap(root, partition=3, uncertain='unspecified')
    assert data.splits == ['train', 'test']
    assert len(data.attributes) == 51 and data.attributes[-1] == 'a50'
    tr = (parts[3]['train_index'].ravel() - 1).astype(int)
    assert [s.meta['file_name'] for s in data.split('train')] == [names[i] for i in tr]
    expect = np.where(y[tr, :51] == 2, UNSPECIFIED, y[tr, :51]).astype(np.int8)
    np.testing.assert_array_equal(data.labels('train'), expect)
    assert data.meta['n_uncertain'] == 1
    assert len(D.read_rap(root, num_attributes=None).attributes) == 92

def test_rap_uncertain_switch(tmp_path):
    root, names, y, parts = write_rap(tmp_path)
    keep, neg = D.read_rap(root, uncertain='unspecified'), D.read_rap(root)   # default: [15]'s rule, 2 -> 0
    assert neg.meta['uncertain'] == 'negative' and keep.meta['uncertain'] == 'unspecified'
    np.testing.assert_array_equal(D.read_rap(root, unspecified='keep').labels(), keep.labels())   # WIDER's switch, accepted by the RAP reader too
    np.testing.assert_array_equal(D.read_rap(root, unspecified='negative').labels(), neg.labels())
    k = keep.labels() == UNSPECIFIED
    assert k.sum() == (y[np.concatenate([(parts[0][f'{s}_index'].ravel() - 1).astype(int) for s in ('train', 'test')]), :51] == 2).sum() >= 1
    assert (neg.labels()[k] == 0).all() and (neg.labels()[~k] == keep.labels()[~k]).all()

def test_rap_errors(tmp_path):
    root, *_ = write_rap(tmp_path/'a')
    with pytest.raises(KitError, match=r'partition=5 .* use 0\.\.4'): D.read_rap(root, partition=5)
    with pytest.raises(KitError, match='num_attributes=93'): D.read_rap(root, num_attributes=93)
    root, *_ = write_rap(tmp_path/'b', label=np.zeros((9, 92)))
    with pytest.raises(KitError, match='label is 9 x 92 but imagesname has 10'): D.read_rap(root)
    root, *_ = write_rap(tmp_path/'c', partion=None)
    with pytest.raises(KitError, match='neither partion nor partition'): D.read_rap(root)
    root, *_ = write_rap(tmp_path/'d', attribute_eng=None)
    with pytest.raises(KitError, match="no field 'attribute_eng'"): D.read_rap(root)
    bad = np.empty((1, 5), dtype=object)
    for i in range(5): bad[0, i] = {'train_index': np.array([[0., 1.]]), 'test_index': np.array([[2.]])}
    root, *_ = write_rap(tmp_path/'e', partion=bad)
    with pytest.raises(KitError, match='1-based'): D.read_rap(root)
    (tmp_path/'f'/'RAP_dataset').mkdir(parents=True); sio.savemat(tmp_path/'f'/'RAP_annotation.mat', {'other': np.ones(2)})
    with pytest.raises(KitError, match='no variable RAP_annotation'): D.read_rap(tmp_path/'f')
    with pytest.raises(KitError, match='rap.idealtest.org'): D.read_rap(tmp_path/'absent')

def test_mat_v73_refused(tmp_path):
    (tmp_path/'data').mkdir(); (tmp_path/'annotation.mat').write_bytes(b'MATLAB 7.3 MAT-file, HDF5 schema 1.00 .'.ljust(116) + bytes(8) + b'\x00\x02IM' + bytes(512))
    with pytest.raises(KitError, match='v7.3'): D.read_pa100k(tmp_path)
    (tmp_path/'annotation.mat').write_bytes(b'\x89HDF\r\n\x1a\n' + bytes(600))   # h5py's, no MATLAB header: was 'Unknown mat file type'
    with pytest.raises(KitError, match=r'an HDF5 file \(MATLAB v7.3, or written by h5py\).*GNU Octave'): D.read_pa100k(tmp_path)


# ---------------------------------------------------------------- WIDER-Attribute
def test_wider_reads_targets_and_labels(tmp_path):
    root = write_wider(tmp_path)
    data = D.read_wider(root)
    assert len(data.attributes) == 14 and data.attributes[4] == 'Tshiirt'
    assert data.splits == ['train', 'val', 'test'] and len(data) == 4
    s = data.split('train')[0]
    assert s.box == (10., 5., 20., 40.) and s.meta['target'] == 0 and s.meta['scene'] == 'Parade'
    assert s.image == root/'Image'/'train'/'0--Parade'/'0_Parade_1.jpg'
    assert list(s.labels[:3]) == [1, 0, UNSPECIFIED]
    neg = D.read_wider(root, unspecified='negative')
    assert list(neg.split('train')[0].labels[:3]) == [1, 0, 0] and neg.meta['unspecified'] == 'negative'

@pytest.mark.parametrize('target,match', [
    ({'attribute': [1] * 13, 'bbox': [0, 0, 5, 5]}, r'images\[0\]\.targets\[0\]\.attribute must be 14 values'),
    ({'attribute': [2] + [1] * 13, 'bbox': [0, 0, 5, 5]}, r'attribute must be 14 values in \{1, -1, 0\}'),
    ({'attribute': [1] * 14, 'bbox': [0, 0, 5]}, r'bbox must be \[x, y, w, h\]'),
])
def test_wider_bad_targets(tmp_path, target, match):
    root = write_wider(tmp_path, trainval=[{'file_name': 'train/0--P/x.jpg', 'scene_id': 0, 'targets': [target]}])
    with pytest.raises(KitError, match=match): D.read_wider(root)

def test_wider_other_errors_and_warnings(tmp_path):
    with pytest.raises(KitError, match='WIDERAttribute'): D.read_wider(tmp_path/'absent')
    root = write_wider(tmp_path/'a', trainval=[{'file_name': 'other/x.jpg', 'scene_id': 0, 'targets': []}])
    with pytest.raises(KitError, match='must start with train/, val/ or test/'): D.read_wider(root)
    root = write_wider(tmp_path/'b'); (root/'wider_attribute_test.json').unlink()
    with pytest.raises(KitError, match=r'no known wider layout found.*Found: Image/, wider_attribute_trainval\.json'): D.read_wider(root)
    root = write_wider(tmp_path/'c', trainval=[{'file_name': 'train/0--P/x.jpg', 'scene_id': 0, 'targets': [
        {'attribute': [0] * 14, 'bbox': [0, 0, 5, 5]}, {'attribute': [1] * 14, 'bbox': [0, 0, 0, 5]}]}])
    with pytest.warns(UserWarning) as rec: data = D.read_wider(root)
    msgs = ' | '.join(str(w.message) for w in rec)
    assert 'dropped 1 target(s)' in msgs and 'every attribute unspecified' in msgs
    assert len(data.split('train')) == 1 and data.meta['dropped_boxes'] == 1

def test_wider_box_outside_its_scene_dropped_with_a_warning(tmp_path, monkeypatch):
    "A box with size but wholly outside its 96 x 64 scene is dropped and counted as a box without area is (the loaders' crop refuses it); with check_images=False it is kept."
    root = write_wider(tmp_path, trainval=[{'file_name': 'train/0--P/x.jpg', 'scene_id': 0, 'targets': [
        {'attribute': [1] * 14, 'bbox': [10, 5, 20, 40]}, {'attribute': [1] * 14, 'bbox': [200, 10, 30, 40]},
        {'attribute': [1] * 14, 'bbox': [0, 0, 0, 5]}, {'attribute': [-1] * 14, 'bbox': [90, 60, 30, 40]}]}])  # the last is cut at the edge: kept
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, 'open', lambda f, *a, **k: opened.append(Path(f).name) or real_open(f, *a, **k))
    with pytest.warns(UserWarning) as rec: data = D.read_wider(root, mask_dir=False)
    msgs = ' | '.join(str(w.message) for w in rec)
    assert 'dropped 1 target(s) whose bbox lies wholly outside its image (first: train/0--P/x.jpg target 1, bbox [200.0, 10.0, 30.0, 40.0]' in msgs
    assert 'dropped 1 target(s) whose bbox has zero' in msgs
    assert [s.meta['target'] for s in data.split('train')] == [0, 3] and data.meta['dropped_boxes'] == 2
    assert opened.count('x.jpg') == 1   # one header read per scene, not per target
    ds = L.HarDataset(data.samples, L.dahar_transforms(False, scale=0.25))
    assert all(ds[i]['labels'].shape == (14,) for i in range(len(ds)))   # every sample kept loads
    assert [s.meta['target'] for s in D.read_wider(root, mask_dir=False, check_images=False).split('train')] == [0, 1, 3]


# ---------------------------------------------------------------- masks, Dataset, transforms, loaders
def test_masks_found_and_cropped_with_clipped_box(tmp_path):
    root = write_wider(tmp_path)
    m = np.zeros((64, 96), np.uint8); m[10:20, 12:18] = 255
    D.mask_path(root/'masks', 'train/0--Parade/0_Parade_1.jpg', 0).parent.mkdir(parents=True)
    Image.fromarray(m).save(D.mask_path(root/'masks', 'train/0--Parade/0_Parade_1.jpg', 0))
    Image.fromarray(m).save(D.mask_path(root/'masks', 'train/0--Parade/0_Parade_1.jpg', 1))
    assert D.mask_path(root/'masks', 'train/0--Parade/0_Parade_1.jpg', 1) == root/'masks'/'train'/'0--Parade'/'0_Parade_1_1.png'
    with pytest.warns(UserWarning, match='2 of 4 samples have no mask'): data = D.read_wider(root)
    tr = data.split('train')
    ds = L.HarDataset(tr, with_mask=True)
    it = ds[0]
    assert it['image'].shape == (3, 40, 20) and it['mask'].shape == (1, 40, 20)
    assert it['mask'].sum().item() == 10 * 6 and it['mask'][0, 5, 2].item() == 1.0   # mask moved with the crop (x-10, y-5)
    assert it['labels'].dtype == torch.float32 and it['labels'][2].item() == -1
    it1 = ds[1]                                                 # box [80, 30, 30, 50] clipped to the 96 x 64 scene
    assert it1['image'].shape == (3, 34, 16) and it1['index'] == 1
    with pytest.raises(KitError, match='have no mask'): L.HarDataset(data.samples, with_mask=True)
    assert D.read_wider(root, mask_dir=False).samples[0].mask is None

def test_dataset_full_scene_with_box(tmp_path):
    data = D.read_wider(write_wider(tmp_path))
    it = L.HarDataset(data.split('test'), L.dahar_transforms(False, scale=0.25), crop_to_box=False, with_box=True)[0]
    assert it['image'].shape == (3, 64, 64)
    torch.testing.assert_close(it['box'], torch.tensor([5 * 64 / 96, 4 * 64 / 64, 26 * 64 / 96, 35 * 64 / 64]))
    with pytest.raises(KitError, match='crop_to_box=False'): L.HarDataset(data.samples, with_box=True)

def test_box_outside_image(tmp_path):
    root = write_wider(tmp_path, trainval=[{'file_name': 'train/0--P/x.jpg', 'scene_id': 0,
                                            'targets': [{'attribute': [1] * 14, 'bbox': [200, 0, 5, 5]}]}])
    with pytest.raises(KitError, match='outside the 96x64 image'): L.HarDataset(D.read_wider(root, check_images=False))[0]   # the reader drops it when it checks images

@pytest.mark.parametrize('tf,shape', [
    (lambda: L.dahar_transforms(True), (3, 224, 224)),
    (lambda: L.dahar_transforms(False), (3, 256, 256)),
    (lambda: L.dahar_transforms(False, five_crop=True), (5, 3, 224, 224)),
    (lambda: L.dahar_transforms(True, aspect=2), (3, 224, 112)),
    (lambda: L.dahar_transforms(False, aspect=2), (3, 256, 128)),
    (lambda: L.campar_transforms(True), (3, 256, 192)),
    (lambda: L.campar_transforms(False), (3, 256, 192)),
    (lambda: L.dahar_transforms(True, scale=0.25), (3, 56, 56)),
    (lambda: L.dahar_transforms(False, scale=0.25), (3, 64, 64)),
    (lambda: L.campar_transforms(False, scale=0.25), (3, 64, 48)),
])
def test_transform_shapes(tf, shape):
    img = tv_tensors.Image(torch.randint(0, 256, (3, 150, 70), dtype=torch.uint8))
    out, mask = tf()(img, tv_tensors.Mask(torch.zeros(1, 150, 70, dtype=torch.uint8)))
    assert tuple(out.shape) == shape and out.dtype == torch.float32
    assert tuple(mask.shape) == shape[:-3] + (1,) + shape[-2:] and mask.dtype == torch.uint8

def test_eval_normalises_with_imagenet_stats():
    white = tv_tensors.Image(torch.full((3, 20, 20), 255, dtype=torch.uint8))
    out = L.campar_transforms(False, scale=0.1)(white)
    torch.testing.assert_close(out[:, 0, 0], (1 - torch.tensor(L.IMAGENET_MEAN)) / torch.tensor(L.IMAGENET_STD))

def test_five_crop_corners_and_centre():
    x = tv_tensors.Image(torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16).repeat(1, 3, 1, 1)[0])
    st = L.FiveCropStack((4, 4))(x)
    assert st.shape == (5, 3, 4, 4)
    assert [st[k, 0, 0, 0].item() for k in range(5)] == [0, 12, 12 * 16, 12 * 16 + 12, 6 * 16 + 6]

@pytest.mark.parametrize('make', [lambda: L.dahar_transforms(True, scale=0.5, jitter=0), lambda: L.dahar_transforms(True, aspect=2, scale=0.5, jitter=0),
                                  lambda: L.campar_transforms(True, scale=0.5)])
def test_mask_follows_image(make):
    sq = torch.zeros(1, 90, 60, dtype=torch.uint8); sq[:, 5:40, 10:30] = 255
    torch.manual_seed(0)
    tf = make()
    for _ in range(20):
        o, m = tf(tv_tensors.Image(sq.repeat(3, 1, 1)), tv_tensors.Mask(sq))
        agree = ((o[0] > 0) == (m[0] > 127)).float().mean().item()
        assert agree > 0.95, agree

def test_corner_centre_crop_sizes_and_positions():
    torch.manual_seed(0)
    cc = L.CornerCenterCrop([20, 10], aspect=2)
    seen, sizes = set(), set()
    for _ in range(200):
        p = cc.make_params([tv_tensors.Image(torch.zeros(3, 20, 10))])
        sizes.add((p['height'], p['width']))   # height from the set, width independently from the set / aspect (the paper's jitter)
        seen.add((p['top'], p['left'], p['height']))
    assert sizes == {(20, 10), (10, 5), (20, 5), (10, 10)}
    assert {(0, 0, 10), (0, 5, 10), (10, 0, 10), (10, 5, 10), (5, 2, 10), (0, 0, 20)} <= seen

def test_make_loader_batches_and_seeded_order(tmp_path):
    root, _ = write_pa100k(tmp_path, n=(6, 2, 2))
    data = D.read_pa100k(root)
    dl = L.make_loader(data.split('train'), L.campar_transforms(True, scale=0.25), batch_size=4, shuffle=True, seed=3)
    b = next(iter(dl))
    assert b['image'].shape == (4, 3, 64, 48) and b['labels'].shape == (4, 3) and b['index'].shape == (4,)
    order = lambda s: torch.cat([b['index'] for b in L.make_loader(data.samples, L.campar_transforms(False, scale=0.1), 3, True, seed=s)]).tolist()
    assert order(1) == order(1) and sorted(order(1)) == list(range(10)) and order(1) != order(2)
    with pytest.raises(KitError, match='no samples'): L.make_loader([], None, 2, False)

def test_load_dataset_with_root_and_kind_check(tmp_path):
    root, _ = write_pa100k(tmp_path)
    assert len(D.load_dataset('pa100k', root)) == 8
    with pytest.raises(KitError, match="kind='peta'"): D.load_dataset('peta', root)


# ---------------------------------------------------------------- the synthetic generator writes what the readers read
def test_synthetic_sets_read_back(tmp_path):
    from har_kit import synth
    for kind in ('wider', 'rap', 'pa100k'):
        root = synth.make_synthetic(kind, tmp_path/kind, n=10, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            data = D.dataset_reader(kind)(root)
        assert len(data) >= 10 and all(s.mask is not None for s in data.samples)
        assert all('distractors' in s.meta for s in data.samples)
        it = L.HarDataset(data, L.dahar_transforms(False, aspect=2 if kind == 'rap' else 1, scale=0.25), with_mask=True)[0]
        assert it['mask'].shape[-2:] == it['image'].shape[-2:] and 0 < it['mask'].mean() < 1

def test_load_dataset_synthetic_default(tmp_path, monkeypatch):
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        data = D.load_dataset('pa100k')
    assert data.splits == ['train', 'val', 'test'] and str(data.root).startswith(str(tmp_path))


# ---------------------------------------------------------------- the real PA-100K sample
real = pytest.mark.shared('data/pa100k-sample/annotation.mat')

@real
def test_real_pa100k_sample():
    with pytest.warns(UserWarning) as rec: data = D.read_pa100k(SAMPLE)
    msgs = ' | '.join(str(w.message) for w in rec)
    assert [len(data.split(s)) for s in ('train', 'val', 'test')] == [1600, 200, 200]
    assert len(data.attributes) == 26 and data.attributes[0] == 'Female'
    assert "001600.jpg in ['train', 'val']" in msgs and '1 all-zero label rows' in msgs and '002000.jpg' in msgs
    assert data.split('train')[0].meta['file_name'] == '000001.jpg' and data.split('test')[0].meta['file_name'] == '001800.jpg'
    assert set(np.unique(data.labels())) == {0, 1}
    it = L.HarDataset(data.split('val')[:2], L.campar_transforms(False, scale=0.25))[1]
    assert it['image'].shape == (3, 64, 48)

@real
def test_the_commands_show_a_datasets_warnings_once(tmp_path, monkeypatch, capsys):
    "Inside `data_warnings_once` (every har-kit command but `data`): three plain lines the first time, nothing after."
    from har_kit.core import data_warnings_once
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path))
    with data_warnings_once():
        D.read_pa100k(SAMPLE); first = capsys.readouterr().err
        D.read_pa100k(SAMPLE); second = capsys.readouterr().err
    assert first.count('warning: ') == 3 and "001600.jpg in ['train', 'val']" in first and second == '', (first, second)
    assert len(list((tmp_path/'shown-warnings').iterdir())) == 3
    with pytest.warns(D.DataWarning): D.read_pa100k(SAMPLE)   # outside the commands: every time


@real
def test_real_pa100k_malformed_rejected():
    with pytest.raises(KitError, match=r"annotation_malformed\.mat: test_images_name has 1 empty entry \(first at position 1\).*text_images_name"):
        D.read_pa100k(SAMPLE, annotation='annotation_malformed.mat')


# ---------------------------------------------------------------- the generic csv kind and `har-kit data check`
def test_convert_keeps_scenes_with_one_stem_apart_and_copies(tmp_path):
    "Two scene files with one stem (x.jpg, x.png) give two crops, each with its own scene's pixels and labels; images are copied."
    from PIL import Image
    (tmp_path/'s').mkdir()
    for name, colour in (('x.jpg', (250, 0, 0)), ('x.png', (0, 0, 250))): Image.new('RGB', (20, 30), colour).save(tmp_path/'s'/name)
    lab = lambda v: np.array([v, 1 - v], np.int8)
    samples = [D.Sample(tmp_path/'s'/n, lab(v), 'train', box=(2, 2, 10, 10), meta=dict(file_name=n, target=0)) for n, v in (('x.jpg', 1), ('x.png', 0))]
    samples.append(D.Sample(tmp_path/'s'/'x.png', lab(1), 'test', meta=dict(file_name='x.png')))
    data = D.AttributeData('wider', tmp_path/'s', ['a', 'b'], samples, meta={})
    out = C.to_csv_dataset(data, tmp_path/'out', masks=False, progress=False)
    back = D.read_csv_dataset(out, check_images=False)
    names = [s.meta.get('file_name', s.image.name) for s in back.samples]
    assert len(set(map(str, (s.image for s in back.samples)))) == 3, names
    red = [np.asarray(Image.open(s.image))[..., 0].mean() > 200 for s in back.samples]
    assert red == [True, False, False] and back.labels()[:, 0].tolist() == [1, 0, 1]
    assert os.stat(tmp_path/'s'/'x.png').st_nlink == 1
    assert C.cli(['convert', 'wider', str(tmp_path/'nowhere'), str(tmp_path/'o2'), '--link']) == 2



def test_convert_gives_its_folder_the_umask_mode_without_setting_the_umask(tmp_path, monkeypatch):
    "The converted dataset's folder read the umask by setting it to 0 for a moment (another thread's new files world-writable meanwhile)."
    import stat
    (tmp_path/'s').mkdir(); Image.new('RGB', (20, 30)).save(tmp_path/'s'/'x.png')
    data = D.AttributeData('wider', tmp_path/'s', ['a', 'b'], [D.Sample(tmp_path/'s'/'x.png', np.array([1, 0], np.int8), 'train',
                                                                       meta=dict(file_name='x.png'))], meta={})
    was = os.umask(0o027)
    try:
        def umask(m): raise AssertionError(f'os.umask({m:#o}) called')
        monkeypatch.setattr(os, 'umask', umask)
        out = C.to_csv_dataset(data, tmp_path/'out', masks=False, progress=False)
    finally: monkeypatch.undo(); os.umask(was)
    assert oct(stat.S_IMODE(os.stat(out).st_mode)) == oct(0o750)

@pytest.mark.parametrize('names', [('x.jpg', 'x.JPG'), ('x.jpg', 'x.png', 'x_jpg.jpg')])
def test_convert_gives_each_scene_crops_of_its_own(tmp_path, names):
    "Scenes whose crop names met before (x.jpg and x.JPG, the suffix lower-cased; x_jpg.jpg beside x.jpg and x.png): each target's crop holds its own scene's pixels."
    from PIL import Image
    (tmp_path/'s').mkdir()
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)][:len(names)]
    for name, colour in zip(names, colours): Image.new('RGB', (20, 30), colour).save(tmp_path/'s'/name, format='PNG')
    samples = [D.Sample(tmp_path/'s'/n, np.array([1, 0], np.int8), 'train', box=(2, 2, 10, 10), meta=dict(file_name=n, target=0)) for n in names]
    out = C.to_csv_dataset(D.AttributeData('wider', tmp_path/'s', ['a', 'b'], samples, meta={}), tmp_path/'out', masks=False, progress=False)
    back = D.read_csv_dataset(out, check_images=False, mask_dir=False)
    crops = [s.meta['file_name'] for s in back.samples]
    assert len({c.casefold() for c in crops}) == len(names), crops
    assert [tuple(np.asarray(Image.open(s.image))[0, 0]) for s in back.samples] == colours, crops

def test_convert_refuses_two_pictures_under_one_name(tmp_path):
    "A file without a box named as another scene's crop would be: refused, naming both, before anything is written."
    (tmp_path/'s').mkdir()
    for n in ('x.jpg', 'x_t0.png'): Image.new('RGB', (20, 30)).save(tmp_path/'s'/n)
    samples = [D.Sample(tmp_path/'s'/'x.jpg', np.array([1, 0], np.int8), 'train', box=(2, 2, 10, 10), meta=dict(file_name='x.jpg', target=0)),
               D.Sample(tmp_path/'s'/'x_t0.png', np.array([1, 0], np.int8), 'test', meta=dict(file_name='x_t0.png'))]
    with pytest.raises(KitError, match=r'x_t0\.png: the converted dataset would hold both x\.jpg target 0 and x_t0\.png under this name'):
        C.to_csv_dataset(D.AttributeData('wider', tmp_path/'s', ['a', 'b'], samples, meta={}), tmp_path/'out', masks=False, progress=False)
    assert not (tmp_path/'out').exists()


@pytest.mark.parametrize('kind', ['wider', 'rap', 'pa100k'])
def test_csv_round_trip(kind, tmp_path):
    src = D.tiny_fixture(kind, tmp_path/kind, n=6, layout='published')
    data = D.load_dataset(kind, src)
    out = C.to_csv_dataset(data, tmp_path/'csv', progress=False)
    back = D.load_dataset('csv', out)
    assert back.attributes == data.attributes and back.splits == data.splits
    np.testing.assert_array_equal(back.labels(), data.labels())
    assert back.meta['layout'] == 'published' and back.meta['masks_attached'] == len(back)
    item = L.HarDataset(back, with_mask=True)[0]
    assert item['mask'].shape[-2:] == item['image'].shape[-2:]
    if kind == 'wider':   # boxed targets became crops of their box
        assert Image.open(back.samples[1].image).size == tuple(int(v) for v in data.samples[1].box[2:])

def test_csv_header_and_empty_file(tmp_path):
    root = D.tiny_fixture('csv', tmp_path/'c', n=6)
    (root/'labels.csv').write_text('file,split,a\n')
    with pytest.raises(KitError, match=r"header \['file', 'split', 'a'\] must be image,split"): D.read_csv_dataset(root)
    (root/'labels.csv').write_text('image,split,a\n')
    with pytest.raises(KitError, match='no rows after the header'): D.read_csv_dataset(root)

def test_data_check_sample_option_and_report(tmp_path):
    root = D.tiny_fixture('wider', tmp_path/'w', n=6, layout='published')
    rep = C.check_dataset('wider', root, sample=2, progress=False)
    assert rep['ok'] and rep['images']['checked'] == 2 and rep['images']['listed'] == 6
    assert rep['layout']['layout'] == 'published' and rep['splits'] == {'train': 4, 'val': 4, 'test': 4}
    # per attribute, how many labels are unspecified (-1): the reader's labels counted here, not a bound that cannot fail
    y = D.read_wider(root).labels()
    assert [a['unspecified'] for a in rep['attributes']] == (y == UNSPECIFIED).sum(0).tolist()
    assert len(rep['attributes']) == 14 and 0 < sum(a['unspecified'] for a in rep['attributes']) < y.size
    with pytest.raises(KitError, match='sample=0'): C.check_dataset('wider', root, sample=0, progress=False)

@real
def test_data_check_on_the_real_sample_prints_its_known_flaws(capsys):
    assert C.cli(['check', 'pa100k', str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert 'splits: train 1600, val 200, test 200; 26 attributes' in out
    assert '001600.jpg in [\'train\', \'val\']' in out and '1 all-zero label rows (e.g. 001600.jpg in train)' in out
    assert 'images without labels), e.g. 002000.jpg' in out and '1999 checked: 0 missing, 0 unreadable' in out

@real
def test_real_sample_converts_to_csv(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        real = D.read_pa100k(SAMPLE)
        back = D.load_dataset('csv', C.to_csv_dataset(real, tmp_path/'pa100k-csv', progress=False))
    assert [len(back.split(s)) for s in ('train', 'val', 'test')] == [1600, 200, 200]
    np.testing.assert_array_equal(back.labels(), real.labels())
    assert back.samples[0].image.read_bytes() == real.samples[0].image.read_bytes()

def test_data_convert_command(tmp_path, capsys):
    src = D.tiny_fixture('pa100k', tmp_path/'pa', n=6, layout='published')
    assert C.cli(['convert', 'pa100k', str(src), str(tmp_path/'out')]) == 0
    assert "-p dataset csv -p data_root" in capsys.readouterr().out
    assert C.cli(['check', 'csv', str(tmp_path/'out')]) == 0
    assert C.cli(['convert', 'pa100k', str(src), str(tmp_path/'out')]) == 2 and 'is not empty' in capsys.readouterr().err


def test_data_convert_prints_the_readers_warnings_as_data_check_does(tmp_path, capsys):
    "A dataset issue reaches the user of `data convert` as one 'warning: ...' line, not Python's warnings format."
    src = D.tiny_fixture('pa100k', tmp_path/'pa', n=6, layout='published')
    img = D.read_pa100k(src).samples[0].image
    shutil.copy(img, img.parent/'zz_unlisted.jpg')                 # an image in no split: the reader warns
    assert C.cli(['convert', 'pa100k', str(src), str(tmp_path/'out')]) == 0
    err = capsys.readouterr().err
    assert 'warning: ' in err and 'in no split' in err and 'DataWarning' not in err and 'data.py' not in err


def test_data_convert_quotes_the_hint_for_the_shell(tmp_path, capsys):
    "DEST with a space: the printed `-p data_root` value is shell-quoted, so pasting it runs on DEST, not on its first word."
    import shlex
    src = D.tiny_fixture('pa100k', tmp_path/'pa', n=6, layout='published')
    dest = tmp_path/'with space'/'out'
    assert C.cli(['convert', 'pa100k', str(src), str(dest)]) == 0
    out = capsys.readouterr().out
    assert f'-p data_root {shlex.quote(str(dest))}' in out and f"load_dataset('csv', {str(dest)!r})" in out
    assert shlex.split(out.rsplit('-p data_root ', 1)[1])[0] == str(dest)
