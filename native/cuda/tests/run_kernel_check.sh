#!/usr/bin/env bash
# GPU machine: builds every kernel check of native/cuda/tests against the kernel sources and runs it, then the quick
# variants under compute-sanitizer memcheck (SANITIZE=0 skips those). Each check compares with a CPU reference on
# random inputs and exits non-zero on a failure; the summary table comes last.
#   kernel_check            embedding, RMSNorm, SiLU*mul, q/k-norm + RoPE + KV write, attention, sampling, GEMM
#   gemv_check              small-batch fused GEMVs (+ timings vs cuBLAS)
#   decode_gemm_check       mid-batch fused decode GEMM (+ timings vs cuBLAS and its neighbour kernels)
#   mask_check              banned-token masking before sampling, also through a graph replay
#   decode_attention_check  paged decode attention (+ timings vs the first kernel; needs tests/baseline_attention.inc
#                           or git to extract it)
#   prefill_attention_check tensor-core prefill attention (+ timings)
#   kv_ipc_check            CUDA IPC KV pull between two processes (GPU 1 when there are two)
#   all_reduce_check        tensor-parallel all-reduce / vocab all-gather, 2 and 4 rank threads (+ in-graph latency);
#                           with NCCL where /usr/include/nccl.h and libnccl are present; no memcheck run (the
#                           sanitizer serialises kernels, and the ranks' kernels wait for each other)
# Usage (repository root): bash native/cuda/tests/run_kernel_check.sh [outdir]
set -uo pipefail
out=${1:-${OUT:-/tmp}}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
work=$(mktemp -d)
flags=(-std=c++17 -O3 -arch=sm_90a -lineinfo -I native/include -I native/cuda)
ncclLink=()
if [ -f /usr/include/nccl.h ] && ls /usr/lib/x86_64-linux-gnu/libnccl.so* > /dev/null 2>&1; then
  flags+=(-DDSG_HAVE_NCCL)
  ncclLink=(-lnccl)
fi
lib=()
for f in native/cuda/*.cu; do
  [ "$(basename "$f")" = cuda_backend.cu ] && continue
  lib+=("$work/$(basename "$f").o")
  nvcc "${flags[@]}" -c "$f" -o "$work/$(basename "$f").o" > "$work/build_$(basename "$f").log" 2>&1 &
done
base=native/cuda/tests/baseline_attention.inc
[ -f "$base" ] || git show "${BASELINE_COMMIT:-af6911f}":native/cuda/attention.cu > "$base" 2>/dev/null || rm -f "$base"
for c in kernel_check gemv_check decode_gemm_check mask_check prefill_attention_check kv_ipc_check all_reduce_check decode_attention_baseline; do
  extra=()
  [ $c = decode_attention_baseline ] && [ ! -f "$base" ] && continue
  nvcc "${flags[@]}" -c native/cuda/tests/$c.cu -o "$work/$c.o" > "$work/build_$c.log" 2>&1 &
done
nvcc "${flags[@]}" -DDSG_WITH_DISPATCH -c native/cuda/tests/decode_attention_check.cu -o "$work/decode_attention_check.o" \
  > "$work/build_decode_attention_check.log" 2>&1 &
g++ -std=c++17 -O2 -I native/include -c native/src/sampling.cpp -o "$work/sampling_cpp.o" > "$work/build_sampling_cpp.log" 2>&1 &
wait
cat "$work"/build_*.log > "$out/kcheck_build.log"
grep -E "error" "$out/kcheck_build.log"
link() { local name=$1; shift; nvcc -arch=sm_90a "$@" -lcublas "${ncclLink[@]}" -o "$work/$name" >> "$out/kcheck_build.log" 2>&1 || echo "$name: link failed"; }
link kernel_check "$work/kernel_check.o" "${lib[@]}" "$work/sampling_cpp.o"
link gemv_check "$work/gemv_check.o" "${lib[@]}"
link decode_gemm_check "$work/decode_gemm_check.o" "${lib[@]}"
link mask_check "$work/mask_check.o" "${lib[@]}" "$work/sampling_cpp.o"
link prefill_attention_check "$work/prefill_attention_check.o"
link kv_ipc_check "$work/kv_ipc_check.o" "$work/kv_ipc.cu.o"
link all_reduce_check "$work/all_reduce_check.o" "$work/all_reduce.cu.o"
[ -f "$work/decode_attention_baseline.o" ] &&
  link decode_attention_check "$work/decode_attention_check.o" "$work/decode_attention_baseline.o" "${lib[@]}"
summary=()
runCheck() {  # name, memcheck args ("-" = no memcheck run), plain args...
  local name=$1 quick=$2; shift 2
  [ -x "$work/$name" ] || { summary+=("| $name | not built | |"); return; }
  timeout 240 "$work/$name" "$@" > "$out/$name.log" 2>&1
  local rc=$? mem="skipped"
  if [ "${SANITIZE:-1}" = 1 ] && [ "$quick" != - ]; then
    timeout 120 compute-sanitizer --tool memcheck --print-limit 20 "$work/$name" $quick > "$out/${name}_memcheck.log" 2>&1
    mem="rc $?: $(grep -E "ERROR SUMMARY" "$out/${name}_memcheck.log" | tail -n 1)"
  fi
  summary+=("| $name | $([ $rc = 0 ] && echo pass || echo "FAIL (rc $rc)") | $mem |")
}
runCheck kernel_check ""
runCheck gemv_check --check-only
runCheck decode_gemm_check --check-only
runCheck mask_check ""
runCheck decode_attention_check --quick
runCheck prefill_attention_check --small
runCheck kv_ipc_check -
export CUDA_MODULE_LOADING=EAGER CUDA_DEVICE_MAX_CONNECTIONS=32  # ranks sharing a device (all_reduce_check.cu)
runCheck all_reduce_check -
grep -hE "FAIL|ERROR" "$out"/*_check.log | head -20
echo "| check | result | memcheck |"
echo "|---|---|---|"
printf '%s\n' "${summary[@]}"
