"""Tests of har_kit.formats: the dataset-kind registry, layout detection for every published and root-level layout,
the one mask path, image names kept inside the image folder, the image check and decoder, and the fixtures."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from har_kit.core import KitError
from har_kit.data import dataset_reader
from har_kit.formats import (DATASET_KINDS, LAYOUTS, default_mask_root, detect_layout, image_file, image_problem, load_rgb,
                             mask_path, write_fixture)


def test_registry_fields():
    assert {k: (d.aspect, d.metric) for k, d in DATASET_KINDS.items()} == {
        'wider': (1, 'mAP'), 'rap': (2, 'mA'), 'pa100k': (2, 'mA'), 'csv': (2, 'mA')}
    assert DATASET_KINDS['wider'].headline == ('mAP',) and 'mA' in DATASET_KINDS['rap'].headline
    assert len(DATASET_KINDS['wider'].attributes) == 14 and len(DATASET_KINDS['rap'].attributes) == 51
    assert len(DATASET_KINDS['pa100k'].attributes) == 26 and DATASET_KINDS['csv'].attributes is None
    assert all(callable(dataset_reader(k)) and dataset_reader(k).__name__ == d.reader_name for k, d in DATASET_KINDS.items())


@pytest.mark.parametrize('kind,layout', [(k, name) for k, ls in LAYOUTS.items() for name, *_ in ls])
def test_every_layout_is_written_detected_and_read_with_no_flags(kind, layout, tmp_path):
    root = write_fixture(kind, tmp_path/'d', n_images=6, layout=layout)
    lay = detect_layout(kind, root)
    assert lay.name == layout and lay.annotation.is_file() and lay.images.is_dir()
    data = dataset_reader(kind)(root)
    assert data.meta['layout'] == layout and data.meta['masks_attached'] == len(data) > 0


def test_published_layouts_are_the_archives():
    want = {'wider': 'wider_attribute_annotation/wider_attribute_trainval.json', 'rap': 'RAP_annotation/RAP_annotation.mat',
            'pa100k': 'annotation/annotation.mat'}
    for kind, path in want.items():
        assert LAYOUTS[kind][0][0] == 'published' and LAYOUTS[kind][0][1][0] == path
    assert [l[2] for l in LAYOUTS['pa100k']].count('data/release_data/release_data') == 2


def test_no_layout_lists_what_was_looked_for_and_found(tmp_path):
    (tmp_path/'stuff').mkdir(); (tmp_path/'notes.txt').touch()
    with pytest.raises(KitError) as e: detect_layout('rap', tmp_path)
    msg = str(e.value)
    assert 'RAP_annotation/RAP_annotation.mat with RAP_dataset/' in msg and 'root-level: RAP_annotation.mat' in msg
    assert 'Found: notes.txt, stuff/' in msg and 'rap.idealtest.org' in msg
    with pytest.raises(KitError, match='does not exist'): detect_layout('wider', tmp_path/'absent')
    with pytest.raises(KitError, match='root is None'): detect_layout('pa100k', None)
    with pytest.raises(KitError, match='use one of wider, rap, pa100k, csv'): detect_layout('peta', tmp_path)


def test_annotation_without_its_image_folder_is_not_a_layout(tmp_path):
    write_fixture('pa100k', tmp_path, n_images=6, layout='root-level', masks=False)
    (tmp_path/'data').rename(tmp_path/'images')
    with pytest.raises(KitError, match='Found: annotation.mat, images/'): detect_layout('pa100k', tmp_path)


def test_mask_path_is_one_rule():
    assert mask_path('/m', 'train/0--Parade/x.jpg', 2) == Path('/m/train/0--Parade/x_2.png')
    assert mask_path(default_mask_root('rap', '/d'), 'CAM01_a.png') == Path('/d/masks/CAM01_a_0.png')
    for bad in ('../x.jpg', '/abs/x.jpg', 'a/../../x.jpg'):
        with pytest.raises(KitError, match='points outside'): mask_path('/m', bad)


def test_image_file_keeps_names_inside():
    assert image_file(Path('/d/I'), 'train/./a.jpg', 'e') == Path('/d/I/train/a.jpg')
    assert image_file(Path('/d/I'), 'train/x/../a.jpg', 'e') == Path('/d/I/train/a.jpg')   # stays inside: fine
    for bad in ('../a.jpg', '/etc/passwd', 'train/../../a.jpg', '..\\..\\a.jpg'):
        with pytest.raises(KitError, match="ann.json: images\\[7\\]: image name .* points outside"):
            image_file(Path('/d/I'), bad, 'ann.json: images[7]')


def test_image_problem_and_decoder(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path/'a.jpg')
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path/'a.png')
    assert image_problem(tmp_path/'a.jpg') is None and image_problem(tmp_path/'a.png') is None
    for name in ('a.jpg', 'a.png'):
        (tmp_path/f'cut-{name}').write_bytes((tmp_path/name).read_bytes()[:-200])
    assert image_problem(tmp_path/'cut-a.jpg').startswith('truncated JPEG')
    assert image_problem(tmp_path/'cut-a.png').startswith('truncated PNG')
    (tmp_path/'t.txt').write_text('hello'); (tmp_path/'z.jpg').touch()
    assert image_problem(tmp_path/'t.txt').startswith('not a readable image')
    assert image_problem(tmp_path/'z.jpg') == 'empty file (0 bytes)' and image_problem(tmp_path/'no.jpg') == 'missing'
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path/'f.tif')
    assert 'floating-point' in image_problem(tmp_path/'f.tif')
    with pytest.raises(KitError, match='f.tif: mode F'): load_rgb(tmp_path/'f.tif')


@pytest.mark.parametrize('mode', ['L', 'P', 'LA', 'RGBA', 'CMYK', '1'])
def test_decoder_converts_common_modes(mode, tmp_path):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 6, 3), dtype=np.uint8)).convert(mode)
    im.save(tmp_path/('x.jpg' if mode == 'CMYK' else 'x.png'))
    a = load_rgb(tmp_path/('x.jpg' if mode == 'CMYK' else 'x.png'))
    assert a.shape == (8, 6, 3) and a.dtype == np.uint8


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    a = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(a).save(tmp_path/'g.png')
    out = load_rgb(tmp_path/'g.png')
    assert out.shape == (8, 8, 3) and (out[..., 0] == (a >> 8)).all() and out.min() == 0 and out.max() == 255


def test_an_image_over_pils_pixel_limit_says_its_size_and_to_downscale_it(tmp_path, monkeypatch):
    "PIL's DecompressionBombError (over twice Image.MAX_IMAGE_PIXELS) is explained, not named alone; no huge file needed."
    from PIL import Image
    from har_kit.core import KitError
    from har_kit.formats import check_images, load_rgb
    Image.new('RGB', (40, 30)).save(tmp_path/'big.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 500)
    for f in (lambda: check_images([tmp_path/'big.png']), lambda: load_rgb(tmp_path/'big.png', photo=True)):
        with pytest.raises(KitError, match=r"big.png.*1,200 pixels, over PIL's limit of 1,000 .*downscale it"): f()
