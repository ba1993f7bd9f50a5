// SGLang's own engine metrics (`sglang:*`), exported with --enable-metrics the way a Dynamo SGLang worker re-exposes
// them on its system server (reference §5.3). Names, label names and histogram buckets follow SGLang's metrics
// collector (python/sglang/srt/metrics/collector.py, 0.5 line): the scheduler's gauges carry
// {model_name, engine_type, tp_rank, pp_rank}, the tokenizer manager's counters and histograms carry {model_name};
// every series also carries the Dynamo hierarchy labels the reference injects (dynamo_namespace, dynamo_component,
// dynamo_endpoint).
//
// A worker with several data-parallel groups has one scheduler per group, as SGLang has one per dp rank: the
// scheduler's gauges are then one series per group with a dp_rank label; the counters are the worker's totals.
//
// Where the values come from: gauges and counters are read at scrape time from the engine's metrics snapshot (the
// totals the metrics actor keeps), so nothing here runs per step; the latency histograms need one observation per
// request and per streamed chunk, which the request handler reports through requestStarted().

import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** What this collector reads from the engine's metrics snapshot (a structural subset of it; totals are cumulative). */
export interface EngineMetricsSnapshot {
  /** kvUsedPages includes the cached pages no request holds; kvEvictablePages counts those. */
  load: { kvTotalPages: number; kvUsedPages: number; kvEvictablePages: number; runningRequests: number; queuedRequests: number };
  /** Prompt tokens computed by prefill steps, output tokens of decode steps, prompt tokens served from the prefix cache. */
  prefillTokens: number;
  decodeTokens: number;
  cacheHitTokens: number;
  requests: { finished: number; cancelled: number; failed: number; promptTokens: number; completionTokens: number; cachedTokens: number };
}

/** SGLang's histogram settings (--bucket-*, --collect-tokens-histogram); null buckets take SGLang's defaults. */
export interface SglangHistogramSettings {
  bucketTimeToFirstToken: readonly number[] | null;
  bucketInterTokenLatency: readonly number[] | null;
  bucketE2eRequestLatency: readonly number[] | null;
  collectTokensHistogram: boolean;
}

/** What the recorder reads of a streamed chunk: its new tokens and, on the last one, the request's token counts. */
export interface StreamedChunk {
  token_ids: readonly number[];
  completion_usage?: { prompt_tokens: number; completion_tokens: number } | null;
}

export interface SglangMetricsOptions {
  registry: Registry;
  /** --served-model-name. */
  modelName: string;
  /** SGLang's engine_type label: unified (aggregated), prefill or decode. */
  engineType: 'unified' | 'prefill' | 'decode';
  endpoint: { namespace: string; component: string; endpoint: string };
  /** Tokens per KV page, to report tokens where the engine counts pages. */
  pageSize: number;
  /** The worker's totals (over its data-parallel groups). */
  snapshot: () => EngineMetricsSnapshot;
  /** Each data-parallel group's snapshot, by dp rank, for the scheduler's gauges (default: [snapshot()]); with more
   * than one (counted once, here) the gauges carry dp_rank. */
  schedulerSnapshots?: () => EngineMetricsSnapshot[];
  histograms?: SglangHistogramSettings;
  /** Clock in seconds (tests pass their own). */
  now?: () => number;
}

/** One request's latency recorder, from requestStarted() to finish(). */
export interface SglangRequestRecorder {
  /** A chunk reached the caller now: its tokens time the latencies (chunks without tokens only carry counts). */
  chunk(c: StreamedChunk): void;
  /** The request ended without an error: its end-to-end latency (and token counts) are observed. Idempotent. */
  finish(): void;
}

// SGLang's default buckets (--bucket-time-to-first-token / --bucket-inter-token-latency / --bucket-e2e-request-latency).
export const TTFT_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400];
export const ITL_BUCKETS = [0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4,
  6, 8];
export const E2E_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 800];
// --collect-tokens-histogram's buckets.
export const PROMPT_TOKENS_BUCKETS = [100, 300, 500, 700, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 12000, 15000, 20000,
  22000, 25000, 30000, 35000, 40000];
export const GENERATION_TOKENS_BUCKETS = [100, 300, 500, 1000, 1200, 1500, 1700, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 6000, 7000, 8000, 9000,
  10000];

const HIERARCHY = ['dynamo_namespace', 'dynamo_component', 'dynamo_endpoint'] as const;
const SCHEDULER_LABELS = ['model_name', 'engine_type', 'tp_rank', 'pp_rank', ...HIERARCHY] as const;
const TOKENIZER_LABELS = ['model_name', ...HIERARCHY] as const;

type SnapshotReader = (s: EngineMetricsSnapshot) => number;

export class SglangMetrics {
  private readonly ttft: Histogram<(typeof TOKENIZER_LABELS)[number]>;
  private readonly itl: Histogram<(typeof TOKENIZER_LABELS)[number]>;
  private readonly e2e: Histogram<(typeof TOKENIZER_LABELS)[number]>;
  private readonly tokenCounts: { prompt: Histogram<(typeof TOKENIZER_LABELS)[number]>; generation: Histogram<(typeof TOKENIZER_LABELS)[number]> } | null;
  private readonly tokenizerLabels: Record<(typeof TOKENIZER_LABELS)[number], string>;
  private readonly now: () => number;

  constructor(opts: SglangMetricsOptions) {
    const registers = [opts.registry];
    const now = (this.now = opts.now ?? (() => performance.now() / 1000));
    const hierarchy = { dynamo_namespace: opts.endpoint.namespace, dynamo_component: opts.endpoint.component, dynamo_endpoint: opts.endpoint.endpoint };
    const schedulerLabels = { model_name: opts.modelName, engine_type: opts.engineType, tp_rank: '0', pp_rank: '0', ...hierarchy };
    this.tokenizerLabels = { model_name: opts.modelName, ...hierarchy };
    const tokenizerLabels = this.tokenizerLabels;
    const snapshot = opts.snapshot;
    const schedulers = opts.schedulerSnapshots ?? (() => [snapshot()]);
    const dpLabelled = schedulers().length > 1;
    const schedulerLabelNames: readonly string[] = dpLabelled ? [...SCHEDULER_LABELS, 'dp_rank'] : SCHEDULER_LABELS;
    const labelsOf = (dpRank: number): Record<string, string> => (dpLabelled ? { ...schedulerLabels, dp_rank: String(dpRank) } : schedulerLabels);

    const gauge = (name: string, help: string, read: SnapshotReader) =>
      new Gauge({
        name, help, labelNames: schedulerLabelNames, registers,
        collect() {
          schedulers().forEach((s, d) => this.set(labelsOf(d), read(s)));
        },
      });
    gauge('sglang:num_running_reqs', 'The number of running requests.', (s) => s.load.runningRequests);
    gauge('sglang:num_queue_reqs', 'The number of requests in the waiting queue.', (s) => s.load.queuedRequests);
    // As SGLang counts them: cached pages that no request holds are free (evictable), not used.
    const usedPages = (s: EngineMetricsSnapshot) => Math.max(0, s.load.kvUsedPages - s.load.kvEvictablePages);
    gauge('sglang:num_used_tokens', 'The number of used tokens.', (s) => usedPages(s) * opts.pageSize);
    gauge('sglang:token_usage', 'The token usage.', (s) => (s.load.kvTotalPages > 0 ? usedPages(s) / s.load.kvTotalPages : 0));

    // Rates over the time between two scrapes, as SGLang's scheduler reports them over its logging interval. A rate
    // with nothing to measure since the last scrape keeps its last value.
    const rate = (name: string, help: string, measure: (prev: EngineMetricsSnapshot, cur: EngineMetricsSnapshot, seconds: number) => number | null) => {
      let prev = schedulers();
      let prevAt = now();
      const values = prev.map(() => 0);
      new Gauge({
        name, help, labelNames: schedulerLabelNames, registers,
        collect() {
          const cur = schedulers();
          const at = now();
          cur.forEach((c, d) => {
            const v = measure(prev[d], c, at - prevAt);
            if (v !== null && Number.isFinite(v)) values[d] = v;
            this.set(labelsOf(d), values[d]);
          });
          prev = cur;
          prevAt = at;
        },
      });
    };
    rate('sglang:cache_hit_rate', 'The prefix cache hit rate.', (p, c) => {
      const hit = c.cacheHitTokens - p.cacheHitTokens;
      const computed = c.prefillTokens - p.prefillTokens;
      return hit + computed > 0 ? hit / (hit + computed) : null;
    });
    rate('sglang:gen_throughput', 'The generation throughput (token/s).', (p, c, seconds) =>
      seconds > 0 ? Math.max(0, c.decodeTokens - p.decodeTokens) / seconds : null);

    // Counters follow the snapshot's totals: each scrape adds what they grew by (a smaller total means the totals
    // restarted; counting goes on from there).
    const counter = (name: string, help: string, read: SnapshotReader) => {
      let seen = 0;
      new Counter({
        name, help, labelNames: TOKENIZER_LABELS, registers,
        collect() {
          const total = read(snapshot());
          this.inc(tokenizerLabels, total >= seen ? total - seen : total);
          seen = total;
        },
      });
    };
    counter('sglang:prompt_tokens_total', 'Number of prefill tokens processed.', (s) => s.requests.promptTokens);
    counter('sglang:generation_tokens_total', 'Number of generation tokens processed.', (s) => s.requests.completionTokens);
    counter('sglang:cached_tokens_total', 'Number of cached prompt tokens.', (s) => s.requests.cachedTokens);
    counter('sglang:num_requests_total', 'Number of requests processed.', (s) => s.requests.finished + s.requests.cancelled + s.requests.failed);
    counter('sglang:num_aborted_requests_total', 'Number of requests aborted.', (s) => s.requests.cancelled);

    const histogram = (name: string, help: string, buckets: readonly number[]) =>
      new Histogram({ name, help, labelNames: TOKENIZER_LABELS, buckets: [...buckets], registers });
    const h = opts.histograms;
    this.ttft = histogram('sglang:time_to_first_token_seconds', 'Histogram of time to first token in seconds.', h?.bucketTimeToFirstToken ?? TTFT_BUCKETS);
    this.itl = histogram('sglang:inter_token_latency_seconds', 'Histogram of inter-token latency in seconds.', h?.bucketInterTokenLatency ?? ITL_BUCKETS);
    this.e2e = histogram('sglang:e2e_request_latency_seconds', 'Histogram of End-to-end request latency in seconds', h?.bucketE2eRequestLatency ?? E2E_BUCKETS);
    this.tokenCounts = h?.collectTokensHistogram
      ? {
          prompt: histogram('sglang:prompt_tokens_histogram', 'Histogram of prompt token length.', PROMPT_TOKENS_BUCKETS),
          generation: histogram('sglang:generation_tokens_histogram', 'Histogram of generation token length.', GENERATION_TOKENS_BUCKETS),
        }
      : null;
    // Export empty histograms at once, so the families are there before the first request.
    for (const x of [this.ttft, this.itl, this.e2e, this.tokenCounts?.prompt, this.tokenCounts?.generation]) x?.zero(tokenizerLabels);
  }

  requestStarted(): SglangRequestRecorder {
    const start = this.now();
    let last: number | null = null;
    let finished = false;
    let usage: StreamedChunk['completion_usage'] = null;
    return {
      chunk: (c) => {
        if (finished) return;
        if (c.completion_usage) usage = c.completion_usage;
        const n = c.token_ids.length;
        if (n === 0) return;
        const at = this.now();
        if (last === null) {
          this.ttft.observe(this.tokenizerLabels, at - start);
        } else {
          // A chunk of n tokens counts as n gaps of equal length, as SGLang observes a multi-token chunk.
          const gap = (at - last) / n;
          for (let i = 0; i < n; i++) this.itl.observe(this.tokenizerLabels, gap);
        }
        last = at;
      },
      finish: () => {
        if (finished) return;
        finished = true;
        this.e2e.observe(this.tokenizerLabels, this.now() - start);
        if (this.tokenCounts && usage) {
          this.tokenCounts.prompt.observe(this.tokenizerLabels, usage.prompt_tokens);
          this.tokenCounts.generation.observe(this.tokenizerLabels, usage.completion_tokens);
        }
      },
    };
  }
}
