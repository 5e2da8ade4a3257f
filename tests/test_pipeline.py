"The decoded pipeline: the cache holds the loader's exact resize (fixtures and the real PA-100K sample), is built once and atomically, refuses damage; batch augmentation equals the torchvision transforms sample by sample; the shuffle order is the loader's and seeded; a tiny training runs on the device path."
import contextlib, fcntl, json, multiprocessing, os, platform, shutil, threading, time

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from har_kit.core import KitError
from har_kit.data import Sample, read_pa100k, read_rap, read_wider, tiny_fixture
from har_kit.distributed import set_epoch
from har_kit.loading import AlignedResize, HarDataset, campar_transforms, dahar_transforms, make_loader
from har_kit import pipeline as P

from conftest import shared_path

torch.set_num_threads(1)


def _entries(folder):  # a cache folder's entries, less the builds' lock files
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith('.lock'))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv('HAR_KIT_CACHE', str(tmp_path/'cache'))


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp('sets')
    return dict(pa100k=read_pa100k(tiny_fixture('pa100k', d/'pa', n=12)), rap=read_rap(tiny_fixture('rap', d/'rap', n=12)),
                wider=read_wider(tiny_fixture('wider', d/'wider', n=12)))


def _loader_resize(samples, size, with_mask=False):
    "Today's loader: HarDataset's decode and cut, then its resize (`AlignedResize`), as uint8 (N, H, W, 3) and masks (N, H, W)."
    ds = HarDataset(samples, with_mask=with_mask)
    imgs, masks = [], []
    for i in range(len(ds)):
        img, m, _ = ds.load(i)
        out = AlignedResize(size)(img, m) if m is not None else (AlignedResize(size)(img), None)
        imgs.append(out[0].permute(1, 2, 0).numpy()); masks.append(None if m is None else out[1][0].numpy())
    return np.stack(imgs), (np.stack(masks) if with_mask else None)


@pytest.mark.parametrize('kind,size', [('pa100k', (256, 192)), ('rap', (64, 32)), ('wider', (256, 256))])
def test_cache_pixels_equal_the_loaders_resize(sets, kind, size):
    ss = sets[kind].samples
    c = P.decoded_cache([s.image for s in ss], [s.box for s in ss], size, [s.mask for s in ss], name=kind)
    img, msk = _loader_resize(ss, size, with_mask=True)
    np.testing.assert_array_equal(np.asarray(c['images']), img)
    np.testing.assert_array_equal(np.asarray(c['masks']), msk)


@pytest.mark.parametrize('scale', [1.0, 0.25])
def test_campar_test_masks_are_the_same_on_both_pipelines(tmp_path, scale):
    "CAM-PAR's 'test_masks' (the where-they-look study) through per-sample transforms and through the decoded cache, on masks of noise: equal."
    from PIL import Image
    from har_kit.campar_train import campar_loaders
    data = read_pa100k(tiny_fixture('pa100k', tmp_path/'pa', n=8))
    rng = np.random.default_rng(0)
    for s in data.samples:   # pixel noise: every row and column of the resize shows which source pixel it took
        Image.fromarray((rng.random(Image.open(s.image).size[::-1]) > 0.5).astype(np.uint8) * 255).save(s.mask)
    test = data.split('test')
    masks = {p: torch.cat([b['mask'] for b in campar_loaders(test, None, test, scale, batch_size=4, pipeline=p)['test_masks']])
             for p in ('loader', 'device')}
    assert masks['loader'].shape == masks['device'].shape and torch.equal(masks['loader'], masks['device'])


@pytest.mark.parametrize('route', ['campar-train', 'dahar-five-crop'])
def test_masks_asked_of_a_training_or_five_crop_loader_are_the_loaders(tmp_path, route):
    """with_mask=True on CAM-PAR's training batches and Da-HAR's five-crop evaluation: each sample's mask moved with its
    image as make_loader's transforms move it (one sample alone, the same draws: HarDataset keyed by i, the DeviceLoader's
    sample i); they were dropped (no 'mask' in the batches) after their cache was built."""
    from PIL import Image
    data = read_pa100k(tiny_fixture('pa100k', tmp_path/'pa', n=8))
    rng = np.random.default_rng(0)
    for s in data.samples:   # pixel noise: a mask off by one row or column, or unflipped, differs
        Image.fromarray((rng.random(Image.open(s.image).size[::-1]) > 0.5).astype(np.uint8) * 255).save(s.mask)
    tr = data.split('train')
    tf, batches = ((campar_transforms(True, 0.25), P.campar_batches(True, 0.25)) if route == 'campar-train' else
                   (dahar_transforms(False, 2, 0.25, five_crop=True), P.dahar_batches(False, 2, 0.25, five_crop_eval=True)))
    loader = make_loader(tr, tf, 4, route == 'campar-train', with_mask=True)
    device = P.cached_loader(tr, batches, 4, route == 'campar-train', with_mask=True, name='pa')
    assert 'mask' in next(iter(device))
    for i in range(len(tr)):
        a, b = loader.dataset[(i, i)], device.dataset[i]
        assert a['mask'].shape == b['mask'].shape and torch.equal(a['mask'], b['mask']) and torch.equal(a['image'], b['image']), i


def test_a_16_bit_png_is_cached_as_the_loader_reads_it(tmp_path):
    "torchvision decodes a 16-bit PNG as uint16 (no error): it goes through the loader's reader, not wrapped modulo 256."
    from PIL import Image
    f = tmp_path/'grey16.png'
    Image.fromarray((np.arange(48 * 32, dtype=np.uint32).reshape(48, 32) * 42).astype(np.uint16)).save(f)   # a grey gradient over 0..64500
    assert Image.open(f).mode == 'I;16'
    s = Sample(f, np.zeros(1, np.int8), 'train')
    c = P.decoded_cache([s.image], [None], (24, 16), name='g16', root=tmp_path/'cache')
    np.testing.assert_array_equal(np.asarray(c['images']), _loader_resize([s], (24, 16))[0])
    assert c['images'][..., 0].max() > 200   # the gradient's top is near white


@pytest.mark.slow
def test_cache_built_by_several_processes_is_the_same(sets, tmp_path):
    ss = sets['wider'].samples * 6   # 144 samples: three chunks over two processes
    args = ([s.image for s in ss], [s.box for s in ss], (64, 64), [s.mask for s in ss])
    one, two = P.decoded_cache(*args, root=tmp_path/'a'), P.decoded_cache(*args, root=tmp_path/'b', workers=2)
    np.testing.assert_array_equal(np.asarray(one['images']), np.asarray(two['images']))
    np.testing.assert_array_equal(np.asarray(one['masks']), np.asarray(two['masks']))


def test_cache_build_leaves_the_callers_threads(sets, tmp_path):
    "A build in the caller's own process decodes with one intra-op thread and gives the caller's count back."
    ss = sets['wider'].samples
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        P.decoded_cache([s.image for s in ss], [s.box for s in ss], (32, 32), root=tmp_path, workers=1)
        assert torch.get_num_threads() == 2
    finally: torch.set_num_threads(before)


@pytest.mark.shared('data/pa100k-sample/annotation.mat')
def test_cache_pixels_equal_the_loaders_resize_on_the_real_sample():
    with pytest.warns(UserWarning): data = read_pa100k(shared_path('data/pa100k-sample'))
    ss = data.split('train')[:6]
    c = P.decoded_cache([s.image for s in ss], [s.box for s in ss], (256, 192), name='pa100k-real', workers=1)
    np.testing.assert_array_equal(np.asarray(c['images']), _loader_resize(ss, (256, 192))[0])   # real JPEGs: decode_image == PIL


def test_cache_is_built_once_atomically_and_checked(sets, tmp_path):
    ss = sets['pa100k'].samples
    args = ([s.image for s in ss], [s.box for s in ss], (32, 24))
    c = P.decoded_cache(*args, name='pa')
    assert c['dir'].parent == tmp_path/'cache' and _entries(c['dir'].parent) == [c['dir'].name]
    t = (c['dir']/'meta.json').stat().st_mtime_ns
    assert P.decoded_cache(*args, name='pa')['dir'] == c['dir'] and (c['dir']/'meta.json').stat().st_mtime_ns == t
    assert P.decoded_cache(*args[:2], (32, 32), name='pa')['dir'] != c['dir']          # the size is in the key
    assert P.cache_key(*args) != P.cache_key(args[0][::-1], args[1], args[2])           # so is the file list
    img = tmp_path/'replaced.jpg'; shutil.copy(args[0][0], img); key = P.cache_key([img], [None], (8, 8))
    shutil.copy(args[0][1], img); os.utime(img, ns=(1, 1))                               # the same name, another image
    assert P.cache_key([img], [None], (8, 8)) != key                                    # ... and so is each file's content stamp
    with pytest.raises(KitError, match='gone.jpg: cannot read it'): P.cache_key([tmp_path/'gone.jpg'], [None], (8, 8))
    mask = tmp_path/'mask.png'; mask.write_bytes(b'\x89PNG same size'); key = P.cache_key([img], [None], (8, 8), [mask])
    os.utime(mask, ns=(2, 2))                                                            # a mask rewritten in place, same size
    assert P.cache_key([img], [None], (8, 8), [mask]) != key and P.cache_key([img], [None], (8, 8), ['box']) == P.cache_key([img], [None], (8, 8), ['box'])
    m = np.load(c['dir']/'images.npy', mmap_mode='r+'); m[3, 1, 1, 1] ^= 255; m.flush(); del m
    P._VERIFIED.clear()   # the next run's process, which hashes the folder again
    with pytest.raises(KitError, match='delete that folder'): P.decoded_cache(*args, name='pa')
    assert P.decoded_cache(*args, name='pa', verify=False)['images'].shape == (12, 32, 24, 3)
    with pytest.raises(KitError, match='one per sample'): P.decoded_cache(args[0], args[1][:2], (8, 8))


def _pa_args(sets, size=(16, 12)):
    ss = sets['pa100k'].samples
    return [s.image for s in ss], [s.box for s in ss], size


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'missing', 'meta-keys', 'meta-json', 'meta-missing', 'meta-array',
                                    'int8', 'masks-int8', 'masks-missing', 'masks-meta-array', 'shape', 'masks-shape', 'fortran'])
def test_a_damaged_cache_names_its_folder_and_deleting_it_rebuilds(sets, tmp_path, damage):
    args, masks = _pa_args(sets), [s.mask for s in sets['pa100k'].samples]
    c = P.decoded_cache(*args, masks, name='pa', root=tmp_path)
    d = c['mask_cache'] if damage.startswith('masks') else c['dir']   # the images and the masks: a folder each
    f = d/('meta.json' if 'meta' in damage else 'masks.npy' if damage.startswith('masks') else 'images.npy')
    header = lambda old, new: f.write_bytes(f.read_bytes().replace(old, new, 1))   # the .npy header: no hash covers it
    if damage == 'truncated': os.truncate(f, f.stat().st_size // 2)
    elif damage == 'empty': f.write_bytes(b'')
    elif damage in ('missing', 'meta-missing', 'masks-missing'): f.unlink()
    elif damage == 'meta-keys': f.write_text('{}')
    elif damage in ('meta-array', 'masks-meta-array'):   # the other array's meta: a folder of the wrong kind
        f.write_text(json.dumps({**json.loads(f.read_text()), 'array': 'images' if damage.startswith('masks') else 'masks'}))
    elif damage in ('int8', 'masks-int8'): header(b"'|u1'", b"'|i1'")
    elif damage == 'shape': header(b'(12, 16, 12, 3)', b'(12, 12, 16, 3)')
    elif damage == 'masks-shape': header(b'(12, 16, 12)', b'(12, 12, 16)')
    elif damage == 'fortran': header(b"'fortran_order': False", b"'fortran_order': True ")
    else: f.write_text('{"key": ')
    with pytest.raises(KitError, match=rf'decoded cache {d} is damaged \(.+\); delete that folder and rerun'):
        P.decoded_cache(*args, masks, name='pa', root=tmp_path, verify=False)
    shutil.rmtree(d)   # what the message says: the next run rebuilds it (that folder alone)
    again = P.decoded_cache(*args, masks, name='pa', root=tmp_path)
    assert (again['dir'], again['mask_cache']) == (c['dir'], c['mask_cache']) and again['images'].shape == (12, 16, 12, 3)
    assert _entries(tmp_path) == sorted([c['dir'].name, c['mask_cache'].name])


def test_images_are_cached_once_whatever_the_masks(sets, tmp_path, monkeypatch):
    "The images' folder leaves the masks out of its key: runs with and without masks, or with new masks, decode the images once."
    fills, fill = [], P._fill
    monkeypatch.setattr(P, '_fill', lambda d, what, *a: (fills.append(what), fill(d, what, *a))[1])
    ss = sets['wider'].samples
    args = ([s.image for s in ss], [s.box for s in ss], (32, 32))
    plain = P.decoded_cache(*args, name='w', root=tmp_path)
    boxed = P.decoded_cache(*args, ['box'] * len(ss), name='w', root=tmp_path)
    real = P.decoded_cache(*args, [s.mask for s in ss], name='w', root=tmp_path)
    assert fills == ['images', 'masks', 'masks'] and plain['dir'] == boxed['dir'] == real['dir'] and boxed['mask_cache'] != real['mask_cache']
    _, ref = _loader_resize(ss, (32, 32), with_mask=True)   # masks made from the image's header alone: the loader's, exactly
    np.testing.assert_array_equal(np.asarray(real['masks']), ref)
    assert (np.asarray(boxed['masks']) == 255).all()        # a WIDER target cut out by its box is all box


def test_a_full_disk_is_refused_before_decoding(sets, tmp_path, monkeypatch):
    "The arrays are memory-mapped: a sparse file filled on a full disk was a SIGBUS. Both checks name the folder and $HAR_KIT_CACHE."
    args, usage = _pa_args(sets), shutil.disk_usage
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: usage(p)._replace(free=1000))
    with pytest.raises(KitError, match=rf'{tmp_path}: no room for a decoded cache of 6.91e-06 GB \(1e-06 GB free there\).*\$HAR_KIT_CACHE'):
        P.decoded_cache(*args, name='pa', root=tmp_path)
    assert _entries(tmp_path) == []
    monkeypatch.setattr(shutil, 'disk_usage', usage)   # room by the count, but the reservation finds the disk full
    monkeypatch.setattr(os, 'posix_fallocate', lambda *a: (_ for _ in ()).throw(OSError(28, 'No space left on device')))
    with pytest.raises(KitError, match=rf'{tmp_path}: no room for a decoded cache .*\$HAR_KIT_CACHE'): P.decoded_cache(*args, name='pa', root=tmp_path)
    assert _entries(tmp_path) == []
    monkeypatch.setattr(os, 'posix_fallocate', lambda *a: (_ for _ in ()).throw(OSError(95, 'Operation not supported')))
    assert P.decoded_cache(*args, name='pa', root=tmp_path)['images'].shape == (12, 16, 12, 3)   # no reservation here: built as before


@pytest.mark.parametrize('err', ['EDQUOT', 'EFBIG', 'EIO', 'EOPNOTSUPP', 'ENOSYS', 'EINVAL'])
def test_a_quota_or_any_reservation_error_is_no_room(sets, tmp_path, monkeypatch, err):
    """Only a file system that cannot reserve (EOPNOTSUPP, ENOSYS, EINVAL) leaves the free-space count to judge; an exhausted
    quota (a shared disk with terabytes free, none for this user), a file too large or any other error is no room, named
    without the disk's free space: before, EDQUOT counted as room and the memory map died of SIGBUS past the quota."""
    import errno
    code = getattr(errno, err)
    monkeypatch.setattr(os, 'posix_fallocate', lambda *a: (_ for _ in ()).throw(OSError(code, os.strerror(code))))
    if err in ('EOPNOTSUPP', 'ENOSYS', 'EINVAL'):
        assert P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)['images'].shape == (12, 16, 12, 3); return
    with pytest.raises(KitError) as e: P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)
    said = str(e.value)
    assert said.startswith(f'{tmp_path}: no room for a decoded cache') and f'images.npy failed: {err}, {os.strerror(code)}' in said
    assert 'quota' in said and '$HAR_KIT_CACHE' in said and 'free there' not in said
    assert _entries(tmp_path) == []   # the temporary folder is gone


@pytest.mark.parametrize('err', ['ENOLCK', 'EOPNOTSUPP', 'ENOSYS'])
def test_a_file_system_without_locks_builds_unlocked(sets, tmp_path, monkeypatch, err):
    """No flock on the cache folder's file system (some network mounts): the build goes on without its lock, no
    traceback; builds side by side are safe (each in its own temporary folder; the first rename wins, the others open it)."""
    import errno
    code = getattr(errno, err)
    monkeypatch.setattr(fcntl, 'flock', lambda *a: (_ for _ in ()).throw(OSError(code, os.strerror(code))))
    c = P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)
    assert c['images'].shape == (12, 16, 12, 3) and _entries(tmp_path) == [c['dir'].name]
    assert P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)['dir'] == c['dir']


def test_another_users_lock_file_is_opened_to_read(sets, tmp_path, monkeypatch):
    "A shared cache folder whose .lock another user made (mode 0644): opening it to append raised a raw PermissionError; flock needs only a reading descriptor."
    import builtins, shutil
    shutil.rmtree(P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)['dir'])   # its lock file stays, as another user's would
    real, modes = builtins.open, []
    def not_ours(file, mode='r', *a, **k):   # root may write any file: the test stands in for the permission check
        if str(file).endswith('.lock'):
            modes.append(mode)
            if mode == 'a': raise PermissionError(13, 'Permission denied', str(file))
        return real(file, mode, *a, **k)
    monkeypatch.setattr(builtins, 'open', not_ours)
    assert P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)['images'].shape == (12, 16, 12, 3) and modes == ['a', 'r']


def test_a_failed_build_leaves_no_temporary_folder(sets, tmp_path, monkeypatch):
    args = _pa_args(sets)
    def stop(job): raise KeyboardInterrupt   # Ctrl-C part way (any exception goes the same way)
    monkeypatch.setattr(P, '_decode_chunk', stop)
    with pytest.raises(KeyboardInterrupt): P.decoded_cache(*args, name='pa', root=tmp_path, workers=1)
    assert _entries(tmp_path) == []
    [lock] = tmp_path.glob('*.lock')
    with open(lock) as f: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)   # ... and holds no lock (else BlockingIOError)


def _undecodable(job): raise ValueError('cannot decode')   # a module's function: the pool pickles it by name


_decode_chunk = P._decode_chunk

def _decode_holding_no_lock(job):  # in a decoding process: a lock file open here would keep a killed build's lock
    fds = []
    for f in os.listdir('/proc/self/fd'):
        with contextlib.suppress(OSError): fds.append(os.readlink(f'/proc/self/fd/{f}'))   # (listdir's own descriptor is gone)
    if held := [f for f in fds if f.endswith('.lock')]: raise RuntimeError(f'a decoding process holds {held}')
    return _decode_chunk(job)


@pytest.mark.slow
def test_decoding_processes_leave_the_build_lock_to_their_parent(sets, tmp_path, monkeypatch):
    "Forked with the lock's descriptor, a worker that kept it would hold the lock after its build was killed (kill -9): waiters would wait forever."
    if not os.path.isdir('/proc/self/fd'): pytest.skip('no /proc/self/fd to list a process\'s open files')
    monkeypatch.setattr(P, '_decode_chunk', _decode_holding_no_lock)
    ss = sets['pa100k'].samples * 11   # 132 samples: three chunks over two processes
    assert P.decoded_cache([s.image for s in ss], [s.box for s in ss], (16, 12), name='pa', root=tmp_path, workers=2)['images'].shape == (132, 16, 12, 3)


@pytest.mark.slow
def test_a_failed_multi_process_build_stops_its_workers(sets, tmp_path, monkeypatch):
    "A decode error (or Ctrl-C) part way: the pool's processes end with the build, the chunks not started are dropped."
    monkeypatch.setattr(P, '_decode_chunk', _undecodable)
    with pytest.raises(ValueError, match='cannot decode'): P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path, workers=2)
    assert multiprocessing.active_children() == [] and _entries(tmp_path) == []


def test_the_decoding_processes_are_forked_whatever_the_default_start_method(sets, tmp_path, monkeypatch):
    "Their initializer closes the parent's build-lock descriptors by number: under forkserver (Python 3.14's default) those numbers were the worker's own pipes (BrokenProcessPool)."
    made = []
    class Pool(P.ProcessPoolExecutor):
        def __init__(self, *a, **k): made.append(k); super().__init__(*a, **k)
    monkeypatch.setattr(P, 'ProcessPoolExecutor', Pool)
    monkeypatch.setattr(multiprocessing, 'get_start_method', lambda allow_none=False: 'forkserver')
    assert P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path, workers=2)['images'].shape == (12, 16, 12, 3)
    [k] = made
    assert k['mp_context'].get_start_method() == 'fork'


@pytest.mark.parametrize('how', ['removed', 'removed-then-meta'])
def test_a_temporary_folder_removed_during_the_build_publishes_nothing(sets, tmp_path, monkeypatch, how):
    "A sweep on another node, or a user clearing the cache, removed the build's folder: save_json would make it again with meta.json alone."
    fill, write = P._fill, P.save_json
    monkeypatch.setattr(P, '_fill', lambda d, *a: (fill(d, *a), shutil.rmtree(d) if how == 'removed' else None)[0])
    if how == 'removed-then-meta':   # removed after the first check, just before meta.json is written
        monkeypatch.setattr(P, 'save_json', lambda obj, path: (shutil.rmtree(path.parent), write(obj, path))[1])
    with pytest.raises(KitError, match=r'\.tmp-\d+@.*: this temporary folder was removed while the decoded cache was built in it.*nothing was published'):
        P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)
    assert _entries(tmp_path) == []
    monkeypatch.setattr(P, '_fill', fill); monkeypatch.setattr(P, 'save_json', write)
    assert P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)['images'].shape == (12, 16, 12, 3)   # the rerun builds it


def test_a_build_sweeps_the_leftovers_of_dead_processes_only(sets, tmp_path):
    dead, live = tmp_path/f'x-8x8-0.tmp-{2**22 + 1}', tmp_path/f'x-8x8-0.tmp-{os.getpid()}'   # above Linux's largest pid: no such process
    here, there = tmp_path/f'y-8x8-0.tmp-{2**22 + 1}@{platform.node()}', tmp_path/f'y-8x8-0.tmp-{2**22 + 1}@another-node'
    for t in (dead, live, here, there): t.mkdir(parents=True); (t/'images.npy').write_bytes(b'\0' * 100)
    P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)
    assert dead.exists() is False and live.exists() and here.exists() is False
    assert there.exists()   # another machine's build: its PID says nothing here


def _build_in_child(start, fills, args, root):   # a forked process: wait for its sibling, then open or build the cache
    fill = P._fill
    def counted(*a):
        with fills.get_lock(): fills.value += 1
        return fill(*a)
    P._fill = counted
    start.wait()
    P.decoded_cache(*args, name='pa', root=root)


@pytest.mark.slow
def test_two_processes_building_one_cache_decode_it_once(sets, tmp_path):
    "Started together (torchrun's ranks, reproduce --jobs): one builds, the other waits for its lock and opens its copy."
    from multiprocessing.connection import wait
    ctx = multiprocessing.get_context('fork'); start, fills = ctx.Barrier(2), ctx.Value('i', 0)   # no timeout: however slow the machine
    ps = [ctx.Process(target=_build_in_child, args=(start, fills, _pa_args(sets), tmp_path)) for _ in range(2)]
    for p in ps: p.start()
    pending = {p.sentinel: p for p in ps}
    while pending:   # a process that fails before the barrier releases its sibling (abort), so a failure never hangs the test
        for s in wait(list(pending)):
            p = pending.pop(s); p.join()
            if p.exitcode != 0: start.abort()
    assert [p.exitcode for p in ps] == [0, 0] and fills.value == 1   # whichever came first, the images were decoded once
    assert _entries(tmp_path) == [P.decoded_cache(*_pa_args(sets), name='pa', root=tmp_path)['dir'].name]


def test_a_build_waits_for_the_lock_then_opens_the_published_cache(sets, tmp_path, monkeypatch):
    "This test holds the build lock (as another process would), builds the cache under it, and only then lets the waiting build go on."
    args, fills, fill = _pa_args(sets), [], P._fill
    monkeypatch.setattr(P, '_fill', lambda *a: (fills.append(1), fill(*a))[1])
    waiting, said, out = threading.Event(), [], {}
    monkeypatch.setattr(P, '_waiting', lambda d, lock: (said.append((d, lock)), waiting.set()))
    d = tmp_path/f"pa-16x12-{P.cache_key(*args)[:16]}"
    def build():
        try: out['cache'] = P.decoded_cache(*args, name='pa', root=tmp_path)
        except BaseException as e: out['error'] = e
        finally: waiting.set()
    with P._build_lock(d):   # a separate open file: flock makes the thread wait as it would a process
        t = threading.Thread(target=build); t.start()
        assert waiting.wait(600) and 'error' not in out, out   # it said it waits (a timeout only against a hang)
        assert t.is_alive() and not d.exists()                # ... and waits: nothing can be built while the lock is held
        P._build(d, dict(key=P.cache_key(*args), array='images', n=12, size=[16, 12]), args[0], args[1], None, 0, 'pa')
    t.join()
    assert 'error' not in out and out['cache']['dir'] == d and len(fills) == 1   # opened, not decoded again
    assert said == [(d, str(tmp_path/f'.{d.name}.lock'))]


def test_paper_cache_sizes():
    gb = {k: round(P.cache_gb(*v), 1) for k, v in P.PAPER_CACHES.items()}
    assert (gb['rap'], gb['pa100k'], gb['wider']) == (6.1, 14.7, 11.3)


def _batch(sets, kind, size):
    ss = sets[kind].samples[:8]
    c = P.decoded_cache([s.image for s in ss], [s.box for s in ss], size, [s.mask for s in ss], name=kind)
    return torch.from_numpy(np.array(c['images'])).permute(0, 3, 1, 2), torch.from_numpy(np.array(c['masks']))


@pytest.mark.parametrize('scale', [1.0, 0.25])
def test_campar_augment_equals_the_transforms_sample_by_sample(sets, scale):
    size, augment = P.campar_batches(True, scale)
    x, _ = _batch(sets, 'pa100k', size)
    g = torch.Generator(); g.manual_seed(11)
    got = augment(x, None, g)['image']
    torch.manual_seed(11)
    tv = v2.Compose(campar_transforms(True, scale).transforms[2:])   # after ToImage and the (cached) resize
    want = torch.stack([tv(tv_tensors.Image(x[i])).as_subclass(torch.Tensor) for i in range(len(x))])
    assert torch.equal(got, want)
    assert torch.equal(P.campar_batches(False, scale)[1](x, None, g)['image'],
                       torch.stack([v2.Compose(campar_transforms(False, scale).transforms[2:])(tv_tensors.Image(x[i])) for i in range(len(x))]))


@pytest.mark.parametrize('kind,aspect,jitter', [('wider', 1, 0.3), ('rap', 2, 0.3), ('wider', 1, 0.0), ('rap', 2, 1.5)])
def test_dahar_augment_follows_the_transforms(sets, kind, aspect, jitter):
    "At any jitter strength ColorJitter's: at 0 it draws no factors (the stream goes on with the next sample's window), above 1 it clamps them at 0."
    scale = 0.25
    size, augment = P.dahar_batches(True, aspect, scale, jitter=jitter)
    x, m = _batch(sets, kind, size)
    g = torch.Generator(); g.manual_seed(5)
    got = augment(x, m, g)
    tvs = dahar_transforms(True, aspect, scale, jitter=jitter).transforms   # ToImage, Resize, CornerCenterCrop, Resize, Flip, ColorJitter, ToDtype, Normalize
    torch.manual_seed(5)
    want, want_m = [], []
    for i in range(len(x)):
        im, mk = tvs[2](tv_tensors.Image(x[i]), tv_tensors.Mask(m[i][None]))
        im, mk = tvs[4](*tvs[3](im, mk))
        want.append(tvs[7](tvs[6](tvs[5](im))).as_subclass(torch.Tensor)); want_m.append(mk.as_subclass(torch.Tensor).float() / 255)
    assert torch.equal(got['mask'], torch.stack(want_m))   # the same windows and flips: masks exact
    d = (got['image'] - torch.stack(want)).abs() * torch.tensor(P.IMAGENET_STD).view(1, 3, 1, 1) * 255
    # a one-level resize difference through the three blends: |factor| <= 1.3 on the pixel, |1 - factor| <= 0.3 on a
    # reference off by at most one level more (gray's floor), floored: at most ceil(1.6 d + 0.3), so 2, 4, 7 levels
    if jitter == 0.3: assert d.max() <= 7.0 + 1e-3 and (d < 0.5).float().mean() > 0.8
    if jitter == 0: assert d.max() <= 1.0 + 1e-3   # no jitter: the resize's one level alone
    # stage by stage: crop + resize + flip within one uint8 level; the colour jitter on torchvision's own resize exact
    g.manual_seed(5); p = P.dahar_params(len(x), size, tvs[2].sizes, tvs[2].widths, jitter, g)
    flip = p['geo'][:, 4].bool().view(-1, 1, 1, 1)
    geos = [torch.where(flip, g.flip(-1), g) for g in (P.crop_resize(x, p['geo'], want[0].shape[-2:], matmul=r) for r in (False, True))]
    torch.manual_seed(5)
    for i in range(len(x)):
        im = tvs[4](tvs[3](tvs[2](tv_tensors.Image(x[i]))))
        assert all((geo[i] - im.float()).abs().max() <= 1 for geo in geos)   # both routes (per window size; the CUDA matrix route)
        ref = tvs[5](im).as_subclass(torch.Tensor).float()
        assert torch.equal(P.colour_jitter(im.as_subclass(torch.Tensor)[None].float(), p['perm'][i:i + 1], p['fac'][i:i + 1])[0], ref)


def test_a_negative_jitter_is_refused():
    for j in (-0.1, None):
        with pytest.raises(KitError, match=rf'dahar_batches: jitter={j}; pass a colour jitter strength >= 0'): P.dahar_batches(True, jitter=j)


def test_crops_draw_srns_window_pairs():
    from har_kit.loading import CornerCenterCrop
    sizes = [256, 224, 192, 168, 128]
    srn = {(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= 1}   # SRN's fillCropSize, max_distort 1
    g = torch.Generator(); g.manual_seed(0)
    p = P.dahar_params(400, (256, 256), sizes, sizes, 0.3, g)
    assert {tuple(r) for r in p['geo'][:, 2:4].tolist()} == srn and len(srn) == 13       # WIDER: SRN's 13 pairs, each seen
    g.manual_seed(0)
    p = P.dahar_params(400, (256, 256), sizes, sizes, 0.3, g, max_distort=4)
    assert len({tuple(r) for r in p['geo'][:, 2:4].tolist()}) == 25                      # max_distort=4: independent draws
    rap = CornerCenterCrop(sizes, aspect=2)
    assert rap.widths == [128, 112, 96, 84, 64]                                          # RAP: widths from the set halved
    torch.manual_seed(0)
    seen = {(q['height'], q['width']) for q in (rap.make_params([tv_tensors.Image(torch.zeros(3, 256, 128))]) for _ in range(400))}
    assert seen == {(h, w // 2) for h, w in srn}                                         # ... paired by the same rule
    with pytest.raises(KitError, match='max_distort=-1'): P.dahar_batches(True, max_distort=-1)


def test_five_crop_is_slicing(sets):
    size, augment = P.dahar_batches(False, 1, 0.25, five_crop_eval=True)
    x, _ = _batch(sets, 'wider', size)
    ref = dahar_transforms(False, 1, 0.25, five_crop=True)
    assert torch.equal(augment(x, None, None)['image'], torch.stack([ref(tv_tensors.Image(x[i])).as_subclass(torch.Tensor) for i in range(len(x))]))


def test_shuffle_order_is_the_loaders_and_seeded(sets):
    ss = sets['wider'].samples
    dl = P.cached_loader(ss, P.dahar_batches(True, 1, 0.25), 5, True, seed=3, name='wider')
    ml = make_loader(ss, dahar_transforms(True, 1, 0.25), 5, True, seed=3)
    order = lambda ld: torch.cat([b['index'] for b in ld]).tolist()
    for epoch in (1, 2):
        set_epoch(dl, 0, epoch); set_epoch(ml, 0, epoch)
        assert order(dl) == order(ml)
    set_epoch(dl, 0, 1); a = [b['image'] for b in dl]
    set_epoch(dl, 0, 2); b = [b['image'] for b in dl]
    set_epoch(dl, 0, 1); c = [b['image'] for b in dl]
    assert all(torch.equal(u, v) for u, v in zip(a, c)) and not all(torch.equal(u, v) for u, v in zip(a, b))
    assert len(dl) == len(ml) and P.cached_loader(ss, P.dahar_batches(True, 1, 0.25), 5, True, drop_last=True, name='w').__len__() == len(ss) // 5


def test_tiny_training_on_the_device_path(tmp_path):
    from har_kit.campar_train import CamParConfig, CamParRecipe, split_train_eval
    from har_kit.data import load_dataset
    from har_kit.dahar_train import DaHarConfig, DaHarRecipe
    from har_kit.model_file import train_variant as train_recipe
    data = load_dataset('rap', profile='tiny')
    tr, ev, name = split_train_eval(data, ['train'], 'held-out', 0.25, 0)
    cfg = CamParConfig(variants=['campar'], optimizer='adam', epochs=1, batch_size=16, scale=0.25, pipeline='device', cache_mb=0)
    recipe = CamParRecipe(cfg, data, (tr[:48], ev[:16], name), data.split('test')[:16])
    assert isinstance(recipe.loaders()['train'], P.DeviceLoader)
    res = train_recipe(recipe, 'campar', tmp_path/'c')
    assert res['epoch'] == 1 and np.isfinite(res['history'][-1]['loss']), res['history']
    wider = read_wider(tiny_fixture('wider', tmp_path/'w', n=12))
    out = train_recipe(DaHarRecipe(DaHarConfig(epochs=1, batch_size=4, pipeline='device'), wider), 'dahar', tmp_path/'d')
    assert 0 <= out['metrics']['full']['mAP'] <= 1 and 0 <= out['metrics']['crops']['mAP'] <= 1


def test_sharded_like_the_dataloader_and_partitioned(sets, monkeypatch):
    "The engine shards a DeviceLoader as it shards a DataLoader: the same order per epoch; two ranks split the samples."
    import har_kit.distributed as D
    ss = sets['wider'].samples
    dl = P.cached_loader(ss, P.dahar_batches(True, 1, 0.25), 4, True, seed=3, name='wider')
    ml = make_loader(ss, dahar_transforms(True, 1, 0.25), 4, True, seed=3)
    order = lambda ld: torch.cat([torch.as_tensor(b['index']) for b in ld]).tolist()
    one_dl, one_ml = D.shard_loader(dl, seed=7), D.shard_loader(ml, seed=7)
    for epoch in (1, 2):
        set_epoch(one_dl, 7, epoch); set_epoch(one_ml, 7, epoch)
        assert order(one_dl) == order(one_ml)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(D, 'rank_world', lambda r=rank: (r, 2))
        sh = D.shard_loader(dl, seed=7); set_epoch(sh, 7, 1)
        assert sh.batch_size == 2 and len(sh) == -(-len(ss) // 2 // 2)
        shards.append(order(sh))
    assert len(shards[0]) == len(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(len(ss)))   # every sample, equal shares


@pytest.mark.parametrize('pooled', [False, True])
def test_cuda_batches_equal_the_cpu_batches(sets, monkeypatch, pooled):
    """The CUDA path (pinned double buffers, labels indexed on the device) yields the CPU path's batches (run here on CPU
    tensors); the event that guards a buffer's reuse is recorded on the stream of the loader's device, the one that copied
    (the current device's stream says nothing about a copy on cuda:N, N > 0). Pooled: images through the rows of the
    dataset's cache, the list's own masks by sample."""
    streams = []
    class Event:   # stands in for torch.cuda.Event: the copies it waits for are synchronous on the CPU
        def record(self, stream=None): streams.append(stream)
        def synchronize(self): pass
    empty = torch.empty
    monkeypatch.setattr(torch.cuda, 'Event', Event)
    monkeypatch.setattr(torch.cuda, 'current_stream', lambda device=None: ('stream of', str(device)))
    monkeypatch.setattr(torch.cuda, 'device', lambda device: contextlib.nullcontext())
    data = sets['wider']
    ss = data.samples[::-1][1:] if pooled else data.samples   # pooled: a reversed part of the set, its rows not its indices
    dl = P.cached_loader(ss, P.dahar_batches(True, 1, 0.25), 5, True, with_mask=True, mask_from_box=not pooled, seed=3, name='wider',
                         pool=data if pooled else None)
    assert (dl.rows != np.arange(len(ss))).any() == pooled
    want = list(dl)   # the CPU path
    dl.generator.manual_seed(3)
    monkeypatch.setattr(torch, 'empty', lambda *a, pin_memory=False, **k: empty(*a, **k))
    got = list(dl._cuda_batches(dl.order()))
    assert len(got) == len(want) == len(dl) and len(ss) % 5   # a short last batch: the buffers are re-made
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in g)
    assert streams == [('stream of', str(dl.device))] * len(dl)


def test_loader_rates_waits_for_each_loaders_own_device(monkeypatch):
    """Each window's end waits for the kernels of the loader's own GPU (cuda:1 here, not the current device), decided per
    window: CUDA starts lazily at a device loader's first batch, and a choice made once before any loader ran never
    synchronised (the device loader was timed on its kernel launches). Simulated on CPU: synchronize counts its calls."""
    state, calls = {'init': False}, []
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: state['init'])
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: calls.append(device))
    class OnGpu1:   # stands for a DeviceLoader on cuda:1 (constructing one touches no CUDA)
        device = torch.device('cuda', 1)
        def __iter__(self):
            state['init'] = True   # the first batch's copy to the GPU starts CUDA
            for _ in range(4): yield {'index': torch.arange(8)}
    class OnHost:   # a DataLoader's CPU batches: nothing to wait for
        def __iter__(self): return iter([{'index': torch.arange(8)}] * 4)
    rates = P.loader_rates({'device': OnGpu1(), 'host': OnHost()}, batches=4, repeats=3)
    assert set(rates) == {'device', 'host'}
    assert calls == [torch.device('cuda', 1)] * 5   # the first window's end, then both ends of the two others


def _memory_loader(n=40, batch=8, prefetch=0, seed=0):
    "A DeviceLoader over random uint8 images in memory whose augmentation draws from the loader's generator."
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=g).numpy()
    labels = (torch.rand(n, 3, generator=g) < 0.5).float().numpy()
    augment = lambda x, m, gen: {'image': x.float() / 255 + 0.1 * torch.rand(x.shape, generator=gen)}
    return P.DeviceLoader(dict(images=imgs, masks=None, dir='memory'), labels, augment, batch, True, seed=seed, prefetch=prefetch)


def _tiny_fit(loader, out, criterion=None):
    from torch import nn
    from har_kit.engine import TrainConfig, fit
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    net = lambda m: type('Net', (nn.Module,), {'forward': lambda self, x: {'logits': m(x)}})()
    wrapped = net(model); wrapped.backbone = model
    bce = lambda o, b: {'loss': nn.functional.binary_cross_entropy_with_logits(o['logits'], b['labels'])}
    # progress=True: a drawn tqdm bar keeps the loader's iterator alive with the traceback, so only the engine's own
    # close stops a prefetching thread when the epoch ends early (without it the thread outlives the error)
    hist = fit(wrapped, criterion or bce, loader, TrainConfig(epochs=2, lr=0.1, device='cpu', progress=True, seed=2, monitor='loss'), out)
    return hist, model.state_dict()


def _prefetch_threads(): return [t for t in threading.enumerate() if t.name == 'har-kit-prefetch']


def test_prefetched_training_is_the_same(tmp_path):
    "Batches prepared ahead on a thread: the same order, augmentation draws, losses and weights as without."
    (h0, w0), (h2, w2) = _tiny_fit(_memory_loader(), tmp_path/'a'), _tiny_fit(_memory_loader(prefetch=2), tmp_path/'b')
    assert [r['loss'] for r in h0] == [r['loss'] for r in h2] and len(h0) == 2
    assert all(torch.equal(w0[k], w2[k]) for k in w0)
    assert not _prefetch_threads()


def test_prefetch_stops_with_the_epoch(tmp_path):
    "An epoch that ends early (Ctrl-C in the step, an error in the producer) stops the thread before the error leaves fit."
    calls = []
    def interrupted(o, b):
        calls.append(len(_prefetch_threads()))   # the batches come from a thread while the epoch runs
        if len(calls) == 2: raise KeyboardInterrupt
        return {'loss': o['logits'].float().mean()}
    with pytest.raises(KeyboardInterrupt) as ei:
        _tiny_fit(_memory_loader(prefetch=3), tmp_path/'a', interrupted)
    assert calls == [1, 1]
    # the traceback (held by `ei`) still holds the epoch's frame and its tqdm bar: the thread is gone because the engine
    # closed the loader's iterator on its way out, not because the traceback was freed
    assert ei.value is not None and not _prefetch_threads()
    broken = _memory_loader(prefetch=2)
    broken.cache['images'] = broken.cache['images'][:10]   # rows the order names are gone: an IndexError in the thread
    with pytest.raises(IndexError) as ei:
        _tiny_fit(broken, tmp_path/'b')
    assert 'out of bounds' in str(ei.value) and not _prefetch_threads()


def test_prefetched_cuda_handover(monkeypatch):
    "On CUDA the producer works in a stream of its own; the consumer's stream waits on each batch's event before it is used."
    log = []
    class Event:
        n = 0
        def __init__(self): Event.n += 1; self.id = Event.n
        def record(self, stream=None): log.append(('record', self.id, stream.name, threading.current_thread().name))
    class Stream:
        def __init__(self, device=None, priority=0, name='side'): self.name, self.device = name, device
        def wait_event(self, ev): log.append(('wait', ev.id, self.name, threading.current_thread().name))
    current = []
    @contextlib.contextmanager
    def stream(s): current.append(s.name); yield
    monkeypatch.setattr(torch.cuda, 'Stream', Stream); monkeypatch.setattr(torch.cuda, 'Event', Event)
    monkeypatch.setattr(torch.cuda, 'stream', stream)
    monkeypatch.setattr(torch.cuda, 'current_stream', lambda dev=None: Stream(name='main'))
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: log.append(('device', str(d), None, threading.current_thread().name)))
    class OnCuda(torch.Tensor):   # a tensor the handover takes for a CUDA one
        is_cuda = True
        def record_stream(self, s): log.append(('keep', int(self), s.name, threading.current_thread().name))
    def batches():
        for i in range(8):
            log.append(('made', i + 1, current[-1], threading.current_thread().name))
            yield {'x': torch.tensor(i).as_subclass(OnCuda), 'n': i}
    depth = 2
    for i, b in enumerate(P.prefetched(batches(), depth, torch.device('cuda', 1)), 1):
        log.append(('used', i, None, threading.current_thread().name)); assert int(b['x']) == i - 1
        if i == 1:   # however long the consumer takes, the thread makes at most depth + 1 batches ahead of it
            time.sleep(0.2); assert sum(e[0] == 'made' for e in log) <= 1 + depth + 1, log
    assert log[0] == ('device', 'cuda:1', None, 'har-kit-prefetch')   # the thread works on the loader's GPU
    for i in range(1, 9):
        made, rec, wait, keep, used = (log.index(next(e for e in log if e[0] == k and e[1] == (i - 1 if k == 'keep' else i)))
                                       for k in ('made', 'record', 'wait', 'keep', 'used'))
        assert made < rec < wait < keep < used, log
        assert log[made][2:] == ('side', 'har-kit-prefetch') and log[rec][2:] == ('side', 'har-kit-prefetch')
        assert log[wait][2] == log[keep][2] == 'main' and log[wait][3] == log[keep][3] == log[used][3] == threading.main_thread().name


def test_cache_key_holds_every_box(tmp_path):
    "Crops of other boxes are other pixels: one box shifted by a pixel, or a box dropped, gives another key."
    imgs = [tmp_path/'a.jpg', tmp_path/'b.jpg']
    for p in imgs: p.write_bytes(b'not decoded by cache_key')
    boxes = [(1, 2, 10, 20), (0, 0, 8, 8)]
    key = P.cache_key(imgs, boxes, (8, 8))
    assert P.cache_key(imgs, [(1, 2, 10, 20), (0, 0, 8, 8)], (8, 8)) == key
    assert P.cache_key(imgs, [(1, 2, 10, 20), (1, 0, 8, 8)], (8, 8)) != key
    assert P.cache_key(imgs, [(1, 2, 10, 20), None], (8, 8)) != key


def test_every_split_list_of_a_dataset_reads_one_cache(tmp_path, monkeypatch):
    "RAP's partitions, [15]'s selection and a held-out carve: every run's loaders read one copy of the dataset's pixels (one per size), with the batches of a cache of their own list."
    from har_kit.campar_train import campar_loaders, split_train_eval
    from har_kit.dahar_train import DaHarConfig, dahar_loaders
    fills, fill = [], P._fill
    monkeypatch.setattr(P, '_fill', lambda d, what, *a: (fills.append((what, a[2])), fill(d, what, *a))[1])   # (array, size)
    root = tiny_fixture('rap', tmp_path/'rap', n=12)
    dirs, campar, dahar = set(), (32, 24), (64, 32)   # CAM-PAR's and Da-HAR's fixed resizes here
    for part in (0, 1, 2):
        data = read_rap(root, partition=part)
        for selection, fraction in (('[15]', 0.0), ('held-out', 0.25)):
            tr, ev, _ = split_train_eval(data, ['train'], selection, fraction, 0)
            lo = campar_loaders(tr, ev, data.split('test'), scale=0.125, batch_size=4, pipeline='device', pool=data)
            dirs |= {str(ld.cache['dir']) for ld in lo.values()}
        lo = dahar_loaders(data, DaHarConfig(batch_size=4, scale=0.25, pipeline='device', mask_supervision='box'), with_mask=True)
        dirs |= {str(ld.cache['dir']) for ld in lo.values()}
    # the images once per size; masks per list read with them: CAM-PAR's test lists (its masks loader) and Da-HAR's training lists
    assert len(dirs) == 2 and sorted(fills) == sorted([('images', campar), ('images', dahar)] + [('masks', campar)] * 3 + [('masks', dahar)] * 3), (dirs, fills)
    own = P.cached_loader(tr, P.campar_batches(True, 0.125), 4, True, seed=3, name='own')     # the last carve, a cache of its own
    pooled = P.cached_loader(tr, P.campar_batches(True, 0.125), 4, True, seed=3, name='rap', pool=data)
    for a, b in zip(own, pooled, strict=True): assert torch.equal(a['image'], b['image']) and torch.equal(a['index'], b['index'])


def test_a_mask_the_loader_does_not_read_never_stops_it(sets, tmp_path):
    "A broken mask of another split: the pooled training loader builds its own masks, and serves the per-list loader's batches."
    data = read_wider(tiny_fixture('wider', tmp_path/'w', n=12))
    from PIL import Image
    Image.new('L', (9, 7), 255).save(data.split('test')[0].mask)   # fits neither its image nor its box
    tr = data.split('train')
    pooled = P.cached_loader(tr, P.dahar_batches(True, 1, 0.25), 4, True, with_mask=True, seed=1, name='w', pool=data)
    own = P.cached_loader(tr, P.dahar_batches(True, 1, 0.25), 4, True, with_mask=True, seed=1, name='own')
    assert len(pooled.cache['images']) == len({(s.image, s.box) for s in data.samples}) > len(tr) == len(pooled.cache['masks'])
    for a, b in zip(own, pooled, strict=True): assert all(torch.equal(a[k], b[k]) for k in ('image', 'mask', 'index', 'labels'))
    for i in range(len(tr)):   # one sample alone (`loader.dataset[i]`): its image through the rows, its own mask
        assert all(torch.equal(own.dataset[i][k], pooled.dataset[i][k]) for k in ('image', 'mask', 'labels'))
    last, end = pooled.dataset[len(tr) - 1], pooled.dataset[-1]   # counted from the end, as a list's index
    assert end['index'] == last['index'] == len(tr) - 1 and all(torch.equal(end[k], last[k]) for k in ('image', 'mask', 'labels'))
    with pytest.raises(IndexError): pooled.dataset[len(tr)]


def test_a_process_hashes_a_cache_once(sets, tmp_path, monkeypatch):
    "The loaders of a run share the dataset's cache: the first open hashes it, the others check its key and layout; a rebuilt folder is hashed again."
    args, hashed, digest = _pa_args(sets), [], P._digest
    monkeypatch.setattr(P, '_digest', lambda arrays: (hashed.append(1), digest(arrays))[1])
    c = P.decoded_cache(*args, name='pa', root=tmp_path)
    assert len(hashed) == 1   # the build's hash of the pixels it wrote, which the build's own open trusts
    P.decoded_cache(*args, name='pa', root=tmp_path)
    assert len(hashed) == 1
    P._VERIFIED.clear(); P.decoded_cache(*args, name='pa', root=tmp_path)   # the next run's process
    assert len(hashed) == 2
    m = np.load(c['dir']/'images.npy', mmap_mode='r+'); m[0, 0, 0, 0] ^= 1; m.flush(); del m; os.utime(c['dir']/'images.npy', ns=(1, 1))   # changed in place
    with pytest.raises(KitError, match='pixels do not match their hash'): P.decoded_cache(*args, name='pa', root=tmp_path)
    shutil.rmtree(c['dir']); P.decoded_cache(*args, name='pa', root=tmp_path)   # rebuilt: its build's hash
    assert len(hashed) == 4


def test_a_sample_without_its_mask_is_named(sets):
    s = sets['pa100k'].samples[:3]
    with pytest.raises(KitError, match=r"no mask for .*masks\[0\] is None.*'box'.*masks=None"):
        P.decoded_cache([x.image for x in s], [x.box for x in s], (32, 24), masks=[None, 'box', 'box'], name='m')


def test_a_scene_is_decoded_once_for_its_targets(sets, monkeypatch):
    "The cache build decoded a WIDER scene once per target (a 1024x683 scene: 4.6 ms of each target's 6.6 ms); the pixels stay each target's own."
    ss = sorted(sets['wider'].samples, key=lambda s: s.image)
    scenes = [s.image for s in ss]
    assert len(set(scenes)) < len(scenes)   # the fixture has scenes of several targets
    want = [P.decode_resized(s.image, s.box, (32, 32))[0] for s in ss]
    decodes, rgb = [], P._rgb
    monkeypatch.setattr(P, '_rgb', lambda p: decodes.append(p) or rgb(p))
    idx, got = P._decode_chunk((list(range(len(ss))), 'images', scenes, [s.box for s in ss], (32, 32), None))
    assert len(decodes) == len(set(scenes)) and idx == list(range(len(ss)))
    for a, b in zip(got, want): np.testing.assert_array_equal(a, b)
