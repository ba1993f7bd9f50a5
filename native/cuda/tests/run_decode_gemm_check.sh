#!/usr/bin/env bash
# GPU machine: builds and runs native/cuda/tests/decode_gemm_check.cu (the mid-batch decode GEMM: checks, then
# timings vs cuBLAS with a short table last), then its checks under compute-sanitizer memcheck.
# Usage (repository root): bash native/cuda/tests/run_decode_gemm_check.sh [outdir]; exit status 1 on a failed check.
set -uo pipefail
out=${1:-${OUT:-/tmp}}
mkdir -p "$out"
work=$(mktemp -d)
export PATH=/usr/local/cuda/bin:$PATH
flags=(-std=c++17 -O3 -arch=sm_90a -lineinfo -I native/include -I native/cuda)
for f in native/cuda/decode_gemm.cu native/cuda/elementwise.cu native/cuda/gemm.cu native/cuda/tests/decode_gemm_check.cu; do
  nvcc "${flags[@]}" -c "$f" -o "$work/$(basename "$f").o" > "$work/build_$(basename "$f").log" 2>&1 &
done
wait
cat "$work"/build_*.log > "$out/decode_gemm_build.log"
nvcc -arch=sm_90a "$work"/*.o -lcublas -o "$work/check" >> "$out/decode_gemm_build.log" 2>&1 ||
  { tail -30 "$out/decode_gemm_build.log"; exit 1; }
timeout 300 "$work/check" > "$out/decode_gemm_check.log" 2>&1
rc=$?
echo "decode_gemm_check rc $rc"
grep -E "FAIL|ERROR" "$out/decode_gemm_check.log" | head -20
timeout ${MEMCHECK_S:-150} compute-sanitizer --tool memcheck --print-limit 20 "$work/check" --check-only \
  > "$out/decode_gemm_memcheck.log" 2>&1
echo "memcheck rc $?: $(grep -E "ERROR SUMMARY" "$out/decode_gemm_memcheck.log" | tail -n 1)"
sed -n '/==== summary ====/,$p' "$out/decode_gemm_check.log"
exit $rc
