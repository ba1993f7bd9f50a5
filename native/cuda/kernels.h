// Launchers of the CUDA backend's own kernels (everything except the GEMMs, which are in gemm.h).
// Conventions: bf16 weights and activations, f32 accumulation; the residual stream is f32 [tokens, hidden]
// (the O and down projections accumulate into it with beta = 1, so the residual add costs no kernel).
// The paged KV pool of one layer is K [numSlots, kvHeads, headDim] then V likewise, slot = page * pageSize + offset.
// All launchers are asynchronous on `stream` and graph-capturable (no allocation, no host sync).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace dsg::cuda {

/** Replaces each token id < 0, a placeholder -(1 + row), with sampled[row]: the previous step's samples (token
 *  feedback of pipelined steps, token_feedback.cu). In place over tokens[0, n). */
void launchResolveTokenFeedback(int32_t* tokens, int n, const int32_t* sampled, cudaStream_t stream);
/** residual[t, :] = float(embed[ids[t] - vocabStart, :]) for t < numTokens, zeros where ids[t] is outside
 *  [vocabStart, vocabStart + rows): embed holds those rows of the vocabulary (a tensor-parallel rank's shard, or
 *  vocabStart 0 and every row). */
void launchEmbedGather(const int32_t* ids, int numTokens, const __nv_bfloat16* embed, int hidden, int vocabStart, int rows,
                       float* residual, cudaStream_t stream);

/**
 * out[r, :] = bf16(x * rsqrt(mean(x^2) + eps) * weight) with x = residual[rows ? rows[r] : r, :], r < numRows.
 * hidden % 4 == 0.
 */
void launchRmsNorm(const float* residual, const int32_t* rows, int numRows, int hidden, const __nv_bfloat16* weight,
                   float eps, __nv_bfloat16* out, cudaStream_t stream);

/** out[t, i] = silu(gateUp[t, i]) * gateUp[t, inter + i]; gateUp is [tokens, 2 * inter] (fused gate|up GEMM).
 *  16-byte accesses when inter % 8 == 0, scalar otherwise. */
void launchSiluMul(const __nv_bfloat16* gateUp, int numTokens, int inter, __nv_bfloat16* out, cudaStream_t stream);

/** Per-token geometry and RoPE tables for launchQkNormRopeKvWrite. */
struct RopeArgs {
  const float* invFreq;  // [headDim / 2], Llama-3 scaling already applied
  bool interleaved;      // pairs (2i, 2i+1) instead of HF rotate_half pairs (i, i + headDim/2)
};

/**
 * Splits the fused QKV GEMM output qkv [tokens, (heads + 2 kvHeads) * headDim], adds the optional fused bias,
 * applies the optional per-head q/k RMSNorm (Qwen3), rotates q and k by their position, writes q to
 * q [tokens, heads, headDim] and k/v into the paged pool at slots[t]. headDim even, <= 256.
 */
void launchQkNormRopeKvWrite(const __nv_bfloat16* qkv, const __nv_bfloat16* bias, const __nv_bfloat16* qNorm,
                             const __nv_bfloat16* kNorm, float eps, const int32_t* positions, const int32_t* slots,
                             int numTokens, int heads, int kvHeads, int headDim, RopeArgs rope, __nv_bfloat16* q,
                             __nv_bfloat16* kCache, __nv_bfloat16* vCache, cudaStream_t stream);

/** Ragged-batch geometry of one step on the device (one int4 per sequence: qStart, qLen, kvLen, pageStart). */
struct AttnBatch {
  const int4* seqs;         // [numSeqs]
  const int32_t* pageTable;  // flat page indices; seq s's pages start at seqs[s].w
  int numSeqs;
  int maxQLen;  // sizes the grid; tiles past a sequence's qLen exit at once
  int pageSize;
};

/**
 * Paged attention over a ragged batch: each sequence's queries (its qLen newest tokens) attend to its KV
 * positions [0, position] (causal inside the chunk, the cached prefix in front), GQA (heads % kvHeads == 0,
 * heads / kvHeads divides 16), flash-style online softmax in f32. numSplits > 1 splits each sequence's KV range
 * across blocks (flash-decoding): partial outputs go to partO [numSplits, tokens, heads, headDim] f32 and
 * partLse [numSplits, tokens, heads], then launchAttentionMerge combines them into out.
 * headDim: attentionSupportsHeadDim.
 */
void launchAttention(const __nv_bfloat16* q, const __nv_bfloat16* kCache, const __nv_bfloat16* vCache,
                     const AttnBatch& batch, int numTokens, int heads, int kvHeads, int headDim, float scale,
                     int numSplits, __nv_bfloat16* out, float* partO, float* partLse, cudaStream_t stream);
void launchAttentionMerge(const float* partO, const float* partLse, int numSplits, int numTokens, int heads,
                          int headDim, __nv_bfloat16* out, cudaStream_t stream);
bool attentionSupportsHeadDim(int headDim);

/** Tuning overrides for launchDecodeAttention (checks and benchmarks); 0 keeps the built-in choice. */
struct DecodeTuning {
  int clusterSplits;  // blocks per (sequence, KV head) when numSplits == 1, at most 8
  int keysPerRow;     // keys each row of head_dim/8 lanes loads per iteration
  int stages;         // 1: K/V straight into registers; >= 2: a cp.async shared-memory ring of that depth
};
/** Whether decode steps of this shape take the bandwidth-bound decode kernel (decode_attention.cu): head_dim 64,
 *  128 or 256, GQA group 1, 2, 4 or 8 (8 only up to head_dim 128). It splits internally, so callers pass
 *  numSplits 1 and need no merge. */
bool decodeAttentionFastPath(int heads, int kvHeads, int headDim);
/**
 * launchAttention for a decode-only batch (batch.maxQLen == 1) on the fast path; false (nothing launched) when
 * the shape is not on it. numSplits > 1 writes partials for launchAttentionMerge exactly as launchAttention does;
 * numSplits 1 writes out, splitting each (sequence, KV head) across a thread-block cluster whose size depends on
 * batch.numSeqs only (graph-safe for any kvLen).
 */
bool launchDecodeAttention(const __nv_bfloat16* q, const __nv_bfloat16* kCache, const __nv_bfloat16* vCache,
                           const AttnBatch& batch, int numTokens, int heads, int kvHeads, int headDim, float scale,
                           int numSplits, __nv_bfloat16* out, float* partO, float* partLse, cudaStream_t stream,
                           const DecodeTuning* tuning = nullptr);
/** Sets the shared-memory limits the attention kernels need; call once per device before any launch. */
void prepareAttentionKernels();

/** Per-sequence sampling parameters on the device (decoded from the step's sequence records). */
struct SampleParams {
  float temperature, topP, minP;
  int32_t topK;
  uint32_t seedLo, seedHi;
  int32_t logprobs;     // -1 none, 0 chosen only, n > 0 top n
  int32_t outputIndex;  // Philox counter
  int32_t sample;       // 0: token -1, logprob NaN, no top-n (a non-final prefill chunk, or batch padding)
};

/**
 * Samples logits [numSeqs, vocab] (f32) per native/include/sampling.h and writes tokens [numSeqs], logprobs [numSeqs]
 * (NaN where not asked), topIds/topLogprobs [numSeqs, topN] (-1/NaN padded). With scratch (device memory of
 * sampleScratchBytes(numSeqs) bytes, no initialisation needed) a first kernel spreads the argmax pass over many
 * blocks per sequence, so greedy costs a few microseconds; the rest of the sampling (and everything without
 * scratch) runs on one block per sequence.
 */
void launchSample(const float* logits, int numSeqs, int vocab, const SampleParams* params, int topN, int32_t* tokens,
                  float* logprobs, int32_t* topIds, float* topLogprobs, cudaStream_t stream, int32_t* scratch = nullptr);
size_t sampleScratchBytes(int numSeqs);

/**
 * Step 0 of sampling (native/include/sampling.h): logits[r, banned[r * cap + j]] = -inf for r < rows, j < cap.
 * banned is [rows, cap] (cap = MAX_BANNED_TOKENS), a row's unused slots -1; ids outside [0, vocab) are skipped.
 * Run before launchSample on the same logits; a fixed `banned` address makes it graph-capturable.
 */
void launchMaskBanned(float* logits, int rows, int vocab, const int32_t* banned, int cap, cudaStream_t stream);

/**
 * Step 0 of sampling, grammar-constrained decoding (step.h mask rows): for each r < rows with maskRows[r] = m >= 0,
 * logits[r, id] = -inf for every id < vocab whose bit (id % 32 of word id / 32) in masks[m * maskWords ..] is clear;
 * rows with maskRows[r] = -1 are untouched. CPU reference: maskLogitsByBitmask (native/src/sampling.cpp); check:
 * tests/mask_check.cu. Fixed maskRows/masks addresses make it graph-capturable.
 */
void launchMaskBitmask(float* logits, int rows, int vocab, const int32_t* maskRows, const int32_t* masks, int maskWords,
                       cudaStream_t stream);

/** dst[i] = bf16(src[i]) for i < n; src is f32 (srcF16 false) or f16 (srcF16 true). */
void launchToBf16(const void* src, bool srcF16, int64_t n, __nv_bfloat16* dst, cudaStream_t stream);

/** Copies whole pages between the pool (2 * layers tensors of [numPages * pageElems]) and a packed staging buffer
 *  [n, 2 * layers, pageElems] (the export format); toStaging selects the direction. */
void launchPageCopy(__nv_bfloat16* pool, int64_t poolTensorElems, int numTensors, int64_t pageElems,
                    const int32_t* pages, int n, __nv_bfloat16* staging, bool toStaging, cudaStream_t stream);

}  // namespace dsg::cuda
