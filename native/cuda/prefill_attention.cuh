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

// Shared memory: an ST-stage ring of K/V tiles, plus a Q tile when Q is not kept in registers (MT > 1).
template <int D, int NW, int ST, int MT>
constexpr size_t tcSmemBytes() {
  return ((size_t)ST * 2 * kTcKeys + (MT == 1 ? 0 : NW * 16 * MT)) * (D + kPad) * sizeof(bf16);
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

template <int D, int NW, int ST, int MT, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB) prefillAttentionTcKernel(
    const bf16* __restrict__ q, const bf16* __restrict__ kCache, const bf16* __restrict__ vCache,
    const int4* __restrict__ seqs, const int32_t* __restrict__ pageTable, int pageSize, int heads, int kvHeads,
    float scaleLog2, bf16* __restrict__ out) {
  static_assert(ST >= 2 && (NW == 4 || NW == 8) && (MT == 1 || MT == 2), "prefill tile shape");
  constexpr int kThreads = NW * 32, kRowsPB = NW * 16 * MT;
  constexpr bool kQInRegs = MT == 1;           // with two m-tiles per warp, Q fragments are re-read per tile
  constexpr int S = D + kPad;                  // shared-memory row stride (elements)
  constexpr int kStage = 2 * kTcKeys * S;      // one ring stage: K tile then V tile (elements)
  constexpr int kChunks = D / 8;               // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const ring = reinterpret_cast<bf16*>(smem);
  // Q goes through the last ring stage (first overwritten after the loop's first barrier) when it moves to
  // registers, else it has its own region after the ring.
  bf16* const sQ = ring + (kQInRegs ? ST - 1 : ST) * kStage;
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
  const int pageShift = (pageSize & (pageSize - 1)) == 0 ? __ffs(pageSize) - 1 : -1;  // power-of-two pages

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
        int slot;
        if (pageShift >= 0) {
          slot = (pageTable[seq.w + (kk >> pageShift)] << pageShift) + (kk & (pageSize - 1));
        } else {
          const int pi = kk / pageSize;
          slot = pageTable[seq.w + pi] * pageSize + (kk - pi * pageSize);
        }
        off = ((int64_t)slot * kvHeads + kvh) * D + c * 8;
      }
      cpAsync16(smemAddr(sK + key * S + c * 8), kCache + off, ok);
      cpAsync16(smemAddr(sV + key * S + c * 8), vCache + off, ok);
    }
  };

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
#pragma unroll
  for (int st = 0; st < ST - 1; ++st) {
    if (st < numTiles) loadKv(st, st);
    cpAsyncCommit();
  }
  // Per-lane ldmatrix addresses: Q (A fragments) as (rows 0-7 | 8-15) x (dims 0-7 | 8-15); K as 4 matrices
  // (keys 0-7 | 8-15) x (dims 0-7 | 8-15), the B fragments of two key blocks; V transposed likewise.
  const uint32_t qAddr = smemAddr(sQ + (warp * 16 * MT + (lane & 15)) * S + (lane >> 4) * 8);
  const uint32_t kLane = ((((lane >> 4) << 3) + (lane & 7)) * S + ((lane >> 3) & 1) * 8) * 2;
  const uint32_t vLane = ((lane & 15) * S + (lane >> 4) * 8) * 2;
  uint32_t qf[kQInRegs ? D / 16 : 1][4];
  if constexpr (kQInRegs) {
    cpAsyncWait<ST - 1>();
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) ldsm4(qAddr + ks * 32, qf[ks]);
  }

  // Per m-tile rows: rA = warp * 16 * MT + m * 16 + g (S/O elements 0, 1), rB = rA + 8 (elements 2, 3).
  int qposA[MT], qposB[MT];
  float mA[MT], mB[MT], lA[MT], lB[MT];  // l: this lane's share of the row sum
  float o[MT][D / 8][4];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int rA = warp * 16 * MT + m * 16 + g;
    qposA[m] = firstQpos + rA / group;
    qposB[m] = firstQpos + (rA + 8) / group;
    mA[m] = mB[m] = -INFINITY;
    lA[m] = lB[m] = 0.f;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) o[m][nd][0] = o[m][nd][1] = o[m][nd][2] = o[m][nd][3] = 0.f;
  }

  for (int i = 0; i < numTiles; ++i) {
    cpAsyncWait<ST - 2>();
    __syncthreads();  // tile i (and Q) landed for everyone; the stage of tile i - 1 is free again
    if (i + ST - 1 < numTiles) loadKv(i + ST - 1, (i + ST - 1) % ST);
    cpAsyncCommit();
    const uint32_t sK = smemAddr(ring + (i % ST) * kStage), sV = sK + kTcKeys * S * 2;
    const int kt = i * kTcKeys;

    float sc[MT][kTcKeys / 8][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int nt = 0; nt < kTcKeys / 8; ++nt) sc[m][nt][0] = sc[m][nt][1] = sc[m][nt][2] = sc[m][nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t qs[MT][4];
      if constexpr (!kQInRegs) {
#pragma unroll
        for (int m = 0; m < MT; ++m) ldsm4(qAddr + (m * 16 * S + ks * 16) * 2, qs[m]);
      }
#pragma unroll
      for (int np = 0; np < kTcKeys / 16; ++np) {
        uint32_t b[4];
        ldsm4(sK + kLane + (np * 16 * S + ks * 16) * 2, b);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const uint32_t* a = kQInRegs ? qf[ks] : qs[m];
          mmaBf16(sc[m][2 * np], a, b[0], b[1]);
          mmaBf16(sc[m][2 * np + 1], a, b[2], b[3]);
        }
      }
    }
    const bool masked = kt + kTcKeys - 1 > firstQpos;  // block-uniform: only the diagonal tiles pay for the mask
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (masked) {
#pragma unroll
        for (int nt = 0; nt < kTcKeys / 8; ++nt) {
          const int key = kt + nt * 8 + 2 * t;
          if (key > qposA[m]) sc[m][nt][0] = -INFINITY;
          if (key + 1 > qposA[m]) sc[m][nt][1] = -INFINITY;
          if (key > qposB[m]) sc[m][nt][2] = -INFINITY;
          if (key + 1 > qposB[m]) sc[m][nt][3] = -INFINITY;
        }
      }
      // Online softmax (a row spans a lane quad). Max in raw score units, the scale folded into the ex2 argument.
      float mxA = mA[m], mxB = mB[m];
#pragma unroll
      for (int nt = 0; nt < kTcKeys / 8; ++nt) {
        mxA = fmaxf(mxA, fmaxf(sc[m][nt][0], sc[m][nt][1]));
        mxB = fmaxf(mxB, fmaxf(sc[m][nt][2], sc[m][nt][3]));
      }
      mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, 1));
      mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, 2));
      mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, 1));
      mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, 2));
      // A row with nothing visible yet keeps m = -inf: 0 as the exponent base keeps NaN out.
      const float baseA = mxA == -INFINITY ? 0.f : mxA * scaleLog2;
      const float baseB = mxB == -INFINITY ? 0.f : mxB * scaleLog2;
      const float alphaA = ex2(mA[m] * scaleLog2 - baseA), alphaB = ex2(mB[m] * scaleLog2 - baseB);
      mA[m] = mxA;
      mB[m] = mxB;
      float sumA = 0.f, sumB = 0.f;
#pragma unroll
      for (int nt = 0; nt < kTcKeys / 8; ++nt) {
        sc[m][nt][0] = ex2(fmaf(sc[m][nt][0], scaleLog2, -baseA));
        sc[m][nt][1] = ex2(fmaf(sc[m][nt][1], scaleLog2, -baseA));
        sc[m][nt][2] = ex2(fmaf(sc[m][nt][2], scaleLog2, -baseB));
        sc[m][nt][3] = ex2(fmaf(sc[m][nt][3], scaleLog2, -baseB));
        sumA += sc[m][nt][0] + sc[m][nt][1];
        sumB += sc[m][nt][2] + sc[m][nt][3];
      }
      lA[m] = lA[m] * alphaA + sumA;
      lB[m] = lB[m] * alphaB + sumB;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        o[m][nd][0] *= alphaA;
        o[m][nd][1] *= alphaA;
        o[m][nd][2] *= alphaB;
        o[m][nd][3] *= alphaB;
      }
    }
    // O += P V: the S fragments of key blocks 2kk and 2kk + 1 form the A operand of one k16 step.
#pragma unroll
    for (int kk = 0; kk < kTcKeys / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        a[m][0] = packBf16(sc[m][2 * kk][0], sc[m][2 * kk][1]);
        a[m][1] = packBf16(sc[m][2 * kk][2], sc[m][2 * kk][3]);
        a[m][2] = packBf16(sc[m][2 * kk + 1][0], sc[m][2 * kk + 1][1]);
        a[m][3] = packBf16(sc[m][2 * kk + 1][2], sc[m][2 * kk + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm4t(sV + vLane + (kk * 16 * S + np * 16) * 2, b);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mmaBf16(o[m][2 * np], a[m], b[0], b[1]);
          mmaBf16(o[m][2 * np + 1], a[m], b[2], b[3]);
        }
      }
    }
  }
  cpAsyncWait<0>();  // no copy may still target shared memory when the block exits

#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float l = half ? lB[m] : lA[m];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int r = warp * 16 * MT + m * 16 + half * 8 + g;
      if (r / group >= nTok) continue;
      const int64_t token = seq.x + t0 + r / group;
      bf16* dst = out + (token * heads + kvh * group + r % group) * D + 2 * t;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd)
        *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) =
            __floats2bfloat162_rn(o[m][nd][2 * half] * inv, o[m][nd][2 * half + 1] * inv);
    }
  }
}

// Launches one prefill tile shape over the batch: NW warps of MT x 16 query rows, an ST-stage K/V ring, at least
// MINB blocks per SM.
template <int D, int NW, int ST, int MT, int MINB>
void launchPrefillTc(const bf16* q, const bf16* kCache, const bf16* vCache, const AttnBatch& b, int heads,
                     int kvHeads, float scale, bf16* out, cudaStream_t stream) {
  const int tokensPerTile = NW * 16 * MT / (heads / kvHeads);
  const dim3 grid(kvHeads, b.numSeqs, (b.maxQLen + tokensPerTile - 1) / tokensPerTile);
  prefillAttentionTcKernel<D, NW, ST, MT, MINB><<<grid, NW * 32, tcSmemBytes<D, NW, ST, MT>(), stream>>>(
      q, kCache, vCache, b.seqs, b.pageTable, b.pageSize, heads, kvHeads, scale * 1.4426950408889634f, out);
  DSG_LAUNCHED("prefillAttentionTcKernel");
}
template <int D, int NW, int ST, int MT, int MINB>
void preparePrefillTc() {
  DSG_CUDA(cudaFuncSetAttribute(prefillAttentionTcKernel<D, NW, ST, MT, MINB>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)tcSmemBytes<D, NW, ST, MT>()));
}

// The tile shape the engine runs (timings in native/cuda/NOTES-prefill-attention.md, H200): the largest tile whose
// grid still fills every SM once. 8 warps x 32 rows (256 per block) is fastest when the grid is large (4096 tokens:
// 240 us against 284 us for 128-row blocks), but a grid under one wave leaves SMs idle (1024 tokens: 67 us against
// 44 us for 64-row blocks). numTokens (all query tokens of the batch) estimates the non-empty blocks.
template <int D>
void launchPrefillAttention(const bf16* q, const bf16* kCache, const bf16* vCache, const AttnBatch& b, int numTokens,
                            int heads, int kvHeads, float scale, bf16* out, cudaStream_t stream) {
  int device = 0, sms = 0;
  DSG_CUDA(cudaGetDevice(&device));
  DSG_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int group = heads / kvHeads;
  auto blocks = [&](int rows) { return (int64_t)kvHeads * ((numTokens + rows / group - 1) / (rows / group)); };
  if (blocks(256) >= sms) {
    launchPrefillTc<D, 8, 2, 2, 1>(q, kCache, vCache, b, heads, kvHeads, scale, out, stream);
  } else if (blocks(128) >= sms) {
    launchPrefillTc<D, 8, 2, 1, 1>(q, kCache, vCache, b, heads, kvHeads, scale, out, stream);
  } else {
    launchPrefillTc<D, 4, 2, 1, 2>(q, kCache, vCache, b, heads, kvHeads, scale, out, stream);
  }
}
template <int D>
void preparePrefillAttention() {
  preparePrefillTc<D, 8, 2, 2, 1>();
  preparePrefillTc<D, 8, 2, 1, 1>();
  preparePrefillTc<D, 4, 2, 1, 2>();
}

}  // namespace dsg::cuda::prefill
