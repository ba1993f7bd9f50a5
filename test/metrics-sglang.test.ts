// SGLang's engine metrics (sglang:*): the collector over a hand-made engine snapshot, then a real worker on
// stories260K (CPU, embedded mem store) with --enable-metrics, scraped on its system server after real requests.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { Registry } from 'prom-client';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import { EndpointClient } from '../src/runtime/client.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { SglangMetrics, TTFT_BUCKETS, type EngineMetricsSnapshot } from '../src/runtime/sglang-metrics.js';
import { startWorker } from '../src/worker/worker.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

/** The samples of one family in Prometheus text: labels as a record, value as a number. */
function samples(text: string, name: string): { labels: Record<string, string>; value: number }[] {
  const out: { labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) labels[k] = v;
    out.push({ labels, value: Number(m[3]) });
  }
  return out;
}
const one = (text: string, name: string) => {
  const s = samples(text, name);
  if (s.length !== 1) throw new Error(`${name}: ${s.length} samples`);
  return s[0];
};

function idle(): EngineMetricsSnapshot {
  return {
    load: { kvTotalPages: 100, kvUsedPages: 0, kvEvictablePages: 0, runningRequests: 0, queuedRequests: 0 },
    prefillTokens: 0, decodeTokens: 0, cacheHitTokens: 0,
    requests: { finished: 0, cancelled: 0, failed: 0, promptTokens: 0, completionTokens: 0, cachedTokens: 0 },
  };
}

t.test('data-parallel groups: one scheduler gauge series per group with its dp_rank; counters are the totals', async (t) => {
  const registry = new Registry();
  const groups = [idle(), idle()];
  groups[1] = { ...groups[1], load: { ...groups[1].load, kvUsedPages: 50, runningRequests: 2 }, decodeTokens: 8 };
  let clock = 0;
  new SglangMetrics({
    registry, modelName: 'tiny', engineType: 'unified', endpoint: { namespace: 'ns', component: 'backend', endpoint: 'generate' },
    pageSize: 16, snapshot: () => ({ ...idle(), requests: { ...idle().requests, promptTokens: 9 } }), schedulerSnapshots: () => [...groups], now: () => clock,
  });
  groups[1] = { ...groups[1], decodeTokens: 16 };
  clock = 2;
  const text = await registry.metrics();
  const byRank = (name: string) => Object.fromEntries(samples(text, name).map((s) => [s.labels.dp_rank, s.value]));
  t.same(byRank('sglang:num_running_reqs'), { 0: 0, 1: 2 });
  t.same(byRank('sglang:token_usage'), { 0: 0, 1: 0.5 });
  t.same(byRank('sglang:gen_throughput'), { 0: 0, 1: 4 }, 'each group\'s rate from its own totals');
  t.equal(one(text, 'sglang:prompt_tokens_total').value, 9, 'one counter series');
});

t.test('the collector: gauges and counters from the engine snapshot, histograms from the requests', async (t) => {
  const registry = new Registry();
  let snap = idle();
  let clock = 0;
  const m = new SglangMetrics({
    registry, modelName: 'tiny', engineType: 'unified', endpoint: { namespace: 'ns', component: 'backend', endpoint: 'generate' },
    pageSize: 16, snapshot: () => snap, now: () => clock,
  });
  let text = await registry.metrics();
  t.same(one(text, 'sglang:num_running_reqs').labels,
    { model_name: 'tiny', engine_type: 'unified', tp_rank: '0', pp_rank: '0', dynamo_namespace: 'ns', dynamo_component: 'backend', dynamo_endpoint: 'generate' },
    "the scheduler's label set");
  t.same(one(text, 'sglang:prompt_tokens_total').labels,
    { model_name: 'tiny', dynamo_namespace: 'ns', dynamo_component: 'backend', dynamo_endpoint: 'generate' }, "the tokenizer manager's label set");
  t.equal(one(text, 'sglang:time_to_first_token_seconds_count').value, 0, 'histograms are there before the first request');
  t.equal(samples(text, 'sglang:time_to_first_token_seconds_bucket').length, TTFT_BUCKETS.length + 1, "SGLang's TTFT buckets and +Inf");

  // one request: first token after 0.25 s, then chunks of 1 and 2 tokens 1/32 s and 2/32 s later, done at 0.5 s
  const r = m.requestStarted();
  clock = 0.25;
  r.chunk({ token_ids: [7] });
  clock = 0.28125;
  r.chunk({ token_ids: [] });
  r.chunk({ token_ids: [8] });
  clock = 0.34375;
  r.chunk({ token_ids: [9, 10], completion_usage: { prompt_tokens: 40, completion_tokens: 4 } });
  clock = 0.5;
  r.finish();
  r.finish();
  snap = {
    load: { kvTotalPages: 100, kvUsedPages: 30, kvEvictablePages: 5, runningRequests: 3, queuedRequests: 2 },
    prefillTokens: 30, decodeTokens: 40, cacheHitTokens: 10,
    requests: { finished: 4, cancelled: 1, failed: 0, promptTokens: 40, completionTokens: 44, cachedTokens: 10 },
  };
  clock = 2.5;
  text = await registry.metrics();
  t.same([one(text, 'sglang:num_running_reqs').value, one(text, 'sglang:num_queue_reqs').value], [3, 2]);
  t.equal(one(text, 'sglang:num_used_tokens').value, 25 * 16, 'pages in use, in tokens, less the evictable cached ones');
  t.equal(one(text, 'sglang:token_usage').value, 0.25);
  t.equal(one(text, 'sglang:cache_hit_rate').value, 0.25, '10 cached of 40 prompt tokens since the last scrape');
  t.equal(one(text, 'sglang:gen_throughput').value, 40 / 2.5, 'decode tokens per second since the last scrape');
  t.same(['prompt_tokens', 'generation_tokens', 'cached_tokens', 'num_requests', 'num_aborted_requests'].map((n) => one(text, `sglang:${n}_total`).value),
    [40, 44, 10, 5, 1]);
  t.equal(one(text, 'sglang:time_to_first_token_seconds_count').value, 1);
  t.equal(one(text, 'sglang:time_to_first_token_seconds_sum').value, 0.25);
  const le = (name: string, bound: string) => samples(text, `${name}_bucket`).find((s) => s.labels.le === bound)?.value;
  t.equal(one(text, 'sglang:inter_token_latency_seconds_count').value, 3, 'a 2-token chunk counts as two gaps');
  t.equal(le('sglang:inter_token_latency_seconds', '0.035'), 3, 'gaps of 1/32 s each');
  t.equal(le('sglang:inter_token_latency_seconds', '0.03'), 0);
  t.equal(one(text, 'sglang:e2e_request_latency_seconds_count').value, 1, 'finish() observes once');
  t.equal(le('sglang:e2e_request_latency_seconds', '0.6'), 1);

  // nothing new: counters stay, the rates keep their last value; totals that went down restart the counting
  clock = 3.5;
  text = await registry.metrics();
  t.same([one(text, 'sglang:prompt_tokens_total').value, one(text, 'sglang:cache_hit_rate').value, one(text, 'sglang:gen_throughput').value], [40, 0.25, 0]);
  snap = { ...snap, requests: { ...snap.requests, promptTokens: 6 } };
  text = await registry.metrics();
  t.equal(one(text, 'sglang:prompt_tokens_total').value, 46, 'a restarted total adds on, never goes back');
  t.notMatch(text, /tokens_histogram/, 'token-count histograms only with --collect-tokens-histogram');
});

t.test("the collector with SGLang's --bucket-* and --collect-tokens-histogram settings", async (t) => {
  const registry = new Registry();
  let clock = 0;
  const m = new SglangMetrics({
    registry, modelName: 'tiny', engineType: 'decode', endpoint: { namespace: 'ns', component: 'backend', endpoint: 'generate' },
    pageSize: 16, snapshot: idle, now: () => clock,
    histograms: { bucketTimeToFirstToken: [0.5, 1], bucketInterTokenLatency: null, bucketE2eRequestLatency: [2], collectTokensHistogram: true },
  });
  const r = m.requestStarted();
  clock = 0.75;
  r.chunk({ token_ids: [1, 2] });
  r.chunk({ token_ids: [], completion_usage: { prompt_tokens: 250, completion_tokens: 2 } });
  r.finish();
  const text = await registry.metrics();
  t.same(samples(text, 'sglang:time_to_first_token_seconds_bucket').map((s) => [s.labels.le, s.value]), [['0.5', 0], ['1', 1], ['+Inf', 1]]);
  t.same(samples(text, 'sglang:e2e_request_latency_seconds_bucket').map((s) => s.labels.le), ['2', '+Inf']);
  t.equal(samples(text, 'sglang:inter_token_latency_seconds_bucket').length, 24, "SGLang's inter-token buckets when none are given");
  t.equal(one(text, 'sglang:num_running_reqs').labels.engine_type, 'decode');
  t.same([one(text, 'sglang:prompt_tokens_histogram_sum').value, one(text, 'sglang:generation_tokens_histogram_sum').value], [250, 2],
    'the counts of the last chunk');
  t.equal(samples(text, 'sglang:prompt_tokens_histogram_bucket').find((s) => s.labels.le === '300')?.value, 1);
});

t.test('a worker with --enable-metrics exports the sglang:* families on /metrics', async (t) => {
  const responses = await ResponseServer.start({ host: '127.0.0.1' });
  const discovery = await Discovery.open({ backend: 'mem' });
  const base = ['--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1', '--mem-fraction-static', '0.01',
    '--discovery-backend', 'mem', '--tcp-rpc-host', '127.0.0.1', '--system-port', '0', '--system-host', '127.0.0.1', '--page-size', '4'];
  const quiet = () => undefined;
  const worker = await startWorker(await finalizeConfig(resolveConfig([...base, '--enable-metrics', '--max-total-tokens', '256', '--collect-tokens-histogram',
    '--bucket-time-to-first-token', '0.5', '1', '5'], {})), { discovery, log: quiet });
  t.equal(worker.supervisor.engine.kv.numPages, 64, "SGLang's --max-total-tokens sized the KV pool: 256 tokens in pages of 4");
  const client = await EndpointClient.create({ discovery, namespace: 'dynamo', component: 'backend', endpoint: 'generate', responses });
  t.teardown(async () => {
    client.close();
    await worker.shutdown();
    await discovery.close();
    await responses.close();
  });

  const prompt = [1, 403, 407, 261, 378, 300, 270, 290, 320, 330, 340, 350, 360];
  let generated = 0;
  for (let i = 0; i < 2; i++) {
    const stream = await client.generate({
      token_ids: prompt, stop_conditions: { max_tokens: 5, ignore_eos: true }, sampling_options: { temperature: 0 }, eos_token_ids: [2],
    });
    for await (const a of stream) {
      if (a.error !== undefined) throw new Error(JSON.stringify(a.error));
      generated += (a.data as { token_ids?: number[] } | undefined)?.token_ids?.length ?? 0;
    }
  }
  t.equal(generated, 10, 'two requests of 5 tokens');
  const text = await (await fetch(worker.systemServer!.url('/metrics'))).text();
  const families = new Set([...text.matchAll(/^# TYPE (sglang:\S+) (\S+)$/gm)].map((m) => `${m[1]} ${m[2]}`));
  for (const f of ['sglang:num_running_reqs gauge', 'sglang:num_queue_reqs gauge', 'sglang:token_usage gauge', 'sglang:cache_hit_rate gauge',
    'sglang:num_used_tokens gauge', 'sglang:gen_throughput gauge', 'sglang:prompt_tokens_total counter', 'sglang:generation_tokens_total counter',
    'sglang:cached_tokens_total counter', 'sglang:num_requests_total counter', 'sglang:num_aborted_requests_total counter',
    'sglang:time_to_first_token_seconds histogram', 'sglang:inter_token_latency_seconds histogram', 'sglang:e2e_request_latency_seconds histogram']) {
    t.ok(families.has(f), f);
  }
  const running = one(text, 'sglang:num_running_reqs');
  t.same(running.labels, {
    model_name: 'stories260K', engine_type: 'unified', tp_rank: '0', pp_rank: '0', dynamo_namespace: 'dynamo', dynamo_component: 'backend', dynamo_endpoint: 'generate',
  });
  t.equal(running.value, 0, 'nothing running after the requests');
  t.same([one(text, 'sglang:num_used_tokens').value, one(text, 'sglang:token_usage').value], [0, 0],
    'the cached prompt pages no request holds count as free, as SGLang counts them');
  t.equal(one(text, 'sglang:num_requests_total').value, 2);
  t.equal(one(text, 'sglang:prompt_tokens_total').value, 2 * prompt.length);
  t.equal(one(text, 'sglang:generation_tokens_total').value, 10);
  t.ok(one(text, 'sglang:cached_tokens_total').value > 0, 'the second request reused the cached prompt pages');
  t.equal(one(text, 'sglang:time_to_first_token_seconds_count').value, 2);
  t.equal(one(text, 'sglang:e2e_request_latency_seconds_count').value, 2);
  t.equal(one(text, 'sglang:inter_token_latency_seconds_count').value, 8, 'the gaps after each first token');
  t.equal(one(text, 'sglang:time_to_first_token_seconds_count').labels.model_name, 'stories260K');
  t.same(samples(text, 'sglang:time_to_first_token_seconds_bucket').map((s) => s.labels.le), ['0.5', '1', '5', '+Inf'], '--bucket-time-to-first-token');
  t.same([one(text, 'sglang:prompt_tokens_histogram_count').value, one(text, 'sglang:prompt_tokens_histogram_sum').value], [2, 2 * prompt.length],
    '--collect-tokens-histogram');
  t.equal(one(text, 'sglang:generation_tokens_histogram_sum').value, 10);
  t.match(text, /dynamo_component_requests_total\{/, "the Dynamo component's own metrics are still there");
});

t.test('without --enable-metrics no sglang:* family is exported', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  const worker = await startWorker(await finalizeConfig(resolveConfig(['--model-path', MODEL, '--device', 'cpu', '--cpu-threads', '1',
    '--mem-fraction-static', '0.01', '--discovery-backend', 'mem', '--tcp-rpc-host', '127.0.0.1', '--system-port', '0', '--system-host', '127.0.0.1'], {})),
  { discovery, log: () => undefined });
  t.teardown(async () => {
    await worker.shutdown();
    await discovery.close();
  });
  const text = await (await fetch(worker.systemServer!.url('/metrics'))).text();
  t.notMatch(text, /sglang:/);
  t.match(text, /dynamo_component_uptime_seconds/);
});
