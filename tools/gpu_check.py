#!/usr/bin/env python3
"""`make gpu-check`: one prepared command that measures the paper profile on whatever GPU it finds (issue 18).

    python tools/gpu_check.py                     # on a GPU machine: writes outputs/reference/gpu/report.{json,md}
    python tools/gpu_check.py --cpu-tiny --out D  # tiny sizes on CPU, in well under a minute (CI: tests/test_gpu_check.py)

What it measures (each step is timed, and a failing step is recorded in the report instead of ending the check):
  models     per paper-size model (Da-HAR and its baseline at ResNet-101 224x224; CAM-PAR's baseline, CAM-PAR and
             CAM-PAR + fusion at ResNet-50 256x192), fp32 and AMP (bf16), channels_last off and on: training and
             inference images/s and peak GPU memory
  latency    Da-HAR / baseline latency at batch 1 and 32 (paper anchor: 24.04 / 22.28 ms = 1.079 on a 1080Ti), and
             CAM-PAR (+ fusion) over the plain ResNet-50, interleaved, median ratio with its interquartile range
  resize     F.interpolate against har_kit.backbones.resize_bilinear at the MCA fusion's shapes (forward + backward)
  data       the data pipeline's images/s at paper size for 0..N workers (har_kit.bench.data_bench) beside training
  maskrcnn   Mask R-CNN pseudo-mask throughput (weights=None: speed only)
  projection the GPU-hours of the paper profile from the measured rates, the datasets' sizes and the epochs
  notebooks  one `har-kit run` of each section notebook at paper size (synthetic data, a few dozen iterations)
             through papermill on the device, proving the notebooks' device path

The GPU machine has its own PyTorch/torchvision but lacks papermill, nbdev, implicit and the like. They travel as
wheels in `.whl/` at the repository root (ignored by git: `echo /.whl/ >> .git/info/exclude`), and this script
installs them with `pip --no-index --no-deps --target` before it imports har_kit, then restarts itself with that
folder on PYTHONPATH. Refresh the wheels (on a machine with PyPI access, for the device's Python 3.12) with

    python tools/gpu_check.py --download-wheels .whl

which runs `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux...` for each
package of DEVICE_WHEELS below: the runtime dependencies of har_kit, its notebooks and papermill that the device
image lacks (versions = the development venv's). When har_kit's requirements change, recompute the list (the
closure of `settings.ini` requirements + nbdev/execnb, minus the device's package list in the device notes).
"""
from __future__ import annotations
import argparse, os, platform, subprocess, sys, tempfile, time, traceback
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

# the paper profile's data: train / test images per dataset (published sizes), the epochs come from the profile
DATASET_SIZES = {
    'wider': dict(train=28345, test=29179, note='WIDER-Attribute: 28,345 train+val / 29,179 test targets (train alone is smaller: an upper bound)'),
    'rap': dict(train=33268, test=8317, note='RAP v1: 33,268 trainval / 8,317 test images per partition'),
    'pa100k': dict(train=90000, test=10000, note='PA-100K: 80,000 train + 10,000 val / 10,000 test'),
}


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


class Check:
    "The report under construction: each step's result or error, saved (atomically) after every step."
    def __init__(self, out, cfg):
        self.out, self.cfg, self.report = Path(out), cfg, dict(steps={}, started=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
    def step(self, name, fn):
        t = time.perf_counter()
        print(f'== {name}', flush=True)
        try: res, err = fn(), None
        except Exception as e:  # one failing step must not lose the others: the error goes into the report
            res, err = None, f'{type(e).__name__}: {e}'
            traceback.print_exc()
        self.report['steps'][name] = dict(seconds=round(time.perf_counter() - t, 2), **({'error': err} if err else {}))
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
                    campar_size=(3, 32, 24), batch=2, warmup=0, iters=1, latency_batches=(1, 2), latency_iters=2,
                    amps=('none', 'bf16'), channels_last=(False, True), data_workers=[0], data_images=4,
                    data_batch=2, data_batches=1, data_arch='resnet-tiny', maskrcnn_size=(64, 48), maskrcnn_min=64, maskrcnn_batch=1,
                    maskrcnn_kw=dict(rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50, box_detections_per_img=10),
                    maskrcnn_iters=1, notebooks=False, resize_batch=2, resize_channels=8, resize_in=((4, 3), (8, 6)),
                    resize_out=(16, 12), resize_iters=2)
    return dict(device='cuda', dahar_arch='resnet101', campar_arch='resnet50', dahar_size=(3, 224, 224),
                campar_size=(3, 256, 192), batch=32, warmup=3, iters=10, latency_batches=(1, 32), latency_iters=30,
                amps=('none', 'bf16'), channels_last=(False, True), data_workers=None, data_images=256, data_batch=32,
                data_batches=16, data_arch=None, maskrcnn_size=(480, 640), maskrcnn_min=800, maskrcnn_batch=8, maskrcnn_kw={}, maskrcnn_iters=5,
                notebooks=True, resize_batch=64, resize_channels=2048, resize_in=((8, 6), (16, 12)), resize_out=(32, 24),
                resize_iters=10)   # CAM-PAR's MCA at the paper's batch: c5 and c4 up to c3 of a 256x192 image


def models(cfg):
    "name -> (builder, input size): the paper-size models of both papers."
    from har_kit.campar import campar_variant
    from har_kit.dahar import dahar_variant
    from har_kit.reproduce import PROFILES
    d, c = cfg['dahar_arch'], cfg['campar_arch']
    p = PROFILES['paper']['campar']   # the paper profile's CAM-PAR build: logit BN, MCA latent width
    kw = dict(logit_bn=p.get('logit_bn', False), latent=p.get('fusion_width'))
    return {
        'dahar_baseline': (lambda: dahar_variant('baseline', 14, d), cfg['dahar_size']),
        'dahar': (lambda: dahar_variant('dahar', 14, d), cfg['dahar_size']),
        'campar_baseline': (lambda: campar_variant('baseline', 51, c, **kw), cfg['campar_size']),
        'campar': (lambda: campar_variant('campar', 51, c, **kw), cfg['campar_size']),
        'campar_fusion': (lambda: campar_variant('campar_fusion', 51, c, **kw), cfg['campar_size']),
    }


def measure_models(cfg):
    "Training and inference images/s and peak memory per model, precision and memory format."
    import torch
    from har_kit.bench import throughput
    out = {}
    for name, (build, size) in models(cfg).items():
        for amp in cfg['amps']:
            for cl in cfg['channels_last']:
                key = f'{name}|{amp}|{"channels_last" if cl else "contiguous"}'
                row = {}
                for mode in ('train', 'infer'):
                    torch.manual_seed(0)
                    r = throughput(build(), size, cfg['batch'], cfg['device'], train=mode == 'train', amp=amp,
                                   channels_last=cl, warmup=cfg['warmup'], iters=cfg['iters'])
                    row[f'{mode}_images_per_s'], row[f'{mode}_peak_mem_mib'] = r['images_per_s'], r['peak_mem_mib']
                out[key] = dict(model=name, amp=amp, channels_last=cl, input_size=list(size), batch=cfg['batch'], **row)
                print(f'{key}: train {row["train_images_per_s"]:.1f} / infer {row["infer_images_per_s"]:.1f} images/s', flush=True)
                if cfg['device'] == 'cuda': torch.cuda.empty_cache()
    return out


def latency_ratios(cfg):
    "Da-HAR over its baseline and CAM-PAR (+ fusion) over the plain ResNet-50, fp32 inference, interleaved."
    from har_kit.bench import compare_models, plain_baseline
    ms, out = models(cfg), {}
    for b in cfg['latency_batches']:
        r = compare_models({'dahar': ms['dahar'][0]()}, ms['dahar_baseline'][0](), cfg['dahar_size'], cfg['device'], b,
                           cfg['warmup'], cfg['latency_iters'], train_step=False)['dahar']
        out[f'dahar/baseline@{b}'] = _lat(r)
        rs = compare_models({'campar': ms['campar'][0](), 'campar_fusion': ms['campar_fusion'][0]()},
                            plain_baseline(cfg['campar_arch'], 51), cfg['campar_size'], cfg['device'], b, cfg['warmup'],
                            cfg['latency_iters'], train_step=False)
        for k, r in rs.items(): out[f'{k}/plain@{b}'] = _lat(r)
    out['paper_anchor'] = dict(ratio=24.04 / 22.28, note='Da-HAR 24.04 ms vs baseline 22.28 ms, one image, 1080Ti')
    return out


def _lat(r):
    return dict(ms=r['latency_ms'], ms_baseline=r['latency_ms_baseline'], ratio=r['latency_ratio'],
                ratio_iqr=r['latency_ratio_iqr'], params=r['params'], params_baseline=r['params_baseline'])


def data_pipeline(cfg):
    "The data pipeline's images/s per worker count at paper size, for both papers' transforms."
    from har_kit.bench import data_bench, synthetic_samples
    samples = synthetic_samples(cfg['data_images'], size=(384, 160) if cfg['device'] == 'cuda' else (64, 32))
    return {p: data_bench(p, samples, cfg['data_workers'], cfg['data_batch'], cfg['data_batches'], device=cfg['device'],
                          model_iters=max(1, cfg['iters'] // 2), arch=cfg['data_arch'])
            for p in ('campar', 'dahar')}


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


def resize(cfg):
    "F.interpolate against har_kit.backbones.resize_bilinear at the MCA fusion's shapes: forward + backward ms, interleaved."
    import statistics, torch, torch.nn.functional as F
    from har_kit.backbones import resize_bilinear
    from har_kit.bench import _interleaved, _timer, ratio_stats
    from har_kit.core import get_device
    dev = get_device(cfg['device'])
    n, c, out = cfg['resize_batch'], cfg['resize_channels'], cfg['resize_out']
    rows = {}
    for src in cfg['resize_in']:
        for cl in (False, True):
            x = torch.randn(n, c, *src, device=dev)
            if cl: x = x.to(memory_format=torch.channels_last)
            x.requires_grad_(True)
            def step(f):   # forward + backward of one resize
                def run():
                    y = f(x); y.backward(torch.ones_like(y)); x.grad = None
                return run
            t_int, t_mat = _interleaved([step(lambda v: F.interpolate(v, size=out, mode='bilinear', align_corners=False)),
                                         step(lambda v: resize_bilinear(v, out))], _timer(dev), 1, cfg['resize_iters'])
            key = f'{src[0]}x{src[1]}->{out[0]}x{out[1]}|{"channels_last" if cl else "contiguous"}'
            r = ratio_stats(t_int, t_mat)
            rows[key] = dict(batch=n, channels=c, interpolate_ms=statistics.median(t_int),
                             resize_bilinear_ms=statistics.median(t_mat), ratio=r['median'], ratio_iqr=r['iqr'])
            print(f'resize {key}: interpolate {rows[key]["interpolate_ms"]:.2f} ms, resize_bilinear '
                  f'{rows[key]["resize_bilinear_ms"]:.2f} ms', flush=True)
    return rows


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


def notebook_runs(cfg):
    "One papermill run per section notebook at paper size on the device; status and wall time of each."
    from har_kit.runs import run_notebook
    out, root = {}, Path(tempfile.mkdtemp(prefix='har-kit-gpu-runs-'))
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


def paper_runs():
    "(notebook, variant, dataset, epochs) of every run the paper profile plans (one seed; RAP partitions as planned)."
    try:
        from har_kit.reproduce import plan
        return [(r.spec.notebook, v, r.params.get('dataset'), r.params.get('epochs', 30), r.params.get('phase1_variant'))
                for r in plan(profile='paper', seeds=1)   # a run trains every model its `variants` names (cfar: one phase 2)
                for v in (r.params.get('variants') or [r.spec.variant] if r.spec.notebook != 'cfar' else [r.spec.variant])
                ], 'har_kit.reproduce.plan(profile="paper", seeds=1)'
    except Exception as e:  # the planner's interface moved: fall back to the paper tables' runs, 30 epochs
        from har_kit.results import PAPER_TABLES, row_runs
        seen = {}
        for t in PAPER_TABLES.values():
            for row in t.rows:
                for s in row_runs(row):
                    for _, dep in s.needs: seen.setdefault(dep.key(), (dep.notebook, dep.variant, dep.kwargs.get('dataset'), 30, None))
                    seen.setdefault(s.key(), (s.notebook, s.variant, s.kwargs.get('dataset'), 30, s.kwargs.get('phase1_variant')))
        return list(seen.values()), f'the paper tables\' runs, 30 epochs (planner unavailable: {type(e).__name__}: {e})'


def projection(report):
    "GPU-hours of the paper profile: training images / training rate + evaluation images / inference rate, per run."
    rates = report.get('models') or {}
    if not rates: raise RuntimeError('no model rates measured')
    def best(name, key, amp=None):
        vals = [v[key] for v in rates.values() if v['model'] == name and (amp is None or v['amp'] == amp)]
        return max(vals) if vals else None
    data = report.get('data_pipeline') or {}
    runs, source = paper_runs()
    rows, tot = [], dict(fp32=0.0, best=0.0)
    for nb, variant, dataset, epochs, phase1 in runs:
        size = DATASET_SIZES.get(dataset)
        if size is None: continue
        fam = 'dahar' if nb == 'dahar' else 'campar'
        model = (variant if nb == 'dahar' else f'campar_{variant}' if variant == 'baseline' else variant) if nb != 'cfar' else (phase1 or 'campar_fusion')
        model = {'baseline': 'dahar_baseline'}.get(model, model) if fam == 'dahar' else model
        if model not in {v['model'] for v in rates.values()}: model = 'dahar' if fam == 'dahar' else 'campar_fusion'
        pipe = max((data.get(fam) or {}).get('data_images_per_s', {}).values(), default=float('inf'))
        crops = 6 if nb == 'dahar' else 1          # Da-HAR scores five crops and the full patch
        evals = 1 if nb == 'dahar' else epochs     # CAM-PAR evaluates every epoch (plateau on the evaluation loss)
        train_imgs = 0 if nb == 'cfar' else size['train'] * epochs
        eval_imgs = size['test'] * crops * evals + (size['train'] + size['test'] if nb == 'cfar' else 0)
        h = {}
        for k, amp in (('fp32', 'none'), ('best', None)):
            tr, inf = best(model, 'train_images_per_s', amp), best(model, 'infer_images_per_s', amp)
            h[k] = (train_imgs / min(tr, pipe) + eval_imgs / min(inf, pipe)) / 3600
            tot[k] += h[k]
        rows.append(dict(notebook=nb, variant=variant, dataset=dataset, epochs=epochs, model=model, train_images=train_imgs,
                         eval_images=eval_imgs, hours_fp32=h['fp32'], hours_best=h['best']))
    return dict(runs=rows, total_hours_fp32=tot['fp32'], total_hours_best=tot['best'], planned_from=source,
                datasets={k: v['note'] for k, v in DATASET_SIZES.items()},
                assumptions='one seed; rate = min(model, data pipeline at its best worker count); best = the fastest of '
                            'fp32/bf16 x contiguous/channels_last; CFAR counted as one inference pass over train + test '
                            '(its ALS runs on the CPU and is not counted)')


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


def to_markdown(r):
    "The report as Markdown (README includes it)."
    env = r.get('environment', {})
    lines = ['### GPU check', '', f'Device: {env.get("name", "?")} ({env.get("device", "?")}), torch {env.get("torch", "?")}, '
             f'torchvision {env.get("torchvision", "?")}, CUDA {env.get("cuda")}; mode `{r.get("mode", "?")}`; started {r.get("started")}.', '']
    if r.get('note'): lines += [r['note'], '']
    if r.get('models'):
        lines += ['| model | precision | memory format | train images/s | infer images/s | peak MiB (train) |', '|---|---|---|---|---|---|']
        lines += [f'| {v["model"]} | {v["amp"]} | {"channels_last" if v["channels_last"] else "contiguous"} | {_f(v["train_images_per_s"])} '
                  f'| {_f(v["infer_images_per_s"])} | {_f(v["train_peak_mem_mib"], 0)} |' for v in r['models'].values()]
        lines.append('')
    if r.get('latency'):
        lines += ['| latency ratio (fp32 inference) | ms | ms baseline | ratio (median) | IQR |', '|---|---|---|---|---|']
        lines += [f'| {k} | {_f(v["ms"], 2)} | {_f(v["ms_baseline"], 2)} | {_f(v["ratio"], 3)} | {_f(v["ratio_iqr"][0], 3)}-{_f(v["ratio_iqr"][1], 3)} |'
                  for k, v in r['latency'].items() if k != 'paper_anchor']
        lines += ['', f'Paper anchor: {r["latency"]["paper_anchor"]["ratio"]:.3f} ({r["latency"]["paper_anchor"]["note"]}).', '']
    if r.get('resize'):
        lines += ['| resize (forward + backward) | interpolate ms | resize_bilinear ms | ratio (median) |', '|---|---|---|---|']
        lines += [f'| {k} | {_f(v["interpolate_ms"], 2)} | {_f(v["resize_bilinear_ms"], 2)} | {_f(v["ratio"], 2)} |' for k, v in r['resize'].items()]
        lines.append('')
    for p, d in (r.get('data_pipeline') or {}).items():
        lines.append(f'Data pipeline `{p}` at {d["input_size"][1]}x{d["input_size"][2]}: ' +
                     ', '.join(f'{k} workers {_f(v)}/s (x{_f(d["ratio"][k], 2)})' for k, v in d['data_images_per_s'].items()) +
                     f' vs {d["model"]} training {_f(d["model_train_images_per_s"])}/s.')
    if r.get('maskrcnn'):
        m = r['maskrcnn']
        lines += ['', f'Mask R-CNN (weights=None): {_f(m["images_per_s"])} images/s, {m["image_size"][0]}x{m["image_size"][1]} images '
                  f'resized to min side {m["min_size"]}, batch {m["batch"]}.']
    if r.get('notebooks'):
        lines += ['', '| notebook | state | seconds | dropped parameters |', '|---|---|---|---|']
        lines += [f'| {k} | {v["state"]}{": " + v["error"] if v.get("error") else ""} | {v["seconds"]} | {", ".join(v["dropped"]) or "-"} |'
                  for k, v in r['notebooks'].items()]
    if r.get('projection'):
        p = r['projection']
        lines += ['', f'Projected paper profile: {p["total_hours_fp32"]:.1f} GPU-hours in fp32, {p["total_hours_best"]:.1f} at the '
                  f'fastest measured setting ({len(p["runs"])} runs from {p["planned_from"]}; {p["assumptions"]}).']
    errs = {k: v['error'] for k, v in r.get('steps', {}).items() if 'error' in v}
    if errs: lines += ['', 'Steps that failed: ' + '; '.join(f'{k}: {v}' for k, v in errs.items())]
    lines += ['', 'Step times (s): ' + ', '.join(f'{k} {v["seconds"]}' for k, v in r.get('steps', {}).items())]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(prog='gpu_check', description=__doc__.split('\n')[0])
    ap.add_argument('--cpu-tiny', action='store_true', help='tiny sizes on the CPU (CI), no notebook runs')
    ap.add_argument('--out', type=Path, default=None, help='report folder (default outputs/reference/gpu)')
    ap.add_argument('--wheels', default=str(REPO/'.whl'), help='folder of carried wheels to install first')
    ap.add_argument('--download-wheels', metavar='DIR', help='refresh the carried wheels into DIR and exit (needs PyPI)')
    ap.add_argument('--skip', nargs='*', default=[], help='steps to leave out (models latency resize data_pipeline maskrcnn projection notebooks)')
    ap.add_argument('--notebooks', nargs='*', default=None, help='run only these section notebooks (masks dahar campar cfar)')
    a = ap.parse_args(argv)
    if a.download_wheels: return download_wheels(a.download_wheels)
    setup(a.wheels)
    sys.path.insert(0, str(REPO))
    cfg = dict(config(a.cpu_tiny), only_notebooks=a.notebooks)
    if a.cpu_tiny:
        import torch; torch.set_num_threads(1)
    out = a.out or REPO/'outputs'/'reference'/'gpu'
    chk = Check(out, cfg)
    chk.report['mode'] = 'cpu-tiny' if a.cpu_tiny else 'gpu'
    if chk.step('environment', lambda: environment(cfg)) is None: return 1
    steps = [('models', lambda: measure_models(cfg)), ('latency', lambda: latency_ratios(cfg)),
             ('resize', lambda: resize(cfg)),
             ('data_pipeline', lambda: data_pipeline(cfg)), ('maskrcnn', lambda: maskrcnn(cfg)),
             ('projection', lambda: projection(chk.report)),   # before the notebooks: it needs only the rates above
             ('notebooks', (lambda: notebook_runs(cfg)) if cfg['notebooks'] else
                           (lambda: {k: dict(state='planned (cpu-tiny: not run)', seconds=0, params=p, dropped=d)
                                     for k, (p, d) in notebook_plan(cfg['device']).items()}))]
    for name, fn in steps:
        if name not in a.skip: chk.step(name, fn)
    chk.report['finished'] = time.strftime('%Y-%m-%dT%H:%M:%S%z'); chk.save()
    print(f'wrote {out/"report.json"} and {out/"report.md"}')
    return 1 if any('error' in v for v in chk.report['steps'].values()) else 0


if __name__ == '__main__':
    sys.exit(main())
