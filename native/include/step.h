// The flat step descriptor: one Int32 buffer that carries a ragged batch (prefill chunks and decode tokens mixed)
// across the addon boundary. Written by src/engine/step.ts (packStep), read here. This table is the one written
// layout; step.ts mirrors it word for word. All values are 32-bit little-endian words (int32 unless noted f32/u32).
//
// Header, HEADER_WORDS = 16 words at word 0:
//   [0]  magic            STEP_MAGIC (0x50545344, "DSTP")
//   [1]  version          STEP_VERSION (3; version 2 had no mask section, words 14-15 were 0; version 1 had no banned
//                         section either)
//   [2]  numSeqs          >= 1
//   [3]  numTokens        sum of qLen over sequences, >= 1
//   [4]  pageSize         must equal the engine's KV page size
//   [5]  numPageEntries   length of the pages section
//   [6]  flags            bit 0: return full-vocabulary logits of each sequence's last token
//   [7]  tokensOffset     word offset of the token ids section   (numTokens words)
//   [8]  positionsOffset  word offset of the positions section   (numTokens words)
//   [9]  seqsOffset       word offset of the sequence records    (numSeqs * SEQ_WORDS words)
//   [10] pagesOffset      word offset of the page indices        (numPageEntries words)
//   [11] totalWords       length of the whole descriptor in words
//   [12] bannedOffset     word offset of the banned token ids     (numBannedEntries words)
//   [13] numBannedEntries length of the banned section = sum of bannedCount over sequences
//   [14] maskOffset       word offset of the token bitmasks       (numMasked * maskWords words)
//   [15] maskWords        words per bitmask row: ceil(vocab / 32) when any sequence is masked, else 0
// Sections follow in the order tokens, positions, seqs, pages, banned, masks, packed with no gaps (the offsets are
// still checked, so a reader never trusts them blindly).
//
// Sequence record, SEQ_WORDS = 16 words each:
//   [0]  qStart        index of the sequence's first token in the tokens/positions sections
//   [1]  qLen          tokens processed this step (>= 1; a decode token is qLen 1)
//   [2]  kvLen         tokens in the KV cache after this step = startPos + qLen
//   [3]  pageStart     index of the sequence's first entry in the pages section
//   [4]  numPages      = ceil(kvLen / pageSize); pages cover positions [0, kvLen) in order
//   [5]  lastPageLen   = kvLen - (numPages - 1) * pageSize, in [1, pageSize]
//   [6]  flags         bit 0: sample a token after the last query token; bit 1: the draw is masked by a token
//                      bitmask (grammar-constrained decoding; only with bit 0)
//   [7]  temperature   f32 bits; 0 = greedy
//   [8]  topP          f32 bits; in (0, 1], 1 = off
//   [9]  topK          <= 0 = off
//   [10] minP          f32 bits; in [0, 1], 0 = off
//   [11] seedLo        u32, low half of the 64-bit seed
//   [12] seedHi        u32, high half
//   [13] logprobs      -1 none, 0 chosen token only, n > 0 also top n (n <= MAX_TOP_LOGPROBS)
//   [14] outputIndex   >= 0; Philox counter for this draw (see sampling.h)
//   [15] bannedCount   in [0, MAX_BANNED_TOKENS]: token ids this draw may not pick (min_tokens: the request's
//                      EOS and stop ids). Their logits become -inf before sampling and logprobs (sampling.h),
//                      and in the logits the step returns (header flag bit 0).
// Sequences are laid out back to back: seq i's qStart = sum of qLen of seqs < i (checked).
// Seq i's banned ids follow seq i-1's in the banned section (its start = sum of bannedCount of seqs < i); each id
// lies in [0, vocab) and appears once per sequence (checked).
// Masked sequences take bitmask rows in order: the k-th sequence with flag bit 1 uses row k of the masks section.
// Bit (id % 32) of word (id / 32) of a row set = token id allowed; every other token's logit becomes -inf before
// sampling and logprobs, and in the returned logits. A row allows at least one id in [0, vocab) (checked); bits at
// ids >= vocab are ignored.
// Token t of seq s has position (kvLen - qLen + t) (checked: the positions section must say exactly that).
// Page indices lie in [0, numPagesInPool); no page appears twice in one sequence, and a page that a sequence
// writes this step (one covering positions [kvLen - qLen, kvLen)) appears in no other sequence of the step.
#pragma once
#include <cstdint>

namespace dsg {

constexpr int32_t STEP_MAGIC = 0x50545344;
constexpr int32_t STEP_VERSION = 3;
constexpr int STEP_HEADER_WORDS = 16;
constexpr int STEP_SEQ_WORDS = 16;
constexpr int MAX_TOP_LOGPROBS = 64;
/** Banned token ids one sequence may carry in one step (bannedCount's bound). */
constexpr int MAX_BANNED_TOKENS = 16;

enum StepHeaderField : int {
  H_MAGIC = 0,
  H_VERSION = 1,
  H_NUM_SEQS = 2,
  H_NUM_TOKENS = 3,
  H_PAGE_SIZE = 4,
  H_NUM_PAGE_ENTRIES = 5,
  H_FLAGS = 6,
  H_TOKENS_OFFSET = 7,
  H_POSITIONS_OFFSET = 8,
  H_SEQS_OFFSET = 9,
  H_PAGES_OFFSET = 10,
  H_TOTAL_WORDS = 11,
  H_BANNED_OFFSET = 12,
  H_NUM_BANNED_ENTRIES = 13,
  H_MASK_OFFSET = 14,
  H_MASK_WORDS = 15,
};
constexpr int32_t STEP_FLAG_RETURN_LOGITS = 1;

enum StepSeqField : int {
  S_Q_START = 0,
  S_Q_LEN = 1,
  S_KV_LEN = 2,
  S_PAGE_START = 3,
  S_NUM_PAGES = 4,
  S_LAST_PAGE_LEN = 5,
  S_FLAGS = 6,
  S_TEMPERATURE = 7,
  S_TOP_P = 8,
  S_TOP_K = 9,
  S_MIN_P = 10,
  S_SEED_LO = 11,
  S_SEED_HI = 12,
  S_LOGPROBS = 13,
  S_OUTPUT_INDEX = 14,
  S_BANNED_COUNT = 15,
};
constexpr int32_t SEQ_FLAG_SAMPLE = 1;
constexpr int32_t SEQ_FLAG_MASKED = 2;

/** Sampling parameters of one sequence, decoded from its record. */
struct SamplingParams {
  float temperature;
  float topP;
  int32_t topK;
  float minP;
  uint64_t seed;
  int32_t logprobs;
  int32_t outputIndex;
};

/** One sequence of a validated step, decoded. */
struct SeqView {
  int32_t qStart, qLen, kvLen;
  const int32_t* pages;  // numPages entries
  int32_t numPages, lastPageLen;
  bool sample;
  SamplingParams sampling;
  const int32_t* banned;  // bannedCount distinct ids in [0, vocab) whose logits are masked to -inf
  int32_t bannedCount;
  const int32_t* mask;  // maskWords words (bit set = allowed), or null: the draw is unconstrained
  int32_t startPos() const { return kvLen - qLen; }
};

/**
 * A step descriptor that passed validateStep(): every index is in range, so backends never re-check.
 * Pointers alias the caller's buffer, which outlives the step call.
 */
struct StepView {
  int32_t numSeqs, numTokens, pageSize;
  bool returnLogits;
  const int32_t* tokens;     // [numTokens]
  const int32_t* positions;  // [numTokens]
  const SeqView* seqs;       // [numSeqs]
  int32_t maxTopN;           // max over sequences of max(logprobs, 0): slots per sequence in the top-n output
  int32_t numBanned;         // sum of bannedCount over sequences (0: no sequence bans anything this step)
  int32_t numMasked;         // sequences with a token bitmask (0: every draw is unconstrained)
  int32_t maskWords;         // words per bitmask row (ceil(vocab / 32)), 0 when numMasked is 0
  // Multimodal side input (not in the descriptor; checked at the addon boundary, step() only, cpu backend only):
  // M-RoPE positions [3 * numTokens] (sections time | height | width, each numTokens long, in token order) that
  // replace the rotary position of every token (the positions section still names its KV slot), and the embeddings
  // [numImageEmbeds, hidden] that replace, in order, the rows of the tokens equal to the model's image token.
  const int32_t* mropePositions = nullptr;
  const float* imageEmbeds = nullptr;
  int32_t numImageEmbeds = 0;
};

}  // namespace dsg
