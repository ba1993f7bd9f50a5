#!/usr/bin/env bash
# The CUDA engine's one device command (issue 4): kernel checks (then under compute-sanitizer), the addon build,
# the GPU test file, the Qwen3-0.6B correctness check against HF transformers, the ceilings, our benchmark and the
# torch CUDA-graph peer, all in one run on one card; full logs in $OUT, short tables printed.
# Prerequisites here: npm ci, ../shared/gpu/stage.sh, then `cp ../shared/peers/torch_peer.py .gpu/`, and for the
# decode-attention check's timing baseline (the device copy has no .git):
# `git show af6911f:native/cuda/attention.cu > native/cuda/tests/baseline_attention.inc` (git-ignored).
# Device call: run(command="bash bench/engine/run.sh", carry=[".gpu", "native/cuda/tests/baseline_attention.inc"]);
# about 6 minutes on an H200 with the memcheck passes (SANITIZE=0 skips them). A device call returns at most 8 files
# from $OUT: the tables printed at the end are the record.
set -u
source .gpu/enter.sh
export PATH=/usr/local/cuda/bin:$PATH
out=${OUT:-/tmp/dsg-engine}
mkdir -p "$out"
SANITIZE=${SANITIZE:-1} bash native/cuda/tests/run_kernel_check.sh "$out" > "$out/kcheck_all.log" 2>&1
grep -E "^\||FAIL|error" "$out/kcheck_all.log"
node scripts/build-native.mjs > "$out/build.log" 2>&1; tail -1 "$out/build.log"
DSG_STORIES_MODEL=models/stories260K.gguf timeout 300 npx tap test/cuda-engine.test.ts > "$out/cuda_test.log" 2>&1
grep -E "^\s*not ok|^# \{" "$out/cuda_test.log" | head
python3 bench/engine/hf_logits.py /tmp/q3 1 > "$out/hf.log" 2>&1
timeout 300 npx tsx bench/engine/qwen3-check.ts /tmp/q3 > "$out/qwen3_check.log" 2>&1; grep "^|" "$out/qwen3_check.log"
python3 bench/engine/ceilings.py | tee "$out/ceil.json"
bw=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['copy_TBps'])" "$out/ceil.json")
tf=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['bf16_TFLOPs'])" "$out/ceil.json")
timeout 300 npx tsx bench/engine/bench.ts /tmp/q3/model "$bw" "$tf" > "$out/bench.log" 2>&1; grep "^|" "$out/bench.log"
timeout 300 python3 .gpu/torch_peer.py > "$out/torch_peer.log" 2>&1
grep -o '"bs": [0-9]*\|"tokens": [0-9]*\|"itl_ms": [0-9.]*\|"out_tok_s": [0-9.]*\|"tok_s": [0-9]*' "$out/torch_peer.log" | paste -sd' '
