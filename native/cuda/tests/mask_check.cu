// Check of banned-token masking (min_tokens) on the GPU: launchMaskBanned then launchSample against the CPU reference
// (maskBannedLogits then sampleFromLogits, native/src/sampling.cpp) on random logits (never zeros), every sampling
// mode, with the banned ids chosen among each row's most likely tokens so that an unmasked sampler would pick them.
// Also replays the pair from a CUDA graph after rewriting the banned table in place (fixed addresses, as the backend
// captures it). Build and run on the GPU machine (no cuBLAS needed), from the repository root:
//   nvcc -std=c++17 -O3 -arch=sm_90 -I native/include -I native/cuda native/cuda/tests/mask_check.cu \
//     native/cuda/sampling.cu native/cuda/token_feedback.cu native/src/sampling.cpp -o mcheck && ./mcheck
// Also checks the token-feedback kernel of pipelined steps (token_feedback.cu, built with its source added to the
// command above) against its CPU meaning: every placeholder -(1 + row) becomes sampled[row], other ids unchanged.
// Also checks grammar bitmask masking (launchMaskBitmask) against maskLogitsByBitmask.
// Prints one line per check and exits non-zero if any fails.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "common.cuh"
#include "kernels.h"
#include "sampling.h"
#include "check_util.cuh"

using namespace dsg;
using namespace dsg::cuda;
using namespace check;

static std::mt19937_64 rng(20261127);



/** Ids of z ordered by logit descending, ties to the lower id (the sampler's candidate order). */
static std::vector<int32_t> ranked(const float* z, int vocab) {
  std::vector<int32_t> o(vocab);
  std::iota(o.begin(), o.end(), 0);
  std::stable_sort(o.begin(), o.end(), [&](int32_t a, int32_t b) { return z[a] > z[b]; });
  return o;
}

struct Case {
  int vocab, numSeqs, topN;
};

static void checkMaskedSampling(const Case& c, bool viaGraph) {
  const int vocab = c.vocab, S = c.numSeqs, topN = c.topN, cap = MAX_BANNED_TOKENS;
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<float> logits((size_t)S * vocab);
  for (auto& x : logits) x = nd(rng);
  // A few dominant tokens per row (as EOS often is): about 90% of the mass at temperature 1 in large vocabularies.
  for (int s = 0; s < S; ++s)
    for (int j = 0; j < 8; ++j) logits[(size_t)s * vocab + rng() % vocab] += 14.f;
  // Rows: 0 no ban, 1 a full table (cap ids), s % 7 == 3 not sampled; the rest ban 1..4 of their top tokens
  // (sometimes skipping one, so a banned id sits below an allowed one) plus a random id.
  std::vector<int32_t> banned((size_t)S * cap, -1);
  std::vector<std::vector<int32_t>> bannedOf(S);
  for (int s = 0; s < S; ++s) {
    const std::vector<int32_t> order = ranked(&logits[(size_t)s * vocab], vocab);
    std::vector<int32_t> ids;
    if (s == 1) ids.assign(order.begin(), order.begin() + cap);
    else if (s != 0) {
      const int n = 1 + s % 4;
      for (int j = 0; j < n; ++j) ids.push_back(order[(s % 3 == 2 && j > 0) ? j + 1 : j]);
      const int32_t extra = (int32_t)(rng() % vocab);
      if (std::find(ids.begin(), ids.end(), extra) == ids.end()) ids.push_back(extra);
    }
    std::shuffle(ids.begin(), ids.end(), rng);  // the table is unordered
    std::copy(ids.begin(), ids.end(), banned.begin() + (size_t)s * cap);
    bannedOf[s] = ids;
  }
  std::vector<SampleParams> ps(S);
  std::vector<dsg::SamplingParams> cps(S);
  for (int s = 0; s < S; ++s) {
    SampleParams p{};
    const int mode = s % 6;  // greedy, plain, top-k, top-p, min-p, all three
    p.temperature = mode == 0 ? 0.f : 0.6f + 0.2f * (s % 4);
    p.topK = mode == 2 || mode == 5 ? 20 : (s == 13 ? 1 : 0);
    p.topP = mode == 3 || mode == 5 ? 0.85f : 1.f;
    p.minP = mode == 4 || mode == 5 ? 0.05f : 0.f;
    p.seedLo = (uint32_t)rng();
    p.seedHi = (uint32_t)rng();
    p.logprobs = s % 3 == 0 || s == 1 ? topN : (s % 3 == 1 ? 0 : -1);
    p.outputIndex = (int32_t)(rng() % 1000);
    p.sample = s % 7 == 3 ? 0 : 1;
    ps[s] = p;
    cps[s] = dsg::SamplingParams{p.temperature, p.topP, p.topK, p.minP, ((uint64_t)p.seedHi << 32) | p.seedLo,
                                 p.logprobs, p.outputIndex};
  }
  // CPU reference logits: the same mask.
  std::vector<float> masked = logits;
  for (int s = 0; s < S; ++s) maskBannedLogits(&masked[(size_t)s * vocab], bannedOf[s].data(), (int32_t)bannedOf[s].size());

  Dev<float> dLogits((size_t)S * vocab);
  Dev<int32_t> dBanned(banned);
  Dev<SampleParams> dP(ps);
  Dev<int32_t> dTok(S), dTopIds((size_t)S * topN);
  Dev<float> dLp(S), dTopLp((size_t)S * topN);
  cudaStream_t stream;
  DSG_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto run = [&]() {
    launchMaskBanned(dLogits.p, S, vocab, dBanned.p, cap, stream);
    launchSample(dLogits.p, S, vocab, dP.p, topN, dTok.p, dLp.p, dTopIds.p, dTopLp.p, stream);
  };
  cudaGraphExec_t exec = nullptr;
  if (viaGraph) {
    cudaGraph_t graph = nullptr;
    // Captured with a different (empty) banned table: the replays must read whatever the buffer holds then.
    dBanned.put(std::vector<int32_t>((size_t)S * cap, -1));
    DSG_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    run();
    DSG_CUDA(cudaStreamEndCapture(stream, &graph));
    DSG_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    DSG_CUDA(cudaGraphDestroy(graph));
    dBanned.put(banned);
  }

  int mismatches = 0, draws = 0, bannedDrawn = 0, unmaskedBannedTop = 0;
  double lpErr = 0, logitErr = 0;
  std::vector<unsigned char> scratch(samplingScratchBytes(vocab));
  for (int rep = 0; rep < 12; ++rep) {
    for (int s = 0; s < S; ++s) {
      ps[s].outputIndex += 1;
      cps[s].outputIndex += 1;
    }
    dP.put(ps);
    dLogits.put(logits);  // fresh raw logits each draw, as the LM head writes them each step
    dTok.poison();
    dTopIds.poison();
    DSG_CUDA(cudaDeviceSynchronize());  // the copies above ran on the legacy stream; `stream` does not wait for it
    if (viaGraph) DSG_CUDA(cudaGraphLaunch(exec, stream));
    else run();
    DSG_CUDA(cudaStreamSynchronize(stream));
    const auto tok = dTok.get();
    const auto lp = dLp.get();
    const auto tids = dTopIds.get();
    const auto tlp = dTopLp.get();
    if (rep == 0) {
      const auto gotLogits = dLogits.get();
      for (size_t i = 0; i < gotLogits.size(); ++i) {
        if (std::isinf(masked[i])) logitErr += !(std::isinf(gotLogits[i]) && gotLogits[i] < 0);
        else logitErr = std::max(logitErr, (double)std::fabs(gotLogits[i] - masked[i]));
      }
    }
    for (int s = 0; s < S; ++s) {
      float clp;
      std::vector<int32_t> cids(topN);
      std::vector<float> clps(topN);
      const int32_t ref = sampleFromLogits(&masked[(size_t)s * vocab], vocab, cps[s], topN, &clp, cids.data(), clps.data(),
                                           scratch.data());
      if (!ps[s].sample) {
        mismatches += tok[s] != -1;
        continue;
      }
      ++draws;
      const std::vector<int32_t>& b = bannedOf[s];
      bannedDrawn += std::find(b.begin(), b.end(), tok[s]) != b.end();
      // Without the mask the reference would often pick a banned id: the check has teeth.
      dsg::SamplingParams noLogprobs = cps[s];
      noLogprobs.logprobs = -1;
      float rawLp;
      const int32_t unmasked = sampleFromLogits(&logits[(size_t)s * vocab], vocab, noLogprobs, 0, &rawLp, nullptr,
                                                nullptr, scratch.data());
      unmaskedBannedTop += std::find(b.begin(), b.end(), unmasked) != b.end();
      mismatches += tok[s] != ref;
      if (ps[s].logprobs >= 0) lpErr = std::max(lpErr, (double)std::fabs(lp[s] - clp));
      else mismatches += !std::isnan(lp[s]);
      for (int i = 0; i < topN; ++i) {
        const size_t k = (size_t)s * topN + i;
        mismatches += tids[k] != cids[i];
        if (cids[i] >= 0 && std::isfinite(clps[i])) lpErr = std::max(lpErr, (double)std::fabs(tlp[k] - clps[i]));
        else if (cids[i] >= 0) mismatches += !(std::isinf(tlp[k]) && tlp[k] < 0);  // a banned id in the top-n: -inf
      }
    }
  }
  if (exec) cudaGraphExecDestroy(exec);
  cudaStreamDestroy(stream);
  char name[160];
  printf("masked sampling vocab %d, %d rows%s: %d draws, %d of them would pick a banned id unmasked\n", vocab, S,
         viaGraph ? " (graph replay)" : "", draws, unmaskedBannedTop);
  snprintf(name, sizeof name, "mask: logits equal the CPU-masked ones (vocab %d%s)", vocab, viaGraph ? ", graph" : "");
  report(name, logitErr, 0);
  snprintf(name, sizeof name, "mask: banned ids drawn (count, vocab %d%s)", vocab, viaGraph ? ", graph" : "");
  report(name, bannedDrawn, 0);
  snprintf(name, sizeof name, "mask: token/top-n mismatches vs CPU (vocab %d%s)", vocab, viaGraph ? ", graph" : "");
  report(name, mismatches, 0);
  snprintf(name, sizeof name, "mask: logprob abs err vs CPU (vocab %d%s)", vocab, viaGraph ? ", graph" : "");
  report(name, lpErr, 2e-5);
  snprintf(name, sizeof name, "mask: unmasked draws hitting a banned id (vocab %d%s)", vocab, viaGraph ? ", graph" : "");
  report(name, unmaskedBannedTop >= draws / 5 ? 0 : 1, 0);  // the setup must make the ban matter
}

/** launchResolveTokenFeedback on random ids with random placeholders (about one in three), exact comparison. */
static void checkTokenFeedback(int n, int prevRows) {
  std::uniform_int_distribution<int32_t> id(0, 151935), row(0, prevRows - 1), coin(0, 2);
  std::vector<int32_t> sampledHost(prevRows), tokens(n), expected(n);
  for (auto& x : sampledHost) x = id(rng);
  for (int i = 0; i < n; ++i) {
    if (coin(rng) == 0) {
      const int r = row(rng);
      tokens[i] = -1 - r;
      expected[i] = sampledHost[r];
    } else {
      tokens[i] = expected[i] = id(rng);
    }
  }
  Dev<int32_t> dTokens(tokens), dSampled(sampledHost);
  launchResolveTokenFeedback(dTokens.p, n, dSampled.p, 0);
  DSG_CUDA(cudaDeviceSynchronize());
  const std::vector<int32_t> got = dTokens.get();
  int wrong = 0;
  for (int i = 0; i < n; ++i) wrong += got[i] != expected[i];
  const bool ok = wrong == 0;
  if (!ok) ++failures;
  printf("token feedback n %5d from %3d rows: %s (%d wrong)\n", n, prevRows, ok ? "PASS" : "FAIL", wrong);
}

// Grammar bitmasks (step.h mask rows): launchMaskBitmask against maskLogitsByBitmask on random masks, rows without a
// mask (-1) untouched, a vocabulary that is not a multiple of 32; eager and replayed from a graph after rewriting the
// table in place.
static void checkBitmask(int vocab, int rows, bool viaGraph) {
  const int words = (vocab + 31) / 32;
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<float> logits((size_t)rows * vocab);
  for (auto& x : logits) x = nd(rng);
  std::vector<int32_t> maskRows(rows), masks((size_t)rows * words);
  int m = 0;
  for (int r = 0; r < rows; ++r) maskRows[r] = r % 3 == 1 ? -1 : m++;
  for (auto& w : masks) w = (int32_t)(rng() % 4 == 0 ? 0xffffffffu : (uint32_t)rng());
  std::vector<float> want = logits;
  for (int r = 0; r < rows; ++r)
    if (maskRows[r] >= 0) maskLogitsByBitmask(&want[(size_t)r * vocab], vocab, &masks[(size_t)maskRows[r] * words]);
  Dev<float> logitsBuf(logits);
  Dev<int32_t> rowsBuf(std::vector<int32_t>(rows, -1)), masksBuf(std::vector<int32_t>(masks.size(), 0));
  float* dLogits = logitsBuf.p;
  int32_t* dRows = rowsBuf.p;
  int32_t* dMasks = masksBuf.p;
  cudaStream_t stream;
  DSG_CUDA(cudaStreamCreate(&stream));
  cudaGraphExec_t exec = nullptr;
  if (viaGraph) {
    cudaGraph_t graph;
    DSG_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    launchMaskBitmask(dLogits, rows, vocab, dRows, dMasks, words, stream);
    DSG_CUDA(cudaStreamEndCapture(stream, &graph));
    DSG_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    DSG_CUDA(cudaGraphDestroy(graph));
  }
  rowsBuf.put(maskRows);
  masksBuf.put(masks);
  DSG_CUDA(cudaDeviceSynchronize());  // the copies ran on the legacy stream
  if (exec) DSG_CUDA(cudaGraphLaunch(exec, stream));
  else launchMaskBitmask(dLogits, rows, vocab, dRows, dMasks, words, stream);
  DSG_CUDA(cudaStreamSynchronize(stream));
  const std::vector<float> got = logitsBuf.get();
  double mismatches = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(got[i] == want[i] || (std::isinf(got[i]) && std::isinf(want[i])))) ++mismatches;
  report("bitmask vocab " + std::to_string(vocab) + " rows " + std::to_string(rows) + (viaGraph ? " (graph)" : ""), mismatches, 0);
  if (exec) cudaGraphExecDestroy(exec);
  cudaStreamDestroy(stream);
}

int main() {
  try {
    checkMaskedSampling(Case{151936, 24, 5}, false);
    checkMaskedSampling(Case{151936, 24, 5}, true);
    checkMaskedSampling(Case{1000, 37, 20}, false);
    // Row 1 bans 16 of 32 tokens: its top-20 list reaches past the allowed ones, into banned ids at -inf.
    checkMaskedSampling(Case{32, 19, 20}, false);
    checkBitmask(151936, 9, false);
    checkBitmask(151936, 9, true);
    checkBitmask(1000, 5, false);
    for (int n : {1, 255, 257, 8192}) checkTokenFeedback(n, n == 1 ? 1 : 256);
    DSG_CUDA(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    printf("ERROR: %s\n", e.what());
    return 2;
  }
  printf("%s: %d check(s) failed\n", failures ? "FAILED" : "ALL PASSED", failures);
  return failures ? 1 : 0;
}
