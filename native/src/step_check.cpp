// The one check of a step descriptor at the addon boundary (layout in include/step.h).
#include <cmath>
#include <cstring>
#include <string>

#include "loader.h"

namespace dsg {
namespace {

[[noreturn]] void invalid(const std::string& message) { throw EngineError("LLM_ERR_STEP_INVALID", message); }

std::string range(int64_t lo, int64_t hi) { return "[" + std::to_string(lo) + ", " + std::to_string(hi) + ")"; }

float asFloat(int32_t w) {
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}

}  // namespace

void checkStep(const int32_t* w, size_t numWords, const StepLimits& lim, CheckedStep& out, std::vector<int32_t>& pageOwner,
               const std::vector<uint8_t>* previousSampled) {
  if (numWords < (size_t)STEP_HEADER_WORDS)
    invalid("descriptor has " + std::to_string(numWords) + " words, less than the " + std::to_string(STEP_HEADER_WORDS) + "-word header");
  if (w[H_MAGIC] != STEP_MAGIC) invalid("header.magic is not DSTP (not a step descriptor)");
  if (w[H_VERSION] != STEP_VERSION)
    invalid("header.version " + std::to_string(w[H_VERSION]) + " unsupported (expected " + std::to_string(STEP_VERSION) + ")");
  const int32_t numSeqs = w[H_NUM_SEQS], numTokens = w[H_NUM_TOKENS], pageSize = w[H_PAGE_SIZE];
  const int32_t numEntries = w[H_NUM_PAGE_ENTRIES], numBanned = w[H_NUM_BANNED_ENTRIES];
  if (numSeqs < 1 || numSeqs > lim.maxSeqsPerStep)
    invalid("header.numSeqs " + std::to_string(numSeqs) + " out of range [1, " + std::to_string(lim.maxSeqsPerStep) + "] (maxSeqsPerStep)");
  if (numTokens < 1 || numTokens > lim.maxBatchTokens)
    invalid("header.numTokens " + std::to_string(numTokens) + " out of range [1, " + std::to_string(lim.maxBatchTokens) + "] (maxBatchTokens)");
  if (pageSize != lim.pageSize)
    invalid("header.pageSize " + std::to_string(pageSize) + " differs from the engine's page size " + std::to_string(lim.pageSize));
  if (numEntries < 0) invalid("header.numPageEntries " + std::to_string(numEntries) + " is negative");
  if (numBanned < 0 || (int64_t)numBanned > (int64_t)numSeqs * MAX_BANNED_TOKENS)
    invalid("header.numBannedEntries " + std::to_string(numBanned) + " out of range [0, " +
            std::to_string((int64_t)numSeqs * MAX_BANNED_TOKENS) + "] (numSeqs * MAX_BANNED_TOKENS)");
  if ((w[H_FLAGS] & ~STEP_FLAG_RETURN_LOGITS) != 0) invalid("header.flags has unknown bits " + std::to_string(w[H_FLAGS]));
  if ((size_t)w[H_TOTAL_WORDS] != numWords)
    invalid("header.totalWords " + std::to_string(w[H_TOTAL_WORDS]) + " differs from the buffer length " + std::to_string(numWords));
  // Sections are packed in order with no gaps; checking exact offsets rules out overlap and overflow at once.
  const int64_t tokOff = STEP_HEADER_WORDS, posOff = tokOff + numTokens, seqOff = posOff + numTokens;
  const int64_t pagesOff = seqOff + (int64_t)numSeqs * STEP_SEQ_WORDS, bannedOff = pagesOff + numEntries;
  // Masked draws (SEQ_FLAG_MASKED) are counted first: the mask section's length depends on them.
  int64_t numMasked = 0;
  for (int s = 0; s < numSeqs && seqOff + (int64_t)(s + 1) * STEP_SEQ_WORDS <= (int64_t)numWords; ++s)
    if (w[seqOff + (int64_t)s * STEP_SEQ_WORDS + S_FLAGS] & SEQ_FLAG_MASKED) ++numMasked;
  const int32_t maskWords = w[H_MASK_WORDS];
  const int32_t vocabWords = (lim.vocabSize + 31) / 32;
  if (maskWords != (numMasked ? vocabWords : 0))
    invalid("header.maskWords " + std::to_string(maskWords) + " != " + std::to_string(numMasked ? vocabWords : 0) + " (" +
            (numMasked ? "ceil(vocab / 32) with " + std::to_string(numMasked) + " masked sequences" : std::string("no sequence is masked")) + ")");
  const int64_t maskOff = bannedOff + numBanned;
  const int64_t total = maskOff + numMasked * maskWords;
  if (w[H_TOKENS_OFFSET] != tokOff) invalid("header.tokensOffset " + std::to_string(w[H_TOKENS_OFFSET]) + " != " + std::to_string(tokOff));
  if (w[H_POSITIONS_OFFSET] != posOff) invalid("header.positionsOffset " + std::to_string(w[H_POSITIONS_OFFSET]) + " != " + std::to_string(posOff));
  if (w[H_SEQS_OFFSET] != seqOff) invalid("header.seqsOffset " + std::to_string(w[H_SEQS_OFFSET]) + " != " + std::to_string(seqOff));
  if (w[H_PAGES_OFFSET] != pagesOff) invalid("header.pagesOffset " + std::to_string(w[H_PAGES_OFFSET]) + " != " + std::to_string(pagesOff));
  if (w[H_BANNED_OFFSET] != bannedOff) invalid("header.bannedOffset " + std::to_string(w[H_BANNED_OFFSET]) + " != " + std::to_string(bannedOff));
  if (w[H_MASK_OFFSET] != maskOff) invalid("header.maskOffset " + std::to_string(w[H_MASK_OFFSET]) + " != " + std::to_string(maskOff));
  if (total != (int64_t)numWords) invalid("header counts imply " + std::to_string(total) + " words, buffer has " + std::to_string(numWords));

  const int32_t* tokens = w + tokOff;
  const int32_t* positions = w + posOff;
  const int32_t* pages = w + pagesOff;
  const int32_t* banned = w + bannedOff;
  out.seqs.resize(numSeqs);
  if ((int64_t)pageOwner.size() < lim.numPages) pageOwner.assign(lim.numPages, -1);
  int32_t maxTopN = 0;
  int64_t nextQ = 0, nextPage = 0, nextBanned = 0, nextMask = 0;
  std::vector<int32_t>& touched = out.touchedPages;
  touched.clear();
  auto fail = [&](int s, const std::string& m) {
    for (int32_t p : touched) pageOwner[p] = -1;
    invalid("seq " + std::to_string(s) + ": " + m);
  };
  for (int s = 0; s < numSeqs; ++s) {
    const int32_t* r = w + seqOff + (int64_t)s * STEP_SEQ_WORDS;
    SeqView& v = out.seqs[s];
    v.qStart = r[S_Q_START];
    v.qLen = r[S_Q_LEN];
    v.kvLen = r[S_KV_LEN];
    v.numPages = r[S_NUM_PAGES];
    v.lastPageLen = r[S_LAST_PAGE_LEN];
    if (v.qStart != nextQ) fail(s, "qStart " + std::to_string(v.qStart) + " != " + std::to_string(nextQ) + " (sequences must be packed in order)");
    if (v.qLen < 1 || v.qStart + (int64_t)v.qLen > numTokens) fail(s, "qLen " + std::to_string(v.qLen) + " out of range [1, " + std::to_string(numTokens - v.qStart) + "]");
    if (v.kvLen < v.qLen) fail(s, "kvLen " + std::to_string(v.kvLen) + " < qLen " + std::to_string(v.qLen));
    const int64_t needPages = ((int64_t)v.kvLen + pageSize - 1) / pageSize;
    if (v.numPages != needPages) fail(s, "numPages " + std::to_string(v.numPages) + " != ceil(kvLen " + std::to_string(v.kvLen) + " / pageSize " + std::to_string(pageSize) + ") = " + std::to_string(needPages));
    if (r[S_PAGE_START] != nextPage) fail(s, "pageStart " + std::to_string(r[S_PAGE_START]) + " != " + std::to_string(nextPage));
    if (nextPage + v.numPages > numEntries) fail(s, "pages run past header.numPageEntries " + std::to_string(numEntries));
    const int64_t expectLast = (int64_t)v.kvLen - (int64_t)(v.numPages - 1) * pageSize;
    if (v.lastPageLen != expectLast) fail(s, "lastPageLen " + std::to_string(v.lastPageLen) + " != " + std::to_string(expectLast));
    const int32_t flags = r[S_FLAGS];
    if ((flags & ~(SEQ_FLAG_SAMPLE | SEQ_FLAG_MASKED)) != 0) fail(s, "flags has unknown bits " + std::to_string(flags));
    v.sample = (flags & SEQ_FLAG_SAMPLE) != 0;
    v.mask = nullptr;
    if (flags & SEQ_FLAG_MASKED) {
      if (!v.sample) fail(s, "flags: a token bitmask (bit 1) needs a draw (bit 0)");
      v.mask = w + maskOff + nextMask * maskWords;
      // A row that allows nothing would leave the sampler no token: refuse it here, with the sequence named.
      bool any = false;
      for (int32_t i = 0; i < maskWords && !any; ++i) {
        const uint32_t bits = (uint32_t)v.mask[i];
        const int32_t valid = std::min(32, lim.vocabSize - i * 32);
        any = (valid >= 32 ? bits : bits & ((1u << valid) - 1)) != 0;
      }
      if (!any) fail(s, "token bitmask row " + std::to_string(nextMask) + " allows no token in [0, " + std::to_string(lim.vocabSize) + ")");
      ++nextMask;
    }
    SamplingParams& sp = v.sampling;
    sp.temperature = asFloat(r[S_TEMPERATURE]);
    sp.topP = asFloat(r[S_TOP_P]);
    sp.topK = r[S_TOP_K];
    sp.minP = asFloat(r[S_MIN_P]);
    sp.seed = (uint64_t)(uint32_t)r[S_SEED_LO] | ((uint64_t)(uint32_t)r[S_SEED_HI] << 32);
    sp.logprobs = r[S_LOGPROBS];
    sp.outputIndex = r[S_OUTPUT_INDEX];
    if (!std::isfinite(sp.temperature) || sp.temperature < 0) fail(s, "temperature " + std::to_string(sp.temperature) + " must be a finite number >= 0");
    if (!(sp.topP > 0 && sp.topP <= 1)) fail(s, "topP " + std::to_string(sp.topP) + " out of range (0, 1]");
    if (!(sp.minP >= 0 && sp.minP <= 1)) fail(s, "minP " + std::to_string(sp.minP) + " out of range [0, 1]");
    if (sp.logprobs < -1 || sp.logprobs > MAX_TOP_LOGPROBS) fail(s, "logprobs " + std::to_string(sp.logprobs) + " out of range [-1, " + std::to_string(MAX_TOP_LOGPROBS) + "]");
    if (sp.outputIndex < 0) fail(s, "outputIndex " + std::to_string(sp.outputIndex) + " is negative");
    if (sp.logprobs > maxTopN) maxTopN = sp.logprobs;
    v.bannedCount = r[S_BANNED_COUNT];
    if (v.bannedCount < 0 || v.bannedCount > MAX_BANNED_TOKENS)
      fail(s, "bannedCount " + std::to_string(v.bannedCount) + " out of range [0, " + std::to_string(MAX_BANNED_TOKENS) + "] (MAX_BANNED_TOKENS)");
    if (nextBanned + v.bannedCount > numBanned) fail(s, "banned ids run past header.numBannedEntries " + std::to_string(numBanned));
    v.banned = banned + nextBanned;
    for (int i = 0; i < v.bannedCount; ++i) {
      const int32_t id = v.banned[i];
      if (id < 0 || id >= lim.vocabSize) fail(s, "banned token " + std::to_string(id) + " at index " + std::to_string(i) + " out of range " + range(0, lim.vocabSize));
      for (int j = 0; j < i; ++j)
        if (v.banned[j] == id) fail(s, "banned token " + std::to_string(id) + " appears twice");
    }
    nextBanned += v.bannedCount;
    const int32_t start = v.kvLen - v.qLen;
    for (int t = 0; t < v.qLen; ++t) {
      const int32_t tok = tokens[v.qStart + t];
      if (tok < 0 && previousSampled) {
        const int64_t row = -1 - (int64_t)tok;
        if (row >= (int64_t)previousSampled->size() || !(*previousSampled)[row])
          fail(s, "token placeholder " + std::to_string(tok) + " at index " + std::to_string(t) + " names row " + std::to_string(row) +
                      " of the previous step, which " +
                      (previousSampled->empty() ? std::string("did not run (or failed)")
                                                : "had " + std::to_string(previousSampled->size()) + " rows and sampled no token there"));
      } else if (tok < 0 || tok >= lim.vocabSize) {
        fail(s, "token " + std::to_string(tok) + " at index " + std::to_string(t) + " out of range " + range(0, lim.vocabSize));
      }
      if (positions[v.qStart + t] != start + t)
        fail(s, "position " + std::to_string(positions[v.qStart + t]) + " at index " + std::to_string(t) + " != kvLen - qLen + index = " + std::to_string(start + t));
    }
    v.pages = pages + nextPage;
    const int32_t firstWritten = start / pageSize;
    for (int i = 0; i < v.numPages; ++i) {
      const int32_t p = v.pages[i];
      if (p < 0 || p >= lim.numPages) fail(s, "page " + std::to_string(p) + " out of range " + range(0, lim.numPages));
      const int32_t owner = pageOwner[p];
      // Encoding: owner = s*2 for a page seq s reads only, s*2+1 for a page it writes this step.
      const bool writes = i >= firstWritten;
      if (owner >= 0) {
        const int ownerSeq = owner >> 1;
        const bool ownerWrites = (owner & 1) != 0;
        if (ownerSeq == s) fail(s, "page " + std::to_string(p) + " appears twice");
        if (writes || ownerWrites) fail(s, "page " + std::to_string(p) + " is written this step and also used by seq " + std::to_string(ownerSeq));
        if (!writes) continue;
      }
      pageOwner[p] = s * 2 + (writes ? 1 : 0);
      touched.push_back(p);
    }
    nextQ += v.qLen;
    nextPage += v.numPages;
  }
  for (int32_t p : touched) pageOwner[p] = -1;
  if (nextQ != numTokens) invalid("header.numTokens " + std::to_string(numTokens) + " != sum of qLen " + std::to_string(nextQ));
  if (nextPage != numEntries) invalid("header.numPageEntries " + std::to_string(numEntries) + " != sum of numPages " + std::to_string(nextPage));
  if (nextBanned != numBanned) invalid("header.numBannedEntries " + std::to_string(numBanned) + " != sum of bannedCount " + std::to_string(nextBanned));
  out.view.numSeqs = numSeqs;
  out.view.numTokens = numTokens;
  out.view.pageSize = pageSize;
  out.view.returnLogits = (w[H_FLAGS] & STEP_FLAG_RETURN_LOGITS) != 0;
  out.view.tokens = tokens;
  out.view.positions = positions;
  out.view.seqs = out.seqs.data();
  out.view.maxTopN = maxTopN;
  out.view.numBanned = numBanned;
  out.view.numMasked = (int32_t)numMasked;
  out.view.maskWords = maskWords;
}

}  // namespace dsg
