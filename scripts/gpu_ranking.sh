#!/usr/bin/env bash
# Issue 15's ranking study on a CUDA GPU in one call, meant to finish well inside ten minutes
# (never run on a GPU yet): the equal-FLOPs ground truth (one process per seed, side by side on
# the device) and, beside it, the searches of scripts/bench_ranking.py (M=1, BMS M=2/4 and the
# GM split, at equal total steps and at equal steps per supernet, search seeds 0 and 1), then
# the ranking against that truth. Training stops at a deadline (TRAIN_S seconds) and resumes on
# the next call: finished placements and search epochs are kept. The ranking runs only on a
# complete truth; otherwise the script says what is missing and exits 3 (call it again).
# Everything it prints goes to ${OUT:-runs/gpu_ranking}/ too. Needs the project installed with a
# CUDA build of torch (README, "Install torch first").
#
# Settings (environment): SEEDS (truth seeds, default "0 1 2 3 4 5 6 7"), TRAIN_S (deadline of
# the training phase, default 420), TRUTH_EPOCHS (20), TOTAL_EPOCHS (120), PER_SUPERNET_EPOCHS
# (30), DEVICE (cuda). A dry run on a CPU, small enough for a laptop:
#   DEVICE=cpu SEEDS="0 1" TRUTH_EPOCHS=1 TOTAL_EPOCHS=2 PER_SUPERNET_EPOCHS=1 OUT=/tmp/dry scripts/gpu_ranking.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_ranking}"
seeds="${SEEDS:-0 1 2 3 4 5 6 7}"
device="${DEVICE:-cuda}"
train_s="${TRAIN_S:-420}"
truth_epochs="${TRUTH_EPOCHS:-20}"
total_epochs="${TOTAL_EPOCHS:-120}"
per_supernet_epochs="${PER_SUPERNET_EPOCHS:-30}"
mkdir -p "$out"
# One CPU thread per process: the GPU does the work, and 10 processes share the host's CPUs.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 OMP_NUM_THREADS=1
space=(--space resnet20_equal_flops --width-scale 0.5)
if [[ "$device" == cuda* ]]; then
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_ranking: no CUDA device (torch.cuda.is_available() is False)')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
echo "gpu_ranking: $(date -u '+%F %T') UTC, device $device, truth seeds: $seeds, training deadline ${train_s} s" | tee -a "$out/log.txt"

truths=()
pids=()  # truth processes, then the two search processes
for s in $seeds; do
    folder="$out/truth_s$s"
    truths+=(--truth "$folder")
    resume=()
    [[ -f "$folder/run_config.json" ]] && resume=(--resume)
    timeout -s INT -k 30 "$train_s" stitchnas truth pooling "${space[@]}" --dataset cluttered_digits \
        --input-size 24 --data-option canvas_size=24 --data-option renders_per_image=2 \
        --data-option test_renders_per_image=10 --epochs "$truth_epochs" --batch-size 32 --lr 0.1 \
        --seeds "$s" --threads 1 --device "$device" --no-progress --out "$folder" "${resume[@]}" \
        > "$out/truth_s$s.log" 2>&1 &
    pids+=($!)
done
ranking=("${space[@]}" "${truths[@]}" --ms 1,2,4 --gm-m 4 --total-epochs "$total_epochs"
         --per-supernet-epochs "$per_supernet_epochs" --device "$device" --out "$out/searches")
for s in 0 1; do  # the searches resume by themselves (bench_ranking.py)
    timeout -s INT -k 30 "$train_s" python scripts/bench_ranking.py "${ranking[@]}" --seeds "$s" --search-only \
        > "$out/searches_s$s.log" 2>&1 &
    pids+=($!)
done
stopped=0
searches_done=1
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then  # 124: the deadline; anything else is in the logs
        stopped=$((stopped + 1))
        [[ "$i" -ge $((${#pids[@]} - 2)) ]] && searches_done=0
    fi
done
echo "training phase done at $(date -u '+%T') UTC; $stopped of ${#pids[@]} processes stopped early or failed" \
    | tee -a "$out/log.txt"

missing=""
for s in $seeds; do
    rows=$(($(wc -l < "$out/truth_s$s/truth.csv" 2>/dev/null || echo 1) - 1))
    [[ "$rows" -ge 36 ]] || missing+=" seed $s ($rows of 36 placements)"
done
if [[ -n "$missing" ]]; then
    echo "gpu_ranking: ground truth incomplete:$missing; call again to resume (logs in $out/)" | tee -a "$out/log.txt"
    exit 3
fi
python scripts/bench_ranking.py "${ranking[@]}" --seeds 0,1 --rank-only 2>&1 | tee "$out/ranking.txt"
if [[ "$searches_done" -ne 1 ]]; then
    echo "gpu_ranking: searches incomplete (rows 'not run yet or unfinished' above); call again to resume (logs in $out/)" \
        | tee -a "$out/log.txt"
    exit 3
fi
echo "gpu_ranking: outputs in $out/ (ranking.txt, searches/summary.json)"
