// The vocabulary every actor shares: the per-step wire forms, and the transfer lists that move step buffers between
// threads without copying (engine summaries: src/engine/summary.ts). Each actor's own inbox union lives beside it.
import type { SeqStep } from '../src/engine/types.js';
export type { ErrorPayload } from '../src/errors.js';

/** A whole step in two flat buffers, so that crossing to the rank transfers two buffers however many sequences
 * the step holds (cloning hundreds of small objects and buffers per step costs milliseconds).
 *  ints:   [numSeqs, then per sequence: startPos, numTokens, numPages, sample (0|1), outputIndex, logprobs, topK,
 *           numBanned, then all tokens of all sequences, then all pages, then all banned token ids]
 *  floats: per sequence: temperature, topP, minP, seed (NaN for null) */
export interface StepPack {
  ints: Int32Array<ArrayBuffer>;
  floats: Float64Array<ArrayBuffer>;
}

const INTS_PER_SEQ = 8;
const FLOATS_PER_SEQ = 4;

export function packSteps(seqs: readonly SeqStep[]): StepPack {
  let numTokens = 0;
  let numPages = 0;
  let numBanned = 0;
  for (const s of seqs) {
    numTokens += s.tokenIds.length;
    numPages += s.pages.length;
    numBanned += s.bannedTokenIds?.length ?? 0;
  }
  const ints = new Int32Array(1 + seqs.length * INTS_PER_SEQ + numTokens + numPages + numBanned);
  const floats = new Float64Array(seqs.length * FLOATS_PER_SEQ);
  ints[0] = seqs.length;
  let tok = 1 + seqs.length * INTS_PER_SEQ;
  let page = tok + numTokens;
  let banned = page + numPages;
  seqs.forEach((s, i) => {
    const m = 1 + i * INTS_PER_SEQ;
    ints[m] = s.startPos;
    ints[m + 1] = s.tokenIds.length;
    ints[m + 2] = s.pages.length;
    ints[m + 3] = s.sample ? 1 : 0;
    ints[m + 4] = s.outputIndex;
    ints[m + 5] = s.sampling.logprobs;
    ints[m + 6] = s.sampling.topK;
    ints[m + 7] = s.bannedTokenIds?.length ?? 0;
    if (s.bannedTokenIds) ints.set(s.bannedTokenIds, banned);
    banned += ints[m + 7];
    ints.set(s.tokenIds, tok);
    tok += s.tokenIds.length;
    ints.set(s.pages, page);
    page += s.pages.length;
    const f = i * FLOATS_PER_SEQ;
    floats[f] = s.sampling.temperature;
    floats[f + 1] = s.sampling.topP;
    floats[f + 2] = s.sampling.minP;
    floats[f + 3] = s.sampling.seed ?? NaN;
  });
  return { ints, floats };
}

/** The SeqSteps of a pack; token and page arrays are views into it (no copies). */
export function unpackSteps(pack: StepPack): SeqStep[] {
  const { ints, floats } = pack;
  const n = ints[0];
  let tok = 1 + n * INTS_PER_SEQ;
  let page = tok;
  for (let i = 0; i < n; i++) page += ints[1 + i * INTS_PER_SEQ + 1];
  let banned = page;
  for (let i = 0; i < n; i++) banned += ints[1 + i * INTS_PER_SEQ + 2];
  const seqs: SeqStep[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const m = 1 + i * INTS_PER_SEQ;
    const f = i * FLOATS_PER_SEQ;
    const seed = floats[f + 3];
    seqs[i] = {
      startPos: ints[m],
      tokenIds: ints.subarray(tok, tok + ints[m + 1]),
      pages: ints.subarray(page, page + ints[m + 2]),
      sample: ints[m + 3] === 1,
      outputIndex: ints[m + 4],
      sampling: { temperature: floats[f], topP: floats[f + 1], topK: ints[m + 6], minP: floats[f + 2], seed: Number.isNaN(seed) ? null : seed, logprobs: ints[m + 5] },
    };
    if (ints[m + 7]) seqs[i].bannedTokenIds = Array.from(ints.subarray(banned, banned + ints[m + 7]));
    tok += ints[m + 1];
    page += ints[m + 2];
    banned += ints[m + 7];
  }
  return seqs;
}

/** Compile-time exhaustiveness for message switches. */
export function unreachable(x: never): never {
  throw new Error(`unhandled message ${JSON.stringify(x)}`);
}
