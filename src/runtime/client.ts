// A client of one endpoint (`{ns}/{component}/{endpoint}`) that follows discovery as instances come and go and routes
// each request round-robin, at random, or to one instance directly, over whichever request plane the instance
// advertises (tcp, http or nats_tcp).
//
// An instance that cannot be reached (connect refused, no ACK, the stream dropped mid-way) is marked down and skipped
// for new requests until it leaves and re-enters discovery or `downCooldownMs` passes. A request that was never
// accepted is safe to send elsewhere, so on such a failure the client tries the next instance (not for direct
// routing); a request that was accepted and then dropped ends with a migratable DisconnectedError for the caller.
import { LlmError } from '../errors.js';
import { formatInstanceId, type InstanceRecord } from '../protocol/discovery.js';
import type { Discovery, RecordWatch } from './discovery/index.js';
import type { RequestOptions } from './request-plane/egress.js';
import { HttpRequestClient } from './request-plane/http.js';
import type { NatsRequestClient } from './request-plane/nats.js';
import { sharedResponseServer, type ResponseServer } from './request-plane/response-server.js';
import { TcpRequestClient } from './request-plane/tcp-client.js';

import { DisconnectedError, type ResponseStream } from './request-plane/response-stream.js';

export type { ResponseStream } from './request-plane/response-stream.js';
export { DisconnectedError } from './request-plane/response-stream.js';

export type RoutingMode = 'round_robin' | 'random';

export interface EndpointClientOptions {
  discovery: Discovery;
  namespace: string;
  component: string;
  endpoint: string;
  /** Default routing for `generate` (round_robin). */
  routing?: RoutingMode;
  /** Default: the process's shared call-home response server. */
  responses?: ResponseServer;
  tcp?: TcpRequestClient;
  http?: HttpRequestClient;
  /** Needed only if instances advertise the nats plane. */
  nats?: NatsRequestClient;
  /** How long an unreachable instance is skipped (default 10 s). */
  downCooldownMs?: number;
  /**
   * When an instance leaves discovery, how long its accepted requests may still take to call back before they fail
   * with DisconnectedError (default 500 ms).
   */
  leftGraceMs?: number;
}

export interface GenerateOptions extends RequestOptions {
  /** Overrides the client's routing: a mode, or `{instanceId}` to send to that instance only. */
  routing?: RoutingMode | { instanceId: bigint };
  /** With no instance available, wait up to this long for one to appear (default 0: fail at once). */
  waitForInstancesMs?: number;
}

/** Errors that mean "this instance cannot take requests", as opposed to "this request is bad". */
function isUnreachable(err: unknown): boolean {
  return err instanceof LlmError && (err.code === 'LLM_ERR_TRANSPORT' || err.code === 'LLM_ERR_TIMEOUT');
}

export class EndpointClient {
  private readonly down = new Map<bigint, number>();
  /** Accepted requests whose worker has not called home yet, by instance. */
  private readonly awaitingCallHome = new Map<bigint, Set<ResponseStream>>();
  private readonly routing: RoutingMode;
  private readonly downCooldownMs: number;
  private readonly leftGraceMs: number;
  private readonly tcp: TcpRequestClient;
  private readonly http: HttpRequestClient;
  private readonly nats: NatsRequestClient | undefined;
  private next = 0;

  private constructor(
    private readonly options: EndpointClientOptions,
    private readonly watch: RecordWatch<InstanceRecord>,
    responses: ResponseServer,
  ) {
    this.routing = options.routing ?? 'round_robin';
    this.downCooldownMs = options.downCooldownMs ?? 10_000;
    this.leftGraceMs = options.leftGraceMs ?? 500;
    this.tcp = options.tcp ?? new TcpRequestClient(responses);
    this.http = options.http ?? new HttpRequestClient(responses);
    this.nats = options.nats;
    watch.onChange((records) => {
      const live = new Set(records.map((r) => r.instance_id));
      // a request accepted by an instance that left discovery may never be called back; one that is draining
      // (graceful shutdown) calls back within milliseconds, so give it a moment, then fail what is still waiting
      for (const id of this.awaitingCallHome.keys()) {
        if (!live.has(id)) this.failUncalled(id, 'left discovery');
      }
      // an instance that left discovery starts afresh if it comes back
      for (const id of this.down.keys()) if (!live.has(id)) this.down.delete(id);
    });
  }

  /** Starts following the endpoint's instances; resolves once the current ones are known. */
  static async create(options: EndpointClientOptions): Promise<EndpointClient> {
    const watch = options.discovery.watchInstances(options.namespace, options.component, options.endpoint);
    try {
      await watch.ready;
      return new EndpointClient(options, watch, options.responses ?? (await sharedResponseServer()));
    } catch (err) {
      watch.close();
      throw err;
    }
  }

  get name(): string {
    return `${this.options.namespace}/${this.options.component}/${this.options.endpoint}`;
  }

  /** Every instance in discovery, ordered by discovery key. */
  instances(): InstanceRecord[] {
    return this.watch.list();
  }

  /** Instances in discovery that are not marked down. */
  available(): InstanceRecord[] {
    const now = Date.now();
    return this.watch.list().filter((r) => {
      const until = this.down.get(r.instance_id);
      if (until === undefined) return true;
      if (until > now) return false;
      this.down.delete(r.instance_id);
      return true;
    });
  }

  /** Resolves with the available instances once there is at least one, or fails after `timeoutMs`. */
  async waitForInstances(timeoutMs: number): Promise<InstanceRecord[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const available = this.available();
      if (available.length > 0) return available;
      const left = deadline - Date.now();
      if (left <= 0) throw this.noInstances(timeoutMs);
      // wake on a discovery change, or when the earliest down mark expires
      const expiry = Math.min(left, ...[...this.down.values()].map((until) => Math.max(1, until - Date.now())));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, expiry);
        const off = this.watch.onChange(done);
        function done() {
          clearTimeout(timer);
          off();
          resolve();
        }
      });
    }
  }

  /** Takes the instance out of rotation (it refused or dropped a request). */
  reportInstanceDown(instanceId: bigint): void {
    this.down.set(instanceId, Date.now() + this.downCooldownMs);
  }

  /** Sends `request` to an instance picked by the routing mode; resolves once accepted, with its response stream. */
  async generate(request: unknown, options: GenerateOptions = {}): Promise<ResponseStream> {
    const routing = options.routing ?? this.routing;
    if (typeof routing === 'object') return this.direct(request, routing.instanceId, options);
    const tried = new Set<bigint>();
    let lastError: unknown;
    for (;;) {
      let candidates = this.available().filter((r) => !tried.has(r.instance_id));
      if (candidates.length === 0 && tried.size === 0) {
        // Every known instance is marked down. The mark steers the choice, it is not a ban: try them again rather
        // than fail (one dropped stream would otherwise make a single worker refuse everyone for the cooldown).
        candidates = this.instances();
        if (candidates.length === 0) candidates = await this.waitForInstances(options.waitForInstancesMs ?? 0);
      }
      if (candidates.length === 0) throw lastError;
      const target = routing === 'random' ? candidates[Math.floor(Math.random() * candidates.length)] : candidates[this.next++ % candidates.length];
      try {
        return await this.send(target, request, options);
      } catch (err) {
        if (!isUnreachable(err)) throw err;
        tried.add(target.instance_id);
        lastError = err;
      }
    }
  }

  /** Sends `request` to one instance; fails if it is not in discovery (after `waitForInstancesMs`). */
  async direct(request: unknown, instanceId: bigint, options: GenerateOptions = {}): Promise<ResponseStream> {
    const deadline = Date.now() + (options.waitForInstancesMs ?? 0);
    let target = this.instances().find((r) => r.instance_id === instanceId);
    while (target === undefined && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, deadline - Date.now());
        const off = this.watch.onChange(done);
        function done() {
          clearTimeout(timer);
          off();
          resolve();
        }
      });
      target = this.instances().find((r) => r.instance_id === instanceId);
    }
    if (target === undefined) {
      throw new LlmError('LLM_ERR_DISCOVERY', `instance ${formatInstanceId(instanceId)} of ${this.name} is not in discovery (${this.options.discovery.store.location})`);
    }
    return this.send(target, request, options);
  }

  /** Stops following discovery; closes the plane clients this client created. */
  close(): void {
    this.watch.close();
    if (this.options.tcp === undefined) this.tcp.close();
    if (this.options.http === undefined) this.http.close();
  }

  private async send(target: InstanceRecord, request: unknown, options: RequestOptions): Promise<ResponseStream> {
    const t = target.transport;
    let stream: ResponseStream;
    try {
      if ('tcp' in t) stream = await this.tcp.request(t.tcp, request, options);
      else if ('http' in t) stream = await this.http.request(t.http, request, options);
      else {
        if (this.nats === undefined) {
          throw new LlmError('LLM_ERR_CONFIG', `instance ${formatInstanceId(target.instance_id)} of ${this.name} serves the nats request plane (${t.nats_tcp}), but this client has no NATS connection`);
        }
        stream = await this.nats.request(t.nats_tcp, request, options);
      }
    } catch (err) {
      if (isUnreachable(err)) this.reportInstanceDown(target.instance_id);
      throw err;
    }
    const id = target.instance_id;
    stream.instanceId = id;
    // (an instance that already left discovery needs no mark: it is out of rotation, and fresh if it returns)
    stream.onDisconnect(() => {
      if (this.instances().some((r) => r.instance_id === id)) this.reportInstanceDown(id);
      // a worker that dropped a response stream has most likely died (SIGKILL, crash): the requests it accepted but
      // has not called back for would otherwise wait until its lease expires (up to the TTL, 10 s) to migrate
      this.failUncalled(id, 'dropped another response stream');
    });
    let awaiting = this.awaitingCallHome.get(id);
    if (awaiting === undefined) this.awaitingCallHome.set(id, (awaiting = new Set()));
    awaiting.add(stream);
    stream.onReleased(() => {
      awaiting.delete(stream);
      if (awaiting.size === 0 && this.awaitingCallHome.get(id) === awaiting) this.awaitingCallHome.delete(id);
    });
    return stream;
  }

  /** After the grace period, fails the requests `id` accepted and still has not called back for. */
  private failUncalled(id: bigint, why: string): void {
    const streams = this.awaitingCallHome.get(id);
    if (streams === undefined) return;
    this.awaitingCallHome.delete(id);
    // (a stream that calls home during the grace leaves `streams` through its onReleased)
    setTimeout(() => {
      for (const stream of streams) {
        stream.fail(new DisconnectedError(`request ${stream.requestId}: instance ${formatInstanceId(id)} of ${this.name} ${why} and did not call back within ${this.leftGraceMs} ms`));
      }
    }, this.leftGraceMs).unref();
  }

  private noInstances(waitedMs: number): LlmError {
    const all = this.instances();
    const where = this.options.discovery.store.location;
    const waited = waitedMs > 0 ? ` after waiting ${waitedMs} ms` : '';
    if (all.length === 0) return new LlmError('LLM_ERR_DISCOVERY', `no instances of ${this.name} in discovery (${where})${waited}`);
    return new LlmError(
      'LLM_ERR_TRANSPORT',
      `all ${all.length} instances of ${this.name} are marked unreachable${waited}: ${all.map((r) => formatInstanceId(r.instance_id)).join(', ')}`,
    );
  }
}
