// The worker's side of KV-aware routing (reference §5): the scheduler's prefix-cache events become RouterEvents on
// `namespace.{ns}.component.{comp}.kv-events` (the channel advertised in discovery), and KV usage becomes ActiveLoad
// samples on `namespace.{ns}.kv_metrics` plus the `dynamo_component_gpu_cache_usage_percent` gauge.
//
// When the event plane is used (decided by eventPlaneMode):
//  - `--kv-events-config` with publisher "null" turns it off;
//  - a publisher ("zmq") turns it on and requires NATS: the engine runs in this process, so its events go straight
//    to the event plane (SGLang's ZMQ relay hop and its endpoint are not needed);
//  - without `--kv-events-config`, a distributed deployment (discovery etcd or file) with the nats event plane
//    publishes too, best effort: an unreachable NATS server is reported and the worker serves without KV events;
//  - the in-process mem store (one process, nothing to route between) publishes nothing unless asked.
//
// Block hashes: SGLang hashes each page's tokens chained through its parent; we do the same, block_hash =
// xxh3-64 of the page's token ids seeded with the parent's block hash (0 at the start of a sequence). It is an
// opaque id to the router (parent links and removals); the router matches on tokens_hash, computed by the
// publisher. The page → block hash map lets a removal (which names pages) name the hashes it stored.
//
// Data parallelism (--dp-size N): every group (data-parallel rank) publishes its own events, with its dp_rank and its
// own event ids, and its own load sample; the reference publishes rank 0's only, users asked for all.
//
// With the local indexer (config.enableLocalIndexer: not --durable-kv-events, not a disagg decode worker) every
// published event is also kept by the LocalKvIndexer of its group. The worker serves each as the endpoint
// `worker_kv_indexer_query_dp{N}` (it registers those); the 0.8 profile (the default) also answers NATS requests
// on `namespace.{ns}.component.{c}.worker_kv_indexer_query.{instance id}` here, as Dynamo 0.8 workers do: the
// subject names no dp rank, so the request's dp_rank (0 when absent) picks the group's indexer.
// The wire profile also picks the payload form of the events and load (protocol/events-0.8.ts).
// Without the local indexer, the 0.8 profile publishes KV events into the component's JetStream stream instead of
// NATS core (runtime/events/jetstream.ts), as a 0.8 worker does: the stream is created at start if missing, and a
// nats-server without JetStream is reported then (fatal when events are required, else the worker publishes its
// load alone). Load samples stay on NATS core in both cases.
import type { NatsConnection, Subscription } from 'nats';
import type { Supervisor } from '../../actors/supervisor.js';
import type { WorkerConfig } from '../config/schema.js';
import { KV_EVENTS_TOPIC } from '../protocol/events.js';
import { encodeWorkerKvQueryResponse08, rangeAnswer08, workerKvIndexerQuerySubject08 } from '../protocol/events-0.8.js';
import { WorkerKvQueryRequestSchema } from '../protocol/kv-query.js';
import { decodeWireJson } from '../protocol/transport.js';
import type { Discovery } from '../runtime/discovery/index.js';
import { KvEventPublisher, LoadPublisher, registerNatsEventChannel } from '../runtime/events/index.js';
import { KvEventsStream08, ensureKvEventsStream08, kvEventsStreamSubject08 } from '../runtime/events/jetstream.js';
import { tokensHash } from '../runtime/kv-hash.js';
import type { WorkerMetrics } from '../runtime/metrics.js';
import { connectNats } from '../runtime/request-plane/nats.js';
import { redactUrl } from '../runtime/credentials.js';
import { logger } from '../runtime/log.js';
import type { KvCacheEvent } from '../supervisor.js';
import { LocalKvIndexer } from './local-kv-indexer.js';

const log = logger('worker.kv-events');

/** off: no event plane; required: NATS must be reachable; optional: publish if NATS is reachable. */
export type EventPlaneMode = 'off' | 'required' | 'optional';

export function eventPlaneMode(config: WorkerConfig, forced = false): EventPlaneMode {
  if (config.kvEventsConfig?.publisher === 'null') return 'off';
  if (forced || config.useKvEvents) return 'required';
  if (config.eventPlane !== 'nats' || config.discoveryBackend === 'mem') return 'off';
  return 'optional';
}

/** Dynamo 0.8 without the local indexer: KV events go to the component's JetStream stream. */
export function usesKvEventsStream08(config: WorkerConfig): boolean {
  return config.wireProfile === '0.8' && !config.enableLocalIndexer;
}

/** How often KV usage is sampled for the load publisher and the gauge. */
const LOAD_SAMPLE_MS = 20;

export interface WorkerKvEventsOptions {
  config: WorkerConfig;
  /** The worker's groups, by data-parallel rank. */
  groups: readonly Supervisor[];
  discovery: Discovery;
  metrics: WorkerMetrics;
  /** Publish on the event plane (null: only the gauge is kept up to date). */
  nats: NatsConnection | null;
  /** Publish KV events (default true; false: load only, e.g. the 0.8 JetStream stream is unavailable). */
  kvEvents?: boolean;
}

/** One data-parallel group's publishing state. */
class GroupEvents {
  private readonly blockHashOfPage = new Map<number, bigint>();
  /** The scheduler whose cache the published blocks are in: a new one means the group restarted empty. */
  private scheduler: unknown;

  constructor(
    readonly supervisor: Supervisor,
    private readonly kv: KvEventPublisher | null,
    readonly localIndexer: LocalKvIndexer | null,
    private readonly pageSize: number,
  ) {
    this.scheduler = supervisor.scheduler;
  }

  get dpRank(): number {
    return this.supervisor.dpRank;
  }

  /** After a restart the group's prefix cache starts empty and no removals are reported for the lost one. */
  noteRestart(): void {
    let scheduler: unknown;
    try {
      scheduler = this.supervisor.scheduler;
    } catch {
      return; // restarting now: checked again on the next event or sample
    }
    if (scheduler === this.scheduler) return;
    this.scheduler = scheduler;
    this.blockHashOfPage.clear();
    this.kv?.cleared();
  }

  onCacheEvent(e: KvCacheEvent): void {
    if (!this.kv) return;
    this.noteRestart();
    if (e.kind === 'removed') {
      const hashes: bigint[] = [];
      for (const b of e.blocks) {
        const h = this.blockHashOfPage.get(b.page);
        if (h === undefined) continue;
        this.blockHashOfPage.delete(b.page);
        hashes.push(h);
      }
      if (hashes.length > 0) this.kv.removed(hashes);
      return;
    }
    const parent = e.parentPage === null ? null : (this.blockHashOfPage.get(e.parentPage) ?? null);
    let seed = parent ?? 0n;
    const hashes: bigint[] = [];
    const tokenIds: number[] = [];
    for (const b of e.blocks) {
      seed = tokensHash(b.tokenIds, seed);
      this.blockHashOfPage.set(b.page, seed);
      hashes.push(seed);
      tokenIds.push(...b.tokenIds);
    }
    this.kv.stored({ blockHashes: hashes, parentBlockHash: parent, tokenIds, blockSize: this.pageSize });
  }

  close(): void {
    this.kv?.close();
  }
}

export class WorkerKvEvents {
  private readonly groups: GroupEvents[];
  private readonly load: LoadPublisher | null;
  private readonly timer: NodeJS.Timeout;
  /** 0.8: the NATS subscription answering local-indexer queries. */
  private readonly querySubscription: Subscription | null = null;
  private closed = false;

  private constructor(private readonly options: WorkerKvEventsOptions) {
    const { config, discovery, nats } = options;
    const { namespace, component } = config.endpoint;
    const wireProfile = config.wireProfile;
    const workerId = discovery.instanceId;
    const stream08 = nats && options.kvEvents !== false && usesKvEventsStream08(config) ? new KvEventsStream08(nats, namespace, component) : undefined;
    this.groups = options.groups.map((supervisor) => {
      const dpRank = supervisor.dpRank;
      const localIndexer = nats && config.enableLocalIndexer ? new LocalKvIndexer(workerId, dpRank) : null;
      const onPublish = localIndexer ? localIndexer.record.bind(localIndexer) : undefined;
      const kv = nats && options.kvEvents !== false ? new KvEventPublisher(nats, { namespace, component, workerId, dpRank, onPublish, wireProfile, stream08 }) : null;
      const group = new GroupEvents(supervisor, kv, localIndexer, config.pageSize);
      if (kv) supervisor.onKvEvent((e) => {
        if (!this.closed) group.onCacheEvent(e);
      });
      return group;
    });
    this.load = nats ? new LoadPublisher(nats, { namespace, workerId, wireProfile }) : null;
    if (nats && config.enableLocalIndexer && wireProfile === '0.8') this.querySubscription = this.answerQueries08(nats);
    this.load?.start(this.groups.map((g) => g.dpRank));
    this.timer = setInterval(() => this.sample(), LOAD_SAMPLE_MS);
    this.timer.unref();
  }

  /** Each group's published events for router recovery, by data-parallel rank (none: not publishing, or the local
   * indexer is off). */
  get localIndexers(): LocalKvIndexer[] {
    return this.groups.flatMap((g) => (g.localIndexer ? [g.localIndexer] : []));
  }

  /** Connects the event plane as `mode` says and advertises the kv-events channel in discovery. */
  static async start(options: Omit<WorkerKvEventsOptions, 'nats' | 'kvEvents'>, mode: EventPlaneMode, log: (line: string) => void): Promise<WorkerKvEvents> {
    const { config, discovery } = options;
    let nats: NatsConnection | null = null;
    if (mode !== 'off') {
      try {
        if (config.eventPlane !== 'nats') throw new Error(`--event-plane ${config.eventPlane}: only the nats event plane is available in this build`);
        nats = await connectNats(config.natsServer);
      } catch (err) {
        if (mode === 'required') throw err;
        log(`KV events and load are not published: ${(err as Error).message} (set --kv-events-config '{"publisher":"null"}' to silence this)`);
      }
    }
    let kvEvents = nats !== null;
    if (nats && usesKvEventsStream08(config)) {
      try {
        await ensureKvEventsStream08(nats, config.endpoint.namespace, config.endpoint.component, config.natsServer);
      } catch (err) {
        if (mode === 'required') {
          await nats.close();
          throw err;
        }
        kvEvents = false;
        log(`KV events are not published (load is): ${(err as Error).message} (set --kv-events-config '{"publisher":"null"}' to silence this)`);
      }
    }
    if (nats) {
      const { namespace, component } = config.endpoint;
      if (kvEvents) await registerNatsEventChannel(discovery, { namespace, component, topic: KV_EVENTS_TOPIC });
      const kvSubject = usesKvEventsStream08(config)
        ? `JetStream ${kvEventsStreamSubject08(namespace, component)}`
        : `namespace.${namespace}.component.${component}.kv-events`;
      const what = kvEvents ? `KV events and load on NATS ${redactUrl(config.natsServer)} (${kvSubject}, ` : `load on NATS ${redactUrl(config.natsServer)} (`;
      log(`publishing ${what}namespace.${namespace}.kv_metrics; Dynamo ${config.wireProfile} wire)`);
    }
    const events = new WorkerKvEvents({ ...options, nats, kvEvents });
    await events.ready();
    return events;
  }

  /** Flushed to the NATS server before the worker serves: a router that sees the worker can query it at once. */
  async ready(): Promise<void> {
    await this.options.nats?.flush();
  }

  /** Sends what is pending and disconnects from NATS. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.querySubscription?.unsubscribe();
    for (const g of this.groups) g.close();
    this.load?.close();
    if (this.options.nats) await this.options.nats.drain().catch(() => undefined);
  }

  /** Dynamo 0.8's local-indexer query: a JSON WorkerKvQueryRequest by NATS request, the JSON answer as the reply.
   * As in 0.8, the subject names the worker (the body's worker_id is not checked) and a query that cannot be answered
   * gets no reply (0.8 has no error answer; the router's request times out). Its dp_rank (our addition; 0 when
   * absent, as 0.8 never sends it) names the group. */
  private answerQueries08(nats: NatsConnection): Subscription {
    const { namespace, component } = this.options.config.endpoint;
    const subscription = nats.subscribe(workerKvIndexerQuerySubject08(namespace, component, this.options.discovery.instanceId));
    void (async () => {
      for await (const msg of subscription) {
        try {
          const request = decodeWireJson(WorkerKvQueryRequestSchema, msg.data, 'worker kv indexer query');
          const dpRank = request.dp_rank ?? 0;
          const indexer = this.groups[dpRank]?.localIndexer;
          if (!indexer) throw new Error(`dp_rank ${dpRank}: this worker has data-parallel ranks 0..${this.groups.length - 1}`);
          const answer = indexer.query({ ...request, worker_id: indexer.workerId, dp_rank: indexer.dpRank });
          msg.respond(encodeWorkerKvQueryResponse08(rangeAnswer08(answer, request.end_event_id ?? null)));
        } catch (err) {
          log.warn('worker kv indexer query not answered', { subject: msg.subject, error: (err as Error).message });
        }
      }
    })();
    return subscription;
  }

  private sample(): void {
    const { metrics, config } = this.options;
    for (const g of this.groups) {
      const load = g.supervisor.load();
      if (load.kvTotalPages === 0) continue; // the group is restarting, or has not stepped yet
      g.noteRestart();
      // blocks held by running requests; cached blocks nobody uses can be evicted at once, so they are not load
      const used = Math.max(0, load.kvUsedPages - load.kvEvictablePages);
      this.load?.update(g.dpRank, used);
      metrics.setKvStats({
        model: config.servedModelName,
        component: config.endpoint.component,
        dpRank: g.dpRank,
        totalBlocks: load.kvTotalPages,
        gpuCacheUsagePercent: load.kvTotalPages > 0 ? (100 * used) / load.kvTotalPages : 0,
      });
    }
  }
}
