// The discovery store contract shared by the mem, file and etcd backends: a key-value store whose writes belong to
// the process's primary lease, so that they vanish when the process goes (close, crash, lost connection).
import { randomBytes } from 'node:crypto';

export type DiscoveryBackend = 'mem' | 'file' | 'etcd';

/** Lease time-to-live of every backend unless a test asks for less (reference §4.2). */
export const DEFAULT_LEASE_TTL_MS = 10_000;

export interface KeyValue {
  key: string;
  value: string;
}

export type WatchEvent = { type: 'put'; key: string; value: string } | { type: 'delete'; key: string };

export interface WatchOptions {
  /** Start with one `put` per key already present (default true), then follow changes. */
  snapshot?: boolean;
}

/** Changes under a prefix, in order, until `close()` (or the store's close) ends the iteration. */
export interface DiscoveryWatch extends AsyncIterable<WatchEvent> {
  /** Resolves once the initial state is in the queue (the snapshot's puts, or nothing when skipped). */
  readonly synced: Promise<void>;
  close(): void;
}

export interface DiscoveryStore {
  readonly backend: DiscoveryBackend;
  /** Names the store in messages: "etcd at 127.0.0.1:2379", "file store at /tmp/x", "memory store". */
  readonly location: string;
  /**
   * This process's instance id: the id of the first primary lease, fixed for the store's life. If the etcd lease is
   * lost and replaced, the store re-registers every key it owns unchanged, so keys, records and request-plane paths
   * that embed the instance id stay valid; `leaseId` then differs from `instanceId`.
   */
  readonly instanceId: bigint;
  /** The lease currently holding this process's keys. */
  readonly leaseId: bigint;
  /** Creates `key` under the primary lease; LLM_ERR_DISCOVERY if it already exists. */
  put(key: string, value: string): Promise<void>;
  /** Removes `key` (no error if absent). */
  delete(key: string): Promise<void>;
  /** Every live key under `prefix`, sorted by key. */
  get(prefix: string): Promise<KeyValue[]>;
  watch(prefix: string, options?: WatchOptions): DiscoveryWatch;
  /** Called after a lost lease was replaced and every owned key re-registered: etcd grants a new lease id; the file
   * store takes its own id back after a stall got it reaped; the memory store never loses its lease. */
  onLeaseRenewed(listener: (leaseId: bigint) => void): () => void;
  /** Revokes the lease: every key this store put disappears. Further calls fail; watches end. */
  close(): Promise<void>;
}

/** A random non-zero 63-bit id, for stores whose leases are not issued by a server. */
export function randomLeaseId(): bigint {
  const id = randomBytes(8).readBigUInt64BE() >> 1n;
  return id === 0n ? 1n : id;
}

/**
 * The event queue behind a watch, with the keys it has reported so far: a backend that loses track (reconnect,
 * missed fs events) hands it a fresh snapshot via `resync` and the difference comes out as puts and deletes.
 */
export class WatchQueue implements DiscoveryWatch {
  private readonly pending: WatchEvent[] = [];
  private waiter: ((r: IteratorResult<WatchEvent>) => void) | undefined;
  private closed = false;
  private readonly known = new Map<string, string>();
  private markSynced: () => void = () => undefined;
  readonly synced = new Promise<void>((resolve) => (this.markSynced = resolve));

  constructor(private readonly onClose: () => void = () => undefined) {}

  push(event: WatchEvent): void {
    if (this.closed) return;
    if (event.type === 'put') {
      if (this.known.get(event.key) === event.value) return;
      this.known.set(event.key, event.value);
    } else {
      if (!this.known.delete(event.key)) return;
    }
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = undefined;
      waiter({ value: event, done: false });
    } else {
      this.pending.push(event);
    }
  }

  /** Takes `current` as already reported, without emitting it (a watch that skips the snapshot). */
  seed(current: readonly KeyValue[]): void {
    for (const { key, value } of current) this.known.set(key, value);
    this.markSynced();
  }

  /** Reports the difference between what was reported and `current` (the full live set under the prefix). */
  resync(current: readonly KeyValue[]): void {
    const live = new Set<string>();
    for (const { key, value } of current) {
      live.add(key);
      this.push({ type: 'put', key, value });
    }
    for (const key of [...this.known.keys()]) if (!live.has(key)) this.push({ type: 'delete', key });
    this.markSynced();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
    this.markSynced();
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    return {
      next: () => {
        const event = this.pending.shift();
        if (event) return Promise.resolve({ value: event, done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (this.waiter = resolve));
      },
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** Listener list for `onLeaseRenewed`. */
export class LeaseListeners {
  private readonly listeners = new Set<(leaseId: bigint) => void>();

  add(listener: (leaseId: bigint) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(leaseId: bigint): void {
    for (const listener of this.listeners) listener(leaseId);
  }
}

export function sortByKey(kvs: KeyValue[]): KeyValue[] {
  return kvs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}
