#!/bin/bash
# One GPU session, as run on an H200 for the README: the CUDA tests (CPU vs CUDA, bf16 vs fp32, host reads per
# step), the training step eager vs compiled (plain and with CUDA graphs), the stage benchmarks on CUDA, a longer Sudoku run (bf16) with board_solved on the normal and the harder test split, and
# torchrun scaling on the machine's CPU cores. Run from the repository root:
#   bash benchmarks/gpu_check.sh            (OUT=dir for the results; PY=python to use)
# The Sudoku files are generated first when absent (DATA=dir, default .gpu/); generate them on a CPU machine
# beforehand to keep GPU time for the GPU (the harder split takes about a minute per 512 puzzles).
# In full it needs about 15 minutes of GPU machine; the 2026-11-28 H200 run had 10 and so cut the stage
# benchmarks' growth series to the training one and lost the torchrun part to its time limit.
# SMOKE=1 runs every part at toy size on a CPU (to check the script before spending device time).
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
SMOKE=${SMOKE:-0}
SUDOKU_SECONDS=${SUDOKU_SECONDS:-150}
log() { echo "== $(date +%T) $*"; }
exec > >(tee "$OUT/log.txt") 2>&1

log environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), sys.version.split()[0])"
nproc
EBM="$PY -m ebmtool"

if [ "$SMOKE" = 1 ]; then DEV=cpu; PREC=fp32; else DEV=cuda; PREC=bf16; fi
DATA=${DATA:-.gpu}; mkdir -p "$DATA"
[ -f "$DATA/sudoku-train.h5" ] || $EBM data sudoku -n 20000 --seed 7 -o "$DATA/sudoku-train.h5"
[ -f "$DATA/sudoku-test.h5" ] || $EBM data sudoku --split test -n 512 -o "$DATA/sudoku-test.h5"
[ -f "$DATA/sudoku-test-harder.h5" ] || $EBM data sudoku --split test --harder -n 512 -o "$DATA/sudoku-test-harder.h5"

log "cuda tests (devices: CPU vs CUDA, bf16 vs fp32; one host read per training step on CUDA too)"
OMP_NUM_THREADS=4 timeout 150 $PY -m pytest -q -p no:warnings -rs tests/test_devices.py tests/test_step_syncs.py -x 2>&1 | tail -15

if [ -f benchmarks/bench_step.py ]; then
  log "training step and sampler on $DEV: eager vs compiled explicit gradient vs compiled + CUDA graphs"
  Q=""; [ "$SMOKE" = 1 ] && Q="--quick"
  timeout 420 $PY -m benchmarks step --device $DEV $Q 2>&1 | tail -25
  cp benchmarks/out/step*.json benchmarks/out/step*.md "$OUT"/ 2>/dev/null
fi

if [ -f benchmarks/bench_stages.py ]; then
  log "stage benchmarks on $DEV"
  Q=""; [ "$SMOKE" = 1 ] && Q="--quick"
  timeout 420 $PY -m benchmarks stages --device $DEV $Q 2>&1 | tail -40
  cp benchmarks/out/stages*-$DEV.json benchmarks/out/stages*-$DEV.md "$OUT"/ 2>/dev/null; ls benchmarks/out
fi

log "sudoku: probe throughput"
S=/tmp/sudoku-run
W=()
[ "$SMOKE" = 1 ] && W=(--width 16 --blocks 1)
COMMON=(--task "$DATA/sudoku-train.h5" "${W[@]}" --batch-size 128 --lr 2e-4 --seed 0 --device $DEV
        --precision $PREC --eval-every 0 --val-size 64 --log-every 50 --ckpt-every 100000)
PROBE=200; [ "$SMOKE" = 1 ] && PROBE=4
$EBM train "${COMMON[@]}" --steps $PROBE -o "$S" --overwrite 2>&1 | grep -v "^config" | tail -3
SECS=$($PY - "$S" <<'EOF'
import sys, h5py
f = h5py.File(sys.argv[1] + "/metrics.h5")
print(f["wall_time"][-1] / f["step"][-1])
EOF
)
TOTAL=$($PY -c "print(max($PROBE + 1, int($PROBE + $SUDOKU_SECONDS / $SECS) // 100 * 100))")
[ "$SMOKE" = 1 ] && TOTAL=8
log "sudoku: $SECS s/step -> resume to $TOTAL steps"
$EBM train --resume "$S" --steps $TOTAL --log-every 100 2>&1 | grep -v "^config" | tail -3
for split in test test-harder; do
  log "sudoku eval on $split"
  N=512; [ "$SMOKE" = 1 ] && N=8
  $EBM eval "$S" --data "$DATA/sudoku-$split.h5" -n $N --device $DEV --precision $PREC --json > "$OUT/sudoku-eval-$split.json"
  $PY -c "import json; r=json.load(open('$OUT/sudoku-eval-$split.json')); print({w: {k: round(v, 4) for k, v in m.items()} for w, m in r['results'].items()}, 'seconds', round(r['seconds'], 1))"
done
$EBM info "$S/ckpt.safetensors" 2>&1 | head -30
cp "$S/metrics.h5" "$OUT/sudoku-metrics.h5"


if [ -f benchmarks/bench_distributed.py ]; then
  log "torchrun scaling on the CPU cores"
  NP=1,2,4,8; [ "$SMOKE" = 1 ] && NP=1,2
  EBMTOOL_BENCH_NPROCS=$NP timeout 300 $PY -m benchmarks distributed $( [ "$SMOKE" = 1 ] && echo --quick ) 2>&1 | tail -25
  cp benchmarks/out/distributed.json benchmarks/out/distributed.md "$OUT"/ 2>/dev/null
fi
log done
