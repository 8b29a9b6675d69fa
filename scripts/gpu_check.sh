#!/usr/bin/env bash
# The GPU measurements in one go, on a machine with a CUDA GPU and no network:
#   1. scripts/bench_score.py --device cuda against sentence-transformers on GPU_BENCH_PAIRS generated pairs
#      (default 300,000: at the Kaggle size of 2,345,796 the sentence-transformers run alone outlasts 270 s);
#   2. the training run of the best recipe (matching head, top 2 layers trained, 1 epoch, question-disjoint split).
# First, here: `python scripts/prepare_device.py --wheels --no-glove` (fills .device/); then, on the GPU machine,
# from the repo root: `bash scripts/gpu_check.sh`. Logs and metrics go to $OUT (default: gpu_logs/).
# GPU_CHECK_SECONDS (default 540) bounds the whole run; each stage is cut short at its share of it.
set -u
out=${OUT:-gpu_logs}
mkdir -p "$out"
source .device/env.sh || exit 1
budget=${GPU_CHECK_SECONDS:-540}
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  python3 -c "import torch, transformers, sentence_transformers as st; print('torch', torch.__version__,
'transformers', transformers.__version__, 'sentence-transformers', st.__version__)"
} 2>&1 | tee "$out/machine.txt"

timeout $(($(left) * 3 / 5)) python3 scripts/bench_score.py --device cuda --skip-natural --repeats 1 \
  --n-pairs "${GPU_BENCH_PAIRS:-300000}" --work-dir /tmp/bench_score 2>&1 | tee "$out/bench_score.log"
echo "bench_score: rc ${PIPESTATUS[0]} at $((SECONDS - start)) s" | tee -a "$out/bench_score.log"

timeout $(($(left) - 10)) python3 -m qpairs train --device cuda --encoder transformer --train-top-layers 2 \
  --head residual --projection-dim 768 --pair-head matching --distance cosine --margin 0.5 --lr 1e-4 \
  --batch-size 256 --epochs 1 --max-length 40 --bf16 --embedding-cache /tmp/top2_cache \
  --out /tmp/runs/top2_gpu 2>&1 | tr '\r' '\n' | grep -v "^\s*$" | tee "$out/train_top2.log"
echo "train: rc ${PIPESTATUS[0]} at $((SECONDS - start)) s" | tee -a "$out/train_top2.log"
for f in metrics.json history.json config.json; do
  [ -f /tmp/runs/top2_gpu/$f ] && cp /tmp/runs/top2_gpu/$f "$out/top2_$f"
done
exit 0
