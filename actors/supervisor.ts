// The supervisor (main thread): starts the rank actor and the scheduler for one worker, turns wire requests into
// scheduler requests and scheduler outputs into response chunks, and watches the rank. When the rank crashes or
// hangs, every in-flight request fails with the rank's coded error (the scheduler sees the failed step), then the
// supervisor restarts the rank and a fresh scheduler, up to maxRestarts times; past that it shuts down and every
// later call fails with the last error. Requests that arrive during a restart wait for it.
import { randomUUID } from 'node:crypto';
import { LlmError } from '../src/errors.js';
import { MAX_TOP_LOGPROBS } from '../src/engine/step.js';
import { PreprocessedRequestSchema, type PreprocessedRequest } from '../src/protocol/request.js';
import type { LlmResponseChunk } from '../src/protocol/response.js';
import { parseWire } from '../src/protocol/validate.js';
import { Scheduler, type RadixEvent, type RequestOutput, type SchedulerOptions, type SchedulerRequest } from '../src/scheduler/scheduler.js';
import type { EngineSummary } from './messages.js';
import { exportCachedPrefix, importPrefix, type PrefixPages } from '../src/disagg/prefix.js';
import type { RankEngineInit } from './rank-engine.js';
import { RankHandle } from './rank.js';

/** Supervisor settings. Names and defaults follow the worker flags (src/config/schema.ts), so a resolved
 * WorkerConfig can be passed as is; only modelPath is required. */
export interface SupervisorConfig {
  modelPath: string;
  device?: 'cpu' | 'cuda' | 'auto';
  contextLength?: number | null;
  pageSize?: number;
  /** KV pool size in pages; when absent the engine sizes it from memFractionStatic. */
  numPages?: number | null;
  memFractionStatic?: number | null;
  maxRunningRequests?: number | null;
  maxPrefillTokens?: number;
  /** -1: no chunking. */
  chunkedPrefillSize?: number | null;
  disableOverlapSchedule?: boolean;
  disableRadixCache?: boolean;
  cpuThreads?: number | null;
  seed?: number | null;
  /** A step not answered within this many ms marks the rank hung (default 120 s). */
  stepTimeoutMs?: number;
  /** Engine start-up (model load) limit in ms (default 600 s). */
  startTimeoutMs?: number;
  /** Rank restarts after a crash or hang before the supervisor gives up (default 2). */
  maxRestarts?: number;
  /** The rank's engine factory: a module URL exporting createEngine(init), and its init. Defaults to the native
   * engine over modelPath (actors/rank-engine.ts); tests pass a fake engine here. */
  engineFactory?: { module: string; init: unknown };
}

/** A load snapshot for metrics and routing (reference §5.2: KV usage, requests). */
export interface SupervisorLoad {
  kvTotalPages: number;
  /** Pages held by requests or the prefix cache. */
  kvUsedPages: number;
  /** Of those, cached pages no request uses (reclaimable). */
  kvEvictablePages: number;
  runningRequests: number;
  queuedRequests: number;
}

export interface GenerateOptions {
  signal?: AbortSignal;
  /** Defaults to a random UUID. */
  requestId?: string;
}

const DEFAULTS = {
  device: 'auto',
  pageSize: 16,
  memFractionStatic: 0.85,
  maxRunningRequests: 256,
  maxPrefillTokens: 16384,
  chunkedPrefillSize: 8192,
  stepTimeoutMs: 120_000,
  startTimeoutMs: 600_000,
  maxRestarts: 2,
} as const;

interface Core {
  rank: RankHandle;
  scheduler: Scheduler;
}

export class Supervisor {
  private readonly config: SupervisorConfig;
  private readonly schedulerOptions: SchedulerOptions;
  private core: Core | null = null;
  /** Resolves when the current (re)start is done. */
  private ready: Promise<void>;
  private failure: LlmError | null = null;
  private restarts = 0;
  private stopped = false;
  private readonly kvListeners: ((e: RadixEvent) => void)[] = [];

  private constructor(config: SupervisorConfig) {
    this.config = config;
    const maxRunning = config.maxRunningRequests ?? DEFAULTS.maxRunningRequests;
    const maxPrefill = config.maxPrefillTokens ?? DEFAULTS.maxPrefillTokens;
    const chunk = config.chunkedPrefillSize ?? DEFAULTS.chunkedPrefillSize;
    this.schedulerOptions = {
      maxRunningRequests: maxRunning,
      chunkedPrefillSize: chunk === -1 ? 0 : chunk,
      maxPrefillTokens: maxPrefill,
      maxBatchTokens: maxPrefill + maxRunning,
      maxSeqsPerStep: maxRunning,
      enableOverlap: !config.disableOverlapSchedule,
      enablePrefixCache: !config.disableRadixCache,
    };
    this.ready = Promise.resolve();
  }

  /** Starts the rank actor (opening the engine) and the scheduler. */
  static async start(config: SupervisorConfig): Promise<Supervisor> {
    const sup = new Supervisor(config);
    sup.core = await sup.startCore();
    return sup;
  }

  /** The engine the rank opened (KV pool, vocabulary, EOS ids). Throws during a restart. */
  get engine(): EngineSummary {
    if (!this.core) throw this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running');
    return this.core.rank.engine;
  }

  /** The rank now in service (its step statistics). */
  get rank(): RankHandle {
    if (!this.core) throw this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running');
    return this.core.rank;
  }

  /** The scheduler now in service (tests read its stats and integrity). */
  get scheduler(): Scheduler {
    if (!this.core) throw this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running');
    return this.core.scheduler;
  }

  /** KV-cache events (blocks stored in / removed from the prefix cache, with their token ids) for the KV-event
   * publisher. After a rank restart the cache starts empty; no "removed" events are sent for the lost one. */
  onKvEvent(listener: (e: RadixEvent) => void): void {
    this.kvListeners.push(listener);
    this.core?.scheduler.cache?.onEvent(listener);
  }

  load(): SupervisorLoad {
    const s = this.core?.scheduler;
    if (!s) return { kvTotalPages: 0, kvUsedPages: 0, kvEvictablePages: 0, runningRequests: 0, queuedRequests: 0 };
    return {
      kvTotalPages: s.allocator.numPages,
      kvUsedPages: s.allocator.usedCount,
      kvEvictablePages: s.cache?.evictablePages ?? 0,
      runningRequests: s.runningCount,
      queuedRequests: s.queuedCount,
    };
  }

  /** Streams the response chunks of one request (reference §2.2 shapes). Aborting the signal ends the stream with
   * a "cancelled" chunk; an engine or actor failure throws its coded LlmError. */
  async *generate(request: PreprocessedRequest, options: GenerateOptions = {}): AsyncGenerator<LlmResponseChunk> {
    const req = parseWire(PreprocessedRequestSchema, request, 'request');
    await this.ready;
    if (this.failure) throw this.failure;
    if (this.stopped || !this.core) throw new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor has stopped');
    const scheduler = this.core.scheduler;
    const id = options.requestId ?? randomUUID();
    const input = this.toSchedulerRequest(id, req);
    const outputs = new OutputQueue();
    scheduler.submit(input, (o) => outputs.push(o));
    let done = false;
    const onAbort = () => scheduler.abort(id);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) scheduler.abort(id);
    try {
      for (;;) {
        const o = await outputs.next();
        if (o.finishReason) done = true;
        if (o.finishReason === 'error') throw LlmError.fromPayload(o.error ?? { code: 'LLM_ERR_INTERNAL', message: 'request failed' });
        yield toChunk(o);
        if (done) return;
      }
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      if (!done) scheduler.abort(id); // the consumer stopped early
    }
  }

  /** Disaggregated prefill: copies the cached full pages of tokenIds[0, maxTokens) to the host, ordered after every
   * step already submitted (src/disagg/prefix.ts). */
  exportPrefix(tokenIds: number[], maxTokens: number): Promise<PrefixPages> {
    if (!this.core) return Promise.reject(this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running'));
    return exportCachedPrefix(this.core.scheduler, this.core.rank, tokenIds, maxTokens);
  }

  /** Disaggregated decode: makes transferred pages a cached prefix, ordered before every step submitted later;
   * returns the number of pages imported. */
  async importPrefix(prefix: PrefixPages): Promise<number> {
    if (!this.core) throw this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running');
    const core = this.core;
    return importPrefix(core.scheduler, core.rank, prefix);
  }

  /** Fails in-flight requests with LLM_ERR_SHUTDOWN, stops the scheduler and closes the rank. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.ready.catch(() => undefined);
    const core = this.core;
    this.core = null;
    if (core) {
      await core.scheduler.stop();
      await core.rank.close();
    }
  }

  private async startCore(): Promise<Core> {
    const c = this.config;
    const pageSize = c.pageSize ?? DEFAULTS.pageSize;
    const init: RankEngineInit = {
      modelPath: c.modelPath,
      device: c.device ?? DEFAULTS.device,
      options: {
        deviceId: 0,
        pageSize,
        ...(c.numPages ? { numPages: c.numPages } : {}),
        memFractionStatic: c.memFractionStatic ?? DEFAULTS.memFractionStatic,
        maxBatchTokens: this.schedulerOptions.maxBatchTokens,
        maxSeqsPerStep: this.schedulerOptions.maxSeqsPerStep,
        ...(c.cpuThreads ? { threads: c.cpuThreads } : {}),
      },
    };
    const rank = await RankHandle.spawn({
      rank: 0,
      ...(c.engineFactory ? { engineModule: c.engineFactory.module } : {}),
      engineInit: c.engineFactory ? c.engineFactory.init : init,
      stepTimeoutMs: c.stepTimeoutMs ?? DEFAULTS.stepTimeoutMs,
      startTimeoutMs: c.startTimeoutMs ?? DEFAULTS.startTimeoutMs,
      onFailure: (err) => this.onCoreFailure(rank, err),
    });
    const scheduler = new Scheduler(rank, this.schedulerOptions);
    for (const l of this.kvListeners) scheduler.cache?.onEvent(l);
    // An engine error in a step leaves the device state unknown: restart the rank as after a crash.
    scheduler.onFailure((err) => this.onCoreFailure(rank, LlmError.fromPayload(err)));
    scheduler.start();
    return { rank, scheduler };
  }

  private onCoreFailure(rank: RankHandle, error: LlmError): void {
    if (this.stopped || this.core?.rank !== rank) return;
    const old = this.core;
    this.core = null;
    this.ready = (async () => {
      // The scheduler fails its in-flight requests with the rank's error as their steps reject.
      await old.scheduler.stop();
      await old.rank.close(1000);
      if (this.restarts >= (this.config.maxRestarts ?? DEFAULTS.maxRestarts) || this.stopped) {
        this.failure = error;
        this.core = null;
        return;
      }
      this.restarts++;
      try {
        this.core = await this.startCore();
      } catch (err) {
        this.failure = err instanceof LlmError ? err : new LlmError('LLM_ERR_ACTOR_CRASHED', String(err));
        this.core = null;
      }
    })();
  }

  private toSchedulerRequest(id: string, req: PreprocessedRequest): SchedulerRequest {
    const engine = this.core!.rank.engine;
    const bad = (m: string) => new LlmError('LLM_ERR_BAD_REQUEST', `request ${id}: ${m}`);
    const so = req.sampling_options;
    if (so.guided_decoding) throw bad('sampling_options.guided_decoding is not supported by this worker');
    if ((so.n ?? 1) > 1 || so.use_beam_search) throw bad('sampling_options.n > 1 and beam search are not supported');
    if (req.multi_modal_data && Object.values(req.multi_modal_data).some((v) => v.length)) {
      throw bad('multi_modal_data needs a multimodal worker');
    }
    if (req.prompt_embeds) throw bad('prompt_embeds is not supported');
    req.token_ids.forEach((t, i) => {
      if (t >= engine.vocabSize) throw bad(`token_ids[${i}] = ${t} is outside the vocabulary (size ${engine.vocabSize})`);
    });
    const contextLength = this.config.contextLength ?? engine.maxPositionEmbeddings;
    const promptLength = req.token_ids.length;
    if (promptLength >= contextLength) {
      throw new LlmError('LLM_ERR_CONTEXT_LENGTH', `request ${id}: ${promptLength} prompt tokens leave no room in the context length ${contextLength}`);
    }
    const sc = req.stop_conditions;
    const logprobs = req.output_options?.logprobs ?? -1;
    if (logprobs > MAX_TOP_LOGPROBS) throw bad(`output_options.logprobs ${logprobs} is above the maximum ${MAX_TOP_LOGPROBS}`);
    return {
      id,
      tokenIds: req.token_ids,
      maxTokens: Math.min(sc.max_tokens ?? Number.MAX_SAFE_INTEGER, contextLength - promptLength),
      minTokens: sc.min_tokens ?? 0,
      ignoreEos: sc.ignore_eos ?? false,
      eosTokenIds: req.eos_token_ids,
      stopTokenIds: [...(sc.stop_token_ids_hidden ?? []), ...(sc.stop_token_ids ?? [])],
      sampling: {
        temperature: so.temperature ?? 1,
        topP: so.top_p ?? 1,
        topK: so.top_k ?? -1,
        minP: so.min_p ?? 0,
        seed: so.seed ?? this.config.seed ?? null,
        logprobs: logprobs < 0 ? -1 : logprobs, // negative: ignored, as the reference does
      },
    };
  }
}

function toChunk(o: RequestOutput): LlmResponseChunk {
  const chunk: LlmResponseChunk = { token_ids: o.tokenIds };
  if (o.logprobs) chunk.log_probs = o.logprobs;
  if (o.topLogprobs) {
    chunk.top_logprobs = o.topLogprobs.map((tops) =>
      tops.map((t, j) => ({ rank: j + 1, token_id: t.tokenId, token: null, logprob: t.logprob })),
    );
  }
  if (o.finishReason) chunk.finish_reason = o.finishReason;
  if (o.usage) {
    const u = o.usage;
    chunk.completion_usage = {
      prompt_tokens: u.promptTokens,
      completion_tokens: u.completionTokens,
      total_tokens: u.promptTokens + u.completionTokens,
      prompt_tokens_details: u.cachedTokens > 0 ? { cached_tokens: u.cachedTokens } : null,
    };
  }
  return chunk;
}

/** Outputs of one request, pushed by the scheduler, pulled by the stream. */
class OutputQueue {
  private readonly items: RequestOutput[] = [];
  private waiter: ((o: RequestOutput) => void) | null = null;

  push(o: RequestOutput): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w(o);
    } else this.items.push(o);
  }

  next(): Promise<RequestOutput> {
    const o = this.items.shift();
    if (o) return Promise.resolve(o);
    return new Promise((resolve) => (this.waiter = resolve));
  }
}
