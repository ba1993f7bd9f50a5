// Discovery in etcd (reference §4.2): one primary lease per store, kept alive by the etcd3 package; every key is
// written with a create-if-absent transaction (version == 0) attached to that lease.
//
// Outages: calls fail while etcd is down, watches reconnect and resume from their last revision, and the lease
// survives an etcd restart (etcd persists leases and refreshes their TTL on restart). If the lease is lost anyway
// (etcd down for longer than twice the TTL, or the lease expired or was revoked), the store grants a new one,
// retrying until etcd answers, and writes every key it owns again, unchanged, under the new lease. The instance
// id stays the first lease's id so that keys, records and request paths that embed it stay valid; the worker keeps
// serving throughout. `onLeaseRenewed` reports the switch.
import { Etcd3, EtcdLeaseInvalidError, GRPCDeadlineExceededError, GRPCUnavailableError, type IOptions, type Lease } from 'etcd3';
import { LlmError } from '../../errors.js';
import { logger } from '../log.js';
import { OutageLog } from '../outage.js';
import { etcdClientSettings, redactUrl, scrubEtcdError } from '../credentials.js';
import { instanceIdFromLeaseId } from '../../protocol/discovery.js';
import {
  DEFAULT_LEASE_TTL_MS,
  LeaseListeners,
  WatchQueue,
  sortByKey,
  type DiscoveryStore,
  type DiscoveryWatch,
  type KeyValue,
  type WatchOptions,
} from './store.js';

export interface EtcdStoreOptions {
  /** Client URLs or host:port pairs, e.g. `http://127.0.0.1:2379`. */
  endpoints: string[];
  /** Lease TTL, rounded up to whole seconds (etcd itself enforces a minimum of about 2 s). */
  leaseTtlMs?: number;
  /** Where ETCD_AUTH_* (user, password, CA, client certificate) are read; default process.env. */
  env?: NodeJS.ProcessEnv;
}

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type HostPolicy = ReturnType<NonNullable<FaultHandling['host']>>;
type WatchBackoff = NonNullable<FaultHandling['watchBackoff']>;

// The etcd3 defaults (a 5 s circuit breaker per host, watch reconnects backing off to 30 s) would keep a worker
// away from a restarted etcd for many seconds; we retry ourselves, so calls go straight through and watches
// reconnect within a second.
const passThrough: HostPolicy = {
  _altReturn: undefined as never,
  onSuccess: () => ({ dispose: () => undefined }),
  onFailure: () => ({ dispose: () => undefined }),
  execute: (fn) => Promise.resolve().then(() => fn({ signal: new AbortController().signal })),
};

function watchBackoff(duration: number): WatchBackoff {
  return { duration, next: () => watchBackoff(Math.min(duration * 2, 1000)) };
}

const CALL_DEADLINE_MS = 5_000;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export class EtcdStore implements DiscoveryStore {
  readonly backend = 'etcd';
  readonly location: string;
  readonly instanceId: bigint;
  private currentLeaseId: bigint;
  private lease: Lease;
  private readonly owned = new Map<string, string>();
  private readonly watches = new Set<WatchQueue>();
  private readonly leaseListeners = new LeaseListeners();
  private renewing: Promise<void> | undefined;
  private closed = false;
  /** etcd going away and coming back, logged once each (watches, the lease). */
  private readonly outage: OutageLog;

  private constructor(
    private readonly client: Etcd3,
    private readonly ttlSec: number,
    location: string,
    lease: Lease,
    leaseId: bigint,
  ) {
    this.location = location;
    this.outage = new OutageLog(logger('runtime.discovery'), `etcd at ${location}`);
    this.lease = lease;
    this.instanceId = leaseId;
    this.currentLeaseId = leaseId;
    this.watchLease(lease);
  }

  /** Connects and grants the primary lease; LLM_ERR_DISCOVERY naming the server if etcd does not answer. */
  static async connect(options: EtcdStoreOptions): Promise<EtcdStore> {
    if (options.endpoints.length === 0) throw new LlmError('LLM_ERR_CONFIG', 'etcd: no endpoints given');
    const hosts = options.endpoints.map((e) => redactUrl(e).replace(/^[a-z]+:\/\//, ''));
    const location = `etcd at ${hosts.join(',')}`;
    const settings = etcdClientSettings(options.endpoints, options.env);
    const client = new Etcd3({
      hosts: settings.hosts,
      ...(settings.auth !== undefined ? { auth: settings.auth } : {}),
      ...(settings.credentials !== undefined ? { credentials: settings.credentials } : {}),
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + CALL_DEADLINE_MS }),
      faultHandling: { host: () => passThrough, global: passThrough, watchBackoff: watchBackoff(100) },
    });
    const ttlSec = Math.max(1, Math.ceil((options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS) / 1000));
    const lease = client.lease(ttlSec);
    try {
      const id = await lease.grant();
      return new EtcdStore(client, ttlSec, location, lease, instanceIdFromLeaseId(id));
    } catch (err) {
      client.close();
      const described = describeError(location, 'granting the primary lease', err);
      throw new LlmError(described.code, scrubEtcdError(settings, described.message));
    }
  }

  get leaseId(): bigint {
    return this.currentLeaseId;
  }

  async put(key: string, value: string): Promise<void> {
    this.checkOpen();
    for (let attempt = 0; ; attempt++) {
      await this.renewing;
      const leaseId = this.currentLeaseId;
      try {
        const result = await this.client
          .if(key, 'Version', '==', 0)
          .then(this.client.put(key).value(value).lease(leaseId.toString()))
          .commit();
        if (!result.succeeded) throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: key "${key}" already exists`);
        this.owned.set(key, value);
        return;
      } catch (err) {
        if (err instanceof EtcdLeaseInvalidError && attempt === 0) {
          this.leaseLost(this.lease);
          continue;
        }
        throw describeError(this.location, `creating "${key}"`, err);
      }
    }
  }

  async delete(key: string): Promise<void> {
    this.checkOpen();
    await this.renewing;
    this.owned.delete(key);
    try {
      await this.client.delete().key(key).exec();
    } catch (err) {
      throw describeError(this.location, `deleting "${key}"`, err);
    }
  }

  async get(prefix: string): Promise<KeyValue[]> {
    this.checkOpen();
    return (await this.range(prefix)).kvs;
  }

  watch(prefix: string, options: WatchOptions = {}): DiscoveryWatch {
    this.checkOpen();
    let cancel = () => undefined as void;
    const queue = new WatchQueue(() => {
      this.watches.delete(queue);
      cancel();
    });
    this.watches.add(queue);
    let first = true;
    // Snapshot at revision R, then watch from R + 1: nothing is missed in between. If etcd cancels the watch (its
    // start revision was compacted away), start over from a new snapshot; the queue reports only the difference.
    const follow = async (): Promise<void> => {
      while (!queue.isClosed) {
        try {
          const { kvs, revision } = await this.range(prefix);
          this.outage.up();
          if (queue.isClosed) return;
          if (first && !(options.snapshot ?? true)) queue.seed(kvs);
          else queue.resync(kvs);
          first = false;
          const watcher = await this.client
            .watch()
            .prefix(prefix)
            .startRevision((revision + 1n).toString())
            .create();
          if (queue.isClosed) {
            void watcher.cancel().catch(() => undefined);
            return;
          }
          watcher.on('put', (kv) => queue.push({ type: 'put', key: kv.key.toString(), value: kv.value.toString() }));
          watcher.on('delete', (kv) => queue.push({ type: 'delete', key: kv.key.toString() }));
          await new Promise<void>((resolve) => {
            cancel = () => {
              void watcher.cancel().catch(() => undefined);
              resolve();
            };
            // `on`, not `once`: an emitter throws on an 'error' nobody listens to
            watcher.on('error', () => {
              void watcher.cancel().catch(() => undefined);
              resolve();
            });
          });
        } catch (err) {
          if (!queue.isClosed && !this.closed) this.outage.down(`a watch of "${prefix}" cannot resume (${(err as Error).message})`);
          await sleep(200); // etcd unreachable: keep trying until it answers or the watch closes
        }
      }
    };
    void follow();
    return queue;
  }

  onLeaseRenewed(listener: (leaseId: bigint) => void): () => void {
    return this.leaseListeners.add(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const queue of [...this.watches]) queue.close();
    this.owned.clear();
    try {
      await Promise.race([this.lease.revoke(), sleep(2_000)]);
    } catch {
      // unreachable etcd: the lease expires on its own within its TTL
    }
    this.client.close();
  }

  // -------------------------------------------------------------------------------------------------------------

  private async range(prefix: string): Promise<{ kvs: KeyValue[]; revision: bigint }> {
    try {
      const res = await this.client.getAll().prefix(prefix).exec();
      return {
        kvs: sortByKey(res.kvs.map((kv) => ({ key: kv.key.toString(), value: kv.value.toString() }))),
        revision: BigInt(res.header.revision),
      };
    } catch (err) {
      throw describeError(this.location, `reading "${prefix}"`, err);
    }
  }

  private watchLease(lease: Lease): void {
    lease.on('lost', () => this.leaseLost(lease));
  }

  private leaseLost(lease: Lease): void {
    if (this.closed || lease !== this.lease || this.renewing) return;
    this.outage.down('the lease could not be kept alive; its keys are written again under a new lease once etcd answers');
    this.renewing = this.renewLease().finally(() => (this.renewing = undefined));
  }

  /** Grants a new lease and rewrites every owned key under it, retrying until etcd answers or the store closes. */
  private async renewLease(): Promise<void> {
    let delay = 100;
    while (!this.closed) {
      const lease = this.client.lease(this.ttlSec);
      try {
        const leaseId = await lease.grant();
        for (const [key, value] of this.owned) await this.client.put(key).value(value).lease(leaseId);
        this.lease.release();
        this.lease = lease;
        this.currentLeaseId = instanceIdFromLeaseId(leaseId);
        this.watchLease(lease);
        this.leaseListeners.emit(this.currentLeaseId);
        this.outage.up();
        return;
      } catch {
        lease.release();
        await sleep(delay);
        delay = Math.min(delay * 2, 1000);
      }
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new LlmError('LLM_ERR_DISCOVERY', `${this.location}: used after close`);
  }
}

function describeError(location: string, doing: string, err: unknown): LlmError {
  if (err instanceof LlmError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const unreachable = err instanceof GRPCUnavailableError || err instanceof GRPCDeadlineExceededError;
  return new LlmError(
    'LLM_ERR_DISCOVERY',
    unreachable ? `${location} unreachable (${doing}): ${message}` : `${location}: ${doing} failed: ${message}`,
    { cause: err },
  );
}
