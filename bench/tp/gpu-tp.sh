#!/usr/bin/env bash
# Tensor parallelism on the GPU machine (issue 16), one device command of under 9 minutes:
#   1. in parallel: the addon build (node scripts/build-native.mjs, with NCCL where found), the all-reduce check's
#      build, and on the GPU (python) the Qwen3-0.6B-shape reference (bench/engine/hf_logits.py), a Qwen3-8B-shape
#      random checkpoint (make_qwen3_8b.py, 16.4 GB) and the copy-bandwidth ceiling (bench/engine/ceilings.py);
#   2. native/cuda/tests/all_reduce_check: collectives vs a CPU reference, 2 and 4 rank threads, and the in-graph
#      latency of 56 small all-reduces;
#   3. bench/tp/tp-check.ts check: TP 1 and TP 2 through the engine API against HF float32 (qwen3-check's bar), ranks
#      bitwise equal, seeded sampling equal on every rank;
#   4. bench/tp/tp-check.ts timing: Qwen3-8B shape, batch-1 ITL and batch-256 decode, TP 1 vs TP 2;
#   5. bench/tp/multiprocess-check.ts: the TP 2 group as two processes ("nodes") decodes what one process does
#      (custom kernels over CUDA IPC; with two GPUs also --disable-custom-all-reduce, NCCL for everything).
# Ranks run on device rank % GPUs: on a one-GPU machine the TP 2 ranks share device 0 (proves the IPC-free in-process
# mapping, the flags and the graph path; no speed-up is expected there). CUDA_MODULE_LOADING=EAGER: ranks sharing a
# device share its context, where loading a kernel lazily may wait for a peer's kernel that waits for this rank;
# CUDA_DEVICE_MAX_CONNECTIONS=32: their streams must not share a hardware queue behind such a waiting kernel.
# Prerequisites here: npm ci, ../shared/gpu/stage.sh. Device call: run(command="bash bench/tp/gpu-tp.sh", carry=[".gpu"]).
# Full logs in $OUT (build, checks, tables); the short tables print last.
set -u
source .gpu/enter.sh
export PATH=/usr/local/cuda/bin:$PATH
export CUDA_MODULE_LOADING=EAGER CUDA_DEVICE_MAX_CONNECTIONS=32
out=${1:-${OUT:-/tmp/dsg-tp}}
work=/tmp/dsg-tp-work
rm -rf "$work" && mkdir -p "$work" "$out"
gpus=$(nvidia-smi -L | wc -l)
t0=$SECONDS
budget=${TP_BUDGET_S:-525}
stamp() { echo "[$((SECONDS - t0)) s] $*"; }
# timeout for a step: its own cap, or what is left of the budget (at least 1 s)
cap() { local left=$((budget - (SECONDS - t0))); [ "$left" -lt "$1" ] && echo $((left > 1 ? left : 1)) || echo "$1"; }

stamp "$gpus GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | tr -s ' ')"
( timeout 400 node scripts/build-native.mjs > "$out/build.log" 2>&1; echo "build exit $?" >> "$out/build.log" ) &
build=$!
flags=(-std=c++17 -O3 -arch=sm_90a -lineinfo -I native/include -I native/cuda)
nccl=()
if [ -f /usr/include/nccl.h ]; then flags+=(-DDSG_HAVE_NCCL); nccl=(-lnccl); fi
( nvcc "${flags[@]}" native/cuda/tests/all_reduce_check.cu native/cuda/all_reduce.cu "${nccl[@]}" -o "$work/all_reduce_check" \
    > "$out/all_reduce_check_build.log" 2>&1 ) &
arbuild=$!
(
  timeout 200 python3 bench/engine/hf_logits.py "$work/q3" 1 > "$out/hf.log" 2>&1
  timeout 200 python3 bench/tp/make_qwen3_8b.py "$work/q8b" > "$out/make8b.log" 2>&1
  timeout 60 python3 bench/engine/ceilings.py > "$work/ceil.json" 2> "$out/ceil.log"
) &
py=$!
wait $arbuild
stamp "all_reduce_check built: $(tail -n 3 "$out/all_reduce_check_build.log" | tr '\n' ' ')"
wait $py
stamp "python done: $(tail -n 1 "$out/hf.log") / $(tail -n 1 "$out/make8b.log") / $(cat "$work/ceil.json")"
if [ -x "$work/all_reduce_check" ]; then
  timeout "$(cap 150)" "$work/all_reduce_check" > "$out/all_reduce_check.log" 2>&1
  stamp "all_reduce_check exit $?"
fi
wait $build
cp native/build/build.log "$out/native_build.log" 2>/dev/null
stamp "addon: $(tail -n 1 "$out/build.log"); $(grep -h "dynamo-sglang cuda:" native/build/build.log 2>/dev/null | head -n 1)"
timeout "$(cap 200)" node --import tsx bench/tp/tp-check.ts check "$work/q3" --gpus "$gpus" > "$out/tp_check.log" 2>&1
stamp "tp-check check exit $?"
bw=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['copy_TBps'])" "$work/ceil.json" 2>/dev/null || echo 0)
timeout "$(cap 240)" node --import tsx bench/tp/tp-check.ts timing "$work/q8b" --gpus "$gpus" --bandwidth-tbps "$bw" \
  > "$out/tp_timing.log" 2>&1
stamp "tp-check timing exit $?"
timeout "$(cap 150)" node --import tsx bench/tp/multiprocess-check.ts "$work/q3/model" --gpus "$gpus" > "$out/tp_multiprocess.log" 2>&1
stamp "multiprocess-check exit $?"
grep -h "dynamo-sglang cuda:" "$out/tp_check.log" "$out/tp_timing.log" | sort | uniq -c | head -n 8 > "$out/startup_lines.txt"

echo; echo "## all_reduce_check"
grep -E "FAIL|ERROR|in-graph|PASSED|FAILED|skipped|sweep|bytes:" "$out/all_reduce_check.log" | head -n 40
echo; echo "## start-up lines"; cat "$out/startup_lines.txt"
echo; echo "## TP correctness (Qwen3-0.6B shape vs HF float32)"
grep -E "^\||^Qwen3|tp [0-9]+ rank" "$out/tp_check.log"
echo; echo "## TP timing (Qwen3-8B shape, random weights)"
grep -E "^\||^decode timing|^TP 1|tp [0-9]+ rank .*(ERR|error|WORKER)" "$out/tp_timing.log"
echo; echo "## TP 2 across two processes"
grep -E "^\||^TP 2" "$out/tp_multiprocess.log"
stamp "done"
