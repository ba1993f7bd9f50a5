// Decode-step GEMMs of the Qwen3-0.6B shape at mid batch sizes: what cublasGemmEx (native/cuda/gemm.cu) picks
// against every algorithm cublasLt's heuristic offers, per (M, N, K). Weights rotate over enough copies to leave
// the L2 (a decode step streams 28 layers of distinct weights), timed with events over graph replays, median.
// Output bf16 (beta 0) for qkv and gate|up, f32 accumulated into the residual (beta 1) for o and down, as the engine.
// Build and run on the GPU machine (repository root):
//   nvcc -std=c++17 -O3 -arch=sm_90 -I native/include -I native/cuda -I native/cuda/tests bench/engine/gemm_lt_bench.cu \
//     -lcublasLt -lcublas -o /tmp/glt && /tmp/glt
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_util.cuh"
#include "check_util.cuh"

using bf16 = __nv_bfloat16;

struct Shape {
  const char* name;
  int n, k;
  bool addF32;  // y (f32) += x W^T, else y (bf16) = x W^T
};

/** Median microseconds per launch over graph replays of copies * 4 launches (weights rotating over the copies). */
template <class F>
static float timeIt(cudaStream_t st, int copies, F&& launch) {
  const int n = copies * 4;
  return (float)(check::medianReplayUs(st, [&] { for (int i = 0; i < n; ++i) launch(i % copies); }, 7, 2, [] {}) / n);
}

int main() {
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const size_t wsBytes = 32u << 20;
  cublasHandle_t h = makeCublas(st, wsBytes);
  void* ws;  // cublasLt's own workspace
  CK(cudaMalloc(&ws, wsBytes));
  cublasLtHandle_t lt;
  CK(cublasLtCreate(&lt));
  const Shape shapes[] = {{"qkv", 4096, 1024, false}, {"o", 1024, 2048, true}, {"gate_up", 6144, 1024, false},
                          {"down", 1024, 3072, true}, {"lm_head", 151936, 1024, false}};
  const int ms[] = {16, 32, 64, 96, 128, 136, 160, 192, 224, 256};
  std::printf("| gemm | M | cublasGemmEx us | best Lt us (algo #) | Lt algos | weight floor us @4.2TB/s | FLOP floor us @790 |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  double sumEx = 0, sumLt = 0;
  for (const Shape& s : shapes) {
    const size_t wElems = (size_t)s.n * s.k;
    const int copies = std::max(1, (int)((256ull << 20) / (wElems * 2)));
    std::vector<bf16*> w(copies);
    for (auto& p : w) {
      CK(cudaMalloc(&p, wElems * 2));
      fillBf16<<<1024, 256>>>(p, wElems, 7, 0.1f);
    }
    bf16* x;
    void* y;
    CK(cudaMalloc(&x, (size_t)256 * s.k * 2));
    CK(cudaMalloc(&y, (size_t)256 * s.n * 4));
    fillBf16<<<256, 256>>>(x, (size_t)256 * s.k, 9, 0.1f);
    CK(cudaMemset(y, 0, (size_t)256 * s.n * 4));
    CK(cudaDeviceSynchronize());
    const float alpha = 1.f, beta = s.addF32 ? 1.f : 0.f;
    const cudaDataType_t yType = s.addF32 ? CUDA_R_32F : CUDA_R_16BF;
    for (int m : ms) {
      const float tEx = timeIt(st, copies, [&](int i) {
        CK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.n, m, s.k, &alpha, w[i], CUDA_R_16BF, s.k, x, CUDA_R_16BF, s.k,
                        &beta, y, yType, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      });
      cublasLtMatmulDesc_t op;
      CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
      CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA));
      CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB));
      cublasLtMatrixLayout_t la, lb, lc;
      CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.k, s.n, s.k));
      CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.k, m, s.k));
      CK(cublasLtMatrixLayoutCreate(&lc, yType, s.n, m, s.n));
      cublasLtMatmulPreference_t pref;
      CK(cublasLtMatmulPreferenceCreate(&pref));
      CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsBytes, sizeof wsBytes));
      cublasLtMatmulHeuristicResult_t res[16];
      int found = 0;
      CK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 16, res, &found));
      float best = 1e30f;
      int bestI = -1;
      for (int a = 0; a < found; ++a) {
        if (res[a].state != CUBLAS_STATUS_SUCCESS) continue;
        const float t = timeIt(st, copies, [&](int i) {
          CK(cublasLtMatmul(lt, op, &alpha, w[i], la, x, lb, &beta, y, lc, y, lc, &res[a].algo, ws, wsBytes, st));
        });
        if (t < best) {
          best = t;
          bestI = a;
        }
      }
      const double flopUs = 2.0 * m * s.n * s.k / 790e12 * 1e6, byteUs = wElems * 2 / 4.2e12 * 1e6;
      std::printf("| %s | %d | %.2f | %.2f (#%d) | %d | %.2f | %.2f |\n", s.name, m, tEx, best, bestI, found, byteUs, flopUs);
      if (m == 256 || m == 136) {
        const int reps = std::string(s.name) == "lm_head" ? 1 : 28;
        sumEx += reps * tEx;
        sumLt += reps * best;
      }
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
    }
    for (auto& p : w) cudaFree(p);
    cudaFree(x);
    cudaFree(y);
  }
  std::printf("per step (28 layers + lm_head), M 136 and 256 summed: cublasGemmEx %.0f us, best Lt %.0f us\n", sumEx, sumLt);
  return 0;
}
