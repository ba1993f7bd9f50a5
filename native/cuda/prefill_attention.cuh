// Prefill attention on tensor cores for the paged, ragged batch of launchAttention (attention.cu dispatches here;
// native/cuda/tests/prefill_attention_check.cu includes this header to check and time every tile shape).
// Contract: any mix of sequences (qLen new tokens over kvLen - qLen cached ones, causal inside the chunk), any page
// size (keys gathered one by one through the page table), GQA group dividing 64, head_dim 64 or 128, bf16 in/out,
// f32 accumulation, P rounded to bf16 for P V; asynchronous on `stream`, no allocation (graph-capturable).
#pragma once
#include <cstdint>

#include "common.cuh"
#include "kernels.h"

namespace dsg::cuda::prefill {

constexpr int kPad = 8;  // bf16 padding per shared-memory row: 16 B, so ldmatrix rows fall in distinct banks

// Prefill on tensor cores (FlashAttention-2 style). A block = NW warps x 16 query rows ((token, GQA head) pairs of
// one KV head, so each K/V tile serves the whole group); Q lives in registers (ldmatrix once). K/V tiles of 64 keys
// are gathered through the page table with 16-byte cp.async into an ST-stage ring in shared memory (rows padded by
// 16 B, so ldmatrix and the copies are bank-conflict free); S = Q K^T and O += P V with mma.sync m16n8k16 (bf16 in,
// f32 accumulate), K fragments by ldmatrix, V fragments by ldmatrix.trans; online softmax on the S fragments in
// registers (base 2, the scale folded into one FFMA before ex2), P re-packed as the A operand of P V. Only the
// tiles that reach past the block's first query position are masked. Blocks are issued longest (last) tile first.
constexpr int kTcKeys = 64;  // keys per K/V tile

template <int D, int ST>
constexpr size_t tcSmemBytes() {
  return (size_t)ST * 2 * kTcKeys * (D + kPad) * sizeof(bf16);
}

__device__ __forceinline__ void mmaBf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t smemAddr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
// 16-byte global -> shared copy; a false `valid` writes zeros and reads nothing.
__device__ __forceinline__ void cpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm4(uint32_t addr, uint32_t* r) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm4t(uint32_t addr, uint32_t* r) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <int D, int NW, int ST, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB) prefillAttentionTcKernel(
    const bf16* __restrict__ q, const bf16* __restrict__ kCache, const bf16* __restrict__ vCache,
    const int4* __restrict__ seqs, const int32_t* __restrict__ pageTable, int pageSize, int heads, int kvHeads,
    float scaleLog2, bf16* __restrict__ out) {
  static_assert(ST >= 2 && (NW == 4 || NW == 8), "prefill tile shape");
  constexpr int kThreads = NW * 32, kRowsPB = NW * 16;
  constexpr int S = D + kPad;                  // shared-memory row stride (elements)
  constexpr int kStage = 2 * kTcKeys * S;      // one ring stage: K tile then V tile (elements)
  constexpr int kChunks = D / 8;               // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const ring = reinterpret_cast<bf16*>(smem);
  const int group = heads / kvHeads;
  const int tokensPerTile = kRowsPB / group;
  const int kvh = blockIdx.x;
  const int4 seq = seqs[blockIdx.y];  // qStart, qLen, kvLen, pageStart
  const int t0 = (gridDim.z - 1 - blockIdx.z) * tokensPerTile;
  if (t0 >= seq.y) return;
  const int nTok = min(tokensPerTile, seq.y - t0);
  const int startPos = seq.z - seq.y;
  const int firstQpos = startPos + t0;  // tiles ending at or before it need no mask
  const int kEnd = firstQpos + nTok;    // keys [0, kEnd) are visible to some row
  const int numTiles = (kEnd + kTcKeys - 1) / kTcKeys;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;

  auto loadKv = [&](int tile, int stage) {
    bf16* sK = ring + stage * kStage;
    bf16* sV = sK + kTcKeys * S;
#pragma unroll
    for (int it = 0; it < kTcKeys * kChunks / kThreads; ++it) {
      const int idx = threadIdx.x + it * kThreads;
      const int key = idx / kChunks, c = idx % kChunks;
      const int kk = tile * kTcKeys + key;
      const bool ok = kk < kEnd;
      int64_t off = 0;
      if (ok) {
        const int64_t page = pageTable[seq.w + kk / pageSize];
        off = ((page * pageSize + kk % pageSize) * kvHeads + kvh) * D + c * 8;
      }
      cpAsync16(smemAddr(sK + key * S + c * 8), kCache + off, ok);
      cpAsync16(smemAddr(sV + key * S + c * 8), vCache + off, ok);
    }
  };

  // Q goes through the last ring stage (first overwritten after the loop's first barrier), then into registers.
  {
    bf16* sQ = ring + (ST - 1) * kStage;
#pragma unroll
    for (int it = 0; it < kRowsPB * kChunks / kThreads; ++it) {
      const int idx = threadIdx.x + it * kThreads;
      const int r = idx / kChunks, c = idx % kChunks;
      const int tq = r / group;
      const bool ok = tq < nTok;
      const bf16* src = ok ? q + ((int64_t)(seq.x + t0 + tq) * heads + kvh * group + r % group) * D + c * 8 : q;
      cpAsync16(smemAddr(sQ + r * S + c * 8), src, ok);
    }
    cpAsyncCommit();
  }
#pragma unroll
  for (int st = 0; st < ST - 1; ++st) {
    if (st < numTiles) loadKv(st, st);
    cpAsyncCommit();
  }
  cpAsyncWait<ST - 1>();
  __syncthreads();
  uint32_t qf[D / 16][4];
  {
    const uint32_t qAddr = smemAddr(ring + (ST - 1) * kStage + (warp * 16 + (lane & 15)) * S + (lane >> 4) * 8);
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) ldsm4(qAddr + ks * 32, qf[ks]);
  }

  const int rA = warp * 16 + g, rB = rA + 8;
  const int qposA = firstQpos + rA / group, qposB = firstQpos + rB / group;
  float mA = -INFINITY, mB = -INFINITY, lA = 0.f, lB = 0.f;  // l: this lane's share of the row sum
  float o[D / 8][4];
#pragma unroll
  for (int nd = 0; nd < D / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  // Per-lane ldmatrix offsets (bytes) inside a K or V tile: K as 4 matrices (keys 0-7 | 8-15) x (dims 0-7 | 8-15),
  // giving the B fragments of two key blocks; V transposed as (keys 0-7 | 8-15) x (dims 0-7 | 8-15).
  const uint32_t kLane = ((((lane >> 4) << 3) + (lane & 7)) * S + ((lane >> 3) & 1) * 8) * 2;
  const uint32_t vLane = ((lane & 15) * S + (lane >> 4) * 8) * 2;

  for (int i = 0; i < numTiles; ++i) {
    cpAsyncWait<ST - 2>();
    __syncthreads();  // tile i landed for everyone; the stage of tile i - 1 is free again
    if (i + ST - 1 < numTiles) loadKv(i + ST - 1, (i + ST - 1) % ST);
    cpAsyncCommit();
    const uint32_t sK = smemAddr(ring + (i % ST) * kStage), sV = sK + kTcKeys * S * 2;
    const int kt = i * kTcKeys;

    float sc[kTcKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTcKeys / 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
      for (int np = 0; np < kTcKeys / 16; ++np) {
        uint32_t b[4];
        ldsm4(sK + kLane + (np * 16 * S + ks * 16) * 2, b);
        mmaBf16(sc[2 * np], qf[ks], b[0], b[1]);
        mmaBf16(sc[2 * np + 1], qf[ks], b[2], b[3]);
      }
    }
    if (kt + kTcKeys - 1 > firstQpos) {  // block-uniform: only the diagonal tiles pay for the mask
#pragma unroll
      for (int nt = 0; nt < kTcKeys / 8; ++nt) {
        const int key = kt + nt * 8 + 2 * t;
        if (key > qposA) sc[nt][0] = -INFINITY;
        if (key + 1 > qposA) sc[nt][1] = -INFINITY;
        if (key > qposB) sc[nt][2] = -INFINITY;
        if (key + 1 > qposB) sc[nt][3] = -INFINITY;
      }
    }
    // Online softmax (rows rA: elements 0/1, rB: elements 2/3; a row spans a lane quad). Max in raw score units.
    float mxA = mA, mxB = mB;
#pragma unroll
    for (int nt = 0; nt < kTcKeys / 8; ++nt) {
      mxA = fmaxf(mxA, fmaxf(sc[nt][0], sc[nt][1]));
      mxB = fmaxf(mxB, fmaxf(sc[nt][2], sc[nt][3]));
    }
    mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, 1));
    mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, 2));
    mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, 1));
    mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, 2));
    // A row with nothing visible yet keeps m = -inf: 0 as the exponent base keeps NaN out.
    const float baseA = mxA == -INFINITY ? 0.f : mxA * scaleLog2, baseB = mxB == -INFINITY ? 0.f : mxB * scaleLog2;
    const float alphaA = ex2(mA * scaleLog2 - baseA), alphaB = ex2(mB * scaleLog2 - baseB);
    mA = mxA;
    mB = mxB;
    float sumA = 0.f, sumB = 0.f;
#pragma unroll
    for (int nt = 0; nt < kTcKeys / 8; ++nt) {
      sc[nt][0] = ex2(fmaf(sc[nt][0], scaleLog2, -baseA));
      sc[nt][1] = ex2(fmaf(sc[nt][1], scaleLog2, -baseA));
      sc[nt][2] = ex2(fmaf(sc[nt][2], scaleLog2, -baseB));
      sc[nt][3] = ex2(fmaf(sc[nt][3], scaleLog2, -baseB));
      sumA += sc[nt][0] + sc[nt][1];
      sumB += sc[nt][2] + sc[nt][3];
    }
    lA = lA * alphaA + sumA;
    lB = lB * alphaB + sumB;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      o[nd][0] *= alphaA;
      o[nd][1] *= alphaA;
      o[nd][2] *= alphaB;
      o[nd][3] *= alphaB;
    }
    // O += P V: the S fragments of key blocks 2kk and 2kk + 1 form the A operand of one k16 step.
#pragma unroll
    for (int kk = 0; kk < kTcKeys / 16; ++kk) {
      const uint32_t a[4] = {packBf16(sc[2 * kk][0], sc[2 * kk][1]), packBf16(sc[2 * kk][2], sc[2 * kk][3]),
                             packBf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                             packBf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm4t(sV + vLane + (kk * 16 * S + np * 16) * 2, b);
        mmaBf16(o[2 * np], a, b[0], b[1]);
        mmaBf16(o[2 * np + 1], a, b[2], b[3]);
      }
    }
  }
  cpAsyncWait<0>();  // no copy may still target shared memory when the block exits

  lA += __shfl_xor_sync(0xffffffffu, lA, 1);
  lA += __shfl_xor_sync(0xffffffffu, lA, 2);
  lB += __shfl_xor_sync(0xffffffffu, lB, 1);
  lB += __shfl_xor_sync(0xffffffffu, lB, 2);
  const float invA = lA > 0.f ? 1.f / lA : 0.f, invB = lB > 0.f ? 1.f / lB : 0.f;
  if (rA / group < nTok) {
    const int64_t token = seq.x + t0 + rA / group;
    bf16* dst = out + (token * heads + kvh * group + rA % group) * D + 2 * t;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
      *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) = __floats2bfloat162_rn(o[nd][0] * invA, o[nd][1] * invA);
  }
  if (rB / group < nTok) {
    const int64_t token = seq.x + t0 + rB / group;
    bf16* dst = out + (token * heads + kvh * group + rB % group) * D + 2 * t;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
      *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) = __floats2bfloat162_rn(o[nd][2] * invB, o[nd][3] * invB);
  }
}

// Launches one prefill tile shape (NW warps of 16 rows, ST-stage K/V ring, at least MINB blocks per SM) over the batch.
template <int D, int NW, int ST, int MINB>
void launchPrefillTc(const bf16* q, const bf16* kCache, const bf16* vCache, const AttnBatch& b, int heads,
                     int kvHeads, float scale, bf16* out, cudaStream_t stream) {
  const int tokensPerTile = NW * 16 / (heads / kvHeads);
  const dim3 grid(kvHeads, b.numSeqs, (b.maxQLen + tokensPerTile - 1) / tokensPerTile);
  prefillAttentionTcKernel<D, NW, ST, MINB><<<grid, NW * 32, tcSmemBytes<D, ST>(), stream>>>(
      q, kCache, vCache, b.seqs, b.pageTable, b.pageSize, heads, kvHeads, scale * 1.4426950408889634f, out);
  DSG_LAUNCHED("prefillAttentionTcKernel");
}
template <int D, int NW, int ST, int MINB>
void preparePrefillTc() {
  DSG_CUDA(cudaFuncSetAttribute(prefillAttentionTcKernel<D, NW, ST, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)tcSmemBytes<D, ST>()));
}

// The tile shape the engine runs (measured in native/cuda/NOTES-prefill-attention.md).
template <int D>
void launchPrefillAttention(const bf16* q, const bf16* kCache, const bf16* vCache, const AttnBatch& b, int heads,
                            int kvHeads, float scale, bf16* out, cudaStream_t stream) {
  launchPrefillTc<D, 8, 2, 1>(q, kCache, vCache, b, heads, kvHeads, scale, out, stream);
}
template <int D>
void preparePrefillAttention() {
  preparePrefillTc<D, 8, 2, 1>();
}

}  // namespace dsg::cuda::prefill
