#!/usr/bin/env bash
# One device command for issues 5 and 7 on the Qwen3-0.6B shape: builds the addon with CUDA and the TypeScript,
# writes a random checkpoint, runs the offline workload through the Supervisor API (with the card's copy bandwidth,
# the engine's own batch-N ceiling and batch-1 ITL measured in the same run), then serves the checkpoint with
# `dynamo-sglang run` and sweeps it with `dynamo-sglang bench`. Full logs go to OUT (8 files at most, as the device
# returns); the summary (card, date, commit, exact commands, tables) is printed last and saved as OUT/summary.md.
#
#   GPU:  source .gpu/enter.sh && bash bench/serving/gpu.sh $OUT        (about 5-6 minutes on one H100/H200)
#   CPU check of the same path: DEVICE=cpu SHAPE=qwen3-tiny bash bench/serving/gpu.sh /tmp/serving-out
#
# Env: DEVICE (cuda | cpu), SHAPE (qwen3-0.6b | qwen3-tiny), MODEL_DIR (default /tmp/q3 on cuda), BUDGET_S (seconds
# this script may take, default 470: the device call's 9 minutes less the bundle unpacking), and overrides of the
# workload: NUM_SEQS, MIN_LEN, MAX_LEN, SWEEP, NUM_PROMPTS (default: as many as the time left allows, at most 256).
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${1:-${OUT:-/tmp/dsg-serving}}
device=${DEVICE:-cuda}
shape=${SHAPE:-qwen3-0.6b}
budget=${BUDGET_S:-470}
if [ "$device" = cuda ]; then
  model=${MODEL_DIR:-/tmp/q3}
  num_seqs=${NUM_SEQS:-256} min_len=${MIN_LEN:-100} max_len=${MAX_LEN:-1024} sweep=${SWEEP:-1,4,16,64,256}
  export PATH=/usr/local/cuda/bin:$PATH CUDAToolkit_ROOT=${CUDAToolkit_ROOT:-/usr/local/cuda}
else
  # The CPU check: same steps, a tiny model and a workload a 2-core box finishes in a few minutes.
  model=${MODEL_DIR:-/tmp/dsg-serving-$shape}
  num_seqs=${NUM_SEQS:-32} min_len=${MIN_LEN:-32} max_len=${MAX_LEN:-256} sweep=${SWEEP:-1,4,16,64,256}
fi
mkdir -p "$out"
work=$(mktemp -d /tmp/dsg-serving-work.XXXXXX)
: > "$work/steps.tsv"
: > "$work/commands"
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$server_pid" 2>/dev/null
  fi
}
trap 'cleanup; rm -rf "$work"' EXIT

say() { echo "[gpu.sh $(date -u +%H:%M:%S) +${SECONDS}s] $*"; }
die() { say "FAILED: $*"; summarize; exit 1; }

# step NAME LIMIT_S LOG CMD...: runs CMD with its output appended to LOG, within LIMIT_S and the budget left;
# records the command and its time and exit status for the summary.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$((budget - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    printf '%s\t-\tskipped (budget spent)\n' "$name" >> "$work/steps.tsv"
    say "$name: skipped, the ${budget}s budget is spent"
    return 124
  fi
  local quoted
  quoted=$(printf '%q ' "$@")
  echo "${quoted% }" >> "$work/commands"
  echo "\$ ${quoted% }" >> "$log"
  local t0=$SECONDS rc
  timeout -k 5 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  ((rc == 124)) && echo "($name: stopped at its ${limit}s limit)" >> "$log"
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - t0))" "$rc" >> "$work/steps.tsv"
  say "$name: exit $rc in $((SECONDS - t0))s"
  return $rc
}

summarize() {
  {
    echo "## Serving and offline run (bench/serving/gpu.sh)"
    echo
    if [ "$device" = cuda ]; then
      local card
      card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | paste -sd';')
      echo "- Card: ${card:-unknown (nvidia-smi gave nothing)}"
    else
      echo "- Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), no GPU (CPU check)"
    fi
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); node $(node --version 2>/dev/null)"
    local commit
    if commit=$(git rev-parse --short HEAD 2>/dev/null); then
      git diff --quiet HEAD -- src actors native bench scripts || commit="$commit (with uncommitted changes)"
    else
      commit="unknown here (no .git in this copy: take it from the checkout that was sent)"
    fi
    echo "- Commit: $commit"
    echo "- Device $device, shape $shape (random bf16 weights, seed 1) in $model; total ${SECONDS}s of a ${budget}s budget"
    echo "- Commands, in order:"
    sed 's/^/  - `/; s/$/`/' "$work/commands"
    echo
    node --import tsx bench/serving/summary.ts --offline "$out/offline.json" --sweep "$out/sweep.json" \
      --bandwidth-gbs "${bw_gbs:-0}" --bandwidth-source "${bw_source:-unknown}" --model "$model" --steps "$work/steps.tsv" 2>&1
  } > "$out/summary.md"
  echo
  cat "$out/summary.md"
}

# ---- 1. build: the native addon (with CUDA on the GPU machine) and the TypeScript, side by side
say "device $device, shape $shape, out $out, budget ${budget}s"
step native-build 300 "$work/native.log" node scripts/build-native.mjs &
native_job=$!
step tsc-build 200 "$work/tsc.log" npx tsc -p tsconfig.build.json &
tsc_job=$!
wait $native_job
native_rc=$?
wait $tsc_job
tsc_rc=$?
if [ "$device" = cuda ] && [ "$native_rc" = 0 ] && ! grep -q 'backends: cpu, cuda' "$work/native.log" && [ -e native/build/CMakeCache.txt ]; then
  # A build folder configured where CUDA was not found keeps that answer in its cache: configure afresh once.
  say "addon built without CUDA from an existing native/build: reconfiguring from scratch"
  rm -rf native/build
  step native-rebuild 300 "$work/native.log" node scripts/build-native.mjs
  native_rc=$?
fi
cat "$work/native.log" native/build/build.log "$work/tsc.log" > "$out/setup.log" 2>/dev/null
tail -1 "$work/native.log"
[ "$native_rc" = 0 ] || die "native addon build (exit $native_rc): see setup.log"
if [ "$device" = cuda ] && ! grep -q 'backends: cpu, cuda' "$work/native.log"; then
  die "the addon was built WITHOUT the CUDA backend: CMake found no CUDA toolkit with cuBLAS/cuBLASLt (nvcc: $(command -v nvcc || echo 'not on PATH'); libcublas: $(ls /usr/local/cuda/lib64/libcublas.so 2>/dev/null || echo missing)). See setup.log"
fi
[ -e dist/src/cli/main.js ] || die "tsc emitted no dist/src/cli/main.js (exit $tsc_rc): see setup.log"
[ "$tsc_rc" = 0 ] || say "tsc reported type errors (exit $tsc_rc) but emitted dist/: going on; see setup.log"

# ---- 2. the checkpoint and the card's copy bandwidth, side by side (CPU work and GPU work)
if [ -e "$model/model.safetensors" ] && [ "$(cat "$model/.dsg-shape" 2>/dev/null)" = "$shape seed 1" ]; then
  say "reusing the $shape checkpoint in $model"
  printf 'make-model\t0\treused\n' >> "$work/steps.tsv"
  model_rc=0
else
  [ ! -e "$model" ] || [ -e "$model/config.json" ] || die "MODEL_DIR $model exists and holds no checkpoint: not overwriting it"
  rm -rf "$model"
  (step make-model 200 "$work/make-model.log" node bin/dynamo-sglang.js make-model --shape "$shape" --seed 1 --out "$model" &&
    echo "$shape seed 1" > "$model/.dsg-shape") &
  model_job=$!
fi
if [ "$device" = cuda ]; then
  step copy-bandwidth 90 "$work/ceil.log" python3 bench/engine/ceilings.py
  bw_gbs=$(python3 -c "import json,sys;print(round(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])['copy_TBps']*1000))" "$work/ceil.log" 2>/dev/null)
else
  # Host memory: read + write bytes of a 256 MiB buffer copy, as the GPU figure counts them.
  step copy-bandwidth 60 "$work/ceil.log" node -e "const n=1<<28,a=Buffer.alloc(n,1),b=Buffer.alloc(n);for(let i=0;i<2;i++)a.copy(b);const t=performance.now();for(let i=0;i<5;i++)a.copy(b);console.log(JSON.stringify({copy_TBps:+(2*n*5/((performance.now()-t)/1000)/1e12).toFixed(4)}))"
  bw_gbs=$(node -e "const l=require('fs').readFileSync(process.argv[1],'utf8').trim().split('\n').pop();console.log(Math.round(JSON.parse(l).copy_TBps*1000))" "$work/ceil.log" 2>/dev/null)
fi
if [ -n "${model_job:-}" ]; then wait "$model_job"; model_rc=$?; fi
cat "$work/make-model.log" "$work/ceil.log" >> "$out/setup.log" 2>/dev/null
[ "$model_rc" = 0 ] || die "make-model (exit $model_rc): see setup.log"
bw_source="measured in this run"
if ! { [ -n "$bw_gbs" ] && [ "$bw_gbs" -gt 0 ] 2>/dev/null; }; then
  # Keep going with the card's spec-sheet figure (said so in the summary) rather than lose the run.
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" in
    *H200*) bw_gbs=4800 ;;
    *H100*) bw_gbs=3350 ;;
    *) bw_gbs=20 ;;
  esac
  bw_source="NOT measured (the copy test failed, see setup.log): spec-sheet figure"
fi
say "copy bandwidth ${bw_gbs} GB/s, $bw_source"

# ---- 3. offline (issue 5): the engine alone (batch-N ceiling, batch-1 ITL), then the workload through the actors
step offline 240 "$out/offline.log" node --import tsx bench/offline/run.ts --model "$model" --device "$device" --num "$num_seqs" \
  --min "$min_len" --max "$max_len" --seed 1 --bandwidth-gbs "$bw_gbs" --out "$out/offline.json"
grep '^|' "$out/offline.log" | tail -1

# ---- 4. serving (issue 7): `run` (worker + frontend in one process), then the bench sweep against it
printf '%s\n' "node bin/dynamo-sglang.js run --model-path $model --device $device --http-port 0 --http-host 127.0.0.1 &" >> "$work/commands"
server_t0=$SECONDS
node bin/dynamo-sglang.js run --model-path "$model" --device "$device" --http-port 0 --http-host 127.0.0.1 > "$out/server.log" 2>&1 &
server_pid=$!
url=
while ((SECONDS - server_t0 < 150 && SECONDS < budget)); do
  url=$(grep -o 'is serving .* at http://[0-9.]*:[0-9]*' "$out/server.log" | grep -o 'http://[0-9.]*:[0-9]*' | head -1)
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.5
done
printf 'server-start\t%s\t%s\n' "$((SECONDS - server_t0))" "${url:-no URL}" >> "$work/steps.tsv"
[ -n "$url" ] || { tail -20 "$out/server.log"; die "the server printed no URL within $((SECONDS - server_t0))s: see server.log"; }
say "server ready at $url after $((SECONDS - server_t0))s"

# Requests per sweep point: concurrency 1 dominates (each request about 128 batch-1 steps through the server); the
# later points cost about half as much again. Take the most of 256/128/64/32/16 that fits the time left.
if [ -n "${NUM_PROMPTS:-}" ]; then
  num_prompts=$NUM_PROMPTS
else
  itl_ms=$(node -e "try{const r=JSON.parse(require('fs').readFileSync(process.argv[1],'utf8'));console.log(r.actors.itl1Ms)}catch{console.log(5)}" "$out/offline.json")
  left=$((budget - SECONDS - 25))
  num_prompts=$(node -e "const [itl,left]=process.argv.slice(1).map(Number);const per=(0.03+128*itl*1.3/1000)*1.6;console.log([256,128,64,32,16].find((n)=>n*per<=left)??8)" "$itl_ms" "$left")
fi
say "bench: $num_prompts requests per point, sweep $sweep, $((budget - SECONDS))s left"
step bench $((budget - SECONDS - 10)) "$out/bench.log" node bin/dynamo-sglang.js bench --url "$url" --concurrency-sweep "$sweep" \
  --input-len 128 --output-len 128 --ignore-eos --model-path "$model" --num-prompts "$num_prompts" --warmup 4 --seed 0 \
  --card "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" \
  --json "$out/sweep.json" --svg "$out/sweep.svg" --png "$out/sweep.png"
cleanup
server_pid=

# ---- 5. the summary
summarize
