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
obj=$(mktemp -d)  # objects and binary outside $out: only logs come back
flags=(-std=c++17 -O3 -arch=sm_90a -lineinfo -I native/include -I native/cuda)
nvcc "${flags[@]}" -Xptxas -v -c native/cuda/decode_attention.cu -o "$obj/decode_attention.o" > "$out/build_decode.log" 2>&1 &
nvcc "${flags[@]}" -c native/cuda/tests/decode_attention_baseline.cu \
  -o "$obj/baseline.o" > "$out/build_baseline.log" 2>&1 &
nvcc "${flags[@]}" -c native/cuda/attention.cu -o "$obj/attention.o" > "$out/build_attention.log" 2>&1 && touch "$obj/attention.ok" &
wait
dispatch=()
objs=("$obj/decode_attention.o" "$obj/baseline.o")
if [ -f "$obj/attention.ok" ]; then dispatch=(-DDSG_WITH_DISPATCH); objs+=("$obj/attention.o");
else echo "attention.cu did not compile (see build_attention.log): dispatch checks skipped"; fi
nvcc "${flags[@]}" "${dispatch[@]}" native/cuda/tests/decode_attention_check.cu "${objs[@]}" -o "$obj/dcheck" 2>&1 | tee "$out/build_check.log"
grep -E "Compiling entry|registers" "$out/build_decode.log" | paste - - |
  sed -E 's/.*decodeAttentionKernelILi([0-9]+)ELi([0-9]+)ELi([0-9]+)ELi([0-9]+)E.*Used ([0-9]+) registers.*/D\1 G\2 U\3 S\4 \5 regs/' | tr '\n' ';'
echo
compute-sanitizer --tool memcheck --print-limit 20 "$obj/dcheck" --quick > "$out/memcheck.log" 2>&1 || true
echo "memcheck (--quick): $(tail -n 1 "$out/memcheck.log")"
"$obj/dcheck" 2>&1 | tee "$out/dcheck.log"
