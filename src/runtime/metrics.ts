// Prometheus metrics with the reference's names and labels (reference §5.3), on a registry of their own (never
// prom-client's global one, so several workers in one process or test do not collide).
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export const METRIC_PREFIX = 'dynamo_component_';

/** Error kinds counted by `errors_total{error_type}` (the request plane's failure points). */
export const ENDPOINT_ERROR_TYPES = [
  'deserialization',
  'invalid_message',
  'generate',
  'response_stream',
  'publish_response',
  'publish_final',
] as const;
export type EndpointErrorType = (typeof ENDPOINT_ERROR_TYPES)[number];

const ENDPOINT_LABELS = ['dynamo_namespace', 'dynamo_component', 'dynamo_endpoint', 'model'] as const;
type EndpointLabel = (typeof ENDPOINT_LABELS)[number];
type EndpointLabels = Record<EndpointLabel, string>;

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** One request's recorder, from `requestStarted` to `finish`. */
export interface RequestRecorder {
  /** Bytes of one response chunk sent back. */
  responseBytes(n: number): void;
  error(type: EndpointErrorType): void;
  cancelled(): void;
  /** Ends the request: inflight down, duration observed. Idempotent. */
  finish(): void;
}

/** Recorders for one endpoint of one model, labels fixed. */
export interface EndpointMetrics {
  readonly labels: Readonly<EndpointLabels>;
  requestStarted(requestBytes: number): RequestRecorder;
}

export interface KvStats {
  model: string;
  component: string;
  dpRank: number;
  totalBlocks: number;
  /** 0–100 (percent, as the reference gauge is named). */
  gpuCacheUsagePercent: number;
}

export class WorkerMetrics {
  readonly registry: Registry;
  private readonly startedAt = process.hrtime.bigint();
  private readonly totalBlocks: Gauge<'model' | 'dynamo_component' | 'dp_rank'>;
  private readonly gpuCacheUsage: Gauge<'model' | 'dynamo_component' | 'dp_rank'>;
  private readonly modelLoadTime: Gauge<'model' | 'dynamo_component'>;
  private readonly requests: Counter<EndpointLabel>;
  private readonly duration: Histogram<EndpointLabel>;
  private readonly inflight: Gauge<EndpointLabel>;
  private readonly requestBytes: Counter<EndpointLabel>;
  private readonly responseBytes: Counter<EndpointLabel>;
  private readonly errors: Counter<EndpointLabel | 'error_type'>;
  private readonly cancellations: Counter<EndpointLabel>;
  private readonly endpoints = new Map<string, EndpointMetrics>();

  constructor(registry: Registry = new Registry()) {
    this.registry = registry;
    const registers = [registry];
    const kvLabels = ['model', 'dynamo_component', 'dp_rank'] as const;
    this.totalBlocks = new Gauge({ name: `${METRIC_PREFIX}total_blocks`, help: 'Total KV cache blocks', labelNames: kvLabels, registers });
    this.gpuCacheUsage = new Gauge({
      name: `${METRIC_PREFIX}gpu_cache_usage_percent`,
      help: 'KV cache blocks in use, percent of total',
      labelNames: kvLabels,
      registers,
    });
    this.modelLoadTime = new Gauge({
      name: `${METRIC_PREFIX}model_load_time_seconds`,
      help: 'Seconds it took to load the model',
      labelNames: ['model', 'dynamo_component'],
      registers,
    });
    const labelNames = ENDPOINT_LABELS;
    this.requests = new Counter({ name: `${METRIC_PREFIX}requests_total`, help: 'Requests received', labelNames, registers });
    this.duration = new Histogram({
      name: `${METRIC_PREFIX}request_duration_seconds`,
      help: 'Time from request receipt to the end of its response stream',
      labelNames,
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.inflight = new Gauge({ name: `${METRIC_PREFIX}inflight_requests`, help: 'Requests being processed', labelNames, registers });
    this.requestBytes = new Counter({ name: `${METRIC_PREFIX}request_bytes_total`, help: 'Request payload bytes received', labelNames, registers });
    this.responseBytes = new Counter({ name: `${METRIC_PREFIX}response_bytes_total`, help: 'Response bytes sent', labelNames, registers });
    this.errors = new Counter({
      name: `${METRIC_PREFIX}errors_total`,
      help: 'Requests that failed, by failure point',
      labelNames: [...ENDPOINT_LABELS, 'error_type'],
      registers,
    });
    this.cancellations = new Counter({ name: `${METRIC_PREFIX}cancellation_total`, help: 'Requests cancelled by the caller', labelNames, registers });
    const startedAt = this.startedAt;
    new Gauge({
      name: `${METRIC_PREFIX}uptime_seconds`,
      help: 'Seconds since this worker runtime started',
      registers,
      collect() {
        this.set(Number(process.hrtime.bigint() - startedAt) / 1e9);
      },
    });
  }

  /** Recorders for `{ns}.{component}.{endpoint}` serving `model`; the same object for the same labels. */
  endpointMetrics(namespace: string, component: string, endpoint: string, model: string): EndpointMetrics {
    const key = JSON.stringify([namespace, component, endpoint, model]);
    let em = this.endpoints.get(key);
    if (em === undefined) {
      const labels: EndpointLabels = { dynamo_namespace: namespace, dynamo_component: component, dynamo_endpoint: endpoint, model };
      // Export zeros at once so dashboards see the series before the first request.
      this.requests.inc(labels, 0);
      this.inflight.set(labels, 0);
      this.requestBytes.inc(labels, 0);
      this.responseBytes.inc(labels, 0);
      this.cancellations.inc(labels, 0);
      em = { labels: Object.freeze({ ...labels }), requestStarted: (bytes) => this.startRequest(labels, bytes) };
      this.endpoints.set(key, em);
    }
    return em;
  }

  setKvStats(stats: KvStats): void {
    const labels = { model: stats.model, dynamo_component: stats.component, dp_rank: String(stats.dpRank) };
    this.totalBlocks.set(labels, stats.totalBlocks);
    this.gpuCacheUsage.set(labels, stats.gpuCacheUsagePercent);
  }

  setModelLoadTime(model: string, component: string, seconds: number): void {
    this.modelLoadTime.set({ model, dynamo_component: component }, seconds);
  }

  /** Prometheus text exposition of everything registered. */
  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  private startRequest(labels: EndpointLabels, requestBytes: number): RequestRecorder {
    this.requests.inc(labels);
    this.inflight.inc(labels);
    if (requestBytes > 0) this.requestBytes.inc(labels, requestBytes);
    const endTimer = this.duration.startTimer(labels);
    let finished = false;
    return {
      responseBytes: (n) => {
        if (n > 0) this.responseBytes.inc(labels, n);
      },
      error: (type) => this.errors.inc({ ...labels, error_type: type }),
      cancelled: () => this.cancellations.inc(labels),
      finish: () => {
        if (finished) return;
        finished = true;
        this.inflight.dec(labels);
        endTimer();
      },
    };
  }
}
