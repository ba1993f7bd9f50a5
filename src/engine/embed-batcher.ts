// Batches embedding inputs into engine passes: inputs of every caller queue, and each pass takes as many from the
// head of the queue as fit the engine's step limits (sequences, tokens) and share its pooling options. One pass runs
// at a time; inputs that arrive meanwhile make the next one, so a busy worker runs full passes.

import { LlmError } from '../errors.js';
import type { EmbedOptions } from './types.js';

export interface EmbedPassLimits {
  /** Sequences in one pass (the engine's maxSeqsPerStep). */
  maxSeqs: number;
  /** Tokens in one pass (the engine's maxBatchTokens); also the longest input. */
  maxTokens: number;
}

export type EmbedPassRunner = (sequences: number[][], options: EmbedOptions) => Promise<Float32Array[]>;

interface Queued {
  tokens: number[];
  options: EmbedOptions;
  resolve: (v: Float32Array) => void;
  reject: (e: unknown) => void;
}

export class EmbedBatcher {
  private readonly queue: Queued[] = [];
  private running = false;

  constructor(
    private readonly limits: EmbedPassLimits,
    private readonly runPass: EmbedPassRunner,
  ) {}

  /** One vector per input, in order. An input longer than a pass is LLM_ERR_CONTEXT_LENGTH, an empty one
   * LLM_ERR_BAD_REQUEST (nothing of the call runs then). */
  embed(inputs: readonly (readonly number[])[], options: EmbedOptions): Promise<Float32Array[]> {
    inputs.forEach((tokens, i) => {
      if (tokens.length === 0) throw new LlmError('LLM_ERR_BAD_REQUEST', `embedding input ${i} has no tokens`);
      if (tokens.length > this.limits.maxTokens) {
        throw new LlmError('LLM_ERR_CONTEXT_LENGTH', `embedding input ${i} has ${tokens.length} tokens; one pass takes at most ${this.limits.maxTokens}`);
      }
    });
    const all = Promise.all(
      inputs.map((tokens) => new Promise<Float32Array>((resolve, reject) => this.queue.push({ tokens: [...tokens], options, resolve, reject }))),
    );
    this.pump();
    return all;
  }

  private pump(): void {
    if (this.running || this.queue.length === 0) return;
    const head = this.queue[0]!;
    const pass: Queued[] = [];
    let tokens = 0;
    for (let i = 0; i < this.queue.length && pass.length < this.limits.maxSeqs; ) {
      const q = this.queue[i]!;
      const same = q.options.pooling === head.options.pooling && q.options.normalize === head.options.normalize;
      if (!same) {
        i++;
        continue;
      }
      if (tokens + q.tokens.length > this.limits.maxTokens) break;
      tokens += q.tokens.length;
      pass.push(q);
      this.queue.splice(i, 1);
    }
    this.running = true;
    this.runPass(pass.map((q) => q.tokens), head.options).then(
      (vectors) => pass.forEach((q, i) => q.resolve(vectors[i]!)),
      (err: unknown) => pass.forEach((q) => q.reject(err)),
    ).finally(() => {
      this.running = false;
      this.pump();
    });
  }
}
