// CPU kernels. Weights stay in their file dtype (f32, f16, bf16) and are widened to f32 inside the kernels;
// activations and accumulation are f32. x86-64 builds carry an AVX2/FMA/F16C version of each hot kernel, chosen
// at run time (cpuHasAvx2()); other CPUs run the portable version.
#pragma once
#include <cstdint>

#include "backend.h"
#include "thread_pool.h"

namespace dsg {

bool cpuHasAvx2();

/** y[m*ldy + n] = sum_k x[m*K + k] * W[n*K + k] (+ bias[n]) for m < M, n < N; W is [N, K] row-major in `wt`. */
void matmul(ThreadPool& pool, const float* x, int64_t M, int64_t K, const void* W, DType wt, int64_t N,
            const float* bias, float* y, int64_t ldy);

/** dst[i] = (float) src[i] for a row of n elements in dtype `t`. */
void toF32(const void* src, DType t, int64_t n, float* dst);

/**
 * Causal attention of `group` query heads that share one KV head, for one query token, over keys [0, numKeys).
 * q: [group, D] contiguous. Key j's K row is K + (pages[j / P] * P + j % P) * rowStride (likewise V).
 * out: [group, D]. scratch: attentionScratchFloats(group, D) floats. Online softmax over key blocks.
 */
void attendPaged(const float* q, int group, int64_t D, const float* K, const float* V, int64_t rowStride,
                 const int32_t* pages, int P, int32_t numKeys, float scale, float* out, float* scratch);
int64_t attentionScratchFloats(int group, int64_t D);

/** out = x / rms(x) * w over n elements (w in f32). out may alias x. */
void rmsNorm(const float* x, const float* w, int64_t n, float eps, float* out);

}  // namespace dsg
