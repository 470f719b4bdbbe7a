#!/usr/bin/env bash
# The one command for a GPU machine (`make gpu-check`): uses its python3 as it is (no venv, no
# installs), builds the extension in place, runs the CUDA tests and the benchmarks, and writes
# everything under $OUT (default benchmarks/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
# run from the source tree (patronus.kernels reads the top-level kernels/ folder)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee "$OUT/versions.txt"
for module in numpy safetensors tqdm PIL matplotlib; do
    python3 -c "import $module" 2>/dev/null && echo "$module: yes" || echo "$module: missing"
done | tee -a "$OUT/versions.txt"
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python3 -m patronus info | tee "$OUT/info.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
status=0
python3 -m pytest tests -m cuda -q -ra -p no:cacheprovider --junitxml="$OUT/tests.xml" 2>&1 \
    | tee "$OUT/tests.txt" || status=1
python3 -m pytest benchmarks -q -p no:cacheprovider --benchmark-min-rounds=5 \
    --benchmark-max-time=1 --benchmark-json="$OUT/benchmarks.json" 2>&1 \
    | tee "$OUT/benchmarks.txt" || status=1
python3 benchmarks/report.py "$OUT/benchmarks.json" --out "$OUT" || status=1
exit $status
