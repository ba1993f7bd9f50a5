// Typed discovery on top of a store: endpoint instances, model cards and event channels under the reference keys
// (§4.2), and live lists of them for clients that follow instances as they come and go.
import { LlmError } from '../../errors.js';
import {
  decodeDiscoveryRecord,
  encodeDiscoveryRecord,
  eventChannelKey,
  instanceKey,
  instancesPrefix,
  mdcKey,
  mdcPrefix,
  type DiscoveryRecord,
  type EventChannelRecord,
  type InstanceRecord,
  type ModelRecord,
  type Transport,
} from '../../protocol/discovery.js';
import { wireModelCard } from '../model-card.js';
import type { ModelDeploymentCard } from '../../protocol/mdc.js';
import { EtcdStore } from './etcd.js';
import { FileStore } from './file.js';
import { MemStore } from './mem.js';
import type { DiscoveryStore, DiscoveryWatch } from './store.js';

export { EtcdStore } from './etcd.js';
export { FileStore } from './file.js';
export { MemStore } from './mem.js';
export * from './store.js';

export type DiscoveryConfig =
  | { backend: 'mem' }
  | { backend: 'file'; root?: string; leaseTtlMs?: number }
  | { backend: 'etcd'; endpoints: string[]; leaseTtlMs?: number };

export async function openDiscoveryStore(config: DiscoveryConfig): Promise<DiscoveryStore> {
  switch (config.backend) {
    case 'mem':
      return new MemStore();
    case 'file':
      return new FileStore({ root: config.root, leaseTtlMs: config.leaseTtlMs });
    case 'etcd':
      return EtcdStore.connect({ endpoints: config.endpoints, leaseTtlMs: config.leaseTtlMs });
  }
}

export interface EndpointRegistration {
  namespace: string;
  component: string;
  endpoint: string;
  transport: Transport;
  deviceType?: string;
}

export interface ModelRegistration {
  namespace: string;
  component: string;
  endpoint: string;
  card: ModelDeploymentCard;
  /** A LoRA adapter's slug: the card goes under `.../{instance_id:x}/{lora_slug}`. */
  loraSlug?: string;
  modelSuffix?: string;
}

export interface EventChannelRegistration {
  namespace: string;
  component: string;
  topic: string;
  transport: EventChannelRecord['transport'];
}

export class Discovery {
  constructor(readonly store: DiscoveryStore) {}

  static async open(config: DiscoveryConfig): Promise<Discovery> {
    return new Discovery(await openDiscoveryStore(config));
  }

  /** This process's instance id (the primary lease id, lowercase hex in keys). */
  get instanceId(): bigint {
    return this.store.instanceId;
  }

  async registerEndpointInstance(r: EndpointRegistration): Promise<InstanceRecord> {
    const record: InstanceRecord = {
      type: 'Endpoint',
      namespace: r.namespace,
      component: r.component,
      endpoint: r.endpoint,
      instance_id: this.instanceId,
      transport: r.transport,
      ...(r.deviceType === undefined ? {} : { device_type: r.deviceType }),
    };
    await this.store.put(instanceKey(r.namespace, r.component, r.endpoint, this.instanceId), encodeDiscoveryRecord(record));
    return record;
  }

  /** Leaves the endpoint's instance list (graceful shutdown); the process keeps its lease and other keys. */
  async unregisterEndpointInstance(namespace: string, component: string, endpoint: string): Promise<void> {
    await this.store.delete(instanceKey(namespace, component, endpoint, this.instanceId));
  }

  async registerModel(r: ModelRegistration): Promise<ModelRecord> {
    const record: ModelRecord = {
      type: 'Model',
      namespace: r.namespace,
      component: r.component,
      endpoint: r.endpoint,
      instance_id: this.instanceId,
      card_json: await wireModelCard(r.card),
      ...(r.modelSuffix === undefined ? {} : { model_suffix: r.modelSuffix }),
    };
    const key = mdcKey(r.namespace, r.component, r.endpoint, this.instanceId, r.loraSlug);
    await this.store.put(key, encodeDiscoveryRecord(record));
    return record;
  }

  async unregisterModel(namespace: string, component: string, endpoint: string, loraSlug?: string): Promise<void> {
    await this.store.delete(mdcKey(namespace, component, endpoint, this.instanceId, loraSlug));
  }

  async registerEventChannel(r: EventChannelRegistration): Promise<EventChannelRecord> {
    const record: EventChannelRecord = {
      type: 'EventChannel',
      namespace: r.namespace,
      component: r.component,
      topic: r.topic,
      instance_id: this.instanceId,
      transport: r.transport,
    };
    await this.store.put(eventChannelKey(r.namespace, r.component, r.topic, this.instanceId), encodeDiscoveryRecord(record));
    return record;
  }

  /** The instances of one endpoint right now. */
  async listInstances(namespace: string, component: string, endpoint: string): Promise<InstanceRecord[]> {
    const kvs = await this.store.get(instancesPrefix(namespace, component, endpoint));
    return kvs.map((kv) => expectKind(decodeDiscoveryRecord(kv.value, kv.key), 'Endpoint', kv.key));
  }

  /** The live instance list of one endpoint: what a request-plane client follows. */
  watchInstances(namespace: string, component: string, endpoint: string, options: RecordWatchOptions = {}): RecordWatch<InstanceRecord> {
    return new RecordWatch(this.store.watch(instancesPrefix(namespace, component, endpoint)), decoderOf('Endpoint'), options);
  }

  /** Live model cards under a namespace / component / endpoint (all when omitted): what a frontend follows. */
  watchModels(namespace?: string, component?: string, endpoint?: string, options: RecordWatchOptions = {}): RecordWatch<ModelRecord> {
    return new RecordWatch(this.store.watch(mdcPrefix(namespace, component, endpoint)), decoderOf('Model'), options);
  }

  /** Revokes the lease: every key this process registered disappears. */
  close(): Promise<void> {
    return this.store.close();
  }
}

type RecordOf<K extends DiscoveryRecord['type']> = Extract<DiscoveryRecord, { type: K }>;

function expectKind<K extends DiscoveryRecord['type']>(record: DiscoveryRecord, kind: K, key: string): RecordOf<K> {
  if (record.type !== kind) {
    throw new LlmError('LLM_ERR_PROTOCOL', `discovery record at "${key}": type "${record.type}", expected "${kind}"`);
  }
  return record as RecordOf<K>;
}

function decoderOf<K extends DiscoveryRecord['type']>(kind: K): (key: string, value: string) => RecordOf<K> {
  return (key, value) => expectKind(decodeDiscoveryRecord(value, key), kind, key);
}

export interface RecordWatchOptions {
  /** A record that does not decode is left out and reported here (default: a process warning). */
  onInvalid?: (key: string, error: Error) => void;
}

/** A live, decoded view of the records under a prefix. */
export class RecordWatch<T> {
  /** Resolves once the records present when the watch started are in `list()`. */
  readonly ready: Promise<void>;
  private readonly records = new Map<string, T>();
  private readonly listeners = new Set<(records: T[]) => void>();

  constructor(
    private readonly watch: DiscoveryWatch,
    private readonly decode: (key: string, value: string) => T,
    private readonly options: RecordWatchOptions,
  ) {
    // the snapshot's events are queued by then; `follow` drains queued events in microtasks, so one macrotask later
    // they are all in the list
    this.ready = watch.synced.then(() => new Promise<void>((resolve) => setImmediate(resolve)));
    void this.follow();
  }

  /** Current records, ordered by key. */
  list(): T[] {
    return [...this.records.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, r]) => r);
  }

  /** Called with the full list after every change. */
  onChange(listener: (records: T[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.watch.close();
  }

  private async follow(): Promise<void> {
    for await (const event of this.watch) {
      if (event.type === 'delete') {
        if (!this.records.delete(event.key)) continue;
      } else {
        try {
          this.records.set(event.key, this.decode(event.key, event.value));
        } catch (err) {
          const error = err instanceof Error ? err : new Error(String(err));
          if (this.options.onInvalid) this.options.onInvalid(event.key, error);
          else process.emitWarning(error.message, 'DiscoveryWarning');
          if (!this.records.delete(event.key)) continue;
        }
      }
      const list = this.list();
      for (const listener of this.listeners) listener(list);
    }
  }
}
