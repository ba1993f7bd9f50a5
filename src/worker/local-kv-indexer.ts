// The worker's local KV indexer (reference §5.1, Dynamo's LocalKvIndexer): every RouterEvent this worker publishes
// is also kept here, the last 1024 in a ring (with their event ids) and their net effect as a map of the cached
// blocks, so `worker_kv_indexer_query_dp0` can answer a router that subscribed late: the events it missed when they
// are still in the ring, otherwise a dump of every cached block (stored events with synthetic ids 0.., the answer
// Dynamo calls TreeDump) together with the newest real event id, after which its live events continue.
import type { RouterEvent, StorageTier } from '../protocol/events.js';
import { WORKER_KV_INDEXER_BUFFER_SIZE, type WorkerKvQueryRequest, type WorkerKvQueryResponse } from '../protocol/kv-query.js';

interface CachedBlock {
  parent: bigint | null;
  tokensHash: bigint;
  tier: StorageTier;
}

export class LocalKvIndexer {
  /** The newest events, oldest at `head` once the ring is full. */
  private readonly ring: RouterEvent[] = [];
  private head = 0;
  /** Block hash → what a stored event said about it, for blocks not removed since. */
  private readonly blocks = new Map<bigint, CachedBlock>();

  constructor(
    readonly workerId: bigint,
    readonly dpRank = 0,
    readonly capacity = WORKER_KV_INDEXER_BUFFER_SIZE,
  ) {}

  /** Cached blocks now. */
  get blockCount(): number {
    return this.blocks.size;
  }

  /** Events in the ring, oldest first. */
  buffered(): RouterEvent[] {
    return [...this.ring.slice(this.head), ...this.ring.slice(0, this.head)];
  }

  /** Keeps a published event (called in publishing order, ids consecutive). */
  record(event: RouterEvent): void {
    if (this.ring.length < this.capacity) this.ring.push(event);
    else {
      this.ring[this.head] = event;
      this.head = (this.head + 1) % this.capacity;
    }
    const data = event.event.data;
    if (data === 'cleared') this.blocks.clear();
    else if ('removed' in data) for (const h of data.removed.block_hashes) this.blocks.delete(h);
    else {
      let parent = data.stored.parent_hash;
      for (const b of data.stored.blocks) {
        this.blocks.set(b.block_hash, { parent, tokensHash: b.tokens_hash, tier: event.storage_tier });
        parent = b.block_hash;
      }
    }
  }

  /** Answers a router's query (Dynamo's get_events_in_id_range). */
  query(request: WorkerKvQueryRequest): WorkerKvQueryResponse {
    if (request.worker_id !== this.workerId) {
      return { Error: `worker_id mismatch: the request names ${request.worker_id}, this worker is ${this.workerId}` };
    }
    if ((request.dp_rank ?? this.dpRank) !== this.dpRank) {
      return { Error: `dp_rank mismatch: the request names ${request.dp_rank}, this endpoint serves ${this.dpRank}` };
    }
    const start = request.start_event_id ?? null;
    const end = request.end_event_id ?? null;
    if (start !== null && end !== null && end < start) return { InvalidRange: { start_id: start, end_id: end } };
    const events = this.buffered();
    const first = events.at(0)?.event.event_id ?? null;
    const last = events.at(-1)?.event.event_id ?? null;
    if (start === null || first === null || last === null || start < first) return { TreeDump: { events: this.dump(), last_event_id: last ?? 0n } };
    if (start > last) return { TooNew: { requested_start: start, requested_end: end, newest_available: last } };
    return { Events: { events: events.filter((e) => e.event.event_id >= start), last_event_id: last } };
  }

  /** Every cached block as stored events, parents before children: one event per chain (run of single children). */
  dump(): RouterEvent[] {
    const children = new Map<bigint | null, bigint[]>();
    for (const [hash, block] of this.blocks) {
      // a block whose parent is gone (not expected: eviction takes leaves first) starts a chain of its own
      const parent = block.parent !== null && this.blocks.has(block.parent) ? block.parent : null;
      let list = children.get(parent);
      if (list === undefined) children.set(parent, (list = []));
      list.push(hash);
    }
    const out: RouterEvent[] = [];
    const starts: bigint[] = [...(children.get(null) ?? [])];
    while (starts.length > 0) {
      let hash = starts.pop()!;
      const first = this.blocks.get(hash)!;
      const run = [];
      for (;;) {
        const block = this.blocks.get(hash)!;
        run.push({ block_hash: hash, tokens_hash: block.tokensHash });
        const next = children.get(hash);
        if (next === undefined || next.length === 0 || this.blocks.get(next[0])!.tier !== first.tier) {
          if (next) starts.push(...next);
          break;
        }
        starts.push(...next.slice(1));
        hash = next[0];
      }
      const parent = first.parent !== null && this.blocks.has(first.parent) ? first.parent : null;
      out.push({
        worker_id: this.workerId,
        storage_tier: first.tier,
        event: { event_id: BigInt(out.length), dp_rank: this.dpRank, data: { stored: { parent_hash: parent, start_position: null, blocks: run } } },
      });
    }
    return out;
  }
}
