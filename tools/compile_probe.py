#!/usr/bin/env python3
"""The compiled training rates of the paper-size models: `tools/gpu_check.py`'s `train_rate` with
torch.compile(mode='reduce-overhead') (CUDA graphs), one model after another, printing one JSON line each
(`python tools/compile_probe.py [--cpu-tiny]`). Each cold compile takes one to two minutes on an H200, which is why
the full check measures only two of them."""
import sys, time, json
sys.path.insert(0, '.'); sys.path.insert(0, 'tools')
import gpu_check as G
cpu = '--cpu-tiny' in sys.argv
cfg = G.config(cpu)
import torch
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
for m, a, mode in [('campar_baseline', 'bf16', 'reduce-overhead'), ('dahar', 'bf16', 'reduce-overhead'), ('campar_fusion', 'bf16', 'reduce-overhead'), ('dahar_rap', 'bf16', 'reduce-overhead')]:
    t = time.time()
    try: r = G.train_rate(m, cfg, a, True, mode)
    except Exception as e: r = dict(model=m, error=f'{type(e).__name__}: {e}'[:400])
    r['wall_s'] = round(time.time() - t, 1)
    print('RESULT', json.dumps(r), flush=True)
    if torch.cuda.is_available(): torch.cuda.empty_cache()
