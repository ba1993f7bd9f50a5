// Worker → router KV cache events (reference §5.1): the engine reports blocks stored, removed and cleared; we turn
// them into RouterEvents, each with the next event_id of this publisher, and publish them on
// `namespace.{ns}.component.{comp}.kv-events`. Events arriving within a short window are coalesced first: a
// stored run that continues the pending one (its parent is the pending run's last block) is appended to it,
// removals are concatenated, and a clear makes whatever was pending moot.
import type { NatsConnection } from 'nats';
import { LlmError } from '../../errors.js';
import {
  KV_EVENTS_TOPIC,
  encodeRouterEvent,
  type KvCacheEventData,
  type RouterEvent,
  type StorageTier,
} from '../../protocol/events.js';
import { encodeRouterEvent08 } from '../../protocol/events-0.8.js';
import { DEFAULT_WIRE_PROFILE, type WireProfile } from '../../protocol/wire-profile.js';
import { KV_HASH_SEED, blockTokensHashes } from '../kv-hash.js';
import { xxh3_64 } from '../xxh3.js';
import type { KvEventsStream08 } from './jetstream.js';
import { EventPublisher } from './plane.js';

/** One engine "blocks stored" report (SGLang's BlockStored): full blocks, in sequence order. */
export interface BlocksStored {
  /** The engine's block hashes (opaque ids; signed i64 values are taken as their u64 bit pattern). */
  blockHashes: readonly (bigint | number)[];
  /** The engine hash of the block before the first one, null at the start of a sequence. */
  parentBlockHash?: bigint | number | null;
  /** The tokens of all these blocks: blockHashes.length × blockSize ids. */
  tokenIds: ArrayLike<number>;
  blockSize: number;
  loraName?: string | null;
  /** Engine storage medium: GPU (default), CPU_PINNED, CPU, DISK. */
  medium?: string | null;
}

export interface KvEventPublisherOptions {
  namespace: string;
  /** `backend` or `prefill`. */
  component: string;
  /** The worker's discovery instance id (also the envelope's publisher id). */
  workerId: bigint;
  dpRank?: number;
  /** How long an event may wait for others to coalesce with (default 5 ms; 0 = until the current task ends). */
  batchWindowMs?: number;
  /** A pending stored run is published once it has this many blocks (default 256). */
  maxBatchBlocks?: number;
  /** Sees every event just before it is published (the worker's local indexer keeps them). */
  onPublish?: (event: RouterEvent) => void;
  /** 0.8: JSON RouterEvent without envelope (default); main: msgpack in an EventEnvelope. */
  wireProfile?: WireProfile;
  /** 0.8 without the local indexer: the events go into this JetStream stream instead of NATS core. */
  stream08?: KvEventsStream08;
}

/** Storage tier of an engine medium name. */
export function storageTierOf(medium: string | null | undefined): StorageTier {
  switch ((medium ?? 'GPU').toUpperCase()) {
    case 'GPU':
      return 'device';
    case 'CPU_PINNED':
    case 'CPU':
      return 'host_pinned';
    case 'DISK':
      return 'disk';
    default:
      return 'external';
  }
}

/** The tokens_hash seed: 1337, or 1337 + xxh3(lora name) for a LoRA adapter's blocks. */
export function kvHashSeed(loraName?: string | null): bigint {
  if (!loraName) return KV_HASH_SEED;
  return BigInt.asUintN(64, KV_HASH_SEED + xxh3_64(new TextEncoder().encode(loraName)));
}

function u64(hash: bigint | number): bigint {
  return BigInt.asUintN(64, BigInt(hash));
}

interface Pending {
  tier: StorageTier;
  data: KvCacheEventData;
}

export class KvEventPublisher {
  private readonly publisher: EventPublisher;
  private readonly workerId: bigint;
  private readonly dpRank: number;
  private readonly windowMs: number;
  private readonly maxBatchBlocks: number;
  private readonly onPublish: ((event: RouterEvent) => void) | undefined;
  private readonly stream08: KvEventsStream08 | undefined;
  private nextEventId = 0n;
  private pending: Pending | undefined;
  private timeout: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;

  constructor(connection: NatsConnection, options: KvEventPublisherOptions) {
    this.publisher = new EventPublisher(
      connection,
      { namespace: options.namespace, component: options.component, topic: KV_EVENTS_TOPIC },
      options.workerId,
      options.wireProfile ?? DEFAULT_WIRE_PROFILE,
    );
    this.workerId = options.workerId;
    this.dpRank = options.dpRank ?? 0;
    this.windowMs = options.batchWindowMs ?? 5;
    this.maxBatchBlocks = options.maxBatchBlocks ?? 256;
    this.onPublish = options.onPublish;
    this.stream08 = options.stream08;
  }

  /** Where the events go: the NATS core subject, or the JetStream subject in 0.8 without the local indexer. */
  get subject(): string {
    return this.stream08?.subject ?? this.publisher.subject;
  }

  stored(input: BlocksStored): void {
    const count = input.blockHashes.length;
    if (input.tokenIds.length !== count * input.blockSize) {
      throw new LlmError(
        'LLM_ERR_INTERNAL',
        `kv event: ${count} blocks of ${input.blockSize} tokens need ${count * input.blockSize} token ids, got ${input.tokenIds.length}`,
      );
    }
    const tier = storageTierOf(input.medium);
    const hashes = input.blockHashes.map(u64);
    if (new Set(hashes).size !== hashes.length) {
      // the reference drops such an event, publishing an empty removal in its place
      this.enqueue({ tier, data: { removed: { block_hashes: [] } } });
      return;
    }
    const seed = kvHashSeed(input.loraName);
    const tokensHashes = blockTokensHashes(input.tokenIds, input.blockSize, seed);
    const blocks = hashes.map((blockHash, i) => ({ block_hash: blockHash, tokens_hash: tokensHashes[i] }));
    const parent = input.parentBlockHash === undefined || input.parentBlockHash === null ? null : u64(input.parentBlockHash);
    const pending = this.pending;
    if (pending && pending.tier === tier && typeof pending.data === 'object' && 'stored' in pending.data && parent !== null) {
      const run = pending.data.stored.blocks;
      if (run.length > 0 && run[run.length - 1].block_hash === parent) {
        run.push(...blocks);
        if (run.length >= this.maxBatchBlocks) this.flush();
        return;
      }
    }
    this.enqueue({ tier, data: { stored: { parent_hash: parent, start_position: null, blocks } } });
  }

  removed(blockHashes: readonly (bigint | number)[], medium?: string | null): void {
    const tier = storageTierOf(medium);
    const hashes = blockHashes.map(u64);
    const pending = this.pending;
    if (pending && pending.tier === tier && typeof pending.data === 'object' && 'removed' in pending.data) {
      pending.data.removed.block_hashes.push(...hashes);
      return;
    }
    this.enqueue({ tier, data: { removed: { block_hashes: hashes } } });
  }

  /** Every block of this worker is gone: anything still pending is moot. */
  cleared(): void {
    if (this.pending?.data === 'cleared') return;
    this.pending = undefined;
    this.enqueue({ tier: 'device', data: 'cleared' });
  }

  /** Publishes what is pending now. */
  flush(): void {
    this.cancelTimer();
    const pending = this.pending;
    if (!pending) return;
    this.pending = undefined;
    const event: RouterEvent = {
      worker_id: this.workerId,
      storage_tier: pending.tier,
      event: { event_id: this.nextEventId++, data: pending.data, dp_rank: this.dpRank },
    };
    this.onPublish?.(event);
    if (this.stream08) this.stream08.publish(encodeRouterEvent08(event));
    else this.publisher.publish(this.publisher.wireProfile === '0.8' ? encodeRouterEvent08(event) : encodeRouterEvent(event));
  }

  close(): void {
    this.flush();
  }

  private enqueue(next: Pending): void {
    if (this.pending) this.flush();
    this.pending = next;
    if (this.timeout || this.immediate) return;
    if (this.windowMs > 0) this.timeout = setTimeout(() => this.flush(), this.windowMs);
    else this.immediate = setImmediate(() => this.flush());
  }

  private cancelTimer(): void {
    clearTimeout(this.timeout);
    clearImmediate(this.immediate);
    this.timeout = undefined;
    this.immediate = undefined;
  }
}
