// Paged attention over a ragged batch (prefill chunks with a cached prefix, and decode tokens), plus the split-KV
// merge. Shapes: q [T, heads, D] bf16 (D in 8..256, a power of two); K/V pool [slots, kvHeads, D] bf16 per layer; out [T, heads, D] bf16.
// One block = (query tile of one sequence, one KV head, one KV split): its 16 query rows are (token, head of the
// GQA group) pairs, so each K/V tile is read once for the whole group. K/V tiles of 32 keys are gathered through
// the page table into shared memory; each warp owns 4 query rows; lane j scores key j, then the warp accumulates
// P*V with each lane owning D/32 output dims (online softmax in f32, base 2).
// Floor (decode, memory-bound): KV bytes read once per KV head = kvLen * kvHeads * D * 4 B per sequence per layer.
// That kernel runs on CUDA-core FMAs; prefill chunks with head_dim 64/128 take prefillAttentionTcKernel (tensor cores,
// prefill_attention.cuh).
#include <cfloat>
#include <type_traits>

#include "common.cuh"
#include "kernels.h"
#include "prefill_attention.cuh"

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
    if (numSplits == 1 && b.maxQLen > 1 && 64 % group == 0) {
      prefill::launchPrefillAttention<D>(q, kCache, vCache, b, numTokens, heads, kvHeads, scale, out, stream);
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
        prefill::preparePrefillAttention<D>();
    });
}

void launchAttention(const bf16* q, const bf16* kCache, const bf16* vCache, const AttnBatch& batch, int numTokens,
                     int heads, int kvHeads, int headDim, float scale, int numSplits, bf16* out, float* partO,
                     float* partLse, cudaStream_t stream) {
  if (batch.numSeqs <= 0 || batch.maxQLen <= 0) return;
  // Decode-only steps: the bandwidth-bound kernel of decode_attention.cu where the shape allows.
  if (batch.maxQLen == 1 && launchDecodeAttention(q, kCache, vCache, batch, numTokens, heads, kvHeads, headDim, scale,
                                                  numSplits, out, partO, partLse, stream))
    return;
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
