// What both backends' embed() share: the step of an embedding pass (a batch of sequences over private pages), and
// the pooling of each sequence's final hidden rows into its returned vector.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "step.h"

namespace dsg {

/** How a sequence's final hidden rows (after the final norm) become its embedding. Values are the addon's wire. */
enum class EmbedPooling : int32_t {
  Last = 0,  // the last token's row (decoder embedding models, e.g. Qwen3-Embedding)
  Mean = 1,  // the mean over the sequence's rows (sentence-transformers pooling_mode_mean_tokens)
  Cls = 2,   // the first token's row (sentence-transformers pooling_mode_cls_token)
};

/**
 * The step of an embedding pass: numSeqs sequences, sequence i holding lens[i] tokens at positions 0..lens[i]-1,
 * each over private pages of its own (numbered 0..numPages()-1 across the batch: the backend's own KV block, never
 * the shared pool). Owns the page and position lists its view points into, so it is neither copied nor moved.
 */
struct EmbedStep {
  std::vector<int32_t> pages, positions;
  std::vector<SeqView> seqs;
  StepView view{};

  EmbedStep(const int32_t* tokens, const int32_t* lens, int32_t numSeqs, int32_t pageSize) : seqs(numSeqs) {
    int32_t numTokens = 0, numPages = 0;
    for (int32_t i = 0; i < numSeqs; ++i) {
      numTokens += lens[i];
      numPages += (lens[i] + pageSize - 1) / pageSize;
    }
    pages.resize(numPages);
    positions.resize(numTokens);
    for (int32_t p = 0; p < numPages; ++p) pages[p] = p;
    int32_t t0 = 0, p0 = 0;
    for (int32_t i = 0; i < numSeqs; ++i) {
      const int32_t n = lens[i], np = (n + pageSize - 1) / pageSize;
      for (int32_t j = 0; j < n; ++j) positions[t0 + j] = j;
      SeqView& s = seqs[i];
      s = SeqView{};
      s.qStart = t0;
      s.qLen = n;
      s.kvLen = n;
      s.pages = pages.data() + p0;
      s.numPages = np;
      s.lastPageLen = n - (np - 1) * pageSize;
      t0 += n;
      p0 += np;
    }
    view.numSeqs = numSeqs;
    view.numTokens = numTokens;
    view.pageSize = pageSize;
    view.tokens = tokens;
    view.positions = positions.data();
    view.seqs = seqs.data();
  }
  EmbedStep(const EmbedStep&) = delete;
  EmbedStep& operator=(const EmbedStep&) = delete;

  int32_t numPages() const { return (int32_t)pages.size(); }

  /** The first and one-past-last token row whose final hidden state sequence i's pooling reads. */
  static void pooledRows(const SeqView& s, EmbedPooling pooling, int32_t* begin, int32_t* end) {
    *begin = pooling == EmbedPooling::Last ? s.qStart + s.qLen - 1 : s.qStart;
    *end = pooling == EmbedPooling::Cls ? s.qStart + 1 : s.qStart + s.qLen;
  }
};

/**
 * out = the pooled vector of rows [0, n) (one row for Last / Cls, the mean of all for Mean), scaled to unit L2 norm
 * when `normalize` (left as is when it is zero); f64 sums.
 */
inline void poolRows(const float* rows, int32_t n, int64_t hidden, bool normalize, float* out) {
  std::vector<double> sum(hidden, 0.0);
  for (int32_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < hidden; ++i) sum[i] += rows[(int64_t)t * hidden + i];
  double norm = 0;
  for (int64_t i = 0; i < hidden; ++i) {
    sum[i] /= n;
    norm += sum[i] * sum[i];
  }
  norm = std::sqrt(norm);
  const double scale = normalize && norm > 0 ? 1.0 / norm : 1.0;
  for (int64_t i = 0; i < hidden; ++i) out[i] = (float)(sum[i] * scale);
}

}  // namespace dsg
