// The scheduler: continuous batching over one engine (one TP group). Each step it serves the running requests
// oldest first (decode tokens and the next chunk of unfinished prefills), then admits queued requests while KV pages
// (free + evictable), slots (--max-running-requests) and the step's token budgets (--max-prefill-tokens,
// --chunked-prefill-size) allow. When a running request needs a page and none can be freed by eviction, the newest
// running request is retracted: its computed full pages go to the radix cache, the rest are freed, and it returns to
// the front of the queue keeping its output, to resume later with exactly the tokens it would have produced.
//
// Overlap scheduling (SGLang-style, with token feedback on the executor): step N+1 is planned (requests chosen,
// pages allocated, positions fixed) and submitted as soon as step N is, while N runs. A request that samples in step
// N has a pending token; when its decode input in step N+1 is that token, the step carries a placeholder naming
// the request's row in step N (placeholder.ts), and the executor, which runs steps strictly in order, fills it from
// N's sampled tokens (on the device, for an engine with pipelined steps, which begins N+1 before N ends): engine
// steps run back to back, with no thread hop or scheduler turn between them. Step N's result is applied (tokens land, stops are decided, outputs stream, computed pages join the
// cache) while N+1 runs, and step N+2 is planned and submitted right after. A request that stops or is aborted by
// N's result while inside the submitted N+1 ends at once (pages freed, final output sent); N+1's output for it is
// discarded when that result is applied. min_tokens bans and the RNG counter of a draw count the pending token
// (outputIndex = outputs + pending), and a request is not planned past the pending token that reaches max_tokens.
// With overlap off, each step is planned after the previous result is applied, and no placeholder is ever sent.
// Guided requests (a TokenGuide, src/guided) need each draw's token bitmask, which depends on the token before it: a
// guided request is planned only once its previous token has landed and its guide's next mask is ready, and while
// any guided request lives the scheduler runs steps one at a time (as with overlap off) rather than leave the guided
// requests out of every other step.
// Because the executor runs steps (and page copies) strictly in order, pages freed while steps are in flight can be
// handed to the next planned step: it only runs after the in-flight ones have read and written them, and an
// in-flight step only writes positions past its request's computed tokens, so pages that joined the cache are never
// written by a step still in flight.
//
// Invariants (checked by checkIntegrity, on top of each part's own):
//  G1. Every live request is in exactly one place: the queue (state queued) or the slot table (prefilling/decoding).
//  G2. Page ownership is exact: allocator refcount of each page = cache nodes holding it + running requests owning it
//      (pages[cachedPageCount..]); nothing leaks, nothing is shared by accident.
//  G3. Radix lock counts equal the locks running requests hold (each on its lockedNode).
//  G4. At most two steps are in flight (one with overlap off). A request's `pending` is the number of in-flight steps
//      that sample for it (at most one each); a placeholder in a submitted step always names a row of the step
//      submitted just before it that samples for the same request (checked at submission), so the executor can
//      resolve it from that step's tokens alone. Results are applied in submission order.
//  G5. KV outside running requests (disaggregation, request.ts KvHold) is held by exactly one of: a parked entry
//      (a finished prefill's prompt KV waiting for its decode worker, or a decode worker's import waiting for its
//      request's submission) or a queued handed-over request (Q5). G2 and G3 count those holds like requests.
//
// Disaggregated hand-over: a prefill request with parkKvAs keeps its prompt's KV when it stops normally (full
// pages go to the radix cache as usual but stay pinned; the partial last page stays allocated) and parks it under
// that key; the disaggregation service takes it (to send it) and releases it once sent. On the decode side an
// import parks the received KV, and the request submitted with handOver adopts it (Q5). Parked KV is freed by
// dropParked, or given up by queued handed-over requests when nothing else can run (no stall on held pages).
import { LlmError, toErrorPayload, type ErrorPayload } from '../errors.js';
import { packStep } from '../engine/step.js';
import type { Engine, KvPoolInfo, SeqStep, StepDescriptor, StepResult } from '../engine/types.js';
import { PageAllocator } from './allocator.js';
import { placeholderFor, resolvePlaceholders } from './placeholder.js';
import { RadixCache, type RadixNode } from './radix.js';
import { RequestQueue } from './queue.js';
import { RequestRecord, type FinishReason, type KvHold, type SchedulerRequest, type TokenGuide, type TopLogprob } from './request.js';
import { SlotTable } from './slots.js';

export type { SchedulerRequest, FinishReason, HandOver, KvHold, TokenGuide, GuideVerdict, TopLogprob } from './request.js';
export type { RadixEvent } from './radix.js';

/** Runs steps strictly in submission order (the rank actors of a TP group, or an engine in this thread), each one's
 * token placeholders resolved from the tokens the step before it sampled (placeholder.ts). */
export interface StepExecutor {
  readonly kv: KvPoolInfo;
  /** When known, min_tokens bans leave out stop ids outside the vocabulary (the engine refuses such a step), and the
   * packer checks token ids against it. */
  readonly vocabSize?: number;
  /** A step descriptor the scheduler packed (step.ts); the executor owns it from here (it may transfer it). */
  execute(step: StepDescriptor): Promise<StepResult>;
}

export interface SchedulerOptions {
  maxRunningRequests: number;
  /** Largest prefill chunk of one request in one step; <= 0: no chunking (whole prompt at once). */
  chunkedPrefillSize: number;
  /** Prefill tokens in one step, all requests together. */
  maxPrefillTokens: number;
  /** All tokens in one step (engine workspace bound). */
  maxBatchTokens: number;
  /** Sequences in one step (engine bound). */
  maxSeqsPerStep: number;
  enableOverlap: boolean;
  enablePrefixCache: boolean;
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
}

/** One streamed output: at most one per step per request. The final one carries finishReason and usage. */
export interface RequestOutput {
  tokenIds: number[];
  logprobs: number[] | null;
  topLogprobs: TopLogprob[][] | null;
  finishReason: FinishReason | null;
  usage: Usage | null;
  error: ErrorPayload | null;
}

export type OutputSink = (out: RequestOutput) => void;

export interface SchedulerStats {
  steps: number;
  prefillTokens: number; // tokens processed in prefill chunks (prompt and resumed output)
  decodeTokens: number;
  retractions: number;
  cacheHitTokens: number; // tokens skipped thanks to the radix cache, re-admissions included
  handedOverTokens: number; // prompt tokens whose KV a prefill worker handed over (admitted straight to decoding)
  hostMs: number; // time spent planning steps, packing them and applying results (the scheduler's own cost)
  idleMs: number; // time with nothing to run
}

interface PlannedSeq {
  req: RequestRecord;
  epoch: number;
  start: number;
  end: number;
  sample: boolean;
  decode: boolean; // a decode token (as opposed to a prefill chunk, resumed output included)
}

/** A sampled token that joined its sequence, and why the sequence stops now (if it does). */
interface Landed {
  k: number;
  req: RequestRecord;
  token: number;
  reason: FinishReason | null;
}

interface InFlight {
  seqs: PlannedSeq[];
  promise: Promise<StepResult>;
}

/** Runs a synchronous engine as an executor in this thread (tests). */
export function engineExecutor(engine: Engine): StepExecutor {
  let previous: Int32Array | null = null;
  return {
    kv: engine.kv,
    vocabSize: engine.spec.vocabSize,
    execute: (step) =>
      new Promise((resolve, reject) => {
        // setImmediate lets the scheduler plan the next step first, as it would while a rank computes; callbacks run
        // in the order the steps were submitted.
        setImmediate(() => {
          try {
            resolvePlaceholders(step, previous);
            const result = engine.step(step);
            previous = result.tokens;
            resolve(result);
          } catch (err) {
            previous = null;
            reject(err);
          }
        });
      }),
  };
}

export class Scheduler {
  readonly allocator: PageAllocator;
  readonly cache: RadixCache | null;
  readonly pageSize: number;
  readonly stats: SchedulerStats = {
    steps: 0, prefillTokens: 0, decodeTokens: 0, retractions: 0, cacheHitTokens: 0, handedOverTokens: 0, hostMs: 0, idleMs: 0,
  };
  private readonly options: SchedulerOptions;
  private readonly executor: StepExecutor;
  private readonly queue = new RequestQueue();
  private readonly slots: SlotTable;
  private readonly requests = new Map<string, { req: RequestRecord; sink: OutputSink }>();
  /** G5: KV parked for a hand-over, by key. */
  private readonly parked = new Map<string, KvHold>();
  private admitCounter = 0;
  /** Live requests with a guide: while any lives, steps are not overlapped (below, loop). */
  private guided = 0;
  /** Guides computing the mask of their request's next draw; the loop waits for them before planning. */
  private masksComing: Promise<void>[] = [];
  private wake: (() => void) | null = null;
  private loopDone: Promise<void> | null = null;
  private stopping = false;
  private failure: ErrorPayload | null = null;
  private readonly failureListeners: ((error: ErrorPayload) => void)[] = [];

  constructor(executor: StepExecutor, options: SchedulerOptions) {
    this.executor = executor;
    this.options = options;
    this.pageSize = executor.kv.pageSize;
    this.allocator = new PageAllocator(executor.kv.numPages);
    this.cache = options.enablePrefixCache ? new RadixCache(this.allocator, this.pageSize) : null;
    this.slots = new SlotTable(options.maxRunningRequests);
    for (const [name, v] of [
      ['--max-prefill-tokens', options.maxPrefillTokens],
      ['max batch tokens', options.maxBatchTokens],
      ['max sequences per step', options.maxSeqsPerStep],
    ] as const) {
      if (!Number.isInteger(v) || v <= 0) throw new LlmError('LLM_ERR_CONFIG', `${name} must be a positive integer, got ${v}`);
    }
  }

  get runningCount(): number {
    return this.slots.size;
  }

  get queuedCount(): number {
    return this.queue.length;
  }

  /** Called once if the executor fails (after every live request got the error). */
  onFailure(listener: (error: ErrorPayload) => void): void {
    this.failureListeners.push(listener);
  }

  start(): void {
    if (this.loopDone) return;
    this.loopDone = this.loop();
  }

  /** Fails every live request with LLM_ERR_SHUTDOWN and waits for the loop to end. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wake?.();
    await this.loopDone;
    this.failAll({ code: 'LLM_ERR_SHUTDOWN', message: 'the scheduler stopped before the request finished' });
  }

  /** Queues a request; its outputs go to sink. Throws a coded error for a request that can never run. With a guide
   * (grammar-constrained decoding, src/guided), every draw is masked by it and the request stops where the grammar
   * ends; the scheduler owns the guide from here (it disposes of it, the request refused too). */
  submit(input: SchedulerRequest, sink: OutputSink, guide: TokenGuide | null = null): void {
    // a handed-over request's parked KV is its own from here, whether it runs or is refused
    const handedOver = input.handOver ? this.takeParked(input.handOver.kvKey) : null;
    try {
      this.submitChecked(input, sink, handedOver, guide);
    } catch (err) {
      if (handedOver) this.releaseKv(handedOver);
      guide?.dispose();
      throw err;
    }
  }

  private submitChecked(input: SchedulerRequest, sink: OutputSink, handedOver: KvHold | null, guide: TokenGuide | null): void {
    if (this.failure) throw LlmError.fromPayload(this.failure);
    if (this.stopping) throw new LlmError('LLM_ERR_SHUTDOWN', 'the scheduler is stopping');
    if (this.requests.has(input.id)) throw new LlmError('LLM_ERR_BAD_REQUEST', `request id ${input.id} is already in flight`);
    if (input.tokenIds.length === 0) throw new LlmError('LLM_ERR_BAD_REQUEST', `request ${input.id}: token_ids is empty`);
    if (!Number.isInteger(input.maxTokens) || input.maxTokens < 1) {
      throw new LlmError('LLM_ERR_BAD_REQUEST', `request ${input.id}: stop_conditions.max_tokens must be >= 1, got ${input.maxTokens}`);
    }
    // The prompt must fit the pool; a sequence that later outgrows it alone ends with "length" (see ensurePages).
    const promptPages = Math.ceil(input.tokenIds.length / this.pageSize);
    if (promptPages > this.allocator.numPages) {
      throw new LlmError(
        'LLM_ERR_CONTEXT_LENGTH',
        `request ${input.id}: ${input.tokenIds.length} prompt tokens need ${promptPages} KV pages, ` +
          `the pool has ${this.allocator.numPages} of ${this.pageSize} tokens`,
      );
    }
    const req = new RequestRecord(input, this.executor.vocabSize);
    if (guide) {
      req.guide = guide;
      this.guided++;
    }
    this.requests.set(input.id, { req, sink });
    this.queue.pushBack(req);
    const h = input.handOver;
    if (h) {
      // Q5: the first output is known; it streams now, and may end the request at once
      if (handedOver && handedOver.tokenCount === req.promptLength) req.handedOver = handedOver;
      else if (handedOver) this.releaseKv(handedOver); // KV of another length: recompute as a retracted request
      req.cachedPromptTokens = Math.min(h.cachedTokens, req.promptLength);
      const reason = req.appendToken(h.tokenId);
      // The prefill worker sampled the first token under the same grammar: the guide takes it as its first.
      if (req.guide && !reason) this.guideToken(req, h.tokenId);
      const first: RequestOutput = {
        tokenIds: [h.tokenId],
        logprobs: input.sampling.logprobs >= 0 && h.logprob !== null ? [h.logprob] : null,
        topLogprobs: input.sampling.logprobs > 0 && h.topLogprobs ? [h.topLogprobs.slice(0, input.sampling.logprobs)] : null,
        finishReason: null,
        usage: null,
        error: null,
      };
      if (reason) this.finish(req, reason, first);
      else sink(first);
    }
    this.wake?.();
  }

  /** A token of a guided request landed: its guide takes it and computes the next mask (the loop waits for it before
   * planning). Where the grammar is complete the request stops; a token it refuses, or a guide that fails, ends the
   * request with an error. */
  private guideToken(req: RequestRecord, token: number): void {
    const done = (reason: FinishReason, error?: ErrorPayload) => {
      if (!req.isDone) this.finish(req, reason, undefined, error);
    };
    this.masksComing.push(
      req.guide!.accept(token).then(
        (verdict) => {
          if (verdict === 'end') done('stop');
          else if (verdict === 'rejected') done('error', { code: 'LLM_ERR_INTERNAL', message: `request ${req.id}: token ${token} is not allowed by the request's grammar` });
        },
        (err: unknown) => done('error', toErrorPayload(err)),
      ),
    );
  }

  /** Parks KV under key for a hand-over (G5); a key in use is an internal error. */
  parkKv(key: string, kv: KvHold): void {
    if (this.parked.has(key)) fail(`KV already parked under ${key}`);
    this.parked.set(key, kv);
  }

  /** The KV parked under key, left parked; null when none is. */
  parkedKv(key: string): KvHold | null {
    return this.parked.get(key) ?? null;
  }

  /** Takes KV parked under key (the caller now holds it); null when none is. */
  takeParked(key: string): KvHold | null {
    const kv = this.parked.get(key) ?? null;
    this.parked.delete(key);
    return kv;
  }

  /** Frees KV parked under key, if any is. */
  dropParked(key: string): void {
    const kv = this.takeParked(key);
    if (!kv) return;
    this.releaseKv(kv);
    this.wake?.(); // queued requests may fit now
  }

  /** Gives held KV back: its cached pages are unpinned (they stay cached), its own pages freed. */
  releaseKv(kv: KvHold): void {
    this.allocator.releaseAll(kv.pages.slice(kv.cachedPageCount));
    if (kv.lockedNode) this.cache?.unlock(kv.lockedNode);
    kv.pages = [];
    kv.cachedPageCount = 0;
    kv.lockedNode = null;
  }

  /** Cancels a request wherever it is; its pages are freed now. Unknown or finished ids are ignored. */
  abort(id: string): void {
    const entry = this.requests.get(id);
    if (!entry) return;
    this.finish(entry.req, 'cancelled');
    this.wake?.();
  }

  checkIntegrity(): void {
    this.queue.checkIntegrity();
    this.slots.checkIntegrity();
    const refs = new Map<number, number>();
    const locks = new Map<RadixNode, number>();
    this.cache?.collectPageRefs(refs);
    let live = 0;
    for (const { req } of this.requests.values()) {
      live++;
      req.checkIntegrity(this.pageSize);
      if (req.state === 'queued' && !this.queue.has(req.id)) fail(`request ${req.id} is queued but not in the queue`);
      for (let i = req.cachedPageCount; i < req.pages.length; i++) refs.set(req.pages[i], (refs.get(req.pages[i]) ?? 0) + 1);
      if (req.lockedNode) locks.set(req.lockedNode, (locks.get(req.lockedNode) ?? 0) + 1);
      if (req.handedOver) countHold(req.handedOver, refs, locks);
      if (req.isDone) fail(`request ${req.id} is ${req.state} but still tracked`);
    }
    for (const kv of this.parked.values()) countHold(kv, refs, locks);
    if (live !== this.queue.length + this.slots.size) fail(`${live} live requests, ${this.queue.length} queued + ${this.slots.size} running`);
    this.allocator.checkIntegrity(refs);
    this.cache?.checkIntegrity(locks);
  }

  private async loop(): Promise<void> {
    const inflight: InFlight[] = [];
    try {
      while (!this.stopping) {
        // A guided draw's mask needs the token before it: with overlap, a step planned while the previous one runs
        // would leave every guided request out of it (half their rate), so steps run one at a time while any lives.
        const depth = this.options.enableOverlap && this.guided === 0 ? 2 : 1;
        if (this.masksComing.length) await Promise.all(this.masksComing.splice(0));
        let t0 = performance.now();
        const plan = inflight.length < depth ? this.planStep() : null;
        if (plan) {
          inflight.push(this.submitStep(plan));
          this.stats.hostMs += performance.now() - t0;
          continue;
        }
        this.stats.hostMs += performance.now() - t0;
        const step = inflight.shift();
        if (step) {
          const result = await step.promise;
          t0 = performance.now();
          this.deliver(this.landTokens(step.seqs, result), result);
          this.cacheComputedPages(step.seqs);
          this.stats.hostMs += performance.now() - t0;
          continue;
        }
        // Pages parked for a hand-over come back when it ends (sent, given up or timed out): wait for that.
        if (this.requests.size && !this.parked.size) {
          fail(`stalled with ${this.queue.length} queued and ${this.slots.size} running requests and nothing to run`);
        }
        t0 = performance.now();
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.stats.idleMs += performance.now() - t0;
        this.wake = null;
      }
      for (const step of inflight.splice(0)) {
        const result = await step.promise;
        this.deliver(this.landTokens(step.seqs, result), result);
      }
    } catch (err) {
      this.failure = toErrorPayload(err);
      this.failAll(this.failure);
      for (const key of [...this.parked.keys()]) this.dropParked(key);
      // The KV contents are unknown after an engine failure: nothing cached may be reused.
      this.cache?.clear();
      for (const l of this.failureListeners) l(this.failure);
    }
  }

  /** Chooses the next step's sequences and gives them pages. Null when nothing can run. */
  private planStep(): PlannedSeq[] | null {
    const o = this.options;
    const seqs: PlannedSeq[] = [];
    let tokenBudget = o.maxBatchTokens;
    let prefillBudget = o.maxPrefillTokens;
    const chunkCap = o.chunkedPrefillSize > 0 ? o.chunkedPrefillSize : Number.MAX_SAFE_INTEGER;
    let retracted = false;
    const running = this.slots.running();
    for (const req of running) {
      if (seqs.length >= o.maxSeqsPerStep || tokenBudget <= 0) break;
      if (!req.isRunning) continue; // retracted earlier in this pass
      if (req.pending && req.outputCount + req.pending >= req.input.maxTokens) continue; // ends on its pending token
      if (req.guide && (req.pending || !req.guide.mask)) continue; // its next mask needs its pending token
      const remaining = req.totalLength - req.scheduled;
      if (remaining <= 0) continue;
      const chunk = Math.min(remaining, tokenBudget, req.state === 'decoding' ? remaining : Math.min(chunkCap, prefillBudget));
      if (chunk <= 0) continue;
      if (!this.ensurePages(req, req.scheduled + chunk, running)) {
        retracted = true;
        continue;
      }
      const seq = this.planChunk(req, chunk);
      seqs.push(seq);
      tokenBudget -= chunk;
      if (!seq.decode) prefillBudget -= chunk;
    }
    if (!retracted) {
      let reserve = running.filter((r) => r.isRunning).length; // one page each for the coming decode steps
      for (let pass = 0; pass < 2; pass++) {
        let blocked = false;
        for (const req of this.queue.snapshot()) {
          if (this.slots.full || seqs.length >= o.maxSeqsPerStep || tokenBudget <= 0 || prefillBudget <= 0) break;
          if (req.pending) continue; // its retraction-time token is still in flight
          if (!(req.handedOver ? this.admitHandedOver(req, reserve) : this.admit(req, reserve, Math.min(chunkCap, prefillBudget, tokenBudget)))) {
            blocked = true;
            break;
          }
          const chunk = Math.min(req.totalLength - req.scheduled, chunkCap, prefillBudget, tokenBudget);
          const seq = this.planChunk(req, chunk);
          seqs.push(seq);
          tokenBudget -= chunk;
          if (!seq.decode) prefillBudget -= chunk;
          reserve++;
        }
        // Nothing runs and the queue is blocked: the pages queued hand-overs hold may be what it waits for; they
        // give them up (G5) and resume as retracted requests.
        if (!blocked || seqs.length || this.slots.size || !this.dropQueuedHandOvers()) break;
      }
    }
    return seqs.length ? seqs : null;
  }

  /** Q5: admits a handed-over request straight to decoding, its KV moving into its page table, if a page for its
   * first decode token can be had beyond `reserve`. */
  private admitHandedOver(req: RequestRecord, reserve: number): boolean {
    const kv = req.handedOver!;
    const need = Math.ceil((req.promptLength + 1) / this.pageSize) - kv.pages.length;
    if (need > 0 && (this.availablePages() - reserve < need || !this.takePages(need))) return false;
    this.queue.remove(req);
    req.handedOver = null;
    req.transition('decoding');
    this.slots.acquire(req);
    req.admitOrder = ++this.admitCounter;
    req.pages = kv.pages.concat(this.allocator.alloc(need)!);
    req.cachedPageCount = kv.cachedPageCount;
    req.lockedNode = kv.lockedNode;
    req.scheduled = req.computed = req.promptLength;
    this.stats.handedOverTokens += req.promptLength;
    return true;
  }

  /** Releases the KV of every queued handed-over request; false when there was none. */
  private dropQueuedHandOvers(): boolean {
    let dropped = false;
    for (const req of this.queue.snapshot()) {
      if (!req.handedOver) continue;
      this.releaseKv(req.handedOver);
      req.handedOver = null;
      dropped = true;
    }
    return dropped;
  }

  private planChunk(req: RequestRecord, chunk: number): PlannedSeq {
    const start = req.scheduled;
    const decode = req.state === 'decoding';
    req.scheduled += chunk;
    const sample = req.scheduled === req.totalLength;
    if (sample && req.state === 'prefilling') req.transition('decoding');
    return { req, epoch: req.epoch, start, end: req.scheduled, sample, decode };
  }

  /** Admits a queued request if its whole remaining prefill fits in free + evictable pages beyond `reserve`, and
   * gives it pages for its first chunk (at most maxChunk tokens). */
  private admit(req: RequestRecord, reserve: number, maxChunk: number): boolean {
    const match = this.cache?.match(req.tokens, req.tokens.length - 1) ?? null;
    if (match) this.cache!.lock(match.node);
    const cachedPages = match ? match.pages.length : 0;
    const cached = cachedPages * this.pageSize;
    const needTotal = Math.ceil(req.tokens.length / this.pageSize) - cachedPages;
    const firstEnd = cached + Math.min(req.tokens.length - cached, maxChunk);
    const needFirst = Math.ceil(firstEnd / this.pageSize) - cachedPages;
    if (this.availablePages() - reserve < needTotal || !this.takePages(needFirst)) {
      if (match) this.cache!.unlock(match.node);
      return false;
    }
    const pages = this.allocator.alloc(needFirst)!;
    this.queue.remove(req);
    req.transition('prefilling');
    this.slots.acquire(req);
    req.admitOrder = ++this.admitCounter;
    req.pages = match ? match.pages.concat(pages) : pages;
    req.cachedPageCount = cachedPages;
    req.lockedNode = match && cachedPages ? match.node : null;
    if (match && !cachedPages) this.cache!.unlock(match.node);
    req.scheduled = req.computed = cached;
    req.cachedPromptTokens ??= Math.min(cached, req.promptLength);
    this.stats.cacheHitTokens += cached;
    return true;
  }

  /** Makes req's page table cover `endTokens`, evicting cached pages and then retracting the newest running
   * requests. False when req itself had to be retracted, or ended: a request running alone that still finds no
   * page has outgrown the whole pool and finishes with "length" (once its in-flight token has landed). */
  private ensurePages(req: RequestRecord, endTokens: number, running: readonly RequestRecord[]): boolean {
    const need = Math.ceil(endTokens / this.pageSize) - req.pages.length;
    if (need <= 0) return true;
    while (!this.takePages(need)) {
      const victim = [...running].reverse().find((r) => r.isRunning);
      if (!victim) fail(`no request to retract while ${req.id} needs ${need} pages`);
      if (victim === req && !running.some((r) => r !== req && r.isRunning)) {
        if (!req.pending) this.finish(req, 'length');
        return false;
      }
      this.retract(victim);
      if (victim === req) return false;
    }
    req.pages.push(...this.allocator.alloc(need)!);
    return true;
  }

  /** True when n pages are free, evicting cached ones as needed. */
  private takePages(n: number): boolean {
    const short = n - this.allocator.freeCount;
    if (short > 0) this.cache?.evict(short);
    return this.allocator.freeCount >= n;
  }

  private availablePages(): number {
    return this.allocator.freeCount + (this.cache?.evictablePages ?? 0);
  }

  private retract(req: RequestRecord): void {
    this.releasePages(req, true);
    this.slots.release(req);
    req.transition('queued');
    req.epoch++;
    this.queue.pushFront(req);
    this.stats.retractions++;
  }

  /** Gives back the request's pages: computed full pages to the radix cache (when `cacheable`), the rest free. */
  private releasePages(req: RequestRecord, cacheable: boolean): void {
    let kept = 0;
    if (this.cache && cacheable) {
      // Pages up to cachedPageCount are in the cache already: only the ones completed since go in.
      kept = Math.max(req.cachedPageCount, Math.min(Math.floor(req.computed / this.pageSize), req.pages.length));
      this.cache.extend(req.lockedNode ?? this.cache.root, req.tokens, req.cachedPageCount, req.pages.slice(req.cachedPageCount, kept));
    } else {
      kept = req.cachedPageCount; // cache-owned: only unlocked below
    }
    this.allocator.releaseAll(req.pages.slice(Math.max(kept, req.cachedPageCount)));
    if (req.lockedNode) this.cache!.unlock(req.lockedNode);
    req.pages = [];
    req.cachedPageCount = 0;
    req.lockedNode = null;
    req.scheduled = req.computed = 0;
  }

  /** Moves the KV of a finished request's prompt positions [0, promptLength) out of its page table into a hold (G5):
   * its full pages into the radix cache (pinned by the request's lock, which the hold takes over), the partial last
   * page kept as is. Pages planned beyond the prompt (never computed) are freed; the request is left with none. */
  private promptKv(req: RequestRecord): KvHold {
    const keep = Math.ceil(req.promptLength / this.pageSize);
    const full = Math.floor(req.promptLength / this.pageSize);
    const cache = this.cache;
    if (cache && full > req.cachedPageCount) {
      const added = cache.extend(req.lockedNode ?? cache.root, req.tokens, req.cachedPageCount, req.pages.slice(req.cachedPageCount, full));
      req.pages.splice(req.cachedPageCount, added.pages.length, ...added.pages);
      cache.lock(added.node);
      if (req.lockedNode) cache.unlock(req.lockedNode);
      req.lockedNode = added.node;
      req.cachedPageCount = full;
    }
    const kv: KvHold = { tokenCount: req.promptLength, pages: req.pages.slice(0, keep), cachedPageCount: req.cachedPageCount, lockedNode: req.lockedNode };
    this.allocator.releaseAll(req.pages.slice(keep));
    req.pages = [];
    req.cachedPageCount = 0;
    req.lockedNode = null;
    req.scheduled = req.computed = 0;
    return kv;
  }

  private submitStep(seqs: PlannedSeq[]): InFlight {
    const stepNo = this.stats.steps + 1;
    const steps: SeqStep[] = seqs.map((s, row) => {
      const r = s.req;
      const tokenIds = new Int32Array(s.end - s.start);
      const known = Math.min(s.end, r.tokens.length);
      for (let p = s.start; p < known; p++) tokenIds[p - s.start] = r.tokens[p];
      if (known < s.end) {
        // The last input is the token the step just submitted samples for this request (G4): a placeholder.
        if (s.end - known !== 1 || r.pending !== 1 || r.sampleStep !== stepNo - 1) {
          fail(`request ${r.id}: step ${stepNo} needs token ${s.end - 1}, which neither arrived nor is sampled by step ${stepNo - 1}`);
        }
        tokenIds[tokenIds.length - 1] = placeholderFor(r.sampleRow);
      }
      const outputIndex = r.outputCount + r.pending;
      if (s.sample) {
        r.pending++;
        r.sampleStep = stepNo;
        r.sampleRow = row;
      }
      if (s.decode) this.stats.decodeTokens++;
      else this.stats.prefillTokens += s.end - s.start;
      return {
        tokenIds,
        startPos: s.start,
        pages: Int32Array.from(r.pages.slice(0, Math.ceil(s.end / this.pageSize))),
        sample: s.sample,
        sampling: r.input.sampling,
        outputIndex,
        bannedTokenIds: s.sample ? r.bannedAt(outputIndex) : undefined,
        tokenMask: s.sample && r.guide ? r.guide.mask! : undefined,
      };
    });
    this.stats.steps = stepNo;
    // Packed here, once: the executor hands this buffer to the engine(s) unchanged.
    let promise: Promise<StepResult>;
    try {
      const desc = packStep(steps, this.pageSize, {
        vocabSize: this.executor.vocabSize, numPages: this.executor.kv.numPages, placeholders: this.options.enableOverlap,
      });
      promise = this.executor.execute(desc);
    } catch (err) {
      promise = Promise.reject(err);
    }
    // A step queued behind one that failed is never awaited: the first failure ends the loop.
    promise.catch(() => {});
    return { seqs, promise };
  }

  /** First half of applying a result: sampled tokens join their sequences and stop conditions are decided. The
   * output of a request that ended while the step was in flight is discarded. */
  private landTokens(seqs: PlannedSeq[], result: StepResult): Landed[] {
    const landed: Landed[] = [];
    for (let k = 0; k < seqs.length; k++) {
      const s = seqs[k];
      const r = s.req;
      if (s.sample) r.pending--;
      if (r.isDone) continue;
      if (s.epoch === r.epoch) r.computed = Math.max(r.computed, s.end);
      if (!s.sample) continue;
      const token = result.tokens[k];
      const reason = r.appendToken(token);
      if (r.guide && !reason) this.guideToken(r, token);
      landed.push({ k, req: r, token, reason });
    }
    return landed;
  }

  /** Second half: one output per request, and the end of those that stopped (their pages are freed now: steps
   * still in flight that read them run before any step that reuses them). */
  private deliver(landed: Landed[], result: StepResult): void {
    for (const { k, req, token, reason } of landed) {
      if (req.isDone) continue; // aborted from an earlier output's callback
      const n = req.input.sampling.logprobs;
      const out: RequestOutput = {
        tokenIds: [token],
        logprobs: n >= 0 ? [result.logprobs[k]] : null,
        topLogprobs: n > 0 ? [topOf(result, k, n)] : null,
        finishReason: null,
        usage: null,
        error: null,
      };
      if (reason) this.finish(req, reason, out);
      else this.requests.get(req.id)!.sink(out);
    }
  }

  /** Moves every full page a running request has computed into the radix cache as soon as it is complete, so
   * that concurrent requests sharing the prefix reuse it and KV events go out while the request runs. A page whose
   * tokens the cache already holds is swapped for the cached one and freed; a step in flight may still read the
   * freed page, which is safe because any step that reuses it runs after. */
  private cacheComputedPages(seqs: readonly PlannedSeq[]): void {
    const cache = this.cache;
    if (!cache) return;
    for (let i = 0; i < seqs.length; i++) {
      const req = seqs[i].req;
      const full = Math.min(Math.floor(req.computed / this.pageSize), req.pages.length);
      if (full <= req.cachedPageCount || !req.isRunning) continue;
      const own = req.pages.slice(req.cachedPageCount, full);
      const { node, pages } = cache.extend(req.lockedNode ?? cache.root, req.tokens, req.cachedPageCount, own);
      cache.lock(node);
      if (req.lockedNode) cache.unlock(req.lockedNode);
      req.pages.splice(req.cachedPageCount, pages.length, ...pages);
      req.cachedPageCount = full;
      req.lockedNode = node;
    }
  }

  /** Ends a request: frees its pages (caching what it computed), drops it, and sends its final output. */
  private finish(req: RequestRecord, reason: FinishReason, last?: RequestOutput, error?: ErrorPayload): void {
    const entry = this.requests.get(req.id)!;
    const park = req.input.parkKvAs;
    if (req.isRunning) {
      // a prefill worker's request stops at its first token, its prompt's KV computed: that KV is parked
      if (park && (reason === 'stop' || reason === 'length') && req.outputCount === 1 && req.computed === req.promptLength) this.parkKv(park, this.promptKv(req));
      else this.releasePages(req, reason !== 'error');
      this.slots.release(req);
    } else this.queue.remove(req);
    if (req.handedOver) {
      this.releaseKv(req.handedOver);
      req.handedOver = null;
    }
    req.transition(reason === 'cancelled' ? 'aborted' : 'finished');
    req.finishReason = reason;
    if (req.guide) {
      req.guide.dispose();
      req.guide = null;
      this.guided--;
    }
    this.requests.delete(req.id);
    const out: RequestOutput = last ?? { tokenIds: [], logprobs: null, topLogprobs: null, finishReason: null, usage: null, error: null };
    out.finishReason = reason;
    out.usage = {
      promptTokens: req.promptLength,
      completionTokens: req.outputCount,
      cachedTokens: req.cachedPromptTokens ?? 0,
    };
    out.error = error ?? null;
    entry.sink(out);
  }

  private failAll(error: ErrorPayload): void {
    for (const { req } of [...this.requests.values()]) this.finish(req, 'error', undefined, error);
  }
}

function topOf(result: StepResult, k: number, n: number): TopLogprob[] {
  const out: TopLogprob[] = [];
  for (let j = 0; j < Math.min(n, result.topN); j++) {
    const id = result.topIds[k * result.topN + j];
    if (id >= 0) out.push({ tokenId: id, logprob: result.topLogprobs[k * result.topN + j] });
  }
  return out;
}

function countHold(kv: KvHold, refs: Map<number, number>, locks: Map<RadixNode, number>): void {
  for (let i = kv.cachedPageCount; i < kv.pages.length; i++) refs.set(kv.pages[i], (refs.get(kv.pages[i]) ?? 0) + 1);
  if (kv.lockedNode) locks.set(kv.lockedNode, (locks.get(kv.lockedNode) ?? 0) + 1);
}

function fail(message: string): never {
  throw new LlmError('LLM_ERR_INTERNAL', `scheduler: ${message}`);
}
