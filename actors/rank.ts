// The rank actor: a worker_thread that owns one engine (one device) and runs the steps the scheduler sends, in
// order. This file is both the worker's entry point (when started with workerData.actor === 'rank') and the main
// side's handle, RankHandle, which the scheduler uses as its StepExecutor.
//
// Per-step path: the step travels packed in two flat buffers (messages.ts) that are transferred, not copied, to the
// rank; the small result arrays come back by structured clone. With overlap on, the scheduler sends step N+1 while
// step N runs; N+1's decode inputs that N samples are placeholders (src/scheduler/placeholder.ts). An engine with
// pipelined steps (Engine.stepBegin/stepEnd: both native backends) gets N+1 begun before N ends and fills the
// placeholders itself, on the device, so the device never waits for this thread (pipelinedStepper); any other
// engine gets them filled here from N's tokens and runs the steps one at a time (syncStepper). The scheduler actor
// (actors/scheduler.ts) spawns and owns its ranks. Failures cross the thread as coded payloads {code, message, rank}:
//  - an engine error in a step rejects that step (the scheduler then fails its requests);
//  - an uncaught error or an exit of the worker fails every in-flight step with LLM_ERR_ACTOR_CRASHED;
//  - a step that takes longer than stepTimeoutMs fails every in-flight step with LLM_ERR_ACTOR_HUNG and the worker
//    is terminated. A failed handle refuses further steps at once: never a hang.
import { appendFileSync } from 'node:fs';
import { isMainThread, parentPort, receiveMessageOnPort, workerData, type MessagePort, type Worker } from 'node:worker_threads';
import { LlmError, toErrorPayload, type ErrorPayload } from '../src/errors.js';
import { stepShape } from '../src/engine/step.js';
import type { Engine, KvIpcPool, KvPullStats, StepDescriptor, StepResult } from '../src/engine/types.js';
import { resolvePlaceholders } from '../src/scheduler/placeholder.js';
import type { StepExecutor } from '../src/scheduler/scheduler.js';
import { unreachable, type EngineSummary } from './messages.js';
import { OpTable, awaitStarted, siblingModule, spawnWorker } from './worker.js';

/** GPU-to-GPU KV transfer ops (Engine.kvIpc*), and what each answers. */
export type KvIpcOp =
  | { op: 'export' }
  | { op: 'open'; pool: KvIpcPool }
  | { op: 'pull'; remote: number; srcPages: Int32Array; srcToken0: number; dstPages: Int32Array; numTokens: number }
  | { op: 'close'; remote: number };
export type KvIpcReply<O extends KvIpcOp> = O extends { op: 'export' } ? KvIpcPool : O extends { op: 'open' } ? number : O extends { op: 'pull' } ? KvPullStats : null;

/** The rank's inbox. Page copies and KV IPC ops (disaggregated KV transfer) run in the same order as steps. */
export type RankInbox =
  | { kind: 'step'; stepNo: number; step: StepDescriptor }
  | { kind: 'exportPages'; opNo: number; pages: Int32Array }
  | { kind: 'importPages'; opNo: number; pages: Int32Array; data: Uint8Array }
  | { kind: 'kvIpc'; opNo: number; request: KvIpcOp }
  | { kind: 'shutdown' };

/** What the rank sends back. */
export type RankOutbox =
  | { kind: 'ready'; engine: EngineSummary }
  | { kind: 'initError'; error: ErrorPayload }
  /** idleMs: from the end of the previous engine step to the start of this one (null for the first step, or after
   * a failed one): the time the rank waited for this step. */
  | { kind: 'result'; stepNo: number; result: StepResult; engineMs: number; idleMs: number | null }
  | { kind: 'stepError'; stepNo: number; error: ErrorPayload }
  | { kind: 'pagesDone'; opNo: number; data: Uint8Array | null }
  | { kind: 'kvIpcDone'; opNo: number; result: KvIpcReply<KvIpcOp> }
  | { kind: 'pagesError'; opNo: number; error: ErrorPayload };

export interface RankWorkerData {
  actor: 'rank';
  rank: number;
  /** URL of a module exporting `createEngine(init): Engine | Promise<Engine>` (actors/rank-engine.ts by default). */
  engineModule: string;
  engineInit: unknown;
}

interface EngineFactoryModule {
  createEngine(init: unknown): Engine | Promise<Engine>;
}

// ---- worker side ----

/**
 * DSG_STEP_TRACE=FILE (profiling aid, off by default): the rank appends one tab-separated line per engine step,
 * `sequences tokens kvTokens engineMs`, where kvTokens is the KV length the step's attention reads summed over its
 * sequences. Lines are buffered and written every 256 steps and at shutdown, outside the timed region.
 */
function stepTracer(file: string | undefined) {
  if (!file) return null;
  try {
    appendFileSync(file, ''); // a path that cannot be written fails the rank's start, not a step
  } catch (err) {
    throw new LlmError('LLM_ERR_CONFIG', `DSG_STEP_TRACE: cannot write ${file}: ${(err as Error).message}`);
  }
  let lines: string[] = [];
  const flush = () => {
    if (lines.length) appendFileSync(file, lines.join(''));
    lines = [];
  };
  return {
    record(shape: StepShape, engineMs: number) {
      lines.push(`${shape.numSeqs}\t${shape.numTokens}\t${shape.kvTokens}\t${engineMs.toFixed(3)}\n`);
      if (lines.length >= 256) flush();
    },
    flush,
  };
}

async function runRank(data: RankWorkerData): Promise<void> {
  const port = parentPort!;
  const send = (m: RankOutbox, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
  let engine: Engine;
  let tracer: ReturnType<typeof stepTracer>;
  try {
    tracer = stepTracer(process.env.DSG_STEP_TRACE);
    const mod = (await import(data.engineModule)) as EngineFactoryModule;
    engine = await mod.createEngine(data.engineInit);
  } catch (err) {
    send({ kind: 'initError', error: toErrorPayload(err, data.rank) });
    return;
  }
  send({
    kind: 'ready',
    engine: {
      backend: engine.backend,
      kv: engine.kv,
      vocabSize: engine.spec.vocabSize,
      eosTokenIds: engine.spec.eosTokenIds,
      maxPositionEmbeddings: engine.spec.maxPositionEmbeddings,
      numLayers: engine.spec.numLayers,
      numKvHeads: engine.spec.numKvHeads,
      headDim: engine.spec.headDim,
    },
  });
  const stepping = engine.stepBegin && engine.stepEnd ? pipelinedStepper(engine, send, tracer, data.rank) : syncStepper(engine, send, tracer, data.rank);
  const handle = (m: RankInbox): void => {
    switch (m.kind) {
      case 'step':
        stepping.step(m);
        // Pipelined: the step runs on the device; take further messages from the port here (not through the event
        // loop), beginning the next step before this one ends, until no step is in flight.
        stepping.pump(port, handle);
        return;
      case 'exportPages':
      case 'importPages': {
        let out: Uint8Array | null = null;
        try {
          if (m.kind === 'exportPages') out = engine.exportPages(m.pages);
          else engine.importPages(m.pages, m.data);
        } catch (err) {
          send({ kind: 'pagesError', opNo: m.opNo, error: toErrorPayload(err, data.rank) });
          return;
        }
        send({ kind: 'pagesDone', opNo: m.opNo, data: out }, out && out.buffer instanceof ArrayBuffer ? [out.buffer] : []);
        return;
      }
      case 'kvIpc': {
        let result: KvIpcReply<KvIpcOp>;
        try {
          result = runKvIpc(engine, m.request);
        } catch (err) {
          send({ kind: 'pagesError', opNo: m.opNo, error: toErrorPayload(err, data.rank) });
          return;
        }
        send({ kind: 'kvIpcDone', opNo: m.opNo, result });
        return;
      }
      case 'shutdown':
        tracer?.flush();
        engine.close();
        port.close();
        return;
      default:
        unreachable(m);
    }
  };
  port.on('message', handle);
}

type StepShape = ReturnType<typeof stepShape>;
type Send = (m: RankOutbox, transfer?: ArrayBuffer[]) => void;
type Tracer = ReturnType<typeof stepTracer>;
interface Stepper {
  /** Starts (pipelined) or runs (sync) one step. */
  step(m: Extract<RankInbox, { kind: 'step' }>): void;
  /** Ends every step in flight, handling messages that arrive meanwhile (non-step ones after the steps end). */
  pump(port: MessagePort, handle: (m: RankInbox) => void): void;
}

/** Engines without stepBegin/stepEnd: each step runs to completion; placeholders are resolved here. */
function syncStepper(engine: Engine, send: Send, tracer: Tracer, rank: number): Stepper {
  /** The last step's sampled tokens (placeholders of the next step name their rows), and when it ended. */
  let previousTokens: Int32Array | null = null;
  let lastStepEnd: number | null = null;
  return {
    step(m) {
      let result: StepResult;
      const shape = stepShape(m.step);
      const t0 = performance.now();
      const idleMs = lastStepEnd === null ? null : t0 - lastStepEnd;
      try {
        // Placeholders (overlap scheduling) take the tokens the previous step sampled: steps run in order here.
        resolvePlaceholders(m.step, previousTokens);
        result = engine.step(m.step);
      } catch (err) {
        previousTokens = null;
        lastStepEnd = null;
        send({ kind: 'stepError', stepNo: m.stepNo, error: toErrorPayload(err, rank) });
        return;
      }
      previousTokens = result.tokens;
      const t1 = performance.now();
      lastStepEnd = t1;
      send({ kind: 'result', stepNo: m.stepNo, result, engineMs: t1 - t0, idleMs });
      tracer?.record(shape, t1 - t0);
    },
    pump() {},
  };
}

/**
 * Engines with stepBegin/stepEnd: step N + 1 is begun on the device before step N ends (its placeholders resolved
 * there from N's samples), so the device runs steps back to back while this thread unpacks, packs and reports.
 * Invariants: at most two steps in flight, answered in step order (a step that fails to begin is answered after the
 * steps begun before it); any other message waits until none is in flight (page copies and KV transfers run in step
 * order); a step that fails to begin or end fails alone, and the engine refuses placeholders naming a failed step.
 */
function pipelinedStepper(engine: Engine, send: Send, tracer: Tracer, rank: number): Stepper {
  const begin = engine.stepBegin!.bind(engine);
  const end = engine.stepEnd!.bind(engine);
  const stepReady = engine.stepReady?.bind(engine);
  // A device error seen while polling surfaces from stepEnd, as that step's error.
  const ready = (): boolean => {
    try {
      return stepReady ? stepReady() : true;
    } catch {
      return true;
    }
  };
  /** Steps in step order; `error`: it failed to begin (nothing runs for it), answered in its turn. */
  const inFlight: { stepNo: number; shape: StepShape; begunAt: number; error?: unknown }[] = [];
  let lastStepEnd: number | null = null;
  const fail = (stepNo: number, err: unknown) => send({ kind: 'stepError', stepNo, error: toErrorPayload(err, rank) });
  const endOldest = () => {
    const s = inFlight.shift()!;
    if (s.error !== undefined) {
      fail(s.stepNo, s.error);
      return;
    }
    let result: StepResult;
    try {
      result = end();
    } catch (err) {
      lastStepEnd = null;
      fail(s.stepNo, err);
      return;
    }
    const t1 = performance.now();
    // The device time this step had to itself: from its begin, or from the previous step's end when it was begun
    // while that one still ran.
    const from = lastStepEnd === null ? s.begunAt : Math.max(s.begunAt, lastStepEnd);
    const idleMs = lastStepEnd === null ? null : Math.max(0, s.begunAt - lastStepEnd);
    lastStepEnd = t1;
    send({ kind: 'result', stepNo: s.stepNo, result, engineMs: t1 - from, idleMs });
    tracer?.record(s.shape, t1 - from);
  };
  return {
    step(m) {
      const begunAt = performance.now();
      const shape = stepShape(m.step);
      try {
        begin(m.step);
      } catch (err) {
        inFlight.push({ stepNo: m.stepNo, shape, begunAt, error: err ?? new Error('step failed to begin') });
        return;
      }
      inFlight.push({ stepNo: m.stepNo, shape, begunAt });
    },
    pump(port, handle) {
      while (inFlight.length > 0) {
        const next = receiveMessageOnPort(port)?.message as RankInbox | undefined;
        if (next?.kind === 'step') {
          if (inFlight.length >= 2) endOldest();
          this.step(next);
          continue;
        }
        if (next) {
          while (inFlight.length > 0) endOldest();
          handle(next);
          continue;
        }
        // Nothing queued: report the oldest step as soon as it is done; until then keep looking for the next step
        // (the scheduler sends it while this one runs), so it is begun before the device goes idle.
        if (inFlight[0].error !== undefined || ready()) endOldest();
      }
    },
  };
}

function runKvIpc(engine: Engine, r: KvIpcOp): KvIpcReply<KvIpcOp> {
  const missing = () => new LlmError('LLM_ERR_KV_TRANSFER', `GPU-to-GPU KV transfer (cuda-ipc) is not supported by this ${engine.backend} engine`);
  switch (r.op) {
    case 'export':
      if (!engine.kvIpcExport) throw missing();
      return engine.kvIpcExport();
    case 'open':
      if (!engine.kvIpcOpen) throw missing();
      return engine.kvIpcOpen(r.pool);
    case 'pull':
      if (!engine.kvIpcPull) throw missing();
      return engine.kvIpcPull(r.remote, r.srcPages, r.srcToken0, r.dstPages, r.numTokens);
    case 'close':
      engine.kvIpcClose?.(r.remote);
      return null;
    default:
      return unreachable(r);
  }
}

if (!isMainThread && (workerData as RankWorkerData | null)?.actor === 'rank') void runRank(workerData as RankWorkerData);

// ---- main side ----

export interface RankSpawnOptions {
  rank: number;
  engineModule?: string;
  engineInit: unknown;
  /** A step not answered within this many ms marks the rank hung. */
  stepTimeoutMs: number;
  /** Engine start-up (model load) limit in ms. */
  startTimeoutMs: number;
  /** Called once when the rank crashes, hangs or exits unasked. */
  onFailure?: (error: LlmError) => void;
  /** Called with each step's timing as its result arrives, before the step's promise resolves. */
  onStepTiming?: (timing: StepTiming) => void;
}

/** One answered step: the engine's time in it and the rank's wait before it (both in the rank thread), and when
 * (performance.now() on the handle's thread) its result arrived. */
export interface StepTiming {
  stepNo: number;
  engineMs: number;
  idleMs: number | null;
  resultAt: number;
}

interface PendingStep {
  stepNo: number;
  resolve: (r: StepResult) => void;
  reject: (e: LlmError) => void;
}

export class RankHandle implements StepExecutor {
  readonly rank: number;
  readonly engine: EngineSummary;
  /** Steps answered, the time the engine spent in them (inside the rank thread), and when (performance.now() on
   * this thread) the last result arrived. */
  readonly stats = { steps: 0, engineMs: 0, lastResultAt: 0 };
  private readonly worker: Worker;
  private readonly pending: PendingStep[] = [];
  private readonly pageOps = new OpTable<unknown>();
  private readonly stepTimeoutMs: number;
  private readonly onFailure: ((error: LlmError) => void) | undefined;
  private readonly onStepTiming: ((timing: StepTiming) => void) | undefined;
  private stepNo = 0;
  private timer: NodeJS.Timeout | null = null;
  private failure: LlmError | null = null;
  private closing = false;
  private readonly exited: Promise<void>;

  private constructor(worker: Worker, engine: EngineSummary, opts: RankSpawnOptions) {
    this.worker = worker;
    this.engine = engine;
    this.rank = opts.rank;
    this.stepTimeoutMs = opts.stepTimeoutMs;
    this.onFailure = opts.onFailure;
    this.onStepTiming = opts.onStepTiming;
    worker.on('message', (m: RankOutbox) => this.onMessage(m));
    worker.on('error', (err) => this.fail(new LlmError('LLM_ERR_ACTOR_CRASHED', `rank ${this.rank} crashed: ${err.message}`, { rank: this.rank })));
    this.exited = new Promise((resolve) => worker.once('exit', () => resolve()));
    worker.on('exit', (code) => {
      if (!this.closing) this.fail(new LlmError('LLM_ERR_ACTOR_CRASHED', `rank ${this.rank} exited unexpectedly with code ${code}`, { rank: this.rank }));
    });
  }

  get kv() {
    return this.engine.kv;
  }

  get vocabSize(): number {
    return this.engine.vocabSize;
  }

  /** Starts a rank worker and waits until its engine is open. */
  static spawn(opts: RankSpawnOptions): Promise<RankHandle> {
    const data: RankWorkerData = {
      actor: 'rank',
      rank: opts.rank,
      engineModule: opts.engineModule ?? siblingModule(import.meta.url, 'rank-engine').href,
      engineInit: opts.engineInit,
    };
    const worker = spawnWorker(siblingModule(import.meta.url, 'rank'), data);
    return awaitStarted<RankOutbox, RankHandle>(worker, {
      who: `rank ${opts.rank}`,
      timeoutMs: opts.startTimeoutMs,
      hungMessage: `rank ${opts.rank} did not open its engine within ${opts.startTimeoutMs} ms`,
      rank: opts.rank,
    }, (m) => new RankHandle(worker, m.engine, opts));
  }

  execute(step: StepDescriptor): Promise<StepResult> {
    if (this.failure) return Promise.reject(this.failure);
    const stepNo = ++this.stepNo;
    return new Promise((resolve, reject) => {
      this.pending.push({ stepNo, resolve, reject });
      this.armTimer();
      const msg: RankInbox = { kind: 'step', stepNo, step };
      this.worker.postMessage(msg, [step.buffer as ArrayBuffer]);
    });
  }

  /** Copies KV pages to a host buffer, after every step submitted before (disaggregated prefill side). */
  async exportPages(pages: readonly number[]): Promise<Uint8Array> {
    const pagesWire = Int32Array.from(pages);
    return (await this.pageOp<Uint8Array | null>((opNo) => ({ kind: 'exportPages', opNo, pages: pagesWire }), [pagesWire.buffer])) ?? new Uint8Array(0);
  }

  /** Writes KV pages from a host buffer, before every step submitted after (disaggregated decode side). */
  async importPages(pages: readonly number[], data: Uint8Array): Promise<void> {
    const pagesWire = Int32Array.from(pages);
    await this.pageOp((opNo) => ({ kind: 'importPages', opNo, pages: pagesWire, data }), [pagesWire.buffer]);
  }

  /** A GPU-to-GPU KV transfer op, after every step submitted before and before every step submitted after. */
  kvIpc<O extends KvIpcOp>(request: O): Promise<KvIpcReply<O>> {
    return this.pageOp<KvIpcReply<O>>((opNo) => ({ kind: 'kvIpc', opNo, request }), []);
  }

  private pageOp<T>(message: (opNo: number) => RankInbox, transfer: ArrayBuffer[]): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    return this.pageOps.start<T>((opNo) => this.worker.postMessage(message(opNo), transfer));
  }

  /** Asks the rank to close its engine and exit; terminates it if it does not within graceMs. */
  async close(graceMs = 5000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.fail(new LlmError('LLM_ERR_SHUTDOWN', `rank ${this.rank} is shutting down`, { rank: this.rank }));
    const msg: RankInbox = { kind: 'shutdown' };
    this.worker.postMessage(msg); // a no-op when the worker is gone already
    const t = setTimeout(() => void this.worker.terminate(), graceMs);
    await this.exited;
    clearTimeout(t);
  }

  private onMessage(m: RankOutbox): void {
    switch (m.kind) {
      case 'result':
      case 'stepError': {
        if (m.kind === 'result') this.stats.lastResultAt = performance.now();
        const head = this.pending[0];
        if (!head || head.stepNo !== m.stepNo) {
          this.fail(new LlmError('LLM_ERR_INTERNAL', `rank ${this.rank} answered step ${m.stepNo}, expected ${head?.stepNo ?? 'none'}`));
          return;
        }
        this.pending.shift();
        this.armTimer();
        if (m.kind === 'result') {
          this.stats.steps++;
          this.stats.engineMs += m.engineMs;
          this.onStepTiming?.({ stepNo: m.stepNo, engineMs: m.engineMs, idleMs: m.idleMs, resultAt: this.stats.lastResultAt });
          head.resolve(m.result);
        }
        else head.reject(LlmError.fromPayload(m.error));
        return;
      }
      case 'pagesDone':
      case 'kvIpcDone':
      case 'pagesError': {
        if (m.kind === 'pagesDone') this.pageOps.resolve(m.opNo, m.data);
        else if (m.kind === 'kvIpcDone') this.pageOps.resolve(m.opNo, m.result);
        else this.pageOps.reject(m.opNo, LlmError.fromPayload(m.error));
        return;
      }
      case 'ready':
      case 'initError':
        return; // start-up messages, handled by spawn
      default:
        unreachable(m);
    }
  }

  /** The watchdog covers the oldest unanswered step. */
  private armTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (!this.pending.length || this.failure) return;
    const stepNo = this.pending[0].stepNo;
    this.timer = setTimeout(() => {
      this.fail(new LlmError('LLM_ERR_ACTOR_HUNG', `rank ${this.rank} did not finish step ${stepNo} within ${this.stepTimeoutMs} ms`, { rank: this.rank }));
      void this.worker.terminate();
    }, this.stepTimeoutMs);
  }

  private fail(error: LlmError): void {
    if (this.failure) return;
    this.failure = error;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const p of this.pending.splice(0)) p.reject(error);
    this.pageOps.rejectAll(error);
    if (!this.closing) this.onFailure?.(error);
  }
}
