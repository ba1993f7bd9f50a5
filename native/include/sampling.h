// Sampling, the algorithm both backends implement (the CPU one in native/src/sampling.cpp is the reference).
//
// Inputs per sequence: raw logits z[0..V) (f32), SamplingParams (step.h), the 64-bit seed and outputIndex.
// 0. Banned ids (step.h bannedCount, min_tokens) first get z = -inf (maskBannedLogits); everything below, logprobs
//    included, sees the masked logits, as SGLang applies its min-new-tokens penalty to the logits before
//    sampling: the chosen token's logprob is then renormalised over the allowed tokens, and a banned id that
//    still makes the top-n list reports -inf. Its probability is exactly 0, so no mode can pick it. A sequence's
//    token bitmask (step.h mask row, grammar-constrained decoding) masks every id it does not allow the same way
//    (maskLogitsByBitmask).
// 1. Logprobs always come from the (masked) logits: lp[i] = z[i] - max(z) - log(sum_j exp(z[j] - max(z))) (sum in
//    double on CPU), i.e. before temperature and filters, as SGLang reports them. Top-n logprobs: the n largest
//    lp, ordered by value descending, ties by lower token id.
// 2. temperature == 0 (or topK == 1): the token is argmax z, ties to the lowest id. No random number is drawn.
// 3. Otherwise, with unnormalised probabilities p[i] = exp((z[i] - max z) / temperature) (f32; masses summed in
//    double):
//    a. candidates = all tokens ordered by z descending, ties by lower id;
//    b. top-k (topK > 0): keep the first topK candidates;
//    c. top-p (topP < 1): renormalise the kept mass to 1, keep the shortest prefix whose cumulative mass is
//       >= topP (always at least one token);
//    d. min-p (minP > 0): keep candidates with p[i] >= minP * p[first candidate] (scale-invariant, so the
//       order relative to renormalisation does not matter);
//    e. draw u in [0, 1) (below) and pick the first kept candidate whose cumulative mass exceeds u * (kept mass).
//       When no filter is active (topK <= 0, topP >= 1, minP <= 0) the candidates need no ordering: the
//       cumulative sum runs over token ids in increasing order (same distribution, no sort). Without top-k, an
//       implementation may sort only the tokens that can survive top-p/min-p (the CPU one does: see sampling.cpp).
// 4. The uniform: Philox4x32-10 with key = (seedLo, seedHi) and counter = (outputIndex, 0, 0, 0); take output
//    word 0 and u = (word0 >> 8) * 2^-24. A request therefore replays exactly, whatever the batch around it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "step.h"

#if defined(__CUDACC__)
#define DSG_HD __host__ __device__ __forceinline__
#else
#define DSG_HD inline
#endif

namespace dsg {

struct Philox4x32 {
  uint32_t x[4];
};

DSG_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = (uint64_t)M0 * c0;
    const uint64_t p1 = (uint64_t)M1 * c2;
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += W0;
    k1 += W1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

/** The uniform in [0, 1) that sequence sampling uses for (seed, outputIndex). */
DSG_HD float samplingUniform(uint64_t seed, int32_t outputIndex) {
  const Philox4x32 r = philox4x32_10((uint32_t)outputIndex, 0u, 0u, 0u, (uint32_t)seed, (uint32_t)(seed >> 32));
  return (float)(r.x[0] >> 8) * (1.0f / 16777216.0f);
}

/** Step 0: logits[banned[i]] = -inf for i < count (ids in [0, vocab), checked at the step boundary). */
void maskBannedLogits(float* logits, const int32_t* banned, int32_t count);

/** Step 0, grammar: logits[id] = -inf for every id in [0, vocab) whose bit in `bitmask` (step.h mask row: bit id % 32
 * of word id / 32, set = allowed) is clear. */
void maskLogitsByBitmask(float* logits, int32_t vocab, const int32_t* bitmask);

/**
 * Reference sampler (host): samples one token from raw logits [vocab] following the algorithm above.
 * Writes the chosen token's logprob to *logprob and, when topN > 0, the top-n ids/logprobs (padded with -1/NaN
 * up to topN slots). `scratch` must hold 2 * vocab floats + vocab ints (see samplingScratchBytes).
 */
size_t samplingScratchBytes(int32_t vocab);
int32_t sampleFromLogits(const float* logits, int32_t vocab, const SamplingParams& params, int32_t topN,
                         float* logprob, int32_t* topIds, float* topLogprobs, void* scratch);

}  // namespace dsg
