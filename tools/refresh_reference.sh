#!/usr/bin/env bash
# Regenerate outputs/reference/ from nothing at the current commit: the quick tables and studies, the real PA-100K
# sample's table, a model trained on the sample with its predictions and explanation (README's "Use" commands), and
# the synthetic benchmark's difficulty check.
# Runs take about 35 min on 2 cores, `make test` included (outputs/reference/timing.md has each make target's time). Afterwards compare with `git diff --stat outputs/reference` and say in the commit which
# files moved and why (env.json and the use run's wall-clock seconds always do).
set -euo pipefail
cd "$(dirname "$0")/.."
# this tree's har_kit, even when .venv is another tree's (a worktree sharing its editable install): runs, kernels
# and the notebooks they find all follow the package
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SAMPLE=${HAR_KIT_PA100K_SAMPLE:-../shared/data/pa100k-sample}
if [ -L .venv ]; then   # another tree's .venv: `make main` below re-runs setup here, pointing its editable install and its
    HOME_TREE=$(cd "$(readlink -f .venv)/.." && pwd)   # Jupyter kernel at this tree; give both back when the script ends
    trap 'cd "$HOME_TREE" && .venv/bin/python -m pip install -q --no-deps --no-compile -e . && .venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (har-kit)" >/dev/null' EXIT
fi
rm -rf outputs/quick outputs/sample outputs/use outputs/synth-difficulty
T='python3 tools/timing.py time --'
$T make main      # one command a line: with set -e a failure stops the script (in an && list it would not)
$T make studies
$T make sample
B=.venv/bin
$B/har-kit run campar -p dataset pa100k -p data_root "$SAMPLE" -p variants "['campar_fusion']" \
    -p scale 0.375 -p epochs 5 -p optimizer adam -p lr 0.001 -p selection held-out --threads 2 --out outputs/use/campar
$B/har-kit predict outputs/use/campar "$SAMPLE/data/00199[5-9].jpg" --threshold val --explain --top 5 --out outputs/use/predictions
$B/har-kit run synth -p difficulty_check true -p check_n 2000 -p check_epochs 5 -p check_levels 0,4 --threads 1 \
    --out outputs/synth-difficulty   # 13_synth's difficulty check (a few minutes)
R=outputs/reference
mkdir -p $R/tables $R/sample $R/use $R/synth
cp outputs/synth-difficulty/metrics.json outputs/synth-difficulty/env.json $R/synth/
find outputs/quick/tables -maxdepth 1 -type f -exec cp {} $R/tables/ \;
cp outputs/quick/tables/run/env.json $R/tables/env.json
cp outputs/sample/tables/real_pa100k.* outputs/sample/tables/epoch_selection_real.* $R/sample/ && cp outputs/sample/tables/run/env.json $R/sample/env.json
cp outputs/use/campar/metrics.json outputs/use/campar/env.json $R/use/
cp outputs/use/predictions/predictions.csv $R/use/
cp outputs/use/predictions/explain/0000_001995.png $R/use/explain_001995.png 2>/dev/null || cp "$(ls outputs/use/predictions/explain/*001995*.png | head -1)" $R/use/explain_001995.png
python3 tools/timing.py && python3 tools/nb2readme.py   # README includes the new tables: make test checks it is current
$T make test       # the test command's time, at this commit, in the README's table
python3 tools/timing.py && python3 tools/nb2readme.py
git status --short -- $R README.md
