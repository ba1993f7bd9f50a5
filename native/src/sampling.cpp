// Reference sampler: the algorithm documented in include/sampling.h, step by step.
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace dsg {
namespace {

/** Candidate order: logit descending, ties by lower token id. */
struct ByLogitDesc {
  const float* z;
  bool operator()(int32_t a, int32_t b) const { return z[a] > z[b] || (z[a] == z[b] && a < b); }
};

int32_t argmaxLowestId(const float* z, int32_t vocab) {
  int32_t best = 0;
  float bestV = z[0];
  for (int32_t i = 1; i < vocab; ++i)
    if (z[i] > bestV) {
      bestV = z[i];
      best = i;
    }
  return best;
}

}  // namespace

void maskBannedLogits(float* logits, const int32_t* banned, int32_t count) {
  for (int32_t i = 0; i < count; ++i) logits[banned[i]] = -std::numeric_limits<float>::infinity();
}

void maskLogitsByBitmask(float* logits, int32_t vocab, const int32_t* bitmask) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int32_t w = 0; w * 32 < vocab; ++w) {
    const uint32_t bits = (uint32_t)bitmask[w];
    if (bits == 0xffffffffu) continue;
    const int32_t end = std::min(vocab, w * 32 + 32);
    for (int32_t id = w * 32; id < end; ++id)
      if (!((bits >> (id - w * 32)) & 1u)) logits[id] = ninf;
  }
}

size_t samplingScratchBytes(int32_t vocab) { return (size_t)vocab * (sizeof(float) + sizeof(int32_t)); }

int32_t sampleFromLogits(const float* z, int32_t vocab, const SamplingParams& sp, int32_t topN, float* logprob,
                         int32_t* topIds, float* topLogprobs, void* scratch) {
  float* prob = static_cast<float*>(scratch);
  int32_t* order = reinterpret_cast<int32_t*>(prob + vocab);

  int32_t chosen;
  const bool greedy = sp.temperature == 0.0f || sp.topK == 1;
  if (greedy) {
    chosen = argmaxLowestId(z, vocab);
  } else {
    const float zmax = z[argmaxLowestId(z, vocab)];
    const float invT = 1.0f / sp.temperature;
    double mass = 0;
    for (int32_t i = 0; i < vocab; ++i) {
      prob[i] = std::exp((z[i] - zmax) * invT);  // the argmax token has prob exactly 1
      mass += prob[i];
    }
    const double u = samplingUniform(sp.seed, sp.outputIndex);
    const bool filtered = sp.topK > 0 || sp.topP < 1.0f || sp.minP > 0.0f;
    if (!filtered) {
      const double target = u * mass;
      double cum = 0;
      chosen = vocab - 1;
      for (int32_t i = 0; i < vocab; ++i) {
        cum += prob[i];
        if (cum > target) {
          chosen = i;
          break;
        }
      }
    } else {
      int32_t kept;
      double keptMass;
      if (sp.topK > 0 && sp.topK < vocab) {
        for (int32_t i = 0; i < vocab; ++i) order[i] = i;
        kept = sp.topK;
        std::partial_sort(order, order + kept, order + vocab, ByLogitDesc{z});
        keptMass = 0;
        for (int32_t i = 0; i < kept; ++i) keptMass += prob[order[i]];
      } else {
        // Only tokens that can survive top-p and min-p need sorting: those with prob >= tau, where tau is the
        // min-p threshold, raised (by factors of 16 from 1/2) while the mass above it still reaches topP * mass,
        // which guarantees the top-p prefix lies inside the candidates. Exact, and usually a short list.
        float tau = sp.minP > 0.0f ? sp.minP : 0.0f;
        if (sp.topP < 1.0f) {
          const double need = (double)sp.topP * mass;
          for (float t = 0.5f; t > tau; t *= 0.0625f) {
            double above = 0;
            for (int32_t i = 0; i < vocab; ++i)
              if (prob[i] >= t) above += prob[i];
            if (above >= need) {
              tau = t;
              break;
            }
            if (t < 1e-30f) break;
          }
        }
        kept = 0;
        for (int32_t i = 0; i < vocab; ++i)
          if (prob[i] >= tau) order[kept++] = i;
        std::sort(order, order + kept, ByLogitDesc{z});
        keptMass = mass;  // top-p is relative to the whole distribution
      }
      if (sp.topP < 1.0f) {
        const double limit = (double)sp.topP * keptMass;
        double cum = 0;
        int32_t n = 0;
        while (n < kept) {
          cum += prob[order[n]];
          ++n;
          if (cum >= limit) break;
        }
        kept = n;
        keptMass = cum;
      }
      {
        // min-p (a no-op when minP = 0); also recomputes the kept mass over the final candidate list.
        const float threshold = sp.minP * prob[order[0]];
        int32_t n = 1;
        double cum = prob[order[0]];
        // Candidates are in descending probability order, so the kept set is a prefix.
        while (n < kept && prob[order[n]] >= threshold) cum += prob[order[n++]];
        kept = n;
        keptMass = cum;
      }
      const double target = u * keptMass;
      double cum = 0;
      chosen = order[kept - 1];
      for (int32_t i = 0; i < kept; ++i) {
        cum += prob[order[i]];
        if (cum > target) {
          chosen = order[i];
          break;
        }
      }
    }
  }

  if (sp.logprobs >= 0) {
    const float zmax = z[argmaxLowestId(z, vocab)];
    double sum = 0;
    for (int32_t i = 0; i < vocab; ++i) sum += std::exp((double)z[i] - zmax);
    const double lse = zmax + std::log(sum);
    *logprob = (float)((double)z[chosen] - lse);
    const int32_t n = std::min(sp.logprobs, vocab);
    if (n > 0) {
      for (int32_t i = 0; i < vocab; ++i) order[i] = i;
      std::partial_sort(order, order + n, order + vocab, ByLogitDesc{z});
      for (int32_t i = 0; i < n; ++i) {
        topIds[i] = order[i];
        topLogprobs[i] = (float)((double)z[order[i]] - lse);
      }
    }
    for (int32_t i = std::max(n, 0); i < topN; ++i) {
      topIds[i] = -1;
      topLogprobs[i] = std::numeric_limits<float>::quiet_NaN();
    }
  } else {
    *logprob = std::numeric_limits<float>::quiet_NaN();
    for (int32_t i = 0; i < topN; ++i) {
      topIds[i] = -1;
      topLogprobs[i] = std::numeric_limits<float>::quiet_NaN();
    }
  }
  return chosen;
}

}  // namespace dsg
