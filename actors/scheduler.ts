// The scheduler actor: a worker_thread that runs the Scheduler (src/scheduler/scheduler.ts) over the ranks of one TP
// group (actors/rank.ts RankGroup). This file is both the worker's entry point (workerData.actor === 'scheduler')
// and the supervisor's handle, SchedulerHandle.
//
// Threads: the topology (src/topology) starts the ranks first, then this thread with the scheduler's end of each
// rank's step channel: the per-step hot path is scheduler ⇄ ranks only (one packed descriptor per step, copied to
// every rank). The supervisor hears from the scheduler once per step at most: one 'batch' message carrying that
// step's response outputs, radix (KV) events, step samples for the metrics actor and the scheduler's state. The
// batch is posted at the end of the event-loop turn, after the next step has gone to the ranks, so streaming never
// delays a step. Requests (submit, abort) travel hand-made too; control calls (start, stop, integrity checks, KV
// operations) go through comlink (actors/control.ts).
//
// Failures, as coded payloads {code, message, rank}:
//  - a rank fails a step, or hangs: the scheduler reports 'failed' with the rank's error; the handle fails every
//    request it still has with it and tells the supervisor, which restarts the whole group (scheduler + ranks);
//  - a rank thread crashes: the supervisor's RankActor sees it and fails the group the same way (failGroup);
//  - the scheduler thread throws or exits: LLM_ERR_ACTOR_CRASHED for every request;
//  - the scheduler thread stops beating (a SharedArrayBuffer counter it bumps from a timer, so a blocked event loop
//    stops it) for hangTimeoutMs: LLM_ERR_ACTOR_HUNG for every request, and the thread is terminated.
import { MessageChannel, isMainThread, parentPort, workerData, type MessagePort, type Worker } from 'node:worker_threads';
import { LlmError, toErrorPayload, type ErrorPayload } from '../src/errors.js';
import { Header } from '../src/engine/step.js';
import type { StepDescriptor, StepResult } from '../src/engine/types.js';
import { DisaggKvOps, exportParked, importPrefix, type DisaggKvOp, type DisaggKvReply, type PrefixPages } from '../src/scheduler/kv-transfer.js';
import {
  Scheduler, type OutputSink, type RadixEvent, type RequestOutput, type SchedulerOptions, type SchedulerRequest, type SchedulerStats, type StepExecutor,
} from '../src/scheduler/scheduler.js';
import type { EngineSummary } from '../src/engine/summary.js';
import { GrammarThread } from './grammar.js';
import { unreachable } from './messages.js';
import type { MetricsActor, SchedulerLoad, StepSample } from './metrics.js';
import { controlOf, serveControl, transferred, type Control } from './control.js';
import { RankGroup, type StepTiming } from './rank.js';
import { awaitStart, siblingModule, spawnWorker } from './worker.js';

/** The scheduler's inbox (the request path, from the supervisor). */
export type SchedulerInbox =
  /** handle: the request's number in batch messages (the supervisor's, unique while the request lives). */
  /** cancelled: the caller's signal was aborted before submission; the request ends at once, before any step. */
  | { kind: 'submit'; handle: number; request: SchedulerRequest; cancelled: boolean }
  | { kind: 'abort'; id: string }
  /** Radix events are collected and sent only while someone listens. */
  | { kind: 'kvEvents'; enabled: boolean };

/** What the scheduler sends to the supervisor. */
export type SchedulerOutbox =
  | ({ kind: 'batch' } & OutputBatch & { kvEvents: RadixEvent[]; steps: StepSample[]; stats: SchedulerStats; load: SchedulerLoad })
  | { kind: 'failed'; error: ErrorPayload };

/** The scheduler's control object (comlink, from the supervisor). */
export interface SchedulerControl {
  /** Builds the scheduler over the ranks and starts its loop. */
  start(): Promise<void>;
  /** Runs the scheduler's integrity checks (every invariant of the scheduler, the allocator and the radix cache). */
  checkIntegrity(): void;
  /** The KV parked under key (a finished prefill's prompt, tokenIds), copied to the host, then released. */
  exportParked(key: string, tokenIds: number[]): Promise<PrefixPages>;
  /** Transferred KV imported; parked under parkAs for the request submitted with it (src/scheduler/kv-transfer.ts). */
  importPrefix(prefix: PrefixPages, parkAs: string | null): Promise<number>;
  disaggKv(op: DisaggKvOp): Promise<DisaggKvReply>;
  /** Stops the loop (in-flight requests end), sends the last batch and closes the step channels. */
  stop(): Promise<void>;
}

/** The ranks the scheduler drives: the scheduler's end of each one's step channel (by rank), and what they share. */
export interface SchedulerRanks {
  ports: MessagePort[];
  /** Rank 0's engine. */
  engine: EngineSummary;
  progress: SharedArrayBuffer;
  stepTimeoutMs: number;
  /** A group of several ranks: its name and the engine module whose abortGroup wakes ranks blocked in it. */
  tpGroup: { group: string; engineModule: string } | null;
}

/** A module the scheduler thread imports that exports `beforeStep(stepNo, init)`, called before each step is
 * submitted (fault injection and instrumentation in tests). */
export interface SchedulerHookInit {
  module: string;
  init: unknown;
}

interface SchedulerHookModule {
  beforeStep(stepNo: number, init: unknown): void;
}

export interface SchedulerWorkerData {
  actor: 'scheduler';
  options: SchedulerOptions;
  ranks: SchedulerRanks;
  control: MessagePort;
  /** Int32 counter the scheduler bumps every heartbeatMs. */
  heartbeat: SharedArrayBuffer;
  heartbeatMs: number;
  hook: SchedulerHookInit | null;
  /** Guided decoding's vocabulary (src/guided): loaded at the first guided request. */
  tokenizer: { modelPath: string; tokenizerPath: string };
}

/** A step's outputs. Most are one bare token (no logprobs, not the last): those travel as two transferred Int32Arrays,
 * tokens[i] for request handle plainHandles[i] (cloning 64 output objects per step cost about 4× as much, on both
 * threads). The rest go whole; a request's plain outputs in a batch always come before its whole ones. */
export interface OutputBatch {
  plainHandles: Int32Array<ArrayBuffer>;
  plainTokens: Int32Array<ArrayBuffer>;
  handles: number[];
  outputs: RequestOutput[];
}

// ---- worker side ----

interface PendingBatch {
  plainHandles: number[];
  plainTokens: number[];
  handles: number[];
  outputs: RequestOutput[];
  kvEvents: RadixEvent[];
  steps: StepSample[];
}

function runScheduler(data: SchedulerWorkerData): void {
  const port = parentPort!;
  const send = (m: SchedulerOutbox, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
  const beat = new Int32Array(data.heartbeat);
  const beatTimer = setInterval(() => Atomics.add(beat, 0, 1), data.heartbeatMs);
  let failed = false;
  let batch: PendingBatch | null = null;
  let scheduler: Scheduler | null = null;

  const reportFailure = (error: ErrorPayload) => {
    if (failed) return;
    failed = true;
    // 'failed' goes first: the supervisor fails every stream with it and starts the restart in the same turn, so a
    // caller that reacts to its stream's error finds the restart under way, not the failed scheduler.
    send({ kind: 'failed', error });
    flush();
  };

  /** Timings of answered steps whose samples are still open. */
  const timings = new Map<number, StepTiming>();
  const ranks = new RankGroup({
    ...data.ranks, onFailure: (err) => reportFailure(err.toPayload()), onStepTiming: (timing) => timings.set(timing.stepNo, timing),
  });
  let hook: SchedulerHookModule | null = null;

  const pending = (): PendingBatch => {
    if (!batch) {
      batch = { plainHandles: [], plainTokens: [], handles: [], outputs: [], kvEvents: [], steps: [] };
      // setImmediate, not a microtask: a result's continuation (land tokens, submit the next step) runs in
      // microtasks of the same turn, and this post must come after it, off the step's critical path.
      setImmediate(flush);
    }
    return batch;
  };
  function flush(): void {
    if (!scheduler) return;
    closeSample();
    const b = batch;
    if (!b) return;
    batch = null;
    const s = scheduler;
    const plainHandles = Int32Array.from(b.plainHandles);
    const plainTokens = Int32Array.from(b.plainTokens);
    send(
      {
        kind: 'batch', plainHandles, plainTokens, handles: b.handles, outputs: b.outputs, kvEvents: b.kvEvents, steps: b.steps, stats: { ...s.stats },
        load: {
          kvTotalPages: s.allocator.numPages, kvUsedPages: s.allocator.usedCount, kvEvictablePages: s.cache?.evictablePages ?? 0,
          runningRequests: s.runningCount, queuedRequests: s.queuedCount,
        },
      },
      [plainHandles.buffer, plainTokens.buffer],
    );
  }

  // Step samples for the metrics actor. A step goes to the ranks first and its sample is written after; the sample
  // is completed from rank 0's timing of that step once its result is in (at the next flush or the next step), so
  // nothing runs between a result and the scheduler's continuation. With overlap on, two steps may be in flight.
  let stepNo = 0;
  /** When the last supervisor message arrived: a step submitted after it and after a result was not submitted by
   * that result's continuation, so the rank's wait before it is not a result-to-step gap. */
  let lastMessageAt = 0;
  const counted = { prefill: 0, decode: 0, cacheHits: 0 };
  const open: { sample: StepSample; submittedAt: number; stepNo: number; gapped: boolean }[] = [];
  let previousResultAt = 0;
  const closeSample = () => {
    while (open.length && timings.has(open[0].stepNo)) {
      const o = open.shift()!;
      const timing = timings.get(o.stepNo)!;
      timings.delete(o.stepNo);
      // A step submitted while the one before it ran (overlap) starts counting when that one's result arrived.
      o.sample.stepMs = timing.resultAt - Math.max(o.submittedAt, previousResultAt);
      previousResultAt = timing.resultAt;
      o.sample.engineMs = timing.engineMs;
      o.sample.submitGapMs = o.gapped ? timing.idleMs : null;
      pending().steps.push(o.sample);
    }
  };
  const executor: StepExecutor = {
    kv: ranks.kv,
    vocabSize: ranks.vocabSize,
    execute(step: StepDescriptor): Promise<StepResult> {
      const batchSize = step[Header.numSeqs];
      stepNo++;
      if (hook) hook.beforeStep(stepNo, data.hook!.init);
      // The rank's wait before this step is a result-to-step gap when the previous step was still running at
      // submission (overlap), or this step was submitted by the previous result's continuation.
      const previousRunning = stepNo > 1 && ranks.stats.steps < stepNo - 1;
      const previousDone = ranks.stats.steps === stepNo - 1 && ranks.stats.lastResultAt > lastMessageAt;
      const submittedAt = performance.now();
      const result = ranks.execute(step);
      closeSample();
      const s = scheduler!;
      const st = s.stats;
      open.push({
        sample: {
          batchSize, prefillTokens: st.prefillTokens - counted.prefill, decodeTokens: st.decodeTokens - counted.decode,
          queued: s.queuedCount, running: s.runningCount, kvUsedPages: s.allocator.usedCount, cacheHitTokens: st.cacheHitTokens - counted.cacheHits,
          stepMs: 0, engineMs: 0, submitGapMs: null, queuedBehind: previousRunning,
        },
        submittedAt, stepNo, gapped: previousRunning || (stepNo > 1 && previousDone),
      });
      counted.prefill = st.prefillTokens;
      counted.decode = st.decodeTokens;
      counted.cacheHits = st.cacheHitTokens;
      return result;
    },
  };

  const sinkOf = (handle: number): OutputSink => (out) => {
    const b = pending();
    if (out.tokenIds.length === 1 && !out.finishReason && !out.logprobs && !out.topLogprobs) {
      b.plainHandles.push(handle);
      b.plainTokens.push(out.tokenIds[0]);
    } else {
      b.handles.push(handle);
      b.outputs.push(out);
    }
  };
  let kvEvents = false;
  let disaggKv: DisaggKvOps | null = null;
  const running = (): Scheduler => {
    if (!scheduler) throw new LlmError('LLM_ERR_SHUTDOWN', 'the scheduler is not running');
    return scheduler;
  };

  const control: SchedulerControl = {
    async start() {
      hook = data.hook ? ((await import(data.hook.module)) as SchedulerHookModule) : null;
      const sched = new Scheduler(executor, data.options);
      scheduler = sched;
      sched.cache?.onEvent((e) => {
        if (kvEvents) pending().kvEvents.push(e);
      });
      sched.onFailure(reportFailure);
      sched.start();
      disaggKv = new DisaggKvOps(sched, ranks);
      port.on('message', onRequest);
    },
    checkIntegrity() {
      running().checkIntegrity();
    },
    async exportParked(key, tokenIds) {
      const prefix = await exportParked(running(), ranks, key, tokenIds);
      return transferred(prefix, prefix.data.buffer instanceof ArrayBuffer ? [prefix.data.buffer] : []);
    },
    importPrefix(prefix, parkAs) {
      return importPrefix(running(), ranks, prefix, parkAs);
    },
    disaggKv(op) {
      running();
      return disaggKv!.run(op);
    },
    async stop() {
      await scheduler?.stop();
      grammars.close();
      flush();
      ranks.close();
      clearInterval(beatTimer);
      port.close();
      setImmediate(() => data.control.close()); // after comlink's answer to this call
    },
  };

  // Guided requests: their grammar compiles in the grammar thread (actors/grammar.ts) before they are submitted; an
  // abort that arrives meanwhile is kept (id -> aborted) and applied at submission.
  const compiling = new Map<string, boolean>();
  const grammars = new GrammarThread({ tokenizer: data.tokenizer, vocabSize: data.ranks.engine.vocabSize });
  function submitGuided(m: Extract<SchedulerInbox, { kind: 'submit' }>): void {
    const id = m.request.id;
    compiling.set(id, m.cancelled);
    const fail = (err: unknown) =>
      sinkOf(m.handle)({ tokenIds: [], logprobs: null, topLogprobs: null, finishReason: 'error', usage: null, error: toErrorPayload(err) });
    void (async () => {
      try {
        const guide = await grammars.guide(m.request.guided!);
        const aborted = compiling.get(id)!;
        compiling.delete(id);
        scheduler!.submit(m.request, sinkOf(m.handle), guide);
        if (aborted) scheduler!.abort(id);
      } catch (err) {
        compiling.delete(id);
        fail(err);
      }
    })();
  }

  function onRequest(m: SchedulerInbox): void {
    lastMessageAt = performance.now();
    const sched = scheduler!;
    switch (m.kind) {
      case 'submit':
        if (m.request.guided) {
          submitGuided(m);
          return;
        }
        try {
          sched.submit(m.request, sinkOf(m.handle));
          // In the same turn as the submit, so no step can be planned for it in between.
          if (m.cancelled) sched.abort(m.request.id);
        } catch (err) {
          sinkOf(m.handle)({ tokenIds: [], logprobs: null, topLogprobs: null, finishReason: 'error', usage: null, error: toErrorPayload(err) });
        }
        return;
      case 'abort':
        if (compiling.has(m.id)) compiling.set(m.id, true);
        else sched.abort(m.id);
        return;
      case 'kvEvents':
        kvEvents = m.enabled;
        return;
      default:
        unreachable(m);
    }
  }
  serveControl(control, data.control);
}

if (!isMainThread && (workerData as SchedulerWorkerData | null)?.actor === 'scheduler') runScheduler(workerData as SchedulerWorkerData);

// ---- main side ----

export interface SchedulerSpawnOptions {
  options: SchedulerOptions;
  ranks: SchedulerRanks;
  /** The scheduler thread is hung when it has not beaten for this long. */
  hangTimeoutMs: number;
  /** Scheduler start-up limit, ms (the ranks are already started). */
  startTimeoutMs: number;
  hook?: SchedulerHookInit;
  tokenizer: SchedulerWorkerData['tokenizer'];
  /** Receives the step samples and the scheduler's load. */
  metrics: MetricsActor;
  /** Called once when the scheduler or a rank of its group fails (after every request got the error). */
  onFailure: (error: LlmError, scheduler: SchedulerHandle) => void;
}

const EMPTY_STATS: SchedulerStats = { steps: 0, prefillTokens: 0, decodeTokens: 0, retractions: 0, cacheHitTokens: 0, handedOverTokens: 0, hostMs: 0, idleMs: 0 };

export class SchedulerHandle {
  readonly engine: EngineSummary;
  /** The scheduler's counters as of the last batch it sent (the outputs streamed so far). */
  stats: SchedulerStats = EMPTY_STATS;
  private load: SchedulerLoad;
  private readonly worker: Worker;
  private readonly control: Control<SchedulerControl>;
  /** Live requests by handle, and the handle of each id. */
  private readonly sinks = new Map<number, OutputSink>();
  private readonly handleOf = new Map<string, number>();
  private nextHandle = 0;
  private readonly kvListeners: ((e: RadixEvent) => void)[] = [];
  private readonly opts: SchedulerSpawnOptions;
  private readonly watchdog: NodeJS.Timeout;
  private failure: LlmError | null = null;
  /** Rejects with the failure, so that control calls in flight end with it (the thread may never answer them). */
  private readonly failed: Promise<never>;
  private rejectFailed: (e: LlmError) => void = () => {};
  private closing = false;
  private readonly exited: Promise<void>;

  private constructor(worker: Worker, control: Control<SchedulerControl>, heartbeat: Int32Array, opts: SchedulerSpawnOptions) {
    this.worker = worker;
    this.control = control;
    this.engine = opts.ranks.engine;
    this.opts = opts;
    this.failed = new Promise<never>((_, reject) => (this.rejectFailed = reject));
    this.failed.catch(() => undefined);
    this.load = { kvTotalPages: this.engine.kv.numPages, kvUsedPages: 0, kvEvictablePages: 0, runningRequests: 0, queuedRequests: 0 };
    opts.metrics.send({ kind: 'load', load: this.load });
    worker.on('message', (m: SchedulerOutbox) => this.onMessage(m));
    worker.on('error', (err) => this.failGroup(new LlmError('LLM_ERR_ACTOR_CRASHED', `the scheduler crashed: ${err.message}`)));
    this.exited = new Promise((resolve) => worker.once('exit', () => resolve()));
    worker.on('exit', (code) => {
      if (!this.closing) this.failGroup(new LlmError('LLM_ERR_ACTOR_CRASHED', `the scheduler exited unexpectedly with code ${code}`));
    });
    let seen = Atomics.load(heartbeat, 0);
    let seenAt = performance.now();
    this.watchdog = setInterval(() => {
      const now = performance.now();
      const beat = Atomics.load(heartbeat, 0);
      if (beat !== seen) {
        seen = beat;
        seenAt = now;
      } else if (now - seenAt > opts.hangTimeoutMs) {
        this.failGroup(new LlmError('LLM_ERR_ACTOR_HUNG', `the scheduler thread did not respond for ${Math.round(now - seenAt)} ms (limit ${opts.hangTimeoutMs} ms)`));
        void worker.terminate();
      }
    }, heartbeatMs(opts.hangTimeoutMs));
    this.watchdog.unref();
  }

  /** Starts the scheduler thread over started ranks and waits until its scheduler runs. */
  static async spawn(opts: SchedulerSpawnOptions): Promise<SchedulerHandle> {
    const heartbeat = new SharedArrayBuffer(4);
    const control = new MessageChannel();
    const data: SchedulerWorkerData = {
      actor: 'scheduler', options: opts.options, ranks: opts.ranks, control: control.port2, heartbeat, heartbeatMs: heartbeatMs(opts.hangTimeoutMs),
      hook: opts.hook ?? null, tokenizer: opts.tokenizer,
    };
    const worker = spawnWorker(siblingModule(import.meta.url, 'scheduler'), data, [control.port2, ...opts.ranks.ports]);
    const proxy = controlOf<SchedulerControl>(control.port1);
    await awaitStart(worker, {
      who: 'the scheduler',
      timeoutMs: opts.startTimeoutMs,
      hungMessage: `the scheduler did not start within ${opts.startTimeoutMs} ms`,
    }, proxy.start());
    return new SchedulerHandle(worker, proxy, new Int32Array(heartbeat), opts);
  }

  get runningCount(): number {
    return this.load.runningRequests;
  }

  get queuedCount(): number {
    return this.load.queuedRequests;
  }

  /** Queues a request; its outputs go to sink, the last one with finishReason (an error too). `cancelled`: the
   * request was aborted before it was submitted (it ends "cancelled" without reaching a step). */
  submit(request: SchedulerRequest, sink: OutputSink, cancelled = false): void {
    if (this.failure) throw this.failure;
    if (this.closing) throw new LlmError('LLM_ERR_SHUTDOWN', 'the scheduler is stopping');
    if (this.handleOf.has(request.id)) throw new LlmError('LLM_ERR_BAD_REQUEST', `request id ${request.id} is already in flight`);
    const handle = (this.nextHandle = (this.nextHandle + 1) | 0);
    this.handleOf.set(request.id, handle);
    this.sinks.set(handle, (out) => {
      if (out.finishReason) {
        this.sinks.delete(handle);
        this.handleOf.delete(request.id);
      }
      sink(out);
    });
    this.post({ kind: 'submit', handle, request, cancelled });
  }

  /** Cancels a request wherever it is; the scheduler frees its pages as the message arrives. */
  abort(id: string): void {
    if (this.handleOf.has(id)) this.post({ kind: 'abort', id });
  }

  onKvEvent(listener: (e: RadixEvent) => void): void {
    this.kvListeners.push(listener);
    if (this.kvListeners.length === 1) this.post({ kind: 'kvEvents', enabled: true });
  }

  /** Runs the scheduler's integrity checks (every invariant of the scheduler, the allocator and the radix cache). */
  checkIntegrity(): Promise<void> {
    return this.call(() => this.control.checkIntegrity());
  }

  /** Disaggregated prefill: the KV parked under key (the prompt tokenIds' pages), copied to the host after every
   * step submitted, then released. */
  exportParked(key: string, tokenIds: number[]): Promise<PrefixPages> {
    return this.call(() => this.control.exportParked(key, tokenIds));
  }

  /** Disaggregated decode: transferred pages become a cached prefix, or (parkAs) KV parked for a handed-over
   * request; returns the number of pages written. */
  importPrefix(prefix: PrefixPages, parkAs: string | null): Promise<number> {
    return this.call(() => this.control.importPrefix(prefix, parkAs));
  }

  /** Disaggregated GPU-path KV ops (src/scheduler/kv-transfer.ts DisaggKvOps), in the scheduler's thread. */
  disaggKv(op: DisaggKvOp): Promise<DisaggKvReply> {
    return this.call(() => this.control.disaggKv(op) as Promise<DisaggKvReply>);
  }

  /** The scheduler or a rank of its group failed: every request fails with the error, and the supervisor hears of it,
   * once. The topology calls it for a rank thread's crash (seen on the supervisor's thread). */
  failGroup(error: LlmError): void {
    if (this.failure) return;
    this.failure = error;
    clearInterval(this.watchdog);
    this.rejectFailed(error);
    const payload = error.toPayload();
    for (const sink of [...this.sinks.values()]) {
      sink({ tokenIds: [], logprobs: null, topLogprobs: null, finishReason: 'error', usage: null, error: payload });
    }
    if (!this.closing) this.opts.onFailure(error, this);
  }

  /** Stops the scheduler (what is still in flight ends with LLM_ERR_SHUTDOWN); terminates the thread if it has not
   * exited within graceMs. */
  async close(graceMs = 5000): Promise<void> {
    if (this.closing) return this.exited;
    this.closing = true;
    this.control.stop().catch(() => undefined); // a failed thread may not answer
    const t = setTimeout(() => void this.worker.terminate(), graceMs);
    await this.exited;
    clearTimeout(t);
    this.failGroup(new LlmError('LLM_ERR_SHUTDOWN', 'the scheduler stopped before the request finished'));
  }

  /** Ends the thread now (a failed group). */
  async terminate(): Promise<void> {
    this.closing = true;
    await this.worker.terminate();
    this.failGroup(new LlmError('LLM_ERR_SHUTDOWN', 'the scheduler stopped before the request finished'));
  }

  private post(m: SchedulerInbox): void {
    this.worker.postMessage(m);
  }

  private call<T>(fn: () => Promise<T>): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    return Promise.race([fn(), this.failed]);
  }

  private onMessage(m: SchedulerOutbox): void {
    switch (m.kind) {
      case 'batch': {
        const metrics = this.opts.metrics;
        if (m.steps.length) metrics.send({ kind: 'steps', samples: m.steps });
        this.stats = m.stats;
        this.load = m.load;
        metrics.send({ kind: 'load', load: m.load });
        for (const e of m.kvEvents) for (const l of this.kvListeners) l(e);
        const { plainHandles, plainTokens } = m;
        for (let i = 0; i < plainHandles.length; i++) {
          this.sinks.get(plainHandles[i])?.({ tokenIds: [plainTokens[i]], logprobs: null, topLogprobs: null, finishReason: null, usage: null, error: null });
        }
        for (let i = 0; i < m.handles.length; i++) this.sinks.get(m.handles[i])?.(m.outputs[i]);
        return;
      }
      case 'failed':
        this.failGroup(LlmError.fromPayload(m.error));
        return;
      default:
        unreachable(m);
    }
  }
}

/** How often the scheduler beats, and the watchdog looks: often enough to notice a hang within ~1.25× the limit. */
function heartbeatMs(hangTimeoutMs: number): number {
  return Math.max(5, Math.min(1000, Math.floor(hangTimeoutMs / 4)));
}
