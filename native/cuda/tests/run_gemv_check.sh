#!/usr/bin/env bash
# GPU machine: builds and runs native/cuda/tests/gemv_check.cu (small-batch decode kernels: checks, then timings and
# a short table last) and kernel_check.cu, then both checks under compute-sanitizer memcheck (gemv: --check-only).
# Usage (repository root): bash native/cuda/tests/run_gemv_check.sh [outdir]
set -uo pipefail
out=${1:-${OUT:-/tmp}}
work=$(mktemp -d)
export PATH=/usr/local/cuda/bin:$PATH
flags="-std=c++17 -O3 -arch=sm_90a -lineinfo -I native/include -I native/cuda"
# The attention sources (other work in progress) are only needed for kernel_check and the emulated decode step.
attn=$(ls native/cuda/attention.cu native/cuda/decode_attention.cu 2>/dev/null)
for f in native/cuda/elementwise.cu native/cuda/rope_kv.cu $attn native/cuda/sampling.cu native/cuda/gemm.cu \
         native/cuda/gemv.cu native/cuda/tests/kernel_check.cu native/cuda/tests/gemv_check.cu; do
  o="$work/$(basename "$f").o"
  nvcc $flags -c "$f" -o "$o" > "$work/build_$(basename "$f").log" 2>&1 &
done
g++ -std=c++17 -O2 -I native/include -c native/src/sampling.cpp -o "$work/sampling_cpp.o" || exit 1
wait
cat "$work"/build_*.log > "$out/build.log"
grep -E "error|warning" "$out/build.log"
lib="$work/elementwise.cu.o $work/rope_kv.cu.o $work/sampling.cu.o $work/gemm.cu.o $work/gemv.cu.o"
attnObjs=$(for f in $attn; do echo "$work/$(basename "$f").o"; done)
nvcc -arch=sm_90a $lib $attnObjs "$work/kernel_check.cu.o" "$work/sampling_cpp.o" -lcublas -o "$work/kcheck" ||
  echo "kernel_check: build failed (attention sources?)"
if ! nvcc -arch=sm_90a $lib $attnObjs "$work/gemv_check.cu.o" -lcublas -o "$work/gcheck"; then
  echo "gemv_check: linking with attention failed; the emulated decode step runs without attention"
  nvcc $flags -DGEMV_CHECK_NO_ATTENTION -c native/cuda/tests/gemv_check.cu -o "$work/gemv_check.cu.o" &&
    nvcc -arch=sm_90a $lib "$work/gemv_check.cu.o" -lcublas -o "$work/gcheck" || exit 1
fi
"$work/kcheck" > "$out/kcheck.log" 2>&1; echo "kernel_check rc $?"
grep -E "FAIL|PASSED|FAILED|ERROR" "$out/kcheck.log"
timeout 150 "$work/gcheck" > "$out/gcheck.log" 2>&1; echo "gemv_check rc $?"
timeout ${MEMCHECK_S:-60} compute-sanitizer --tool memcheck --print-limit 20 "$work/gcheck" --check-only > "$out/gcheck_memcheck.log" 2>&1
echo "gemv_check memcheck rc $?: $(tail -n 1 "$out/gcheck_memcheck.log")"
timeout ${MEMCHECK_S:-60} compute-sanitizer --tool memcheck --print-limit 20 "$work/kcheck" > "$out/kcheck_memcheck.log" 2>&1
echo "kernel_check memcheck rc $? (124: timed out): $(tail -n 1 "$out/kcheck_memcheck.log")"
grep -E "FAIL|ERROR" "$out/gcheck.log"
sed -n '/==== summary ====/,$p' "$out/gcheck.log"
