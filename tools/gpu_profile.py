#!/usr/bin/env python3
"""Where a training step's time goes on the GPU: `python tools/gpu_profile.py [--cpu-tiny] MODEL[:amp[:cl[:compile]]] ...`.

Runs the engine's epoch (as `tools/gpu_check.py` does) for a few warm steps, then records a few steps with
torch.profiler and prints, per model: wall ms per step, the GPU's busy ms per step (sum of kernel times: a busy
fraction well below 1 means the step is launch-bound), the kernel count per step, and the top kernels and CPU ops.
A fourth field compiles the model first (`ro`: torch.compile mode='reduce-overhead', CUDA graphs; `default`): e.g.
`dahar_rap:bf16:cl:ro` shows what of the paper profile's step still runs outside the graphs.
"""
import argparse, sys, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO/'tools'))


def profile(spec, cfg, steps=5, e2e=False):
    import tempfile, warnings, torch
    from torch.profiler import ProfilerActivity, profile as tprofile
    import gpu_check as G
    from har_kit.core import get_device
    from har_kit.engine import TrainConfig, _train_epoch, make_optimizer
    name, amp, cl, mode = (spec.split(':') + ['bf16', 'cl', 'none'][len(spec.split(':')) - 1:])[:4]
    mode = {'ro': 'reduce-overhead'}.get(mode, mode)
    dev = get_device(cfg['device']); cl = cl == 'cl'
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model, crit, size = G.build(name, cfg)
    batch = cfg['campar_batch'] if name.startswith('campar') else cfg['dahar_batch']
    tc = TrainConfig(**G.configured_optimizer(name), amp=amp, channels_last=cl, progress=False, device=cfg['device'], max_loss_ratio=0)
    model.to(dev)
    if cl: model.to(memory_format=torch.channels_last)
    opt, scaler = make_optimizer(model, tc), torch.amp.GradScaler(dev.type, enabled=False)
    data = G.synthetic_batches(size, batch, G.MODELS[name][3], dev)
    if e2e:   # fed by the decoded cache with device augmentation, as the paper profile trains
        loader = G._cached_loader(name, cfg, max(cfg['cache_images'] // 4, 4 * batch), tempfile.mkdtemp(prefix='har-kit-prof-'))[0]
        data = [b for _, b in zip(range(steps + cfg['warm_steps']), (b for _ in range(10**6) for b in loader))]
        class Fed:   # the loader's batches, produced while stepping (a fresh pass over `loader` each time)
            def __init__(self, k): self.k = k
            def __len__(self): return self.k
            def __iter__(self): return (b for _, b in zip(range(self.k), (b for _ in range(10**6) for b in loader)))
        G.Cycle = lambda _data, k: Fed(k)   # noqa: E731 (the two calls below)
    if dev.type == 'cuda': torch.backends.cudnn.benchmark = True
    model = torch.compile(model, mode=mode) if mode != 'none' else model
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    _train_epoch(model, crit, G.Cycle(data, cfg['warm_steps']), opt, scaler, tc, dev, 1, {}); sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
    if dev.type == 'cuda': torch.cuda.set_sync_debug_mode('warn')   # every synchronizing call of the timed steps, with its Python line
    with tprofile(activities=acts, with_stack=True) as prof, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        t = time.perf_counter(); _train_epoch(model, crit, G.Cycle(data, steps), opt, scaler, tc, dev, 2, {}); sync()
        wall = (time.perf_counter() - t) / steps * 1e3
    if dev.type == 'cuda': torch.cuda.set_sync_debug_mode(0)
    syncs = {}
    for w in caught:
        if 'synchroniz' in str(w.message): k = f'{w.filename}:{w.lineno}'; syncs[k] = syncs.get(k, 0) + 1
    print(f'\n##### {spec}{" fed by the device loader" if e2e else ""}: synchronizing calls in {steps} steps '
          f'(torch.cuda.set_sync_debug_mode): ' + ('; '.join(f'{k} x{v}' for k, v in sorted(syncs.items(), key=lambda t: -t[1])) or 'none'), flush=True)
    blocking = [e for e in prof.key_averages(group_by_stack_n=6) if any(n in e.key for n in ('Synchronize', 'cudaMemcpy', 'cudaStreamWait'))]
    for e in sorted(blocking, key=lambda e: -e.cpu_time_total)[:8]:
        print(f'{e.key}: {e.count} calls, {e.cpu_time_total / 1e3 / steps:.2f} ms/step on the host; from: ' + ' <- '.join(e.stack[:6]), flush=True)
    ev = prof.key_averages()
    dev_attr = 'self_device_time_total' if hasattr(ev[0], 'self_device_time_total') else 'self_cuda_time_total'
    busy = sum(getattr(e, dev_attr) for e in ev if e.device_type.name in ('CUDA',)) / 1e3 / steps if dev.type == 'cuda' else None
    kernels = sum(e.count for e in ev if e.device_type.name == 'CUDA') / steps if dev.type == 'cuda' else None
    print(f'\n##### {spec}: batch {batch}, {size}: wall {wall:.1f} ms/step, GPU busy {busy if busy is None else round(busy, 1)} ms/step, '
          f'{kernels} kernels/step', flush=True)
    sort = f'self_{"cuda" if dev.type == "cuda" else "cpu"}_time_total'
    print(ev.table(sort_by=sort, row_limit=18, max_name_column_width=60), flush=True)
    print(ev.table(sort_by='self_cpu_time_total', row_limit=12, max_name_column_width=60), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('specs', nargs='+'); ap.add_argument('--cpu-tiny', action='store_true')
    ap.add_argument('--e2e', action='store_true', help="feed the step from har_kit.pipeline's DeviceLoader (decoded cache, device augmentation)")
    a = ap.parse_args(argv)
    import gpu_check as G
    cfg = G.config(a.cpu_tiny)
    for s in a.specs: profile(s, cfg, e2e=a.e2e)
    return 0


if __name__ == '__main__':
    sys.exit(main())
