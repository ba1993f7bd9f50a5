#!/usr/bin/env bash
# Issue 5 on the GPU machine, one command: optional engine checks, the offline run with a per-step trace from the
# rank (DSG_STEP_TRACE: sequences, tokens, KV tokens read, engine ms per step) and its summary, then optional ncu
# kernel tables of chosen step shapes.
# Env: CHECKS=1 (decode-attention and mask/token-feedback kernel checks + test/cuda-engine.test.ts first), SHAPES="decode 136 900 2;mixed 128 500 8192"
# (profile.ts shapes for ncu, ';'-separated; empty: none), OFFLINE_ARGS (extra bench/offline/run.ts flags).
# Device call (after npm ci and ../shared/gpu/stage.sh):
#   run(command="bash bench/offline/profile-gpu.sh", carry=[".gpu"])     (the full stage: node, npm, tap)
# or, when .gpu with the tree passes the 64 MiB a call carries, the slim stage of bench/disagg/stage-slim.sh (no tap,
# so no CHECKS): carry=["build/kvipc-stage"].
# Everything lands in $OUT as one tarball plus the printed summaries (a device call returns at most 8 files).
set -u
if [ -f .gpu/enter.sh ]; then
  source .gpu/enter.sh
else
  mkdir -p /opt/kvstage && tar -C /opt/kvstage -xJf build/kvipc-stage/bundle.tar.xz || exit 1
  export PATH=/opt/kvstage/bin:$PATH NCCL_NVLS_ENABLE=0
  ln -sfn /opt/kvstage/node_modules node_modules
fi
export PATH=/usr/local/cuda/bin:$PATH
out=${OUT:-/tmp/dsg-offline-profile}
logs=$(mktemp -d)
mkdir -p "$out"
trap 'tar -C "$logs" -czf "$out/profile.tgz" .' EXIT
node scripts/build-native.mjs > "$logs/build.log" 2>&1 || { tail -30 "$logs/build.log"; exit 1; }
if [ "${CHECKS:-0}" = 1 ]; then
  obj=$(mktemp -d)
  flags=(-std=c++17 -O3 -arch=sm_90a -lineinfo -I native/include -I native/cuda)
  nvcc "${flags[@]}" -c native/cuda/decode_attention.cu -o "$obj/da.o" > "$logs/dcheck-build.log" 2>&1 &&
    nvcc "${flags[@]}" -c native/cuda/attention.cu -o "$obj/at.o" >> "$logs/dcheck-build.log" 2>&1 &&
    nvcc "${flags[@]}" -c native/cuda/tests/decode_attention_baseline.cu -o "$obj/bl.o" >> "$logs/dcheck-build.log" 2>&1 &&
    nvcc "${flags[@]}" -DDSG_WITH_DISPATCH native/cuda/tests/decode_attention_check.cu "$obj/da.o" "$obj/at.o" "$obj/bl.o" \
      -o "$obj/dcheck" >> "$logs/dcheck-build.log" 2>&1 || tail -20 "$logs/dcheck-build.log"
  compute-sanitizer --tool memcheck --print-limit 20 "$obj/dcheck" --quick > "$logs/dcheck-memcheck.log" 2>&1
  echo "decode attention memcheck (--quick): $(tail -n 1 "$logs/dcheck-memcheck.log")"
  "$obj/dcheck" --mix > "$logs/dcheck-mix.log" 2>&1
  grep -E "FAIL|correctness|copy" "$logs/dcheck-mix.log"
  grep "^|" "$logs/dcheck-mix.log" | cut -d'|' -f2-8
  nvcc "${flags[@]}" native/cuda/tests/mask_check.cu native/cuda/sampling.cu native/cuda/token_feedback.cu \
    native/src/sampling.cpp -o "$obj/mcheck" > "$logs/mcheck-build.log" 2>&1 || tail -20 "$logs/mcheck-build.log"
  "$obj/mcheck" > "$logs/mcheck.log" 2>&1; grep -E "token feedback|PASSED|FAILED" "$logs/mcheck.log"
  DSG_STORIES_MODEL=models/stories260K.gguf timeout 400 npx tap test/cuda-engine.test.ts > "$logs/cuda-engine-test.log" 2>&1
  echo "cuda-engine.test.ts exit $?"; grep -E "^\s*not ok|^# \{|# (pass|fail|skip)" "$logs/cuda-engine-test.log" | head
fi
node --import tsx --input-type=module -e "const { main } = await import('./src/cli/main.ts');
process.exitCode = await main(['make-model', '--shape', 'qwen3-0.6b', '--seed', '1', '--out', '/tmp/q3-offline']);" > "$logs/make-model.log" 2>&1 ||
  { tail -20 "$logs/make-model.log"; exit 1; }
python3 bench/engine/ceilings.py > "$logs/ceil.json" 2>&1
bw=$(python3 -c "import json,sys;print(int(1000*json.load(open(sys.argv[1]))['copy_TBps']))" "$logs/ceil.json")
echo "copy bandwidth ${bw} GB/s"
DSG_STEP_TRACE="$logs/trace.tsv" timeout 240 node --import tsx bench/offline/run.ts --model /tmp/q3-offline --device cuda \
  --bandwidth-gbs "$bw" ${OFFLINE_ARGS:-} --out "$logs/offline.json" > "$logs/offline.log" 2>&1
tail -1 "$logs/offline.log"
python3 bench/offline/trace-summary.py "$logs/trace.tsv" | tee "$logs/trace-summary.txt"
IFS=';' read -ra shapes <<< "${SHAPES:-}"
for shape in "${shapes[@]}"; do
  name=$(echo "$shape" | tr ' ' '_')
  steps=$(echo "$shape" | awk '$1=="decode"{print $4} $1!="decode"{print 1}')
  DSG_NO_GRAPH_WARMUP=1 timeout 200 ncu --metrics gpu__time_duration.sum --csv --page raw --target-processes all \
    node --import tsx bench/engine/profile.ts /tmp/q3-offline $shape > "$logs/ncu_$name.csv" 2> "$logs/ncu_$name.err"
  echo "== $shape"
  python3 bench/engine/ncu-summary.py "$logs/ncu_$name.csv" "$steps" | head -16
done 2>&1 | tee "$logs/ncu-summary.txt"
