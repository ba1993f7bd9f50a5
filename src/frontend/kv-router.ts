// KV-aware routing (reference §5.1, §5.2): the router follows every worker's KV events and load on the event plane
// and sends a request to the worker where it costs least:
//   cost = overlap_score_weight × (request blocks the worker has not cached) + the worker's active (decode) blocks,
// ties broken at random; with a router temperature > 0 the worker is drawn from a softmax over the costs (min-max
// normalised, as Dynamo's router does) instead, trading cache hits for spread. A worker's cache is indexed by sequence hashes (tokens_hash chained block by block, as
// src/runtime/kv-hash.ts computes them), so the request's blocks match a worker's blocks only when the whole prefix
// up to them matches. Stored events name their parent by the engine's block hash: each worker's block hash →
// sequence hash map resolves it (a block whose parent is unknown, e.g. published before we subscribed, is dropped).
import type { NatsConnection } from 'nats';
import type { ActiveLoad, RouterEvent } from '../protocol/events.js';
import { subscribeKvEvents, subscribeLoad, type EventSubscription } from '../runtime/events/index.js';
import { blockTokensHashes, sequenceHashes } from '../runtime/kv-hash.js';

export interface KvRouterOptions {
  /** Tokens per KV block: the model card's kv_cache_block_size. */
  blockSize: number;
  /** Weight of the prefill (uncached) blocks against the decode blocks (default 1.0). */
  overlapScoreWeight?: number;
  /** 0 (default): the cheapest worker; > 0: softmax sampling over normalised costs at this temperature. */
  temperature?: number;
}

interface WorkerCache {
  /** Engine block hash → sequence hash. */
  blocks: Map<bigint, bigint>;
  /** Sequence hash → how many cached blocks have it. */
  sequences: Map<bigint, number>;
}

export interface KvRouteDecision {
  instanceId: bigint;
  /** Leading request blocks the chosen worker has cached. */
  overlapBlocks: number;
  requestBlocks: number;
  cost: number;
}

export class KvRouter {
  readonly blockSize: number;
  private readonly weight: number;
  private readonly temperature: number;
  private readonly caches = new Map<bigint, WorkerCache>();
  private readonly activeBlocks = new Map<bigint, number>();
  /** Blocks of requests this router sent that are still streaming, per worker (its load lags behind them). */
  private readonly routedBlocks = new Map<bigint, number>();
  private readonly subscriptions: EventSubscription<unknown>[] = [];

  constructor(options: KvRouterOptions) {
    this.blockSize = options.blockSize;
    this.weight = options.overlapScoreWeight ?? 1.0;
    this.temperature = options.temperature ?? 0;
  }

  /** Follows `namespace.{ns}.component.{comp}.kv-events` and `namespace.{ns}.kv_metrics` until close(). */
  static follow(nats: NatsConnection, namespace: string, component: string, options: KvRouterOptions, log?: (line: string) => void): KvRouter {
    const router = new KvRouter(options);
    const events = subscribeKvEvents(nats, namespace, component);
    const loads = subscribeLoad(nats, namespace);
    router.subscriptions.push(events, loads);
    const lost = (what: string) => (err: unknown) =>
      (log ?? ((line: string) => process.emitWarning(line, 'KvRouterWarning')))(`kv router: ${what} subscription ended: ${(err as Error).message}`);
    (async () => {
      for await (const { event } of events) router.applyEvent(event);
    })().catch(lost(events.subject));
    (async () => {
      for await (const { event } of loads) router.applyLoad(event);
    })().catch(lost(loads.subject));
    return router;
  }

  close(): void {
    for (const s of this.subscriptions) s.close();
  }

  applyEvent(e: RouterEvent): void {
    if (e.storage_tier !== 'device') return;
    const data = e.event.data;
    if (data === 'cleared') {
      this.caches.delete(e.worker_id);
      return;
    }
    const cache = this.cacheOf(e.worker_id);
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
    this.activeBlocks.set(load.worker_id, load.active_decode_blocks ?? load.kv_used_blocks ?? 0);
  }

  /** Sequence hashes of the request's full blocks. */
  sequenceHashesOf(tokenIds: ArrayLike<number>): bigint[] {
    return sequenceHashes(blockTokensHashes(tokenIds, this.blockSize));
  }

  /** Leading blocks of `sequence` that `instanceId` has cached. */
  overlap(instanceId: bigint, sequence: readonly bigint[]): number {
    const cache = this.caches.get(instanceId);
    if (!cache) return 0;
    let n = 0;
    while (n < sequence.length && cache.sequences.has(sequence[n])) n++;
    return n;
  }

  /** The cheapest of `candidates` (instance ids of live workers) for a request with these tokens. */
  select(tokenIds: ArrayLike<number>, candidates: readonly bigint[]): KvRouteDecision {
    if (candidates.length === 0) throw new RangeError('KvRouter.select: no candidates');
    const sequence = this.sequenceHashesOf(tokenIds);
    const requestBlocks = Math.ceil(tokenIds.length / this.blockSize);
    const decisions = candidates.map((id): KvRouteDecision => {
      const overlapBlocks = this.overlap(id, sequence);
      const decodeBlocks = Math.max(this.activeBlocks.get(id) ?? 0, this.routedBlocks.get(id) ?? 0);
      return { instanceId: id, overlapBlocks, requestBlocks, cost: this.weight * (requestBlocks - overlapBlocks) + decodeBlocks };
    });
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

  /** Counts a routed request's blocks against the worker until the returned release is called (stream ended). */
  track(instanceId: bigint, blocks: number): () => void {
    this.routedBlocks.set(instanceId, (this.routedBlocks.get(instanceId) ?? 0) + blocks);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.routedBlocks.get(instanceId) ?? 0) - blocks;
      if (left > 0) this.routedBlocks.set(instanceId, left);
      else this.routedBlocks.delete(instanceId);
    };
  }

  /** Forgets workers that are no longer candidates anywhere (they left discovery). */
  retain(live: ReadonlySet<bigint>): void {
    for (const id of this.caches.keys()) if (!live.has(id)) this.caches.delete(id);
    for (const id of this.activeBlocks.keys()) if (!live.has(id)) this.activeBlocks.delete(id);
    for (const id of this.routedBlocks.keys()) if (!live.has(id)) this.routedBlocks.delete(id);
  }

  private cacheOf(workerId: bigint): WorkerCache {
    let c = this.caches.get(workerId);
    if (!c) this.caches.set(workerId, (c = { blocks: new Map(), sequences: new Map() }));
    return c;
  }
}
