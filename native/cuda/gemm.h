// Linear layers through cuBLAS: Y[M, N] = X[M, K] * W[N, K]^T (+ beta * Y), bf16 operands, f32 accumulation,
// Y in bf16 or f32. With an f32 Y and beta = 1 the GEMM accumulates into the f32 residual stream (the residual
// add is free). The handle uses a fixed workspace so calls can be captured in CUDA graphs.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace dsg::cuda {

class Gemm {
 public:
  explicit Gemm(size_t workspaceBytes = 32u << 20);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  void setStream(cudaStream_t stream);
  /** Y = X W^T + beta Y; x [m, k] bf16, w [n, k] bf16, y [m, n] f32. */
  void linearF32(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int m, int n, int k, float beta);
  /** Y = X W^T; y [m, n] bf16. */
  void linearBf16(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int m, int n, int k);
  size_t workspaceBytes() const { return workspaceBytes_; }

 private:
  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspaceBytes_;
};

}  // namespace dsg::cuda
