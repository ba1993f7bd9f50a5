// The topology: from the frozen config, the actor graph of one worker as data (buildTopology), the core group it
// starts and restarts as one (startCore: the scheduler and its ranks), and the worker-level nodes around it (./start.ts
// startTopology starts the whole graph in dependency order and stops it in reverse):
//
//   supervisor (main thread) ── comlink control ──▶ scheduler actor ◀── step channel (MessageChannel) ──▶ rank 0..N-1
//     │  │  ▲ requests / output batches (hand-made)     │                                              ▲
//     │  │  └───────────────────────────────────────────┘                                              │
//     │  └───────────────────────── comlink control (start, stop) ──────────────────────────────────────┘
//     ├─▶ metrics recorder (the output batches' step and load samples, finished requests)
//     └── KV port ◀── KV sender (prefill) or KV receiver (decode)
//   tokenizer (main thread, loaded once)
//
// - cores: one core per data-parallel rank (--dp-size N: N independent groups, each its own scheduler, TP ranks and
//   KV pool); everything below is per core. The worker's router (actors/dp-router.ts) picks the core of a request.
// - core.ranks: one worker_thread per tensor-parallel rank, rank r of dp rank d on device baseGpuId + d * tp + r, each opening its engine
//   with EngineOptions.tp = { rank: r, size: N, group } (no tp for N = 1); `group` is named afresh by every startCore,
//   so a restarted group never meets a rank of the failed one. Each rank has its own port straight to the scheduler
//   thread: steps never cross the main thread.
// - core.scheduler: one worker_thread that plans every step, packs its descriptor once and sends it to every rank;
//   rank 0's engine summary sizes it (every rank must report the same KV pool: checked at start).
// - metrics: a recorder (actors/metrics.ts) per core on the main thread, fed by that core's schedulers (it outlives
//   restarts), so each data-parallel group has its own load.
// - tokenizer: the model's tokenizer, loaded once on the main thread (a worker's graph only). The worker takes token
//   ids (the frontend tokenizes, through its piscina pool actors/tokenizer.ts), so it encodes nothing per request
//   and a pool of threads would idle: the load checks at start that the tokenizer the model card points routers and
//   frontends at opens, and gives the BOS token of the health-check payload.
// - kvTransfer: a prefill worker's KV sender (its bootstrap server) or a decode worker's receiver, attached to the
//   core's KV port (the supervisor's, which follows the core across restarts; RunningCore.kv underneath). None for
//   an aggregated worker or the Supervisor on its own.
// - core.multiNode (--nnodes > 1, ./multinode.ts): this process runs only its node's ranks; on the leader each
//   follower node is one more port of the scheduler's rank group, relayed over TCP, and a follower's failure fails
//   the core like a rank's.
// Failures of any core actor fail the whole core: a rank that fails to start stops the start (the others are aborted
// and ended); a running rank that crashes or hangs, or the scheduler, fails every in-flight request with the coded
// error naming the rank, then the supervisor aborts the group (abort) and starts a fresh one from the same graph.
import { randomUUID } from 'node:crypto';
import { MessageChannel } from 'node:worker_threads';
import { DEFAULT_ENGINE_MODULE, RankActor, type EngineFactoryModule } from '../../actors/rank.js';
import type { RankEngineInit } from '../../actors/rank-engine.js';
import { SchedulerHandle, type SchedulerHookInit } from '../../actors/scheduler.js';
import type { MetricsActor } from '../../actors/metrics.js';
import { resolveSupervisorConfig, type ResolvedSupervisorConfig, type SupervisorConfig } from '../config/supervisor.js';
import type { WorkerConfig } from '../config/schema.js';
import type { DisaggKvOp, DisaggKvReply, PrefixPages } from '../scheduler/kv-transfer.js';
import { LlmError } from '../errors.js';
import type { SchedulerOptions } from '../scheduler/scheduler.js';
import type { TensorParallelOptions } from '../engine/types.js';
import { closeLeaderRelay, groupAddr, leaderRelay, nodeRanks, tpGroupAddr, type MultiNodeNode } from './multinode.js';

/** The WorkerConfig fields the worker's own nodes (tokenizer, KV transfer) are built from. */
type WorkerNodeFields = Pick<WorkerConfig, 'servingMode' | 'tokenizerPath' | 'disaggregationTransferBackend' | 'disaggregationBootstrapPort'>;

/** What the graph is built from: the supervisor's settings, and for a worker the fields of its nodes too. A resolved
 * WorkerConfig is passed as is; the Supervisor on its own passes none of the worker's fields. */
export type TopologyConfig = SupervisorConfig & (WorkerNodeFields | { [K in keyof WorkerNodeFields]?: undefined });

export interface RankNode {
  rank: number;
  deviceId: number;
  /** The rank's place in its tensor-parallel group (null for a group of one rank); the group's name is given at
   * each start. */
  tp: Pick<TensorParallelOptions, 'rank' | 'size'> & Partial<Pick<TensorParallelOptions, 'customAllReduce'>> | null;
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
  /** The tokenizer whose vocabulary guided decoding compiles grammars against (loaded by the scheduler's thread at
   * the first guided request). */
  tokenizer: TokenizerNode;
}

/** The group the supervisor starts, supervises and restarts as one: one per data-parallel rank. */
export interface CoreGraph {
  /** The data-parallel rank this group serves (0 .. dpSize - 1). */
  dpRank: number;
  /** The supervisor's settings, every default applied (restarts, request limits). */
  config: ResolvedSupervisorConfig;
  scheduler: SchedulerNode;
  /** By rank: every rank of the group, on every node. */
  ranks: RankNode[];
  /** A group spanning processes (--nnodes > 1, ./multinode.ts): this process's node; null on one node. */
  multiNode: MultiNodeNode | null;
}

/** A core's metrics recorder: fed by its scheduler's output batches (steps, load) and its supervisor's finished
 * requests. */
export interface MetricsNode {
  fedBy: 'cores[dpRank].scheduler';
}

/** The worker's tokenizer, loaded once at start (see the header for why not a pool). */
export interface TokenizerNode {
  modelPath: string;
  tokenizerPath: string;
}

/** A disaggregated worker's KV transfer, attached to the core's KV port. */
export interface KvTransferNode {
  /** sender: a prefill worker's bootstrap server hands out its parked KV; receiver: a decode worker fetches it. */
  role: 'sender' | 'receiver';
  transferBackend: WorkerConfig['disaggregationTransferBackend'];
  /** Where the sender listens (0: any free port); null for a receiver. */
  bootstrapPort: number | null;
  attachedTo: 'cores[0].kv';
}

/** One worker's actors, as data. */
export interface TopologyGraph {
  /** By data-parallel rank (one for --dp-size 1). */
  cores: CoreGraph[];
  metrics: MetricsNode;
  /** Null for the Supervisor on its own. */
  tokenizer: TokenizerNode | null;
  /** Null for an aggregated worker and the Supervisor on its own. */
  kvTransfer: KvTransferNode | null;
}

/** The scheduler's KV operations, run in the scheduler's thread in step order: what a disaggregated worker's KV
 * sender (prefill: exportParked, disaggKv holds) or receiver (decode: importPrefix, disaggKv pulls) drives. */
export interface SchedulerKvPort {
  exportParked(key: string, tokenIds: number[]): Promise<PrefixPages>;
  importPrefix(prefix: PrefixPages, parkAs: string | null): Promise<number>;
  disaggKv(op: DisaggKvOp): Promise<DisaggKvReply>;
}

/** Builds the graph from the config (defaults applied once, here). Throws LLM_ERR_CONFIG for settings no graph can
 * have. */
export function buildTopology(config: TopologyConfig): TopologyGraph {
  const c = resolveSupervisorConfig(config);
  if (!Number.isInteger(c.tpSize) || c.tpSize < 1) throw new LlmError('LLM_ERR_CONFIG', `tp size must be an integer >= 1, got ${c.tpSize}`);
  if (!Number.isInteger(c.baseGpuId) || c.baseGpuId < 0) throw new LlmError('LLM_ERR_CONFIG', `base GPU id must be an integer >= 0, got ${c.baseGpuId}`);
  if (!Number.isInteger(c.dpSize) || c.dpSize < 1) throw new LlmError('LLM_ERR_CONFIG', `dp size must be an integer >= 1, got ${c.dpSize}`);
  if (c.dpSize > 1 && config.servingMode !== undefined && config.servingMode !== 'aggregated') {
    // the KV sender / receiver is attached to one core's KV port: which group a hand-off lands in is not wired
    throw new LlmError('LLM_ERR_CONFIG', `--dp-size ${c.dpSize} with --disaggregation-mode ${config.servingMode}: data parallelism is available for aggregated workers only in this build`);
  }
  const scheduler: SchedulerOptions = {
    maxRunningRequests: c.maxRunningRequests,
    chunkedPrefillSize: c.chunkedPrefillSize === -1 ? 0 : c.chunkedPrefillSize,
    maxPrefillTokens: c.maxPrefillTokens,
    maxBatchTokens: c.maxPrefillTokens + c.maxRunningRequests,
    maxSeqsPerStep: c.maxRunningRequests,
    enableOverlap: !c.disableOverlapSchedule,
    enablePrefixCache: !c.disableRadixCache,
  };
  const engineOptions: RankEngineInit['options'] = {
    pageSize: c.pageSize,
    ...(c.numPages ? { numPages: c.numPages } : {}),
    memFractionStatic: c.memFractionStatic,
    maxBatchTokens: scheduler.maxBatchTokens,
    maxSeqsPerStep: scheduler.maxSeqsPerStep,
    ...(c.cpuThreads ? { threads: c.cpuThreads } : {}),
  };
  const engineModule = c.engineFactory?.module ?? DEFAULT_ENGINE_MODULE;
  const engineInit: unknown = c.engineFactory ? c.engineFactory.init : ({ modelPath: c.modelPath, device: c.device, options: engineOptions, ranksPerNode: c.tpSize / c.nnodes } satisfies RankEngineInit);
  if (!Number.isInteger(c.nnodes) || c.nnodes < 1 || c.tpSize % c.nnodes !== 0 || c.nodeRank < 0 || c.nodeRank >= c.nnodes) {
    throw new LlmError('LLM_ERR_CONFIG', `--nnodes ${c.nnodes} --node-rank ${c.nodeRank}: nnodes must divide the tp size ${c.tpSize} and node-rank be below nnodes`);
  }
  // device auto is checked where it is resolved (actors/rank-engine.ts): a machine without a GPU runs the group
  if (c.nnodes > 1 && c.distInitAddr === null) {
    throw new LlmError('LLM_ERR_CONFIG', `--nnodes ${c.nnodes} needs --dist-init-addr HOST:PORT (the leader's address, node 0)`);
  }
  const distInitAddr = c.nnodes > 1 ? c.distInitAddr : null;
  // Each data-parallel group spans the nodes on its own ports (./multinode.ts groupAddr).
  const multiNode = (dpRank: number): MultiNodeNode | null =>
    distInitAddr === null ? null : { nnodes: c.nnodes, nodeRank: c.nodeRank, distInitAddr: groupAddr(distInitAddr, dpRank, c.dpSize) };
  // A node's devices: k = tp/nnodes ranks of every group, group d's on base + d*k .. + k-1 (one node: k = tp).
  const ranksPerNode = c.tpSize / c.nnodes;
  const core = (dpRank: number): CoreGraph => ({
    dpRank,
    config: c,
    scheduler: { options: scheduler, stepTimeoutMs: c.stepTimeoutMs, hangTimeoutMs: c.schedulerTimeoutMs, startTimeoutMs: c.startTimeoutMs, hook: c.schedulerHook ?? null,
      tokenizer: { modelPath: c.modelPath, tokenizerPath: config.tokenizerPath ?? c.modelPath } },
    ranks: Array.from({ length: c.tpSize }, (_, rank): RankNode => ({
      rank,
      deviceId: c.baseGpuId + dpRank * ranksPerNode + (rank % ranksPerNode),
      tp: c.tpSize > 1 ? { rank, size: c.tpSize, ...(c.disableCustomAllReduce ? { customAllReduce: false } : {}) } : null,
      engineModule,
      engineInit,
      startTimeoutMs: c.startTimeoutMs,
    })),
    multiNode: multiNode(dpRank),
  });
  return {
    cores: Array.from({ length: c.dpSize }, (_, dpRank) => core(dpRank)),
    metrics: { fedBy: 'cores[dpRank].scheduler' },
    tokenizer: config.servingMode === undefined ? null : { modelPath: c.modelPath, tokenizerPath: config.tokenizerPath },
    kvTransfer: config.servingMode === undefined ? null : kvTransferNode(config),
  };
}

/** A prefill worker sends its KV, a decode worker receives it, an aggregated one has no KV transfer. */
function kvTransferNode(w: WorkerNodeFields): KvTransferNode | null {
  if (w.servingMode === 'aggregated') return null;
  const sender = w.servingMode === 'prefill';
  return {
    role: sender ? 'sender' : 'receiver',
    transferBackend: w.disaggregationTransferBackend,
    bootstrapPort: sender ? (w.disaggregationBootstrapPort ?? 0) : null,
    attachedTo: 'cores[0].kv',
  };
}

export interface CoreHooks {
  metrics: MetricsActor;
  /** Called once when any actor of the group fails, after every in-flight request got the error. */
  onFailure: (error: LlmError, group: RunningCore) => void;
}

/** A started core: its actors, and how to end it. */
export interface RunningCore {
  readonly graph: CoreGraph;
  /** The TP group's name, unique to this start. */
  readonly group: string;
  readonly scheduler: SchedulerHandle;
  readonly ranks: readonly RankActor[];
  readonly kv: SchedulerKvPort;
  /** Stops the scheduler (in-flight requests end with LLM_ERR_SHUTDOWN), then the ranks (their engines closed). */
  stop(graceMs?: number): Promise<void>;
  /** A failed group: wakes ranks blocked in a collective (the engine module's abortGroup), ends every thread. */
  abort(reason: string): Promise<void>;
}

/** Aborts a TP group's collectives through its engine module (nothing to wake for a group of one rank). */
async function abortGroup(graph: CoreGraph, group: string, reason: string): Promise<void> {
  if (graph.ranks.length < 2) return;
  const mod = (await import(graph.ranks[0].engineModule)) as EngineFactoryModule;
  mod.abortGroup(group, reason);
}

/** Starts the ranks (all at once: a TP group's ranks meet while opening their engines), checks they agree, then
 * the scheduler over them. A failure anywhere ends everything started and rejects with the first coded error. */
export async function startCore(graph: CoreGraph, hooks: CoreHooks): Promise<RunningCore> {
  const group = randomUUID();
  // On several nodes this process (the leader) runs its own ranks; each follower node is one more port (./multinode.ts).
  const mn = graph.multiNode;
  const local = mn ? nodeRanks(graph.ranks, mn) : graph.ranks;
  const n = local.length;
  const progress = new SharedArrayBuffer(4 * (n + (mn ? mn.nnodes - 1 : 0)));
  const remote = mn ? await (await leaderRelay(mn, graph.ranks.length)).openGroup(group, progress, n, graph.scheduler.startTimeoutMs) : null;
  const distInitAddr = mn ? { distInitAddr: tpGroupAddr(mn.distInitAddr) } : {};
  const channels = local.map(() => new MessageChannel());
  let firstFailure: LlmError | null = null;
  const followersStarted = remote?.started.catch(async (error: LlmError) => {
    if (!firstFailure) {
      firstFailure = error;
      await abortGroup(graph, group, `a follower node failed to start: ${error.message}`).catch(() => undefined);
    }
  });
  const starting = local.map((node, r) =>
    RankActor.spawn({
      rank: node.rank, placement: { deviceId: node.deviceId, ...(node.tp ? { tp: { ...node.tp, group, ...distInitAddr } } : {}) }, engineModule: node.engineModule, engineInit: node.engineInit, startTimeoutMs: node.startTimeoutMs,
      steps: channels[r].port2, progress,
    }).catch(async (err: unknown) => {
      const error = err instanceof LlmError ? err : new LlmError('LLM_ERR_ACTOR_CRASHED', String(err), { rank: node.rank });
      if (!firstFailure) {
        firstFailure = error;
        await abortGroup(graph, group, `rank ${node.rank} failed to start: ${error.message}`).catch(() => undefined);
      }
      return null;
    }),
  );
  const started = await Promise.all(starting);
  await followersStarted;
  const ranks = started.filter((r): r is RankActor => r !== null);
  const fail = async (error: LlmError): Promise<never> => {
    await Promise.all(ranks.map((r) => r.terminate()));
    for (const c of channels) c.port1.close();
    for (const p of remote?.ports ?? []) p.close();
    throw error;
  };
  if (firstFailure) return fail(firstFailure);
  const kv0 = ranks[0].engine.kv;
  for (const r of ranks) {
    const kv = r.engine.kv;
    if (kv.pageSize !== kv0.pageSize || kv.numPages !== kv0.numPages) {
      await abortGroup(graph, group, 'the ranks disagree on the KV pool').catch(() => undefined);
      return fail(new LlmError(
        'LLM_ERR_CONFIG',
        `rank ${r.rank}'s KV pool (${kv.numPages} pages of ${kv.pageSize} tokens) differs from rank 0's (${kv0.numPages} pages of ${kv0.pageSize}): ` +
          'every rank of a tensor-parallel group must size its pool the same',
        { rank: r.rank },
      ));
    }
  }
  let running: RunningCore | null = null;
  let scheduler: SchedulerHandle;
  try {
    scheduler = await SchedulerHandle.spawn({
      options: graph.scheduler.options,
      ranks: {
        ports: [...channels.map((c) => c.port1), ...(remote?.ports ?? [])], engine: ranks[0].engine, progress, stepTimeoutMs: graph.scheduler.stepTimeoutMs,
        tpGroup: graph.ranks.length > 1 ? { group, engineModule: graph.ranks[0].engineModule } : null,
      },
      hangTimeoutMs: graph.scheduler.hangTimeoutMs,
      startTimeoutMs: graph.scheduler.startTimeoutMs,
      ...(graph.scheduler.hook ? { hook: graph.scheduler.hook } : {}),
      tokenizer: graph.scheduler.tokenizer,
      metrics: hooks.metrics,
      onFailure: (error) => {
        if (running) hooks.onFailure(error, running);
      },
    });
  } catch (err) {
    await abortGroup(graph, group, 'the scheduler failed to start').catch(() => undefined);
    return fail(err instanceof LlmError ? err : new LlmError('LLM_ERR_ACTOR_CRASHED', String(err)));
  }
  const sched = scheduler;
  let ended = false;
  running = {
    graph,
    group,
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
      if (mn) closeLeaderRelay(mn);
    },
    async abort(reason) {
      if (ended) return;
      ended = true;
      await abortGroup(graph, group, reason).catch(() => undefined);
      await Promise.all([sched.terminate(), ...ranks.map((r) => r.terminate())]);
    },
  };
  // A rank thread's crash is seen here, on the main thread: it fails the group through its scheduler.
  for (const r of ranks) r.onFailure((error) => sched.failGroup(error));
  return running;
}
