// One request as the scheduler sees it: its token sequence, its KV page table, and its place in the state machine
//
//   queued ──admit──▶ prefilling ──final chunk planned──▶ decoding ──stop/length──▶ finished
//     ▲ │                 │                                  ▲ │
//     │ └────────────────────── admit (handed over) ─────────┘ │        any live state ──abort──▶ aborted
//     └──── retract ──────┴────────────────────────────────────┘        any live state ──error──▶ finished
//
// Token accounting (positions are token indices of `tokens` = prompt ++ output):
//  Q1. computed <= scheduled <= tokens.length + pending: `computed` tokens have their KV confirmed by a step result,
//      `scheduled` tokens are in submitted or planned steps; `pending` (0 to 2) counts sampled tokens still in flight
//      (overlap keeps up to two steps in flight, scheduler G4), the latest sampled by step `sampleStep` in row
//      `sampleRow`.
//  Q2. pages covers positions [0, scheduled) whenever the request is running: pages.length*pageSize >= scheduled.
//      pages[0, cachedPageCount) belong to the radix cache (pinned by locking `lockedNode`); the rest are owned.
//  Q3. A queued request owns no pages and locks nothing; scheduled = computed = 0.
//  Q4. output count only grows; a retracted request keeps its output and resumes after it, so its tokens are exactly
//      those it would have produced without retraction (positions and context are unchanged).
//  Q5. A handed-over request (disaggregated decode: a prefill worker computed the prompt's KV and sampled the first
//      token) starts queued with outputs = [first token] and, while queued, `handedOver` = the KV of every prompt
//      position [0, promptLength) in its own pages (full ones in the radix cache, pinned; the partial last page
//      owned). It is the only thing a queued request may hold (Q3's exception). Admission moves that KV into its page
//      table with computed = scheduled = promptLength and state decoding: its first step decodes the first token at
//      position promptLength. Without that KV (never arrived, or given up under page pressure) it is exactly a
//      retracted request: it recomputes prompt ++ [first token] and samples the second.
import type { GrammarSpec } from '../guided/guides.js';
import { LlmError } from '../errors.js';
import { MAX_BANNED_TOKENS } from '../engine/step.js';
import type { SamplingParams } from '../engine/types.js';
import type { RadixNode } from './radix.js';

export type RequestState = 'queued' | 'prefilling' | 'decoding' | 'finished' | 'aborted';
export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error';

export interface TopLogprob {
  tokenId: number;
  logprob: number;
}

/** KV of token positions [0, tokenCount) of a sequence, held outside any running request: pages[i] holds positions
 * [i*pageSize, (i+1)*pageSize); pages[0, cachedPageCount) belong to the radix cache (pinned by locking lockedNode,
 * null when there are none), the rest are owned by the holder (at most the partial last page, or every page
 * without a prefix cache). */
export interface KvHold {
  tokenCount: number;
  pages: number[];
  cachedPageCount: number;
  lockedNode: RadixNode | null;
}

/** A prefill worker's part of a disaggregated request (Q5): its first output token and the key its KV was parked
 * under in this scheduler (Scheduler.parkKv). */
export interface HandOver {
  kvKey: string;
  tokenId: number;
  logprob: number | null;
  topLogprobs: TopLogprob[] | null;
  /** Prompt tokens the prefill worker's prefix cache served (completion_usage.cached_tokens). */
  cachedTokens: number;
}

/** What a guide says of a token that landed: its next mask is ready, the grammar is complete (the request stops), or
 * the grammar does not allow the token. */
export type GuideVerdict = 'next' | 'end' | 'rejected';

/** Grammar-constrained decoding of one request (src/guided): the token bitmask of its next draw. */
export interface TokenGuide {
  /** ceil(vocab / 32) words, bit set = token allowed; null while it is being computed (the request waits). */
  readonly mask: Int32Array | null;
  /** A sampled token joined the output; settles once the guide has taken it (rejects when the guide failed). */
  accept(token: number): Promise<GuideVerdict>;
  dispose(): void;
}

/** What the scheduler needs of a request; the supervisor fills it from the wire request (defaults resolved). */
export interface SchedulerRequest {
  id: string;
  tokenIds: readonly number[];
  maxTokens: number;
  minTokens: number;
  ignoreEos: boolean;
  eosTokenIds: readonly number[];
  stopTokenIds: readonly number[];
  sampling: SamplingParams;
  /** Disaggregated prefill: when the request stops normally, the KV of its prompt stays allocated, parked under
   * this key for a decode worker (Scheduler.takeParked / dropParked), instead of being freed. */
  parkKvAs?: string;
  /** Disaggregated decode: the request arrives prefilled (Q5). */
  handOver?: HandOver;
  /** Grammar-constrained decoding (src/guided): the scheduler's thread compiles it into the TokenGuide it submits
   * the request with (Scheduler.submit). */
  guided?: GrammarSpec;
}

const transitions: Record<RequestState, readonly RequestState[]> = {
  queued: ['prefilling', 'decoding', 'finished', 'aborted'], // decoding: a handed-over request (Q5)
  prefilling: ['decoding', 'queued', 'finished', 'aborted'],
  decoding: ['queued', 'finished', 'aborted'],
  finished: [],
  aborted: [],
};

export class RequestRecord {
  readonly input: SchedulerRequest;
  readonly promptLength: number;
  readonly tokens: number[];
  state: RequestState = 'queued';
  pages: number[] = [];
  cachedPageCount = 0;
  lockedNode: RadixNode | null = null;
  /** Q5: the prefill worker's KV this queued request was submitted with, until admission or release. */
  handedOver: KvHold | null = null;
  scheduled = 0;
  computed = 0;
  pending = 0;
  /** The step (Scheduler.stats.steps numbering) and row of the latest draw submitted for this request: a decode
   * input that is still pending is a placeholder naming that row (placeholder.ts). */
  sampleStep = 0;
  sampleRow = -1;
  /** Bumped on each retraction, so a result for a step planned before it does not move `computed`. */
  epoch = 0;
  /** Prompt tokens served from the prefix cache at first admission (completion_usage.cached_tokens). */
  cachedPromptTokens: number | null = null;
  /** Order of the latest admission: retraction picks the newest. */
  admitOrder = 0;
  finishReason: FinishReason | null = null;
  /** Grammar-constrained decoding: every draw is masked by the guide's bitmask. */
  guide: TokenGuide | null = null;
  /** Token ids the engine may not sample while fewer than min_tokens are out: those that would stop the request
   * (stop ids, and EOS unless ignore_eos), as SGLang's min-new-tokens penalty bans them. Ids outside the vocabulary
   * can never be sampled and are left out. Empty without min_tokens. */
  readonly minTokensBan: readonly number[];
  private readonly stopSet: Set<number>;

  /** Throws LLM_ERR_BAD_REQUEST when min_tokens would need more than MAX_BANNED_TOKENS banned ids. */
  constructor(input: SchedulerRequest, vocabSize?: number) {
    this.input = input;
    this.promptLength = input.tokenIds.length;
    this.tokens = Array.from(input.tokenIds);
    this.stopSet = new Set(input.stopTokenIds);
    if (!input.ignoreEos) for (const t of input.eosTokenIds) this.stopSet.add(t);
    const inVocab = (t: number) => Number.isInteger(t) && t >= 0 && (vocabSize === undefined || t < vocabSize);
    this.minTokensBan = input.minTokens > 0 ? [...this.stopSet].filter(inVocab) : [];
    if (this.minTokensBan.length > MAX_BANNED_TOKENS) {
      throw new LlmError(
        'LLM_ERR_BAD_REQUEST',
        `request ${input.id}: stop_conditions.min_tokens ${input.minTokens} bans the request's ${this.minTokensBan.length} stop and EOS ` +
          `token ids until that many tokens are out; at most ${MAX_BANNED_TOKENS} are supported`,
      );
    }
  }

  /** The ids the token sampled at output index `outputIndex` may not be (undefined: none). */
  bannedAt(outputIndex: number): readonly number[] | undefined {
    return outputIndex < this.input.minTokens && this.minTokensBan.length ? this.minTokensBan : undefined;
  }

  get id(): string {
    return this.input.id;
  }

  get outputCount(): number {
    return this.tokens.length - this.promptLength;
  }

  get isRunning(): boolean {
    return this.state === 'prefilling' || this.state === 'decoding';
  }

  get isDone(): boolean {
    return this.state === 'finished' || this.state === 'aborted';
  }

  /** Sequence length once in-flight tokens land. */
  get totalLength(): number {
    return this.tokens.length + this.pending;
  }

  transition(to: RequestState): void {
    if (!transitions[this.state].includes(to)) {
      throw new LlmError('LLM_ERR_INTERNAL', `request ${this.id}: illegal transition ${this.state} -> ${to}`);
    }
    this.state = to;
  }

  /** Appends a sampled token; returns why the request stops now, or null. Length wins over a stop token, as in
   * SGLang. Stop and EOS tokens count only once min_tokens are out; the stop token stays in the output (the
   * frontend hides stop_token_ids_hidden). */
  appendToken(token: number): FinishReason | null {
    this.tokens.push(token);
    const n = this.outputCount;
    if (n >= this.input.maxTokens) return 'length';
    if (n >= this.input.minTokens && this.stopSet.has(token)) return 'stop';
    return null;
  }

  checkIntegrity(pageSize: number): void {
    const where = `request ${this.id} (${this.state})`;
    if (!(this.computed <= this.scheduled && this.scheduled <= this.totalLength)) {
      throw new LlmError('LLM_ERR_INTERNAL', `${where}: computed ${this.computed} scheduled ${this.scheduled} length ${this.totalLength}`);
    }
    if (this.pending < 0 || this.pending > 2) throw new LlmError('LLM_ERR_INTERNAL', `${where}: pending ${this.pending}`);
    if (this.isRunning) {
      if (this.pages.length * pageSize < this.scheduled) {
        throw new LlmError('LLM_ERR_INTERNAL', `${where}: ${this.pages.length} pages cannot hold ${this.scheduled} tokens`);
      }
      if (this.cachedPageCount > this.pages.length) throw new LlmError('LLM_ERR_INTERNAL', `${where}: cached pages beyond table`);
    } else if (this.pages.length || this.lockedNode || this.scheduled || this.computed) {
      throw new LlmError('LLM_ERR_INTERNAL', `${where}: holds pages or locks while not running`);
    }
    const h = this.handedOver;
    if (h && (this.state !== 'queued' || h.tokenCount !== this.promptLength || h.pages.length !== Math.ceil(h.tokenCount / pageSize) || this.outputCount !== 1)) {
      throw new LlmError('LLM_ERR_INTERNAL', `${where}: handed-over KV of ${h.tokenCount} tokens in ${h.pages.length} pages with ${this.outputCount} outputs`);
    }
  }
}
