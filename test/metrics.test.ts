import t from 'tap';
import { createServer } from 'node:net';
import { LlmError } from '../src/errors.js';
import { HealthRegistry } from '../src/runtime/health.js';
import { WorkerMetrics } from '../src/runtime/metrics.js';
import { SystemServer } from '../src/runtime/system-server.js';

/** Value of the sample `name{labels}` in an exposition text, or undefined. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const got: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) got[k!] = v!;
    if (Object.keys(got).length === Object.keys(labels).length && Object.entries(labels).every(([k, v]) => got[k] === v)) {
      return Number(m[3]);
    }
  }
  return undefined;
}

t.test('/metrics over HTTP carries the reference names and labels', async (t) => {
  const metrics = new WorkerMetrics();
  const health = new HealthRegistry();
  const server = await SystemServer.start({ port: 0, host: '127.0.0.1', health, metrics });
  t.ok(server);
  t.teardown(() => server!.close());
  const ep = metrics.endpointMetrics('dynamo', 'backend', 'generate', 'Qwen/Qwen3-0.6B');
  t.equal(metrics.endpointMetrics('dynamo', 'backend', 'generate', 'Qwen/Qwen3-0.6B'), ep, 'one recorder set per label set');
  const labels = { dynamo_namespace: 'dynamo', dynamo_component: 'backend', dynamo_endpoint: 'generate', model: 'Qwen/Qwen3-0.6B' };

  let text = await (await fetch(server!.url('/metrics'))).text();
  t.equal(sample(text, 'dynamo_component_requests_total', labels), 0, 'series exported before the first request');
  t.equal(sample(text, 'dynamo_component_inflight_requests', labels), 0);

  const a = ep.requestStarted(120);
  const b = ep.requestStarted(80);
  a.responseBytes(30);
  a.responseBytes(12);
  text = await (await fetch(server!.url('/metrics'))).text();
  t.equal(sample(text, 'dynamo_component_inflight_requests', labels), 2);
  a.finish();
  a.finish();
  b.cancelled();
  b.error('generate');
  b.finish();

  const res = await fetch(server!.url('/metrics'));
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type') ?? '', /^text\/plain/);
  text = await res.text();
  t.equal(sample(text, 'dynamo_component_requests_total', labels), 2);
  t.equal(sample(text, 'dynamo_component_inflight_requests', labels), 0, 'finish is idempotent');
  t.equal(sample(text, 'dynamo_component_request_bytes_total', labels), 200);
  t.equal(sample(text, 'dynamo_component_response_bytes_total', labels), 42);
  t.equal(sample(text, 'dynamo_component_cancellation_total', labels), 1);
  t.equal(sample(text, 'dynamo_component_errors_total', { ...labels, error_type: 'generate' }), 1);
  t.equal(sample(text, 'dynamo_component_request_duration_seconds_count', labels), 2);
  t.equal(sample(text, 'dynamo_component_request_duration_seconds_bucket', { ...labels, le: '+Inf' }), 2);
  t.match(text, '# TYPE dynamo_component_requests_total counter');
  t.match(text, '# TYPE dynamo_component_request_duration_seconds histogram');
  t.match(text, '# TYPE dynamo_component_inflight_requests gauge');
  t.ok((sample(text, 'dynamo_component_uptime_seconds') ?? -1) > 0, 'uptime_seconds');

  metrics.setKvStats({ model: 'Qwen/Qwen3-0.6B', component: 'backend', dpRank: 0, totalBlocks: 1024, gpuCacheUsagePercent: 12.5 });
  metrics.setKvStats({ model: 'Qwen/Qwen3-0.6B', component: 'backend', dpRank: 1, totalBlocks: 512, gpuCacheUsagePercent: 0 });
  metrics.setModelLoadTime('Qwen/Qwen3-0.6B', 'backend', 3.25);
  text = await (await fetch(server!.url('/metrics'))).text();
  const kv = { model: 'Qwen/Qwen3-0.6B', dynamo_component: 'backend' };
  t.equal(sample(text, 'dynamo_component_total_blocks', { ...kv, dp_rank: '0' }), 1024);
  t.equal(sample(text, 'dynamo_component_total_blocks', { ...kv, dp_rank: '1' }), 512);
  t.equal(sample(text, 'dynamo_component_gpu_cache_usage_percent', { ...kv, dp_rank: '0' }), 12.5);
  t.equal(sample(text, 'dynamo_component_model_load_time_seconds', kv), 3.25);
});

t.test('two workers in one process keep separate registries; extra metrics are appended', async (t) => {
  const m1 = new WorkerMetrics();
  const m2 = new WorkerMetrics();
  m1.endpointMetrics('ns', 'backend', 'generate', 'a').requestStarted(1).finish();
  const server = await SystemServer.start({
    port: 0, host: '127.0.0.1', health: new HealthRegistry(), metrics: m2,
    extraMetrics: () => '# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 3\n',
  });
  t.teardown(() => server!.close());
  const text = await (await fetch(server!.url('/metrics'))).text();
  t.equal(sample(text, 'dynamo_component_requests_total', { dynamo_namespace: 'ns', dynamo_component: 'backend', dynamo_endpoint: 'generate', model: 'a' }), undefined);
  t.equal(sample(text, 'sglang:num_running_reqs'), 3);
  t.equal(sample(await m1.text(), 'dynamo_component_requests_total', { dynamo_namespace: 'ns', dynamo_component: 'backend', dynamo_endpoint: 'generate', model: 'a' }), 1);
});

t.test('system server: port -1 is off, a taken port is named, unknown routes and methods', async (t) => {
  t.equal(await SystemServer.start({ port: -1, health: new HealthRegistry() }), null);
  await t.rejects(SystemServer.start({ port: 70000, health: new HealthRegistry() }), { code: 'LLM_ERR_CONFIG', message: /system port 70000/ });
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => blocker.close(() => r())));
  const taken = (blocker.address() as { port: number }).port;
  try {
    await SystemServer.start({ port: taken, host: '127.0.0.1', health: new HealthRegistry() });
    t.fail('should not bind a taken port');
  } catch (err) {
    t.ok(err instanceof LlmError);
    t.equal((err as LlmError).code, 'LLM_ERR_TRANSPORT');
    t.match((err as Error).message, `127.0.0.1:${taken}`);
    t.match((err as Error).message, 'EADDRINUSE');
  }
  const server = await SystemServer.start({ port: 0, host: '127.0.0.1', health: new HealthRegistry() });
  t.teardown(() => server!.close());
  const missing = await fetch(server!.url('/nope'));
  t.equal(missing.status, 404);
  t.same(await missing.json(), { error: 'no route /nope' });
  const post = await fetch(server!.url('/health'), { method: 'POST', body: '{}' });
  t.equal(post.status, 405);
  await post.text();
  const empty = await fetch(server!.url('/metrics'));
  t.equal(empty.status, 200, '/metrics without a registry is empty, not an error');
  t.equal(await empty.text(), '');
});
