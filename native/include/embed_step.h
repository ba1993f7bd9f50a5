// What both backends' embed() share: the one-sequence step of an embedding pass over private pages, and the pooling
// of its final hidden rows into the returned vector.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "step.h"

namespace dsg {

/**
 * The step of an embedding pass: one sequence of n tokens at positions 0..n-1 over private pages 0..numPages-1 (the
 * backend's own KV block, never the shared pool). Owns the page and position lists its view points into, so it is
 * neither copied nor moved.
 */
struct EmbedStep {
  std::vector<int32_t> pages, positions;
  SeqView seq{};
  StepView view{};

  EmbedStep(const int32_t* tokens, int32_t n, int32_t pageSize) : pages((n + pageSize - 1) / pageSize), positions(n) {
    const int32_t np = (int32_t)pages.size();
    for (int32_t i = 0; i < np; ++i) pages[i] = i;
    for (int32_t i = 0; i < n; ++i) positions[i] = i;
    seq.qStart = 0;
    seq.qLen = n;
    seq.kvLen = n;
    seq.pages = pages.data();
    seq.numPages = np;
    seq.lastPageLen = n - (np - 1) * pageSize;
    view.numSeqs = 1;
    view.numTokens = n;
    view.pageSize = pageSize;
    view.tokens = tokens;
    view.positions = positions.data();
    view.seqs = &seq;
  }
  EmbedStep(const EmbedStep&) = delete;
  EmbedStep& operator=(const EmbedStep&) = delete;

  int32_t numPages() const { return (int32_t)pages.size(); }
};

/** out[i] = mean over t < n of rows[t][i], scaled to unit L2 norm (left as is when the mean is zero); f64 sums. */
inline void meanPoolNormalized(const float* rows, int32_t n, int64_t hidden, float* out) {
  std::vector<double> sum(hidden, 0.0);
  for (int32_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < hidden; ++i) sum[i] += rows[(int64_t)t * hidden + i];
  double norm = 0;
  for (int64_t i = 0; i < hidden; ++i) norm += (sum[i] / n) * (sum[i] / n);
  norm = std::sqrt(norm);
  for (int64_t i = 0; i < hidden; ++i) out[i] = (float)(sum[i] / n / (norm > 0 ? norm : 1.0));
}

}  // namespace dsg
