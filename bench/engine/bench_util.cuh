// What the standalone GPU programs of bench/engine share: a status check that exits naming the call, a
// deterministic bf16 fill (values uniform in [-scale/2, scale/2) from a hash of the index and seed), and a cuBLAS
// handle on a stream with its own workspace.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                         \
  do {                                                                                \
    auto e_ = (x);                                                                    \
    if ((int)e_ != 0) {                                                               \
      std::fprintf(stderr, "%s:%d %s failed: %d\n", __FILE__, __LINE__, #x, (int)e_); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

__global__ void fillBf16(__nv_bfloat16* p, size_t n, unsigned seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned x = (unsigned)i * 2654435761u ^ seed;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    p[i] = __float2bfloat16(((x & 0xFFFF) / 65536.f - 0.5f) * scale);
  }
}

/** A cuBLAS handle bound to `stream` with a workspace of `workspaceBytes` (kept for the process's life). */
inline cublasHandle_t makeCublas(cudaStream_t stream, size_t workspaceBytes) {
  cublasHandle_t h;
  CK(cublasCreate(&h));
  CK(cublasSetStream(h, stream));
  void* ws;
  CK(cudaMalloc(&ws, workspaceBytes));
  CK(cublasSetWorkspace(h, ws, workspaceBytes));
  return h;
}
