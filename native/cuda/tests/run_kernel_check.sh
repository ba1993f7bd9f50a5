#!/usr/bin/env bash
# GPU machine: builds native/cuda/tests/kernel_check.cu and runs it, then once more under compute-sanitizer memcheck.
# Usage (repository root): bash native/cuda/tests/run_kernel_check.sh [outdir]
set -euo pipefail
out=${1:-${OUT:-/tmp}}
export PATH=/usr/local/cuda/bin:$PATH
srcs="native/cuda/elementwise.cu native/cuda/rope_kv.cu native/cuda/attention.cu native/cuda/sampling.cu native/cuda/gemm.cu"
nvcc -std=c++17 -O3 -arch=sm_90 -lineinfo -I native/include -I native/cuda native/cuda/tests/kernel_check.cu $srcs \
  native/src/sampling.cpp -lcublas -o "$out/kcheck" 2>&1 | tee "$out/kcheck_build.log"
"$out/kcheck" 2>&1 | tee "$out/kcheck.log"
if [ "${SANITIZE:-1}" = 1 ]; then
  compute-sanitizer --tool memcheck --print-limit 20 "$out/kcheck" > "$out/kcheck_memcheck.log" 2>&1 || true
  tail -n 3 "$out/kcheck_memcheck.log"
fi
