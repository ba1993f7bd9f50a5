#!/usr/bin/env bash
# GPU machine: builds native/cuda/tests/decode_attention_check.cu (with the decode kernel, attention.cu's dispatch
# and the decode path of attention.cu at BASELINE_COMMIT for timing), runs the small checks under compute-sanitizer
# memcheck, then everything plainly (checks + timing table).
# Usage (repository root): bash native/cuda/tests/run_decode_attention_check.sh [outdir]
# The baseline source is native/cuda/tests/baseline_attention.inc when present (the device copy of the tree has no
# .git), else extracted with git show.
set -euo pipefail
out=${1:-${OUT:-/tmp}}
export PATH=/usr/local/cuda/bin:$PATH
base=native/cuda/tests/baseline_attention.inc
[ -f "$base" ] || git show "${BASELINE_COMMIT:-af6911f}":native/cuda/attention.cu > "$base"
flags=(-std=c++17 -O3 -arch=sm_90 -lineinfo -I native/include -I native/cuda)
nvcc "${flags[@]}" -Xptxas -v -c native/cuda/decode_attention.cu -o "$out/decode_attention.o" > "$out/build_decode.log" 2>&1 &
nvcc "${flags[@]}" -c native/cuda/tests/decode_attention_baseline.cu \
  -o "$out/baseline.o" > "$out/build_baseline.log" 2>&1 &
nvcc "${flags[@]}" -c native/cuda/attention.cu -o "$out/attention.o" > "$out/build_attention.log" 2>&1 && touch "$out/attention.ok" &
wait
dispatch=()
objs=("$out/decode_attention.o" "$out/baseline.o")
if [ -f "$out/attention.ok" ]; then dispatch=(-DDSG_WITH_DISPATCH); objs+=("$out/attention.o");
else echo "attention.cu did not compile (see build_attention.log): dispatch checks skipped"; fi
nvcc "${flags[@]}" "${dispatch[@]}" native/cuda/tests/decode_attention_check.cu "${objs[@]}" -o "$out/dcheck" 2>&1 | tee "$out/build_check.log"
grep -A2 "decodeAttentionKernelILi128ELi2ELi4E" "$out/build_decode.log" | grep -E "registers|spill" || true
compute-sanitizer --tool memcheck --print-limit 20 "$out/dcheck" --quick > "$out/memcheck.log" 2>&1 || true
echo "memcheck (--quick): $(tail -n 1 "$out/memcheck.log")"
"$out/dcheck" 2>&1 | tee "$out/dcheck.log"
