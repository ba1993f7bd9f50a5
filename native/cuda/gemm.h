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
  /** The SMs cuBLAS may size its grids for (persistent / stream-K GEMMs assume every CTA of the grid resident). */
  void setSmCountTarget(int sms);
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

/** Most tokens the small-batch GEMV (gemv.cu) takes (it is not always the faster one up to there). */
constexpr int kGemvMaxTokens = 32;
/** Most tokens for which the backend uses the GEMV instead of cuBLAS: the measured crossover
 *  (native/cuda/NOTES-decode-small-batch.md; the whole decode step, Qwen3-0.6B shape, H200). */
constexpr int kGemvCrossoverTokens = 8;

/** How the GEMV builds its bf16 input x [m, k] on the fly. */
enum class GemvInputKind {
  Bf16,     // data: bf16 [m, k]
  RmsNorm,  // data: f32 residual [m, k]; x = bf16(r * rsqrt(mean(r^2) + eps) * normWeight) (launchRmsNorm's function)
  SiluMul,  // data: bf16 gate|up [m, 2k]; x = bf16(silu(gate) * up) (launchSiluMul's function)
};
struct GemvInput {
  GemvInputKind kind;
  const void* data;
  const __nv_bfloat16* normWeight;  // RmsNorm only
  float eps;                        // RmsNorm only
};

/** Whether launchGemv takes this shape: m <= kGemvMaxTokens, n % 16 == 0, k % 256 == 0, k <= 3072 (x fits in shared memory). */
bool gemvSupports(int m, int n, int k);
/** How a GEMV launch overlaps its neighbours on the stream (programmatic dependent launch). */
enum class GemvOverlap {
  None,       // an ordinary launch
  AfterWait,  // may start (and stream its weights) while the previous kernel runs; lets the next one start once
              // every block has passed its wait for the previous kernel
  AtStart,    // as AfterWait, but lets the next kernel start as soon as every block is running
};
/**
 * y = x W^T for m tokens, W [n, k] bf16 row-major, f32 accumulation: y bf16 [m, n] (yBf16), or added into the f32
 * [m, n] buffer (yAddF32: the residual add). Exactly one of the two outputs. The kernel reads x and y only after the
 * previous kernel on the stream has completed, whatever the overlap.
 */
void launchGemv(const GemvInput& in, const __nv_bfloat16* w, int m, int n, int k, __nv_bfloat16* yBf16, float* yAddF32,
                GemvOverlap overlap, cudaStream_t stream);

/**
 * Mid-batch linear layers (decode_gemm.cu): y = x W^T for 9..kDecodeGemmMaxTokens tokens, W [n, k] bf16 row-major,
 * x [m, k] bf16, f32 accumulation, with the decode step's neighbours fused in (see the file's header):
 * - input RMSNorm: x holds bf16(residual * normWeight) and ssqIn [k / 32][m] the residual's partial sums of squares
 *   (written by the kernel that updated the residual); each output row is scaled by rsqrt(sum / k + eps);
 * - outputs: Bf16 y [m, n]; SiluGateUp: W's rows are gate (first n / 2) then up, y [m, n / 2] = silu(gate) * up;
 *   AddResidual: residual [m, n] f32 += x W^T, and, when nextNorm is given, xNext [m, n] = bf16(residual *
 *   nextNorm) with ssqOut [n / 32][m] for the next layer's input.
 */
constexpr int kDecodeGemmMaxTokens = 256;
// The backend's crossover: decode steps of kGemvCrossoverTokens + 1 .. 64 tokens run their linears here (on an H200
// 1.14-1.26x faster than cuBLAS with its RMSNorm / SiLU kernels for the step's 4 x 28 linears); above 64 tokens
// cuBLAS is still faster (NOTES-decode-gemm.md).
constexpr int kDecodeGemmPreferredMaxTokens = 64;
enum class DecodeGemmOut { Bf16, SiluGateUp, AddResidual };
struct DecodeGemmArgs {
  const __nv_bfloat16* x;
  const float* ssqIn;  // optional: RMSNorm scale of the output rows
  float eps;
  DecodeGemmOut out;
  __nv_bfloat16* y;                // Bf16, SiluGateUp
  float* residual;                 // AddResidual
  const __nv_bfloat16* nextNorm;   // AddResidual, optional
  __nv_bfloat16* xNext;            // with nextNorm
  float* ssqOut;                   // with nextNorm
};
/** Tile choice; 0 = automatic. nTile 64 or 128 weight rows, mTile 32/64/128/256 tokens, cluster 1/2/4/8/16 k-splits. */
struct DecodeGemmTile {
  int nTile = 0, mTile = 0, cluster = 0;
};
/**
 * Whether this build's kernels for the current device have the wgmma main loop (compiled for sm_90a); false means
 * launchDecodeGemm's kernels are empty. Launches a kernel and synchronizes: call once at start-up, not in a capture.
 */
bool decodeGemmAvailable();
/** Whether launchDecodeGemm takes this shape: 1 <= m <= kDecodeGemmMaxTokens, n % 64 == 0, k % 64 == 0. */
bool decodeGemmSupports(int m, int n, int k);
/** The tile launchDecodeGemm picks for this shape on the current device (tile fields 0 = automatic). */
DecodeGemmTile decodeGemmTile(int m, int n, int k, DecodeGemmTile want = {});
/** Launched with programmatic dependent launch: weights stream before the previous kernel has finished. */
void launchDecodeGemm(const DecodeGemmArgs& a, const __nv_bfloat16* w, int m, int n, int k, cudaStream_t stream,
                      DecodeGemmTile tile = {});

}  // namespace dsg::cuda
