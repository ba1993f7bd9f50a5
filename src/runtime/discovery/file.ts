// Discovery in a directory shared by the processes of one host.
//
//   {root}/leases/{lease:x}.json   {"pid", "ttl_ms"}; its mtime is the lease's last keep-alive (touched every ttl/3)
//   {root}/keys/{encodeURIComponent(key)}   {"lease": "{lease:x}", "value": "..."}
//   {root}/tmp/                    staging: every file is written here, then linked (create-if-absent) or renamed
//
// A key whose lease file is missing or older than its TTL is dead: readers treat it as absent and delete it (and
// the lease file), so a SIGKILLed process leaves discovery within its TTL plus one rescan. A live owner that finds
// its lease file gone (it stalled past its TTL and was reaped) writes it again and re-registers its keys.
// Watches follow the keys directory with fs.watch and also rescan periodically: lease expiry makes no fs event.
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  statSync,
  unlinkSync,
  utimesSync,
  watch as fsWatch,
  writeSync,
  type FSWatcher,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LlmError } from '../../errors.js';
import {
  DEFAULT_LEASE_TTL_MS,
  LeaseListeners,
  WatchQueue,
  randomLeaseId,
  sortByKey,
  type DiscoveryStore,
  type DiscoveryWatch,
  type KeyValue,
  type WatchOptions,
} from './store.js';

export interface FileStoreOptions {
  /** Default: $DYN_FILE_KV, else $TMPDIR/dynamo_store_kv. */
  root?: string;
  leaseTtlMs?: number;
}

interface KeyFile {
  lease: string;
  value: string;
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

export class FileStore implements DiscoveryStore {
  readonly backend = 'file';
  readonly location: string;
  readonly instanceId = randomLeaseId();
  readonly leaseId = this.instanceId;
  private readonly root: string;
  private readonly keysDir: string;
  private readonly leasesDir: string;
  private readonly tmpDir: string;
  private readonly leaseHex = this.leaseId.toString(16);
  private readonly ttlMs: number;
  private readonly owned = new Map<string, string>();
  private readonly watches = new Map<WatchQueue, string>();
  private readonly leaseListeners = new LeaseListeners();
  private readonly keepAliveTimer: NodeJS.Timeout;
  private dirWatcher: FSWatcher | undefined;
  private rescanTimer: NodeJS.Timeout | undefined;
  private rescanSoon: NodeJS.Timeout | undefined;
  private tmpCounter = 0;
  private closed = false;

  constructor(options: FileStoreOptions = {}) {
    this.root = options.root ?? process.env.DYN_FILE_KV ?? join(tmpdir(), 'dynamo_store_kv');
    this.location = `file store at ${this.root}`;
    this.ttlMs = options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
    this.keysDir = join(this.root, 'keys');
    this.leasesDir = join(this.root, 'leases');
    this.tmpDir = join(this.root, 'tmp');
    try {
      for (const dir of [this.keysDir, this.leasesDir, this.tmpDir]) mkdirSync(dir, { recursive: true });
    } catch (err) {
      throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: cannot create its directories (${(err as Error).message})`);
    }
    this.removeStaleStaging();
    this.writeLeaseFile();
    this.keepAliveTimer = setInterval(() => this.keepAlive(), Math.max(50, Math.floor(this.ttlMs / 3)));
    this.keepAliveTimer.unref();
  }

  async put(key: string, value: string): Promise<void> {
    this.checkOpen();
    const path = this.keyPath(key);
    const staged = this.stage(JSON.stringify({ lease: this.leaseHex, value } satisfies KeyFile));
    try {
      if (!this.tryLink(staged, path)) {
        // an existing key of a dead lease is absent: reap it and try once more
        const existing = this.readKeyFile(path);
        if (existing && !this.leaseAlive(existing.lease, new Map())) this.reap(path, existing.lease);
        if (!this.tryLink(staged, path)) {
          throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: key "${key}" already exists`);
        }
      }
    } finally {
      this.unlinkQuiet(staged);
    }
    this.owned.set(key, value);
    this.scheduleRescan();
  }

  async delete(key: string): Promise<void> {
    this.checkOpen();
    this.owned.delete(key);
    this.unlinkQuiet(this.keyPath(key));
    this.scheduleRescan();
  }

  async get(prefix: string): Promise<KeyValue[]> {
    this.checkOpen();
    return this.scan(prefix);
  }

  watch(prefix: string, options: WatchOptions = {}): DiscoveryWatch {
    this.checkOpen();
    const queue = new WatchQueue(() => {
      this.watches.delete(queue);
      if (this.watches.size === 0) this.stopFollowing();
    });
    const current = this.scan(prefix);
    if (options.snapshot ?? true) queue.resync(current);
    else queue.seed(current);
    this.watches.set(queue, prefix);
    this.startFollowing();
    return queue;
  }

  onLeaseRenewed(listener: (leaseId: bigint) => void): () => void {
    return this.leaseListeners.add(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    clearInterval(this.keepAliveTimer);
    for (const key of this.owned.keys()) this.unlinkQuiet(this.keyPath(key));
    this.owned.clear();
    this.unlinkQuiet(this.leasePath(this.leaseHex));
    this.closed = true;
    for (const queue of [...this.watches.keys()]) queue.close();
  }

  // -------------------------------------------------------------------------------------------------------------

  private keyPath(key: string): string {
    if (key.length === 0) throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: empty key`);
    return join(this.keysDir, encodeURIComponent(key));
  }

  private leasePath(leaseHex: string): string {
    return join(this.leasesDir, `${leaseHex}.json`);
  }

  /** Writes `content` to a fresh file in tmp/ and returns its path. */
  private stage(content: string): string {
    const path = join(this.tmpDir, `${this.leaseHex}-${this.tmpCounter++}-${randomBytes(4).toString('hex')}`);
    try {
      const fd = openSync(path, 'wx');
      try {
        writeSync(fd, content);
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: cannot write ${path} (${(err as Error).message})`);
    }
    return path;
  }

  /** Hard-links staged → path; false if path exists (link never replaces: this is the create-if-absent). */
  private tryLink(staged: string, path: string): boolean {
    try {
      linkSync(staged, path);
      return true;
    } catch (err) {
      if (errno(err) === 'EEXIST') return false;
      throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: cannot create ${path} (${(err as Error).message})`);
    }
  }

  /** Staging files a crashed process left behind (its write never completed); a minute is far past any write. */
  private removeStaleStaging(): void {
    const cutoff = Date.now() - 60_000;
    for (const name of readdirSync(this.tmpDir)) {
      const path = join(this.tmpDir, name);
      try {
        if (statSync(path).mtimeMs < cutoff) unlinkSync(path);
      } catch {
        // removed by another process meanwhile
      }
    }
  }

  private writeLeaseFile(): void {
    const staged = this.stage(JSON.stringify({ pid: process.pid, ttl_ms: this.ttlMs }));
    try {
      renameSync(staged, this.leasePath(this.leaseHex));
    } catch (err) {
      this.unlinkQuiet(staged);
      throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: cannot write lease file (${(err as Error).message})`);
    }
  }

  private keepAlive(): void {
    const now = new Date();
    try {
      utimesSync(this.leasePath(this.leaseHex), now, now);
      return;
    } catch (err) {
      if (errno(err) !== 'ENOENT') return; // transient (e.g. EMFILE): the next tick tries again
    }
    // Reaped as dead while this process stalled: take the lease back and re-register what it owns.
    try {
      this.writeLeaseFile();
      for (const [key, value] of this.owned) {
        const staged = this.stage(JSON.stringify({ lease: this.leaseHex, value } satisfies KeyFile));
        renameSync(staged, this.keyPath(key));
      }
      this.leaseListeners.emit(this.leaseId);
      this.scheduleRescan();
    } catch {
      // the directory is unwritable right now; the next tick tries again
    }
  }

  private readKeyFile(path: string): KeyFile | undefined {
    try {
      const parsed = JSON.parse(readFileSync(path, 'utf8')) as Partial<KeyFile>;
      return typeof parsed.lease === 'string' && typeof parsed.value === 'string'
        ? { lease: parsed.lease, value: parsed.value }
        : undefined;
    } catch {
      return undefined; // vanished between readdir and read, or not ours
    }
  }

  /** Whether a lease is alive; `cache` spares repeated stats within one scan. */
  private leaseAlive(leaseHex: string, cache: Map<string, boolean>): boolean {
    if (leaseHex === this.leaseHex && !this.closed) return true;
    const cached = cache.get(leaseHex);
    if (cached !== undefined) return cached;
    let alive = false;
    try {
      const path = this.leasePath(leaseHex);
      const mtime = statSync(path).mtimeMs;
      const { ttl_ms: ttl } = JSON.parse(readFileSync(path, 'utf8')) as { ttl_ms?: unknown };
      alive = Date.now() - mtime <= (typeof ttl === 'number' ? ttl : DEFAULT_LEASE_TTL_MS);
    } catch {
      alive = false;
    }
    cache.set(leaseHex, alive);
    return alive;
  }

  private reap(keyPath: string, leaseHex: string): void {
    this.unlinkQuiet(keyPath);
    this.unlinkQuiet(this.leasePath(leaseHex));
  }

  private scan(prefix: string): KeyValue[] {
    let names: string[];
    try {
      names = readdirSync(this.keysDir);
    } catch (err) {
      throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: cannot list keys (${(err as Error).message})`);
    }
    const leases = new Map<string, boolean>();
    const out: KeyValue[] = [];
    for (const name of names) {
      let key: string;
      try {
        key = decodeURIComponent(name);
      } catch {
        continue;
      }
      if (!key.startsWith(prefix)) continue;
      const path = join(this.keysDir, name);
      const file = this.readKeyFile(path);
      if (!file) continue;
      if (this.leaseAlive(file.lease, leases)) out.push({ key, value: file.value });
      else this.reap(path, file.lease);
    }
    return sortByKey(out);
  }

  private startFollowing(): void {
    if (this.dirWatcher) return;
    try {
      this.dirWatcher = fsWatch(this.keysDir, () => this.scheduleRescan());
      this.dirWatcher.on('error', () => this.restartFollowing());
    } catch {
      this.dirWatcher = undefined; // periodic rescans still see everything
    }
    this.rescanTimer = setInterval(() => this.rescan(), Math.min(1000, Math.max(50, Math.floor(this.ttlMs / 4))));
    this.rescanTimer.unref();
  }

  private restartFollowing(): void {
    this.stopFollowing();
    if (!this.closed && this.watches.size > 0) this.startFollowing();
  }

  private stopFollowing(): void {
    this.dirWatcher?.close();
    this.dirWatcher = undefined;
    clearInterval(this.rescanTimer);
    clearTimeout(this.rescanSoon);
    this.rescanTimer = undefined;
    this.rescanSoon = undefined;
  }

  /** Coalesces bursts of fs events into one rescan a few ms later. */
  private scheduleRescan(): void {
    if (this.rescanSoon || this.watches.size === 0) return;
    this.rescanSoon = setTimeout(() => {
      this.rescanSoon = undefined;
      this.rescan();
    }, 5);
  }

  private rescan(): void {
    if (this.closed || this.watches.size === 0) return;
    let all: KeyValue[];
    try {
      all = this.scan('');
    } catch {
      return; // directory briefly unreadable; the next rescan tries again
    }
    for (const [queue, prefix] of this.watches) queue.resync(all.filter((kv) => kv.key.startsWith(prefix)));
  }

  private unlinkQuiet(path: string): void {
    try {
      unlinkSync(path);
    } catch {
      // already gone
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: used after close`);
  }
}
