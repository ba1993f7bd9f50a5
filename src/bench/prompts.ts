// The random dataset: one prompt and one output budget per request. With a tokenizer, prompts are decoded from
// random token ids and trimmed until they re-encode to exactly the asked length; without one they are random
// common words (about one token each for large vocabularies) and the real count comes back in `usage`.
import type { Tokenizer } from '../tokenizer/index.js';
import { Rng } from './random.js';
import type { LengthSpec } from './results.js';

export interface PromptSpec {
  prompt: string;
  /** Token count of the prompt by the local tokenizer; null without one (the server's usage tells). */
  promptTokens: number | null;
  maxTokens: number;
}

const WORDS = (
  'the a an and of to in is was it he she they we you that with for on at by from as but or not all one two ' +
  'day time little big small good happy sad old new girl boy dog cat bird tree sun moon sky park ball toy ' +
  'house car road river sea fish book story friend mom dad play run jump walk look see saw find found make ' +
  'made said went came want loved liked very too so then when after before because there here where ' +
  'red blue green yellow fast slow warm cold home school garden flower apple cake milk rain snow wind light'
).split(' ');

function sampleLength(spec: LengthSpec, rng: Rng): number {
  if (spec.ratio >= 1) return spec.len;
  return rng.int(Math.max(1, Math.floor(spec.len * spec.ratio)), spec.len);
}

function wordsPrompt(n: number, rng: Rng): string {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(WORDS[rng.int(0, WORDS.length - 1)]);
  return out.join(' ');
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
function usableIds(tokenizer: Tokenizer): number[] {
  const ids: number[] = [];
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    if (tokenizer.specialTokenIds.has(id)) continue;
    if (/^<.*>$/.test(tokenizer.tokenText(id))) continue;
    if (tokenizer.tokenBytes(id).length === 0) continue;
    ids.push(id);
  }
  return ids;
}

export function buildPrompts(count: number, input: LengthSpec, output: LengthSpec, seed: number, tokenizer: Tokenizer | null): PromptSpec[] {
  const rng = new Rng(seed);
  const usable = tokenizer ? usableIds(tokenizer) : [];
  const prompts: PromptSpec[] = [];
  for (let i = 0; i < count; i++) {
    const inLen = sampleLength(input, rng);
    const maxTokens = sampleLength(output, rng);
    if (tokenizer) {
      const p = tokenPrompt(inLen, tokenizer, usable, rng);
      prompts.push({ prompt: p.text, promptTokens: p.tokens, maxTokens });
    } else {
      prompts.push({ prompt: wordsPrompt(inLen, rng), promptTokens: null, maxTokens });
    }
  }
  return prompts;
}
