// The OpenAI frontend's Prometheus metrics under the reference frontend's names, labels and buckets (Dynamo's HTTP
// service, `dynamo_frontend_*`): requests by model, endpoint, request type, status and error type, requests in
// flight and queued (until their first token), and per model the time to first token, inter-token latency, request
// duration and input/output sequence lengths. Histogram buckets are the reference's log-spaced ones: 0, then `count - 1`
// values from min to max evenly spaced in log, each rounded to 2 significant figures, duplicates dropped.
// Its own registry (never prom-client's global one): several servers in one process do not collide.

import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export const FRONTEND_METRIC_PREFIX = 'dynamo_frontend_';

/** The frontend endpoints, as the reference labels them. */
export type FrontendEndpoint = 'completions' | 'chat_completions' | 'embeddings';

/** The reference's error_type label values (`none` on success). */
export type FrontendErrorType =
  | 'none' | 'validation' | 'not_found' | 'overload' | 'unavailable' | 'cancelled' | 'response_timeout' | 'internal' | 'not_implemented';

/** Log-spaced buckets the way the reference makes them (see the header). */
export function logBuckets(min: number, max: number, count: number): number[] {
  if (count <= 0) return [];
  const buckets = [0];
  const [lo, hi] = [Math.log(min), Math.log(max)];
  for (let i = 1; i < count; i++) {
    const value = roundSignificant(Math.exp(lo + ((hi - lo) * i) / (count - 1)), 2);
    if (value !== buckets[buckets.length - 1]) buckets.push(value);
  }
  return buckets;
}

function roundSignificant(value: number, digits: number): number {
  if (value === 0) return 0;
  const scale = 10 ** (digits - 1 - Math.floor(Math.log10(Math.abs(value))));
  return Math.round(value * scale) / scale;
}

/** The error_type of a failed request from its HTTP status, or `cancelled` when the client went away. */
export function errorTypeOf(status: number, cancelled: boolean): FrontendErrorType {
  if (cancelled) return 'cancelled';
  if (status === 404) return 'not_found';
  if (status === 429 || status === 529) return 'overload';
  if (status === 503) return 'unavailable';
  if (status === 501) return 'not_implemented';
  if (status === 504) return 'response_timeout';
  if (status >= 400 && status < 500) return 'validation';
  return 'internal';
}

/** One request's recorder, from the parsed body to its end. */
export interface FrontendRequest {
  /** `n` tokens arrived now (any choice): the first ends the queue wait (TTFT), later ones are inter-token gaps. */
  tokens(n: number): void;
  /** The request's prompt and completion tokens (summed over its choices). */
  sequence(inputTokens: number, outputTokens: number): void;
  /** Ends it as a success or with an error type; only the first call counts. */
  finish(errorType: FrontendErrorType): void;
}

export class FrontendMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'model' | 'endpoint' | 'request_type' | 'status' | 'error_type'>;
  private readonly inflight: Gauge<'model'>;
  private readonly queued: Gauge<'model'>;
  private readonly duration: Histogram<'model'>;
  private readonly inputTokens: Histogram<'model'>;
  private readonly outputTokens: Histogram<'model'>;
  private readonly outputTokensTotal: Counter<'model'>;
  private readonly ttft: Histogram<'model'>;
  private readonly itl: Histogram<'model'>;

  constructor() {
    const registers = [this.registry];
    const name = (suffix: string) => `${FRONTEND_METRIC_PREFIX}${suffix}`;
    this.requests = new Counter({ name: name('requests_total'), help: 'Total number of LLM requests processed', labelNames: ['model', 'endpoint', 'request_type', 'status', 'error_type'], registers });
    this.inflight = new Gauge({ name: name('inflight_requests'), help: 'Number of inflight requests', labelNames: ['model'], registers });
    this.queued = new Gauge({ name: name('queued_requests'), help: 'Number of requests in HTTP processing queue', labelNames: ['model'], registers });
    this.duration = new Histogram({ name: name('request_duration_seconds'), help: 'Duration of LLM requests', labelNames: ['model'], buckets: logBuckets(1, 512, 10), registers });
    this.inputTokens = new Histogram({ name: name('input_sequence_tokens'), help: 'Input sequence length in tokens', labelNames: ['model'], buckets: logBuckets(50, 128000, 12), registers });
    this.outputTokens = new Histogram({ name: name('output_sequence_tokens'), help: 'Output sequence length in tokens', labelNames: ['model'], buckets: logBuckets(50, 32000, 10), registers });
    this.outputTokensTotal = new Counter({ name: name('output_tokens_total'), help: 'Total number of output tokens generated (updates in real-time)', labelNames: ['model'], registers });
    this.ttft = new Histogram({ name: name('time_to_first_token_seconds'), help: 'Time to first token in seconds', labelNames: ['model'], buckets: logBuckets(0.001, 480, 18), registers });
    this.itl = new Histogram({ name: name('inter_token_latency_seconds'), help: 'Inter-token latency in seconds', labelNames: ['model'], buckets: logBuckets(0.001, 2, 13), registers });
  }

  /** A request for `model` (as the body names it) has been parsed and is starting. */
  start(model: string, endpoint: FrontendEndpoint, stream: boolean): FrontendRequest {
    const labels = { model };
    const started = performance.now();
    let last: number | null = null;
    let queued = true;
    let done = false;
    this.inflight.inc(labels);
    this.queued.inc(labels);
    const leaveQueue = () => {
      if (!queued) return;
      queued = false;
      this.queued.dec(labels);
    };
    return {
      tokens: (n) => {
        if (n <= 0 || done) return;
        const now = performance.now();
        this.outputTokensTotal.inc(labels, n);
        if (last === null) {
          this.ttft.observe(labels, (now - started) / 1000);
          leaveQueue();
        } else {
          // a chunk of n tokens after a gap: each token's share of it, as the reference observes
          const perToken = (now - last) / 1000 / n;
          for (let i = 0; i < n; i++) this.itl.observe(labels, perToken);
        }
        last = now;
      },
      sequence: (inputTokens, outputTokens) => {
        this.inputTokens.observe(labels, inputTokens);
        this.outputTokens.observe(labels, outputTokens);
      },
      finish: (errorType) => {
        if (done) return;
        done = true;
        leaveQueue();
        this.inflight.dec(labels);
        this.requests.inc({ model, endpoint, request_type: stream ? 'stream' : 'unary', status: errorType === 'none' ? 'success' : 'error', error_type: errorType });
        this.duration.observe(labels, (performance.now() - started) / 1000);
      },
    };
  }

  /** The Prometheus text exposition of every family. */
  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
