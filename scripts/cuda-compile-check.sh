#!/usr/bin/env bash
# Compiles every CUDA source (native/cuda/*.cu and its checks) for sm_90a (Hopper, with wgmma) without running
# anything: a syntax and resource check for machines that have nvcc but no GPU. cuBLAS/NCCL headers may live
# outside the toolkit: CUDA_EXTRA_INCLUDE (default /opt/cuda-extra/nvidia/cu13/include, where the nvidia-cublas wheel unpacks),
# NCCL_INCLUDE (when it holds nccl.h, the files are also compiled with DSG_HAVE_NCCL, as CMake does where NCCL is found).
# Usage: bash scripts/cuda-compile-check.sh [file.cu ...]   (-Xptxas -v with PTXAS_VERBOSE=1)
set -uo pipefail
cd "$(dirname "$0")/.."
extra=${CUDA_EXTRA_INCLUDE:-/opt/cuda-extra/nvidia/cu13/include}
nccl=${NCCL_INCLUDE:-/opt/cuda-extra/nvidia/nccl/include}
out=$(mktemp -d)
files=("$@")
[ ${#files[@]} -eq 0 ] && files=(native/cuda/*.cu native/cuda/tests/*.cu)
ncclDef=()
[ -f "$nccl/nccl.h" ] && ncclDef=(-DDSG_HAVE_NCCL)
verbose=()
[ "${PTXAS_VERBOSE:-0}" = 1 ] && verbose=(-Xptxas -v)
fail=0
for f in "${files[@]}"; do
  if ! nvcc -std=c++17 -O3 -arch=sm_90a -lineinfo "${verbose[@]}" -I native/include -I native/cuda -I "$extra" -I "$nccl" \
      -DDYNAMO_CUDA "${ncclDef[@]}" -c "$f" -o "$out/$(basename "$f").o"; then
    echo "FAIL $f"
    fail=1
  fi
done
rm -rf "$out"
[ $fail = 0 ] && echo "cuda compile check: ${#files[@]} file(s) OK"
exit $fail
