// Fused q/k per-head RMSNorm (Qwen3) + optional QKV bias (Qwen2) + RoPE + paged KV write, one pass over the fused
// QKV GEMM output. Shapes: qkv [T, (heads + 2 kvHeads) * D] bf16 -> q [T, heads, D], K/V pool slots.
// Memory-bound: floor = T * (heads + 2 kvHeads) * D * 2 B read + the same written (Qwen3-0.6B: 8 KB per token).
// One warp per head, 8 warps per block, each lane holding up to 4 rotation pairs (D <= 256) in registers. Few tokens:
// blockIdx.y splits a token's heads over several blocks (batch 1: 4 blocks instead of 1); many tokens (prefill): one
// block per token, each warp looping over its heads (as many blocks as tokens). Programmatic dependent launch.
#include "common.cuh"
#include "kernels.h"

namespace dsg::cuda {

namespace {

constexpr int kMaxPairsPerLane = 4;  // D / 2 / 32 for D = 256
constexpr int kWarpsPerBlock = 8;
constexpr int kTokensForOneBlockPerToken = 1024;

__global__ void qkNormRopeKvKernel(const bf16* __restrict__ qkv, const bf16* __restrict__ bias,
                                   const bf16* __restrict__ qNorm, const bf16* __restrict__ kNorm, float eps,
                                   const int32_t* __restrict__ positions, const int32_t* __restrict__ slots, int heads,
                                   int kvHeads, int headDim, const float* __restrict__ invFreq, bool interleaved,
                                   bf16* __restrict__ q, bf16* __restrict__ kCache, bf16* __restrict__ vCache) {
  const int t = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int totalHeads = heads + 2 * kvHeads;
  const int half = headDim / 2;
  waitPreviousGrid();
  allowNextGrid();
  const float pos = (float)positions[t];
  const int64_t slot = slots[t];
  const bf16* row = qkv + (int64_t)t * totalHeads * headDim;
  for (int h = blockIdx.y * kWarpsPerBlock + (threadIdx.x >> 5); h < totalHeads; h += gridDim.y * kWarpsPerBlock) {
    const bool isQ = h < heads, isK = !isQ && h < heads + kvHeads;
    const bf16* src = row + h * headDim;
    const bf16* b = bias ? bias + h * headDim : nullptr;
    // Pair j of this lane: elements (e0, e1) = (j, j + half) or (2j, 2j + 1).
    float x0[kMaxPairsPerLane], x1[kMaxPairsPerLane];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPairsPerLane; ++i) {
      const int j = lane + 32 * i;
      x0[i] = x1[i] = 0.f;
      if (j < half) {
        const int e0 = interleaved ? 2 * j : j, e1 = interleaved ? 2 * j + 1 : j + half;
        x0[i] = __bfloat162float(src[e0]);
        x1[i] = __bfloat162float(src[e1]);
        if (b) {
          x0[i] += __bfloat162float(b[e0]);
          x1[i] += __bfloat162float(b[e1]);
        }
        ss += x0[i] * x0[i] + x1[i] * x1[i];
      }
    }
    const bf16* normW = isQ ? qNorm : (isK ? kNorm : nullptr);
    const float inv = normW ? rsqrtf(warpSum(ss) / headDim + eps) : 1.f;
    bf16* dst;
    if (isQ) dst = q + ((int64_t)t * heads + h) * headDim;
    else if (isK) dst = kCache + (slot * kvHeads + (h - heads)) * headDim;
    else dst = vCache + (slot * kvHeads + (h - heads - kvHeads)) * headDim;
#pragma unroll
    for (int i = 0; i < kMaxPairsPerLane; ++i) {
      const int j = lane + 32 * i;
      if (j >= half) continue;
      const int e0 = interleaved ? 2 * j : j, e1 = interleaved ? 2 * j + 1 : j + half;
      float a = x0[i], c = x1[i];
      if (normW) {
        a = a * inv * __bfloat162float(normW[e0]);
        c = c * inv * __bfloat162float(normW[e1]);
      }
      if (h < heads + kvHeads) {
        float sn, cs;
        sincosf(pos * invFreq[j], &sn, &cs);
        const float ra = a * cs - c * sn, rc = c * cs + a * sn;
        a = ra;
        c = rc;
      }
      dst[e0] = __float2bfloat16(a);
      dst[e1] = __float2bfloat16(c);
    }
  }
}

}  // namespace

void launchQkNormRopeKvWrite(const bf16* qkv, const bf16* bias, const bf16* qNorm, const bf16* kNorm, float eps,
                             const int32_t* positions, const int32_t* slots, int numTokens, int heads, int kvHeads,
                             int headDim, RopeArgs rope, bf16* q, bf16* kCache, bf16* vCache, cudaStream_t stream) {
  if (numTokens <= 0) return;
  cudaLaunchConfig_t cfg{};
  const int headBlocks = numTokens >= kTokensForOneBlockPerToken ? 1 : (heads + 2 * kvHeads + kWarpsPerBlock - 1) / kWarpsPerBlock;
  cfg.gridDim = dim3((unsigned)numTokens, (unsigned)headBlocks);
  cfg.blockDim = dim3(kWarpsPerBlock * 32);
  cfg.stream = stream;
  cudaLaunchAttribute pdl;
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &pdl;
  cfg.numAttrs = 1;
  DSG_CUDA(cudaLaunchKernelEx(&cfg, qkNormRopeKvKernel, qkv, bias, qNorm, kNorm, eps, positions, slots, heads, kvHeads,
                              headDim, rope.invFreq, rope.interleaved, q, kCache, vCache));
}

}  // namespace dsg::cuda
