// KV-aware routing (reference §5.1, §5.2): the router follows every worker's KV events and load on the event plane
// and sends a request to the worker where it costs least:
//   cost = overlap_score_weight × (request blocks the worker has not cached) + the worker's active (decode) blocks,
// ties broken at random; with a router temperature > 0 the worker is drawn from a softmax over the costs (min-max
// normalised, as Dynamo's router does) instead, trading cache hits for spread. A worker's cache is indexed by sequence hashes (tokens_hash chained block by block, as
// src/runtime/kv-hash.ts computes them), so the request's blocks match a worker's blocks only when the whole prefix
// up to them matches. Stored events name their parent by the engine's block hash: each worker's block hash →
// sequence hash map resolves it (a block whose parent is unknown, e.g. published before we subscribed, is dropped).
//
// Data parallelism: a worker whose card says data_parallel_size N has N independent KV pools, each publishing its
// events and load with its dp_rank (and its own event ids). The router keeps the cache, load and event cursor of each
// (worker, dp_rank) pair and scores the pairs; the decision names the dp_rank, which the caller puts in the routed
// request (routing.dp_rank) so that the worker runs it in that group.
//
// Recovery (Dynamo's WorkerQueryClient): a worker with the local indexer (its card's enable_local_indexer) is asked
// once per dp rank, when the router learns of it, for every block it has cached (`worker_kv_indexer_query_dp{N}`,
// answered with a dump and the newest event id L). Its live events wait meanwhile; after the dump replaces what we knew of the worker
// only those with ids above L are applied, and later ones apply in id order: an id already applied is skipped, a
// gap (a lost event) asks the worker for the missing ids. A worker that cannot answer (an old worker without the
// endpoint, a timeout) is logged once and followed by its live events alone, as a worker without the local indexer.
//
// Dynamo 0.8 workers without the local indexer publish into the component's JetStream stream instead of NATS core
// (runtime/events/jetstream.ts). As a 0.8 router does when not every worker has the local indexer, the router then
// reads that stream too (from the start of what it keeps, so a late router replays those workers' events), once it
// learns of the first such worker; a server without JetStream is logged and those workers are routed without events.
import type { NatsConnection } from 'nats';
import type { ActiveLoad, RouterEvent } from '../protocol/events.js';
import type { WorkerKvQueryResponse } from '../protocol/kv-query.js';
import { subscribeKvEvents, subscribeLoad, type EventSubscription } from '../runtime/events/index.js';
import { blockTokensHashes, sequenceHashes } from '../runtime/kv-hash.js';
import { DEFAULT_WIRE_PROFILE, type WireProfile } from '../protocol/wire-profile.js';
import { readKvEventsStream08, type KvEventsStreamReader08 } from '../runtime/events/jetstream.js';

export interface KvRouterOptions {
  /** Tokens per KV block: the model card's kv_cache_block_size. */
  blockSize: number;
  /** Weight of the prefill (uncached) blocks against the decode blocks (default 1.0). */
  overlapScoreWeight?: number;
  /** 0 (default): the cheapest worker; > 0: softmax sampling over normalised costs at this temperature. */
  temperature?: number;
  /** Asks a worker's local indexer for its events from `startEventId` (null: a dump of its cached blocks). */
  queryWorker?: WorkerKvQuery;
  /** Payload form of the events and load it follows (default 0.8). */
  wireProfile?: WireProfile;
  log?: (line: string) => void;
}

export type WorkerKvQuery = (workerId: bigint, startEventId: bigint | null, dpRank: number) => Promise<WorkerKvQueryResponse>;

/** A (worker, dp rank) pair as the maps below key it. */
type PairKey = string;
const pairKey = (workerId: bigint, dpRank: number): PairKey => `${workerId}/${dpRank}`;
const workerOf = (key: PairKey): bigint => BigInt(key.slice(0, key.indexOf('/')));

/** A worker followed by event id (it has the local indexer). */
interface WorkerCursor {
  /** The newest event id applied; null: none yet (the next live event is taken as it comes). */
  applied: bigint | null;
  recovering: boolean;
  /** Live events that came while a query was out, applied in order once it is answered. */
  waiting: RouterEvent[];
}

interface WorkerCache {
  /** Engine block hash → sequence hash. */
  blocks: Map<bigint, bigint>;
  /** Sequence hash → how many cached blocks have it. */
  sequences: Map<bigint, number>;
}

export interface KvRouteDecision {
  instanceId: bigint;
  /** The worker's data-parallel rank (its KV pool) the cost is for. */
  dpRank: number;
  /** Leading request blocks the chosen worker has cached. */
  overlapBlocks: number;
  requestBlocks: number;
  cost: number;
}

export class KvRouter {
  readonly blockSize: number;
  private readonly weight: number;
  private readonly temperature: number;
  /** By (worker, dp rank). */
  private readonly caches = new Map<PairKey, WorkerCache>();
  private readonly activeBlocks = new Map<PairKey, number>();
  /** Blocks of requests this router sent that are still streaming, per (worker, dp rank) (its load lags behind them). */
  private readonly routedBlocks = new Map<PairKey, number>();
  private readonly subscriptions: EventSubscription<unknown>[] = [];
  /** The data-parallel size of each worker the router learnt of. */
  private readonly dpSizes = new Map<bigint, number>();
  /** (worker, dp rank) pairs followed by event id, and the others (no local indexer, or its query failed). */
  private readonly cursors = new Map<PairKey, WorkerCursor>();
  private readonly followedLive = new Set<PairKey>();
  private readonly queryWorker: WorkerKvQuery | null;
  private readonly log: (line: string) => void;
  /** Resolves once the live subscriptions are in place (a worker's answer then misses none of its later events). */
  private subscribed: Promise<unknown> = Promise.resolve();
  private readonly wireProfile: WireProfile;
  /** Where follow() listens (null: a router fed by hand). */
  private plane: { nats: NatsConnection; namespace: string; component: string } | null = null;
  /** 0.8: the reading of the component's JetStream stream, started by the first worker without the local indexer. */
  private stream08: Promise<KvEventsStreamReader08 | null> | null = null;
  private closed = false;

  constructor(options: KvRouterOptions) {
    this.blockSize = options.blockSize;
    this.weight = options.overlapScoreWeight ?? 1.0;
    this.temperature = options.temperature ?? 0;
    this.queryWorker = options.queryWorker ?? null;
    this.wireProfile = options.wireProfile ?? DEFAULT_WIRE_PROFILE;
    this.log = options.log ?? ((line: string) => process.emitWarning(line, 'KvRouterWarning'));
  }

  /** Follows `namespace.{ns}.component.{comp}.kv-events` and `namespace.{ns}.kv_metrics` until close(). */
  static follow(nats: NatsConnection, namespace: string, component: string, options: KvRouterOptions): KvRouter {
    const router = new KvRouter(options);
    router.plane = { nats, namespace, component };
    const events = subscribeKvEvents(nats, namespace, component, undefined, options.wireProfile);
    const loads = subscribeLoad(nats, namespace, undefined, options.wireProfile);
    router.subscriptions.push(events, loads);
    router.subscribed = nats.flush().catch(() => undefined);
    const lost = (what: string) => (err: unknown) => router.log(`kv router: ${what} subscription ended: ${(err as Error).message}`);
    (async () => {
      for await (const { event } of events) router.receiveEvent(event);
    })().catch(lost(events.subject));
    (async () => {
      for await (const { event } of loads) router.applyLoad(event);
    })().catch(lost(loads.subject));
    return router;
  }

  close(): void {
    this.closed = true;
    for (const s of this.subscriptions) s.close();
    void this.stream08?.then((reader) => reader?.close());
  }

  /** 0.8: reads the component's JetStream stream (once), where workers without the local indexer publish. */
  private followStream08(): void {
    if (this.stream08 !== null || this.plane === null || this.wireProfile !== '0.8' || this.closed) return;
    const { nats, namespace, component } = this.plane;
    this.stream08 = readKvEventsStream08(nats, namespace, component, `nats://${nats.getServer()}`, (e) => this.receiveEvent(e)).then(
      (reader) => {
        if (this.closed) reader.close();
        return reader;
      },
      (err: unknown) => {
        this.log(`kv router: KV events of workers without the local indexer are not followed: ${(err as Error).message}`);
        return null;
      },
    );
  }

  /**
   * A worker the router now knows of (a model card of it, with its data_parallel_size): one with the local indexer is
   * asked, per dp rank, for what it has cached (once; again only if it was forgotten meanwhile), one without is
   * followed by its live events alone.
   */
  learnWorker(workerId: bigint, localIndexer: boolean, dpSize = 1): void {
    if (this.dpSizes.has(workerId)) return;
    this.dpSizes.set(workerId, dpSize);
    if (!localIndexer) this.followStream08();
    for (let dp = 0; dp < dpSize; dp++) {
      const key = pairKey(workerId, dp);
      if (!localIndexer || this.queryWorker === null) {
        this.followedLive.add(key);
        continue;
      }
      const cursor: WorkerCursor = { applied: null, recovering: false, waiting: [] };
      this.cursors.set(key, cursor);
      void this.recover(workerId, dp, cursor, null);
    }
  }

  /** Resolves once no query of a worker is out (tests, and callers that want the recovered state). */
  async recovered(): Promise<void> {
    while ([...this.cursors.values()].some((c) => c.recovering)) await new Promise((r) => setTimeout(r, 5));
  }

  /** A live event from the event plane: applied in id order for workers followed by id, at once for others. */
  receiveEvent(e: RouterEvent): void {
    const dpRank = e.event.dp_rank ?? 0;
    const cursor = this.cursors.get(pairKey(e.worker_id, dpRank));
    if (cursor === undefined) {
      this.applyEvent(e);
      return;
    }
    if (cursor.recovering) {
      cursor.waiting.push(e);
      return;
    }
    const id = e.event.event_id;
    if (cursor.applied !== null && id <= cursor.applied) return; // a query's answer had it already
    if (cursor.applied !== null && id > cursor.applied + 1n) {
      cursor.waiting.push(e);
      void this.recover(e.worker_id, dpRank, cursor, cursor.applied + 1n);
      return;
    }
    this.applyEvent(e);
    cursor.applied = id;
  }

  /** Asks the worker for its dump (start null) or the events from `start`, applies the answer, then what waited. */
  private async recover(workerId: bigint, dpRank: number, cursor: WorkerCursor, start: bigint | null): Promise<void> {
    cursor.recovering = true;
    const key = pairKey(workerId, dpRank);
    let answer: WorkerKvQueryResponse | Error;
    try {
      await this.subscribed;
      answer = await this.queryWorker!(workerId, start, dpRank);
    } catch (err) {
      answer = err instanceof Error ? err : new Error(String(err));
    }
    if (this.cursors.get(key) !== cursor) return; // forgotten meanwhile
    cursor.recovering = false;
    const worker = (this.dpSizes.get(workerId) ?? 1) > 1 ? `${workerId.toString(16)} dp_rank ${dpRank}` : workerId.toString(16);
    if ('TreeDump' in answer) {
      const { events, last_event_id: last } = answer.TreeDump;
      this.caches.delete(key);
      for (const e of events) this.applyEvent(e);
      // id 0: the worker has published nothing yet (or only event 0), or it did not say (a 0.8 dump has only
      // synthetic ids): the next live event is taken as it comes
      cursor.applied = last === 0n ? null : last;
      this.log(`kv router: worker ${worker}: recovered ${this.caches.get(key)?.blocks.size ?? 0} cached blocks from its local indexer (through event ${last})`);
    } else if ('Events' in answer) {
      for (const e of answer.Events.events) {
        if (cursor.applied !== null && e.event.event_id <= cursor.applied) continue;
        this.applyEvent(e);
        cursor.applied = e.event.event_id;
      }
      if (cursor.applied === null || answer.Events.last_event_id > cursor.applied) cursor.applied = answer.Events.last_event_id;
    } else {
      const why = answer instanceof Error ? answer.message : JSON.stringify(answer, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
      this.log(`kv router: worker ${worker}: its local KV indexer did not answer (${why}); following its live events only`);
      // followed like a worker without the local indexer from now on: every live event applies as it comes
      this.cursors.delete(key);
      this.followedLive.add(key);
    }
    const waiting = cursor.waiting;
    cursor.waiting = [];
    for (const e of waiting) this.receiveEvent(e);
  }

  applyEvent(e: RouterEvent): void {
    if (e.storage_tier !== 'device') return;
    const data = e.event.data;
    const key = pairKey(e.worker_id, e.event.dp_rank ?? 0);
    if (data === 'cleared') {
      this.caches.delete(key);
      return;
    }
    const cache = this.cacheOf(key);
    if ('removed' in data) {
      for (const h of data.removed.block_hashes) {
        const seq = cache.blocks.get(h);
        if (seq === undefined) continue;
        cache.blocks.delete(h);
        const n = (cache.sequences.get(seq) ?? 1) - 1;
        if (n > 0) cache.sequences.set(seq, n);
        else cache.sequences.delete(seq);
      }
      return;
    }
    const { parent_hash: parentHash, blocks } = data.stored;
    let parentSeq: bigint | null = null;
    if (parentHash !== null) {
      parentSeq = cache.blocks.get(parentHash) ?? null;
      if (parentSeq === null) return;
    }
    for (const b of blocks) {
      // seq[i] = xxh3_1337(le64(seq[i-1]) ‖ le64(tokens_hash[i])): the chain step sequenceHashes applies
      const seq = parentSeq === null ? b.tokens_hash : sequenceHashes([parentSeq, b.tokens_hash])[1];
      if (!cache.blocks.has(b.block_hash)) cache.sequences.set(seq, (cache.sequences.get(seq) ?? 0) + 1);
      cache.blocks.set(b.block_hash, seq);
      parentSeq = seq;
    }
  }

  applyLoad(load: ActiveLoad): void {
    this.activeBlocks.set(pairKey(load.worker_id, load.dp_rank ?? 0), load.active_decode_blocks ?? load.kv_used_blocks ?? 0);
  }

  /** Sequence hashes of the request's full blocks. */
  sequenceHashesOf(tokenIds: ArrayLike<number>): bigint[] {
    return sequenceHashes(blockTokensHashes(tokenIds, this.blockSize));
  }

  /** Leading blocks of `sequence` that `instanceId` has cached in its dp rank `dpRank`'s pool. */
  overlap(instanceId: bigint, sequence: readonly bigint[], dpRank = 0): number {
    const cache = this.caches.get(pairKey(instanceId, dpRank));
    if (!cache) return 0;
    let n = 0;
    while (n < sequence.length && cache.sequences.has(sequence[n])) n++;
    return n;
  }

  /** The cheapest (worker, dp rank) pair of `candidates` (instance ids of live workers, each with the dp ranks its
   * card gave; 1 for a worker not learnt) for a request with these tokens. */
  select(tokenIds: ArrayLike<number>, candidates: readonly bigint[]): KvRouteDecision {
    if (candidates.length === 0) throw new RangeError('KvRouter.select: no candidates');
    const sequence = this.sequenceHashesOf(tokenIds);
    const requestBlocks = Math.ceil(tokenIds.length / this.blockSize);
    const decisions = candidates.flatMap((id) =>
      Array.from({ length: this.dpSizes.get(id) ?? 1 }, (_, dpRank): KvRouteDecision => {
        const key = pairKey(id, dpRank);
        const overlapBlocks = this.overlap(id, sequence, dpRank);
        const decodeBlocks = Math.max(this.activeBlocks.get(key) ?? 0, this.routedBlocks.get(key) ?? 0);
        return { instanceId: id, dpRank, overlapBlocks, requestBlocks, cost: this.weight * (requestBlocks - overlapBlocks) + decodeBlocks };
      }),
    );
    const min = Math.min(...decisions.map((d) => d.cost));
    const max = Math.max(...decisions.map((d) => d.cost));
    if (this.temperature > 0 && max > min) {
      const weights = decisions.map((d) => Math.exp(-(d.cost - min) / (max - min) / this.temperature));
      let draw = Math.random() * weights.reduce((a, b) => a + b, 0);
      for (let i = 0; i < decisions.length; i++) if ((draw -= weights[i]) <= 0) return decisions[i];
      return decisions[decisions.length - 1];
    }
    const best = decisions.filter((d) => d.cost === min);
    return best[Math.floor(Math.random() * best.length)];
  }

  /** Counts a routed request's blocks against the worker's dp rank until the returned release is called (stream
   * ended). */
  track(instanceId: bigint, blocks: number, dpRank = 0): () => void {
    const key = pairKey(instanceId, dpRank);
    this.routedBlocks.set(key, (this.routedBlocks.get(key) ?? 0) + blocks);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.routedBlocks.get(key) ?? 0) - blocks;
      if (left > 0) this.routedBlocks.set(key, left);
      else this.routedBlocks.delete(key);
    };
  }

  /** Forgets workers that are no longer candidates anywhere (they left discovery). */
  retain(live: ReadonlySet<bigint>): void {
    for (const pairs of [this.caches, this.activeBlocks, this.routedBlocks, this.cursors]) {
      for (const key of pairs.keys()) if (!live.has(workerOf(key))) pairs.delete(key);
    }
    for (const key of this.followedLive) if (!live.has(workerOf(key))) this.followedLive.delete(key);
    for (const id of this.dpSizes.keys()) if (!live.has(id)) this.dpSizes.delete(id);
  }

  private cacheOf(key: PairKey): WorkerCache {
    let c = this.caches.get(key);
    if (!c) this.caches.set(key, (c = { blocks: new Map(), sequences: new Map() }));
    return c;
  }
}
