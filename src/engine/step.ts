// The flat step descriptor, TS side: packStep() turns a batch (SeqStep[]) into the one Int32Array that crosses the
// threads and the addon boundary. The scheduler packs each step once; the rank(s) hand the buffer to the engine as it
// is, and the addon checks every field (this packer fails early, with the same naming, on what it builds from).
// decodeStep() reads a descriptor back (engines that are not native, and tests); stepShape() reads its size.
// The layout is written down once, in native/include/step.h; the constants below mirror it word for word.
//
// Header (16 words): magic, version, numSeqs, numTokens, pageSize, numPageEntries, flags, tokensOffset,
//   positionsOffset, seqsOffset, pagesOffset, totalWords, bannedOffset, numBannedEntries, maskOffset, maskWords.
// Sections, packed in order: tokens[numTokens], positions[numTokens], seqs[numSeqs * 16], pages[numPageEntries],
//   banned[numBannedEntries] (seq i's banned ids after seq i-1's), masks[numMasked * maskWords] (the k-th masked
//   sequence's token bitmask is row k).
// Sequence record (16 words): qStart, qLen, kvLen, pageStart, numPages, lastPageLen, flags (bit 0 sample, bit 1 masked),
//   temperature (f32), topP (f32), topK, minP (f32), seedLo (u32), seedHi (u32), logprobs, outputIndex,
//   bannedCount (<= MAX_BANNED_TOKENS).

import { randomFillSync } from 'node:crypto';
import { LlmError } from '../errors.js';
import type { Engine, SeqStep, StepDescriptor } from './types.js';

export const STEP_MAGIC = 0x50545344; // "DSTP"
export const STEP_VERSION = 3;
export const STEP_HEADER_WORDS = 16;
export const STEP_SEQ_WORDS = 16;
export const MAX_TOP_LOGPROBS = 64;
/** Banned token ids one sequence may carry in one step (min_tokens: EOS and stop ids). */
export const MAX_BANNED_TOKENS = 16;
export const STEP_FLAG_RETURN_LOGITS = 1;
export const SEQ_FLAG_SAMPLE = 1;
export const SEQ_FLAG_MASKED = 2;

export const Header = {
  magic: 0,
  version: 1,
  numSeqs: 2,
  numTokens: 3,
  pageSize: 4,
  numPageEntries: 5,
  flags: 6,
  tokensOffset: 7,
  positionsOffset: 8,
  seqsOffset: 9,
  pagesOffset: 10,
  totalWords: 11,
  bannedOffset: 12,
  numBannedEntries: 13,
  maskOffset: 14,
  maskWords: 15,
} as const;

export const SeqField = {
  qStart: 0,
  qLen: 1,
  kvLen: 2,
  pageStart: 3,
  numPages: 4,
  lastPageLen: 5,
  flags: 6,
  temperature: 7,
  topP: 8,
  topK: 9,
  minP: 10,
  seedLo: 11,
  seedHi: 12,
  logprobs: 13,
  outputIndex: 14,
  bannedCount: 15,
} as const;

export interface PackOptions {
  returnLogits?: boolean;
  /** When given, token ids (banned ones too) are checked against it. */
  vocabSize?: number;
  /** When given, page indices are checked against it. */
  numPages?: number;
  /** Token words < 0 are placeholders -(1 + row) for the previous step's samples (Engine.stepBegin); the addon checks
   * the row. */
  placeholders?: boolean;
}

const NO_BANNED: readonly number[] = [];

function invalid(message: string): never {
  throw new LlmError('LLM_ERR_STEP_INVALID', message);
}

function isInt(x: number): boolean {
  return Number.isInteger(x) && x >= -0x80000000 && x <= 0x7fffffff;
}

/** Splits a seed (a non-negative integer up to 2^64 - 1, as a number or bigint) into two u32 words. */
export function splitSeed(seed: number | bigint): [number, number] {
  const big = typeof seed === 'bigint' ? seed : BigInt(seed);
  return [Number(big & 0xffffffffn), Number((big >> 32n) & 0xffffffffn)];
}

function checkSeed(s: number, seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) invalid(`seq ${s}: sampling.seed ${seed} must be a non-negative safe integer or null`);
}

/** Checks one sequence's banned ids (count, range, distinct); returns the count. */
function checkBanned(s: number, ids: readonly number[], vocabSize: number | undefined): number {
  if (ids.length > MAX_BANNED_TOKENS) invalid(`seq ${s}: ${ids.length} bannedTokenIds, at most ${MAX_BANNED_TOKENS} (MAX_BANNED_TOKENS)`);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!isInt(id) || id < 0 || (vocabSize !== undefined && id >= vocabSize))
      invalid(`seq ${s}: banned token ${id} at index ${i} out of range [0, ${vocabSize ?? 2 ** 31})`);
    if (ids.indexOf(id) !== i) invalid(`seq ${s}: banned token ${id} appears twice`);
  }
  return ids.length;
}

// Unseeded draws take their seeds from a pool of random bytes refilled 4 KiB at a time: one randomBytes call per
// sequence per step cost ~3 us each (0.8 ms per 256-sequence step).
const seedPool = new Uint32Array(1024);
let seedPoolNext = seedPool.length;
function freshSeedWord(): number {
  if (seedPoolNext === seedPool.length) {
    randomFillSync(seedPool);
    seedPoolNext = 0;
  }
  return seedPool[seedPoolNext++];
}

/** Packs a ragged batch into the step descriptor of native/include/step.h. Throws LLM_ERR_STEP_INVALID. */
export function packStep(seqs: readonly SeqStep[], pageSize: number, options: PackOptions = {}): StepDescriptor {
  if (!isInt(pageSize) || pageSize < 1) invalid(`pageSize ${pageSize} must be an integer >= 1`);
  if (seqs.length === 0) invalid('a step needs at least one sequence');
  let numTokens = 0;
  let numEntries = 0;
  let numBanned = 0;
  let numMasked = 0;
  let maskWords = 0;
  for (let s = 0; s < seqs.length; s++) {
    const q = seqs[s];
    const qLen = q.tokenIds.length;
    if (qLen < 1) invalid(`seq ${s}: tokenIds is empty`);
    if (!isInt(q.startPos) || q.startPos < 0) invalid(`seq ${s}: startPos ${q.startPos} must be an integer >= 0`);
    const kvLen = q.startPos + qLen;
    const need = Math.ceil(kvLen / pageSize);
    if (q.pages.length !== need)
      invalid(`seq ${s}: ${q.pages.length} pages given, ${need} needed for kvLen ${kvLen} at pageSize ${pageSize}`);
    numTokens += qLen;
    numEntries += need;
    numBanned += checkBanned(s, q.bannedTokenIds ?? NO_BANNED, options.vocabSize);
    if (q.tokenMask) {
      const words = q.tokenMask.length;
      if (!q.sample) invalid(`seq ${s}: a tokenMask needs a draw (sample)`);
      if (options.vocabSize !== undefined && words !== Math.ceil(options.vocabSize / 32))
        invalid(`seq ${s}: tokenMask has ${words} words, ceil(vocab ${options.vocabSize} / 32) = ${Math.ceil(options.vocabSize / 32)} needed`);
      if (numMasked && words !== maskWords) invalid(`seq ${s}: tokenMask has ${words} words, an earlier one ${maskWords}`);
      maskWords = words;
      numMasked++;
    }
  }
  const tokOff = STEP_HEADER_WORDS;
  const posOff = tokOff + numTokens;
  const seqOff = posOff + numTokens;
  const pagesOff = seqOff + seqs.length * STEP_SEQ_WORDS;
  const bannedOff = pagesOff + numEntries;
  const maskOff = bannedOff + numBanned;
  const total = maskOff + numMasked * maskWords;
  const buf = new Int32Array(total);
  const f32 = new Float32Array(buf.buffer);
  const u32 = new Uint32Array(buf.buffer);
  buf[Header.magic] = STEP_MAGIC;
  buf[Header.version] = STEP_VERSION;
  buf[Header.numSeqs] = seqs.length;
  buf[Header.numTokens] = numTokens;
  buf[Header.pageSize] = pageSize;
  buf[Header.numPageEntries] = numEntries;
  buf[Header.flags] = options.returnLogits ? STEP_FLAG_RETURN_LOGITS : 0;
  buf[Header.tokensOffset] = tokOff;
  buf[Header.positionsOffset] = posOff;
  buf[Header.seqsOffset] = seqOff;
  buf[Header.pagesOffset] = pagesOff;
  buf[Header.totalWords] = total;
  buf[Header.bannedOffset] = bannedOff;
  buf[Header.numBannedEntries] = numBanned;
  buf[Header.maskOffset] = maskOff;
  buf[Header.maskWords] = maskWords;

  let q0 = 0;
  let p0 = 0;
  let b0 = 0;
  let m0 = maskOff;
  for (let s = 0; s < seqs.length; s++) {
    const q = seqs[s];
    const qLen = q.tokenIds.length;
    const kvLen = q.startPos + qLen;
    const numPages = q.pages.length;
    const tokenLimit = options.vocabSize ?? 2 ** 31;
    const tokenFloor = options.placeholders ? -(2 ** 31) : 0;
    for (let i = 0; i < qLen; i++) {
      const tok = q.tokenIds[i];
      if (!isInt(tok) || tok < tokenFloor || tok >= tokenLimit) invalid(`seq ${s}: token ${tok} at index ${i} out of range [0, ${tokenLimit})`);
      buf[tokOff + q0 + i] = tok;
      buf[posOff + q0 + i] = q.startPos + i;
    }
    const pageLimit = options.numPages ?? 2 ** 31;
    if (q.pages instanceof Int32Array) {
      // The actors' path (pages arrive as views of the step's transfer buffer): integers by construction, so one
      // range scan and one block copy instead of a checked store per page (about 20k pages per 256-sequence step).
      const pages = q.pages;
      for (let i = 0; i < numPages; i++) {
        const p = pages[i];
        if (p < 0 || p >= pageLimit) invalid(`seq ${s}: page ${p} out of range [0, ${pageLimit})`);
      }
      buf.set(pages, pagesOff + p0);
    } else {
      for (let i = 0; i < numPages; i++) {
        const p = q.pages[i];
        if (!isInt(p) || p < 0 || p >= pageLimit) invalid(`seq ${s}: page ${p} out of range [0, ${pageLimit})`);
        buf[pagesOff + p0 + i] = p;
      }
    }
    const sp = q.sampling;
    if (!Number.isFinite(sp.temperature) || sp.temperature < 0) invalid(`seq ${s}: sampling.temperature ${sp.temperature} must be >= 0`);
    if (!(sp.topP > 0 && sp.topP <= 1)) invalid(`seq ${s}: sampling.topP ${sp.topP} out of range (0, 1]`);
    if (!isInt(sp.topK)) invalid(`seq ${s}: sampling.topK ${sp.topK} must be an integer`);
    if (!(sp.minP >= 0 && sp.minP <= 1)) invalid(`seq ${s}: sampling.minP ${sp.minP} out of range [0, 1]`);
    if (!isInt(sp.logprobs) || sp.logprobs < -1 || sp.logprobs > MAX_TOP_LOGPROBS)
      invalid(`seq ${s}: sampling.logprobs ${sp.logprobs} out of range [-1, ${MAX_TOP_LOGPROBS}]`);
    if (!isInt(q.outputIndex) || q.outputIndex < 0) invalid(`seq ${s}: outputIndex ${q.outputIndex} must be an integer >= 0`);
    let seedLo: number;
    let seedHi: number;
    if (sp.seed === null) {
      // No seed asked: a fresh random stream for this draw (greedy draws use none).
      if (sp.temperature === 0) {
        seedLo = 0;
        seedHi = 0;
      } else {
        seedLo = freshSeedWord();
        seedHi = freshSeedWord();
      }
    } else {
      checkSeed(s, sp.seed);
      [seedLo, seedHi] = splitSeed(sp.seed);
    }
    const r = seqOff + s * STEP_SEQ_WORDS;
    buf[r + SeqField.qStart] = q0;
    buf[r + SeqField.qLen] = qLen;
    buf[r + SeqField.kvLen] = kvLen;
    buf[r + SeqField.pageStart] = p0;
    buf[r + SeqField.numPages] = numPages;
    buf[r + SeqField.lastPageLen] = kvLen - (numPages - 1) * pageSize;
    buf[r + SeqField.flags] = (q.sample ? SEQ_FLAG_SAMPLE : 0) | (q.tokenMask ? SEQ_FLAG_MASKED : 0);
    if (q.tokenMask) {
      buf.set(q.tokenMask, m0);
      m0 += maskWords;
    }
    f32[r + SeqField.temperature] = sp.temperature;
    f32[r + SeqField.topP] = sp.topP;
    buf[r + SeqField.topK] = sp.topK;
    f32[r + SeqField.minP] = sp.minP;
    u32[r + SeqField.seedLo] = seedLo;
    u32[r + SeqField.seedHi] = seedHi;
    buf[r + SeqField.logprobs] = sp.logprobs;
    buf[r + SeqField.outputIndex] = q.outputIndex;
    const banned = q.bannedTokenIds ?? NO_BANNED;
    buf[r + SeqField.bannedCount] = banned.length;
    buf.set(banned, bannedOff + b0);
    q0 += qLen;
    p0 += numPages;
    b0 += banned.length;
  }
  return buf;
}

/** packStep with the engine's page size, vocabulary and pool size (tests, benchmarks and one-thread callers). */
export function packFor(engine: Pick<Engine, 'kv' | 'spec'>, seqs: readonly SeqStep[], options: Omit<PackOptions, 'vocabSize' | 'numPages'> = {}): StepDescriptor {
  return packStep(seqs, engine.kv.pageSize, { ...options, vocabSize: engine.spec.vocabSize, numPages: engine.kv.numPages });
}

/** A descriptor's size, read from its header and records (the rank's step trace). kvTokens: KV length read by the
 * step's attention, summed over its sequences. */
export function stepShape(desc: StepDescriptor): { numSeqs: number; numTokens: number; kvTokens: number } {
  const numSeqs = desc[Header.numSeqs];
  const seqOff = desc[Header.seqsOffset];
  let kvTokens = 0;
  for (let s = 0; s < numSeqs; s++) kvTokens += desc[seqOff + s * STEP_SEQ_WORDS + SeqField.kvLen];
  return { numSeqs, numTokens: desc[Header.numTokens], kvTokens };
}

/** A decoded descriptor: the batch it carries (token and page arrays are views into it) and its header flags. */
export interface DecodedStep {
  seqs: SeqStep[];
  pageSize: number;
  returnLogits: boolean;
}

/**
 * The batch a descriptor carries, for engines that are not native (test fakes). Checks the header (magic, version,
 * offsets, length) and each record's extent, with LLM_ERR_STEP_INVALID; value ranges are the engine's to check.
 * Seeds come back as numbers (the draw's two u32 words; an unseeded draw carries the packer's fresh random words).
 */
export function decodeStep(desc: StepDescriptor): DecodedStep {
  if (!(desc instanceof Int32Array)) invalid('a step descriptor is an Int32Array');
  if (desc.length < STEP_HEADER_WORDS) invalid(`descriptor of ${desc.length} words is shorter than its header (${STEP_HEADER_WORDS})`);
  if (desc[Header.magic] !== STEP_MAGIC) invalid(`descriptor magic ${desc[Header.magic]} is not STEP_MAGIC`);
  if (desc[Header.version] !== STEP_VERSION) invalid(`descriptor version ${desc[Header.version]}, expected ${STEP_VERSION}`);
  if (desc[Header.totalWords] !== desc.length) invalid(`descriptor says ${desc[Header.totalWords]} words, has ${desc.length}`);
  const numSeqs = desc[Header.numSeqs];
  const numTokens = desc[Header.numTokens];
  const tokOff = desc[Header.tokensOffset];
  const posOff = desc[Header.positionsOffset];
  const seqOff = desc[Header.seqsOffset];
  const pagesOff = desc[Header.pagesOffset];
  const bannedOff = desc[Header.bannedOffset];
  const maskOff = desc[Header.maskOffset];
  const maskWords = desc[Header.maskWords];
  const within = (off: number, n: number) => off >= STEP_HEADER_WORDS && n >= 0 && off + n <= desc.length;
  if (!(numSeqs >= 1) || !within(seqOff, numSeqs * STEP_SEQ_WORDS) || !within(tokOff, numTokens) || !within(posOff, numTokens)) {
    invalid('descriptor sections lie outside the buffer');
  }
  if (!within(pagesOff, desc[Header.numPageEntries]) || !within(bannedOff, desc[Header.numBannedEntries])) invalid('descriptor sections lie outside the buffer');
  const f32 = new Float32Array(desc.buffer, desc.byteOffset, desc.length);
  const u32 = new Uint32Array(desc.buffer, desc.byteOffset, desc.length);
  const seqs: SeqStep[] = new Array(numSeqs);
  let banned = bannedOff;
  let mask = maskOff;
  for (let s = 0; s < numSeqs; s++) {
    const r = seqOff + s * STEP_SEQ_WORDS;
    const qStart = desc[r + SeqField.qStart];
    const qLen = desc[r + SeqField.qLen];
    const pageStart = desc[r + SeqField.pageStart];
    const numPages = desc[r + SeqField.numPages];
    const bannedCount = desc[r + SeqField.bannedCount];
    if (!(qLen >= 1) || qStart < 0 || qStart + qLen > numTokens) invalid(`seq ${s}: tokens [${qStart}, ${qStart + qLen}) outside the ${numTokens} of the step`);
    if (pageStart < 0 || numPages < 0 || pageStart + numPages > desc[Header.numPageEntries]) invalid(`seq ${s}: pages outside the pages section`);
    if (bannedCount < 0 || banned + bannedCount > bannedOff + desc[Header.numBannedEntries]) invalid(`seq ${s}: banned ids outside the banned section`);
    const seq: SeqStep = {
      tokenIds: desc.subarray(tokOff + qStart, tokOff + qStart + qLen),
      startPos: desc[r + SeqField.kvLen] - qLen,
      pages: desc.subarray(pagesOff + pageStart, pagesOff + pageStart + numPages),
      sample: (desc[r + SeqField.flags] & SEQ_FLAG_SAMPLE) !== 0,
      sampling: {
        temperature: f32[r + SeqField.temperature],
        topP: f32[r + SeqField.topP],
        topK: desc[r + SeqField.topK],
        minP: f32[r + SeqField.minP],
        seed: u32[r + SeqField.seedHi] * 2 ** 32 + u32[r + SeqField.seedLo],
        logprobs: desc[r + SeqField.logprobs],
      },
      outputIndex: desc[r + SeqField.outputIndex],
    };
    if (bannedCount) seq.bannedTokenIds = Array.from(desc.subarray(banned, banned + bannedCount));
    if (desc[r + SeqField.flags] & SEQ_FLAG_MASKED) {
      if (!(maskWords > 0) || mask < STEP_HEADER_WORDS || mask + maskWords > desc.length) invalid(`seq ${s}: token bitmask outside the buffer`);
      seq.tokenMask = desc.subarray(mask, mask + maskWords);
      mask += maskWords;
    }
    banned += bannedCount;
    seqs[s] = seq;
  }
  return { seqs, pageSize: desc[Header.pageSize], returnLogits: (desc[Header.flags] & STEP_FLAG_RETURN_LOGITS) !== 0 };
}
