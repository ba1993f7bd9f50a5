// Incremental detokenization: token ids arrive one at a time and text leaves as soon as it is complete UTF-8.
// Tokens are turned into their raw bytes (SentencePiece "▁" is a space, byte-fallback <0x..> tokens and GPT-2
// byte-level BPE both reduce to bytes); the bytes of a character that is still incomplete wait for the token that
// completes it. What one push returns is that token's exact contribution to the output text, so the pieces of a
// stream join to its text (the unit of logprobs' token strings and text offsets).

import { LlmError } from '../errors.js';
import type { Tokenizer } from './types.js';

const UTF8 = new TextDecoder('utf-8', { fatal: false });

/** Length of the longest prefix of `bytes` that does not end inside an unfinished UTF-8 sequence. */
function completeLength(bytes: Uint8Array): number {
  const n = bytes.length;
  // a sequence is at most 4 bytes: only the last 3 can belong to an unfinished one
  for (let back = 1; back <= Math.min(3, n); back++) {
    const b = bytes[n - back] as number;
    if ((b & 0xc0) === 0x80) continue; // continuation byte: look further back for its lead
    const need = b >= 0xf0 && b <= 0xf4 ? 4 : b >= 0xe0 ? 3 : b >= 0xc2 && b < 0xe0 ? 2 : 1;
    return need > back ? n - back : n;
  }
  return n;
}

export class IncrementalDetokenizer {
  private readonly skipSpecialTokens: boolean;
  private readonly keepTokenIds: ReadonlySet<number>;
  private pending: Uint8Array = new Uint8Array(0); // bytes of a character not yet complete
  private text = '';

  constructor(
    private readonly tokenizer: Tokenizer,
    /** `keepTokenIds`: special tokens that come out as text even when skipping special tokens. */
    options: { skipSpecialTokens?: boolean; keepTokenIds?: ReadonlySet<number> | undefined } = {},
  ) {
    this.skipSpecialTokens = options.skipSpecialTokens ?? true;
    this.keepTokenIds = options.keepTokenIds ?? new Set();
  }

  /** Adds one token; returns the newly completed text (possibly empty). */
  push(id: number): string {
    const { text, pending } = this.step(id);
    this.pending = pending;
    this.text += text;
    return text;
  }

  /** What `push(id)` would return now, without adding the token (a top-logprob alternative's text here). */
  peek(id: number): string {
    return this.step(id).text;
  }

  /** Ends the stream: bytes of an unfinished character come out as U+FFFD. */
  flush(): string {
    const rest = this.pending.length > 0 ? UTF8.decode(this.pending) : '';
    this.pending = new Uint8Array(0);
    this.text += rest;
    return rest;
  }

  /** All text emitted so far. */
  get output(): string {
    return this.text;
  }

  private step(id: number): { text: string; pending: Uint8Array } {
    if (!Number.isInteger(id) || id < 0) throw new LlmError('LLM_ERR_TOKENIZER', `token id ${id} is not a token id`);
    // Models pad their vocabulary past the tokenizer's (Qwen: 151936 rows, 151669 tokens): such ids read as nothing.
    if (id >= this.tokenizer.vocabSize) return { text: '', pending: this.pending };
    if (this.skipSpecialTokens && this.tokenizer.specialTokenIds.has(id) && !this.keepTokenIds.has(id)) return { text: '', pending: this.pending };
    const own = this.tokenizer.tokenBytes(id);
    let bytes = own;
    if (this.pending.length > 0) {
      bytes = new Uint8Array(this.pending.length + own.length);
      bytes.set(this.pending);
      bytes.set(own, this.pending.length);
    }
    const cut = completeLength(bytes);
    return { text: cut > 0 ? UTF8.decode(bytes.subarray(0, cut)) : '', pending: bytes.slice(cut) };
  }
}
