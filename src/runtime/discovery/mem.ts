// In-process discovery: one key space shared by every store in the process (frontend and workers of
// `dynamo-sglang run`), each store holding its own lease; a store's keys go when it closes.
import { LlmError } from '../../errors.js';
import {
  LeaseListeners,
  WatchQueue,
  randomLeaseId,
  sortByKey,
  type DiscoveryStore,
  type DiscoveryWatch,
  type KeyValue,
  type WatchEvent,
  type WatchOptions,
} from './store.js';

interface Watcher {
  prefix: string;
  queue: WatchQueue;
}

const entries = new Map<string, { value: string; leaseId: bigint }>();
const watchers = new Set<Watcher>();

function notify(event: WatchEvent): void {
  for (const w of watchers) if (event.key.startsWith(w.prefix)) w.queue.push(event);
}

function snapshot(prefix: string): KeyValue[] {
  const out: KeyValue[] = [];
  for (const [key, { value }] of entries) if (key.startsWith(prefix)) out.push({ key, value });
  return sortByKey(out);
}

export class MemStore implements DiscoveryStore {
  readonly backend = 'mem';
  readonly location = 'memory store';
  readonly instanceId = randomLeaseId();
  readonly leaseId = this.instanceId;
  private readonly owned = new Set<string>();
  private readonly watches = new Set<WatchQueue>();
  private readonly leaseListeners = new LeaseListeners();
  private closed = false;

  async put(key: string, value: string): Promise<void> {
    this.checkOpen();
    if (entries.has(key)) throw new LlmError('LLM_ERR_DISCOVERY', `memory store: key "${key}" already exists`);
    entries.set(key, { value, leaseId: this.leaseId });
    this.owned.add(key);
    notify({ type: 'put', key, value });
  }

  async delete(key: string): Promise<void> {
    this.checkOpen();
    this.remove(key);
  }

  async get(prefix: string): Promise<KeyValue[]> {
    this.checkOpen();
    return snapshot(prefix);
  }

  watch(prefix: string, options: WatchOptions = {}): DiscoveryWatch {
    this.checkOpen();
    const watcher: Watcher = {
      prefix,
      queue: new WatchQueue(() => {
        watchers.delete(watcher);
        this.watches.delete(watcher.queue);
      }),
    };
    if (options.snapshot ?? true) watcher.queue.resync(snapshot(prefix));
    else watcher.queue.seed(snapshot(prefix));
    watchers.add(watcher);
    this.watches.add(watcher.queue);
    return watcher.queue;
  }

  onLeaseRenewed(listener: (leaseId: bigint) => void): () => void {
    return this.leaseListeners.add(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    for (const key of [...this.owned]) if (entries.get(key)?.leaseId === this.leaseId) this.remove(key);
    this.closed = true;
    for (const queue of [...this.watches]) queue.close();
  }

  private remove(key: string): void {
    this.owned.delete(key);
    if (entries.delete(key)) notify({ type: 'delete', key });
  }

  private checkOpen(): void {
    if (this.closed) throw new LlmError('LLM_ERR_DISCOVERY', 'memory store: used after close');
  }
}
