// Fused q/k per-head RMSNorm (Qwen3) + optional QKV bias (Qwen2) + RoPE + paged KV write, one pass over the fused
// QKV GEMM output. Shapes: qkv [T, (heads + 2 kvHeads) * D] bf16 -> q [T, heads, D], K/V pool slots.
// Memory-bound: floor = T * (heads + 2 kvHeads) * D * 2 B read + the same written (Qwen3-0.6B: 16 KB per token).
// Head dims 64, 128 and 256 (16-byte aligned pointers) take the vector kernel: a lane holds 8 consecutive elements
// (one 16-byte load and store), D / 8 lanes cover a head, a warp covers 32 / (D / 8) heads per pass; the RoPE
// partner (j + D/2) of a lane's elements sits in lane ^ (D / 16) and comes by shuffle. A warp computes its token's
// D / 2 cos/sin pairs once (one or a few per lane, through shared memory; each lane then keeps its own 8 in
// registers) and uses them for all its passes, instead of a sincos per element per head. Few tokens: a token's
// passes are spread over up to one warp each; many tokens: one warp per token. Other head dims take the scalar
// kernel (one warp per head, 2-byte accesses). See NOTES-small-kernels.md for the timings.
#include <algorithm>

#include "common.cuh"
#include "kernels.h"

namespace dsg::cuda {

namespace {

// RoPE angle pos * invFreq, reduced exactly: invFreq / 2pi and pos * invFreq / 2pi are carried as float pairs
// (pos < 2^24 is exact, the products are split with fma), so the turn count's fraction keeps ~2^-25 absolute error at
// any position (a plain float product loses up to 2^-7 rad at position 131072, and sincosf's large-argument path is
// slow). sincospif then works on an argument in [-1, 1].
__device__ __forceinline__ void ropeCosSin(float pos, float invFreq, float& c, float& s) {
  constexpr float kInv2PiHi = 0.15915493667125702f, kInv2PiLo = 6.4206382432985265e-09f;
  const float th = invFreq * kInv2PiHi;
  const float tl = fmaf(invFreq, kInv2PiHi, -th) + invFreq * kInv2PiLo;
  const float ph = pos * th;
  const float pl = fmaf(pos, th, -ph) + pos * tl;
  const float turns = (ph - rintf(ph)) + pl;
  sincospif(2.f * turns, &s, &c);
}

// ---- Vector kernel (D = 64, 128, 256) ----

constexpr int kVecWarpsPerBlock = 4;
constexpr int kPassBatch = 4;       // passes whose loads a lane issues together
constexpr int kTargetWarps = 2048;  // enough warps to fill an H100/H200 (132 SMs x 16) at few tokens

// A lane's 8 elements of a head are 4 rotation pairs j = 4m .. 4m + 3 (m = the lane's index within its head), kept
// as one uint4 of bf16 pairs: interleaved layout elements (2j, 2j + 1) = 16 contiguous bytes at 8m; half layout
// elements j (8 bytes at 4m) and j + D/2 (8 bytes at D/2 + 4m). Unpacked, x[k] and x[k + 4] are pair k in both.
template <int D, bool kInterleaved>
__device__ __forceinline__ uint4 loadLane(const bf16* head, int m) {
  if constexpr (kInterleaved) {
    return *reinterpret_cast<const uint4*>(head + 8 * m);
  } else {
    const uint2 lo = *reinterpret_cast<const uint2*>(head + 4 * m);
    const uint2 hi = *reinterpret_cast<const uint2*>(head + D / 2 + 4 * m);
    return make_uint4(lo.x, lo.y, hi.x, hi.y);
  }
}
template <int D, bool kInterleaved>
__device__ __forceinline__ void storeLane(bf16* head, int m, const float* x) {
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const __nv_bfloat162 v = kInterleaved ? __floats2bfloat162_rn(x[k], x[k + 4])  // the inverse of unpackLane
                                          : __floats2bfloat162_rn(x[2 * k], x[2 * k + 1]);
    w[k] = *reinterpret_cast<const uint32_t*>(&v);
  }
  if constexpr (kInterleaved) {
    *reinterpret_cast<uint4*>(head + 8 * m) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
    *reinterpret_cast<uint2*>(head + 4 * m) = make_uint2(w[0], w[1]);
    *reinterpret_cast<uint2*>(head + D / 2 + 4 * m) = make_uint2(w[2], w[3]);
  }
}
template <bool kInterleaved>
__device__ __forceinline__ void unpackLane(const uint4& u, float* x) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[k]));
    if (kInterleaved) {  // word k = pair k
      x[k] = f.x;
      x[k + 4] = f.y;
    } else {  // words 0, 1 = elements j of pairs 0..3, words 2, 3 = elements j + D/2
      x[2 * k] = f.x;
      x[2 * k + 1] = f.y;
    }
  }
}

// Launch bounds: at most 80 registers (24 warps per SM).
template <int D, bool kInterleaved>
__global__ void __launch_bounds__(kVecWarpsPerBlock * 32, 6)
    qkNormRopeKvVecKernel(const bf16* __restrict__ qkv, const bf16* __restrict__ bias, const bf16* __restrict__ qNorm,
                          const bf16* __restrict__ kNorm, float eps, const int32_t* __restrict__ positions,
                          const int32_t* __restrict__ slots, int numTokens, int heads, int kvHeads,
                          const float* __restrict__ invFreq, int warpsPerToken, bf16* __restrict__ q,
                          bf16* __restrict__ kCache, bf16* __restrict__ vCache) {
  constexpr int kLanesPerHead = D / 8, kHeadsPerPass = 32 / kLanesPerHead, kHalf = D / 2, kAnglesPerLane = kHalf / 32;
  __shared__ float2 table[kVecWarpsPerBlock][kHalf];  // (cos, sin) of pair j for this warp's token
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int gw = blockIdx.x * kVecWarpsPerBlock + warp;
  const int t = gw / warpsPerToken, part = gw - t * warpsPerToken;
  const int totalHeads = heads + 2 * kvHeads, rotatedHeads = heads + kvHeads;
  const int passes = (totalHeads + kHeadsPerPass - 1) / kHeadsPerPass;
  const int sub = lane / kLanesPerHead;  // head of this lane within a pass
  const int m = lane % kLanesPerHead;    // this lane's pairs: 4m .. 4m + 3
  // Weights are never written by the previous kernel: fetch them before waiting for it.
  float freq[kAnglesPerLane];
#pragma unroll
  for (int a = 0; a < kAnglesPerLane; ++a) freq[a] = invFreq[lane + 32 * a];
  const uint4 zero = make_uint4(0, 0, 0, 0);
  float qw[8], kw[8];  // 1 where that norm is absent
  unpackLane<kInterleaved>(qNorm ? loadLane<D, kInterleaved>(qNorm, m) : zero, qw);
  unpackLane<kInterleaved>(kNorm ? loadLane<D, kInterleaved>(kNorm, m) : zero, kw);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    if (!qNorm) qw[i] = 1.f;
    if (!kNorm) kw[i] = 1.f;
  }
  waitPreviousGrid();
  allowNextGrid();
  if (t >= numTokens) return;  // whole warps: gw is warp-uniform
  const int64_t slot = slots[t];
  const float pos = (float)positions[t];
  const bf16* row = qkv + (int64_t)t * totalHeads * D;
  bf16* qRow = q + (int64_t)t * heads * D;
  float cs[4], sn[4];
  for (int p0 = part; p0 < passes; p0 += kPassBatch * warpsPerToken) {
    uint4 raw[kPassBatch];
#pragma unroll
    for (int b = 0; b < kPassBatch; ++b) {
      const int h = (p0 + b * warpsPerToken) * kHeadsPerPass + sub;
      raw[b] = p0 + b * warpsPerToken < passes && h < totalHeads ? loadLane<D, kInterleaved>(row + h * D, m) : zero;
    }
    if (p0 == part) {  // the token's cos/sin table, while the first loads are in flight
#pragma unroll
      for (int a = 0; a < kAnglesPerLane; ++a) {
        float c, s;
        ropeCosSin(pos, freq[a], c, s);
        table[warp][lane + 32 * a] = make_float2(c, s);
      }
      __syncwarp();
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 v = table[warp][4 * m + k];
        cs[k] = v.x;
        sn[k] = v.y;
      }
    }
#pragma unroll
    for (int b = 0; b < kPassBatch; ++b) {
      const int p = p0 + b * warpsPerToken;
      if (p >= passes) continue;  // warp-uniform
      const int h = p * kHeadsPerPass + sub;
      const bool valid = h < totalHeads;
      float x[8];
      unpackLane<kInterleaved>(raw[b], x);
      if (bias) {  // small and cached (L2), so loaded here rather than with the batch: fewer registers
        float xb[8];
        unpackLane<kInterleaved>(valid ? loadLane<D, kInterleaved>(bias + h * D, m) : zero, xb);
#pragma unroll
        for (int i = 0; i < 8; ++i) x[i] += xb[i];
      }
      const bool isQ = h < heads, isK = !isQ && h < rotatedHeads;
      if (p * kHeadsPerPass < rotatedHeads) {  // the pass holds q or k heads (warp-uniform); V passes skip this
        if (qNorm || kNorm) {
          float ss = 0.f;
#pragma unroll
          for (int i = 0; i < 8; ++i) ss += x[i] * x[i];
#pragma unroll
          for (int o = kLanesPerHead / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
          const bool normed = isQ ? qNorm != nullptr : (isK && kNorm != nullptr);
          const float inv = normed ? rsqrtf(ss / D + eps) : 1.f;
#pragma unroll
          for (int i = 0; i < 8; ++i) x[i] = x[i] * inv * (isQ ? qw[i] : kw[i]);
        }
        if (isQ || isK) {
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const float a = x[k], c = x[k + 4];
            x[k] = a * cs[k] - c * sn[k];
            x[k + 4] = c * cs[k] + a * sn[k];
          }
        }
      }
      if (!valid) continue;
      bf16* dst = isQ ? qRow + h * D
                      : (isK ? kCache + (slot * kvHeads + (h - heads)) * D
                             : vCache + (slot * kvHeads + (h - rotatedHeads)) * D);
      storeLane<D, kInterleaved>(dst, m, x);
    }
  }
}

// ---- Scalar kernel (any even D <= 256) ----

constexpr int kMaxPairsPerLane = 4;  // D / 2 / 32 for D = 256
constexpr int kWarpsPerBlock = 8;
constexpr int kTokensForOneBlockPerToken = 1024;

// One warp per head, 8 warps per block, each lane holding up to 4 rotation pairs in registers. Few tokens:
// blockIdx.y splits a token's heads over several blocks; many tokens: one block per token, each warp looping.
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
        ropeCosSin(pos, invFreq[j], cs, sn);
        const float ra = a * cs - c * sn, rc = c * cs + a * sn;
        a = ra;
        c = rc;
      }
      dst[e0] = __float2bfloat16(a);
      dst[e1] = __float2bfloat16(c);
    }
  }
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

}  // namespace

void launchQkNormRopeKvWrite(const bf16* qkv, const bf16* bias, const bf16* qNorm, const bf16* kNorm, float eps,
                             const int32_t* positions, const int32_t* slots, int numTokens, int heads, int kvHeads,
                             int headDim, RopeArgs rope, bf16* q, bf16* kCache, bf16* vCache, cudaStream_t stream) {
  if (numTokens <= 0) return;
  // Both kernels wait for the previous one (waitPreviousGrid): launched with programmatic dependent launch.
  const int totalHeads = heads + 2 * kvHeads;
  const bool vec = (headDim == 64 || headDim == 128 || headDim == 256) && aligned16(qkv) && aligned16(bias) &&
                   aligned16(qNorm) && aligned16(kNorm) && aligned16(q) && aligned16(kCache) && aligned16(vCache);
  if (vec) {
    const int passes = (totalHeads + 32 / (headDim / 8) - 1) / (32 / (headDim / 8));
    const int warpsPerToken = std::max(1, std::min(passes, (kTargetWarps + numTokens - 1) / numTokens));
    const int64_t warps = (int64_t)numTokens * warpsPerToken;
    const bool il = rope.interleaved;
    auto kernel = headDim == 64    ? (il ? qkNormRopeKvVecKernel<64, true> : qkNormRopeKvVecKernel<64, false>)
                  : headDim == 128 ? (il ? qkNormRopeKvVecKernel<128, true> : qkNormRopeKvVecKernel<128, false>)
                                   : (il ? qkNormRopeKvVecKernel<256, true> : qkNormRopeKvVecKernel<256, false>);
    launchKernel(kernel, dim3((unsigned)((warps + kVecWarpsPerBlock - 1) / kVecWarpsPerBlock)),
                 dim3(kVecWarpsPerBlock * 32), 0, stream, true, 0, qkv, bias, qNorm, kNorm, eps, positions, slots,
                 numTokens, heads, kvHeads, rope.invFreq, warpsPerToken, q, kCache, vCache);
    DSG_LAUNCHED("qkNormRopeKvVecKernel");
    return;
  }
  const int headBlocks = numTokens >= kTokensForOneBlockPerToken ? 1 : (totalHeads + kWarpsPerBlock - 1) / kWarpsPerBlock;
  launchKernel(qkNormRopeKvKernel, dim3((unsigned)numTokens, (unsigned)headBlocks), dim3(kWarpsPerBlock * 32), 0, stream,
               true, 0, qkv, bias, qNorm, kNorm, eps, positions, slots, heads, kvHeads, headDim, rope.invFreq,
               rope.interleaved, q, kCache, vCache);
  DSG_LAUNCHED("qkNormRopeKvKernel");
}

}  // namespace dsg::cuda
