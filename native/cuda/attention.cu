// Paged attention over a ragged batch (prefill chunks with a cached prefix, and decode tokens), plus the split-KV
// merge. Shapes: q [T, heads, D] bf16 (D in 8..256, a power of two); K/V pool [slots, kvHeads, D] bf16 per layer; out [T, heads, D] bf16.
// One block = (query tile of one sequence, one KV head, one KV split): its 16 query rows are (token, head of the
// GQA group) pairs, so each K/V tile is read once for the whole group. K/V tiles of 32 keys are gathered through
// the page table into shared memory; each warp owns 4 query rows; lane j scores key j, then the warp accumulates
// P*V with each lane owning D/32 output dims (online softmax in f32, base 2).
// Floor (decode, memory-bound): KV bytes read once per KV head = kvLen * kvHeads * D * 4 B per sequence per layer.
// That kernel runs on CUDA-core FMAs; prefill chunks with head_dim 64/128 take prefillAttentionTcKernel (tensor cores).
#include <cfloat>
#include <type_traits>

#include "common.cuh"
#include "kernels.h"

namespace dsg::cuda {

namespace {

constexpr int kRows = 16;          // query rows per block
constexpr int kWarps = 4;
constexpr int kRowsPerWarp = kRows / kWarps;
constexpr int kKeyTile = 32;       // keys per shared-memory tile (one per lane)
constexpr int kPad = 8;            // bf16 padding per K/V row: 16 B, keeps 16-byte row reads conflict-free

template <int D>
constexpr size_t attnSmemBytes() {
  return kRows * D * sizeof(float) + 2 * kKeyTile * (D + kPad) * sizeof(bf16);
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32) attentionKernel(
    const bf16* __restrict__ q, const bf16* __restrict__ kCache, const bf16* __restrict__ vCache,
    const int4* __restrict__ seqs, const int32_t* __restrict__ pageTable, int pageSize, int numTokens, int heads,
    int kvHeads, float scaleLog2, int numSplits, bf16* __restrict__ out, float* __restrict__ partO,
    float* __restrict__ partLse) {
  constexpr int kDimsPerLane = D >= 32 ? D / 32 : 1;  // lanes >= D own no output dim when D < 32
  extern __shared__ __align__(16) unsigned char smem[];
  float* sQ = reinterpret_cast<float*>(smem);                          // [kRows][D], pre-scaled
  bf16* sK = reinterpret_cast<bf16*>(smem + kRows * D * sizeof(float));  // [kKeyTile][D + kPad]
  bf16* sV = sK + kKeyTile * (D + kPad);

  const int group = heads / kvHeads;
  const int tokensPerTile = kRows / group;
  const int s = blockIdx.z / numSplits, split = blockIdx.z % numSplits;
  const int kvh = blockIdx.y;
  const int4 seq = seqs[s];  // qStart, qLen, kvLen, pageStart
  const int t0 = blockIdx.x * tokensPerTile;
  if (t0 >= seq.y) return;
  const int nTok = min(tokensPerTile, seq.y - t0);
  const int startPos = seq.z - seq.y;
  const int kEnd = startPos + t0 + nTok;  // keys [0, kEnd) are visible to some row of the tile
  int chunk = (kEnd + numSplits - 1) / numSplits;
  chunk = (chunk + kKeyTile - 1) / kKeyTile * kKeyTile;
  const int kBegin = split * chunk, kStop = min(kEnd, kBegin + chunk);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool ownsDims = lane * kDimsPerLane < D;
  // Load the tile's query rows (row r = token r / group, head kvh * group + r % group), scaled into base 2.
  for (int idx = threadIdx.x; idx < kRows * (D / 8); idx += blockDim.x) {
    const int r = idx / (D / 8), c = idx % (D / 8);
    const int tq = r / group;
    float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (tq < nTok) {
      const int64_t token = seq.x + t0 + tq;
      const int head = kvh * group + r % group;
      unpack8(reinterpret_cast<const uint4*>(q + (token * heads + head) * D)[c], f);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sQ[r * D + c * 8 + i] = f[i] * scaleLog2;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDimsPerLane];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int d = 0; d < kDimsPerLane; ++d) acc[i][d] = 0.f;
  }

  for (int kt = kBegin; kt < kStop; kt += kKeyTile) {
    __syncthreads();  // previous tile fully consumed (and sQ written, on the first pass)
    for (int idx = threadIdx.x; idx < kKeyTile * (D / 8); idx += blockDim.x) {
      const int key = idx / (D / 8), c = idx % (D / 8);
      const int kk = kt + key;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (kk < kStop) {
        const int64_t page = pageTable[seq.w + kk / pageSize];
        const int64_t off = ((page * pageSize + kk % pageSize) * kvHeads + kvh) * D + c * 8;
        kv = *reinterpret_cast<const uint4*>(kCache + off);
        vv = *reinterpret_cast<const uint4*>(vCache + off);
      }
      *reinterpret_cast<uint4*>(sK + key * (D + kPad) + c * 8) = kv;
      *reinterpret_cast<uint4*>(sV + key * (D + kPad) + c * 8) = vv;
    }
    __syncthreads();
    const int myKey = kt + lane;
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp * kRowsPerWarp + i;
      const int tq = r / group;
      if (tq >= nTok) continue;  // warp-uniform
      const int qpos = startPos + t0 + tq;
      const float* qr = sQ + r * D;
      const bf16* kr = sK + lane * (D + kPad);
      float dot = 0.f;
#pragma unroll
      for (int c = 0; c < D / 8; ++c) {
        float kf[8];
        unpack8(*reinterpret_cast<const uint4*>(kr + c * 8), kf);
        const float4 q0 = *reinterpret_cast<const float4*>(qr + c * 8);
        const float4 q1 = *reinterpret_cast<const float4*>(qr + c * 8 + 4);
        dot += q0.x * kf[0] + q0.y * kf[1] + q0.z * kf[2] + q0.w * kf[3] + q1.x * kf[4] + q1.y * kf[5] +
               q1.z * kf[6] + q1.w * kf[7];
      }
      const bool valid = myKey < kStop && myKey <= qpos;
      const float score = valid ? dot : -INFINITY;
      const float mNew = fmaxf(m[i], warpMax(score));
      if (mNew == -INFINITY) continue;  // nothing visible to this row yet (warp-uniform)
      const float alpha = exp2f(m[i] - mNew);
      const float p = valid ? exp2f(score - mNew) : 0.f;
      l[i] = l[i] * alpha + warpSum(p);
      m[i] = mNew;
#pragma unroll
      for (int d = 0; d < kDimsPerLane; ++d) acc[i][d] *= alpha;
#pragma unroll 8
      for (int jj = 0; jj < kKeyTile; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        if (!ownsDims) continue;
        const bf16* vr = sV + jj * (D + kPad) + lane * kDimsPerLane;
        if constexpr (kDimsPerLane >= 2) {
#pragma unroll
          for (int d = 0; d < kDimsPerLane; d += 2) {
            const float2 v2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(vr + d));
            acc[i][d] += pj * v2.x;
            acc[i][d + 1] += pj * v2.y;
          }
        } else {
          acc[i][0] += pj * __bfloat162float(vr[0]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp * kRowsPerWarp + i;
    const int tq = r / group;
    if (tq >= nTok) continue;
    const int64_t token = seq.x + t0 + tq;
    const int head = kvh * group + r % group;
    const float invL = l[i] > 0.f ? 1.f / l[i] : 0.f;
    if (numSplits == 1) {
      bf16* o = out + (token * heads + head) * D + lane * kDimsPerLane;
      if (ownsDims) {
#pragma unroll
        for (int d = 0; d < kDimsPerLane; ++d) o[d] = __float2bfloat16(acc[i][d] * invL);
      }
    } else {
      const int64_t row = ((int64_t)split * numTokens + token) * heads + head;
      float* o = partO + row * D + lane * kDimsPerLane;
      if (ownsDims) {
#pragma unroll
        for (int d = 0; d < kDimsPerLane; ++d) o[d] = acc[i][d] * invL;
      }
      if (lane == 0) partLse[row] = l[i] > 0.f ? m[i] + log2f(l[i]) : -INFINITY;
    }
  }
}

// Prefill on tensor cores (flash-attention-2 style): a block = 64 query rows ((token, GQA head) pairs of one KV
// head), 4 warps of 16 rows each; K/V tiles of 64 keys staged in shared memory through the page table;
// S = Q K^T and O += P V with mma.sync m16n8k16 (bf16 in, f32 accumulate), online softmax on the S fragments in
// registers (the S accumulators are re-packed as the A operand of P V without a trip through memory).
// Used for single-split launches with a prefill chunk (maxQLen > 1), head_dim 64 or 128, GQA group dividing 64.
constexpr int kTcRows = 64;
constexpr int kTcKeys = 64;

template <int D>
constexpr size_t tcSmemBytes() {
  return (size_t)(kTcRows + 2 * kTcKeys) * (D + kPad) * sizeof(bf16);
}

__device__ __forceinline__ void mmaBf16(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t packBf16(bf16 lo, bf16 hi) {
  __nv_bfloat162 h;
  h.x = lo;
  h.y = hi;
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32) prefillAttentionTcKernel(
    const bf16* __restrict__ q, const bf16* __restrict__ kCache, const bf16* __restrict__ vCache,
    const int4* __restrict__ seqs, const int32_t* __restrict__ pageTable, int pageSize, int heads, int kvHeads,
    float scaleLog2, bf16* __restrict__ out) {
  constexpr int S = D + kPad;  // shared-memory row stride (elements)
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + kTcRows * S;
  bf16* sV = sK + kTcKeys * S;
  const int group = heads / kvHeads;
  const int tokensPerTile = kTcRows / group;
  const int sIdx = blockIdx.z, kvh = blockIdx.y;
  const int4 seq = seqs[sIdx];  // qStart, qLen, kvLen, pageStart
  const int t0 = blockIdx.x * tokensPerTile;
  if (t0 >= seq.y) return;
  const int nTok = min(tokensPerTile, seq.y - t0);
  const int startPos = seq.z - seq.y;
  const int kEnd = startPos + t0 + nTok;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;

  for (int idx = threadIdx.x; idx < kTcRows * (D / 8); idx += blockDim.x) {
    const int r = idx / (D / 8), c = idx % (D / 8);
    const int tq = r / group;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (tq < nTok) {
      const int64_t token = seq.x + t0 + tq;
      v = *reinterpret_cast<const uint4*>(q + (token * heads + kvh * group + r % group) * D + c * 8);
    }
    *reinterpret_cast<uint4*>(sQ + r * S + c * 8) = v;
  }

  const int rA = warp * 16 + g, rB = rA + 8;
  const bool validA = rA / group < nTok, validB = rB / group < nTok;
  const int qposA = startPos + t0 + rA / group, qposB = startPos + t0 + rB / group;
  float mA = -INFINITY, mB = -INFINITY, lA = 0.f, lB = 0.f;
  float o[D / 8][4];
#pragma unroll
  for (int nd = 0; nd < D / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;

  for (int kt = 0; kt < kEnd; kt += kTcKeys) {
    __syncthreads();  // previous K/V tile consumed (and sQ written, on the first pass)
    for (int idx = threadIdx.x; idx < kTcKeys * (D / 8); idx += blockDim.x) {
      const int key = idx / (D / 8), c = idx % (D / 8);
      const int kk = kt + key;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (kk < kEnd) {
        const int64_t page = pageTable[seq.w + kk / pageSize];
        const int64_t off = ((page * pageSize + kk % pageSize) * kvHeads + kvh) * D + c * 8;
        kv = *reinterpret_cast<const uint4*>(kCache + off);
        vv = *reinterpret_cast<const uint4*>(vCache + off);
      }
      *reinterpret_cast<uint4*>(sK + key * S + c * 8) = kv;
      *reinterpret_cast<uint4*>(sV + key * S + c * 8) = vv;
    }
    __syncthreads();

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float sc[kTcKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTcKeys / 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t a0 = ld32(sQ + rA * S + ks * 16 + 2 * t), a1 = ld32(sQ + rB * S + ks * 16 + 2 * t);
      const uint32_t a2 = ld32(sQ + rA * S + ks * 16 + 2 * t + 8), a3 = ld32(sQ + rB * S + ks * 16 + 2 * t + 8);
#pragma unroll
      for (int nt = 0; nt < kTcKeys / 8; ++nt) {
        const bf16* kr = sK + (nt * 8 + g) * S + ks * 16 + 2 * t;
        mmaBf16(sc[nt], a0, a1, a2, a3, ld32(kr), ld32(kr + 8));
      }
    }
    // Mask, scale into base 2, online softmax (rows rA: elements 0/1, rB: elements 2/3; a row spans a lane quad).
    float tmA = -INFINITY, tmB = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kTcKeys / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = kt + nt * 8 + 2 * t + (e & 1);
        const bool ok = e < 2 ? (validA && key <= qposA) : (validB && key <= qposB);
        sc[nt][e] = ok ? sc[nt][e] * scaleLog2 : -INFINITY;
      }
      tmA = fmaxf(tmA, fmaxf(sc[nt][0], sc[nt][1]));
      tmB = fmaxf(tmB, fmaxf(sc[nt][2], sc[nt][3]));
    }
    tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, 1));
    tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, 2));
    tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, 1));
    tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, 2));
    const float nmA = fmaxf(mA, tmA), nmB = fmaxf(mB, tmB);
    // A row with nothing visible yet keeps m = -inf: use 0 as the exponent base so no NaN appears.
    const float baseA = nmA == -INFINITY ? 0.f : nmA, baseB = nmB == -INFINITY ? 0.f : nmB;
    const float alphaA = exp2f(mA - baseA), alphaB = exp2f(mB - baseB);
    float sumA = 0.f, sumB = 0.f;
#pragma unroll
    for (int nt = 0; nt < kTcKeys / 8; ++nt) {
      sc[nt][0] = exp2f(sc[nt][0] - baseA);
      sc[nt][1] = exp2f(sc[nt][1] - baseA);
      sc[nt][2] = exp2f(sc[nt][2] - baseB);
      sc[nt][3] = exp2f(sc[nt][3] - baseB);
      sumA += sc[nt][0] + sc[nt][1];
      sumB += sc[nt][2] + sc[nt][3];
    }
    sumA += __shfl_xor_sync(0xffffffffu, sumA, 1);
    sumA += __shfl_xor_sync(0xffffffffu, sumA, 2);
    sumB += __shfl_xor_sync(0xffffffffu, sumB, 1);
    sumB += __shfl_xor_sync(0xffffffffu, sumB, 2);
    lA = lA * alphaA + sumA;
    lB = lB * alphaB + sumB;
    mA = nmA;
    mB = nmB;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      o[nd][0] *= alphaA;
      o[nd][1] *= alphaA;
      o[nd][2] *= alphaB;
      o[nd][3] *= alphaB;
    }
    // O += P V: P's accumulator fragments of key blocks 2kk and 2kk + 1 form the A operand of one k16 step.
#pragma unroll
    for (int kk = 0; kk < kTcKeys / 16; ++kk) {
      const uint32_t a0 = packBf16(sc[2 * kk][0], sc[2 * kk][1]), a1 = packBf16(sc[2 * kk][2], sc[2 * kk][3]);
      const uint32_t a2 = packBf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      const uint32_t a3 = packBf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
      const bf16* v0 = sV + (kk * 16 + 2 * t) * S + g;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        const bf16* vp = v0 + nd * 8;
        const uint32_t b0 = packBf16(vp[0], vp[S]);
        const uint32_t b1 = packBf16(vp[8 * S], vp[9 * S]);
        mmaBf16(o[nd], a0, a1, a2, a3, b0, b1);
      }
    }
  }

  const float invA = lA > 0.f ? 1.f / lA : 0.f, invB = lB > 0.f ? 1.f / lB : 0.f;
  if (validA) {
    const int64_t token = seq.x + t0 + rA / group;
    bf16* dst = out + (token * heads + kvh * group + rA % group) * D + 2 * t;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
      *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) = __floats2bfloat162_rn(o[nd][0] * invA, o[nd][1] * invA);
  }
  if (validB) {
    const int64_t token = seq.x + t0 + rB / group;
    bf16* dst = out + (token * heads + kvh * group + rB % group) * D + 2 * t;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
      *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) = __floats2bfloat162_rn(o[nd][2] * invB, o[nd][3] * invB);
  }
}

// One warp per (token, head): weights 2^(lse_i - max lse) over the splits.
template <int D>
__global__ void attentionMergeKernel(const float* __restrict__ partO, const float* __restrict__ partLse, int numSplits,
                                     int numTokens, int heads, bf16* __restrict__ out) {
  constexpr int kDimsPerLane = D >= 32 ? D / 32 : 1;
  const int lane = threadIdx.x & 31;
  const bool ownsDims = lane * kDimsPerLane < D;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int64_t rows = (int64_t)numTokens * heads;
  if (row >= rows) return;
  float mx = -INFINITY;
  for (int sp = 0; sp < numSplits; ++sp) mx = fmaxf(mx, partLse[sp * rows + row]);
  float acc[kDimsPerLane];
#pragma unroll
  for (int d = 0; d < kDimsPerLane; ++d) acc[d] = 0.f;
  float wsum = 0.f;
  for (int sp = 0; sp < numSplits; ++sp) {
    const float lse = partLse[sp * rows + row];
    if (lse == -INFINITY) continue;
    const float w = exp2f(lse - mx);
    wsum += w;
    const float* o = partO + (sp * rows + row) * D + lane * kDimsPerLane;
    if (!ownsDims) continue;
#pragma unroll
    for (int d = 0; d < kDimsPerLane; ++d) acc[d] += w * o[d];
  }
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  if (!ownsDims) return;
  bf16* o = out + row * D + lane * kDimsPerLane;
#pragma unroll
  for (int d = 0; d < kDimsPerLane; ++d) o[d] = __float2bfloat16(acc[d] * inv);
}

template <int D>
void launchAttentionD(const bf16* q, const bf16* kCache, const bf16* vCache, const AttnBatch& b, int numTokens,
                      int heads, int kvHeads, float scale, int numSplits, bf16* out, float* partO, float* partLse,
                      cudaStream_t stream) {
  const int group = heads / kvHeads;
  if constexpr (D == 64 || D == 128) {
    if (numSplits == 1 && b.maxQLen > 1 && kTcRows % group == 0) {
      const int tcTokens = kTcRows / group;
      const dim3 tcGrid((b.maxQLen + tcTokens - 1) / tcTokens, kvHeads, b.numSeqs);
      prefillAttentionTcKernel<D><<<tcGrid, kWarps * 32, tcSmemBytes<D>(), stream>>>(
          q, kCache, vCache, b.seqs, b.pageTable, b.pageSize, heads, kvHeads, scale * 1.4426950408889634f, out);
      DSG_LAUNCHED("prefillAttentionTcKernel");
      return;
    }
  }
  const int tokensPerTile = kRows / group;
  const dim3 grid((b.maxQLen + tokensPerTile - 1) / tokensPerTile, kvHeads, b.numSeqs * numSplits);
  attentionKernel<D><<<grid, kWarps * 32, attnSmemBytes<D>(), stream>>>(
      q, kCache, vCache, b.seqs, b.pageTable, b.pageSize, numTokens, heads, kvHeads, scale * 1.4426950408889634f,
      numSplits, out, partO, partLse);
  DSG_LAUNCHED("attentionKernel");
}

// Head sizes the kernels are instantiated for: f(std::integral_constant<int, D>) for the matching D.
template <class F>
void withHeadDim(int headDim, F&& f) {
  switch (headDim) {
    case 8: f(std::integral_constant<int, 8>()); break;
    case 16: f(std::integral_constant<int, 16>()); break;
    case 32: f(std::integral_constant<int, 32>()); break;
    case 64: f(std::integral_constant<int, 64>()); break;
    case 128: f(std::integral_constant<int, 128>()); break;
    case 256: f(std::integral_constant<int, 256>()); break;
    default:
      throw EngineError("LLM_ERR_UNSUPPORTED_ARCH",
                        "CUDA attention supports head_dim 8, 16, 32, 64, 128 or 256, got " + std::to_string(headDim));
  }
}

}  // namespace

bool attentionSupportsHeadDim(int headDim) {
  return headDim == 8 || headDim == 16 || headDim == 32 || headDim == 64 || headDim == 128 || headDim == 256;
}

void prepareAttentionKernels() {
  for (int d : {8, 16, 32, 64, 128, 256})
    withHeadDim(d, [](auto dim) {
      constexpr int D = decltype(dim)::value;
      DSG_CUDA(cudaFuncSetAttribute(attentionKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attnSmemBytes<D>()));
      if constexpr (D == 64 || D == 128)
        DSG_CUDA(cudaFuncSetAttribute(prefillAttentionTcKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)tcSmemBytes<D>()));
    });
}

void launchAttention(const bf16* q, const bf16* kCache, const bf16* vCache, const AttnBatch& batch, int numTokens,
                     int heads, int kvHeads, int headDim, float scale, int numSplits, bf16* out, float* partO,
                     float* partLse, cudaStream_t stream) {
  if (batch.numSeqs <= 0 || batch.maxQLen <= 0) return;
  withHeadDim(headDim, [&](auto dim) {
    launchAttentionD<decltype(dim)::value>(q, kCache, vCache, batch, numTokens, heads, kvHeads, scale, numSplits, out,
                                           partO, partLse, stream);
  });
}

void launchAttentionMerge(const float* partO, const float* partLse, int numSplits, int numTokens, int heads,
                          int headDim, bf16* out, cudaStream_t stream) {
  const int64_t rows = (int64_t)numTokens * heads;
  if (rows <= 0) return;
  const int warpsPerBlock = 4;
  const unsigned blocks = (unsigned)((rows + warpsPerBlock - 1) / warpsPerBlock);
  withHeadDim(headDim, [&](auto dim) {
    attentionMergeKernel<decltype(dim)::value>
        <<<blocks, warpsPerBlock * 32, 0, stream>>>(partO, partLse, numSplits, numTokens, heads, out);
  });
  DSG_LAUNCHED("attentionMergeKernel");
}

}  // namespace dsg::cuda
