"""Fault catalogue of the data side (issue 13): each test plants one fault in a small dataset and states the outcome.
Outcomes: a `KitError` naming the file/entry and what to do (refused), a warning naming the entry (reported), or the
right result (repaired). Every fault is found when the dataset is read or checked, before any training starts."""
import json, os, re, warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from har_kit.core import KitError
from har_kit.check import check_dataset, cli, to_csv_dataset
from har_kit.loading import HarDataset
from har_kit.data import read_csv_dataset, read_pa100k, read_rap, read_wider
from har_kit.formats import write_fixture
from har_kit.masks import make_masks


def _warnings(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); fn()
    return ' | '.join(str(x.message) for x in w)

def _wider(tmp_path, n=6):
    root = write_fixture('wider', tmp_path/'w', n_images=n, layout='root-level')
    return root, json.loads((root/'wider_attribute_test.json').read_text())

def _pa(tmp_path, n=10):
    return write_fixture('pa100k', tmp_path/'p', n_images=n, layout='root-level')

def _edit_pa(root, **fields):
    m = sio.loadmat(root/'annotation.mat'); m = {k: v for k, v in m.items() if not k.startswith('__')}
    m.update(fields); sio.savemat(root/'annotation.mat', m)

def _cell(names):
    a = np.empty((len(names), 1), dtype=object); a[:, 0] = names; return a


# ---------------------------------------------------------------- reading outside the dataset: refused
def test_wider_name_climbing_out_of_the_image_folder_is_refused(tmp_path):
    "A WIDER file_name `test/../../../outside/secret.jpg` -> KitError naming the JSON entry; nothing outside is opened."
    root, j = _wider(tmp_path)
    j['images'][0]['file_name'] = 'test/../../../outside/secret.jpg'
    (root/'wider_attribute_test.json').write_text(json.dumps(j))
    with pytest.raises(KitError, match=r"wider_attribute_test\.json: images\[0\]\.file_name: image name 'test/\.\./\.\./\.\./outside/secret\.jpg' points outside"):
        read_wider(root)


def test_absolute_pa100k_name_is_refused(tmp_path):
    "An absolute PA-100K image name -> KitError naming the field and position."
    root = _pa(tmp_path)
    _edit_pa(root, test_images_name=_cell(['/etc/passwd', '000010.jpg']))
    with pytest.raises(KitError, match=r"test_images_name\[1\]: image name '/etc/passwd' points outside"): read_pa100k(root)


def test_rap_and_csv_names_outside_are_refused(tmp_path):
    "RAP imagesname and CSV image entries with `..` -> KitError naming the entry."
    m = sio.loadmat(write_fixture('rap', tmp_path/'r', n_images=6, layout='root-level')/'RAP_annotation.mat')
    st = m['RAP_annotation']; st['imagesname'][0, 0][2, 0] = np.array(['../../x.png'])
    sio.savemat(tmp_path/'r'/'RAP_annotation.mat', {'RAP_annotation': st})
    with pytest.raises(KitError, match=r"imagesname\{3\}: image name '\.\./\.\./x\.png' points outside"): read_rap(tmp_path/'r')
    root = write_fixture('csv', tmp_path/'c', n_images=6)
    lines = (root/'labels.csv').read_text().splitlines(); lines[2] = '../x.jpg' + lines[2][lines[2].index(','):]
    (root/'labels.csv').write_text('\n'.join(lines) + '\n')
    with pytest.raises(KitError, match=r'labels\.csv: line 3 \(image\): image name .* points outside'): read_csv_dataset(root)


# ---------------------------------------------------------------- bad images: found at read time, not after training
@pytest.mark.parametrize('damage,what', [(lambda b: b'', 'empty file'), (lambda b: b[:len(b) // 2], 'truncated JPEG'),
                                         (lambda b: b'not an image at all', 'not a readable image')])
def test_damaged_image_is_found_when_the_dataset_is_read(tmp_path, damage, what):
    "A zero-byte, cut-short or non-image file -> KitError from the reader (header check), naming the file."
    root = _pa(tmp_path)
    p = root/'data'/'000009.jpg'; p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(KitError, match=f'1 of 10 listed images are unreadable.*000009.jpg: {what}'): read_pa100k(root)
    assert len(read_pa100k(root, check_images=False)) == 10          # the check can be skipped explicitly


def test_sixteen_bit_png_reaches_the_model_as_its_pixels_not_white(tmp_path):
    "A 16-bit grey PNG -> scaled to 8 bits (repaired); before, PIL's convert('RGB') made it all white."
    root = write_fixture('rap', tmp_path/'r', n_images=6, layout='root-level', masks=False)
    data = read_rap(root)
    a = np.linspace(0, 65535, 48 * 24).astype(np.uint16).reshape(48, 24)
    Image.fromarray(a).save(data.samples[0].image)
    img = HarDataset(data.samples[:1])[0]['image']
    assert img.shape == (3, 48, 24) and 0.3 < float(img.mean()) < 0.7 and float(img.min()) == 0.0


def test_float_image_is_refused(tmp_path):
    "A floating-point (mode F) TIFF -> KitError at read time: no scale can be assumed."
    root = write_fixture('csv', tmp_path/'c', n_images=6)
    lines = (root/'labels.csv').read_text().splitlines(); lines[1] = 'f.tif' + lines[1][lines[1].index(','):]
    (root/'labels.csv').write_text('\n'.join(lines) + '\n')
    Image.fromarray(np.full((8, 4), 0.5, np.float32)).save(root/'images'/'f.tif')
    with pytest.raises(KitError, match='f.tif: mode F'): read_csv_dataset(root)


# ---------------------------------------------------------------- duplicates: reported
def test_duplicate_image_within_a_split_is_reported(tmp_path):
    "The same PA-100K name twice in train -> warning 'listed more than once in one split'."
    root = _pa(tmp_path)
    m = sio.loadmat(root/'annotation.mat')
    names = [str(x[0][0]) for x in m['train_images_name']]; names[1] = names[0]
    _edit_pa(root, train_images_name=_cell(names))
    assert f'listed more than once in one split (e.g. {names[0]} target 0 2 times in train)' in _warnings(lambda: read_pa100k(root))


def test_duplicate_wider_entry_is_reported(tmp_path):
    "A WIDER image entry repeated -> warning naming it (its targets would count twice)."
    root, j = _wider(tmp_path)
    j['images'].append(j['images'][0]); (root/'wider_attribute_test.json').write_text(json.dumps(j))
    assert f'e.g. {j["images"][0]["file_name"]} target 0 2 times in test' in _warnings(lambda: read_wider(root))


def test_one_file_under_train_and_test_is_reported(tmp_path):
    "The same image bytes under train/ and test/ (different names) -> warning naming both files."
    root, j = _wider(tmp_path)
    tr = json.loads((root/'wider_attribute_trainval.json').read_text())
    src = root/'Image'/tr['images'][0]['file_name']
    dst_name = 'test/0--Parade/' + Path(tr['images'][0]['file_name']).name
    (root/'Image'/dst_name).write_bytes(src.read_bytes())
    j['images'].append(dict(tr['images'][0], file_name=dst_name)); (root/'wider_attribute_test.json').write_text(json.dumps(j))
    msg = _warnings(lambda: read_wider(root))
    assert 'listed in two splits under different names with identical bytes' in msg and dst_name in msg


def test_image_in_two_splits_and_all_zero_row_are_reported(tmp_path):
    "PA-100K's sample flaw planted: one name in train and val, an all-zero row -> two warnings; data check lists them."
    root = _pa(tmp_path)
    m = sio.loadmat(root/'annotation.mat')
    tr = [str(x[0][0]) for x in m['train_images_name']]; lab = m['train_label'].copy(); lab[-1] = 0
    va = [str(x[0][0]) for x in m['val_images_name']]; va[0] = tr[-1]
    _edit_pa(root, train_label=lab, val_images_name=_cell(va))
    msg = _warnings(lambda: read_pa100k(root))
    assert 'appear in more than one split' in msg and '1 all-zero label rows' in msg
    rep = check_dataset('pa100k', root, progress=False)
    assert rep['issues']['in_two_splits'] == 1 and rep['issues']['all_zero_rows'] == 1 and rep['images']['without_labels'] == 1


# ---------------------------------------------------------------- raw crashes turned into KitErrors
@pytest.mark.parametrize('bad', ['0', 0.0, True, None])
def test_rap_partition_of_the_wrong_type_is_refused(tmp_path, bad):
    "RAP partition='0' (a string from a command line), a float, a bool or None -> KitError, not a TypeError."
    root = write_fixture('rap', tmp_path/'r', n_images=6, layout='root-level')
    with pytest.raises(KitError, match=r'partition=.* must be an integer 0\.\.4'): read_rap(root, partition=bad)


def test_latin1_wider_json_is_refused_with_the_fix(tmp_path):
    "A latin-1 encoded WIDER JSON -> KitError 'not UTF-8' with the byte offset and an iconv command."
    root, j = _wider(tmp_path)
    j['scene_id_map'] = {'0': 'Défilé'}
    (root/'wider_attribute_test.json').write_bytes(json.dumps(j, ensure_ascii=False).encode('latin-1'))
    with pytest.raises(KitError, match=r'wider_attribute_test\.json: not UTF-8 \(byte 0xe9 at offset \d+\).*iconv -f latin1'):
        read_wider(root)


def test_maskrcnn_without_network_says_what_to_do(tmp_path, monkeypatch):
    "Mask R-CNN COCO weights that cannot download -> KitError naming the URL, `--weights FILE` and other sources."
    import urllib.error
    import torchvision.models._api as api
    def offline(*a, **k): raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(api, 'load_state_dict_from_url', offline)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    data = read_pa100k(_pa(tmp_path, 6))
    with pytest.raises(KitError, match=r'could not be fetched \(URLError.*download https://download\.pytorch\.org/models/maskrcnn.*--weights FILE.*--source box'):
        make_masks(data, 'maskrcnn', mask_root=tmp_path/'m', progress=False)
    with pytest.raises(KitError, match='no such file'):
        make_masks(data, 'maskrcnn', mask_root=tmp_path/'m', weights=str(tmp_path/'nope.pth'), progress=False)


def test_csv_bad_value_names_line_and_column(tmp_path):
    "A CSV label 2 (or 'yes') -> KitError naming the line and the attribute column."
    root = write_fixture('csv', tmp_path/'c', n_images=6)
    lines = (root/'labels.csv').read_text().splitlines(); lines[3] = lines[3].rsplit(',', 1)[0] + ',2'
    (root/'labels.csv').write_text('\n'.join(lines) + '\n')
    with pytest.raises(KitError, match=r"line 4: column 'LongSleeve' holds '2'; labels must be 1, 0 or -1"): read_csv_dataset(root)


@pytest.mark.parametrize('how', ['long name', 'unclosed quote'])
def test_csv_field_over_the_csv_limit_names_file_and_line(tmp_path, how):
    "A field over 131,072 characters (csv's field_size_limit) was a raw _csv.Error; now a KitError naming file and line."
    root = write_fixture('csv', tmp_path/'c', n_images=6)
    lines = (root/'labels.csv').read_text().splitlines()
    lines[3] = ('x' * 140_000 + '.jpg' if how == 'long name' else '"' + lines[3][:lines[3].index(',')]) + lines[3][lines[3].index(','):]
    (root/'labels.csv').write_text('\n'.join(lines + lines[1:3] * 20_000) + '\n')
    with pytest.raises(KitError, match=r'labels\.csv: line 4: a field is longer than 131,072 characters: a quote'):
        read_csv_dataset(root)


def test_csv_names_with_line_breaks_and_spaces_round_trip(tmp_path):
    "Names holding a newline, U+2028, U+0085, a comma, a quote or outer spaces: written, then read back byte for byte."
    from har_kit.formats import write_csv_annotation
    names = ['new\nline.jpg', 'sep\u2028arator.jpg', 'nel\x85.jpg', 'a,b.jpg', 'q"uote.jpg', ' spaced .jpg', 'plain.jpg']
    src = write_fixture('csv', tmp_path/'c', n_images=6)/'images'/'000001.jpg'
    for n in names: (tmp_path/'d'/'images').mkdir(parents=True, exist_ok=True); (tmp_path/'d'/'images'/n).write_bytes(src.read_bytes())
    write_csv_annotation(tmp_path/'d'/'labels.csv', ['Hat'], [(n, 'train', [i % 2]) for i, n in enumerate(names)])
    back = read_csv_dataset(tmp_path/'d')
    assert [s.meta['file_name'] for s in back.samples] == names
    assert [s.image.name for s in back.samples] == names and back.labels()[:, 0].tolist() == [0, 1, 0, 1, 0, 1, 0]


def test_csv_name_that_cannot_round_trip_is_refused_on_write(tmp_path):
    "A lone carriage return in a name (or an empty name) -> KitError naming the row; no labels.csv written."
    from har_kit.formats import write_csv_annotation
    with pytest.raises(KitError, match=r"row 2 \(image 'cr\\ronly\.jpg'\): this image name cannot be written"):
        write_csv_annotation(tmp_path/'labels.csv', ['Hat'], [('a.jpg', 'train', [1]), ('cr\ronly.jpg', 'test', [0])])
    assert not (tmp_path/'labels.csv').exists()


def test_convert_refuses_a_name_that_cannot_round_trip_before_copying(tmp_path, monkeypatch):
    "A source image name with a lone carriage return -> KitError naming the row and DEST/labels.csv; nothing copied."
    import dataclasses
    data = read_pa100k(_pa(tmp_path))
    s0 = data.samples[2]
    data.samples[2] = dataclasses.replace(s0, meta={**s0.meta, 'file_name': 'cr\ronly.jpg'})
    monkeypatch.setattr('har_kit.check._place', lambda *a: pytest.fail('nothing may be copied'))
    with pytest.raises(KitError, match=rf"{tmp_path}/out/labels\.csv: row 3 \(image 'cr\\ronly\.jpg'\)"):
        to_csv_dataset(data, tmp_path/'out', progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['p']


def test_csv_name_with_stray_spaces_says_so(tmp_path):
    "`000001.jpg ,train,...` (a space before the comma): names are exact, and the error says which file was meant."
    root = write_fixture('csv', tmp_path/'c', n_images=6)
    lines = (root/'labels.csv').read_text().splitlines(); lines[1] = lines[1].replace(',', ' ,', 1)
    (root/'labels.csv').write_text('\n'.join(lines) + '\n')
    with pytest.raises(KitError, match=r"line 2: image name '000001\.jpg ' has spaces around it .* but '000001\.jpg' does"):
        read_csv_dataset(root)


def test_mask_dir_that_is_not_a_folder_is_refused(tmp_path):
    "mask_dir pointing nowhere -> KitError (never silently no masks)."
    with pytest.raises(KitError, match='is not a folder'): read_pa100k(_pa(tmp_path), mask_dir=tmp_path/'nope')


def test_convert_into_a_non_empty_folder_is_refused(tmp_path):
    "to_csv_dataset into a folder with files -> KitError; nothing is half-written."
    data = read_pa100k(_pa(tmp_path))
    (tmp_path/'out').mkdir(); (tmp_path/'out'/'x').touch()
    with pytest.raises(KitError, match='is not empty'): to_csv_dataset(data, tmp_path/'out', progress=False)
    assert [p.name for p in (tmp_path/'out').iterdir()] == ['x']
    (tmp_path/'empty').mkdir()   # an empty folder is a place to convert into
    assert to_csv_dataset(data, tmp_path/'empty', progress=False) and (tmp_path/'empty'/'labels.csv').exists()


@pytest.mark.parametrize('below', [False, True])
def test_convert_onto_a_file_is_refused_before_reading(tmp_path, capsys, monkeypatch, below):
    "`har-kit data convert pa100k ROOT FILE` (or FILE/sub) was a NotADirectoryError traceback; now exit 2, nothing read or written."
    root = _pa(tmp_path)
    f = tmp_path/'a-file'; f.write_text('x')
    monkeypatch.setattr('har_kit.check.dataset_reader', lambda kind: pytest.fail('the dataset must not be read'))
    assert cli(['convert', 'pa100k', str(root), str(f/'sub' if below else f)]) == 2
    err = capsys.readouterr().err
    assert (f'DEST {f}/sub: {f} is not a writable folder' if below else f'DEST {f} is a file: choose a new folder') in err
    assert f.read_text() == 'x' and sorted(p.name for p in tmp_path.iterdir()) == ['a-file', 'p']


def test_convert_into_a_read_only_place_is_refused_before_copying(tmp_path, read_only):
    data = read_pa100k(_pa(tmp_path))
    ro = tmp_path/'ro'; ro.mkdir(); read_only(ro)   # skipped as root before (chmod does not bite): run everywhere now
    with pytest.raises(KitError, match=rf'DEST {ro}/out: {ro} is not a writable folder'): to_csv_dataset(data, ro/'out', progress=False)
    assert list(ro.iterdir()) == []


# ---------------------------------------------------------------- har-kit data check: errors make it fail
def test_data_check_fails_on_missing_and_undecodable_images(tmp_path, capsys):
    "Missing image (labels without image) and an image that does not decode -> listed as errors, exit status 1."
    root = _pa(tmp_path)
    (root/'data'/'000002.jpg').unlink()
    p = root/'data'/'000003.jpg'; b = bytearray(p.read_bytes()); b[200:-10] = bytes(len(b) - 210); p.write_bytes(bytes(b))
    assert cli(['check', 'pa100k', str(root), '--json', str(tmp_path/'r.json')]) == 1
    out = capsys.readouterr().out
    assert '1 listed image(s) do not exist' in out and '000002.jpg' in out and 'FAILED' in out
    rep = json.loads((tmp_path/'r.json').read_text())
    assert rep['images']['missing'] == 1 and rep['ok'] is False
    (tmp_path/'empty').mkdir()
    assert cli(['check', 'rap', str(tmp_path/'empty')]) == 1 and 'no known rap layout' in capsys.readouterr().out


def test_sixteen_bit_mask_is_scaled_not_clipped(tmp_path):
    "A 16-bit mask PNG (0..65535) -> read as its 8-bit scale (repaired): a faint 16-bit value is not 'person'."
    from har_kit.mask_sources import read_mask
    a = np.zeros((8, 8), np.uint16); a[:, :4] = 65535; a[:, 4:] = 300      # 300/65535: background, not person
    Image.fromarray(a).save(tmp_path/'m.png')
    m = read_mask(tmp_path/'m.png')
    assert m[:, :4].all() and not m[:, 4:].any()


# ---------------------------------------------------------------- empty annotations and splits
def _empty_splits(kind, root, splits):
    "Plant empty `splits` in a root-level fixture's annotation: PA-100K's cells, RAP's test_index, WIDER's targets."
    if kind == 'pa100k':
        C = sio.loadmat(root/'annotation.mat')['train_label'].shape[1]
        _edit_pa(root, **{k: v for sp in splits for k, v in ((f'{sp}_images_name', np.empty((0, 1), object)),
                                                              (f'{sp}_label', np.zeros((0, C), np.uint8)))})
    elif kind == 'rap':
        st = sio.loadmat(root/'RAP_annotation.mat')['RAP_annotation']
        for q in st['partion'][0, 0].ravel():
            for sp in set(splits) - {'val'}: q[f'{sp}_index'][0, 0] = np.zeros((1, 0))   # RAP has no val split
        sio.savemat(root/'RAP_annotation.mat', {'RAP_annotation': st})
    else:
        for f in root.glob('*.json'):
            j = json.loads(f.read_text())
            for im in j['images']:
                if im['file_name'].split('/')[0] in splits: im['targets'] = []
            f.write_text(json.dumps(j))
    return root


@pytest.mark.parametrize('kind,annotation', [('pa100k', 'annotation.mat'), ('rap', 'RAP_annotation.mat'),
                                             ('wider', 'wider_attribute_trainval.json and .*wider_attribute_test.json')])
def test_annotation_listing_no_image_is_refused(tmp_path, kind, annotation):
    "Every split empty (PA-100K's cells, RAP's indices, WIDER's targets) -> KitError naming the annotation; data check lists it."
    root = _empty_splits(kind, write_fixture(kind, tmp_path/kind, n_images=6, layout='root-level', masks=False), ('train', 'val', 'test'))
    with pytest.raises(KitError, match=f'{annotation}.*: lists no image in any split'): read_pa100k(root) if kind == 'pa100k' else \
        read_rap(root) if kind == 'rap' else read_wider(root)
    rep = check_dataset(kind, root, progress=False)
    assert not rep['ok'] and 'lists no image in any split' in rep['errors'][0] and str(root) in rep['errors'][0]


@pytest.mark.parametrize('kind', ['pa100k', 'rap', 'wider'])
def test_empty_test_split_is_warned_and_fails_data_check(tmp_path, kind, capsys):
    "No test sample (PA-100K's test cells, RAP's test_index=[], WIDER's test targets) -> an EmptyTestWarning; data check: an error, exit 1."
    from har_kit.data import EmptyTestWarning
    root = _empty_splits(kind, write_fixture(kind, tmp_path/kind, n_images=6, layout='root-level', masks=False), ('test',))
    reader = {'pa100k': read_pa100k, 'rap': read_rap, 'wider': read_wider}[kind]
    with pytest.warns(EmptyTestWarning, match='the test split is empty'): data = reader(root, check_images=False)
    assert 'test' not in data.splits and len(data) > 0
    assert cli(['check', kind, str(root)]) == 1
    out = capsys.readouterr().out
    assert 'error: ' in out and 'the test split is empty' in out.split('error: ', 1)[1] and 'FAILED' in out


@pytest.mark.parametrize('names', ['{}', '[]'])
@pytest.mark.parametrize('splits', [('test',), ('val', 'test')])
def test_pa100k_split_written_as_matlab_empty_is_an_empty_split(tmp_path, splits, names):
    "A PA-100K split saved empty in MATLAB (names as {}, a 0 x 0 cell, or [], a 0 x 0 double; labels as [], a 0 x 0 double, not 0 x 26) reads as an empty split, as 0 x 26 does: no column error."
    from har_kit.data import EmptyTestWarning
    root = write_fixture('pa100k', tmp_path/'p', n_images=6, layout='root-level', masks=False)
    empty = np.empty((0, 0), object) if names == '{}' else np.zeros((0, 0))
    _edit_pa(root, **{k: v for sp in splits for k, v in ((f'{sp}_images_name', empty), (f'{sp}_label', np.zeros((0, 0))))})
    assert sio.loadmat(root/'annotation.mat')['test_label'].shape == (0, 0)
    assert sio.loadmat(root/'annotation.mat')['test_images_name'].dtype == (object if names == '{}' else np.float64)
    with pytest.warns(EmptyTestWarning, match='the test split is empty'): data = read_pa100k(root, check_images=False)
    assert not set(splits) & set(data.splits) and 'train' in data.splits and len(data) > 0


@pytest.mark.parametrize('kind', ['pa100k', 'rap', 'wider'])
def test_duplicate_attribute_names_are_refused(tmp_path, kind):
    "Two attribute columns of one name -> KitError naming the file, the field and the name (as the csv reader refuses them)."
    root = write_fixture(kind, tmp_path/kind, n_images=6, layout='root-level', masks=False)
    if kind == 'pa100k':
        names = [str(x[0][0]) for x in sio.loadmat(root/'annotation.mat')['attributes']]; names[2] = names[0]
        _edit_pa(root, attributes=_cell(names))
        where, reader = r'annotation\.mat: attributes', read_pa100k
    elif kind == 'rap':
        st = sio.loadmat(root/'RAP_annotation.mat')['RAP_annotation']
        names = st['attribute_eng'][0, 0]; names[5, 0] = names[1, 0]
        sio.savemat(root/'RAP_annotation.mat', {'RAP_annotation': st})
        where, reader = r'RAP_annotation\.mat: RAP_annotation\.attribute_eng', read_rap
    else:
        for f in root.glob('*.json'):
            j = json.loads(f.read_text()); j['attribute_id_map']['3'] = j['attribute_id_map']['0']; f.write_text(json.dumps(j))
        where, reader = r'wider_attribute_trainval\.json: attribute_id_map', read_wider
    with pytest.raises(KitError, match=f"{where} lists '.+' more than once: attribute names must be distinct"): reader(root)


def test_wider_scene_id_map_of_the_wrong_type_and_deep_json_are_refused(tmp_path):
    "scene_id_map as a list was an AttributeError, JSON nested 100,000 deep a RecursionError: now KitErrors naming file and field."
    root, j = _wider(tmp_path)
    f = root/'wider_attribute_test.json'
    f.write_text(json.dumps(dict(j, scene_id_map=['Parade', 'Family'])))
    with pytest.raises(KitError, match=r'wider_attribute_test\.json: scene_id_map must be an object .* found a list'): read_wider(root)
    f.write_text('[' * 100_000 + ']' * 100_000)
    with pytest.raises(KitError, match=r'wider_attribute_test\.json: JSON nested hundreds of levels deep'): read_wider(root)
    f.write_text(json.dumps(j))
    j = json.loads((root/'wider_attribute_trainval.json').read_text())
    j['images'][0]['targets'][0]['attribute'][0] = [1]                 # was a TypeError (unhashable list)
    (root/'wider_attribute_trainval.json').write_text(json.dumps(j))
    with pytest.raises(KitError, match=r'images\[0\]\.targets\[0\]\.attribute must be 14 values'): read_wider(root)


# ---------------------------------------------------------------- har-kit data check: what it writes, what it finds
@pytest.mark.parametrize('where', ['annotation', 'existing', 'folder'])
def test_data_check_json_never_overwrites_the_dataset_or_a_file(tmp_path, capsys, monkeypatch, where):
    "--json onto the dataset's annotation.mat (even with --force), onto an existing file, onto a folder -> exit 2 before any work."
    root = _pa(tmp_path)
    target = {'annotation': root/'annotation.mat', 'existing': tmp_path/'old.json', 'folder': tmp_path/'reports'}[where]
    if where == 'existing': target.write_text('{"keep": 1}')
    if where == 'folder': target.mkdir()
    before = target.read_bytes() if target.is_file() else None
    real = check_dataset
    monkeypatch.setattr('har_kit.check.check_dataset', lambda *a, **k: pytest.fail('the dataset must not be checked'))
    assert cli(['check', 'pa100k', str(root), '--json', str(target)] + (['--force'] if where == 'annotation' else [])) == 2
    err = capsys.readouterr().err
    assert {'annotation': 'is inside the dataset root', 'existing': 'exists: pass --force', 'folder': 'is a folder'}[where] in err, err
    assert (target.read_bytes() if target.is_file() else None) == before
    if where == 'existing':                                          # --force replaces it, after the check
        monkeypatch.setattr('har_kit.check.check_dataset', real)
        assert cli(['check', 'pa100k', str(root), '--json', str(target), '--force']) == 0
        assert json.loads(target.read_text())['ok'] is True


def test_data_check_finds_a_box_outside_its_image(tmp_path, capsys):
    "A WIDER bbox [-500, -500, 10, 10] -> a warning naming the image and the box (clip_box on the decoded size); the reader drops the target, so the check passes (exit 0)."
    root, j = _wider(tmp_path)
    j['images'][1]['targets'][0]['bbox'] = [-500, -500, 10, 10]
    (root/'wider_attribute_test.json').write_text(json.dumps(j))
    assert cli(['check', 'wider', str(root)]) == 0
    out = capsys.readouterr().out
    image = root/'Image'/j['images'][1]['file_name']
    assert ('warning: 1 target(s) have a box the loaders cannot crop, which the reader drops (runs train and score without them; '
            f'fix the annotation to keep them): {image} target 0: box (-500.0, -500.0, 10.0, 10.0) lies entirely outside the') in out, out
    assert 'error:' not in out and '\nOK (1 warning' in out, out


def test_empty_test_split_fails_data_check_for_csv_and_with_warnings_shown_once(tmp_path, monkeypatch):
    "The check itself looks for a test split: the csv kind (its reader does not warn) and HAR_KIT_DATA_WARNINGS=once (warnings printed, not raised) fail too."
    root = _empty_splits('wider', write_fixture('wider', tmp_path/'w', n_images=6, layout='root-level', masks=False), ('test',))
    monkeypatch.setenv('HAR_KIT_DATA_WARNINGS', 'once')
    rep = check_dataset('wider', root, progress=False)
    assert not rep['ok'] and sum('the test split is empty' in e for e in rep['errors']) == 1, rep['errors']
    csv = to_csv_dataset(read_pa100k(write_fixture('pa100k', tmp_path/'p', n_images=6, layout='root-level', masks=False)), tmp_path/'csv')
    lines = (csv/'labels.csv').read_text().splitlines()
    (csv/'labels.csv').write_text('\n'.join([lines[0]] + [l.replace(',test,', ',train,') for l in lines[1:]]) + '\n')
    rep = check_dataset('csv', csv, progress=False)
    assert not rep['ok'] and any('the test split is empty' in e for e in rep['errors']), rep['errors']


def test_data_check_lists_three_bad_boxes_and_counts_the_rest(tmp_path):
    "Boxes the loaders cannot crop (the reader drops them): a warning naming the first three and counting the rest, every one in the report."
    root = write_fixture('wider', tmp_path/'w', n_images=6, layout='root-level', masks=False)
    n = 0
    for f in root.glob('*.json'):
        j = json.loads(f.read_text())
        for im in j['images']:
            for t in im['targets']: t['bbox'] = [-500, -500, 10, 10]; n += 1
        f.write_text(json.dumps(j))
    rep = check_dataset('wider', root, progress=False)
    assert n > 4 and rep['images']['bad_boxes'] == n and len(rep['outside_boxes']) == n
    assert all('lies entirely outside' in b for b in rep['outside_boxes']) and not any('lies entirely outside' in e for e in rep['errors'])
    w = [w for w in rep['warnings'] if w.startswith(f'{n} target(s) have a box the loaders cannot crop, which the reader drops')]
    assert len(w) == 1 and w[0].count('lies entirely outside') == 3 and f'and {n - 3} more (--json lists them all' in w[0], rep['warnings']
    assert json.loads(json.dumps(rep))['outside_boxes'] == rep['outside_boxes']


def test_data_check_passes_a_wider_set_the_reader_reads_by_dropping_outside_boxes(tmp_path):
    "A box wholly outside its scene: the reader drops the target with a warning and a run goes on, so data check warns, not fails."
    root = write_fixture('wider', tmp_path/'w', n_images=6, layout='root-level', masks=False)
    f = sorted(root.glob('*.json'))[0]
    j = json.loads(f.read_text()); j['images'][0]['targets'][0]['bbox'] = [-500, -500, 10, 10]; f.write_text(json.dumps(j))
    with pytest.warns(UserWarning, match=r'dropped 1 target\(s\) whose bbox lies wholly outside its image.*data check wider ROOT` lists them all'):
        data = read_wider(root)
    rep = check_dataset('wider', root, progress=False)
    assert rep['ok'] and rep['errors'] == [] and len(rep['outside_boxes']) == 1, rep
    assert len(data.samples) == sum(rep['splits'].values()) - 1


def test_sample_labels_given_as_a_list_are_an_int8_array_or_refused_by_name():
    from har_kit.data import Sample
    s = Sample(Path('a.jpg'), [1, 0, -1], 'train')
    assert s.labels.dtype == np.int8 and s.labels.tolist() == [1, 0, -1]
    ds = HarDataset([Sample(Path('a.jpg'), (1, 0), 'train')])
    assert ds.samples[0].labels.dtype == np.int8
    for bad in ([1, 2], [[1, 0]], ['yes', 'no'], [0.5, 1], None):
        with pytest.raises(KitError, match=r'Sample\.labels: .*1 \(positive\), 0 \(negative\) or -1 \(unspecified\)'):
            Sample(Path('a.jpg'), bad, 'train')


def test_split_takes_a_list_of_split_names():
    from har_kit.data import AttributeData, Sample
    d = AttributeData('toy', Path('.'), ['a', 'b'], [Sample(Path('a.jpg'), np.array([1, 0], np.int8), 'train'),
                                                     Sample(Path('b.jpg'), np.array([0, 1], np.int8), 'val')])
    assert d.split(['train', 'val']) == d.split('train', 'val') == d.split(('train', 'val')) == d.samples
    assert d.labels(['val']).tolist() == [[0, 1]]
    with pytest.raises(KitError, match=r"toy: no split \['tset'\]"): d.split(['train', 'tset'])


def _rewrite_wider(root, edit_image=None, edit_doc=None):  # apply the edits to both WIDER annotation files
    for f in root.glob('*.json'):
        j = json.loads(f.read_text())
        if edit_doc: edit_doc(j)
        for im in j['images']:
            if edit_image: edit_image(im)
        f.write_text(json.dumps(j))


def test_wider_names_read_from_zero_padded_ids_and_windows_paths(tmp_path):
    "attribute_id_map keys '00'..'13' are the indices 0..13; a file_name written with backslashes is read (its split too)."
    root = write_fixture('wider', tmp_path/'w', n_images=6, layout='root-level', masks=False)
    want = read_wider(root, mask_dir=False)
    def pad(j): j['attribute_id_map'] = {f'{int(k):02d}': v for k, v in j['attribute_id_map'].items()}
    def windows(im): im['file_name'] = im['file_name'].replace('/', '\\')
    _rewrite_wider(root, windows, pad)
    got = read_wider(root, mask_dir=False)
    assert got.attributes == want.attributes
    assert [(s.image, s.split) for s in got.samples] == [(s.image, s.split) for s in want.samples]
    _rewrite_wider(root, edit_doc=lambda j: j['attribute_id_map'].update({'1': j['attribute_id_map']['01']}))   # index 1 twice
    with pytest.raises(KitError, match='attribute_id_map keys must be "0".."14", each once'): read_wider(root, mask_dir=False)


def test_a_wider_box_of_booleans_is_refused(tmp_path):
    root = write_fixture('wider', tmp_path/'w', n_images=6, layout='root-level', masks=False)
    def booleans(im): im['targets'][0]['bbox'] = [True, False, True, True]
    _rewrite_wider(root, booleans)
    with pytest.raises(KitError, match=r'targets\[0\].bbox must be \[x, y, w, h\] \(4 finite numbers\), found \[True'):
        read_wider(root, mask_dir=False)


def test_truncated_images_behind_an_early_end_marker_are_refused_when_read(tmp_path):
    "A JPEG with an end marker's bytes early (a comment or EXIF thumbnail) cut mid-scan, and a cut BMP: the reader refuses both by name."
    rng = np.random.default_rng(0)
    for suffix, cut in (('.jpg', 3000), ('.bmp', 5000)):
        root = write_fixture('pa100k', tmp_path/suffix[1:], n_images=6, layout='root-level', masks=False)
        first = sorted((root/'data').iterdir())[0]
        img = Image.fromarray(rng.integers(0, 255, (160, 64, 3), dtype=np.uint8))
        if suffix == '.jpg': img.save(first, 'JPEG', comment=b'thumb\xff\xd9end')
        else: img.save(first, 'BMP')
        first.write_bytes(first.read_bytes()[:cut])
        with pytest.raises(KitError, match=first.name): read_pa100k(root, mask_dir=False)


def test_data_check_reads_the_masks_the_readers_attach_and_convert_never_copies_a_wrong_size_one(tmp_path):
    "A mask the readers attach unasked that does not decode, or fits neither its image nor its box, fails `har-kit data check` "
    "(training with masks would stop on it) and is never carried into a converted set."
    import numpy as np
    from PIL import Image
    from har_kit.check import check_dataset, to_csv_dataset
    from har_kit.data import read_wider, tiny_fixture
    root = tiny_fixture('wider', tmp_path/'w')
    assert check_dataset('wider', root, progress=False)['masks']['unusable'] == 0
    ms = sorted((root/'masks').rglob('*.png'))
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(ms[0])
    rep = check_dataset('wider', root, progress=False)
    assert not rep['ok'] and any(f'{ms[0]}: mask is 10x10 but must match the image' in e for e in rep['errors']), rep['errors']
    with pytest.raises(KitError, match='mask is 10x10'): to_csv_dataset(read_wider(root), tmp_path/'c', progress=False)
    import json
    ann = root/'wider_attribute_test.json'; j = json.loads(ann.read_text()); j['images'][0]['targets'][0]['bbox'] = [500, 500, 10, 10]
    ann.write_text(json.dumps(j))   # a box off its image: named once, by the box check, not again as a mask
    rep = check_dataset('wider', root, progress=False)   # (a warning: the reader drops that target)
    assert sum('lies entirely outside' in w for w in rep['warnings']) == 1 and not any('lies entirely outside' in e for e in rep['errors']), rep
    assert not (tmp_path/'c').exists()


def test_names_written_with_backslashes_or_dot_slash_are_not_unused_images(tmp_path):
    "PA-100K names './000001.jpg' and WIDER names 'train\\x.jpg' (read by `image_file`) name their files: neither the reader "
    "nor `data check` calls those images unused (both compared the names as written with the files on disk)."
    root = _pa(tmp_path)
    m = {k: v for k, v in sio.loadmat(root/'annotation.mat').items() if not k.startswith('__')}
    _edit_pa(root, **{f'{sp}_images_name': _cell(['./' + str(x[0]) for x in m[f'{sp}_images_name'][:, 0]])
                      for sp in ('train', 'val', 'test')})
    assert 'in no split' not in _warnings(lambda: read_pa100k(root))
    rep = check_dataset('pa100k', root, progress=False)
    assert rep['images']['without_labels'] == 0 and not any('in no split' in w for w in rep['warnings']), rep['warnings']
    (root/'data'/'zz_unlisted.jpg').write_bytes((root/'data'/'000001.jpg').read_bytes())   # a file no entry lists still is one
    assert check_dataset('pa100k', root, progress=False)['images']['without_labels'] == 1
    w, _ = _wider(tmp_path)
    _rewrite_wider(w, lambda im: im.__setitem__('file_name', im['file_name'].replace('/', '\\')))
    rep = check_dataset('wider', w, progress=False)
    assert rep['images']['without_labels'] == 0, rep['warnings']


def test_rap_label_values_are_checked_in_the_kept_columns_only(tmp_path):
    "A value outside {0, 1, 2} in a column past `num_attributes` (RAP's 92 columns, 51 kept) is not read, so not refused; "
    "kept, it is refused naming its row and column."
    root = write_fixture('rap', tmp_path/'r', n_images=6, layout='root-level', masks=False)
    m = sio.loadmat(root/'RAP_annotation.mat'); st = m['RAP_annotation']
    label = st['label'][0, 0]; assert label.shape[1] == 92
    label[1, 60] = 3
    sio.savemat(root/'RAP_annotation.mat', {'RAP_annotation': st})
    data = read_rap(root)
    assert len(data.attributes) == 51 and len(data) == 6
    with pytest.raises(KitError, match=r'RAP_annotation\.label holds value 3 at row 2, column 61'): read_rap(root, num_attributes=None)


def test_rap_v2_annotation_is_refused_as_rap_v2(tmp_path):
    "RAP v2's RAP_annotation.mat (name, data, attribute, selected_attribute, partition_attribute) -> KitError saying it is "
    "RAP v2, that the kit reads RAP v1's layout, and what to do; not just 'no field imagesname'."
    from har_kit.matfile import mat_cell
    root = write_fixture('rap', tmp_path/'r', n_images=6, layout='root-level', masks=False)
    parts = np.empty((1, 5), object)
    for k in range(5): parts[0, k] = {'train_index': np.arange(1, 5.)[None], 'val_index': np.array([[5.]]), 'test_index': np.array([[6.]])}
    sio.savemat(root/'RAP_annotation.mat', {'RAP_annotation': {
        'name': mat_cell([f'{i:06d}.png' for i in range(1, 7)]), 'data': np.zeros((6, 152)), 'attribute': mat_cell([f'a{i}' for i in range(152)]),
        'selected_attribute': np.arange(1, 55.)[None], 'partition_attribute': parts, 'person_identity': np.zeros((6, 1))}})
    with pytest.raises(KitError, match=r"RAP_annotation looks like RAP v2's annotation \(fields name, data, attribute, selected_attribute, "
                                       r"partition_attribute\), which the kit does not read: it reads RAP v1's layout .* Point ROOT at RAP v1"):
        read_rap(root)
    rep = check_dataset('rap', root, progress=False)
    assert not rep['ok'] and 'looks like RAP v2' in rep['errors'][0]


def test_data_check_lists_every_reader_issue_under_warnings_once(tmp_path, monkeypatch, capsys):
    "HAR_KIT_DATA_WARNINGS=once (reader warnings printed the first time only) does not reach `data check`: two checks in a "
    "row both list the reader's issues, in the report and in the printed text; the setting is as before afterwards."
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path/'kitdata'))   # where 'once' marks what it showed
    monkeypatch.setenv('HAR_KIT_DATA_WARNINGS', 'once')
    root = _pa(tmp_path)
    label = sio.loadmat(root/'annotation.mat')['train_label']; label[0] = 0
    _edit_pa(root, train_label=label)                             # a label row with no positive: the reader's warning
    said = 'annotation.mat: 1 all-zero label rows (e.g. 000001.jpg in train)'
    for _ in range(2):
        rep = check_dataset('pa100k', root, progress=False)
        assert any(said in w for w in rep['warnings']), rep['warnings']
    for _ in range(2):
        cli(['check', 'pa100k', str(root)])
        assert said in capsys.readouterr().out
    assert os.environ['HAR_KIT_DATA_WARNINGS'] == 'once'


@pytest.mark.parametrize('kind', ['pa100k', 'rap', 'csv'])
@pytest.mark.parametrize('bad,what', [(lambda p: Image.fromarray(np.full((10, 10), 255, np.uint8)).save(p), 'mask is 10x10 but must match the image'),
                                      (lambda p: p.write_bytes(b'garbage'), 'cannot read mask')])
def test_convert_refuses_an_unusable_mask_of_a_sample_without_a_box_before_writing(tmp_path, kind, bad, what):
    "A mask the readers attach to an unboxed sample (PA-100K, RAP, csv) that is another size than its image, or does not "
    "decode -> `to_csv_dataset` raises the error a boxed target's mask gets (training would stop on it), before anything "
    "is written: no DEST, nothing beside it."
    from har_kit.data import tiny_fixture, dataset_reader
    root = tiny_fixture(kind, tmp_path/'src')
    data = dataset_reader(kind)(root)
    s = next(s for s in data.samples if s.mask is not None)
    assert s.box is None
    bad(s.mask)
    out = tmp_path/'out'/'csv'
    with pytest.raises(KitError, match=re.escape(f'{s.mask}: {what}')): to_csv_dataset(data, out, progress=False)
    assert not (tmp_path/'out').exists() or not any((tmp_path/'out').iterdir())


def test_data_check_reports_raps_uncertain_labels_and_the_rule_read_by(tmp_path, capsys):
    "RAP's label 2 ('uncertain'), read as 0 by default, is gone from the labels: `data check` counts it per attribute "
    "(an `uncertain` column; `attributes[i]['uncertain']` in --json), in all (`uncertain`), and says the rule it was read "
    "by and the other one; with uncertain='unspecified' the same 2s are in the unspecified column and the rule says so."
    root = write_fixture('rap', tmp_path/'r', n_images=6, layout='root-level', masks=False)
    m = sio.loadmat(root/'RAP_annotation.mat'); st = m['RAP_annotation']
    label = st['label'][0, 0]; label[:, :3] = np.where(label[:, :3] == 2, 1, label[:, :3])   # the fixture's own 2 out
    label[0, 0] = label[1, 0] = label[2, 2] = 2; label[3, 60] = 2                            # 2 + 1 in kept columns, 1 past them
    sio.savemat(root/'RAP_annotation.mat', {'RAP_annotation': st})
    assert cli(['check', 'rap', str(root), '--json', str(tmp_path/'rep.json')]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path/'rep.json').read_text())
    assert rep['uncertain']['count'] == 3 and rep['uncertain']['rule'] == 'negative' and 'read as negative (0)' in rep['uncertain']['reading']
    assert [a['uncertain'] for a in rep['attributes'][:4]] == [2, 0, 1, 0] and sum(a['uncertain'] for a in rep['attributes']) == 3
    assert all(a['unspecified'] == 0 for a in rep['attributes'])
    assert "uncertain: 3 labels are RAP's 2 ('uncertain'), read as negative (0), [15]'s reading" in out and "uncertain='unspecified'" in out
    head = next(l for l in out.splitlines() if l.startswith('attribute'))
    assert head.split() == ['attribute', 'pos', '%', 'unspecified', 'uncertain']
    assert next(l for l in out.splitlines() if l.startswith('Female')).split()[-2:] == ['0', '2']
    rep = check_dataset('rap', root, progress=False, uncertain='unspecified')
    assert rep['uncertain']['rule'] == 'unspecified' and 'kept unspecified' in rep['uncertain']['reading']
    assert [(a['unspecified'], a['uncertain']) for a in rep['attributes'][:3]] == [(2, 2), (0, 0), (1, 1)]


def test_a_wider_copy_coded_1_0_minus1_is_named(tmp_path, monkeypatch):
    "A WIDER-Attribute copy coded 1 / 0 / -1 (the csv kind's coding) read with negatives and unspecified swapped, data check OK, no word."
    import warnings
    import har_kit.data as D
    from har_kit.check import check_dataset
    root = D.tiny_fixture('wider', tmp_path/'w', n=60)
    monkeypatch.setattr(D, 'CODING_CHECK_FROM', 10)   # the fixture's 120 targets stand for a real set's thousands
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter('always'); D.read_wider(root)
    assert not [w for w in got if 'outnumbers -1' in str(w.message)]   # as published: no word
    for f in Path(root).rglob('*.json'):
        o = json.loads(f.read_text())
        for im in o['images']:
            for t in im['targets']: t['attribute'] = [{-1: 0, 0: -1}.get(v, v) for v in t['attribute']]
        f.write_text(json.dumps(o))
    rep = check_dataset('wider', root, progress=False)
    assert any('the code 0 (read as unspecified) outnumbers -1' in w and 'swap 0 and -1' in w for w in rep['warnings']), rep['warnings']


def test_a_leftover_folder_of_file_manager_litter_does_not_win_the_layout(tmp_path):
    "A PA-100K copy with its images in data/ and a leftover data/release_data/release_data/ holding only .DS_Store was read from the empty folder: every image 'missing'."
    from har_kit.data import tiny_fixture
    root = tiny_fixture('pa100k', tmp_path/'p')
    before = read_pa100k(root)
    leftover = root/'data'/'release_data'/'release_data'; leftover.mkdir(parents=True)
    (leftover/'.DS_Store').write_bytes(b'\0\0\0\1Bud1'); (leftover/'__MACOSX').mkdir()
    d = read_pa100k(root)
    assert d.meta['images'] == before.meta['images'] == str(root/'data') and len(d.samples) == len(before.samples)


def test_missing_images_are_named_as_the_annotation_lists_them(tmp_path):
    "Names with a folder level or prefix the image folder lacks were shown by their base name alone, a file plainly there."
    from har_kit.data import tiny_fixture
    root = tiny_fixture('wider', tmp_path/'w', n=6)
    img = root/'Image'; (root/'Image2').mkdir(); (img).rename(root/'Image2'/'Image'); (root/'Image2').rename(img)   # Image/Image/train/...
    with pytest.raises(KitError, match=r'missing under .*Image \(first: train/'):
        read_wider(root)


def test_an_unknown_layout_says_how_to_fix_it_and_names_rethinking_of_pars_pickle(tmp_path):
    "A root holding [15]'s preprocessed dataset_all.pkl, or the images under another folder name, was refused without a way out."
    (tmp_path/'images').mkdir(); (tmp_path/'dataset_all.pkl').write_bytes(b'\x80\x04.')
    with pytest.raises(KitError, match=r"dataset_all.pkl looks like Rethinking_of_PAR's preprocessed output.*ln -s YOUR_IMAGE_FOLDER data"):
        read_pa100k(tmp_path)


def test_a_turned_label_matrix_is_named_as_turned(tmp_path):
    "An h5py round trip stores train_label as attributes x images: the refusal said only 'N columns', not that the matrix is turned."
    root = _pa(tmp_path, n=40)
    m = sio.loadmat(root/'annotation.mat')
    _edit_pa(root, train_label=m['train_label'].T)
    with pytest.raises(KitError, match=r'train_label has \d+ columns but attributes lists (\d+) names; it is \1 x \d+, images x attributes turned'):
        read_pa100k(root)
