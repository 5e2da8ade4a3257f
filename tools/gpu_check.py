#!/usr/bin/env python3
"""`make gpu-check`: one prepared command that measures the paper profile's speed on whatever GPU it finds.

    python tools/gpu_check.py                     # on a GPU machine: writes outputs/reference/gpu/report.{json,md}
    python tools/gpu_check.py --cpu-tiny --out D  # tiny sizes on CPU, in seconds (CI: tests/test_gpu_check.py)

Sections (each timed; a failing one is recorded in the report and the rest go on; the report is saved after each). On
a GPU they run most telling first: recipes, configured, pipeline, concurrency_configured, latency, steps, end_to_end,
loaders, maskrcnn, checkpoints, concurrency, projection; one whose typical time (SECTION_S) no longer fits --budget (480 s)
is skipped:
  recipes      a paper run's route at toy sizes (`recipe_params`): CAM-PAR and Da-HAR trained and scored by
               `train_variant` through the decoded cache and device augmentation, bf16, channels_last: the code that
               runs only when batches live on the GPU, before any device time goes to timing
  steps        every model at its paper batch and input (CAM-PAR 64 at 256x192, Da-HAR 32 at 224x224 and 224x112 on
               RAP): the engine's own training epoch on device-resident batches, TF32 fp32 and bf16, channels_last
               (the baseline also contiguous), images/s, ms/step, peak memory; bf16 rows and the baseline's TF32 first,
               then torch.compile(mode='reduce-overhead') rows (Da-HAR at 224x112 first) while time remains, then the
               other TF32 rows; compiles share TORCHINDUCTOR_CACHE_DIR (default $TMPDIR/har_kit_inductor)
  configured   the paper profile's compiled step (bf16, and TF32 for CAM-PAR's baseline): on device-resident batches and
               end to end, fed by `har_kit.pipeline`'s decoded cache with device augmentation (built from synthetic JPEGs)
  latency      batch-1 inference, Da-HAR over its baseline and CAM-PAR (+ fusion) over the plain ResNet-50, eager and
               replayed from a captured CUDA graph (GPU time without Python's launch overhead), interleaved; Table 3's
               partial Da-HAR variants graph-replayed; every model's count of computing operators per forward
  end_to_end   300 steps of the engine's epoch at bf16 + channels_last for the three models the tables train most
  loaders      the torchvision loaders at steady state (persistent workers, after a warm epoch), person crops and
               WIDER targets cut from 1024x683 scenes, at 0, 2 and 8 workers
  pipeline     the decoded cache + device augmentation (`har_kit.pipeline.benchmark`), when the checkout has it
  maskrcnn     Mask R-CNN pseudo-mask images/s (weights=None: speed only)
  checkpoints  one epoch's best.pt + last.pt of Da-HAR and CAM-PAR + fusion with their optimizer state: seconds written
               in the foreground against the training thread's wait with the background writer (the copy to host memory)
  projection   GPU-hours of `har_kit.reproduce.plan(profile='paper')` as configured, from the rates above
  concurrency  1 and 3 CAM-PAR trainings on one GPU at once: combined images/s
  concurrency_configured  3 trainings as configured at once (compiled, fed by the decoded cache; --concurrency-counts
               for other numbers), for each model of --concurrency-models (default Da-HAR at 224x112)
  notebooks    the section notebooks' paper-size parameters checked against their parameters cells (run through
               papermill on the device only with --notebooks, which needs the carried wheels below)

The GPU machine has its own PyTorch/torchvision (and numpy, scipy, PIL, tqdm); the sections above need only fastcore
besides, carried in `.gpu-site/` (tools/gpu_lease.sh says how). For
--notebooks, papermill, nbdev and the like travel as wheels in `.whl/` at the repository root (ignored by git), which
the script installs with `pip --no-index --no-deps --target` before it imports har_kit. Refresh them (on a machine with
PyPI access, for the device's Python 3.12) with `python tools/gpu_check.py --download-wheels .whl`.
"""
from __future__ import annotations
import argparse, os, platform, shutil, statistics, subprocess, sys, tempfile, time, traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_WHEELS = [  # name==version: what har_kit needs at run time that the GPU image does not hold
    'asttokens==3.0.2', 'astunparse==1.6.3', 'cffi==2.1.1', 'comm==0.2.3', 'debugpy==1.8.22', 'entrypoints==0.4.2',
    'execnb==0.1.18', 'executing==2.3.0', 'fastcore==1.14.5', 'fastgit==0.1.4', 'fastjsonschema==2.22.3',
    'fastspec==0.1.0', 'ghapi==2.0.3', 'implicit==0.7.3', 'ipykernel==7.4.0', 'ipython==9.18.1',
    'ipython-pygments-lexers==1.1.1', 'jedi==0.20.1', 'jsonschema==4.26.0', 'jsonschema-specifications==2025.9.1',
    'jupyter-client==8.10.0', 'jupyter-core==5.9.1', 'matplotlib-inline==0.2.2', 'nbclient==0.11.0', 'nbdev==2.4.14',
    'nbformat==5.11.1', 'nest-asyncio2==1.7.4', 'papermill==2.7.0', 'parso==0.8.7', 'pexpect==4.9.0',
    'platformdirs==4.14.8', 'prompt-toolkit==3.0.53', 'ptyprocess==0.7.0', 'pure-eval==0.2.4', 'pycparser==3.12',
    'pyzmq==27.3.0', 'referencing==0.37.0', 'rpds-py==2026.9.1', 'stack-data==0.6.3', 'tenacity==9.2.1',
    'tornado==6.6.1', 'traitlets==5.16.1', 'watchdog==7.1.0', 'wcwidth==0.9.4']
PLATFORMS = ['manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_24_x86_64', 'manylinux_2_17_x86_64',
             'manylinux2014_x86_64', 'manylinux1_x86_64']
SITE = Path(tempfile.gettempdir())/'har-kit-gpu-site'

def download_wheels(dest):
    "Fetch DEVICE_WHEELS for the device's Python 3.12 on x86-64 Linux into `dest` (needs PyPI access)."
    dest = Path(dest); dest.mkdir(parents=True, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ('--platform', p)]
    for w in DEVICE_WHEELS:
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '--python-version', '3.12',
               '--implementation', 'cp', *plat, '-d', str(dest), w]
        print('+', ' '.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return 0


def setup(wheels):
    "Install the carried wheels into SITE and restart with it on PYTHONPATH (once); no-op without wheels."
    if os.environ.get('HAR_KIT_GPU_CHECK_SETUP') == '1' or not wheels or not Path(wheels).is_dir(): return
    whl = sorted(str(p) for p in Path(wheels).glob('*.whl'))
    if not whl: return
    print(f'setup: installing {len(whl)} wheels from {wheels} into {SITE}', flush=True)
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
                    '--no-cache-dir', '--upgrade', '--target', str(SITE), *whl], check=True)
    env = dict(os.environ, HAR_KIT_GPU_CHECK_SETUP='1',
               PYTHONPATH=os.pathsep.join([str(SITE), str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    env['PATH'] = os.pathsep.join([str(SITE/'bin'), env.get('PATH', '')])
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


class Partial(RuntimeError):
    "A section that failed part way: its error, and the rows it measured before (kept in the report)."
    def __init__(self, message, result): super().__init__(message); self.result = result


class Check:
    "The report under construction: each step's result or error, saved (atomically) after every step."
    def __init__(self, out, cfg):
        self.out, self.cfg, self.report = Path(out), cfg, dict(sections={}, started=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
    def step(self, name, fn):
        t = time.perf_counter()
        print(f'== {name}', flush=True)
        self.report['sections'][name] = dict(state='running', started=time.strftime('%H:%M:%S'))   # what a cut run was doing
        self.save()
        try: res, err = fn(), None
        except Exception as e:  # one failing step must not lose the others: the error goes into the report
            res, err = getattr(e, 'result', None) or None, f'{type(e).__name__}: {e}'   # a `Partial`'s rows are kept
            traceback.print_exc()
        self.report['sections'][name] = dict(seconds=round(time.perf_counter() - t, 2), **({'error': err} if err else {}))
        if res is not None: self.report[name] = res
        self.save()
        return res
    def save(self):
        from har_kit.core import save_json
        save_json(self.report, self.out/'report.json')
        from har_kit.core import atomic_write
        with atomic_write(self.out/'report.md') as f: f.write(to_markdown(self.report))


def config(cpu_tiny):
    "Sizes of every step: the paper's on a GPU, tiny ones for the CPU mode."
    if cpu_tiny:
        return dict(device='cpu', dahar_arch='resnet-tiny', campar_arch='resnet-tiny', dahar_size=(3, 32, 32),
                    dahar_rap_size=(3, 32, 16), campar_size=(3, 32, 24), campar_batch=4, dahar_batch=2, warm_steps=1,
                    steps=2, e2e_steps=3, precisions=('none', 'bf16'), compile=False, concurrency=(2,),
                    latency_iters=3, latency_backend='eager', loader_workers=(0, 1), loader_images=8, loader_batch=2, loader_epochs=1,
                    scene_size=(96, 64), person_size=(48, 24), maskrcnn_size=(64, 48), maskrcnn_min=64, maskrcnn_batch=1,
                    maskrcnn_kw=dict(rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50, box_detections_per_img=10),
                    maskrcnn_iters=1, notebooks=False, budget_s=float('inf'), cache_images=16,   # no deadline: a slow CI machine skips nothing
                    configured_concurrency=(2,), prefetch=2)
    return dict(device='cuda', dahar_arch='resnet101', campar_arch='resnet50', dahar_size=(3, 224, 224),
                dahar_rap_size=(3, 224, 112), campar_size=(3, 256, 192), campar_batch=64, dahar_batch=32, warm_steps=15,
                steps=60, e2e_steps=300, precisions=('none', 'bf16'), compile=True, concurrency=(1, 3),
                latency_iters=50, latency_backend='inductor', loader_workers=(0, 2, 8), loader_images=384, loader_batch=64, loader_epochs=2,
                scene_size=(683, 1024), person_size=(384, 160), maskrcnn_size=(480, 640), maskrcnn_min=800,
                maskrcnn_batch=8, maskrcnn_kw={}, maskrcnn_iters=5, notebooks=False, budget_s=480,
                cache_images=3072, configured_concurrency=(3,), prefetch=2)   # 3072: an epoch of about 100 steps, few boundaries per window


MODELS = {  # name -> (family, variant, input size key, attributes)
    'campar_baseline': ('campar', 'baseline', 'campar_size', 51), 'campar': ('campar', 'campar', 'campar_size', 51),
    'campar_fusion': ('campar', 'campar_fusion', 'campar_size', 51),
    'dahar_baseline': ('dahar', 'baseline', 'dahar_size', 14), 'dahar': ('dahar', 'dahar', 'dahar_size', 14),
    'dahar_rap': ('dahar', 'dahar', 'dahar_rap_size', 51),
}


def build(name, cfg):
    "A paper-size model and its criterion, as the paper profile builds them (CAM-PAR: its logit BN and MCA width)."
    from har_kit.campar import CamParLoss, campar_variant
    from har_kit.dahar import DaHarLoss, dahar_variant
    from har_kit.reproduce import PROFILES
    fam, variant, size, n = MODELS[name]
    if fam == 'dahar': return dahar_variant(variant, n, cfg['dahar_arch']), DaHarLoss('bce', mask_weight=1.0), cfg[size]
    p = PROFILES['paper']['campar']
    kw = {k: p[a] for k, a in (('logit_bn', 'logit_bn'), ('logit_bn_shared', 'logit_bn_shared'), ('latent', 'fusion_width'),
                                ('project_deepest', 'fusion_project_deepest')) if a in p}
    return campar_variant(variant, n, cfg['campar_arch'], **kw), CamParLoss(), cfg[size]


class Cycle:
    "A loader stand-in: `steps` dict batches cycled from a few made once on the device (the model's step alone)."
    def __init__(self, batches, steps): self.batches, self.steps = batches, steps
    def __iter__(self): return (self.batches[i % len(self.batches)] for i in range(self.steps))
    def __len__(self): return self.steps


def synthetic_batches(size, batch, n_attr, device, k=3):
    import torch
    g = torch.Generator().manual_seed(0)
    return [dict(image=torch.randn(batch, *size, generator=g).to(device),
                 labels=(torch.rand(batch, n_attr, generator=g) < .3).float().to(device),
                 mask=(torch.rand(batch, 1, *size[1:], generator=g) < .5).float().to(device)) for _ in range(k)]


def paper_params(nb):
    "The parameters of a paper-profile run of notebook `nb`: the profile over the notebook's defaults."
    from har_kit.cards import notebook_defaults
    from har_kit.reproduce import PROFILES
    return {**notebook_defaults(nb), **PROFILES['paper'].get(nb, {})}


def configured_optimizer(name):
    "TrainConfig fields of the optimizer the paper profile trains `name` with (Da-HAR: the paper's SGD; CAM-PAR: [15]'s, gradient clipped)."
    p = paper_params(MODELS[name][0])
    return dict(optimizer=p.get('optimizer') or 'sgd', lr=p.get('lr') or 1e-4, momentum=p.get('momentum') or 0.9,
                weight_decay=p.get('weight_decay') or 0.0, grad_clip=p.get('grad_clip') or 0.0)   # CAM-PAR: [15]'s clip at 10


def prefetching(loader, depth):
    """A copy of a `DeviceLoader` that prepares `depth` batches ahead on a thread (`har_kit.pipeline.prefetched`); it shares
    the loader's generator, which only one of them draws from at a time (each pass closes its iterator, joining the thread)."""
    import copy
    out = copy.copy(loader); out.prefetch = int(depth)
    return out


def same_batches(a, b, k):
    "Whether loaders `a` and `b`, seeded alike, yield the same first `k` batches (every tensor equal, bit for bit)."
    import torch
    def first(ld):
        ld.generator.manual_seed(12345); it = iter(ld)
        try: return [next(it) for _ in range(min(k, len(ld)))]
        finally: it.close()
    return all(u.keys() == v.keys() and all(torch.equal(u[n], v[n]) for n in u) for u, v in zip(first(a), first(b), strict=True))


def train_rate(name, cfg, amp='bf16', channels_last=True, compile_mode='none', steps=None, barrier=None, loader=None, timed=None):
    """Images/s of the engine's own training epoch (`har_kit.engine._train_epoch`) on device-resident batches, after a warm
    epoch; with `loader` (a DeviceLoader of this model's input size) also `e2e_steps` steps fed by it (same compiled model)
    and the loader alone. The phases' timing windows interleave over `reps` repetitions; each figure is their median.
    `timed`: only these phases are timed (step, e2e, e2e_prefetch, loader_alone): trainings timed side by side each
    time the one phase compared, so that no window overlaps another process's different phase."""
    import torch
    from har_kit.engine import TrainConfig, _train_epoch, make_optimizer
    from har_kit.core import get_device
    dev = get_device(cfg['device'])
    torch.manual_seed(0)
    model, crit, size = build(name, cfg)
    batch = cfg['campar_batch'] if name.startswith('campar') else cfg['dahar_batch']
    tc = TrainConfig(**configured_optimizer(name), amp=amp, channels_last=channels_last, progress=False, device=cfg['device'],
                     max_loss_ratio=0)   # log_every: the engine's default, as the paper profile's runs read their losses back
    model.to(dev)
    if channels_last: model.to(memory_format=torch.channels_last)
    net = torch.compile(model, mode=compile_mode, dynamic=False) if compile_mode != 'none' else model
    opt, scaler = make_optimizer(model, tc), torch.amp.GradScaler(dev.type, enabled=False)
    data = synthetic_batches(size, batch, MODELS[name][3], dev)
    if dev.type == 'cuda': torch.backends.cudnn.benchmark = True; torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    guard = {}   # one run's: its first loss is read back once, as a run's is (not at every window's first step)
    t = time.perf_counter(); _train_epoch(net, crit, Cycle(data, cfg['warm_steps']), opt, scaler, tc, dev, 1, guard); sync()
    warm = time.perf_counter() - t
    n, reps = steps or cfg['steps'], cfg.get('reps', 3)
    phases = {'step': (lambda e: _train_epoch(net, crit, Cycle(data, max(1, n // reps)), opt, scaler, tc, dev, e, guard), max(1, n // reps))}
    if loader is not None:
        ahead = prefetching(loader, cfg['prefetch'])
        class Epochs:   # k batches drawn from a loader's epochs in turn (its shuffle order advancing)
            wait = 0.0    # host seconds spent inside the loader (preparing batches, or held by a copy waiting for the GPU)
            def __init__(self, k, ld=loader): self.k, self.ld = k, ld
            def __len__(self): return self.k
            def __iter__(self):
                k = 0
                while True:
                    it = iter(self.ld)
                    try:
                        while True:
                            t = time.perf_counter(); b = next(it, None); Epochs.wait += time.perf_counter() - t
                            if b is None: break
                            if k == self.k: return
                            k += 1; yield b
                    finally: it.close()   # a prefetching loader's thread stops here
        k = max(1, cfg['e2e_steps'] // reps)
        same = same_batches(loader, ahead, 3)   # on this device: the batches prepared ahead are the loader's own
        _train_epoch(net, crit, Epochs(cfg['warm_steps']), opt, scaler, tc, dev, 2, guard); sync()   # the loader's first batches
        _train_epoch(net, crit, Epochs(cfg['warm_steps'], ahead), opt, scaler, tc, dev, 2, guard); sync()
        phases['e2e'] = (lambda e: _train_epoch(net, crit, Epochs(k), opt, scaler, tc, dev, e, guard), k)
        phases['e2e_prefetch'] = (lambda e: _train_epoch(net, crit, Epochs(k, ahead), opt, scaler, tc, dev, e, guard), k)
        phases['loader_alone'] = (lambda e: sum(1 for _ in Epochs(k)), k)   # batches ready on the device, no model
    if timed is not None: phases = {p: v for p, v in phases.items() if p in timed}
    if barrier: barrier()
    rates, in_loader = {p: [] for p in phases}, {p: [] for p in ('e2e', 'e2e_prefetch') if p in phases}
    for r in range(reps):   # interleaved windows: a transient shows as spread instead of moving one phase's figure
        for p, (run, steps_in) in phases.items():
            if p in in_loader: Epochs.wait = 0.0
            sync(); t = time.perf_counter(); run(3 + r); sync(); wall = time.perf_counter() - t
            rates[p].append(steps_in * batch / wall)
            if p in in_loader: in_loader[p].append(Epochs.wait / wall)
    med = {p: statistics.median(v) for p, v in rates.items()}
    span = lambda p: [min(rates[p]), max(rates[p])]
    row = dict(model=name, amp=amp, channels_last=channels_last, compile=compile_mode, batch=batch, input_size=list(size), optimizer=tc.optimizer,
               repetitions=reps, warm_epoch_s=round(warm, 2), peak_mem_mib=torch.cuda.max_memory_allocated() / 2**20 if dev.type == 'cuda' else None)
    if 'step' in med:
        row.update(images_per_s=med['step'], images_per_s_range=span('step'), ms_per_step=batch / med['step'] * 1e3, steps=phases['step'][1] * reps)
    if 'e2e' in med:
        row.update(e2e_images_per_s=med['e2e'], e2e_images_per_s_range=span('e2e'), e2e_steps=k * reps,
                   e2e_host_in_loader=statistics.median(in_loader['e2e']), pipeline_input_size=list(next(iter(loader))['image'].shape[1:]))
    if 'loader_alone' in med: row.update(loader_alone_images_per_s=med['loader_alone'])
    if 'e2e_prefetch' in med:
        row.update(e2e_prefetch_images_per_s=med['e2e_prefetch'], e2e_prefetch_images_per_s_range=span('e2e_prefetch'),
                   e2e_prefetch_host_in_loader=statistics.median(in_loader['e2e_prefetch']), prefetch=cfg['prefetch'],
                   prefetch_same_batches=same)
    return row


def steps_matrix(cfg, deadline):
    "Every model at its paper batch: TF32 fp32 and bf16, channels_last; the baseline also contiguous; one compiled run."
    import torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True   # 'fp32' means TF32 on Ampere+
    # Order by what the projection needs: the configured precision (bf16) of every model and TF32 for the bf16/TF32
    # ratio first, then the compiled (CUDA-graph) rows, largest priced unknown first (Da-HAR at 224x112: about half of
    # the projected hours), a cold compile taking one to two minutes; the remaining TF32 rows last, if time remains.
    bf16, rest = [p for p in cfg['precisions'] if p == 'bf16'], [p for p in cfg['precisions'] if p != 'bf16']
    jobs = [(m, a, True, 'none') for a in bf16 for m in MODELS] + [('campar_baseline', 'bf16', False, 'none')]
    jobs += [('campar_baseline', a, True, 'none') for a in rest]
    if cfg['compile']:   # the paper profile's setting (CUDA graphs)
        jobs += [(m, 'bf16', True, 'reduce-overhead') for m in ('dahar_rap', 'campar_baseline', 'dahar', 'campar_fusion')]
    jobs += [(m, a, True, 'none') for a in rest for m in MODELS if m != 'campar_baseline']
    out = {}
    for m, a, cl, c in jobs:
        key = f'{m}|{a}|{"channels_last" if cl else "contiguous"}|{c}'
        if time.time() > deadline: out[key] = dict(model=m, amp=a, channels_last=cl, compile=c, skipped='time budget'); continue
        try: out[key] = train_rate(m, cfg, a, cl, c)
        except Exception as e: out[key] = dict(model=m, amp=a, channels_last=cl, compile=c, error=f'{type(e).__name__}: {e}'[:300])
        print(f'{key}: {out[key].get("images_per_s", out[key].get("error") or out[key].get("skipped"))}', flush=True)
        if torch.cuda.is_available(): torch.cuda.empty_cache()
    return out


CONFIGURED_JOBS = [  # (model, precision, end to end through the decoded cache): the paper profile's compiled step, largest priced unknown first
    ('dahar_rap', 'bf16', True), ('campar_baseline', 'bf16', True), ('campar_baseline', 'none', False),
    ('campar_fusion', 'bf16', True), ('dahar', 'bf16', True)]


DISTINCT_JPEGS = 16


def _cached_loader(name, cfg, n_images, tmp):
    "A `har_kit.pipeline.DeviceLoader` over a decoded cache of synthetic JPEGs, augmenting on the device as the paper profile does."
    import numpy as np, torch
    from torchvision.io import encode_jpeg, write_file
    from har_kit.pipeline import DeviceLoader, campar_batches, dahar_batches, decoded_cache
    fam, _, size_key, n_attr = MODELS[name]
    size = cfg[size_key]
    scale = size[1] / (256 if fam == 'campar' else 224)
    batches = campar_batches(True, scale) if fam == 'campar' else dahar_batches(True, size[1] // size[2], scale)
    g, paths, jpegs = torch.Generator().manual_seed(0), [], []
    for i in range(n_images):   # a few distinct JPEGs written under many names: decoding each once is what the cache build costs
        p = Path(tmp)/f'{name}-{i}.jpg'; paths.append(p)
        if len(jpegs) < DISTINCT_JPEGS:
            jpegs.append(encode_jpeg(torch.randint(0, 256, (3, batches[0][0] + 32, batches[0][1] + 32), dtype=torch.uint8, generator=g)))
        if not p.exists(): write_file(str(p), jpegs[i % DISTINCT_JPEGS])
    boxes = [(8., 16., float(batches[0][1]), float(batches[0][0])) for _ in paths]
    t = time.perf_counter()
    cache = decoded_cache(paths, boxes, batches[0], ['box'] * len(paths) if fam == 'dahar' else None, name=name,
                          workers=min(8, os.cpu_count() or 1), root=Path(tmp)/'cache')
    build = len(paths) / (time.perf_counter() - t)
    labels = (np.random.default_rng(0).random((len(paths), n_attr)) < .3).astype(np.float32)
    batch = cfg['campar_batch'] if fam == 'campar' else cfg['dahar_batch']
    return DeviceLoader(cache, labels, batches[1], batch, shuffle=True, drop_last=True, device=cfg['device']), build


def configured(cfg, deadline):
    """The paper profile's step as configured (torch.compile mode='reduce-overhead' on a GPU, eager on the CPU): on
    device-resident batches, then end to end fed by the decoded cache with device augmentation; bf16 and one TF32 row."""
    import torch
    mode = 'reduce-overhead' if cfg['compile'] else 'none'
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True   # 'none' (fp32) rows are TF32, as in steps
    out = {}
    with tempfile.TemporaryDirectory(prefix='har-kit-gpu-cache-') as tmp:
        sel = cfg.get('configured_models')
        for m, amp, e2e in [j for j in CONFIGURED_JOBS if not sel or j[0] in sel or f'{j[0]}:{j[1]}' in sel]:
            key = f'{m}|{amp}|channels_last|{mode}'
            if time.time() > deadline: out[key] = dict(model=m, amp=amp, channels_last=True, compile=mode, skipped='time budget'); continue
            try:
                ld = _cached_loader(m, cfg, cfg['cache_images'], tmp) if e2e else None
                out[key] = train_rate(m, cfg, amp, True, mode, loader=ld[0] if ld else None)
                if ld: out[key]['cache_build_images_per_s'] = ld[1]
            except Exception as e:   # an inductor or CUDA-graph failure: its message's end is what says why
                traceback.print_exc()
                out[key] = dict(model=m, amp=amp, channels_last=True, compile=mode, error=f'{type(e).__name__}: {e}'[:300],
                                detail=traceback.format_exc()[-3000:])
            v = out[key]
            print(f'configured {key}: step {v.get("images_per_s", v.get("error") or v.get("skipped"))}, end to end {v.get("e2e_images_per_s")}', flush=True)
            if torch.cuda.is_available(): torch.cuda.empty_cache()
    return out


def end_to_end(cfg):
    "300 steps of the engine's epoch at the configured setting (bf16, channels_last) for the three models the tables train most."
    return {m: train_rate(m, cfg, 'bf16', True, steps=cfg['e2e_steps']) for m in ('campar_baseline', 'campar_fusion', 'dahar')}


def _latency_pair(model, base, x, iters, graph):
    "Per-repeat GPU ms of `model(x)` and `base(x)`, interleaved; replays of captured CUDA graphs when `graph`."
    import torch
    def runner(m):
        m.eval(); xs = x.clone()
        if not graph or x.device.type != 'cuda':
            def f():
                with torch.no_grad(): m(xs)
            return f
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(3): m(xs)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(g): m(xs)
        return g.replay
    fs = [runner(model), runner(base)]
    def timed(f):
        if x.device.type != 'cuda':
            t = time.perf_counter(); f(); return (time.perf_counter() - t) * 1e3
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); f(); b.record(); b.synchronize(); return a.elapsed_time(b)
    for f in fs: f(); f()
    t = [[], []]
    for i in range(iters):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)): t[j].append(timed(fs[j]))
    return t


DAHAR_PARTS = ('self_mask', 'fusion', 'coarse_to_fine')   # Table 3's partial variants: where Da-HAR's extra time goes


def op_count(model, x):
    "Operators one `model(x)` dispatches that compute (views and allocations left out): what a batch-1 latency is bound by."
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    free = {'view', '_unsafe_view', 'reshape', 't', 'transpose', 'permute', 'expand', 'unsqueeze', 'squeeze', 'slice', 'select',
            'alias', 'detach', 'empty', 'empty_strided', 'as_strided'}
    class Count(TorchDispatchMode):
        n = 0
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in free: Count.n += 1
            return func(*args, **(kwargs or {}))
    with torch.no_grad():
        model.eval()(x)   # once uncounted: one-time work (a cached interpolation matrix) is not a per-forward cost
        with Count(): model(x)
    return Count.n


def latency(cfg):
    "Inference latency at batch 1, fp32: Da-HAR / its baseline and CAM-PAR (+ fusion) / the plain ResNet-50, eager and graph-replayed; Table 3's partial Da-HAR variants graph-replayed."
    import torch
    from har_kit.bench import plain_baseline
    from har_kit.core import get_device
    from har_kit.dahar import PAPER_LATENCY_MS as P, dahar_variant
    dev, out = get_device(cfg['device']), {}
    pairs = {'dahar/baseline': ('dahar', 'dahar_baseline'), 'campar/plain': ('campar', None), 'campar_fusion/plain': ('campar_fusion', None)}
    pairs.update({f'dahar {v}/baseline': (v, 'dahar_baseline') for v in DAHAR_PARTS})
    errors = []
    for key, (m, b) in pairs.items():
        try:   # one pair failing (a capture, say) keeps the other pairs' rows
            if m in DAHAR_PARTS: model, size = dahar_variant(m, MODELS[b][3], cfg['dahar_arch']), cfg[MODELS[b][2]]
            else: model, _, size = build(m, cfg)
            base = build(b, cfg)[0] if b else plain_baseline(cfg['campar_arch'], 51)
            x = torch.randn(1, *size, device=dev)
            ops = dict(ops=op_count(model.to(dev), x), ops_baseline=op_count(base.to(dev), x))
            for graph in ((True,) if m in DAHAR_PARTS else (False, True)):
                out[f'{key} ({"graph" if graph else "eager"})'] = dict(_latency_row(*_latency_pair(model, base, x, cfg['latency_iters'], graph)), **ops)
        except Exception as e:
            traceback.print_exc(); errors.append(f'{key}: {type(e).__name__}: {e}'[:300])
    out['paper_anchor'] = dict(ratio=P['dahar'] / P['baseline'], note=f"Da-HAR {P['dahar']} ms vs baseline {P['baseline']} ms, one image, 1080Ti")
    if errors: raise Partial('; '.join(errors), out)
    return out


def _latency_row(tm, tb):  # per-repeat ms of a model and its baseline (`_latency_pair`)
    "Medians of both and the ratio's median and IQR."
    import statistics
    from har_kit.bench import ratio_stats
    r = ratio_stats(tm, tb)
    return dict(ms=statistics.median(tm), ms_baseline=statistics.median(tb), ratio=r['median'], ratio_iqr=r['iqr'])


def latency_compiled(cfg):
    """Batch-1 fp32 inference latency of Da-HAR and its baseline, both compiled by `torch.compile` (inductor's default
    mode on a GPU: pointwise operators fused, convolutions left to cuDNN; dynamo's eager backend in the CPU mode), then
    captured in a CUDA graph and replayed: the GPU time of a deployment that compiles, beside `latency`'s eager kernels.
    Compile seconds (cold) are reported with the rates."""
    import torch
    from har_kit.core import get_device
    dev = get_device(cfg['device'])
    model, _, size = build('dahar', cfg); base = build('dahar_baseline', cfg)[0]
    x = torch.randn(1, *size, device=dev).contiguous(memory_format=torch.channels_last)
    t = time.perf_counter()   # channels_last, as training runs: without it inductor converts every conv weight in each call
    cm, cb = (torch.compile(m.to(dev).to(memory_format=torch.channels_last).eval(), backend=cfg['latency_backend']) for m in (model, base))
    with torch.no_grad(): cm(x); cb(x)   # both compiled before any timing
    compile_s = time.perf_counter() - t
    row = _latency_row(*_latency_pair(cm, cb, x, cfg['latency_iters'], graph=True))
    return {'dahar/baseline (compiled, graph)': dict(row, backend=cfg['latency_backend'], compile_s=round(compile_s, 1), memory_format='channels_last')}


def _worker(a):
    "One of several concurrent training processes: wait for the others after warm-up, then time, print JSON."
    import json as _json, torch
    cfg = dict(config(a.cpu_tiny))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True   # as `configured`: its compiles are reused
    ready = Path(a.barrier)
    def barrier():
        (ready/f'{os.getpid()}').touch()
        t = time.time()
        while len(list(ready.iterdir())) < a.worker_of and time.time() - t < 600: time.sleep(0.01)   # compiles take minutes
        # (a sibling that dies before the barrier: the parent stops every worker, `_run_workers`)
    if a.cache_dir:   # the configured step, end to end through the decoded cache the parent built
        ld = _cached_loader(a.worker, cfg, cfg['cache_images'], a.cache_dir)[0]
        row = train_rate(a.worker, cfg, 'bf16', True, 'reduce-overhead' if cfg['compile'] else 'none', barrier=barrier, loader=ld,
                         timed=('e2e',))   # every worker times the same phase at once
    else: row = train_rate(a.worker, cfg, 'bf16', True, steps=cfg['steps'], barrier=barrier)
    print('RESULT ' + _json.dumps(row), flush=True)
    return 0


def _run_workers(cmd, n, env, deadline, logs):
    """Start `n` copies of `cmd`, their output in files under `logs` (a pipe left unread can stall a worker); wait for all
    of them until `deadline` (time.time()). One failing, or the deadline passing, stops every one: none is left holding
    the GPU while later sections are timed. Returns their stdout texts."""
    outs = [(logs/f'{i}.out', logs/f'{i}.err') for i in range(n)]
    files = [(open(o, 'w'), open(e, 'w')) for o, e in outs]
    procs = [subprocess.Popen(cmd, stdout=o, stderr=e, text=True, env=env) for o, e in files]
    tail = lambda i: outs[i][1].read_text()[-500:]
    try:
        while True:
            bad = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            if bad is not None: raise RuntimeError(f'worker {bad + 1} of {n} failed (exit {procs[bad].returncode}); the others were stopped: {tail(bad)}')
            if all(p.returncode == 0 for p in procs): return [o.read_text() for o, _ in outs]
            if time.time() > deadline: raise RuntimeError(f'{sum(p.returncode is None for p in procs)} of {n} workers still running at the section\'s deadline; stopped')
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None: p.kill()
        for p in procs: p.wait()
        for f in (f for pair in files for f in pair): f.close()


def concurrency(cfg, cpu_tiny, model='campar_baseline', counts=None, configured=False, timeout_s=900, logs_root=None):
    """Several trainings of `model` on one GPU at once (bf16, channels_last), timed together after a barrier: combined
    images/s. `configured`: the paper profile's compiled step fed by the decoded cache (end-to-end rates). Workers still
    running `timeout_s` after they started (hung: a compile, a barrier never met) are stopped and the section fails.
    Their output goes to `logs_root`/workers/MODEL-N (kept with the report) when given."""
    made, failed = [], True   # temporary folders: removed at the end, except a failed section's worker logs, which its error names
    def tmp(prefix): made.append(tempfile.mkdtemp(prefix=prefix)); return made[-1]
    try:
        out = _concurrency(cfg, cpu_tiny, model, counts, configured, timeout_s, logs_root, tmp)
        failed = False
        return out
    finally:
        for d in made:
            if not (failed and 'gpu-workers' in d): shutil.rmtree(d, ignore_errors=True)


def _concurrency(cfg, cpu_tiny, model, counts, configured, timeout_s, logs_root, tmp):  # `concurrency`; `tmp(prefix)` makes its temporary folders
    import json as _json
    out = {}
    cache = tmp('har-kit-gpu-cache-') if configured else None
    if cache: _cached_loader(model, cfg, cfg['cache_images'], cache)   # written once here, before the workers read it
    for n in counts or cfg['concurrency']:
        bar = Path(tmp('har-kit-gpu-bar-'))
        cmd = [sys.executable, str(Path(__file__).resolve()), '--worker', model, '--worker-of', str(n), '--barrier', str(bar)]
        if cpu_tiny: cmd.append('--cpu-tiny')
        if cache: cmd += ['--cache-dir', cache]
        logs = Path(logs_root)/'workers'/f'{model}-{n}' if logs_root else Path(tmp('har-kit-gpu-workers-'))
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
        rates = []
        for so in _run_workers(cmd, n, env, time.time() + timeout_s, logs):
            line = next((l for l in so.splitlines() if l.startswith('RESULT ')), None)
            if line is None: raise RuntimeError(f'a worker printed no RESULT line (its output: {logs})')
            rates.append(_json.loads(line[7:]))
        key = 'e2e_images_per_s' if configured else 'images_per_s'
        out[str(n)] = dict(processes=n, model=model, images_per_s_each=[r[key] for r in rates], images_per_s_total=sum(r[key] for r in rates))
        if configured: out[str(n)].update(compile=rates[0]['compile'], timed='e2e')
        print(f'concurrency {model} {n}: {out[str(n)]["images_per_s_total"]:.0f} images/s', flush=True)
    return out


def loaders(cfg):
    "The torchvision loaders at steady state (persistent workers, timed after a warm epoch): JPEG decode + the papers' transforms."
    from har_kit.bench import synthetic_samples
    with tempfile.TemporaryDirectory(prefix='har-kit-gpucheck-') as tmp:   # the JPEGs are gone after the section, also on an error
        return _loaders(cfg, synthetic_samples(cfg['loader_images'], size=cfg['person_size'], root=Path(tmp)/'people'),
                        synthetic_samples(max(cfg['loader_images'] // 4, 2), size=cfg['scene_size'], root=Path(tmp)/'scenes'))


def _loaders(cfg, people, scenes):  # `loaders` on its synthetic person crops and scenes
    from dataclasses import replace
    from har_kit.bench import loader_options
    from har_kit.loading import campar_transforms, dahar_transforms, make_loader
    h, w = cfg['scene_size']
    targets = [replace(s, box=(w * (.1 + .2 * (i % 4)), h * .2, w * .15, h * .5)) for s in scenes for i in range(4)]
    out = {}
    for name, samples, tf in (('campar (PA-100K-like crops, 256x192)', people, campar_transforms(True)),
                              ('dahar (WIDER targets cut from 1024x683 scenes, 224x224)', targets, dahar_transforms(True))):
        for nw in cfg['loader_workers']:
            ldr = make_loader(samples, tf, cfg['loader_batch'], shuffle=True, drop_last=True, **loader_options(nw, cfg['device']))
            for _ in ldr: pass                                  # the warm epoch starts the workers
            t, n = time.perf_counter(), 0
            for _ in range(cfg['loader_epochs']):
                for b in ldr: n += len(b['labels'])
            out[f'{name}|{nw}'] = dict(pipeline=name, workers=nw, images_per_s=n / (time.perf_counter() - t), images=n)
            print(f'loader {name} {nw} workers: {out[f"{name}|{nw}"]["images_per_s"]:.0f} images/s', flush=True)
            del ldr
    out['cpus'] = os.cpu_count()
    return out


def pipeline(cfg):
    "The decoded cache + device augmentation of `har_kit.pipeline`, when this checkout has it."
    try: import har_kit.pipeline as hp
    except ImportError: return dict(available=False, note='har_kit.pipeline is not in this checkout')
    bench = getattr(hp, 'benchmark', None)
    if bench is None: return dict(available=True, note='har_kit.pipeline has no benchmark() to call')
    return dict(available=True, **bench(device=cfg['device'], images=cfg['loader_images'], batch=cfg['campar_batch']))
def maskrcnn(cfg):
    "Mask R-CNN (torchvision, weights=None) inference images/s: the pseudo-mask step's speed."
    import torch, torchvision
    from har_kit.bench import _timer
    from har_kit.core import get_device
    dev = get_device(cfg['device'])
    torch.manual_seed(0)
    h, w = cfg['maskrcnn_size']
    m = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=cfg['maskrcnn_min'],
                                                           max_size=max(cfg['maskrcnn_min'], 1333 * cfg['maskrcnn_min'] // 800),
                                                           **cfg['maskrcnn_kw'])
    m = m.to(dev).eval()
    x = [torch.rand(3, h, w, device=dev) for _ in range(cfg['maskrcnn_batch'])]
    timer = _timer(dev)
    def f():
        with torch.inference_mode(): m(x)
    f()
    ms = sorted(timer(f) for _ in range(cfg['maskrcnn_iters']))[cfg['maskrcnn_iters'] // 2]
    return dict(images_per_s=len(x) / ms * 1e3, batch=len(x), image_size=[h, w], min_size=cfg['maskrcnn_min'], device=str(dev),
                options=cfg['maskrcnn_kw'],
                note='random weights: detections differ from COCO weights, so post-processing time may too')


def _host_bound_steps():
    "A training loop bound by its host's Python (tiny CPU steps): `steps(k)` runs k of them."
    import torch
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(20)]); x = torch.randn(4, 8, generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    def steps(k):
        for _ in range(k): opt.zero_grad(); net(x).sum().backward(); opt.step()
    return steps


def checkpoints(cfg, reps=3):
    """Seconds of one epoch's checkpoint files (best.pt + last.pt of the paper-size model with its optimizer's state):
    written in the foreground (the engine before `CheckpointWriter`) against what the training thread now waits for (the
    copy to host memory) and the background write; and the host time a host-bound training thread loses while the write
    goes on (Python's global lock, held while `torch.save` pickles). Interleaved repetitions, medians and ranges."""
    import shutil, torch
    from har_kit.checkpoints import CheckpointWriter, save_checkpoint
    from har_kit.core import get_device
    from har_kit.engine import TrainConfig, make_optimizer
    dev, out, tmp = get_device(cfg['device']), {}, Path(tempfile.mkdtemp(prefix='har_kit_ck_'))
    try:
        for name in ('dahar', 'campar_fusion'):
            model = build(name, cfg)[0].to(dev)
            opt = make_optimizer(model, TrainConfig(**configured_optimizer(name)))
            for p in model.parameters(): p.grad = torch.zeros_like(p)
            opt.step()                                          # the optimizer's state exists, as after a real epoch
            def files(model=model, opt=opt):   # as the engine hands them over after an improving epoch
                return [(dict(epoch=1, model=model.state_dict()), tmp/'best.pt'),
                        (dict(epoch=1, model=model.state_dict(), optimizer=opt.state_dict()), tmp/'last.pt')]
            fg, wait, bg, lost = [], [], [], []
            steps = _host_bound_steps(); steps(50)
            t = time.perf_counter(); steps(500); alone = (time.perf_counter() - t) / 500
            with CheckpointWriter() as w:
                for _ in range(reps):                           # interleaved: foreground, then background, each repetition
                    t = time.perf_counter()
                    for st, path in files(): save_checkpoint(st, path)
                    fg.append(time.perf_counter() - t)
                    t = time.perf_counter(); w.write(files()); wait.append(time.perf_counter() - t)
                    t1, n = time.perf_counter(), 0
                    while w.busy(): steps(5); n += 5            # a host-bound training thread meanwhile
                    w.wait(); bg.append(time.perf_counter() - t)
                    lost.append(max(0.0, time.perf_counter() - t1 - n * alone))
            out[name] = dict(model=name, optimizer=type(opt).__name__, megabytes=(tmp/'last.pt').stat().st_size / 1e6,
                             foreground_s=statistics.median(fg), foreground_s_range=[min(fg), max(fg)],
                             wait_s=statistics.median(wait), wait_s_range=[min(wait), max(wait)],
                             background_s=statistics.median(bg), host_lost_s=statistics.median(lost),
                             host_lost_s_range=[min(lost), max(lost)], repetitions=reps)
            print(f'checkpoints {name}: foreground {out[name]["foreground_s"]:.2f} s, waits {out[name]["wait_s"]:.3f} s, '
                  f'a host-bound thread loses {out[name]["host_lost_s"]:.2f} s', flush=True)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    return out


NOTEBOOK_RUNS = {  # section -> parameters of one paper-size run on synthetic data (a few dozen iterations)
    'masks': dict(dataset='wider', source='maskrcnn', profile='tiny', maskrcnn_images=32, maskrcnn_weights=None,
                  maskrcnn_min_size=800, fig4_arch='resnet101', fig4_size=224),
    'dahar': dict(variants=['dahar'], dataset='wider', profile='tiny', arch='resnet101', weights=None, scale=1.0,
                  epochs=1, batch_size=8, fig5=False, amp='bf16'),
    'campar': dict(variants=['campar_fusion'], dataset='rap', profile='tiny', arch='resnet50', weights=None, scale=1.0,
                   epochs=1, batch_size=8, amp='bf16'),
    'cfar': dict(dataset='rap', profile='tiny', arch='resnet50', weights=None, scale=1.0, epochs=1, batch_size=8),
}


NOTEBOOK_THREADS = 4          # intra-op threads of each notebook's kernel (the data loaders' workers are the notebook's own)
NOTEBOOK_CELL_TIMEOUT = 240   # seconds: a hung cell fails its run instead of the device's time


def notebook_plan(device):
    "The notebook runs, with parameters the notebook does not have dropped (and named): {section: (params, dropped)}."
    from har_kit.cards import notebook_defaults
    plan = {}
    for nb, params in NOTEBOOK_RUNS.items():
        known = notebook_defaults(nb)
        p = {k: v for k, v in {**params, 'device': device}.items() if k in known}
        plan[nb] = (p, sorted(set(params) - set(known)))
    return plan


RECIPES = {'campar': ('rap', 'campar_fusion'), 'dahar': ('wider', 'dahar')}   # notebook -> (dataset, variant) rehearsed


def recipe_params(nb, device):
    """A paper-profile run of `nb` at toy sizes (`reproduce.SMOKE`) on `device`, on the GPU with the paper profile's
    precision and memory format (compile off: the configured section times compiled steps): the route a paper run takes
    through the decoded cache and device augmentation. Da-HAR learns its mask from the target box (no masks step)."""
    from har_kit.reproduce import PROFILES, SMOKE, profile_params
    prof, (ds, _) = PROFILES['paper'], RECIPES[nb]
    p = {k: v for k, v in profile_params('paper', nb, ds).items() if not k.startswith('_')}   # as the planner sets them
    if nb in prof.get('_selections', {}): p.update(selection='[15]', **prof['_selections'][nb]['[15]'])
    cuda = str(device).startswith('cuda')
    p.update(SMOKE[nb], dataset=ds, device=str(device), amp='bf16' if cuda else 'none', channels_last=cuda)
    if nb == 'dahar': p.update(mask_supervision='box')
    return p


def recipes(cfg):
    """Each method's recipe trained and scored as a paper run is (`recipe_params`): on a GPU, the code that only runs
    when the batches live there (a test-time loop meeting GPU labels, say); then the same run again, which resumes from
    its last.pt (checkpoint and RNG states read back onto the device's run). State and seconds per method."""
    from har_kit.campar_train import CamParConfig, CamParRecipe
    from har_kit.dahar_train import DaHarConfig, DaHarRecipe
    make = {'campar': (CamParConfig, CamParRecipe), 'dahar': (DaHarConfig, DaHarRecipe)}
    with tempfile.TemporaryDirectory(prefix='har-kit-gpu-recipes-') as root:   # the trained runs are not kept: the rows say how they went
        return _recipes(cfg, make, Path(root))


def _recipes(cfg, make, root):  # `recipes` into the folder `root`
    import dataclasses
    from har_kit.model_file import train_variant
    out = {}
    for nb, (config, recipe) in make.items():
        t, p = time.perf_counter(), recipe_params(nb, cfg['device'])
        fields = {f.name for f in dataclasses.fields(config)}
        try:
            res = train_variant(recipe(config(**{k: v for k, v in p.items() if k in fields})), RECIPES[nb][1], root/nb)
            train_variant(recipe(config(**{k: v for k, v in p.items() if k in fields})), RECIPES[nb][1], root/nb)   # resumed
            out[nb] = dict(state='done', resumed=True, metrics=sorted(k for k, v in res.items() if isinstance(v, (int, float)))[:12])
        except Exception as e:   # the error and its traceback's end, for the reader; the other method still runs
            traceback.print_exc()
            out[nb] = dict(state='failed', error=f'{type(e).__name__}: {e}'[:300], detail=traceback.format_exc()[-3000:])
        out[nb].update(seconds=round(time.perf_counter() - t, 1), params=p, ignored=sorted(set(p) - fields))
        print(f'recipe {nb}: {out[nb]["state"]} in {out[nb]["seconds"]} s', flush=True)
    if any(v['state'] == 'failed' for v in out.values()):   # the rows stay in the report, tracebacks included
        raise Partial('; '.join(f'{k}: {v["error"]}' for k, v in out.items() if v['state'] == 'failed'), out)
    return out


def notebook_runs(cfg):
    "One papermill run per section notebook at paper size on the device; status and wall time of each."
    from har_kit.runs import run_notebook
    with tempfile.TemporaryDirectory(prefix='har-kit-gpu-runs-') as root:   # the runs are not kept: the rows say how they went
        return _notebook_runs(cfg, run_notebook, Path(root))


def _notebook_runs(cfg, run_notebook, root):  # `notebook_runs` into the folder `root`
    out = {}
    for nb, (params, dropped) in notebook_plan(cfg['device']).items():
        if cfg.get('only_notebooks') and nb not in cfg['only_notebooks']: continue
        t = time.perf_counter()
        try:
            run_notebook(nb, params, root/nb, progress=False, demos=False, threads=NOTEBOOK_THREADS, timeout=NOTEBOOK_CELL_TIMEOUT)
            out[nb] = dict(state='done')
        except Exception as e:   # the first line for the table, the rest (the failing cell's assertion, its arrays) for the reader
            out[nb] = dict(state='failed', error=str(e).splitlines()[0][:300] if str(e) else type(e).__name__,
                           detail=str(e)[-4000:])
        out[nb].update(seconds=round(time.perf_counter() - t, 1), params=params, dropped=dropped)
        print(f'{nb}: {out[nb]["state"]} in {out[nb]["seconds"]} s', flush=True)
    return out


# images per dataset at paper scale: training targets (all of train + val that the plan trains on), test targets,
# and the images Mask R-CNN reads for the masks step (WIDER: its 13,789 scenes; RAP: 41,585 pedestrian images)
DATASET_SIZES = {
    'wider': dict(train=28345, test=29179, mask_images=13789, note='WIDER-Attribute: 28,345 train+val / 29,179 test targets in 13,789 scenes'),
    'rap': dict(train=33268, test=8317, mask_images=41585, note='RAP v1: 33,268 trainval / 8,317 test images per partition'),
    'pa100k': dict(train=90000, test=10000, mask_images=100000, note='PA-100K: 80,000 train + 10,000 val / 10,000 test'),
}
HOST_BOUND = ('dahar',)   # notebooks whose configured step is bound by its host (report: host work ~ GPU work per step)
FIXED_S = 60        # per run: start, model build, cudnn autotuning, metrics (an estimate, stated); checkpoints: measured
INFER_SPEEDUP = 3   # inference images/s over training images/s (forward alone against forward + backward + update)


def _as_configured(nb):
    "(amp, channels_last, compile_mode, num_workers, pipeline) of a paper-profile run of `nb`."
    p = paper_params(nb)
    return (p.get('amp') or 'none', bool(p.get('channels_last')), p.get('compile_mode') or 'none', int(p.get('num_workers') or 0),
            p.get('pipeline') or 'loader')


def _rate(report, model, amp, cl, compile_mode='none'):
    "A measured training rate: this exact setting, else (a compiled setting not measured for this model) the eager one."
    rows = [v for sec in ('steps', 'configured') for v in (report.get(sec) or {}).values()
            if isinstance(v, dict) and v.get('model') == model and 'images_per_s' in v]
    for mode in dict.fromkeys([compile_mode, 'none']):
        hit = [v['images_per_s'] for v in rows if v['amp'] == amp and v['channels_last'] == cl and v['compile'] == mode]
        if hit: return hit[0]
    return min((v['images_per_s'] for v in rows), default=None)


E2E_BOUND = {  # a model -> one at most as costly per image: its measured end-to-end rate bounds the model's from above
    'dahar': 'dahar_rap', 'dahar_baseline': 'dahar_rap',   # the same networks on twice the pixels
    'campar': 'campar_baseline'}                            # the baseline plus CAM heads


def _e2e_rate(report, model, amp, cl, compile_mode, prefetch=False):
    """The end-to-end rate through the decoded cache with device augmentation at this setting, or None (not measured);
    with `prefetch`, the faster of the plain loader's and the loader preparing batches ahead, where both were measured."""
    rows = [v for v in (report.get('configured') or {}).values() if isinstance(v, dict) and v.get('model') == model
            and 'e2e_images_per_s' in v and (v['amp'], v['channels_last'], v['compile']) == (amp, cl, compile_mode)]
    if not rows: return None
    ahead = rows[0].get('e2e_prefetch_images_per_s') if prefetch and rows[0].get('prefetch_same_batches') else None
    return max(rows[0]['e2e_images_per_s'], ahead or 0.0)


def _loader_rate(report, fam, workers):
    rows = [v for v in (report.get('loaders') or {}).values() if isinstance(v, dict) and v.get('pipeline', '').startswith(fam)]
    if not rows: return float('inf')
    return min(rows, key=lambda v: abs(v['workers'] - workers))['images_per_s']


def _run_hours(report, r, amp, cl, workers, cached, compile_mode='none', prefetch=False):
    "Hours of one planned run: its training passes, its evaluations, Mask R-CNN passes for masks, plus FIXED_S."
    nb, p = r.spec.notebook, r.params
    size = DATASET_SIZES.get(p.get('dataset'))
    if size is None: return None
    if nb == 'masks':
        mr = (report.get('maskrcnn') or {}).get('images_per_s')
        return dict(images=size['mask_images'], hours=(size['mask_images'] / mr if mr else 0) / 3600 + FIXED_S / 3600)
    vf, epochs = float(p.get('val_fraction') or 0), int(p.get('epochs') or 30)
    if nb == 'cfar':
        m, train_imgs, evals = 'campar_fusion', 0, size['train'] + size['test']
        variants = ['phase 2']
    else:
        variants = p.get('variants') or [r.spec.variant]
        train_imgs = size['train'] * (1 - vf) * epochs
        per_epoch_eval = size['train'] * vf + (size['test'] if nb == 'campar' else 0)   # CAM-PAR scores test every epoch
        evals = per_epoch_eval * epochs + (size['test'] * 6 if nb == 'dahar' else 0)       # Da-HAR: five crops + full, once
    hours, fam = 0.0, 'dahar' if nb == 'dahar' else 'campar'
    ck = (report.get('checkpoints') or {}).get('dahar' if nb == 'dahar' else 'campar_fusion') or {}
    ck_s = (ck.get('wait_s', 0.0) + (ck.get('host_lost_s', 0.0) if nb in HOST_BOUND else 0.0)) * epochs if nb != 'cfar' else 0.0
    for v in variants:
        m = ('dahar_rap' if p.get('dataset') == 'rap' else 'dahar_baseline' if v == 'baseline' else 'dahar') if nb == 'dahar' \
            else 'campar_fusion' if nb == 'cfar' else ('campar_baseline' if v in ('baseline', 'fusion') else v)
        tr = _rate(report, m, amp, cl, compile_mode) or _rate(report, 'campar_baseline', amp, cl, compile_mode)
        if tr is None: return None
        if cached:   # measured with its pipeline, when it was; else at most a cheaper model's end-to-end rate
            bound = _e2e_rate(report, E2E_BOUND.get(m, m), amp, cl, compile_mode, prefetch)
            tr = _e2e_rate(report, m, amp, cl, compile_mode, prefetch) or min(tr, bound or tr)
        pipe = float('inf') if cached else _loader_rate(report, fam, workers)
        hours += (train_imgs / min(tr, pipe) + evals / min(tr * INFER_SPEEDUP, pipe) + ck_s + FIXED_S) / 3600
    return dict(images=train_imgs * len(variants) + evals * len(variants), hours=hours)


def _sharing(report):
    """{notebook: speed-up} of running `reproduce.runs_per_gpu` trainings on the GPU at once, where measured as configured
    (combined end-to-end rate of n runs over one run's): the GPU-hours of that notebook's runs divide by it."""
    from har_kit.reproduce import GIB_PER_RUN, MAX_RUNS_PER_GPU
    gib = (report.get('environment') or {}).get('memory_gib') or 0
    per_gpu = int(min(MAX_RUNS_PER_GPU, max(1, gib // GIB_PER_RUN)))
    out = {}
    for v in (report.get('concurrency_configured') or {}).values():
        single = _e2e_rate(report, v['model'], 'bf16', True, v.get('compile', 'none'))
        if single and v['processes'] == per_gpu:   # a family's speed-up: the least of its measured models'
            fam = MODELS[v['model']][0]; out[fam] = min(out.get(fam, float('inf')), v['images_per_s_total'] / single)
    return out


def _measured_prefetch(report):
    "Whether the report timed the loader preparing batches ahead (and found its batches the loader's own)."
    return any(isinstance(v, dict) and v.get('prefetch_same_batches') and v.get('e2e_prefetch_images_per_s')
               for v in (report.get('configured') or {}).values())


def projection(report):
    "GPU-hours of the paper profile's plan (one seed): as configured, and with bf16 + channels_last + a loader that keeps up."
    from har_kit.reproduce import SHARES_GPU, plan
    runs, share = plan(profile='paper', seeds=1), _sharing(report)
    ck_note = 'the checkpoints section' if report.get('checkpoints') else 'not measured in this report: counted as 0 s'
    rows, tot, unpriced = [], dict(configured=0.0, lean=0.0, prefetch=0.0), []
    for r in runs:
        amp, cl, mode, workers, pipe = _as_configured(r.spec.notebook)
        a = _run_hours(report, r, amp, cl, workers, cached=pipe == 'device', compile_mode=mode)
        b = _run_hours(report, r, amp, cl, workers, cached=False, compile_mode=mode)   # the torchvision loader instead
        c = _run_hours(report, r, amp, cl, workers, cached=pipe == 'device', compile_mode=mode, prefetch=True)   # batches prepared ahead
        if a is None or b is None or (r.spec.notebook == 'masks' and not (report.get('maskrcnn') or {}).get('images_per_s')):
            unpriced.append(f'{r.spec.notebook} {r.params.get("dataset")}'); continue   # no rate measured for it: named, never a 0
        if pipe == 'device' and r.spec.notebook in SHARES_GPU and r.spec.notebook in share:   # concurrency was measured without
            a['hours'] /= share[r.spec.notebook]; c['hours'] = min(c['hours'], a['hours'])    # prefetching: the better of the two
        tot['configured'] += a['hours']; tot['lean'] += b['hours']; tot['prefetch'] += c['hours']
        rows.append(dict(notebook=r.spec.notebook, dataset=r.params.get('dataset'), variants=r.params.get('variants'),
                         partition=r.params.get('partition'), val_fraction=r.params.get('val_fraction'), amp=amp,
                         channels_last=cl, compile_mode=mode, num_workers=workers, pipeline=pipe, hours=a['hours'],
                         hours_torchvision_loader=b['hours']))
    whole = not unpriced   # a total over part of the plan is no total
    return dict(runs=rows, unpriced=unpriced, total_hours=tot['configured'] if whole else None,
                total_hours_torchvision_loader=tot['lean'] if whole else None,
                total_hours_prefetch=tot['prefetch'] if whole and _measured_prefetch(report) else None, gpu_sharing=share, planned_from='har_kit.reproduce.plan(profile="paper", seeds=1)',
                datasets={k: v['note'] for k, v in DATASET_SIZES.items()},
                assumptions=f'one seed; as configured = the paper profile over the notebooks\' defaults (precision, memory '
                            f'format, compile mode, loader workers, pipeline); a run on the decoded cache with device '
                            f'augmentation (pipeline="device") is priced at its end-to-end rate where measured (the configured '
                            f'section), else at its model step or a cheaper model\'s end-to-end rate, whichever is lower (E2E_BOUND); the runs of a notebook that `reproduce.execute` places several to a GPU (reproduce.SHARES_GPU: Da-HAR) '
                            f'are priced at the combined rate measured (concurrency_configured; gpu_sharing: each family\'s least '
                            f'measured speed-up, Da-HAR\'s from 224x112 applied to its 224x224 runs too); every other run takes a GPU '
                            f'of its own and is priced alone; a compiled step not measured for a '
                            f'model counts at its eager rate; inference at {INFER_SPEEDUP}x the training rate; {FIXED_S} s fixed '
                            f'per run; each epoch\'s checkpoint files at the training thread\'s measured wait, plus, for a step bound by its host '
                            f'({", ".join(HOST_BOUND)}), the host time the background write takes from it ({ck_note}); masks runs priced as Mask R-CNN passes at the measured rate; Da-HAR on RAP at 224x112; '
                            f'CFAR as one inference pass over train + test (its ALS runs on the CPU)')


def environment(cfg):
    import torch, torchvision
    dev = dict(device=cfg['device'], torch=torch.__version__, torchvision=torchvision.__version__,
               cuda=torch.version.cuda, python=platform.python_version(), cpus=os.cpu_count(), load=list(os.getloadavg()))
    if cfg['device'] == 'cuda':
        if not torch.cuda.is_available(): raise RuntimeError('no CUDA device visible to torch: run with --cpu-tiny on a CPU machine')
        p = torch.cuda.get_device_properties(0)
        dev.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f'{p.major}.{p.minor}',
                   cudnn=torch.backends.cudnn.version())
        torch.backends.cudnn.benchmark = True
    else: dev.update(name=platform.processor() or 'cpu')
    return dev


def _f(v, d=1): return '-' if v is None else f'{v:.{d}f}'


def _rng(v, k):  # a median with its repetitions' range, where the row has one
    r = v.get(f'{k}_range')
    return _f(v.get(k), 0) + (f' ({r[0]:.0f}-{r[1]:.0f})' if r else '')


def _ahead(v):  # the end-to-end rate with batches prepared ahead on a thread, and whether they were the loader's own
    if 'e2e_prefetch_images_per_s' not in v: return '-'
    return _rng(v, 'e2e_prefetch_images_per_s') + ('' if v.get('prefetch_same_batches') else ' **batches differ**')


def to_markdown(r):
    "The report as Markdown."
    env = r.get('environment', {})
    L = ['### GPU check', '', f'Device: {env.get("name", "?")} ({env.get("device", "?")}), {env.get("cpus", "?")} CPUs, torch '
         f'{env.get("torch", "?")}, torchvision {env.get("torchvision", "?")}, CUDA {env.get("cuda")}; mode `{r.get("mode", "?")}`; '
         f'started {r.get("started")}, finished {r.get("finished", "(not finished)")}.', '']
    if r.get('note'): L += [r['note'], '']
    rows = [v for v in (r.get('steps') or {}).values() if isinstance(v, dict) and 'model' in v]
    if rows:
        L += ['Training steps: the engine\'s own epoch (`har_kit.engine._train_epoch`: lean loss guard, the fused optimizer of the '
              'row: the paper profile\'s; rows measured before 2026-12-05 used Adam) on '
              'device-resident batches, timed after a warm epoch ("fp32" is TF32).', '',
              '| model | batch | input | precision | memory format | compiled | optimizer | images/s | ms/step | peak MiB | warm epoch s |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
        for v in rows:
            fmt = 'channels_last' if v['channels_last'] else 'contiguous'
            if 'images_per_s' not in v:
                L.append(f'| {v["model"]} | | | {v["amp"]} | {fmt} | {v["compile"]} | | {v.get("error") or v.get("skipped")} | | | |'); continue
            L.append(f'| {v["model"]} | {v["batch"]} | {v["input_size"][1]}x{v["input_size"][2]} | {v["amp"]} | {fmt} | {v["compile"]} | '
                     f'{v.get("optimizer", "adam")} | '
                     f'{_f(v["images_per_s"], 0)} | {_f(v["ms_per_step"], 1)} | {_f(v["peak_mem_mib"], 0)} | {v["warm_epoch_s"]} |')
        bf, tf = _rate(r, 'campar_baseline', 'bf16', True), _rate(r, 'campar_baseline', 'none', True)
        if bf and tf: L += ['', f'bf16 / TF32 at batch {rows[0]["batch"]} (CAM-PAR baseline, channels_last): {bf / tf:.2f}x.']
        L.append('')
    cr = [v for v in (r.get('configured') or {}).values() if isinstance(v, dict) and 'model' in v]
    if cr:
        L += ['The paper profile\'s step as configured (torch.compile mode as listed, channels_last), on device-resident batches '
              'and end to end: the same compiled model fed by the decoded cache (synthetic JPEGs) with device augmentation '
              '(`har_kit.pipeline.DeviceLoader`); "batches prepared ahead" is the same loader preparing the next `prefetch` batches on a thread of its own in a CUDA stream of its own (`har_kit.pipeline.prefetched`; not the default until measured here), its first batches checked equal to the plain loader\'s on this device; "loader alone" is that loader with no model; "host in loader" is the share of the end-to-end wall time the host spent inside the loader (near 1 with the step far faster than the loader alone: the loader waited for the GPU); medians of interleaved timing windows, their range in brackets where the row has repetitions.', '',
              '| model | batch | input | precision | compiled | optimizer | step images/s (range) | end to end images/s (range) | batches prepared ahead: end to end images/s (range) | loader alone images/s | host in loader | cache build images/s | warm epoch s (compile) |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
        for v in cr:
            if 'images_per_s' not in v:
                L.append(f'| {v["model"]} | | | {v["amp"]} | {v["compile"]} | | {v.get("error") or v.get("skipped")} | | | | | | |'); continue
            L.append(f'| {v["model"]} | {v["batch"]} | {v["input_size"][1]}x{v["input_size"][2]} | {v["amp"]} | {v["compile"]} | '
                     f'{v.get("optimizer", "adam")} | '
                     f'{_rng(v, "images_per_s")} | {_rng(v, "e2e_images_per_s")} | {_ahead(v)} | {_f(v.get("loader_alone_images_per_s"), 0)} | '
                     f'{_f(v.get("e2e_host_in_loader"), 2)} | {_f(v.get("cache_build_images_per_s"), 0)} | {v["warm_epoch_s"]} |')
        cb = [v for v in cr if v['model'] == 'campar_baseline' and 'images_per_s' in v and v['compile'] != 'none']
        bf, tf = ([v['images_per_s'] for v in cb if v['amp'] == a] for a in ('bf16', 'none'))
        if bf and tf: L += ['', f'bf16 / TF32, compiled, at batch {cb[0]["batch"]} (CAM-PAR baseline, channels_last): {bf[0] / tf[0]:.2f}x.']
        L.append('')
    if r.get('end_to_end'):
        L += ['End to end, 300 steps of the engine\'s epoch (bf16, channels_last): ' + ', '.join(
              f'{k} {_f(v["images_per_s"], 0)} images/s' for k, v in r['end_to_end'].items()) + '.', '']
    if r.get('latency'):
        L += ['| latency, batch 1, fp32 inference | ms | ms baseline | ratio (median) | IQR | operators / baseline\'s |', '|---|---|---|---|---|---|']
        L += [f'| {k} | {_f(v["ms"], 2)} | {_f(v["ms_baseline"], 2)} | {_f(v["ratio"], 3)} | {_f(v["ratio_iqr"][0], 3)}-{_f(v["ratio_iqr"][1], 3)} | '
              + (f'{v["ops"]} / {v["ops_baseline"]} |' if 'ops' in v else '- |')
              for k, v in r['latency'].items() if k != 'paper_anchor']
        L += ['', f'"graph" replays a captured CUDA graph (GPU time without launch overhead); "eager" is the same call from Python; '
              f'"dahar VARIANT" rows are Table 3\'s partial variants, which say which of Da-HAR\'s blocks its extra time goes to; '
              f'operators: the computing operators one forward dispatches (views and allocations left out), which a batch-1 latency is bound by. '
              f'Paper anchor: {r["latency"]["paper_anchor"]["ratio"]:.3f} ({r["latency"]["paper_anchor"]["note"]}).', '']
    for k, v in (r.get('latency_compiled') or {}).items():
        L += [f'Compiled ({v["backend"]}, default mode), then graph-replayed, batch 1, fp32: {k} {_f(v["ms"], 2)} ms against '
              f'{_f(v["ms_baseline"], 2)} ms, ratio {_f(v["ratio"], 3)} (IQR {_f(v["ratio_iqr"][0], 3)}-{_f(v["ratio_iqr"][1], 3)}); '
              f'both compiles took {_f(v["compile_s"], 0)} s cold.', '']
    if r.get('concurrency'):
        L += ['Concurrent CAM-PAR baseline trainings on one GPU (bf16, channels_last): ' + ', '.join(
              f'{k} at once {_f(v["images_per_s_total"], 0)} images/s' for k, v in r['concurrency'].items()) + '.', '']
    if r.get('concurrency_configured'):
        L += ['Concurrent trainings on one GPU as configured (compiled, end to end through the decoded cache): ' + ', '.join(
              f'{v["processes"]} x {v["model"]} {_f(v["images_per_s_total"], 0)} images/s combined (each '
              f'{", ".join(_f(x, 0) for x in v["images_per_s_each"])})' for v in r['concurrency_configured'].values()) + '.', '']
    lr = [v for v in (r.get('loaders') or {}).values() if isinstance(v, dict)]
    if lr:
        L += ['| loader (torchvision transforms, persistent workers, steady state) | workers | images/s |', '|---|---|---|']
        L += [f'| {v["pipeline"]} | {v["workers"]} | {_f(v["images_per_s"], 0)} |' for v in lr]
        L.append('')
    if r.get('pipeline'): L += [f'Decoded cache + device augmentation: {r["pipeline"]}', '']
    if r.get('maskrcnn'):
        m = r['maskrcnn']
        L += [f'Mask R-CNN (weights=None): {_f(m["images_per_s"])} images/s, {m["image_size"][0]}x{m["image_size"][1]} images '
              f'resized to min side {m["min_size"]}, batch {m["batch"]}.', '']
    ck = [v for v in (r.get('checkpoints') or {}).values() if isinstance(v, dict) and 'wait_s' in v]
    if ck:
        L += ['One epoch\'s checkpoint files (best.pt + last.pt with the optimizer\'s state), medians of interleaved repetitions: '
              'written in the foreground against what the training thread waits for with `CheckpointWriter` (the copy to host memory; '
              'the write goes on in the background), and the host time a training thread bound by its own Python loses meanwhile '
              '(Python\'s global lock, held while `torch.save` pickles).', '',
              '| model | optimizer | last.pt MB | foreground s (range) | training waits s (range) | background write s | host-bound thread loses s (range) |',
              '|---|---|---|---|---|---|---|']
        L += [f'| {v["model"]} | {v["optimizer"]} | {_f(v["megabytes"], 0)} | {_f(v["foreground_s"], 2)} ({_f(v["foreground_s_range"][0], 2)}-'
              f'{_f(v["foreground_s_range"][1], 2)}) | {_f(v["wait_s"], 3)} ({_f(v["wait_s_range"][0], 3)}-{_f(v["wait_s_range"][1], 3)}) | '
              f'{_f(v["background_s"], 2)} | {_f(v.get("host_lost_s"), 2)} ({_f((v.get("host_lost_s_range") or [None])[0], 2)}-'
              f'{_f((v.get("host_lost_s_range") or [None, None])[1], 2)}) |' for v in ck]
        L.append('')
    if r.get('recipes'):
        L += ['A paper run\'s route at toy sizes on the device (`recipe_params`: the paper profile with `reproduce.SMOKE`\'s sizes, '
              'decoded cache and device augmentation, bf16, channels_last; trained and scored by `train_variant`):', '',
              '| method | dataset, variant | state | seconds |', '|---|---|---|---|']
        L += [f'| {k} | {", ".join(RECIPES.get(k, ("?", "?")))} | {v["state"]}{": " + v["error"] if v.get("error") else ""} | {v["seconds"]} |'
              for k, v in r['recipes'].items()]
        L.append('')
    if r.get('notebooks'):
        L += ['| notebook | state | seconds | dropped parameters |', '|---|---|---|---|']
        L += [f'| {k} | {v["state"]}{": " + v["error"] if v.get("error") else ""} | {v["seconds"]} | {", ".join(v["dropped"]) or "-"} |'
              for k, v in r['notebooks'].items()]
        L.append('')
    if r.get('projection'):
        p = r['projection']
        ahead = (f'; {p["total_hours_prefetch"]:.1f} if the decoded cache\'s loader prepared batches ahead on a thread '
                 f'(`prefetch`; each run at the faster of its two measured end-to-end rates, a shared GPU\'s runs at the better of '
                 f'sharing and running alone prepared ahead)') if p.get('total_hours_prefetch') else ''
        if p.get('unpriced'):   # a partial report (one lease's sections alone): no total, and the runs it could not price named
            L += [f'Projected paper profile: **no total**: {len(p["unpriced"])} of {len(p["runs"]) + len(p["unpriced"])} planned runs '
                  f'have no measured rate in this report ({", ".join(sorted(set(p["unpriced"])))}); merge it with a report that '
                  f'measured them (`--merge`).', '']
        else: L += [f'Projected paper profile: **{p["total_hours"]:.1f} GPU-hours as configured**; {p["total_hours_torchvision_loader"]:.1f} '
              f'if every run read through the torchvision loader instead of the decoded cache{ahead} ({len(p["runs"])} runs from '
              f'{p["planned_from"]}; {p["assumptions"]}).', '']
    errs = {k: v['error'] for k, v in r.get('sections', {}).items() if 'error' in v}
    if errs: L += ['Sections that failed: ' + '; '.join(f'{k}: {v}' for k, v in errs.items()), '']
    L += ['Section times (s): ' + ', '.join(f'{k} {v.get("seconds", v.get("state"))}' for k, v in r.get('sections', {}).items())]
    return '\n'.join(L) + '\n'


def _has_rate(row):  # a report row
    "Whether a row holds a measured rate (not a skipped, failed or cut one)."
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) and k.endswith(('images_per_s', 'images_per_s_total', 'ratio', 'ms'))
               for k, v in row.items())


def merge(paths, out, note=None):
    """One report from several runs' reports (`--merge A.json B.json ...`): sections in order, later rows replacing
    earlier ones key by key; each source listed in `merged_from`; the projection recomputed from the merged rates."""
    import json as _json
    rep = dict(sections={}, merged_from=[])
    for p in paths:
        r = _json.loads(Path(p).read_text())
        dev, first = (r.get('environment') or {}).get('name'), (rep.get('environment') or {}).get('name')
        if first and dev != first:   # one report names one device: rates from two cards are not comparable
            raise SystemExit(f'--merge: {p} was measured on {dev}, the reports before it on {first}; merge reports of one '
                             f'device only (write the other to its own --out)')
        rep["merged_from"] += r.get('merged_from') or [dict(started=r.get('started'), finished=r.get('finished'), sections=list(r.get('sections', {})))]
        if r.get('concurrency_configured'):   # one key per model and count (older reports keyed by the count alone)
            r['concurrency_configured'] = {f'{v["model"]}|{v["processes"]}': v for v in r['concurrency_configured'].values()}
        for k, v in r.items():
            if k in ('merged_from', 'projection', 'note', 'started', 'finished'): continue
            if k == 'sections':   # a section run in several leases: its seconds summed
                for n, sec in v.items():
                    old = rep['sections'].get(n, {})
                    if old and ('state' in sec or 'skipped' in sec): continue   # cut short or not started here: the earlier lease's stands
                    rep['sections'][n] = {**sec, 'seconds': round(old.get('seconds', 0) + sec.get('seconds', 0), 2)} if 'seconds' in sec else sec
            elif isinstance(v, dict) and isinstance(rep.get(k), dict) and not all(isinstance(x, dict) for x in v.values()):
                if _has_rate(v) or not _has_rate(rep[k]): rep[k] = v   # one record, not rows (the environment, the pipeline):
                                                                        # a lease's whole, never two leases' keys mixed
            elif isinstance(v, dict) and isinstance(rep.get(k), dict):
                for rk, rv in v.items():   # a row this lease skipped or failed keeps the earlier lease's measured one
                    old = rep[k].get(rk)
                    if isinstance(old, dict) and _has_rate(old) and isinstance(rv, dict) and not _has_rate(rv): continue
                    rep[k][rk] = rv
            else: rep[k] = v
    rep['started'] = min(m['started'] for m in rep['merged_from'] if m['started'])
    rep['finished'] = max(m['finished'] for m in rep['merged_from'] if m['finished'])
    if note: rep['note'] = note
    rep['projection'] = projection(rep)
    chk = Check(out, {}); chk.report = rep; chk.save()
    return rep


SECTION_NAMES = ('recipes', 'configured', 'pipeline', 'concurrency_configured', 'latency', 'latency_compiled', 'steps', 'end_to_end', 'loaders', 'maskrcnn',
                 'checkpoints', 'concurrency', 'projection', 'notebooks')   # the usual order on a GPU: most telling first
SECTION_S = {'configured': 200, 'pipeline': 10, 'concurrency_configured': 200, 'latency': 40, 'latency_compiled': 100, 'steps': 120, 'end_to_end': 40,
             'loaders': 45, 'maskrcnn': 10, 'concurrency': 40, 'notebooks': 0,   # typical seconds on an H200 (2026-12-04; three
             'checkpoints': 45, 'recipes': 60}   # Da-HAR workers with cold compiles: 150-190 s); checkpoints: an estimate (not yet run on a GPU)


def main(argv=None):
    ap = argparse.ArgumentParser(prog='gpu_check', description=__doc__.split('\n')[0])
    ap.add_argument('--cpu-tiny', action='store_true', help='tiny sizes on the CPU (CI), no notebook runs')
    ap.add_argument('--out', type=Path, default=None, help='report folder (default outputs/reference/gpu)')
    ap.add_argument('--wheels', default=str(REPO/'.whl'), help='folder of carried wheels to install first')
    ap.add_argument('--download-wheels', metavar='DIR', help='refresh the carried wheels into DIR and exit (needs PyPI)')
    ap.add_argument('--skip', nargs='*', default=[], help='sections to leave out (steps configured end_to_end latency latency_compiled concurrency loaders '
                                                           'pipeline maskrcnn checkpoints projection notebooks)')
    ap.add_argument('--only', nargs='*', default=None, help='run only these sections (same names as --skip), in the order given (the projection last)')
    ap.add_argument('--configured-models', nargs='*', default=None, help='limit the configured section to these models (MODEL or MODEL:PRECISION)')
    ap.add_argument('--configured-share', type=float, default=0.55, help='fraction of --budget after which the configured section starts no new model')
    ap.add_argument('--concurrency-models', nargs='*', default=['dahar_rap'], help='models of the concurrency_configured section, in turn')
    ap.add_argument('--concurrency-counts', nargs='*', type=int, default=None,
                    help='trainings at once in the concurrency_configured section (default 3 on a GPU, 2 with --cpu-tiny)')
    ap.add_argument('--merge', nargs='*', metavar='REPORT', help='merge these report.json files (later rows win) into --out and exit')
    ap.add_argument('--note', help='with --merge: the paragraph that says which runs the merged report holds')
    ap.add_argument('--budget', type=float, default=None, help='seconds after which no new timed job starts (default: 330 on a GPU)')
    ap.add_argument('--notebooks', nargs='*', default=None, help='also run these section notebooks through papermill (needs the wheels)')
    ap.add_argument('--worker', help=argparse.SUPPRESS); ap.add_argument('--worker-of', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--barrier', help=argparse.SUPPRESS); ap.add_argument('--cache-dir', help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    unknown = sorted((set(a.only or []) | set(a.skip)) - set(SECTION_NAMES))
    if unknown: ap.error(f'unknown section(s) {", ".join(unknown)}: choose from {", ".join(SECTION_NAMES)}')
    if a.download_wheels: return download_wheels(a.download_wheels)
    sys.path.insert(0, str(REPO))
    if a.worker: return _worker(a)
    if a.merge:
        merge(a.merge, a.out or REPO/'outputs'/'reference'/'gpu', a.note); return 0
    if a.notebooks: setup(a.wheels)
    cfg = dict(config(a.cpu_tiny), only_notebooks=a.notebooks, notebooks=bool(a.notebooks))
    if a.budget: cfg['budget_s'] = a.budget
    cfg['configured_models'] = a.configured_models
    if a.concurrency_counts:
        if min(a.concurrency_counts) < 1: ap.error('--concurrency-counts: each count must be at least 1')
        cfg['configured_concurrency'] = tuple(a.concurrency_counts)
    if a.cpu_tiny:
        import torch; torch.set_num_threads(1)
    # one compile cache for this run, its worker processes and a rerun (warm compiles): torch's default is per user
    os.environ.setdefault('TORCHINDUCTOR_CACHE_DIR', str(Path(tempfile.gettempdir())/'har_kit_inductor'))
    out = a.out or REPO/'outputs'/'reference'/'gpu'
    chk = Check(out, cfg)
    chk.report['mode'] = 'cpu-tiny' if a.cpu_tiny else 'gpu'
    t0 = time.time()
    if chk.step('environment', lambda: environment(cfg)) is None: return 1
    deadline = t0 + cfg['budget_s']
    hung = (lambda s: float('inf')) if a.cpu_tiny else (lambda s: s)   # workers' stop-if-hung limit; none in the CPU mode (CI)
    # Most telling first: the paper profile as configured end to end, the pipeline, runs sharing the GPU; then the
    # eager matrix and the rest. A section starts only if its typical H200 time (SECTION_S) still fits the budget;
    # the two timed matrices stop starting new rows at their own deadlines. The projection always runs.
    def shared():   # each model's configured trainings sharing the GPU, keyed MODEL|PROCESSES; a failing model keeps the others' rows
        rows, errors = {}, []
        for m in a.concurrency_models:   # workers stopped a minute past the budget at the latest: later sections keep their time
            limit = min(hung(2 * SECTION_S['concurrency_configured']), max(60.0, deadline + 60 - time.time()))
            try: rows.update({f'{m}|{k}': v for k, v in concurrency(cfg, a.cpu_tiny, m, cfg['configured_concurrency'], configured=True,
                                                                    timeout_s=limit, logs_root=out).items()})
            except Exception as e: errors.append(f'{m}: {type(e).__name__}: {e}')
        if errors: raise Partial('; '.join(errors), rows)
        return rows
    sections = [('recipes', lambda: recipes(cfg)), ('configured', lambda: configured(cfg, t0 + a.configured_share * cfg['budget_s'])), ('pipeline', lambda: pipeline(cfg)),
                ('concurrency_configured', shared),
                ('latency', lambda: latency(cfg)), ('latency_compiled', lambda: latency_compiled(cfg)), ('steps', lambda: steps_matrix(cfg, deadline - 100)),
                ('end_to_end', lambda: end_to_end(cfg)), ('loaders', lambda: loaders(cfg)),
                ('maskrcnn', lambda: maskrcnn(cfg)), ('checkpoints', lambda: checkpoints(cfg)),
                ('concurrency', lambda: concurrency(cfg, a.cpu_tiny, timeout_s=hung(3 * SECTION_S['concurrency']))),
                ('projection', lambda: projection(chk.report)),
                ('notebooks', (lambda: notebook_runs(cfg)) if cfg['notebooks'] else
                              (lambda: {k: dict(state='planned (not run)', seconds=0, params=p, dropped=d)
                                        for k, (p, d) in notebook_plan(cfg['device']).items()}))]
    assert [n for n, _ in sections] == list(SECTION_NAMES)
    if a.only is not None:   # the order asked for: e.g. the runs sharing the GPU first, warming the compile cache for the rest
        sections.sort(key=lambda s: (s[0] == 'projection', a.only.index(s[0]) if s[0] in a.only else len(a.only)))
    for name, fn in sections:
        if name in a.skip or (a.only is not None and name not in a.only): continue
        if not a.cpu_tiny and name != 'projection' and time.time() + SECTION_S.get(name, 0) > deadline:
            chk.report['sections'][name] = dict(seconds=0, skipped=f'time budget ({cfg["budget_s"]:.0f} s; typically {SECTION_S[name]} s)')
            print(f'== {name}: skipped (time budget)', flush=True); continue
        chk.step(name, fn)
    chk.report['finished'] = time.strftime('%Y-%m-%dT%H:%M:%S%z'); chk.save()
    print(f'wrote {out/"report.json"} and {out/"report.md"}')
    return 1 if any('error' in v for v in chk.report['sections'].values()) else 0


if __name__ == '__main__':
    sys.exit(main())
