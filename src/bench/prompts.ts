// The random dataset: one prompt and one output budget per request. Prompts are decoded from random token ids of
// the served model's tokenizer and trimmed until they re-encode to exactly the asked length.
import type { Tokenizer } from '../tokenizer/index.js';
import { Rng } from './random.js';
import type { LengthSpec } from './results.js';

export interface PromptSpec {
  prompt: string;
  /** Token count of the prompt by the local tokenizer. */
  promptTokens: number;
  maxTokens: number;
  /** Replaying a trace: ms after the run's start to send it; null = as the load shape says. */
  arrivalMs: number | null;
}

function sampleLength(spec: LengthSpec, rng: Rng): number {
  if (spec.ratio >= 1) return spec.len;
  return rng.int(Math.max(1, Math.floor(spec.len * spec.ratio)), spec.len);
}

/** Text that re-encodes to exactly `n` tokens when the tokenizer allows it, else the closest found. */
function tokenPrompt(n: number, tokenizer: Tokenizer, usable: readonly number[], rng: Rng): { text: string; tokens: number } {
  const ids = Array.from({ length: n }, () => usable[rng.int(0, usable.length - 1)]);
  let text = tokenizer.decode(ids);
  let best = { text, tokens: tokenizer.encode(text, { addSpecialTokens: false }).length };
  // Decoding and re-encoding merges or splits pieces; trim or pad by the difference until the count settles.
  for (let round = 0; round < 16 && best.tokens !== n; round++) {
    const enc = tokenizer.encode(text, { addSpecialTokens: false });
    const next = enc.length > n ? enc.slice(0, n) : [...enc, ...Array.from({ length: n - enc.length }, () => usable[rng.int(0, usable.length - 1)])];
    text = tokenizer.decode(next);
    const tokens = tokenizer.encode(text, { addSpecialTokens: false }).length;
    if (Math.abs(tokens - n) < Math.abs(best.tokens - n)) best = { text, tokens };
  }
  return best;
}

/** Ids that decode to plain text: no control tokens, no byte-fallback pieces, nothing that decodes to nothing. */
const usableCache = new WeakMap<Tokenizer, number[]>();

function usableIds(tokenizer: Tokenizer): number[] {
  const cached = usableCache.get(tokenizer);
  if (cached) return cached;
  const ids: number[] = [];
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    if (tokenizer.specialTokenIds.has(id)) continue;
    if (/^<.*>$/.test(tokenizer.tokenText(id))) continue;
    if (tokenizer.tokenBytes(id).length === 0) continue;
    ids.push(id);
  }
  usableCache.set(tokenizer, ids);
  return ids;
}

/** Random text of exactly `n` tokens by `tokenizer` where it allows it, else the closest found. */
export function exactPrompt(n: number, tokenizer: Tokenizer, rng: Rng): { text: string; tokens: number } {
  return tokenPrompt(n, tokenizer, usableIds(tokenizer), rng);
}

export function buildPrompts(count: number, input: LengthSpec, output: LengthSpec, seed: number, tokenizer: Tokenizer): PromptSpec[] {
  const rng = new Rng(seed);
  const prompts: PromptSpec[] = [];
  for (let i = 0; i < count; i++) {
    const inLen = sampleLength(input, rng);
    const maxTokens = sampleLength(output, rng);
    const p = exactPrompt(inLen, tokenizer, rng);
    prompts.push({ prompt: p.text, promptTokens: p.tokens, maxTokens, arrivalMs: null });
  }
  return prompts;
}
