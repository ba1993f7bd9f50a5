#!/usr/bin/env bash
# Disaggregated prefill/decode on two GPUs of one host (issue 8), the Qwen3-0.6B shape with random weights:
# a prefill worker on GPU 0, a decode worker on GPU 1 (KV pages GPU to GPU over CUDA IPC: transfer backend auto),
# an aggregated worker on GPU 0 for comparison, one frontend per namespace; discovery on the embedded file store,
# the tcp request plane (no etcd or NATS there). It
#   1. builds the addon, writes the checkpoint and measures the GPU 0 -> GPU 1 peer-to-peer copy rate (torch);
#   2. checks the disaggregated greedy outputs against the aggregated worker's for a set of prompts;
#   3. benches TTFT and ITL of both (`dynamo-sglang bench`, the same load);
#   4. prints a markdown table last: equality, the KV transfer rate of the GPU path (bytes / time inside the pull,
#      logged by the decode worker) against the peer-to-peer rate, TTFT and ITL agg vs disagg.
# GPU selection: CUDA_VISIBLE_DEVICES with the worker's own GPU first (the decode worker sees "1,0": CUDA IPC needs
# the prefill GPU visible to it, and its device 0 is GPU 1). Logs go to OUT (8 files, as the device returns them).
#
#   GPU:  source .gpu/enter.sh && bash bench/disagg/gpu2.sh $OUT
#   CPU check of the same path (tcp transfer): DEVICE=cpu SHAPE=qwen3-tiny bash bench/disagg/gpu2.sh /tmp/disagg-out
# Env: DEVICE (cuda | cpu), SHAPE (qwen3-0.6b | qwen3-tiny), MODEL_DIR, TRANSFER (auto | cuda-ipc | tcp; default
# auto), BUDGET_S (default 440), PROMPTS (compare, default 16), NUM_PROMPTS / INPUT_LEN / OUTPUT_LEN / SWEEP (bench),
# COMMIT (the commit a copy without .git was taken from, for the summary).
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${1:-${OUT:-/tmp/dsg-disagg}}
device=${DEVICE:-cuda}
shape=${SHAPE:-qwen3-0.6b}
budget=${BUDGET_S:-440}
transfer=${TRANSFER:-auto}
prompts=${PROMPTS:-16}
if [ "$device" = cuda ]; then
  model=${MODEL_DIR:-/tmp/q3}
  input_len=${INPUT_LEN:-1024} output_len=${OUTPUT_LEN:-64} num_prompts=${NUM_PROMPTS:-48} sweep=${SWEEP:-1,8} max_words=1200
  export PATH=/usr/local/cuda/bin:$PATH CUDAToolkit_ROOT=${CUDAToolkit_ROOT:-/usr/local/cuda}
  gpu_prefill="0,1" gpu_decode="1,0" gpu_agg="0,1"
  mem_prefill=0.45 mem_agg=0.9 mem_decode=0.85
else
  model=${MODEL_DIR:-/tmp/dsg-disagg-$shape}
  input_len=${INPUT_LEN:-64} output_len=${OUTPUT_LEN:-16} num_prompts=${NUM_PROMPTS:-8} sweep=${SWEEP:-1,4} max_words=120
  gpu_prefill="" gpu_decode="" gpu_agg=""
  mem_prefill=0.01 mem_agg=0.01 mem_decode=0.01
fi
mkdir -p "$out"
work=$(mktemp -d /tmp/dsg-disagg-work.XXXXXX)
: > "$work/commands"
pids=()
cli=(node --import tsx test/helpers/cli-entry.ts)
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 20); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.5
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  pids=()
}
trap 'cleanup; rm -rf "$work"' EXIT
say() { echo "[gpu2.sh $(date -u +%H:%M:%S) +${SECONDS}s] $*"; }
left() { echo $((budget - SECONDS)); }
record() { printf '%s\n' "$*" >> "$work/commands"; }

summarize() {
  {
    echo "## Disaggregated prefill/decode on two GPUs (bench/disagg/gpu2.sh)"
    echo
    if [ "$device" = cuda ]; then
      echo "- Cards: $(nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null | paste -sd';')"
      echo "- Topology GPU0-GPU1: $(nvidia-smi topo -m 2>/dev/null | awk '$1=="GPU0"{print $3}')"
    else
      echo "- Machine: $(nproc) CPUs, no GPU (CPU check: the tcp transfer)"
    fi
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); node $(node --version 2>/dev/null)"
    local commit
    if [ -n "${COMMIT:-}" ]; then
      commit="$COMMIT (given by the caller)"
    elif commit=$(git rev-parse --short HEAD 2>/dev/null); then
      git diff --quiet HEAD -- src actors native bench 2>/dev/null || commit="$commit (with uncommitted changes)"
    else
      commit="unknown here (no .git in this copy)"
    fi
    echo "- Commit: $commit"
    echo "- Device $device, shape $shape (random weights, seed 1), transfer backend $transfer, page size 16; bench: input $input_len, output $output_len tokens, $num_prompts requests per concurrency ($sweep), ignore_eos; total ${SECONDS}s of ${budget}s"
    echo "- Commands, in order:"
    sed 's/^/  - `/; s/$/`/' "$work/commands"
    echo
    node --import tsx bench/disagg/summary.ts --compare "$work/compare.json" --decode-log "$out/decode.log" --p2p "$work/p2p.json" \
      --agg-bench "$out/bench-agg.json" --dis-bench "$out/bench-dis.json" --ipc-check "$work/kvipc-result.txt" 2>&1
  } > "$out/summary.md"
  echo
  cat "$out/summary.md"
}
die() {
  say "FAILED: $*"
  cleanup
  cat "$work/frontend-dis.log" "$work/frontend-agg.log" >> "$out/agg.log" 2>/dev/null
  summarize
  exit 1
}

# ---- 1. build, checkpoint, peer-to-peer rate
say "device $device, shape $shape, transfer $transfer, out $out, budget ${budget}s"
record "node scripts/build-native.mjs"
( timeout 300 node scripts/build-native.mjs > "$work/native.log" 2>&1 ) &
build_job=$!
if [ -e "$model/config.json" ] && [ "$(cat "$model/.dsg-shape" 2>/dev/null)" = "$shape seed 1" ]; then
  say "reusing the $shape checkpoint in $model"
else
  rm -rf "$model"
  record "${cli[*]} make-model --shape $shape --seed 1 --out $model"
  "${cli[@]}" make-model --shape "$shape" --seed 1 --out "$model" > "$work/make-model.log" 2>&1 && echo "$shape seed 1" > "$model/.dsg-shape"
fi
if [ "$device" = cuda ]; then
  record "CUDA_VISIBLE_DEVICES=0,1 python3 bench/disagg/p2p.py"
  CUDA_VISIBLE_DEVICES=0,1 timeout 90 python3 bench/disagg/p2p.py > "$work/p2p.out" 2>&1
  tail -1 "$work/p2p.out" > "$work/p2p.json"
  say "peer-to-peer: $(cat "$work/p2p.json")"
fi
if [ "$device" = cuda ]; then
  # the transfer itself, two processes, no workers: native/cuda/tests/kv_ipc_check.cu
  record "nvcc -std=c++17 -O3 -arch=sm_90a -I native/include -I native/cuda native/cuda/tests/kv_ipc_check.cu native/cuda/kv_ipc.cu -o kvipc && CUDA_VISIBLE_DEVICES=0,1 ./kvipc"
  { timeout 120 nvcc -std=c++17 -O3 -arch=sm_90a -I native/include -I native/cuda native/cuda/tests/kv_ipc_check.cu native/cuda/kv_ipc.cu -o "$work/kvipc" &&
    CUDA_VISIBLE_DEVICES=0,1 timeout 60 "$work/kvipc"; } > "$work/kvipc.log" 2>&1
  tail -1 "$work/kvipc.log" > "$work/kvipc-result.txt"
  say "kv_ipc_check: $(cat "$work/kvipc-result.txt")"
fi
wait $build_job
build_rc=$?
cat "$work/native.log" native/build/build.log "$work/make-model.log" "$work/p2p.out" "$work/kvipc.log" > "$out/setup.log" 2>/dev/null
tail -1 "$work/native.log"
[ $build_rc = 0 ] || die "native addon build (exit $build_rc): see setup.log"
if [ "$device" = cuda ] && ! grep -q 'backends: cpu, cuda' "$work/native.log"; then
  if [ -e native/build/CMakeCache.txt ]; then
    say "addon built without CUDA from an existing native/build: reconfiguring from scratch"
    rm -rf native/build
    timeout 300 node scripts/build-native.mjs > "$work/native.log" 2>&1
    cat "$work/native.log" >> "$out/setup.log"
  fi
  grep -q 'backends: cpu, cuda' "$work/native.log" || die "the addon was built without the CUDA backend: see setup.log"
fi
[ -e "$model/config.json" ] || die "make-model wrote no checkpoint: see setup.log"

# ---- 2. workers and frontends
kv="$work/kv"
common=(--model-path "$model" --served-model-name q3 --device "$device" --page-size 16 --discovery-backend file --file-kv-root "$kv"
  --request-plane tcp --tcp-rpc-host 127.0.0.1 --kv-transfer-timeout 60 --disaggregation-transfer-backend "$transfer")
[ "$device" = cpu ] && common+=(--cpu-threads 1)
# start_proc LOG VISIBLE_DEVICES ARGS...: a CLI process in the background, output to LOG
start_proc() {
  local log=$1 vis=$2
  shift 2
  record "${vis:+CUDA_VISIBLE_DEVICES=$vis }${cli[*]} $* &"
  if [ -n "$vis" ]; then CUDA_VISIBLE_DEVICES=$vis "${cli[@]}" "$@" >> "$log" 2>&1 &
  else "${cli[@]}" "$@" >> "$log" 2>&1 & fi
  pids+=($!)
}
# wait_for LOG REGEX LIMIT_S: until LOG matches (prints the match)
wait_for() {
  local t0=$SECONDS
  while ((SECONDS - t0 < $3 && SECONDS < budget)); do
    if grep -qE "$2" "$1" 2>/dev/null; then grep -oE "$2" "$1" | head -1; return 0; fi
    sleep 0.5
  done
  return 1
}
start_proc "$out/prefill.log" "$gpu_prefill" start "${common[@]}" --namespace dis --disaggregation-mode prefill --mem-fraction-static $mem_prefill
start_proc "$out/decode.log" "$gpu_decode" start "${common[@]}" --namespace dis --disaggregation-mode decode --mem-fraction-static $mem_decode
wait_for "$out/prefill.log" 'serving dis\.prefill\.generate' 180 > /dev/null || { tail -20 "$out/prefill.log"; die "the prefill worker did not start: see prefill.log"; }
say "prefill worker ready"
# after the prefill worker: --mem-fraction-static counts what the card has in use already
start_proc "$out/agg.log" "$gpu_agg" start "${common[@]}" --namespace agg --mem-fraction-static $mem_agg
start_proc "$work/frontend-dis.log" "" frontend --discovery-backend file --file-kv-root "$kv" --namespace dis --http-port 0 --http-host 127.0.0.1
start_proc "$work/frontend-agg.log" "" frontend --discovery-backend file --file-kv-root "$kv" --namespace agg --http-port 0 --http-host 127.0.0.1
wait_for "$out/decode.log" 'serving dis\.backend\.generate' 180 > /dev/null || { tail -20 "$out/decode.log"; die "the decode worker did not start: see decode.log"; }
wait_for "$out/agg.log" 'serving agg\.backend\.generate' 180 > /dev/null || { tail -20 "$out/agg.log"; die "the aggregated worker did not start: see agg.log"; }
dis_url=$(wait_for "$work/frontend-dis.log" 'http://[0-9.]+:[0-9]+' 60) || die "the disagg frontend printed no URL"
agg_url=$(wait_for "$work/frontend-agg.log" 'http://[0-9.]+:[0-9]+' 60) || die "the agg frontend printed no URL"
for u in "$dis_url" "$agg_url"; do
  for _ in $(seq 120); do
    node -e "fetch(process.argv[1] + '/v1/models').then((r) => r.text()).then((t) => process.exit(t.includes('\"q3\"') ? 0 : 1), () => process.exit(1))" "$u" && break
    sleep 0.5
  done
done
say "frontends: disagg $dis_url, agg $agg_url"

# ---- 3. outputs, then the bench of each
record "node --import tsx bench/disagg/compare.ts --agg $agg_url --dis $dis_url --prompts $prompts --max-tokens 32 --max-words $max_words"
timeout $(( $(left) > 120 ? 120 : $(left) )) node --import tsx bench/disagg/compare.ts --agg "$agg_url" --dis "$dis_url" --prompts "$prompts" --max-tokens 32 \
  --max-words "$max_words" --out "$work/compare.json" >> "$out/run.log" 2>&1
say "compare: $(tail -1 "$out/run.log")"
bench_one() {
  local name=$1 url=$2 share=$3 limit
  limit=$(( ($(left) - 15) / share ))
  ((limit < 10)) && { say "bench $name: skipped, the budget is spent"; return; }
  local cmd=("${cli[@]}" bench --url "$url" --model q3 --concurrency-sweep "$sweep" --input-len "$input_len" --output-len "$output_len" --ignore-eos
    --tokenizer "$model" --num-prompts "$num_prompts" --warmup 4 --seed 0 --no-progress --json "$out/bench-$name.json")
  record "${cmd[*]}"
  echo "\$ ${cmd[*]}" >> "$out/run.log"
  timeout "$limit" "${cmd[@]}" >> "$out/run.log" 2>&1
  say "bench $name: exit $?"
}
bench_one agg "$agg_url" 2
bench_one dis "$dis_url" 1
cleanup
cat "$work/frontend-dis.log" "$work/frontend-agg.log" >> "$out/agg.log" 2>/dev/null

# ---- 4. the table
summarize
