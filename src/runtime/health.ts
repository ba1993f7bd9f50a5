// Worker health (reference §6): readiness state served by the system server, and the canary loop that sends an
// endpoint's health-check payload when the endpoint saw no traffic for the canary wait time. The loop only needs a
// `probe(payload) => AsyncIterable<chunk>`, so it does not depend on any request plane.
import { readFileSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import { LlmError } from '../errors.js';

export type HealthStatus = 'ready' | 'notready';

/** The `/health` (and `/live`) body, shaped like the reference runtime's. */
export interface HealthSnapshot {
  /** Status per endpoint name (e.g. "generate"): ready once served, then as the canary finds it. */
  endpoints: Record<string, HealthStatus>;
  status: HealthStatus;
  uptime: { secs: number; nanos: number };
}

export interface HealthRegistryOptions {
  /** DYN_SYSTEM_STARTING_HEALTH_STATUS (default notready). */
  startingStatus?: HealthStatus;
  /** DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS: when non-empty, the worker is ready iff all these endpoints are. */
  useEndpointHealthStatus?: readonly string[];
}

/**
 * Worker readiness as the reference runtime computes it: with `useEndpointHealthStatus` set, the overall status is
 * ready iff every listed endpoint is ready (an endpoint not yet served counts as notready); otherwise it is the
 * status the worker sets itself. Emits 'change' with a snapshot whenever something changes.
 */
export class HealthRegistry extends EventEmitter<{ change: [HealthSnapshot] }> {
  private system: HealthStatus;
  private readonly watched: readonly string[];
  private readonly endpoints = new Map<string, HealthStatus>();
  private readonly startedAt = process.hrtime.bigint();

  /** `new HealthRegistry('notready')` is short for `{startingStatus: 'notready'}`. */
  constructor(opts: HealthRegistryOptions | HealthStatus = {}) {
    super();
    const o = typeof opts === 'string' ? { startingStatus: opts } : opts;
    this.system = o.startingStatus ?? 'notready';
    this.watched = [...(o.useEndpointHealthStatus ?? [])];
  }

  setSystemStatus(status: HealthStatus): void {
    if (this.system === status) return;
    this.system = status;
    this.emit('change', this.snapshot());
  }

  setEndpointStatus(endpoint: string, status: HealthStatus): void {
    if (this.endpoints.get(endpoint) === status) return;
    this.endpoints.set(endpoint, status);
    this.emit('change', this.snapshot());
  }

  endpointStatus(endpoint: string): HealthStatus | undefined {
    return this.endpoints.get(endpoint);
  }

  /** The endpoint is no longer served (unregistered at shutdown or memory release). */
  removeEndpoint(endpoint: string): void {
    if (this.endpoints.delete(endpoint)) this.emit('change', this.snapshot());
  }

  get ready(): boolean {
    if (this.watched.length === 0) return this.system === 'ready';
    return this.watched.every((e) => this.endpoints.get(e) === 'ready');
  }

  snapshot(): HealthSnapshot {
    const endpoints: Record<string, HealthStatus> = {};
    for (const e of this.watched) endpoints[e] = 'notready';
    for (const [e, s] of [...this.endpoints].sort(([a], [b]) => (a < b ? -1 : 1))) endpoints[e] = s;
    const ns = process.hrtime.bigint() - this.startedAt;
    return {
      endpoints,
      status: this.ready ? 'ready' : 'notready',
      uptime: { secs: Number(ns / 1_000_000_000n), nanos: Number(ns % 1_000_000_000n) },
    };
  }
}

/** Reads DYN_SYSTEM_STARTING_HEALTH_STATUS and DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS (a JSON list of names). */
export function healthRegistryOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): HealthRegistryOptions {
  const opts: HealthRegistryOptions = {};
  const starting = env['DYN_SYSTEM_STARTING_HEALTH_STATUS'];
  if (starting !== undefined && starting !== '') {
    if (starting !== 'ready' && starting !== 'notready') {
      throw new LlmError('LLM_ERR_CONFIG', `DYN_SYSTEM_STARTING_HEALTH_STATUS "${starting}": expected ready or notready`);
    }
    opts.startingStatus = starting;
  }
  const use = env['DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS'];
  if (use !== undefined && use !== '') {
    let list: unknown;
    try {
      list = JSON.parse(use);
    } catch {
      list = undefined;
    }
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'string' && x.length > 0)) {
      throw new LlmError('LLM_ERR_CONFIG', `DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS ${use}: expected a JSON list of endpoint names, e.g. ["generate"]`);
    }
    opts.useEndpointHealthStatus = list as string[];
  }
  return opts;
}

/** Sends one request and yields its response chunks; `signal` aborts it (timeout or stop). */
export type HealthProbe = (payload: Record<string, unknown>, signal: AbortSignal) => AsyncIterable<unknown>;

export interface CanaryOptions {
  /** Endpoint name under which the result is recorded, e.g. "generate". */
  endpoint: string;
  payload: Record<string, unknown>;
  probe: HealthProbe;
  registry: HealthRegistry;
  /** Idle time before a canary is sent (DYN_CANARY_WAIT_TIME, default 10 s). */
  canaryWaitMs?: number;
  /** Time a canary may take (DYN_HEALTH_CHECK_REQUEST_TIMEOUT, default 3 s). */
  timeoutMs?: number;
}

export interface CanaryResult {
  healthy: boolean;
  /** Why it failed: timeout, error text, or an error chunk. */
  reason?: string;
}

/** A chunk that reports failure instead of output: an Annotated error event or finish_reason "error". */
function isErrorChunk(chunk: unknown): string | undefined {
  if (typeof chunk !== 'object' || chunk === null) return undefined;
  const c = chunk as { event?: unknown; error?: unknown; finish_reason?: unknown; data?: unknown };
  if (c.event === 'error') return `error event: ${JSON.stringify(c.error ?? (c as { comment?: unknown }).comment ?? null)}`;
  if (c.finish_reason === 'error') return 'finish_reason "error"';
  return c.data !== undefined ? isErrorChunk(c.data) : undefined;
}

/**
 * The canary loop for one endpoint. While the endpoint is ready, real traffic (`noteActivity`) postpones the next
 * canary; once it is notready, canaries keep going every wait period until one succeeds.
 */
export class CanaryHealthCheck {
  private readonly opts: Required<CanaryOptions>;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<CanaryResult> | undefined;
  private stopped = true;
  private stopController = new AbortController();

  constructor(opts: CanaryOptions) {
    this.opts = { canaryWaitMs: 10_000, timeoutMs: 3_000, ...opts };
    if (!(this.opts.canaryWaitMs > 0) || !(this.opts.timeoutMs > 0)) {
      throw new LlmError('LLM_ERR_CONFIG', `health check for ${opts.endpoint}: canary wait and timeout must be > 0 ms`);
    }
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.stopController = new AbortController();
    this.schedule();
  }

  /** Stops the loop and aborts a canary in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.stopController.abort();
    await this.running;
  }

  /** Real traffic reached the endpoint: a ready endpoint needs no canary for another wait period. */
  noteActivity(): void {
    if (this.stopped || this.running !== undefined) return;
    if (this.opts.registry.endpointStatus(this.opts.endpoint) === 'notready') return;
    this.schedule();
  }

  /** Runs one canary now and records the result. */
  checkNow(): Promise<CanaryResult> {
    if (this.running === undefined) {
      this.running = this.runOnce().finally(() => {
        this.running = undefined;
        if (!this.stopped) this.schedule();
      });
    }
    return this.running;
  }

  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.checkNow(), this.opts.canaryWaitMs);
    this.timer.unref();
  }

  private async runOnce(): Promise<CanaryResult> {
    const { probe, payload, timeoutMs, registry, endpoint } = this.opts;
    const stopSignal = this.stopController.signal;
    const signal = AbortSignal.any([AbortSignal.timeout(timeoutMs), stopSignal]);
    let result: CanaryResult;
    try {
      result = await Promise.race([consume(probe(payload, signal)), aborted(signal, timeoutMs)]);
    } catch (err) {
      result = { healthy: false, reason: err instanceof Error ? err.message : String(err) };
    }
    if (stopSignal.aborted) return result;
    registry.setEndpointStatus(endpoint, result.healthy ? 'ready' : 'notready');
    return result;
  }
}

async function consume(stream: AsyncIterable<unknown>): Promise<CanaryResult> {
  let chunks = 0;
  for await (const chunk of stream) {
    const bad = isErrorChunk(chunk);
    if (bad !== undefined) return { healthy: false, reason: bad };
    chunks++;
  }
  return chunks > 0 ? { healthy: true } : { healthy: false, reason: 'the response stream ended without a chunk' };
}

function aborted(signal: AbortSignal, timeoutMs: number): Promise<CanaryResult> {
  return new Promise((resolve) => {
    const done = () => resolve({ healthy: false, reason: `no complete response within ${timeoutMs} ms` });
    if (signal.aborted) done();
    else signal.addEventListener('abort', done, { once: true });
  });
}

/**
 * Reads a health-check payload override as DYN_HEALTH_CHECK_PAYLOAD gives it: JSON text, or `@/path/to.json`.
 * It must be a JSON object; anything else is refused naming `source` and what was found.
 */
export function parseHealthCheckPayloadSpec(spec: string, source = 'DYN_HEALTH_CHECK_PAYLOAD'): Record<string, unknown> {
  let text = spec;
  let where = source;
  if (spec.startsWith('@')) {
    const path = spec.slice(1);
    where = `${source} file ${path}`;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new LlmError('LLM_ERR_CONFIG', `${where}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new LlmError('LLM_ERR_CONFIG', `${where}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const got = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    throw new LlmError('LLM_ERR_CONFIG', `${where}: the health-check payload must be a JSON object, got ${got}`);
  }
  return value as Record<string, unknown>;
}

/** The payload to send: an override (already-parsed object, or DYN_HEALTH_CHECK_PAYLOAD text) replaces the default. */
export function effectiveHealthCheckPayload(
  defaultPayload: Record<string, unknown>,
  override: Record<string, unknown> | string | null | undefined = process.env['DYN_HEALTH_CHECK_PAYLOAD'],
): Record<string, unknown> {
  if (override === undefined || override === null || override === '') return defaultPayload;
  return typeof override === 'string' ? parseHealthCheckPayloadSpec(override) : override;
}
