// The topology: from the supervisor's resolved settings, the actor graph of one worker as data (buildTopology), and
// the running group it starts (startTopology). The supervisor starts and stops only what the graph lists:
//
//   supervisor (main thread) ── comlink control ──▶ scheduler actor ◀── step channel (MessageChannel) ──▶ rank 0..N-1
//        │  ▲ requests / output batches (hand-made)        │                                          ▲
//        │  └──────────────────────────────────────────────┘                                          │
//        └─────────────────────────── comlink control (start, stop) ──────────────────────────────────┘
//
// - ranks: one worker_thread per tensor-parallel rank, rank r on device baseGpuId + r, each opening its engine with
//   EngineOptions.tp = { rank: r, size: N, group } (no tp for N = 1); `group` is fresh for every start, so a
//   restarted group never meets a rank of the failed one. Each rank has its own port straight to the scheduler
//   thread: steps never cross the main thread.
// - scheduler: one worker_thread that plans every step, packs its descriptor once and sends it to every rank;
//   rank 0's engine summary sizes it (every rank must report the same KV pool: checked here at start).
// - metrics: the supervisor's recorder (actors/metrics.ts), fed by the scheduler's output batches.
// - kv: the scheduler's KV operations (exportParked, importPrefix, disaggKv), the typed port a disaggregated
//   worker's KV sender (prefill) or receiver (decode) is attached to.
// Failures of any actor fail the whole group: a rank that fails to start stops the start (the others are aborted
// and ended); a running rank that crashes or hangs, or the scheduler, fails every in-flight request with the coded
// error naming the rank, then the supervisor aborts the group (abort) and starts a fresh one.
import { randomUUID } from 'node:crypto';
import { MessageChannel } from 'node:worker_threads';
import { DEFAULT_ENGINE_MODULE, RankActor, type EngineFactoryModule, type RankPlacement } from '../../actors/rank.js';
import type { RankEngineInit } from '../../actors/rank-engine.js';
import { SchedulerHandle, type SchedulerHookInit } from '../../actors/scheduler.js';
import type { MetricsActor } from '../../actors/metrics.js';
import type { DisaggKvOp, DisaggKvReply, PrefixPages } from '../scheduler/kv-transfer.js';
import { LlmError } from '../errors.js';
import type { SchedulerOptions } from '../scheduler/scheduler.js';

/** What the topology is built from: the supervisor's settings with every default applied. */
export interface TopologySettings {
  modelPath: string;
  device: RankEngineInit['device'];
  /** Tensor-parallel ranks (>= 1). */
  tpSize: number;
  /** Device of rank 0; rank r uses baseGpuId + r. */
  baseGpuId: number;
  engineOptions: RankEngineInit['options'];
  /** An engine factory module other than actors/rank-engine.ts (tests), and the init every rank gets. */
  engineFactory: { module: string; init: unknown } | null;
  scheduler: SchedulerOptions;
  stepTimeoutMs: number;
  schedulerTimeoutMs: number;
  startTimeoutMs: number;
  schedulerHook: SchedulerHookInit | null;
}

export interface RankNode {
  rank: number;
  placement: RankPlacement;
  /** URL of the rank's EngineFactoryModule. */
  engineModule: string;
  engineInit: unknown;
  startTimeoutMs: number;
}

export interface SchedulerNode {
  options: SchedulerOptions;
  stepTimeoutMs: number;
  hangTimeoutMs: number;
  startTimeoutMs: number;
  hook: SchedulerHookInit | null;
}

/** One start of a worker's actors, as data. */
export interface TopologyGraph {
  /** The TP group's name, unique to this start. */
  group: string;
  scheduler: SchedulerNode;
  /** By rank. */
  ranks: RankNode[];
  /** The scheduler's outputs feed the supervisor's metrics recorder. */
  metrics: 'supervisor';
  /** The scheduler's KV operations are offered as a port (RunningTopology.kv) for a KV sender or receiver. */
  kv: 'scheduler';
}

/** The scheduler's KV operations, run in the scheduler's thread in step order: what a disaggregated worker's KV
 * sender (prefill: exportParked, disaggKv holds) or receiver (decode: importPrefix, disaggKv pulls) drives. */
export interface SchedulerKvPort {
  exportParked(key: string, tokenIds: number[]): Promise<PrefixPages>;
  importPrefix(prefix: PrefixPages, parkAs: string | null): Promise<number>;
  disaggKv(op: DisaggKvOp): Promise<DisaggKvReply>;
}

/** Builds the graph of one start. Throws LLM_ERR_CONFIG for settings no graph can have. */
export function buildTopology(s: TopologySettings): TopologyGraph {
  if (!Number.isInteger(s.tpSize) || s.tpSize < 1) throw new LlmError('LLM_ERR_CONFIG', `tp size must be an integer >= 1, got ${s.tpSize}`);
  if (!Number.isInteger(s.baseGpuId) || s.baseGpuId < 0) throw new LlmError('LLM_ERR_CONFIG', `base GPU id must be an integer >= 0, got ${s.baseGpuId}`);
  const group = randomUUID();
  const engineModule = s.engineFactory?.module ?? DEFAULT_ENGINE_MODULE;
  const engineInit: unknown = s.engineFactory ? s.engineFactory.init : ({ modelPath: s.modelPath, device: s.device, options: s.engineOptions } satisfies RankEngineInit);
  const ranks = Array.from({ length: s.tpSize }, (_, rank): RankNode => ({
    rank,
    placement: { deviceId: s.baseGpuId + rank, ...(s.tpSize > 1 ? { tp: { rank, size: s.tpSize, group } } : {}) },
    engineModule,
    engineInit,
    startTimeoutMs: s.startTimeoutMs,
  }));
  return {
    group,
    scheduler: { options: s.scheduler, stepTimeoutMs: s.stepTimeoutMs, hangTimeoutMs: s.schedulerTimeoutMs, startTimeoutMs: s.startTimeoutMs, hook: s.schedulerHook },
    ranks,
    metrics: 'supervisor',
    kv: 'scheduler',
  };
}

export interface TopologyHooks {
  metrics: MetricsActor;
  /** Called once when any actor of the group fails, after every in-flight request got the error. */
  onFailure: (error: LlmError, group: RunningTopology) => void;
}

/** A started group: its actors, and how to end it. */
export interface RunningTopology {
  readonly graph: TopologyGraph;
  readonly scheduler: SchedulerHandle;
  readonly ranks: readonly RankActor[];
  readonly kv: SchedulerKvPort;
  /** Stops the scheduler (in-flight requests end with LLM_ERR_SHUTDOWN), then the ranks (their engines closed). */
  stop(graceMs?: number): Promise<void>;
  /** A failed group: wakes ranks blocked in a collective (the engine module's abortGroup), ends every thread. */
  abort(reason: string): Promise<void>;
}

/** Aborts a TP group's collectives through its engine module (nothing to wake for a group of one rank). */
async function abortGroup(graph: TopologyGraph, reason: string): Promise<void> {
  if (graph.ranks.length < 2) return;
  const mod = (await import(graph.ranks[0].engineModule)) as EngineFactoryModule;
  mod.abortGroup(graph.group, reason);
}

/** Starts the ranks (all at once: a TP group's ranks meet while opening their engines), checks they agree, then
 * the scheduler over them. A failure anywhere ends everything started and rejects with the first coded error. */
export async function startTopology(graph: TopologyGraph, hooks: TopologyHooks): Promise<RunningTopology> {
  const n = graph.ranks.length;
  const progress = new SharedArrayBuffer(4 * n);
  const channels = graph.ranks.map(() => new MessageChannel());
  let firstFailure: LlmError | null = null;
  const starting = graph.ranks.map((node, r) =>
    RankActor.spawn({
      rank: node.rank, placement: node.placement, engineModule: node.engineModule, engineInit: node.engineInit, startTimeoutMs: node.startTimeoutMs,
      steps: channels[r].port2, progress,
    }).catch(async (err: unknown) => {
      const error = err instanceof LlmError ? err : new LlmError('LLM_ERR_ACTOR_CRASHED', String(err), { rank: node.rank });
      if (!firstFailure) {
        firstFailure = error;
        await abortGroup(graph, `rank ${node.rank} failed to start: ${error.message}`).catch(() => undefined);
      }
      return null;
    }),
  );
  const started = await Promise.all(starting);
  const ranks = started.filter((r): r is RankActor => r !== null);
  const fail = async (error: LlmError): Promise<never> => {
    await Promise.all(ranks.map((r) => r.terminate()));
    for (const c of channels) c.port1.close();
    throw error;
  };
  if (firstFailure) return fail(firstFailure);
  const kv0 = ranks[0].engine.kv;
  for (const r of ranks) {
    const kv = r.engine.kv;
    if (kv.pageSize !== kv0.pageSize || kv.numPages !== kv0.numPages) {
      await abortGroup(graph, 'the ranks disagree on the KV pool').catch(() => undefined);
      return fail(new LlmError(
        'LLM_ERR_CONFIG',
        `rank ${r.rank}'s KV pool (${kv.numPages} pages of ${kv.pageSize} tokens) differs from rank 0's (${kv0.numPages} pages of ${kv0.pageSize}): ` +
          'every rank of a tensor-parallel group must size its pool the same',
        { rank: r.rank },
      ));
    }
  }
  let running: RunningTopology | null = null;
  let scheduler: SchedulerHandle;
  try {
    scheduler = await SchedulerHandle.spawn({
      options: graph.scheduler.options,
      ranks: {
        ports: channels.map((c) => c.port1), engine: ranks[0].engine, progress, stepTimeoutMs: graph.scheduler.stepTimeoutMs,
        tpGroup: graph.ranks.length > 1 ? { group: graph.group, engineModule: graph.ranks[0].engineModule } : null,
      },
      hangTimeoutMs: graph.scheduler.hangTimeoutMs,
      startTimeoutMs: graph.scheduler.startTimeoutMs,
      ...(graph.scheduler.hook ? { hook: graph.scheduler.hook } : {}),
      metrics: hooks.metrics,
      onFailure: (error) => {
        if (running) hooks.onFailure(error, running);
      },
    });
  } catch (err) {
    await abortGroup(graph, 'the scheduler failed to start').catch(() => undefined);
    return fail(err instanceof LlmError ? err : new LlmError('LLM_ERR_ACTOR_CRASHED', String(err)));
  }
  const sched = scheduler;
  let ended = false;
  running = {
    graph,
    scheduler: sched,
    ranks,
    kv: {
      exportParked: (key, tokenIds) => sched.exportParked(key, tokenIds),
      importPrefix: (prefix, parkAs) => sched.importPrefix(prefix, parkAs),
      disaggKv: (op) => sched.disaggKv(op),
    },
    async stop(graceMs = 5000) {
      if (ended) return;
      ended = true;
      await sched.close(graceMs);
      await Promise.all(ranks.map((r) => r.stop(graceMs)));
    },
    async abort(reason) {
      if (ended) return;
      ended = true;
      await abortGroup(graph, reason).catch(() => undefined);
      await Promise.all([sched.terminate(), ...ranks.map((r) => r.terminate())]);
    },
  };
  // A rank thread's crash is seen here, on the main thread: it fails the group through its scheduler.
  for (const r of ranks) r.onFailure((error) => sched.failGroup(error));
  return running;
}
