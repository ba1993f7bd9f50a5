// cuBLAS GEMM wrapper (see gemm.h). Row-major Y[M,N] = X[M,K] W[N,K]^T is column-major Y^T = W^T(op T) X^T, so
// W is passed as the transposed first operand with leading dimension K.
#include <string>

#include "common.cuh"
#include "gemm.h"

namespace dsg::cuda {

namespace {
void checkCublas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw EngineError("LLM_ERR_DEVICE", std::string("cuBLAS error in ") + what + ": status " + std::to_string((int)st));
}
}  // namespace

Gemm::Gemm(size_t workspaceBytes) : workspaceBytes_(workspaceBytes) {
  checkCublas(cublasCreate(&handle_), "cublasCreate");
  DSG_CUDA(cudaMalloc(&workspace_, workspaceBytes_));
  checkCublas(cublasSetWorkspace(handle_, workspace_, workspaceBytes_), "cublasSetWorkspace");
  checkCublas(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(handle_);
  if (workspace_) cudaFree(workspace_);
}

void Gemm::setStream(cudaStream_t stream) { checkCublas(cublasSetStream(handle_, stream), "cublasSetStream"); }

void Gemm::setSmCountTarget(int sms) { checkCublas(cublasSetSmCountTarget(handle_, sms), "cublasSetSmCountTarget"); }

void Gemm::linearF32(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int m, int n, int k, float beta) {
  if (m <= 0) return;
  const float alpha = 1.f;
  checkCublas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k,
                           &beta, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx (f32 out)");
}

void Gemm::linearBf16(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int m, int n, int k) {
  if (m <= 0) return;
  const float alpha = 1.f, beta = 0.f;
  checkCublas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k,
                           &beta, y, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx (bf16 out)");
}

}  // namespace dsg::cuda
