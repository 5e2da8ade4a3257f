#!/usr/bin/env bash
# The GPU check for one short device lease (15 minutes, the machine's start included): the sections a GPU has not yet
# measured at this commit, most telling first, inside a 520 s budget. The report lands in $OUT/gpu and comes back even
# when the lease's limit cuts the run (it is saved after each section; a cut section shows as running), the log in
# $OUT/log.txt, concurrent workers' logs in $OUT/gpu/workers/. `.gpu-site` holds fastcore, which the GPU image lacks:
#   python3 -m pip install --no-deps --target .gpu-site fastcore==1.14.5        # once, here
#   device run: command 'bash tools/gpu_lease.sh', carry ['.gpu-site'], timeout_s 595
# CPU rehearsal here (tiny sizes, a minute or two):  OUT=/tmp/lease PYTHON=.venv/bin/python bash tools/gpu_lease.sh --cpu-tiny
# Merge the result into the committed report with `tools/gpu_check.py --merge` (CONTRIBUTING.md, "The GPU check").
set -o pipefail
: "${OUT:?set OUT to the folder the report goes to}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no GPU found'
case " $* " in *' --cpu-tiny '*) ;; *)   # on the device: the recipes import fastcore, which only .gpu-site brings
    [ -f .gpu-site/fastcore/__init__.py ] || echo 'WARNING: .gpu-site/fastcore is missing (not built or not carried): the recipes section will fail; the timings still run' ;;
esac
# recipes first: the paper route's code that only runs when batches live on the GPU (pinned double buffer, device
# augmentation, a resume onto the device), at toy sizes without compile, and never yet run on a GPU: a crash there
# costs a paper run, a late timing costs a rerun. Then configured: Da-HAR at 224x112 (the single-run rate the
# concurrent one is divided by, and it warms the compile cache the three concurrent workers reuse), then at 224x224;
# latency (half a minute, no compile: the 1.20 goal); the three concurrent runs, whose workers may run to a minute
# past the budget, if their typical time still fits
PYTHONUNBUFFERED=1 PYTHONPATH=".gpu-site:.${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" tools/gpu_check.py --out "$OUT/gpu" \
    --only recipes configured latency concurrency_configured checkpoints latency_compiled \
    --configured-models dahar_rap:bf16 dahar:bf16 --concurrency-counts 3 --configured-share 0.5 --budget 520 "$@" 2>&1 \
    | tee "$OUT/log.txt" | grep -v Warning
