"Masks: target selection on constructed detections, the four sources through `make_masks`, cache resume, bad input,\nand the one mask convention: what `make_masks` writes, every reader attaches, for every dataset kind and source."
import dataclasses, json, re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from har_kit.core import KitError, load_json
from har_kit.loading import HarDataset
from har_kit.data import load_dataset, read_wider, tiny_fixture
from har_kit.formats import DATASET_KINDS, mask_home, mask_path, write_fixture
from har_kit.mask_sources import BoxSource, MaskRCNNSource, read_mask, sample_key, select_target, target_of, write_mask
from har_kit.masks import attach_masks, cli, make_masks, mask_cache_dir, mask_iou, mask_quality, summed_feature_outline


def _person(x0, y0, x1, y1, size=(40, 40), p=0.9):
    m = np.zeros(size, np.float32); m[y0:y1, x0:x1] = p
    return m


# ---------------------------------------------------------------- target selection (pure)
def test_overlapping_people_pick_the_target_not_the_higher_scored_neighbour():
    target, neigh = _person(10, 5, 20, 25), _person(16, 8, 30, 30)
    t = select_target((10, 5, 10, 20), (40, 40), [[16, 8, 30, 30], [10, 5, 20, 25]], np.stack([neigh, target]))
    assert (t.det, t.reason, t.clipped) == (1, None, False)
    assert (t.mask == (target > .5)).all()


def test_big_person_behind_covering_the_box_is_not_chosen():
    # a large person whose box contains the target box: high inside-fraction is not enough, the IoU is low
    behind = _person(0, 0, 40, 40)
    t = select_target((10, 10, 8, 8), (40, 40), [[0, 0, 40, 40]], behind[None])
    assert t.det is None and t.reason.startswith('no detection matched')
    assert t.mask.sum() == 64


def test_mask_is_cut_to_the_box_and_binarized():
    soft = _person(10, 5, 20, 25, p=0.4); soft[5:25, 10:15] = 0.8   # only the left half is above 0.5
    t = select_target((8, 0, 14, 30), (40, 40), [[10, 5, 20, 25]], soft[None])
    assert t.det == 0 and t.mask.sum() == 5 * 20 and not t.mask[:, 15:].any()
    t = select_target((12, 5, 8, 20), (40, 40), [[10, 5, 20, 25]], _person(10, 5, 20, 25)[None])
    assert t.mask.sum() == 8 * 20 and not t.mask[:, :12].any()


def test_none_found_falls_back_to_the_box():
    t = select_target((10, 5, 10, 20), (40, 40), np.zeros((0, 4)), np.zeros((0, 40, 40)))
    assert (t.det, t.reason) == (None, 'no person detected') and t.mask.sum() == 200
    # a detection whose mask is empty inside the box never matches, whatever its box
    empty = np.zeros((1, 40, 40)); empty[0, 30:, 30:] = 1
    t = select_target((10, 5, 10, 20), (40, 40), [[10, 5, 20, 25]], empty)
    assert t.det is None and t.mask.sum() == 200


def test_box_partly_outside_is_clipped_and_flagged_fully_outside_is_an_error():
    target = _person(0, 5, 20, 25)
    t = select_target((-5, 5, 25, 20), (40, 40), [[0, 5, 20, 25]], target[None])
    assert (t.det, t.clipped) == (0, True) and (t.mask == (target > .5)).all()
    t = select_target((30, 30, 20, 20), (40, 40), np.zeros((0, 4)), np.zeros((0, 40, 40)))
    assert t.clipped and t.mask.sum() == 100
    with pytest.raises(KitError, match='scene.jpg#3.*outside'):
        select_target((45, 0, 5, 5), (40, 40), np.zeros((0, 4)), np.zeros((0, 40, 40)), where='scene.jpg#3')


# ---------------------------------------------------------------- sources and cache on a tiny WIDER fixture
@pytest.fixture
def wider(tmp_path):
    root = tiny_fixture('wider', tmp_path/'wider', n=6)
    return read_wider(root)


def test_every_mask_is_on_disk_before_the_log_line_that_trusts_it(wider, tmp_path, monkeypatch):
    "The log marks a mask made; a rerun then never remakes it, so the PNG is synced before its line is (a power loss in between)."
    import os
    synced, fsync = [], os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: (synced.append(os.readlink(f'/proc/self/fd/{fd}')), fsync(fd))[1])
    masks = make_masks(wider, 'none', cache_dir=tmp_path/'c', progress=False)
    kinds = ''.join('L' if p.endswith('log.jsonl') else 'P' if '.png.' in Path(p).name else '' for p in synced)   # report.json aside
    assert re.fullmatch('(P+L)+', kinds) and kinds.count('P') == len(masks) == len(wider.samples), kinds   # each batch: its PNGs, then its lines


def test_four_sources_through_one_call(wider, tmp_path):
    gt = make_masks(wider, 'renderer', cache_dir=tmp_path/'c', progress=False)
    box = make_masks(wider, 'none', cache_dir=tmp_path/'c', progress=False)
    assert sorted(gt) == list(range(len(wider.samples))) and all(p.exists() for p in gt.values())
    q = mask_quality(wider, box, gt)
    assert len(q) == len(wider.samples) and 0 < q.iou.mean() < 1   # the fixture's person is narrower than its box
    assert q.iou.min() > 0.3
    user = tmp_path/'user'
    for i, p in gt.items(): write_mask(read_mask(p), user/f'{sample_key(wider.samples[i], wider.root)}.png')
    d = make_masks(wider, 'directory', cache_dir=tmp_path/'c', directory=user, progress=False)
    assert (mask_quality(wider, d, gt).iou == 1).all() and d.report['notes'] == []
    rc = make_masks(wider, 'maskrcnn', cache_dir=tmp_path/'c', weights=None, indices=[0, 1], progress=False,
                    min_size=64, max_size=96, box_detections_per_img=5)
    assert sorted(rc) == [0, 1] and all(p.exists() for p in rc.values())
    r = rc.report
    assert r['fallbacks'] == len(r['fallback_samples']) and all(f['reason'] for f in r['fallback_samples'])
    # four different cache folders under one dataset folder
    folders = {m.directory for m in (gt, box, d, rc)}
    assert len(folders) == 4 and len({f.parent for f in folders}) == 1
    assert load_json(rc.directory/'report.json')['n'] == 2


def test_masks_feed_the_dataset(wider, tmp_path):
    box = make_masks(wider, 'none', cache_dir=tmp_path/'c', progress=False)
    data = attach_masks(wider, box)
    assert data.samples[3].mask == box[3] and wider.samples[3].mask != box[3]
    item = HarDataset(data, with_mask=True)[0]
    assert item['mask'].shape[-2:] == item['image'].shape[-2:] and item['mask'].min() == 1   # the box, cropped


def test_rerun_skips_and_deleted_masks_are_recomputed(wider, tmp_path):
    first = make_masks(wider, 'none', cache_dir=tmp_path/'c', progress=False)
    assert (first.report['computed'], first.report['cached']) == (len(wider.samples), 0)
    again = make_masks(wider, 'none', cache_dir=tmp_path/'c', progress=False)
    assert (again.report['computed'], again.report['cached']) == (0, len(wider.samples))
    first[2].unlink()
    assert make_masks(wider, 'none', cache_dir=tmp_path/'c', progress=False).report['computed'] == 1


def test_masks_of_a_replaced_image_or_a_rewritten_user_png_are_made_again(tmp_path):
    "The log records the files each mask was made from; a rerun remakes the masks whose files changed, not the others."
    import os
    data = load_dataset('pa100k', write_fixture('pa100k', tmp_path/'pa', n_images=6))
    user = tmp_path/'user'; user.mkdir()
    for s in data.samples: write_mask(np.ones(Image.open(s.image).size[::-1], bool), user/f'{s.image.stem}.png')
    run = lambda: make_masks(data, 'directory', directory=user, mask_root=tmp_path/'m', progress=False)
    assert run().report['computed'] == 6 and run().report['cached'] == 6
    s = data.samples[1]; W, H = Image.open(s.image).size
    write_mask(np.eye(H, W, dtype=bool), user/f'{s.image.stem}.png')   # the user's PNG rewritten
    again = run()
    assert (again.report['computed'], again.report['cached']) == (1, 5) and read_mask(again[1]).sum() == min(H, W)
    st = data.samples[4].image.stat(); os.utime(data.samples[4].image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # the image replaced
    assert (run().report['computed'], run().report['cached']) == (1, 6)


def test_an_image_replaced_by_one_of_another_size_says_to_remake_its_masks_and_a_remake_fixes_it(tmp_path, monkeypatch):
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path/'kit-data'))
    root = write_fixture('pa100k', tmp_path/'pa', n_images=6)
    data = load_dataset('pa100k', root)
    make_masks(data, 'box', progress=False)
    s = data.samples[0]; Image.new('RGB', (30, 70)).save(s.image, format='JPEG')   # replaced in place, another size
    ds = lambda: HarDataset(load_dataset('pa100k', root), with_mask=True)
    from har_kit.data import DataWarning
    with pytest.warns(DataWarning, match='1 of 6 masks no longer fit.*which has changed since.*run har-kit masks again'), \
            pytest.raises(KitError, match='1 of 6 samples have no mask.*har-kit masks'): ds()   # the mask's log says so
    log = mask_home('pa100k', root)/'log.jsonl'; kept = log.read_bytes(); log.unlink()
    with pytest.raises(KitError, match='make its masks again'): ds()[0]   # without a log, the loader sees the sizes differ
    log.write_bytes(kept)
    with pytest.warns(DataWarning, match='no longer fit'): stale = load_dataset('pa100k', root)
    assert make_masks(stale, 'box', progress=False).report['computed'] == 1
    assert ds()[0]['mask'].shape[-2:] == ds()[0]['image'].shape[-2:]


def test_same_image_and_box_twice_share_one_mask(wider, tmp_path):
    dup = dataclasses.replace(wider, samples=wider.samples + [dataclasses.replace(wider.samples[0], split='val')])
    m = make_masks(dup, 'none', cache_dir=tmp_path/'c', progress=False)
    n = len(wider.samples)
    assert m[n] == m[0] and (m.report['n'], m.report['computed']) == (n + 1, n)


def test_two_images_differing_only_in_suffix_are_refused_before_any_mask_is_written(tmp_path):
    data = load_dataset('pa100k', write_fixture('pa100k', tmp_path/'pa', n_images=6))
    s = data.samples[0]; png = Image.open(s.image); twin = s.image.with_suffix('.png'); png.save(twin)
    other = dataclasses.replace(s, image=twin, meta={**s.meta, 'file_name': twin.name})
    with pytest.raises(KitError, match=f"images '{s.image.name}' and '{twin.name}' would share the mask {s.image.stem}_0.png"):
        make_masks(dataclasses.replace(data, samples=data.samples + [other]), 'box', mask_root=tmp_path/'m', progress=False)
    assert not (tmp_path/'m').exists()


def test_a_users_masks_in_every_usual_encoding_are_read_as_the_same_person(tmp_path):
    "0/1 grey, a palette (index 1: the person), 0/255 grey, 16-bit and an alpha cut-out: none may become an empty mask."
    data = load_dataset('pa100k', write_fixture('pa100k', tmp_path/'pa', n_images=6))
    data = dataclasses.replace(data, samples=data.samples[:5])
    user = tmp_path/'user'; user.mkdir()
    for i, s in enumerate(data.samples):
        W, H = Image.open(s.image).size
        m = np.zeros((H, W), np.uint8); m[H // 4:3 * H // 4, W // 4:3 * W // 4] = 1
        p = user/f'{s.image.stem}.png'
        if i == 1: im = Image.fromarray(m, 'P'); im.putpalette([0, 0, 0, 128, 0, 0])
        elif i == 4: im = Image.fromarray(np.dstack([np.full((H, W, 3), 255, np.uint8), m * 255]), 'RGBA')
        else: im = Image.fromarray([m, None, m * 255, m.astype(np.uint16) * 255][i])
        im.save(p)
    ms = make_masks(data, 'directory', directory=user, mask_root=tmp_path/'m', progress=False)
    assert ms.report['fallbacks'] == 0
    for i, s in enumerate(data.samples):
        W, H = Image.open(s.image).size
        assert read_mask(ms[i]).sum() == (3 * H // 4 - H // 4) * (3 * W // 4 - W // 4), i


def test_one_png_named_after_two_images_stem_is_refused(tmp_path):
    "images/a/1.jpg and images/b/1.jpg with one 1.png: it cannot say whose mask it is (it would go to both)."
    root = write_fixture('csv', tmp_path/'c', n_images=6)
    data = load_dataset('csv', root)
    a, b = data.samples[:2]
    for s, d in ((a, 'a'), (b, 'b')): (s.image.parent/d).mkdir(); (s.image.parent/d/'1.jpg').write_bytes(s.image.read_bytes())
    two = [dataclasses.replace(a, image=a.image.parent/'a'/'1.jpg', meta={**a.meta, 'file_name': 'a/1.jpg'}),
           dataclasses.replace(b, image=b.image.parent/'b'/'1.jpg', meta={**b.meta, 'file_name': 'b/1.jpg'})]
    user = tmp_path/'user'; user.mkdir(); write_mask(np.ones(Image.open(a.image).size[::-1], bool), user/'1.png')
    with pytest.raises(KitError, match="both have the stem '1'"):
        make_masks(dataclasses.replace(data, samples=two), 'directory', directory=user, mask_root=tmp_path/'m', progress=False)


class _Crash(BoxSource):
    "Box source that dies on its second batch, like an interrupted run."
    calls = 0
    def __call__(self, jobs):
        self.calls += 1
        if self.calls == 2: raise RuntimeError('interrupted')
        return super().__call__(jobs)


def test_interrupted_run_resumes_where_it_stopped(wider, tmp_path):
    with pytest.raises(RuntimeError, match='interrupted'):
        make_masks(wider, _Crash(), cache_dir=tmp_path/'c', batch_size=2, progress=False)
    folder = mask_cache_dir(wider, BoxSource(), tmp_path/'c')
    done = len(list(folder.rglob('*.png')))
    assert done == 4 and not list(folder.rglob('*.tmp'))   # 2 images x 2 targets, no half-written file
    # a log line cut mid-write is ignored and its sample redone
    with open(folder/'log.jsonl', 'a') as f: f.write('{"key": "Image/tra')
    r = make_masks(wider, 'none', cache_dir=tmp_path/'c', batch_size=2, progress=False).report
    assert (r['cached'], r['computed']) == (done, len(wider.samples) - done)
    assert all(json.loads(l) for l in (folder/'log.jsonl').read_text().splitlines()[-2:])


def test_box_partly_outside_is_recorded_and_fully_outside_names_the_image(wider, tmp_path):
    s = wider.samples
    part = dataclasses.replace(wider, samples=[dataclasses.replace(s[0], box=(-10, -10, 40, 40))] + s[1:])
    r = make_masks(part, 'none', cache_dir=tmp_path/'c', progress=False).report
    assert r['clipped'] == [0]
    out = dataclasses.replace(wider, samples=[dataclasses.replace(s[0], box=(500, 500, 10, 10))] + s[1:])
    with pytest.raises(KitError, match=f'{s[0].image.name}.*outside'):
        make_masks(out, 'none', cache_dir=tmp_path/'c2', progress=False)


def test_unreadable_image_is_an_error_naming_it(wider, tmp_path):
    wider.samples[0].image.write_bytes(b'garbage')
    with pytest.raises(KitError, match=f'{wider.samples[0].image.name}: cannot read'):
        make_masks(wider, 'none', cache_dir=tmp_path/'c', progress=False)


def test_image_over_pils_pixel_limit_is_an_error_naming_it(tmp_path, monkeypatch):
    "PIL's DecompressionBombError (over ~179 MP; a small MAX_IMAGE_PIXELS stands in) -> the KitError load_rgb gives, not a raw traceback."
    from har_kit.formats import load_rgb
    from har_kit.formats import image_size
    Image.new('RGB', (300, 400)).save(tmp_path/'big.jpg')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 20_000)
    with pytest.raises(KitError) as said: load_rgb(tmp_path/'big.jpg')
    with pytest.raises(KitError, match="big.jpg: 120,000 pixels, over PIL's limit of 40,000") as e: image_size(tmp_path/'big.jpg')
    assert str(e.value) == str(said.value)


def test_directory_sizes_missing_and_box_sized_masks(wider, tmp_path):
    s0 = wider.samples[0]
    user = tmp_path/'user'
    x, y, w, h = (int(v) for v in s0.box)
    write_mask(np.ones((h, w), bool), user/f'{sample_key(s0, wider.root)}.png')      # box-sized: pasted into the box
    d = make_masks(wider, 'directory', cache_dir=tmp_path/'c', directory=user, indices=[0], progress=False)
    m = read_mask(d[0])
    assert m.shape == Image.open(s0.image).size[::-1] and m.sum() == w * h and d.report['notes']
    write_mask(np.ones((7, 5), bool), user/f'{sample_key(wider.samples[1], wider.root)}.png')
    with pytest.raises(KitError, match='5x7'):
        make_masks(wider, 'directory', cache_dir=tmp_path/'c', directory=user, indices=[1], progress=False)
    with pytest.raises(KitError, match='no mask PNG for 1 of 1'):
        make_masks(wider, 'directory', cache_dir=tmp_path/'c', directory=user, indices=[2], progress=False)
    with pytest.raises(KitError, match='renderer source only works'):
        make_masks(dataclasses.replace(wider, samples=[dataclasses.replace(s0, mask=None)]), 'renderer',
                   cache_dir=tmp_path/'c', progress=False)


def test_random_maskrcnn_is_deterministic_and_keyed_by_its_settings():
    a = MaskRCNNSource(weights=None, min_size=64, max_size=96, box_detections_per_img=5)
    b = MaskRCNNSource(weights=None, min_size=64, max_size=96, box_detections_per_img=5)
    assert a.key == b.key != MaskRCNNSource(weights=None, min_size=80).key
    im = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    (ba, ma), = a.detect([im]); (bb, mb), = b.detect([im])
    assert np.array_equal(ba, bb) and np.array_equal(ma, mb) and ma.shape[1:] == (48, 40)


def test_cli(wider, tmp_path, capsys):
    assert cli(['--dataset', 'wider', '--root', str(wider.root), '--source', 'none', '--cache-dir', str(tmp_path/'c')]) == 0
    assert f'{len(wider.samples)} masks ({len(wider.samples)} computed, 0 cached)' in capsys.readouterr().out
    assert cli(['--dataset', 'wider', '--root', str(wider.root), '--source', 'directory',
                '--directory', str(tmp_path/'nope'), '--cache-dir', str(tmp_path/'c')]) == 2
    assert 'no such folder' in capsys.readouterr().err


# ---------------------------------------------------------------- quality and Fig. 4 (pure)
def test_mask_iou():
    a, b = _person(0, 0, 10, 10) > 0, _person(5, 0, 15, 10) > 0
    assert mask_iou(a, b) == pytest.approx(50 / 150) and mask_iou(a, a) == 1.0
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0 and mask_iou(a, ~a) == 0.0


def test_summed_feature_outline_recovers_a_blob_and_keeps_at_most_half():
    f = torch.rand(16, 8, 6) * 0.1; f[:, :, :3] += 1.0        # the 'person' covers exactly half of the map
    s, o = summed_feature_outline(f)
    assert s.shape == (8, 6) and torch.equal(o, f[0] > 0.5)
    f = torch.zeros(16, 8, 6); f[:, 2:6, 2:4] = 1.0             # a small one on an empty background
    assert torch.equal(summed_feature_outline(f)[1], f[0] > 0)
    s, o = summed_feature_outline(np.random.default_rng(0).normal(size=(3, 4, 9, 5)))
    assert o.shape == (3, 9, 5) and (o.flatten(1).sum(1) == 22).all()
    with pytest.raises(KitError, match='expected'):
        summed_feature_outline(torch.zeros(3, 3))


# ---------------------------------------------------------------- one mask convention: writer and readers agree
_RCNN = dict(min_size=32, max_size=64, box_detections_per_img=3, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20)

@pytest.mark.parametrize('kind', list(DATASET_KINDS))
def test_every_source_is_attached_by_the_readers_with_no_argument(kind, tmp_path, monkeypatch):
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path/'kit-data'))   # the mask home lives under the kit's data folder
    root = write_fixture(kind, tmp_path/kind, n_images=6, layout='published')
    shipped = sorted(p.stat().st_mtime_ns for p in (root/'masks').rglob('*.png'))
    data = load_dataset(kind, root)
    n = len(data)
    assert data.meta['masks_attached'] == n                       # the fixture's ground truth, at the default root
    user = tmp_path/'user'                                        # a user's folder in the kit's own convention
    for s in data.samples: write_mask(read_mask(s.mask), mask_path(user, *target_of(s)))
    runs = [('renderer', {}), ('directory', dict(directory=user)), ('box', {}), ('maskrcnn', dict(weights=None, **_RCNN))]
    for source, kw in runs:
        m = make_masks(data, source, progress=False, **kw)
        assert m.directory == mask_home(kind, root) and m.report['computed'] == n   # outside the dataset folder
        back = load_dataset(kind, root)                            # what a training section does: no mask argument
        assert back.meta['masks_attached'] == n, source
        assert [s.mask for s in back.samples] == [m[i] for i in range(n)]
        assert len(HarDataset(back, with_mask=True)[0]['mask'].shape) == 3
    assert sorted(p.stat().st_mtime_ns for p in (root/'masks').rglob('*.png')) == shipped   # the dataset's own masks untouched
    elsewhere = make_masks(data, 'box', mask_root=tmp_path/'m', progress=False)
    assert load_dataset(kind, root, mask_dir=tmp_path/'m').meta['masks_attached'] == n
    assert elsewhere.report['mask_root'] == str(tmp_path/'m')


def test_another_source_replaces_the_masks_and_a_rerun_takes_them_from_the_log(tmp_path):
    data = load_dataset('pa100k', write_fixture('pa100k', tmp_path/'pa', n_images=6))
    assert make_masks(data, 'box', progress=False).report['computed'] == 6
    assert make_masks(data, 'box', progress=False).report['cached'] == 6
    m = make_masks(data, 'maskrcnn', weights=None, progress=False, **_RCNN)
    assert m.report['computed'] == 6                               # the box masks were another source's


def test_synthetic_ground_truth_is_not_overwritten(tmp_path):
    root = write_fixture('wider', tmp_path/'w', n_images=6)
    (root/'synth_meta.json').write_text('{"generator": "har_kit.synth", "images": {}}')
    with pytest.raises(KitError, match="ground-truth masks; write source 'box' elsewhere: pass mask_root"):
        make_masks(load_dataset('wider', root), 'box', progress=False)


def test_a_missing_weights_file_leaves_no_mask_folder(tmp_path, capsys):
    "`har-kit masks --source maskrcnn --weights FILE` with no such FILE: refused before the --mask-root folder is made."
    from har_kit.masks import cli
    root = tiny_fixture('pa100k', tmp_path/'pa', n=6, layout='published')
    assert cli(['--dataset', 'pa100k', '--root', str(root), '--source', 'maskrcnn', '--weights', str(tmp_path/'none.pth'), '--mask-root', str(tmp_path/'m')]) != 0
    assert 'no such file' in capsys.readouterr().err and not (tmp_path/'m').exists()


def test_a_refused_source_leaves_no_mask_root_and_an_empty_one_hides_nothing(tmp_path, monkeypatch, capsys):
    """`har-kit masks --source directory` on a folder without the PNGs: exit 2, no empty mask home left behind; one that is
    there anyway (left by an older kit) is passed over, so the dataset's own masks stay attached."""
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path/'kit-data'))
    root = tiny_fixture('pa100k', tmp_path/'pa')
    assert load_dataset('pa100k', root).meta['masks_attached'] == 12            # the fixture's ROOT/masks
    (tmp_path/'none').mkdir()
    assert cli(['--dataset', 'pa100k', '--root', str(root), '--source', 'directory', '--directory', str(tmp_path/'none')]) == 2
    assert 'no mask PNG for 12 of 12 samples' in capsys.readouterr().err
    assert not mask_home('pa100k', root).exists() and not (tmp_path/'kit-data'/'masks').exists()
    mask_home('pa100k', root).mkdir(parents=True)                               # an empty mask home, as the old kit left it
    data = load_dataset('pa100k', root)
    assert data.meta['masks_attached'] == 12 and data.meta['mask_root'] == str(root/'masks')


def test_a_mask_made_for_another_box_or_image_is_left_off_by_the_readers_until_made_again(tmp_path, monkeypatch):
    "A corrected box or an image replaced in place (same size): the readers leave the old mask off and say so, instead of "
    "cutting it to the new target; `make_masks` with the same source makes exactly those again, and they are attached."
    import os, warnings
    from har_kit.data import DataWarning
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path/'kit-data'))
    root = write_fixture('wider', tmp_path/'w', n_images=6, masks=False, layout='published')
    assert make_masks(read_wider(root), 'box', progress=False).report['computed'] == 12
    ann = next(root.rglob('wider_attribute_trainval.json'))
    j = json.loads(ann.read_text()); j['images'][0]['targets'][0]['bbox'] = [30, 10, 20, 40]; ann.write_text(json.dumps(j))
    img = root/'Image'/j['images'][2]['file_name']; st = img.stat()
    Image.new('RGB', Image.open(img).size, (200, 10, 10)).save(img, format='JPEG')   # replaced in place, the same size
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        data = read_wider(root)
    said = [str(x.message) for x in w if issubclass(x.category, DataWarning)]
    assert len(said) == 1 and '3 of 12 masks no longer fit their targets' in said[0] and 'run har-kit masks again' in said[0], said
    off = [s for s in data.samples if s.mask is None]   # the moved box's target, and both targets of the replaced image
    assert {(s.meta['file_name'], s.meta['target']) for s in off} == {(j['images'][0]['file_name'], 0)} | \
        {(j['images'][2]['file_name'], t) for t in (0, 1)} and data.meta['masks_stale'] == 3 and data.meta['masks_attached'] == 9, off
    assert make_masks(data, 'box', progress=False).report['computed'] == 3   # exactly those
    with warnings.catch_warnings():
        warnings.simplefilter('error', DataWarning)
        again = read_wider(root)
    assert again.meta['masks_attached'] == 12 and again.meta['masks_stale'] == 0
    s = next(x for x in again.samples if x.meta['file_name'] == j['images'][0]['file_name'] and x.meta['target'] == 0)
    assert HarDataset([s], with_mask=True)[0]['mask'].float().mean() == 1   # the box source's mask of the new box: all person


def test_a_moved_dataset_keeps_the_masks_shipped_in_it(tmp_path):
    "Masks in ROOT/masks whose log names the images where they were made: once the dataset is moved, those paths are "
    "gone, which says nothing about the images, so the readers keep attaching the masks (the writer would make them again)."
    import shutil
    root = write_fixture('pa100k', tmp_path/'pa', n_images=6, masks=False)
    make_masks(load_dataset('pa100k', root), 'box', mask_root=root/'masks', progress=False)
    moved = shutil.move(root, tmp_path/'moved')
    data = load_dataset('pa100k', moved)
    assert data.meta['masks_attached'] == len(data) and data.meta['masks_stale'] == 0


def test_a_mask_made_from_a_relative_root_is_checked_from_any_folder(tmp_path, monkeypatch):
    "The log names the files a mask was made from by their absolute path: an image changed since is seen from any working folder."
    from har_kit.data import DataWarning
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path/'kit-data'))
    write_fixture('pa100k', tmp_path/'p4', n_images=6, masks=False)
    monkeypatch.chdir(tmp_path)
    make_masks(load_dataset('pa100k', 'p4'), 'box', progress=False)               # a relative root, as `har-kit masks --root p4`
    img = load_dataset('pa100k', 'p4').samples[0].image
    Image.new('RGB', Image.open(img).size, (9, 9, 9)).save(img, format='JPEG')   # the image changes
    (tmp_path/'elsewhere').mkdir(); monkeypatch.chdir(tmp_path/'elsewhere')
    with pytest.warns(DataWarning, match='1 of 6 masks no longer fit'):
        assert load_dataset('pa100k', tmp_path/'p4').meta['masks_stale'] == 1
    r = make_masks(load_dataset('pa100k', tmp_path/'p4'), 'box', progress=False).report
    assert (r['computed'], r['cached']) == (1, 5)   # the others are found from here too


def test_a_directory_png_added_in_a_layout_read_first_remakes_the_cached_mask(tmp_path):
    "The directory source reads the kit's mask_path layout before <image stem>.png: a PNG added there is what the mask is made from now."
    root = write_fixture('pa100k', tmp_path/'p5', n_images=6, masks=False)
    data, user = load_dataset('pa100k', root), tmp_path/'user'
    for s in data.samples: write_mask(np.ones(Image.open(s.image).size[::-1], bool), user/f'{s.image.stem}.png')
    run = lambda: make_masks(data, 'directory', directory=user, mask_root=tmp_path/'out', progress=False)
    assert run().report['computed'] == 6
    s = data.samples[0]; h, w = Image.open(s.image).size[::-1]
    half = np.zeros((h, w), bool); half[:, :w // 2] = True
    write_mask(half, mask_path(user, *target_of(s)))   # the kit's own layout, read first
    again = run()
    assert (again.report['computed'], again.report['cached']) == (1, 5) and read_mask(again[0]).sum() == half.sum()


class _NoPeople(MaskRCNNSource):
    "Mask R-CNN from a weights file, with no model run: it detects no one, so every mask is the box (a fallback)."
    def detect(self, images): return [(np.zeros((0, 4), np.float32), np.zeros((0, *im.shape[:2]), np.float32)) for im in images]


def test_a_maskrcnn_weights_file_replaced_in_place_remakes_the_masks(tmp_path):
    "The weights file is an input of every Mask R-CNN mask: the same path with other weights makes them again."
    root = write_fixture('pa100k', tmp_path/'p1', n_images=6, masks=False)
    data, w = load_dataset('pa100k', root), tmp_path/'w.pth'
    torch.save({'a': torch.zeros(1)}, w)
    run = lambda: make_masks(data, _NoPeople(weights=w), mask_root=tmp_path/'out', progress=False).report
    assert run()['computed'] == 6 and run()['cached'] == 6
    torch.save({'a': torch.zeros(5)}, w)   # other weights at the same path
    assert run()['computed'] == 6


def test_a_stopped_run_of_another_source_is_said_and_leaves_no_report(tmp_path, monkeypatch):
    "Box masks, then a directory run stopped after its first batch in the same folder: the readers say the masks come from two sources."
    from har_kit.data import DataWarning
    from har_kit.mask_sources import DirectorySource
    monkeypatch.setenv('HAR_KIT_DATA', str(tmp_path/'kit-data'))
    root = write_fixture('pa100k', tmp_path/'pb', n_images=6, masks=False)
    data, user = load_dataset('pa100k', root), tmp_path/'user'
    for s in data.samples: write_mask(np.ones(Image.open(s.image).size[::-1], bool), user/f'{s.image.stem}.png')
    home = make_masks(data, 'box', progress=False).directory
    assert (home/'report.json').exists()
    class Stops(DirectorySource):
        calls = 0
        def __call__(self, jobs):
            Stops.calls += 1
            if Stops.calls > 1: raise KeyboardInterrupt
            return super().__call__(jobs)
    with pytest.raises(KeyboardInterrupt): make_masks(data, Stops(user), batch_size=2, progress=False)
    assert not (home/'report.json').exists()   # it would say "box, 6 computed"
    with pytest.warns(DataWarning, match=r'come from 2 sources \(box: 4, directory-\w+: 2\).*stopped part way'):
        load_dataset('pa100k', root)


@pytest.mark.parametrize('args, says', [(['--source', 'maskrcnn', '--weights', 'none', '--min-size', '-5'], "min_size=-5 (--min-size)"),
                                        (['--source', 'maskrcnn', '--weights', 'none', '--min-size', '0'], "min_size=0 (--min-size)"),
                                        (['--source', 'maskrcnn', '--weights', 'none', '--score-thresh', 'nan'], 'score_thresh=nan (--score-thresh)'),
                                        (['--source', 'box', '--directory', 'x'], '--directory is for --source directory'),
                                        (['--source', 'box', '--score-thresh', '0.5'], '--score-thresh is for --source maskrcnn, not box'),
                                        (['--source', 'box', '--directory', 'x', '--device', 'cpu', '--weights', 'none'],
                                         '--directory is for --source directory, not box; --weights, --device are for --source maskrcnn')])
def test_masks_cli_refuses_options_it_would_misuse_or_ignore(tmp_path, args, says, capsys):
    root = write_fixture('pa100k', tmp_path/'p', n_images=6, masks=False)
    assert cli(['--dataset', 'pa100k', '--root', str(root), '--mask-root', str(tmp_path/'out'), *args]) == 2
    assert says in capsys.readouterr().err and not (tmp_path/'out').exists()


def test_a_directory_mask_of_a_two_target_image_is_remade_once_and_never_from_the_stem_png(wider, tmp_path):
    "An image's targets are counted the same way when deciding what to remake and when making it: a stem PNG is never "
    "taken for one target of a two-target image (a fresh run refuses it), and a remade mask is cached afterwards."
    user = tmp_path/'user'
    for s in wider.samples: write_mask(np.ones(Image.open(s.image).size[::-1], bool), user/f'{sample_key(s, wider.root)}.png')
    run = lambda: make_masks(wider, 'directory', directory=user, mask_root=tmp_path/'out', progress=False).report
    assert run()['computed'] == len(wider.samples)
    s = next(s for s in wider.samples if s.meta.get('target') == 1)
    (user/f'{sample_key(s, wider.root)}.png').unlink()
    write_mask(np.ones(Image.open(s.image).size[::-1], bool), user/f'{Path(s.image).stem}.png')   # named after its image alone
    with pytest.raises(KitError, match='no mask PNG for 1 of 2'): run()   # two targets: the stem names neither, as a fresh run says
    write_mask(np.ones(Image.open(s.image).size[::-1], bool), user/f'{sample_key(s, wider.root)}.png')
    assert (run()['computed'], run()['computed']) == (1, 0)   # made again once from its own PNG, then taken from the cache


class _OnlyB(MaskRCNNSource):
    "Mask R-CNN with no model run: of two people side by side, only the right one (person B, x=50..130) is detected."
    def detect(self, images):
        m = np.zeros((1, *images[0].shape[:2]), np.float32); m[:, :, 50:130] = 1
        return [(np.array([[50, 0, 130, 200]], np.float32), m) for _ in images]


def test_one_detection_is_given_to_one_target_of_the_image(tmp_path):
    "Targets A and B overlap, only B was detected: B gets the detection; A, which it would also match alone, gets its box and a reason."
    from har_kit.data import Sample
    img = tmp_path/'scene.jpg'; Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(img)
    a, b = (Sample(img, np.zeros(2, np.int8), 'train', box, meta={'target': t}) for t, box in enumerate([(0, 0, 100, 200), (50, 0, 80, 200)]))
    src = _OnlyB(weights=None, min_size=32)
    (ta, tb), = src([(img, [('a', a), ('b', b)])])
    assert (ta.det, tb.det) == (None, 0)
    assert ta.mask.sum() == 100 * 200 and 'went to other targets' in ta.reason     # A: its box, and why
    assert tb.mask.sum() == 80 * 200 and tb.reason is None
    (tb2, ta2), = src([(img, [('b', b), ('a', a)])])                                # whatever the targets' order
    assert (ta2.det, tb2.det) == (None, 0)
    # two people both detected: each keeps its own, though B's detection matches A's box too
    class _Both(MaskRCNNSource):
        def detect(self, images):
            m = np.zeros((2, 200, 200), np.float32); m[0, :, 0:100] = 1; m[1, :, 50:130] = 1
            return [(np.array([[0, 0, 100, 200], [50, 0, 130, 200]], np.float32), m)]
    (ta, tb), = _Both(weights=None, min_size=32)([(img, [('a', a), ('b', b)])])
    assert (ta.det, tb.det) == (0, 1) and ta.reason is tb.reason is None


def test_a_call_naming_one_target_matches_it_with_its_images_other_targets(tmp_path):
    "make_masks(indices=[A]) gives A what a full run gives it (B's detection is B's), and a later full run neither keeps A's mask of B nor gives B's detection twice."
    from har_kit.data import AttributeData, Sample
    from har_kit.masks import make_masks
    img = tmp_path/'scene.jpg'; Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(img)
    a, b = (Sample(img, np.zeros(2, np.int8), 'train', box, meta={'target': t}) for t, box in enumerate([(0, 0, 100, 200), (50, 0, 80, 200)]))
    data = AttributeData('wider', tmp_path, ['x', 'y'], [a, b])
    src = _OnlyB(weights=None, min_size=32)
    alone = make_masks(data, src, mask_root=tmp_path/'masks', indices=[0], progress=False)
    assert alone.report['fallbacks'] == 1 and 'went to other targets' in alone.report['fallback_samples'][0]['reason']
    full = make_masks(data, src, mask_root=tmp_path/'masks', progress=False)
    ma, mb = (read_mask(full[i]) for i in (0, 1))
    assert ma.sum() == 100 * 200 and mb.sum() == 80 * 200 and full.report['fallbacks'] == 1   # A its box, B the detection


@pytest.mark.parametrize('name', ['min_iou', 'min_inside', 'mask_thresh'])
@pytest.mark.parametrize('bad', ['0.5', 2, -0.1, float('nan'), True, None])
def test_maskrcnn_match_numbers_are_checked_when_the_source_is_made(name, bad):
    "A string (a raw numpy error after the detector ran) or min_iou=2 (every mask silently the box) is refused, naming the parameter."
    with pytest.raises(KitError, match=f'{name}=.*a number in \\[0, 1\\]'): MaskRCNNSource(weights=None, **{name: bad})
    MaskRCNNSource(weights=None, **{name: 0}); MaskRCNNSource(weights=None, **{name: np.float32(1)})   # the ends, a numpy number


def test_a_stem_png_is_refused_for_one_target_of_a_two_target_image_made_alone(wider, tmp_path):
    "Whether an image has one target is counted over the whole dataset: `indices` naming one of its two targets does not make it single."
    s = next(s for s in wider.samples if s.meta.get('target') == 1)
    idx = [i for i, t in enumerate(wider.samples) if t.image == s.image]
    assert len(idx) == 2
    user = tmp_path/'user'
    write_mask(np.ones(Image.open(s.image).size[::-1], bool), user/f'{Path(s.image).stem}.png')   # named after its image alone
    for i in idx:
        with pytest.raises(KitError, match='no mask PNG for 1 of 1'):
            make_masks(wider, 'directory', directory=user, mask_root=tmp_path/'out', indices=[i], progress=False)
    with pytest.raises(KitError, match='no mask PNG for 2 of 2'):
        make_masks(wider, 'directory', directory=user, mask_root=tmp_path/'out', indices=idx, progress=False)


def test_a_stem_png_is_ambiguous_when_an_image_not_made_in_this_call_has_the_stem(tmp_path):
    "a/x.jpg and b/x.jpg in the dataset, only a's target made: x.png still cannot say whose mask it is."
    from har_kit.data import AttributeData, Sample
    a, b = (Sample(tmp_path/'data'/d/'x.jpg', np.zeros(2, np.int8), 'train') for d in 'ab')
    for s in (a, b): s.image.parent.mkdir(parents=True); Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(s.image)
    write_mask(np.ones((8, 8), bool), tmp_path/'user'/'x.png')
    data = AttributeData('csv', tmp_path/'data', ['p', 'q'], [a, b])
    with pytest.raises(KitError, match="both have the stem 'x'"):
        make_masks(data, 'directory', directory=tmp_path/'user', mask_root=tmp_path/'out', indices=[0], progress=False)


def test_the_log_is_appended_reading_only_its_last_byte(tmp_path, monkeypatch):
    "Each batch's append reads the last byte of log.jsonl with a seek, not the whole file (O(n^2) over WIDER); a cut last line is still repaired."
    from har_kit.formats import MASK_LOG, read_mask_log
    from har_kit.masks import _append_log
    log = tmp_path/MASK_LOG
    def whole(*a, **k): raise AssertionError('the whole log was read to append to it')
    monkeypatch.setattr(Path, 'read_bytes', whole); monkeypatch.setattr(Path, 'read_text', whole)
    _append_log(log, [dict(key='a', source='box')])                                 # a new log
    with open(log, 'a') as f: f.write('{"key": "b", "sou')                         # a write cut by an interruption
    _append_log(log, [dict(key='c', source='box')]); _append_log(log, [])
    monkeypatch.undo()
    assert log.read_text().splitlines() == ['{"key": "a", "source": "box"}', '{"key": "b", "sou', '{"key": "c", "source": "box"}']
    assert sorted(read_mask_log(tmp_path)) == ['a', 'c']
