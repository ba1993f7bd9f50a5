// Incremental detokenization: token ids arrive one at a time and text leaves as soon as it is complete UTF-8.
// Tokens are turned into their raw bytes (byte-fallback <0x..> tokens and byte-level BPE both reduce to bytes),
// and a streaming TextDecoder holds back the bytes of a character that is still incomplete.

import { LlmError } from '../errors.js';
import type { Tokenizer } from './types.js';

export class IncrementalDetokenizer {
  private readonly decoder = new TextDecoder('utf-8', { fatal: false });
  private readonly skipSpecialTokens: boolean;
  private text = '';

  constructor(
    private readonly tokenizer: Tokenizer,
    options: { skipSpecialTokens?: boolean } = {},
  ) {
    this.skipSpecialTokens = options.skipSpecialTokens ?? true;
  }

  /** Adds one token; returns the newly completed text (possibly empty). */
  push(id: number): string {
    if (!Number.isInteger(id) || id < 0) throw new LlmError('LLM_ERR_TOKENIZER', `token id ${id} is not a token id`);
    // Models pad their vocabulary past the tokenizer's (Qwen: 151936 rows, 151669 tokens): such ids read as nothing.
    if (id >= this.tokenizer.vocabSize) return '';
    if (this.skipSpecialTokens && this.tokenizer.specialTokenIds.has(id)) return '';
    const piece = this.decoder.decode(this.tokenizer.tokenBytes(id), { stream: true });
    this.text += piece;
    return piece;
  }

  /** Ends the stream: bytes of an unfinished character come out as U+FFFD. */
  flush(): string {
    const rest = this.decoder.decode();
    this.text += rest;
    return rest;
  }

  /** All text emitted so far. */
  get output(): string {
    return this.text;
  }
}
