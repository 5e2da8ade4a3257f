"Seeding (har_kit.core.seed_everything) and the RNG states a checkpoint keeps (har_kit.checkpoints)."
import random

import numpy as np
import pytest
import torch

from har_kit.core import seed_everything


@pytest.fixture
def keep_rngs(monkeypatch):
    "Put the global python/numpy/torch generators back afterwards: the test must not move other tests' draws."
    monkeypatch.delenv('HAR_KIT_THREADS', raising=False)
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    yield
    random.setstate(states[0]); np.random.set_state(states[1]); torch.random.set_rng_state(states[2])


def _draws(seed):
    assert seed_everything(seed) == seed
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def test_seed_everything_seeds_python_numpy_and_torch_with_the_given_seed(keep_rngs):
    one, two = _draws(1), _draws(2)
    for name, a, b in zip(('torch', 'numpy', 'random'), one, two):
        assert a != b, f'{name}: seeds 1 and 2 gave the same draws'
    assert _draws(1) == one and _draws(2) == two


def test_a_checkpointed_rng_state_restores_python_numpy_and_torch(keep_rngs, tmp_path):
    "rng_state -> save_checkpoint -> load_checkpoint -> set_rng_state: every generator draws again what it drew after the save."
    from har_kit.checkpoints import load_checkpoint, rng_state, save_checkpoint, set_rng_state
    seed_everything(3)
    np.random.randn()                                  # numpy holds a cached Gaussian: that is state too
    save_checkpoint(dict(rng=rng_state()), tmp_path/'c.pt')
    after = _draws_now()
    _draws_now()                                       # move every generator on
    set_rng_state(load_checkpoint(tmp_path/'c.pt')['rng'])
    again = _draws_now()
    for name, a, b in zip(('torch', 'numpy', 'random'), after, again): assert a == b, f'{name} not restored'


def _draws_now(): return torch.rand(3).tolist(), np.random.rand(3).tolist() + [np.random.randn()], [random.random() for _ in range(3)]


def test_the_cuda_generator_saved_is_the_run_devices_and_resumes_on_any_gpu(keep_rngs, monkeypatch):
    """A checkpoint keeps the CUDA generator of the run's device only (not one per visible GPU, which opened a context on
    each and could not be restored where fewer GPUs are visible); it is restored onto the resumed run's device."""
    from har_kit import checkpoints as C
    saved, restored = {'cuda:1': torch.tensor([1], dtype=torch.uint8)}, []
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device: saved[str(device)])
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state, device: restored.append((state.tolist(), str(device))))
    monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: pytest.fail('every GPU read'))
    st = C.rng_state('cuda:1')
    assert [s.tolist() for s in st['cuda']] == [[1]]
    C.set_rng_state(st, 'cuda:0')                              # resumed on a machine (or slot) with one GPU
    assert restored == [([1], 'cuda:0')]
    assert C.rng_state('cpu')['cuda'] == [] and C.rng_state()['cuda'] == []
    C.set_rng_state(st, 'cpu'); assert len(restored) == 1      # a CPU run leaves the CUDA generators alone
    old = dict(st, cuda=[torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8)])   # an earlier file: one per GPU
    C.set_rng_state(old, 'cuda:1'); C.set_rng_state(old, 'cuda:5')
    assert restored[1:] == [([8], 'cuda:1'), ([8], 'cuda:5')]


@pytest.mark.parametrize('name', ['mps', 'xpu', 'hpu'])
def test_a_device_this_machine_lacks_is_named_not_a_raw_torch_error(name):
    from har_kit.core import KitError, get_device
    if name == 'mps' and torch.backends.mps.is_available() or name == 'xpu' and torch.xpu.is_available():
        pytest.skip(f'this machine has {name}')
    with pytest.raises(KitError, match=rf"device='{name}' is not usable here.*choose the device 'cpu'"):
        get_device(name)


def test_a_cuda_index_past_the_machines_gpus_is_refused(monkeypatch):
    from har_kit.core import KitError, get_device
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert get_device('cuda:1') == torch.device('cuda:1') and get_device('cuda') == torch.device('cuda')
    with pytest.raises(KitError, match=r"device='cuda:2' but this machine has 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        get_device('cuda:2')


def test_a_device_torch_cannot_make_a_tensor_on_is_refused_naming_it(monkeypatch):
    "The general fallback: whatever torch raises making an empty tensor there becomes a KitError naming the device."
    from har_kit.core import KitError, get_device
    real = torch.empty
    def empty(*a, device=None, **k):
        if torch.device(device).type == 'meta': raise RuntimeError('no such backend. more text')
        return real(*a, device=device, **k)
    monkeypatch.setattr(torch, 'empty', empty)
    with pytest.raises(KitError, match=r"device='meta' is not usable here \(torch .*RuntimeError: no such backend\)"):
        get_device('meta')


def test_a_saved_figure_does_not_name_the_matplotlib_that_drew_it(tmp_path):
    "PNGs carried 'Software: Matplotlib version3.x': the reference figures differed under another matplotlib though not a pixel did."
    import matplotlib; matplotlib.use('agg')
    import matplotlib.pyplot as plt
    from har_kit.core import env_info, save_figure
    fig, ax = plt.subplots(); ax.plot([0, 1])
    assert b'Matplotlib' not in save_figure(fig, 'x.png', tmp_path).read_bytes()
    plt.close(fig)
    assert {'matplotlib', 'pandas', 'pillow'} <= set(env_info()['packages'])   # what drew the figures and read the tables: recorded


def test_a_stop_while_atomic_paths_renames_waits_until_every_file_landed(tmp_path, monkeypatch):
    "The files are renamed back to back; a Ctrl-C between two renames left old and new files mixed; now it is delivered after the last."
    import os, signal, threading
    import har_kit.core as C
    assert threading.current_thread() is threading.main_thread()   # the signal must reach this test's handler
    paths = [tmp_path/f'{k}.txt' for k in 'abc']
    for p in paths: p.write_text('old')
    real, renamed = os.replace, []
    def replace(a, b):
        real(a, b); renamed.append(b)
        if len(renamed) == 1: os.kill(os.getpid(), signal.SIGINT)
    def stop(signum, frame): raise KeyboardInterrupt
    old = signal.signal(signal.SIGINT, stop)
    monkeypatch.setattr(C.os, 'replace', replace)
    try:
        with pytest.raises(KeyboardInterrupt):
            with C.atomic_paths(paths, sync=False) as tmps:
                for t in tmps: t.write_text('new')
    finally: signal.signal(signal.SIGINT, old)
    assert [p.read_text() for p in paths] == ['new'] * 3 and signal.getsignal(signal.SIGINT) is old



def test_atomic_writes_honour_the_umask_of_the_moment(tmp_path):
    "The umask was read once at import and every later write chmod'ed to it: a umask tightened after the import was ignored."
    import os, stat
    from har_kit.core import atomic_paths, atomic_write, save_json
    was = os.umask(0o077)   # the user's script makes its outputs private after importing the kit
    try:
        with atomic_write(tmp_path/'a.txt') as f: f.write('x')
        save_json({'a': 1}, tmp_path/'m.json')
        with atomic_paths([tmp_path/'b.bin']) as (t,): t.write_bytes(b'x'); os.chmod(t, 0o777)   # a writer that changed the mode
    finally: os.umask(was)
    assert [oct(stat.S_IMODE(os.stat(tmp_path/n).st_mode)) for n in ('a.txt', 'm.json', 'b.bin')] == [oct(0o600)] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.txt', 'b.bin', 'm.json']   # no temporary left


def test_importing_the_kit_never_sets_the_umask():
    "Reading the umask by setting it to 0 leaves a moment in which another thread's new files are world-writable."
    import subprocess, sys
    probe = ("import os; calls = []; real = os.umask\n"
             "os.umask = lambda m: (calls.append(m), real(m))[1]\n"
             "import har_kit.core; print(calls)")
    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'
