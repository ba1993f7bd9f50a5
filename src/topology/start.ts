// Starts what a topology graph (./topology.ts) lists, in dependency order, and stops it in reverse:
//   1. the tokenizer (before the model: a missing or broken tokenizer fails in milliseconds, not after a long load);
//   2. every core (one per data-parallel rank, all at once) under its own supervisor with its own metrics recorder
//      (ranks, then the scheduler over them; restarted from the same graph, one core at a time), and the router
//      that picks a core per request;
//   3. the KV transfer, attached to core 0's KV port (the supervisor's: it follows the core across restarts).
// A failure while starting stops what already started, newest first, and rejects with that failure.
import { DataParallelRouter } from '../../actors/dp-router.js';
import { MetricsActor } from '../../actors/metrics.js';
import { Supervisor } from '../../actors/supervisor.js';
import type { WorkerConfig } from '../config/schema.js';
import { LlmError } from '../errors.js';
import { DisaggService } from '../disagg/service.js';
import type { Discovery } from '../runtime/discovery/index.js';
import { loadTokenizer, type Tokenizer } from '../tokenizer/index.js';
import type { TopologyGraph } from './topology.js';

/** What the KV transfer needs beyond its node: its settings (the worker's frozen config), where it finds prefill
 * workers (the decode side's older flow), and where it logs. */
export interface KvTransferContext {
  config: WorkerConfig;
  discovery: Discovery;
  log: (line: string) => void;
}

/** A started graph: one running actor per node (null where the graph has none). */
export interface RunningTopology {
  readonly graph: TopologyGraph;
  readonly tokenizer: Tokenizer | null;
  /** Each core's supervisor (with its metrics recorder), by data-parallel rank. */
  readonly groups: readonly Supervisor[];
  /** Core 0's supervisor, which is also the KV port of a disaggregated worker (which has one core). */
  readonly core: Supervisor;
  /** Picks the core of each request. */
  readonly router: DataParallelRouter;
  /** The prefill worker's KV sender or the decode worker's receiver. */
  readonly kvTransfer: DisaggService | null;
  /** Stops everything, newest first. Idempotent. */
  stop(): Promise<void>;
}

/** Starts the graph. `kv` is required when the graph has a KV transfer node. */
export async function startTopology(graph: TopologyGraph, kv: KvTransferContext | null): Promise<RunningTopology> {
  if (graph.kvTransfer && kv?.config.servingMode !== (graph.kvTransfer.role === 'sender' ? 'prefill' : 'decode')) {
    throw new LlmError('LLM_ERR_INTERNAL', `the topology lists a KV ${graph.kvTransfer.role} but was given no config of that serving mode`);
  }
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async (): Promise<void> => {
    while (stops.length > 0) await stops.pop()!();
  };
  try {
    const tokenizer = graph.tokenizer ? loadTokenizer(graph.tokenizer.modelPath, graph.tokenizer.tokenizerPath) : null;
    // each recorder is in-memory: nothing to stop
    const starting = await Promise.allSettled(graph.cores.map((core) => Supervisor.supervise(core, new MetricsActor())));
    for (const s of starting) if (s.status === 'fulfilled') stops.push(() => s.value.stop());
    const failed = starting.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    const groups = starting.map((s) => (s as PromiseFulfilledResult<Supervisor>).value);
    const core = groups[0];
    const kvTransfer = graph.kvTransfer && kv ? await DisaggService.start({ config: kv.config, core, discovery: kv.discovery, log: kv.log }) : null;
    if (kvTransfer) stops.push(() => kvTransfer.close());
    let stopping: Promise<void> | null = null;
    return { graph, tokenizer, groups, core, router: new DataParallelRouter(groups), kvTransfer, stop: () => (stopping ??= stopAll()) };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
