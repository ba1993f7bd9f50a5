// The rank actor: a worker_thread that owns one engine (one device, or one TP rank's shard of the model) and runs the
// steps its scheduler sends, in order. This file holds the rank thread's entry point (workerData.actor === 'rank'),
// the supervisor's handle on the thread (RankActor: start and stop, through comlink) and the scheduler thread's side
// of the step path (RankGroup: the StepExecutor over every rank of one TP group).
//
// Threads: the topology (src/topology) spawns the ranks; each gets a MessageChannel port straight to the scheduler
// thread (the step path: steps never cross the main thread) and a control port to the supervisor (comlink).
// Per-step path: the scheduler packs the step descriptor (src/engine/step.ts) once and posts it to every rank of
// the group: a structured-clone copy to ranks 1..N-1, the buffer itself (transferred) to rank 0 (measured against a
// SharedArrayBuffer ring with an Atomics doorbell in bench/actors/fanout.ts: no clear difference, so the simpler
// copy). Each rank hands its buffer to its engine unchanged. Rank 0 answers every step with its result; the other
// ranks answer only failures (in a TP group every rank samples the same tokens). Each rank stores the number of the
// last step it finished in a shared Int32Array, so the scheduler's watchdog can tell which rank is behind.
// With overlap on, the scheduler sends step N+1 while step N runs; N+1's decode inputs that N samples are
// placeholders (src/scheduler/placeholder.ts). An engine with pipelined steps (Engine.stepBegin/stepEnd: both native
// backends) gets N+1 begun before N ends and fills the placeholders itself, on the device, so the device never waits
// for this thread (pipelinedStepper); any other engine gets them filled here, in the descriptor, from N's tokens and
// runs the steps one at a time (syncStepper).
// Failures cross threads as coded payloads {code, message, rank}:
//  - an engine error in a step on rank 0 rejects that step (the scheduler then fails its requests); on another rank
//    it fails the group (its ranks no longer agree);
//  - an uncaught error or an exit of a rank thread fails the group with LLM_ERR_ACTOR_CRASHED naming the rank (seen
//    by RankActor on the main thread);
//  - a step that some rank has not finished stepTimeoutMs after it was sent fails the group with LLM_ERR_ACTOR_HUNG
//    naming the hung rank: the group is aborted first, and the rank that still says nothing is named (RankGroup.settle).
//    A failed group refuses further steps at once: never a hang.
import { appendFileSync } from 'node:fs';
import { MessageChannel, isMainThread, receiveMessageOnPort, workerData, type MessagePort, type Worker } from 'node:worker_threads';
import { LlmError, toErrorPayload, type ErrorPayload } from '../src/errors.js';
import { stepShape } from '../src/engine/step.js';
import type { EngineSummary, KvIpcOp, KvIpcReply } from '../src/engine/summary.js';
import type { EmbedOptions, Engine, StepDescriptor, StepResult, TensorParallelOptions } from '../src/engine/types.js';
import { resolvePlaceholders } from '../src/scheduler/placeholder.js';
import type { StepExecutor } from '../src/scheduler/scheduler.js';
import { controlOf, serveControl, type Control } from './control.js';
import { unreachable } from './messages.js';
import { awaitStart, siblingModule, spawnWorker } from './worker.js';
import { logger } from '../src/runtime/log.js';

/** The rank's step inbox (from the scheduler thread). Page copies and KV IPC ops (disaggregated KV transfer, rank 0
 * only) run in the same order as steps, and are answered in the order they arrive. */
export type RankInbox =
  | { kind: 'step'; stepNo: number; step: StepDescriptor }
  | { kind: 'exportPages'; pages: Int32Array }
  | { kind: 'importPages'; pages: Int32Array; data: Uint8Array }
  | { kind: 'kvIpc'; request: KvIpcOp }
  /** An embedding pass (every rank runs it: its layers are collective under tensor parallelism). */
  | { kind: 'embed'; sequences: number[][]; options: EmbedOptions };

/** What a rank sends back to the scheduler thread. Only rank 0 sends results. */
export type RankOutbox =
  /** idleMs: from the end of the previous engine step to the start of this one (null for the first step, or after
   * a failed one): the time the rank waited for this step. */
  | { kind: 'result'; stepNo: number; result: StepResult; engineMs: number; idleMs: number | null }
  | { kind: 'stepError'; stepNo: number; error: ErrorPayload }
  | { kind: 'pagesDone'; data: Uint8Array | null }
  | { kind: 'kvIpcDone'; result: KvIpcReply<KvIpcOp> }
  | { kind: 'pagesError'; error: ErrorPayload }
  /** Rank 0's answer to an embedding pass: one vector per sequence. Other ranks send only embedError. */
  | { kind: 'embedDone'; vectors: Float32Array[] }
  | { kind: 'embedError'; error: ErrorPayload };

/** The rank's control object (comlink, from the supervisor). */
export interface RankControl {
  /** Opens the engine; answers what the scheduler needs to know about it. */
  start(): Promise<EngineSummary>;
  /** Closes the engine (after the steps in flight) and lets the thread end. */
  stop(): void;
}

/** Where a rank's engine runs: its device and its place in the TP group (EngineOptions.deviceId and .tp). */
export interface RankPlacement {
  deviceId: number;
  /** Absent for a group of one rank (the whole model, no collectives). */
  tp?: TensorParallelOptions;
}

/** The engine factory a rank imports by URL (actors/rank-engine.ts by default; tests pass a fake with the same
 * contract). abortGroup is called on the supervisor's thread when a rank of `group` failed: it must wake every rank
 * of that group blocked in a join or a collective (the native addon's tpAbort), so their threads can be ended. */
export interface EngineFactoryModule {
  createEngine(init: unknown, placement: RankPlacement): Engine | Promise<Engine>;
  abortGroup(group: string, reason: string): void;
}

export interface RankWorkerData {
  actor: 'rank';
  rank: number;
  placement: RankPlacement;
  /** URL of an EngineFactoryModule. */
  engineModule: string;
  engineInit: unknown;
  /** The step path, to the scheduler thread. */
  steps: MessagePort;
  /** The control path, to the supervisor (comlink). */
  control: MessagePort;
  /** Int32 per rank: the number of the last step this rank finished (the scheduler's watchdog reads it). */
  progress: SharedArrayBuffer;
}

// ---- rank thread ----

/**
 * DSG_STEP_TRACE=FILE (profiling aid, off by default): the rank appends one tab-separated line per engine step,
 * `sequences tokens kvTokens engineMs`, where kvTokens is the KV length the step's attention reads summed over its
 * sequences (read from the descriptor's header and records). Lines are buffered and written every 256 steps and at
 * shutdown, outside the timed region. Only rank 0 traces.
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

/** Rank threads log through the process's settings: DYN_LOG and DYN_LOGGING_JSONL reach them in the environment. */
const rankLog = logger('worker.rank');

function runRank(data: RankWorkerData): void {
  const port = data.steps;
  const progress = new Int32Array(data.progress);
  const rank = data.rank;
  const send = (m: RankOutbox, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
  /** Rank 0 reports every step; the others only their failures. */
  const report: Send = rank === 0 ? send : (m, transfer) => {
    if (m.kind !== 'result') send(m, transfer);
  };
  const finished = (stepNo: number) => Atomics.store(progress, rank, stepNo);
  let engine: Engine | null = null;
  let tracer: Tracer = null;
  let stepping: Stepper | null = null;

  const handle = (m: RankInbox): void => {
    const e = engine!;
    switch (m.kind) {
      case 'step':
        stepping!.step(m);
        // Pipelined: the step runs on the device; take further messages from the port here (not through the event
        // loop), beginning the next step before this one ends, until no step is in flight.
        stepping!.pump(port, handle);
        return;
      case 'exportPages':
      case 'importPages': {
        let out: Uint8Array | null = null;
        try {
          if (m.kind === 'exportPages') out = e.exportPages(m.pages);
          else e.importPages(m.pages, m.data);
        } catch (err) {
          send({ kind: 'pagesError', error: toErrorPayload(err, rank) });
          return;
        }
        send({ kind: 'pagesDone', data: out }, out && out.buffer instanceof ArrayBuffer ? [out.buffer] : []);
        return;
      }
      case 'kvIpc': {
        let result: KvIpcReply<KvIpcOp>;
        try {
          result = runKvIpc(e, m.request);
        } catch (err) {
          send({ kind: 'pagesError', error: toErrorPayload(err, rank) });
          return;
        }
        send({ kind: 'kvIpcDone', result });
        return;
      }
      case 'embed': {
        let vectors: Float32Array[];
        try {
          vectors = e.embed(m.sequences, m.options);
        } catch (err) {
          send({ kind: 'embedError', error: toErrorPayload(err, rank) });
          return;
        }
        if (rank === 0) send({ kind: 'embedDone', vectors }, vectors.map((v) => v.buffer as ArrayBuffer));
        return;
      }
      default:
        unreachable(m);
    }
  };

  const control: RankControl = {
    async start() {
      try {
        tracer = rank === 0 ? stepTracer(process.env.DSG_STEP_TRACE) : null;
        const mod = (await import(data.engineModule)) as EngineFactoryModule;
        const t0 = performance.now();
        engine = await mod.createEngine(data.engineInit, data.placement);
        rankLog.debug('engine opened', { rank, backend: engine.backend, kvPages: engine.kv.numPages, seconds: Number(((performance.now() - t0) / 1000).toFixed(2)) });
      } catch (err) {
        throw LlmError.fromPayload(toErrorPayload(err, rank));
      }
      const e = engine;
      stepping = e.stepBegin && e.stepEnd ? pipelinedStepper(e, report, finished, tracer, rank) : syncStepper(e, report, finished, tracer, rank);
      port.on('message', handle);
      return {
        backend: e.backend, kv: e.kv, vocabSize: e.spec.vocabSize, eosTokenIds: e.spec.eosTokenIds, maxPositionEmbeddings: e.spec.maxPositionEmbeddings,
        numLayers: e.spec.numLayers, numKvHeads: e.spec.numKvHeads, headDim: e.spec.headDim,
      };
    },
    stop() {
      tracer?.flush();
      engine?.close();
      engine = null;
      port.close();
      setImmediate(() => data.control.close()); // after comlink's answer to this call
    },
  };
  serveControl(control, data.control);
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
function syncStepper(engine: Engine, send: Send, finished: (stepNo: number) => void, tracer: Tracer, rank: number): Stepper {
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
        finished(m.stepNo);
        send({ kind: 'stepError', stepNo: m.stepNo, error: toErrorPayload(err, rank) });
        return;
      }
      previousTokens = result.tokens;
      const t1 = performance.now();
      lastStepEnd = t1;
      finished(m.stepNo);
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
function pipelinedStepper(engine: Engine, send: Send, finished: (stepNo: number) => void, tracer: Tracer, rank: number): Stepper {
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
  const fail = (stepNo: number, err: unknown) => {
    finished(stepNo);
    send({ kind: 'stepError', stepNo, error: toErrorPayload(err, rank) });
  };
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
    finished(s.stepNo);
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

if (!isMainThread && (workerData as RankWorkerData | null)?.actor === 'rank') runRank(workerData as RankWorkerData);

// ---- supervisor's side: one rank thread ----

/** The engine factory ranks load unless told otherwise: the native engine over a model file. */
export const DEFAULT_ENGINE_MODULE = siblingModule(import.meta.url, 'rank-engine').href;

export interface RankSpawnOptions {
  rank: number;
  placement: RankPlacement;
  engineModule: string;
  engineInit: unknown;
  /** Engine start-up (model load) limit in ms. */
  startTimeoutMs: number;
  /** The rank's end of its step channel to the scheduler thread. */
  steps: MessagePort;
  progress: SharedArrayBuffer;
}

/** A started rank thread, on the supervisor's thread: its engine summary, its control proxy, and its failures. */
export class RankActor {
  readonly rank: number;
  readonly engine: EngineSummary;
  private readonly worker: Worker;
  private readonly control: Control<RankControl>;
  private readonly exited: Promise<void>;
  private failureListener: ((error: LlmError) => void) | null = null;
  private failure: LlmError | null = null;
  private stopping = false;

  private constructor(worker: Worker, control: Control<RankControl>, rank: number, engine: EngineSummary) {
    this.worker = worker;
    this.control = control;
    this.rank = rank;
    this.engine = engine;
    this.exited = new Promise((resolve) => worker.once('exit', () => resolve()));
    worker.on('error', (err) => this.fail(new LlmError('LLM_ERR_ACTOR_CRASHED', `rank ${rank} crashed: ${err.message}`, { rank })));
    worker.on('exit', (code) => this.fail(new LlmError('LLM_ERR_ACTOR_CRASHED', `rank ${rank} exited unexpectedly with code ${code}`, { rank })));
  }

  /** Starts a rank thread and opens its engine (its TP group's join included). */
  static async spawn(opts: RankSpawnOptions): Promise<RankActor> {
    const control = new MessageChannel();
    const data: RankWorkerData = {
      actor: 'rank', rank: opts.rank, placement: opts.placement, engineModule: opts.engineModule, engineInit: opts.engineInit,
      steps: opts.steps, control: control.port2, progress: opts.progress,
    };
    const worker = spawnWorker(siblingModule(import.meta.url, 'rank'), data, [opts.steps, control.port2]);
    const proxy = controlOf<RankControl>(control.port1);
    const engine = await awaitStart(worker, {
      who: `rank ${opts.rank}`,
      timeoutMs: opts.startTimeoutMs,
      hungMessage: `rank ${opts.rank} did not open its engine within ${opts.startTimeoutMs} ms`,
      rank: opts.rank,
    }, proxy.start());
    return new RankActor(worker, proxy, opts.rank, engine);
  }

  /** Called once when the thread crashes or exits unasked. */
  onFailure(listener: (error: LlmError) => void): void {
    this.failureListener = listener;
    if (this.failure) listener(this.failure);
  }

  /** Closes the engine and ends the thread; terminates it if it has not ended within graceMs. */
  async stop(graceMs = 5000): Promise<void> {
    this.stopping = true;
    this.control.stop().catch(() => undefined); // the thread may be gone already
    const t = setTimeout(() => void this.worker.terminate(), graceMs);
    await this.exited;
    clearTimeout(t);
  }

  /** Ends the thread now (a failed group: its engine may be blocked in a collective until the group is aborted). */
  async terminate(): Promise<void> {
    this.stopping = true;
    await this.worker.terminate();
  }

  private fail(error: LlmError): void {
    if (this.failure || this.stopping) return;
    this.failure = error;
    this.failureListener?.(error);
  }
}

// ---- scheduler thread's side: the step path to every rank of the group ----

/** How long a TP group's failure waits for its cause (RankGroup.settle). */
const SETTLE_MS = 1000;

export interface RankGroupOptions {
  /** The scheduler's end of each rank's step channel, by rank. */
  ports: MessagePort[];
  /** Rank 0's engine (the topology checked that every rank agrees on the KV pool). */
  engine: EngineSummary;
  progress: SharedArrayBuffer;
  /** A step some rank has not finished within this many ms marks that rank hung. */
  stepTimeoutMs: number;
  /** A group of several ranks: its name and the engine module whose abortGroup wakes ranks blocked in it. */
  tpGroup: { group: string; engineModule: string } | null;
  /** Called once when a rank other than 0 fails a step, or a rank hangs. */
  onFailure: (error: LlmError) => void;
  /** Called with each step's timing as rank 0's result arrives, before the step's promise resolves. */
  onStepTiming?: (timing: StepTiming) => void;
}

/** One answered step: the engine's time in it and the rank's wait before it (both in rank 0's thread), and when
 * (performance.now() on the scheduler's thread) its result arrived. */
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

/** The ranks of one TP group as the scheduler's StepExecutor: every step to every rank, rank 0's results back. KV page
 * operations (disaggregated transfer) go to rank 0, in step order; with more than one rank they are refused. */
export class RankGroup implements StepExecutor {
  readonly engine: EngineSummary;
  readonly size: number;
  /** Steps answered, the time rank 0's engine spent in them (inside its thread), and when (performance.now() on this
   * thread) the last result arrived. */
  readonly stats = { steps: 0, engineMs: 0, lastResultAt: 0 };
  private readonly ports: MessagePort[];
  private readonly progress: Int32Array;
  private readonly opts: RankGroupOptions;
  private readonly pending: PendingStep[] = [];
  /** Steps sent that some rank has not finished, with when they were sent. */
  private readonly unfinished: { stepNo: number; sentAt: number }[] = [];
  /** Page operations sent to rank 0 and not answered yet, in the order sent (the order it answers them). */
  private readonly pageOps: { resolve: (answer: unknown) => void; reject: (e: LlmError) => void }[] = [];
  /** Embedding passes sent to every rank and not answered by rank 0 yet, in the order sent. */
  private readonly embedOps: { resolve: (vectors: Float32Array[]) => void; reject: (e: LlmError) => void }[] = [];
  private readonly watchdog: NodeJS.Timeout;
  private stepNo = 0;
  private failure: LlmError | null = null;
  /** A TP group's failure being attributed (see settle): the ranks heard from since, and the timer that ends the wait. */
  private settling: { heard: Set<number>; timer: NodeJS.Timeout } | null = null;

  constructor(opts: RankGroupOptions) {
    this.opts = opts;
    this.ports = opts.ports;
    this.size = opts.ports.length;
    this.engine = opts.engine;
    this.progress = new Int32Array(opts.progress);
    opts.ports.forEach((port, rank) => port.on('message', (m: RankOutbox) => this.onMessage(rank, m)));
    this.watchdog = setInterval(() => this.checkProgress(), Math.max(5, Math.min(1000, Math.floor(opts.stepTimeoutMs / 4))));
  }

  get kv() {
    return this.engine.kv;
  }

  get vocabSize(): number {
    return this.engine.vocabSize;
  }

  execute(step: StepDescriptor): Promise<StepResult> {
    if (this.failure) return Promise.reject(this.failure);
    const stepNo = ++this.stepNo;
    return new Promise((resolve, reject) => {
      this.pending.push({ stepNo, resolve, reject });
      this.unfinished.push({ stepNo, sentAt: performance.now() });
      // Copies first: the transfer to rank 0 detaches the buffer.
      for (let r = 1; r < this.size; r++) this.ports[r].postMessage({ kind: 'step', stepNo, step } satisfies RankInbox);
      this.ports[0].postMessage({ kind: 'step', stepNo, step } satisfies RankInbox, [step.buffer as ArrayBuffer]);
    });
  }

  /** Copies KV pages to a host buffer, after every step submitted before (disaggregated prefill side). */
  async exportPages(pages: readonly number[]): Promise<Uint8Array> {
    const pagesWire = Int32Array.from(pages);
    return (await this.pageOp<Uint8Array | null>({ kind: 'exportPages', pages: pagesWire }, [pagesWire.buffer])) ?? new Uint8Array(0);
  }

  /** Writes KV pages from a host buffer, before every step submitted after (disaggregated decode side). */
  async importPages(pages: readonly number[], data: Uint8Array): Promise<void> {
    const pagesWire = Int32Array.from(pages);
    await this.pageOp({ kind: 'importPages', pages: pagesWire, data }, [pagesWire.buffer]);
  }

  /** A GPU-to-GPU KV transfer op, after every step submitted before and before every step submitted after. */
  kvIpc<O extends KvIpcOp>(request: O): Promise<KvIpcReply<O>> {
    return this.pageOp<KvIpcReply<O>>({ kind: 'kvIpc', request }, []);
  }

  /** One embedding pass on every rank, after every step submitted before (Engine.embed: one vector per sequence). */
  embed(sequences: number[][], options: EmbedOptions): Promise<Float32Array[]> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.embedOps.push({ resolve, reject });
      for (const port of this.ports) port.postMessage({ kind: 'embed', sequences, options } satisfies RankInbox);
    });
  }

  private pageOp<T>(message: RankInbox, transfer: ArrayBuffer[]): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.size > 1) {
      return Promise.reject(new LlmError('LLM_ERR_KV_TRANSFER', `KV transfer between workers is not supported with tensor parallelism (tp size ${this.size})`));
    }
    return new Promise<T>((resolve, reject) => {
      this.pageOps.push({ resolve: resolve as (answer: unknown) => void, reject });
      this.ports[0].postMessage(message, transfer);
    });
  }

  /** Stops listening; the ranks are stopped by the supervisor. In-flight steps fail with LLM_ERR_SHUTDOWN. */
  close(): void {
    this.fail(new LlmError('LLM_ERR_SHUTDOWN', 'the rank group is shutting down'), false);
    for (const port of this.ports) port.close();
  }

  private onMessage(rank: number, m: RankOutbox): void {
    this.settling?.heard.add(rank);
    switch (m.kind) {
      case 'result':
      case 'stepError': {
        if (rank !== 0) {
          // Only failures come from other ranks: the group no longer agrees.
          this.fail(LlmError.fromPayload(m.kind === 'stepError' ? m.error : { code: 'LLM_ERR_INTERNAL', message: `rank ${rank} sent a result` }), true);
          return;
        }
        if (m.kind === 'result') this.stats.lastResultAt = performance.now();
        const head = this.pending[0];
        if (!head || head.stepNo !== m.stepNo) {
          this.fail(new LlmError('LLM_ERR_INTERNAL', `rank 0 answered step ${m.stepNo}, expected ${head?.stepNo ?? 'none'}`), true);
          return;
        }
        this.pending.shift();
        if (m.kind === 'result') {
          this.stats.steps++;
          this.stats.engineMs += m.engineMs;
          this.opts.onStepTiming?.({ stepNo: m.stepNo, engineMs: m.engineMs, idleMs: m.idleMs, resultAt: this.stats.lastResultAt });
          head.resolve(m.result);
        } else if (this.size > 1 && m.error.code === 'LLM_ERR_TP_ABORTED') {
          this.fail(LlmError.fromPayload(m.error), true); // the group is broken, and the cause is likely another rank
        } else head.reject(LlmError.fromPayload(m.error));
        return;
      }
      case 'pagesDone':
      case 'kvIpcDone':
      case 'pagesError': {
        const op = this.pageOps.shift();
        if (!op) {
          this.fail(new LlmError('LLM_ERR_INTERNAL', `rank ${rank} answered a page operation nobody asked for`), true);
          return;
        }
        if (m.kind === 'pagesError') op.reject(LlmError.fromPayload(m.error));
        else op.resolve(m.kind === 'pagesDone' ? m.data : m.result);
        return;
      }
      case 'embedDone':
      case 'embedError': {
        if (rank !== 0 || (this.size > 1 && m.kind === 'embedError' && m.error.code === 'LLM_ERR_TP_ABORTED')) {
          // Another rank failed a pass rank 0 runs with it (or a collective broke): the group no longer agrees.
          this.fail(LlmError.fromPayload(m.kind === 'embedError' ? m.error : { code: 'LLM_ERR_INTERNAL', message: `rank ${rank} sent embeddings` }), true);
          return;
        }
        const op = this.embedOps.shift();
        if (!op) {
          this.fail(new LlmError('LLM_ERR_INTERNAL', `rank ${rank} answered an embedding pass nobody asked for`), true);
          return;
        }
        if (m.kind === 'embedError') op.reject(LlmError.fromPayload(m.error));
        else op.resolve(m.vectors);
        return;
      }
      default:
        unreachable(m);
    }
  }

  /** The watchdog: the oldest step some rank has not finished, sent more than stepTimeoutMs ago. One rank: it hangs.
   * Several: ranks blocked in a collective look as stuck as the hung one, so the group is aborted and settle() names
   * the rank that does not answer (the one furthest behind, the lowest among equals, when the group cannot be woken). */
  private checkProgress(): void {
    if (this.failure) return;
    let behind = 0;
    for (let r = 1; r < this.size; r++) if (Atomics.load(this.progress, r) < Atomics.load(this.progress, behind)) behind = r;
    const done = Atomics.load(this.progress, behind);
    while (this.unfinished.length && this.unfinished[0].stepNo <= done) this.unfinished.shift();
    const oldest = this.unfinished[0];
    if (!oldest || this.settling || performance.now() - oldest.sentAt <= this.opts.stepTimeoutMs) return;
    const hung = (rank: number) =>
      new LlmError('LLM_ERR_ACTOR_HUNG', `rank ${rank} did not finish step ${oldest.stepNo} within ${this.opts.stepTimeoutMs} ms`, { rank });
    if (this.size === 1 || !this.opts.tpGroup) {
      this.fail(hung(behind), true);
      return;
    }
    // Ranks blocked in a collective waiting for the hung one look just as stuck: wake the group, then the rank that
    // still says nothing (of several, the one furthest behind) is the one that hangs.
    this.settle(hung(behind), (heard) => {
      let blamed = -1;
      for (let r = 0; r < this.size; r++) {
        if (heard.has(r)) continue;
        if (blamed < 0 || Atomics.load(this.progress, r) < Atomics.load(this.progress, blamed)) blamed = r;
      }
      return blamed < 0 ? null : hung(blamed);
    });
    const { group, engineModule } = this.opts.tpGroup;
    import(engineModule)
      .then((mod: EngineFactoryModule) => mod.abortGroup(group, `rank ${behind} did not finish step ${oldest.stepNo} within ${this.opts.stepTimeoutMs} ms`))
      .catch(() => undefined);
  }

  /**
   * A TP group's failure, attributed: LLM_ERR_TP_ABORTED (a rank woken from a collective because a peer left or the
   * group was aborted) and a hang are symptoms that the healthy ranks show too. The group fails once the cause is
   * known, within SETTLE_MS: a failure that is not such a symptom (a crash the supervisor saw, a rank's own error)
   * wins at once; otherwise `blame(heard)` names the rank, from which ranks answered meanwhile, or the first error
   * stands. Steps in flight wait that long.
   */
  private settle(error: LlmError, blame: (heard: Set<number>) => LlmError | null = () => null): void {
    if (this.settling || this.failure) return;
    const heard = new Set<number>();
    const timer = setTimeout(() => {
      this.settling = null;
      this.fail(blame(heard) ?? error, true, true);
    }, Math.min(SETTLE_MS, this.opts.stepTimeoutMs));
    this.settling = { heard, timer };
  }

  private fail(error: LlmError, report: boolean, settled = false): void {
    if (this.failure) return;
    // A rank woken from a collective is a symptom: the group waits for the cause (a no-op while it already waits).
    if (report && !settled && this.size > 1 && error.code === 'LLM_ERR_TP_ABORTED') {
      this.settle(error);
      return;
    }
    if (this.settling) clearTimeout(this.settling.timer);
    this.settling = null;
    this.failure = error;
    clearInterval(this.watchdog);
    for (const p of this.pending.splice(0)) p.reject(error);
    for (const op of this.pageOps.splice(0)) op.reject(error);
    for (const op of this.embedOps.splice(0)) op.reject(error);
    if (report) this.opts.onFailure(error);
  }
}
